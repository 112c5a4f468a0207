//! The durable upload journal: every local change, in order, until the service has it.
//!
//! Layout under `<cache>/journal/`: `log`, an append-only list of records, one a line
//! (`+<entry as JSON>` puts or rewrites the entry with that sequence number, `-<seq>` drops
//! it, `!<seq>` says it was sent at least once; replay keeps the last record of each sequence number, and skips a line without its
//! newline or that does not parse, so a torn tail is ignored); `data/<name>` holding the
//! content of a file change (the closed staging file, moved here by rename; it never changes
//! after, so the block cache may link a one-block file in instead of copying it); and `aliases`,
//! an append-only list of `local-id server-id` lines. The log is emptied when no entry is
//! pending or waiting for a checkpoint (below) and rewritten with only the live entries at start and when it grows large.
//!
//! Why one log and not a file per entry: creating and deleting a file per entry cost more
//! than everything else a small file's `close` does (ext4 looks for a free inode among the
//! recently deleted ones on every create); a record is one `write` to an open file.
//!
//! Durability (group commit, like ext4's delayed allocation): an entry is in the page
//! cache when `append` returns, so it survives a crash of the client (SIGKILL: the kernel
//! keeps the page cache) at once, and `close` never waits for the disk. Against a crash of
//! the machine, [`Journal::sync`] makes every write so far durable with one `syncfs` for
//! all of them: the syncer runs it within [`SYNC_INTERVAL`] (50 ms) of a change, `fsync` on
//! a file runs it (or waits for the one already running) before returning, and unmount runs
//! it last. So only a power loss within 50 ms of a `close` can lose a closed file that was
//! not fsync'd. One fsync per `close` would cap small-file writes at a few hundred a second.
//!
//! **Checkpoints (the write-ahead-log rule): an uploaded entry is forgotten only once a
//! saved tree includes its answer.** The tree an offline start shows is `tree.json`
//! (`Core::save_snapshot`), saved at most once a second; had an uploaded entry been dropped
//! at once, a client killed before the next save would start offline from a tree without
//! the change and a journal without it either (the user's completed change undone until
//! the service answers). So [`Journal::done`] only marks the entry uploaded (`~{seq, node}`:
//! the node as the service's answer left it, `null` when gone) and keeps it and its content
//! file; a snapshot is saved with the sequence numbers of the uploaded entries it includes
//! (taken before the tree is read), and only then [`Journal::forget`] drops them (`-<seq>`),
//! their files going after the next [`Journal::sync`]. A start finds the snapshot's list and
//! forgets those entries (a crash between the two steps); an offline start puts the answers
//! of the uploaded entries left over the snapshot, in order. Uploaded entries are never sent
//! again (the service has them), so a replayed old change cannot bring back what a newer one
//! deleted. The cost stays one tree save per checkpoint, not per upload: the tree saver
//! (`mount/start.rs`) saves at most once a second, and a burst of uploads waits for it
//! together. The alias a create recorded goes into the log too (`=<local> <server>`), before
//! the entry is marked uploaded; the `aliases` file keeps them once the log is emptied.
//!
//! Subtle points:
//! - **Order.** Entries are uploaded strictly in sequence order (one in flight at a time), so
//!   an entry never refers to a node the service does not know yet: a file created offline in
//!   a directory created offline waits for that directory.
//! - **Local ids.** A node created locally gets an id with bit 62 set, never seen by the
//!   service. When its create is uploaded the service's id is recorded as an alias (durably,
//!   before the entry is removed) and every later entry is resolved through the aliases.
//! - **Coalescing.** An entry not yet in flight may be rewritten: a file's content changed
//!   again before its create went out is folded into the create; an editor's
//!   write-then-rename becomes one content change of the final file. This is why the
//!   uploader lets entries settle for a few milliseconds before taking them.
//! - **Replay.** On start the entries and aliases are read back; only the entry in flight
//!   when the client died (uploaded, perhaps, but not yet dropped) is uploaded again, which
//!   is harmless because the uploader recognises its own identical content (see `uploader.rs`).
//!   It stays marked as sent (`!`): the service may hold it, so it is never rewritten or
//!   cancelled after the restart either (a create renamed in place, or cancelled, would
//!   leave the service's node under a name this device freed).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jewel_wire::{BlockHash, MoveMode, NodeId, Version};
use serde::{Deserialize, Serialize};

use super::inodes::Inodes;

/// The longest a journal write waits in the page cache before the syncer makes it durable
/// (the window a power loss can hit; a SIGKILL of the client loses nothing).
pub const SYNC_INTERVAL: Duration = Duration::from_millis(50);

pub use super::inodes::{is_local, LOCAL_ID_BASE};

