//! The times a node has only on this machine: its ctime (when it last changed in any way)
//! and an atime set by `utimensat`.
//!
//! The service keeps one time per node, the mtime, and that is what syncs. POSIX wants two
//! more, and programs notice both: backup tools and `find -cmin` read ctime to see a
//! `chmod` or a rename, `tar` and `cp -a` set atime and read it back. They are kept here,
//! in memory, keyed by the kernel's inode number (which stays the same when a node made
//! here gets its service id):
//! - **ctime** is the newer of the node's mtime and the last change made to it on this
//!   machine (chmod, utimens, truncate, rename). A content change moves the mtime, so it
//!   moves ctime with it — also one made on another machine; another machine's chmod or
//!   rename does not (the service sends no ctime).
//! - **atime** is what `utimensat` last set here, else the mtime (the mount is `noatime`:
//!   reads never move it).
//!
//! Bounded: at most [`MAX_ENTRIES`] nodes (least recently touched go first); a node no
//! longer here, or after a remount, shows its mtime for both, as before it was touched.

/// How many nodes keep their local times; about 40 bytes each.
pub const MAX_ENTRIES: u64 = 100_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Kept {
    ctime_ns: i64,
    atime_ns: Option<i64>,
}

/// A node's times as `stat` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeTimes {
    pub atime_ns: i64,
    pub ctime_ns: i64,
}

pub struct LocalTimes {
    kept: moka::sync::Cache<u64, Kept>,
}

impl Default for LocalTimes {
    fn default() -> Self {
        LocalTimes::new(MAX_ENTRIES)
    }
}

impl LocalTimes {
    pub fn new(max_entries: u64) -> LocalTimes {
        LocalTimes {
            kept: moka::sync::Cache::new(max_entries),
        }
    }

    /// Node `ino` changed here at `now_ns` (its ctime).
    pub fn changed(&self, ino: u64, now_ns: i64) {
        let kept = self.kept.get(&ino).unwrap_or_default();
        self.kept.insert(
            ino,
            Kept {
                ctime_ns: now_ns,
                ..kept
            },
        );
    }

    /// `utimensat` set node `ino`'s atime to `atime_ns`, at `now_ns`.
    pub fn accessed_set(&self, ino: u64, atime_ns: i64, now_ns: i64) {
        self.kept.insert(
            ino,
            Kept {
                ctime_ns: now_ns,
                atime_ns: Some(atime_ns),
            },
        );
    }

    /// The times `stat` shows for node `ino` whose mtime is `mtime_ns`.
    pub fn of(&self, ino: u64, mtime_ns: i64) -> NodeTimes {
        let kept = self.kept.get(&ino).unwrap_or_default();
        NodeTimes {
            atime_ns: kept.atime_ns.unwrap_or(mtime_ns),
            ctime_ns: kept.ctime_ns.max(mtime_ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untouched_nodes_show_their_mtime() {
        let t = LocalTimes::default();
        let times = t.of(7, 1_000);
        assert_eq!((times.atime_ns, times.ctime_ns), (1_000, 1_000));
    }

    #[test]
    fn ctime_is_the_newer_of_the_local_change_and_the_mtime() {
        let t = LocalTimes::default();
        t.changed(7, 5_000);
        assert_eq!(
            t.of(7, 1_000).ctime_ns,
            5_000,
            "a chmod after the last write"
        );
        assert_eq!(t.of(7, 9_000).ctime_ns, 9_000, "a write after the chmod");
        assert_eq!(t.of(8, 1_000).ctime_ns, 1_000, "other nodes untouched");
    }

    #[test]
    fn an_atime_set_reads_back_and_survives_later_changes() {
        let t = LocalTimes::default();
        t.accessed_set(7, 42, 5_000);
        assert_eq!(
            t.of(7, 1_000),
            NodeTimes {
                atime_ns: 42,
                ctime_ns: 5_000
            }
        );
        t.changed(7, 6_000);
        assert_eq!(
            t.of(7, 1_000),
            NodeTimes {
                atime_ns: 42,
                ctime_ns: 6_000
            }
        );
    }
}
