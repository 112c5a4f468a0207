//! What the kernel is told about a node (`stat`), and which names it may ask for.
//!
//! - **Owner**: every node belongs to the mounting user (the service keeps no owners).
//! - **Times**: mtime is the service's; atime and ctime come from [`LocalTimes`] (kept on
//!   this machine only, see there).
//! - **Link count**: a file or symlink has 1 (hard links are refused); a folder has 2 + its
//!   subdirectories, as `find` and `ls` expect, when its listing is cached here; otherwise
//!   1, the value Linux filesystems use for "not counted" (btrfs always does), which tells
//!   `find` not to rely on it. A listing that arrives later makes the kernel ask again
//!   (`Inval::Attr`), so the count is never a stale 1 once known.
//! - **Names** longer than [`MAX_NAME_BYTES`] are `ENAMETOOLONG` in every request, before
//!   any lookup (the kernel passes names up to 1024 bytes on; an `ENOENT` would tell a
//!   program the name could be created); names that are not UTF-8 are `EINVAL`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo};
use jewel_wire::{Node, NodeKind, MAX_NAME_BYTES};

use super::times::LocalTimes;
use crate::core::Core;

/// The most entries of a folder looked at to count its subdirectories (at every `stat` of
/// it): beyond that its link count is 1, "not counted".
pub const MAX_SUBDIR_SCAN: usize = 10_000;

/// Makes the attributes of nodes; cheap to clone into a task that answers later.
#[derive(Clone)]
pub struct AttrMaker {
    pub core: Arc<Core>,
    pub times: Arc<LocalTimes>,
    pub uid: u32,
    pub gid: u32,
}

impl AttrMaker {
    /// The attributes of node `n`, known to the kernel as inode `ino`.
    pub fn attr(&self, n: &Node, ino: u64) -> FileAttr {
        let mtime = time(n.mtime_ns);
        let times = self.times.of(ino, n.mtime_ns);
        FileAttr {
            ino: INodeNo(ino),
            size: n.size,
            blocks: n.size.div_ceil(512),
            atime: time(times.atime_ns),
            mtime,
            ctime: time(times.ctime_ns),
            crtime: mtime,
            kind: kind_of(n.kind),
            perm: (n.mode & 0o7777) as u16,
            nlink: self.nlink(n),
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 1 << 20,
            flags: 0,
        }
    }

    fn nlink(&self, n: &Node) -> u32 {
        if !n.is_dir() {
            return 1;
        }
        match self.core.tree.subdirs(n.id, MAX_SUBDIR_SCAN) {
            Some(subdirs) => 2 + subdirs as u32,
            None => 1,
        }
    }
}

/// A name from the kernel, checked for length first.
pub fn name_of(name: &OsStr) -> Result<&str, Errno> {
    if name.len() > MAX_NAME_BYTES {
        return Err(Errno::ENAMETOOLONG);
    }
    std::str::from_utf8(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

pub fn kind_of(k: NodeKind) -> FileType {
    match k {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
    }
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_for_length_before_anything_else() {
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        assert_eq!(name_of(OsStr::new(&long)), Err(Errno::ENAMETOOLONG));
        let longest = "n".repeat(MAX_NAME_BYTES);
        assert_eq!(name_of(OsStr::new(&longest)), Ok(longest.as_str()));
        let not_utf8 = OsStr::from_bytes(b"caf\xe9");
        assert_eq!(name_of(not_utf8), Err(Errno::EINVAL));
        let long_not_utf8 = OsStr::from_bytes(&[0xe9; MAX_NAME_BYTES + 1]);
        assert_eq!(name_of(long_not_utf8), Err(Errno::ENAMETOOLONG));
    }
}