/// What a rename saw at its target name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Seen {
    /// The name was free.
    Free,
    /// The name held this node, at this version, with this content.
    Node {
        id: NodeId,
        version: Version,
        blocks: Vec<BlockHash>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LocalKind {
    File {
        /// Name of the content file under `data/`; `None` for an empty file.
        data: Option<String>,
        size: u64,
    },
    Dir,
    Symlink {
        target: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Create {
        node: NodeId,
        parent: NodeId,
        name: String,
        kind: LocalKind,
        mode: u32,
        mtime_ns: i64,
    },
    Content {
        node: NodeId,
        base_version: Version,
        /// The content the writer started from, to tell a real conflict from a metadata one.
        base_blocks: Vec<BlockHash>,
        data: Option<String>,
        size: u64,
        mtime_ns: i64,
    },
    Move {
        node: NodeId,
        new_parent: NodeId,
        new_name: String,
        mode: MoveMode,
        /// What this device saw at the target name when the app renamed: another device's
        /// change found there instead is kept (see `uploader.rs`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<Seen>,
    },
    Delete {
        node: NodeId,
        base_version: Version,
        base_blocks: Vec<BlockHash>,
    },
    SetAttr {
        node: NodeId,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    },
}

impl Op {
    /// The node the entry changes.
    pub fn node(&self) -> NodeId {
        match self {
            Op::Create { node, .. }
            | Op::Content { node, .. }
            | Op::Move { node, .. }
            | Op::Delete { node, .. }
            | Op::SetAttr { node, .. } => *node,
        }
    }
    /// The content file the entry owns, if any.
    pub fn data(&self) -> Option<&str> {
        match self {
            Op::Create {
                kind: LocalKind::File { data, .. },
                ..
            }
            | Op::Content { data, .. } => data.as_deref(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub at_ms: u64,
    #[serde(flatten)]
    pub op: Op,
}

#[derive(Default)]
struct Inner {
    /// Shared (`Arc`), so [`Journal::entries`] is a list of pointers, not a deep copy: it is
    /// called per uploaded change, with hundreds of entries pending in a burst.
    entries: BTreeMap<u64, Arc<Entry>>,
    next: u64,
    /// Entries being uploaded now: the oldest one, and the ones after it sent in the same
    /// batch ([`Journal::take_more`]).
    inflight: std::collections::BTreeSet<u64>,
    /// Entries sent at least once: the service may have applied them even if the answer
    /// was lost, so they are never rewritten or cancelled any more.
    attempted: std::collections::HashSet<u64>,
    /// Entries the service has, kept until a saved snapshot includes their answer (see the
    /// module docs), with that answer.
    uploaded: BTreeMap<u64, Arc<Uploaded>>,
    data_counter: u64,
}

/// An uploaded entry waiting for a checkpoint, and the node as the service's answer left it
/// (`None`: gone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uploaded {
    pub seq: u64,
    /// The node the entry changed (the service's id).
    pub id: NodeId,
    /// Whether the entry created the node.
    #[serde(default)]
    pub created: bool,
    pub node: Option<jewel_wire::Node>,
    /// The entry's content file, kept until the checkpoint (offline reads may need it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

pub struct Journal {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// The inode numbers, whose aliases (local id → service id) this journal makes durable.
    inodes: Arc<Inodes>,
    alias_file: Mutex<File>,
    /// The open `log` (append mode) and its length. Written under the `inner` lock, so the
    /// order of records is the order of changes to `entries`.
    log: Mutex<(File, u64)>,
    /// Woken (all waiters: the uploader, the pre-uploader, drains and fsyncs) whenever an
    /// entry is added, rewritten or done; a `notified()` made before the check that decided
    /// to wait still hears it (tokio keeps `notify_waiters` for futures created earlier).
    pub changed: tokio::sync::Notify,
    /// Signalled by every journal write, for the syncer (which sleeps while nothing waits).
    pub unsynced: tokio::sync::Notify,
    /// Journal writes so far (entries, aliases); compared with `synced` by [`Journal::sync`].
    written: AtomicU64,
    /// The value of `written` the last finished sync covered. Held while syncing, so a
    /// second caller waits for the sync in progress and then sees whether it was covered.
    synced: Mutex<u64>,
    /// Uploaded entries, dropped from the log (and their content files removed) by the
    /// next sync (see the module docs).
    removals: Mutex<(Vec<u64>, Vec<PathBuf>)>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Writes a log holding the live entries and which of them were tried (durably, then
/// renamed into place) and opens it for appends.
fn write_log(dir: &Path, inner: &Inner) -> std::io::Result<(File, u64)> {
    let mut text = Vec::new();
    for entry in inner.entries.values() {
        text.push(b'+');
        serde_json::to_writer(&mut text, &**entry).map_err(std::io::Error::other)?;
        text.push(b'\n');
        if inner.attempted.contains(&entry.seq) {
            text.extend_from_slice(format!("!{}\n", entry.seq).as_bytes());
        }
    }
    for up in inner.uploaded.values() {
        text.extend_from_slice(&uploaded_record(up)?);
    }
    let tmp = dir.join("log.tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, dir.join("log"))?;
    File::open(dir)?.sync_all()?;
    let file = OpenOptions::new().append(true).open(dir.join("log"))?;
    Ok((file, text.len() as u64))
}

/// The record of an uploaded entry waiting for a checkpoint (`~`, see the module docs).
fn uploaded_record(up: &Uploaded) -> std::io::Result<Vec<u8>> {
    let mut text = b"~".to_vec();
    serde_json::to_writer(&mut text, up).map_err(std::io::Error::other)?;
    text.push(b'\n');
    Ok(text)
}

/// `<local> <server>`, as the aliases file and `=` records hold them.
fn parse_alias(text: &[u8]) -> Option<(NodeId, NodeId)> {
    let text = std::str::from_utf8(text).ok()?;
    let mut parts = text.split_whitespace();
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

impl Journal {
    /// Opens the journal folder and reads back every entry and alias (replay).
    pub fn open(dir: &Path) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir.join("data"))?;
        let mut inner = Inner {
            next: 1,
            ..Default::default()
        };
        // Entries of the older layout (one `<seq>.json` each) are read and moved into the log.
        let mut legacy = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let path = item?.path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            match std::fs::read(&path).map(|b| serde_json::from_slice::<Entry>(&b)) {
                Ok(Ok(entry)) => {
                    inner.next = inner.next.max(entry.seq + 1);
                    inner.entries.insert(entry.seq, Arc::new(entry));
                }
                _ => tracing::warn!(path = %path.display(), "unreadable journal entry skipped"),
            }
            legacy.push(path);
        }
        let log_path = dir.join("log");
        let text = match std::fs::read(&log_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        // Only whole lines: a record cut short by a crash has no newline yet.
        let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let mut log_aliases = HashMap::new();
        for line in text[..whole].split(|b| *b == b'\n') {
            match line.split_first() {
                Some((b'+', json)) => match serde_json::from_slice::<Entry>(json) {
                    Ok(entry) => {
                        inner.next = inner.next.max(entry.seq + 1);
                        inner.entries.insert(entry.seq, Arc::new(entry));
                    }
                    Err(_) => tracing::warn!("unreadable journal record skipped"),
                },
                Some((b'-', seq)) => {
                    match std::str::from_utf8(seq)
                        .ok()
                        .and_then(|t| t.parse::<u64>().ok())
                    {
                        Some(seq) => {
                            inner.entries.remove(&seq);
                            inner.uploaded.remove(&seq);
                        }
                        None => tracing::warn!("unreadable journal record skipped"),
                    }
                }
                Some((b'!', seq)) => match std::str::from_utf8(seq)
                    .ok()
                    .and_then(|t| t.parse::<u64>().ok())
                {
                    Some(seq) => {
                        inner.attempted.insert(seq);
                    }
                    None => tracing::warn!("unreadable journal record skipped"),
                },
                Some((b'~', json)) => match serde_json::from_slice::<Uploaded>(json) {
                    Ok(up) => {
                        inner.entries.remove(&up.seq);
                        inner.next = inner.next.max(up.seq + 1);
                        inner.uploaded.insert(up.seq, Arc::new(up));
                    }
                    Err(_) => tracing::warn!("unreadable journal record skipped"),
                },
                Some((b'=', pair)) => match parse_alias(pair) {
                    Some((l, srv)) => {
                        log_aliases.insert(l, srv);
                    }
                    None => tracing::warn!("unreadable journal record skipped"),
                },
                None => {}
                Some(_) => tracing::warn!("unreadable journal record skipped"),
            }
        }
        let mut aliases = HashMap::new();
        let alias_path = dir.join("aliases");
        if let Ok(text) = std::fs::read_to_string(&alias_path) {
            for line in text.lines() {
                if let Some((l, srv)) = parse_alias(line.as_bytes()) {
                    aliases.insert(l, srv);
                }
            }
        }
        // Aliases only the log held go to the aliases file (durably) before the log is
        // rewritten below without them.
        let only_in_log: Vec<(NodeId, NodeId)> = log_aliases
            .into_iter()
            .filter(|(l, _)| !aliases.contains_key(l))
            .collect();
        let nothing_kept = inner.entries.is_empty() && inner.uploaded.is_empty();
        if !only_in_log.is_empty() && !nothing_kept {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&alias_path)?;
            for (l, srv) in &only_in_log {
                writeln!(f, "{l} {srv}")?;
            }
            f.sync_data()?;
        }
        aliases.extend(only_in_log);
        if nothing_kept {
            // Nothing can refer to old local ids any more: start the alias list afresh, and
            // drop content files no entry owns (left by a crash between rename and entry).
            aliases.clear();
            let _ = std::fs::remove_file(&alias_path);
            if let Ok(items) = std::fs::read_dir(dir.join("data")) {
                for item in items.flatten() {
                    let _ = std::fs::remove_file(item.path());
                }
            }
        }
        let live = &inner.entries;
        let attempted = inner
            .attempted
            .iter()
            .copied()
            .filter(|seq| live.contains_key(seq))
            .collect();
        inner.attempted = attempted;
        inner.data_counter = now_ms() * 1000;
        // Start from a log with only the live entries (made durable before the older files
        // that held them are removed).
        let log = write_log(dir, &inner)?;
        for path in legacy {
            let _ = std::fs::remove_file(path);
        }
        let alias_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&alias_path)?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            inner: Mutex::new(inner),
            inodes: Arc::new(Inodes::new(aliases, LOCAL_ID_BASE + (now_ms() << 8))),
            alias_file: Mutex::new(alias_file),
            log: Mutex::new(log),
            changed: tokio::sync::Notify::new(),
            unsynced: tokio::sync::Notify::new(),
            written: AtomicU64::new(0),
            synced: Mutex::new(0),
            removals: Mutex::new((Vec::new(), Vec::new())),
        })
    }

    pub fn data_path(&self, name: &str) -> PathBuf {
        self.dir.join("data").join(name)
    }

    /// A fresh name for a content file under `data/`.
    pub fn new_data_name(&self) -> String {
        let mut inner = self.inner.lock().unwrap();
        inner.data_counter += 1;
        format!("{}-{}", std::process::id(), inner.data_counter)
    }

    /// Appends one record to the log (callers hold the `inner` lock).
    fn write_record(&self, record: &[u8]) -> std::io::Result<()> {
        let mut log = self.log.lock().unwrap();
        // One `write`: a killed process leaves the record whole or absent.
        log.0.write_all(record)?;
        log.1 += record.len() as u64;
        self.written.fetch_add(1, Ordering::SeqCst);
        self.unsynced.notify_one();
        Ok(())
    }

    fn write_entry(&self, entry: &Entry) -> std::io::Result<()> {
        let mut record = b"+".to_vec();
        serde_json::to_writer(&mut record, entry).map_err(std::io::Error::other)?;
        record.push(b'\n');
        self.write_record(&record)
    }

    fn write_drop(&self, seq: u64) -> std::io::Result<()> {
        self.write_record(format!("-{seq}\n").as_bytes())
    }

    /// Makes every journal write so far durable (one `syncfs` for all of them: group
    /// commit), then removes the files of entries uploaded before it started. Run within
    /// [`SYNC_INTERVAL`] by the syncer task, by `fsync` and at unmount. A caller that finds a
    /// sync in progress waits for it, and runs another only if that one did not cover all
    /// the writes made before this call.
    pub fn sync(&self) -> std::io::Result<()> {
        let target = self.written.load(Ordering::SeqCst);
        let mut synced = self.synced.lock().unwrap();
        let (dropped, removals) = std::mem::take(&mut *self.removals.lock().unwrap());
        if *synced >= target && dropped.is_empty() {
            return Ok(());
        }
        let upto = self.written.load(Ordering::SeqCst);
        if *synced < upto {
            let dir = File::open(&self.dir)?;
            use std::os::fd::AsRawFd;
            // SAFETY: `dir` is an open descriptor for the whole call.
            if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
                let e = std::io::Error::last_os_error();
                let mut r = self.removals.lock().unwrap();
                r.0.extend(dropped);
                r.1.extend(removals);
                return Err(e);
            }
            *synced = upto;
        }
        drop(synced);
        {
            let inner = self.inner.lock().unwrap();
            for seq in dropped {
                self.write_drop(seq)?;
            }
            self.compact(&inner)?;
        }
        for path in removals {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    /// Empties the log when nothing is pending, and rewrites it with only the live entries
    /// when it has grown large (callers hold the `inner` lock).
    fn compact(&self, inner: &Inner) -> std::io::Result<()> {
        const LARGE: u64 = 16 << 20;
        let mut log = self.log.lock().unwrap();
        if inner.entries.is_empty() && inner.uploaded.is_empty() && log.1 > 0 {
            // Dropping every record: a crash at any point leaves either all the old records
            // (uploaded again, harmlessly) or none.
            log.0.set_len(0)?;
            log.1 = 0;
        } else if log.1 > LARGE {
            *log = write_log(&self.dir, inner)?;
        }
        Ok(())
    }

    /// Whether journal writes are waiting for [`Journal::sync`].
    pub fn needs_sync(&self) -> bool {
        *self.synced.lock().unwrap() < self.written.load(Ordering::SeqCst)
            || !self.removals.lock().unwrap().0.is_empty()
    }

    /// Appends an entry durably and wakes the uploader.
    pub fn append(&self, op: Op) -> std::io::Result<u64> {
        let mut inner = self.inner.lock().unwrap();
        let seq = inner.next;
        inner.next += 1;
        let entry = Entry {
            seq,
            at_ms: now_ms(),
            op,
        };
        self.write_entry(&entry)?;
        inner.entries.insert(seq, Arc::new(entry));
        drop(inner);
        self.changed.notify_waiters();
        Ok(seq)
    }

    /// Rewrites a pending entry that is not in flight; false when it is (or is gone).
    pub fn rewrite(&self, seq: u64, op: Op) -> std::io::Result<bool> {
        // The lock is held across the write so the uploader cannot take the old version
        // of the entry in between (it would upload stale content and then remove ours).
        let mut inner = self.inner.lock().unwrap();
        if inner.inflight.contains(&seq)
            || inner.attempted.contains(&seq)
            || !inner.entries.contains_key(&seq)
        {
            return Ok(false);
        }
        let entry = Entry {
            seq,
            at_ms: now_ms(),
            op,
        };
        self.write_entry(&entry)?;
        inner.entries.insert(seq, Arc::new(entry));
        drop(inner);
        self.changed.notify_waiters();
        Ok(true)
    }

    /// Drops every pending entry about `node` (as subject), all or none: none when any of
    /// them is in flight or was tried (the service may have it, and the later ones still
    /// say what the node became). Dropping only the later ones would leave the service with
    /// the node as the early ones made it: a name this device already freed, which a later
    /// create of this device then finds taken. Returns whether entries were dropped.
    pub fn cancel_node(&self, node: NodeId) -> bool {
        let dropped: Vec<Arc<Entry>> = {
            let mut inner = self.inner.lock().unwrap();
            let seqs: Vec<u64> = inner
                .entries
                .values()
                .filter(|e| e.op.node() == node)
                .map(|e| e.seq)
                .collect();
            let busy = |seq: &u64| inner.inflight.contains(seq) || inner.attempted.contains(seq);
            if seqs.is_empty() || seqs.iter().any(busy) {
                return false;
            }
            let dropped: Vec<_> = seqs
                .iter()
                .filter_map(|seq| inner.entries.remove(seq))
                .collect();
            for seq in &seqs {
                if let Err(e) = self.write_drop(*seq) {
                    tracing::warn!("cannot record a cancelled journal entry: {e}");
                }
            }
            dropped
        };
        for entry in &dropped {
            self.delete_files(entry);
        }
        true
    }

    /// Removes an entry's files now (an entry that was never sent: nothing depends on it).
    fn delete_files(&self, entry: &Entry) {
        for path in self.files_of(entry) {
            let _ = std::fs::remove_file(path);
        }
    }

    fn files_of(&self, entry: &Entry) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Some(data) = entry.op.data() {
            if !self.data_in_use(data) {
                files.push(self.data_path(data));
            }
        }
        files
    }

    fn data_in_use(&self, data: &str) -> bool {
        let inner = self.inner.lock().unwrap();
        inner.entries.values().any(|e| e.op.data() == Some(data))
            || inner
                .uploaded
                .values()
                .any(|u| u.data.as_deref() == Some(data))
    }

    /// The last pending entry about `node` that is not in flight and matches `pred`.
    pub fn find_pending(&self, node: NodeId, pred: impl Fn(&Op) -> bool) -> Option<Entry> {
        let inner = self.inner.lock().unwrap();
        inner
            .entries
            .values()
            .rev()
            .filter(|e| !inner.inflight.contains(&e.seq) && !inner.attempted.contains(&e.seq))
            .find(|e| e.op.node() == node && pred(&e.op))
            .map(|e| Entry::clone(e))
    }

    /// Whether any pending entry refers to `node` (as subject).
    pub fn has_pending(&self, node: NodeId) -> bool {
        self.inner
            .lock()
            .unwrap()
            .entries
            .values()
            .any(|e| e.op.node() == node)
    }

    /// Whether any entry after `seq` refers to `node`.
    pub fn has_later(&self, seq: u64, node: NodeId) -> bool {
        let inner = self.inner.lock().unwrap();
        inner
            .entries
            .range(seq + 1..)
            .any(|(_, e)| self.resolve(e.op.node()) == node)
    }

    /// Takes the oldest entry for upload if it has settled for `settle_ms`.
    pub fn take(&self, settle_ms: u64) -> Result<Entry, Option<u64>> {
        let mut inner = self.inner.lock().unwrap();
        if !inner.inflight.is_empty() {
            return Err(None);
        }
        let Some(entry) = inner.entries.values().next().map(|e| Entry::clone(e)) else {
            return Err(None);
        };
        let age = now_ms().saturating_sub(entry.at_ms);
        if age < settle_ms {
            return Err(Some(settle_ms - age));
        }
        inner.inflight.insert(entry.seq);
        if inner.attempted.insert(entry.seq) {
            // Recorded, so a restarted client does not rewrite or cancel it either.
            if let Err(e) = self.write_record(format!("!{}\n", entry.seq).as_bytes()) {
                tracing::warn!("cannot record an upload attempt in the journal: {e}");
            }
        }
        Ok(entry)
    }

    /// Takes the entries right after `after` (the entry just taken) for the same upload, in
    /// order, while each has settled for `settle_ms` and `accept` takes it, at most `max`:
    /// the uploader sends them in one batch. Each is in flight and marked as sent, as
    /// [`Journal::take`] marks its entry; each ends with [`Journal::done`] or
    /// [`Journal::retry_later`].
    pub fn take_more(
        &self,
        after: u64,
        settle_ms: u64,
        max: usize,
        mut accept: impl FnMut(&Entry) -> bool,
    ) -> Vec<Entry> {
        let mut inner = self.inner.lock().unwrap();
        let now = now_ms();
        let taken: Vec<Entry> = inner
            .entries
            .range(after + 1..)
            .map(|(_, e)| e)
            .take_while(|e| now.saturating_sub(e.at_ms) >= settle_ms)
            .take(max)
            .take_while(|e| accept(e))
            .map(|e| Entry::clone(e))
            .collect();
        for entry in &taken {
            inner.inflight.insert(entry.seq);
            if inner.attempted.insert(entry.seq) {
                if let Err(e) = self.write_record(format!("!{}\n", entry.seq).as_bytes()) {
                    tracing::warn!("cannot record an upload attempt in the journal: {e}");
                }
            }
        }
        taken
    }

    /// The entry in flight is done, leaving `node` (the node as the answer left it, `None`
    /// when gone): it is kept, with its content file, as uploaded until a saved snapshot
    /// includes the answer ([`Journal::forget`]; see the module docs). It is never sent again.
    pub fn done(&self, seq: u64, node: Option<jewel_wire::Node>) {
        {
            let mut inner = self.inner.lock().unwrap();
            inner.inflight.remove(&seq);
            inner.attempted.remove(&seq);
            if let Some(entry) = inner.entries.remove(&seq) {
                let up = Uploaded {
                    seq,
                    id: self.resolve(entry.op.node()),
                    created: matches!(entry.op, Op::Create { .. }),
                    node,
                    data: entry.op.data().map(str::to_string),
                };
                let written = uploaded_record(&up).and_then(|r| self.write_record(&r));
                if let Err(e) = written {
                    tracing::error!("cannot record an upload in the journal: {e}");
                }
                inner.uploaded.insert(seq, Arc::new(up));
            }
        }
        self.changed.notify_waiters();
    }

    /// The uploaded entries waiting for a checkpoint, in order.
    pub fn uploaded(&self) -> Vec<Arc<Uploaded>> {
        let inner = self.inner.lock().unwrap();
        inner.uploaded.values().cloned().collect()
    }

    /// A saved snapshot includes the answers of uploaded entries `seqs`: drops them (their
    /// content files go after the next [`Journal::sync`]).
    pub fn forget(&self, seqs: &[u64]) {
        let mut files = Vec::new();
        {
            let mut inner = self.inner.lock().unwrap();
            for seq in seqs {
                let Some(up) = inner.uploaded.remove(seq) else {
                    continue;
                };
                if let Err(e) = self.write_drop(*seq) {
                    tracing::error!("cannot record a checkpoint in the journal: {e}");
                    self.removals.lock().unwrap().0.push(*seq); // the next sync tries again
                }
                if let Some(data) = &up.data {
                    files.push(data.clone());
                }
            }
        }
        let files: Vec<PathBuf> = files
            .into_iter()
            .filter(|d| !self.data_in_use(d))
            .map(|d| self.data_path(&d))
            .collect();
        self.removals.lock().unwrap().1.extend(files);
        self.unsynced.notify_one();
    }

    /// The entry in flight could not be uploaded now: keep it for a later try.
    pub fn retry_later(&self, seq: u64) {
        let mut inner = self.inner.lock().unwrap();
        inner.inflight.remove(&seq);
    }

    pub fn pending(&self) -> usize {
        self.inner.lock().unwrap().entries.len()
    }

    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.inner
            .lock()
            .unwrap()
            .entries
            .values()
            .cloned()
            .collect()
    }

    /// Records that local id `local` is `server` on the service (durable with the next
    /// sync, before the entry that produced it is removed: see the module docs).
    pub fn add_alias(&self, local: NodeId, server: NodeId) -> std::io::Result<()> {
        {
            let mut f = self.alias_file.lock().unwrap();
            writeln!(f, "{local} {server}")?;
            self.written.fetch_add(1, Ordering::SeqCst);
            self.unsynced.notify_one();
        }
        {
            // In the log too, ahead of the drop of the create that made it (see the docs).
            let _order = self.inner.lock().unwrap();
            self.write_record(format!("={local} {server}\n").as_bytes())?;
        }
        self.inodes.add(local, server);
        Ok(())
    }

    /// The inode numbers, whose aliases this journal keeps (see `inodes.rs`).
    pub fn inodes(&self) -> &Arc<Inodes> {
        &self.inodes
    }

    /// The local ids that stand for `id` ([`Inodes::earlier_ids`]).
    pub fn earlier_ids(&self, id: NodeId) -> Vec<NodeId> {
        self.inodes.earlier_ids(id)
    }

    /// The service's id for `id` ([`Inodes::resolve`]).
    pub fn resolve(&self, id: NodeId) -> NodeId {
        self.inodes.resolve(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(node: NodeId) -> Op {
        Op::Content {
            node,
            base_version: 1,
            base_blocks: vec![],
            data: None,
            size: 0,
            mtime_ns: 0,
        }
    }

    #[test]
    fn entries_survive_a_restart_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(dir.path()).unwrap();
            for node in 10..15 {
                j.append(content(node)).unwrap();
            }
            j.add_alias(LOCAL_ID_BASE + 1, 42).unwrap();
            let first = j.take(0).unwrap();
            j.done(first.seq, None);
            j.sync().unwrap();
            // Dropped without cleanup, as a SIGKILL would.
        }
        let j = Journal::open(dir.path()).unwrap();
        let nodes: Vec<NodeId> = j.entries().iter().map(|e| e.op.node()).collect();
        assert_eq!(nodes, vec![11, 12, 13, 14]);
        assert_eq!(j.resolve(LOCAL_ID_BASE + 1), 42);
        let seq = j.append(content(99)).unwrap();
        assert!(
            seq > j.entries()[3].seq,
            "sequence numbers keep increasing after replay"
        );
    }

    #[test]
    fn in_flight_entries_are_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let a = j.append(content(1)).unwrap();
        let b = j.append(content(2)).unwrap();
        let taken = j.take(0).unwrap();
        assert_eq!(taken.seq, a);
        assert!(!j.rewrite(a, content(3)).unwrap());
        assert!(!j.cancel_node(1));
        assert!(j.rewrite(b, content(4)).unwrap());
        assert!(j.take(0).is_err(), "one entry in flight at a time");
        j.retry_later(a);
        assert_eq!(j.take(0).unwrap().seq, a);
    }

    #[test]
    fn a_node_s_entries_are_cancelled_all_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.append(content(1)).unwrap();
        j.append(content(1)).unwrap();
        j.append(content(2)).unwrap();
        let taken = j.take(0).unwrap();
        assert!(!j.cancel_node(1), "its first entry is in flight");
        assert_eq!(
            j.pending(),
            3,
            "nothing dropped: the later entry still says what it became"
        );
        j.done(taken.seq, None);
        assert!(j.cancel_node(1));
        assert_eq!(j.pending(), 1);
        assert!(!j.cancel_node(1), "nothing left to cancel");
    }

    #[test]
    fn an_entry_sent_once_is_never_rewritten_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let seq = {
            let j = Journal::open(dir.path()).unwrap();
            let seq = j.append(content(1)).unwrap();
            assert_eq!(j.take(0).unwrap().seq, seq);
            j.retry_later(seq); // the answer was lost: the service may have it
            seq
        };
        let j = Journal::open(dir.path()).unwrap();
        assert!(!j.rewrite(seq, content(1)).unwrap());
        assert!(!j.cancel_node(1));
        assert!(j.find_pending(1, |_| true).is_none());
        // And after the log is rewritten at the next start.
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert!(!j.cancel_node(1));
        assert_eq!(j.take(0).unwrap().seq, seq, "still sent again");
    }

    #[test]
    fn torn_writes_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(dir.path()).unwrap();
            j.append(content(7)).unwrap();
        }
        std::fs::write(
            dir.path().join("00000000000000000099.json.tmp"),
            b"{\"seq\":",
        )
        .unwrap();
        std::fs::write(dir.path().join("00000000000000000098.json"), b"garbage").unwrap();
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.entries().len(), 1);
    }

    #[test]
    fn a_torn_last_record_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(dir.path()).unwrap();
            j.append(content(7)).unwrap();
            j.append(content(8)).unwrap();
            let first = j.take(0).unwrap();
            j.done(first.seq, None);
            j.sync().unwrap();
        }
        let mut log = OpenOptions::new()
            .append(true)
            .open(dir.path().join("log"))
            .unwrap();
        log.write_all(b"+{\"seq\":99,\"at_").unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let nodes: Vec<NodeId> = j.entries().iter().map(|e| e.op.node()).collect();
        assert_eq!(nodes, vec![8]);
    }

    #[test]
    fn an_uploaded_entry_is_never_replayed_and_its_alias_survives() {
        // Killed (dropped without a sync) right after two uploads: replaying them after the
        // newer change would undo it, so neither comes back; the create's alias does.
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(dir.path()).unwrap();
            j.append(content(LOCAL_ID_BASE + 5)).unwrap();
            j.append(content(2)).unwrap();
            j.append(content(3)).unwrap();
            let first = j.take(0).unwrap();
            j.add_alias(LOCAL_ID_BASE + 5, 55).unwrap();
            j.done(first.seq, None);
            let second = j.take(0).unwrap();
            j.done(second.seq, None);
            assert_eq!(j.pending(), 1);
        }
        std::fs::remove_file(dir.path().join("aliases")).unwrap(); // only the log has it
        let j = Journal::open(dir.path()).unwrap();
        let nodes: Vec<NodeId> = j.entries().iter().map(|e| e.op.node()).collect();
        assert_eq!(nodes, vec![3]);
        assert_eq!(j.resolve(LOCAL_ID_BASE + 5), 55);
        let last = j.take(0).unwrap();
        j.done(last.seq, None);
        let all: Vec<u64> = j.uploaded().iter().map(|u| u.seq).collect();
        j.forget(&all);
        j.sync().unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.pending(), 0);
        assert_eq!(std::fs::metadata(dir.path().join("log")).unwrap().len(), 0);
    }

    #[test]
    fn an_uploaded_entry_and_its_content_stay_until_a_checkpoint_forgets_them() {
        // Killed after an upload but before a saved tree included it: the next start still
        // has its answer (for an offline start) and its content file, and does not send it.
        let dir = tempfile::tempdir().unwrap();
        let answer = jewel_wire::Node {
            id: 7,
            parent: 1,
            name: "f".into(),
            kind: jewel_wire::NodeKind::File,
            size: 3,
            mode: 0o644,
            mtime_ns: 0,
            version: 2,
            blocks: vec![],
            target: None,
        };
        let data = {
            let j = Journal::open(dir.path()).unwrap();
            let data = j.new_data_name();
            std::fs::write(j.data_path(&data), b"abc").unwrap();
            let mut op = content(7);
            if let Op::Content { data: d, .. } = &mut op {
                *d = Some(data.clone());
            }
            j.append(op).unwrap();
            let taken = j.take(0).unwrap();
            j.done(taken.seq, Some(answer.clone()));
            j.sync().unwrap();
            data
        };
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.pending(), 0, "never sent again");
        let up = j.uploaded();
        assert_eq!(up.len(), 1);
        assert_eq!(up[0].node.as_ref(), Some(&answer));
        assert!(j.data_path(&data).exists());
        j.forget(&[up[0].seq]);
        j.sync().unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert!(j.uploaded().is_empty());
        assert!(!j.data_path(&data).exists());
    }

    #[test]
    fn earlier_local_ids_are_found_from_the_service_id() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (LOCAL_ID_BASE + 1, LOCAL_ID_BASE + 2);
        {
            let j = Journal::open(dir.path()).unwrap();
            j.append(content(9)).unwrap(); // something pending, so aliases are kept
            j.add_alias(a, 77).unwrap();
            j.add_alias(b, a).unwrap();
            let mut ids = j.earlier_ids(77);
            ids.sort();
            assert_eq!(ids, vec![a, b]);
            assert!(j.earlier_ids(5).is_empty());
        }
        let j = Journal::open(dir.path()).unwrap();
        let mut ids = j.earlier_ids(77);
        ids.sort();
        assert_eq!(ids, vec![a, b], "after a restart too");
    }

    #[test]
    fn settle_time_is_respected() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.append(content(1)).unwrap();
        match j.take(60_000) {
            Err(Some(wait)) => assert!(wait > 50_000),
            other => panic!("expected to wait, got {other:?}"),
        }
    }
}
