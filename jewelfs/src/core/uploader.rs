//! The uploader: drains the journal in order, one entry at a time.
//!
//! File content goes **blocks first**: the content file is cut into 4 MiB blocks and hashed
//! (each block is also put in the block cache, so later reads stay local), `POST
//! /blocks/missing` says which the service lacks, only those are PUT (a few at once), and then
//! the metadata commit names the blocks. An unchanged block is never sent twice.
//!
//! How each answer is handled (the conflict rules of DESIGN.md):
//! - **transient** (unreachable, busy, throttled, a 5xx, an answer that is not the
//!   service's JSON, a refused token): the entry stays, the uploader backs off (doubling,
//!   with jitter, at least what `Retry-After` asks) and tries again; `status` says why;
//!   `online` drops only when the service was not reached at all.
//! - **content conflict** (stale base): if the service already has exactly our content, done
//!   (identical content never conflicts; this also makes a replay after a crash harmless);
//!   if only metadata changed since our base (same blocks), retry on the current version;
//!   otherwise the remote version keeps the name and ours is stored as a conflict copy.
//! - **create on a taken name**: identical content → adopt the existing node; two
//!   directories → merge; else our node becomes a conflict copy.
//! - **edit vs delete**: content committed to a node deleted meanwhile is created again
//!   (the edit wins) and shows where the service put it; our delete of a node edited
//!   meanwhile is dropped (the edit wins) and the node shows again.
//! - **deletes are never recursive**: a directory this device saw empty may have gained a
//!   child on another device; the service then refuses (`NotEmpty`) and the directory shows
//!   again here, to be listed afresh. A node deleted (or found gone) is forgotten wherever
//!   the tree still lists it.
//! - **refusals for good** (the service's own error, e.g. a name or size it does not
//!   accept) are logged at WARN with the path, shown by `status`, and the entry dropped:
//!   retrying a request the service refuses would block every later change. Content never
//!   goes with it: the bytes are kept in the refused folder (`refused.rs`) first.
//! - **our own answers**: the node the service returns is applied at once, at the place the
//!   service gives, unless a *later* journal entry moves it again. Its version is remembered
//!   as ours (a later commit finding it conflicts with no one) only when its content is what
//!   this device knew: a move retried on a newer version may carry another device's edit.
//!
//! Every unusual answer above (conflict, taken name, gone node, refusal) also marks the
//! directories involved for reconciliation (`reconcile.rs`), which re-lists them from the
//! service once the journal is drained: the repairs here are the fast path, that is the net.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use jewel_wire::*;

use super::api::ApiErr;
use super::blocks::sha256_hex;
use super::conflict::free_conflict_name;
use super::journal::{is_local, Entry, LocalKind, Op, Seen};
use super::{now_ns, Core, Inval};

/// Why an entry could not be uploaded.
pub(crate) enum Fail {
    /// Not this time: the service was unreachable or busy, or answered something we cannot
    /// read, or refused our token. The entry stays and is tried again after a pause.
    Transient(ApiErr),
    /// Worth another try as it is: the service lacks a block the commit names (collected as
    /// garbage between our upload and the commit); the next attempt uploads it again.
    Retry(ApiErr),
    Refused(String),
}

impl From<ApiErr> for Fail {
    fn from(e: ApiErr) -> Self {
        if e.is_transient() || e.code() == Some(ErrorCode::Unauthorized) {
            Fail::Transient(e)
        } else if e.code() == Some(ErrorCode::MissingBlocks) {
            Fail::Retry(e)
        } else {
            Fail::Refused(e.to_string())
        }
    }
}

/// The pause before trying an entry again: the backoff with ±25 % jitter (so many devices
/// that failed together do not come back together), and never less than the service asked.
fn pause(backoff: Duration, asked: Option<Duration>) -> Duration {
    use rand::Rng;
    let jittered = backoff.mul_f64(rand::thread_rng().gen_range(0.75..1.25));
    jittered.max(asked.unwrap_or_default())
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Self {
        Fail::Refused(format!("local I/O: {e}"))
    }
}

pub(crate) type Res<T> = Result<T, Fail>;

/// The uploader's pace after failures: the next pause, and whether it marked the service
/// unreachable (so the first success marks it reachable again).
pub(crate) struct Pacing {
    backoff: Duration,
    marked_offline: bool,
}

impl Default for Pacing {
    fn default() -> Pacing {
        Pacing {
            backoff: Duration::from_millis(100),
            marked_offline: false,
        }
    }
}

impl Pacing {
    /// The pause before the next try (see [`pause`]); doubles the backoff for the one after.
    fn next(&mut self, asked: Option<Duration>) -> Duration {
        let wait = pause(self.backoff, asked);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        wait
    }
}

/// The longest pause between two tries of one entry (when the service names no longer wait).
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// `op` based on version `new` instead of `old`, when it is a content change or a delete
/// based on `old` (what our own commit just replaced); `None` for anything else.
fn rebased(op: &Op, old: Version, new: &Node) -> Option<Op> {
    match op {
        Op::Content {
            node,
            base_version,
            data,
            size,
            mtime_ns,
            ..
        } if *base_version == old => Some(Op::Content {
            node: *node,
            base_version: new.version,
            base_blocks: new.blocks.clone(),
            data: data.clone(),
            size: *size,
            mtime_ns: *mtime_ns,
        }),
        Op::Delete {
            node, base_version, ..
        } if *base_version == old => Some(Op::Delete {
            node: *node,
            base_version: new.version,
            base_blocks: new.blocks.clone(),
        }),
        _ => None,
    }
}

impl Core {
    /// Runs forever: uploads journal entries as they come, in order; a run of small
    /// independent changes ready together goes up in one batch (`batch.rs`).
    pub async fn run_uploader(self: Arc<Self>) {
        let mut pacing = Pacing::default();
        loop {
            let notified = self.journal.changed.notified();
            if self.device.load(Ordering::Relaxed) == 0 {
                // Nothing goes up before this mount is attached as a device (an offline
                // start attaches once the service answers): the service credits each change
                // to the device that sent it, and a device watches the folders it made from
                // their creation on. A folder sent without one was never heard of here
                // again (three-device seed 276). Attaching notifies `changed`.
                let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
                continue;
            }
            match self.journal.take(self.cfg.settle_ms) {
                Ok(entry) => {
                    let more = self.take_batch(&entry);
                    let pause = if more.is_empty() {
                        self.uploading.store(entry.seq, Ordering::Relaxed);
                        let result = self.upload(&entry).await;
                        self.uploading.store(0, Ordering::Relaxed);
                        self.finish(&entry, result, &mut pacing)
                    } else {
                        let mut entries = vec![entry];
                        entries.extend(more);
                        self.upload_batch(&entries, &mut pacing).await
                    };
                    if let Some(pause) = pause {
                        tokio::time::sleep(pause).await;
                    }
                }
                Err(Some(wait)) => tokio::time::sleep(Duration::from_millis(wait)).await,
                Err(None) => {
                    if self.has_suspects() && self.online.load(Ordering::Relaxed) {
                        self.reconcile().await;
                        if !self.has_suspects() {
                            continue;
                        }
                    }
                    // Folders still to reconcile (the service was away, or the journal not
                    // drained): look again soon. Otherwise sleep until something is journaled.
                    let idle = if self.has_suspects() {
                        Duration::from_secs(1)
                    } else {
                        Duration::from_secs(10)
                    };
                    let _ = tokio::time::timeout(idle, notified).await;
                }
            }
        }
    }

    /// Ends one entry's upload attempt: done, kept for another try, or refused for good.
    /// Returns the pause the uploader takes before its next try, if any.
    pub(crate) fn finish(
        &self,
        entry: &Entry,
        result: Res<()>,
        pacing: &mut Pacing,
    ) -> Option<Duration> {
        let seq = entry.seq;
        tracing::debug!(seq, op = ?entry.op, ok = result.is_ok(), "uploaded");
        match result {
            Ok(()) => {
                // The service answered after a request of ours was lost: it is reachable
                // again. The listener would say so only when its long-poll returns (up to
                // `poll_timeout_ms` later); until then `status` said offline, the
                // pre-uploader and reconciliation stood still and `fsync` did not wait.
                // Before `done`, so a status with nothing pending never says offline.
                if std::mem::take(&mut pacing.marked_offline) {
                    self.online.store(true, Ordering::Relaxed);
                    self.token_accepted();
                }
                self.journal.done(seq, self.answer_of(entry));
                self.uploaded.fetch_add(1, Ordering::Relaxed);
                self.after_upload(entry);
                if pacing.backoff > Duration::from_millis(100) {
                    self.last_error.lock().unwrap().take();
                }
                pacing.backoff = Duration::from_millis(100);
                None
            }
            Err(Fail::Transient(e)) => {
                self.journal.retry_later(seq);
                if e.code() == Some(ErrorCode::Unauthorized) {
                    self.token_refused(&e);
                    pacing.marked_offline = true;
                } else if e.is_offline() {
                    self.online.store(false, Ordering::Relaxed);
                    pacing.marked_offline = true;
                    tracing::debug!("upload waits, service unreachable: {e}");
                } else {
                    tracing::info!("upload waits and tries again: {e}");
                    *self.last_error.lock().unwrap() = Some(format!("uploads retrying: {e}"));
                }
                Some(pacing.next(e.retry_after()))
            }
            Err(Fail::Retry(e)) => {
                tracing::info!("upload tried again: {e}");
                self.journal.retry_later(seq);
                Some(pacing.next(None))
            }
            Err(Fail::Refused(why)) => {
                let kept = self.keep_refused(entry);
                tracing::warn!(
                    path = %self.path_of(entry.op.node()),
                    kept = ?kept,
                    entry = ?entry.op,
                    "the service refused a change for good: {why}"
                );
                *self.last_error.lock().unwrap() = Some(match &kept {
                    Some(p) => format!(
                        "the service refused a change ({why}); its content is kept in {}",
                        p.display()
                    ),
                    None => format!("the service refused a change: {why}"),
                });
                self.journal.done(seq, self.answer_of(entry));
                self.after_upload(entry);
                // What this device shows of the change will never happen.
                self.suspect_all();
                None
            }
        }
    }

    /// The node entry `entry` changed as the tree shows it now its answer is applied
    /// (`None`: gone), for the journal to keep until the next checkpoint.
    fn answer_of(&self, entry: &Entry) -> Option<Node> {
        let node = self.tree.get(self.journal.resolve(entry.op.node()))?;
        let mut node = (*node).clone();
        node.id = self.journal.resolve(node.id);
        node.parent = self.journal.resolve(node.parent);
        Some(node)
    }

    /// Runs forever: makes journal writes durable within `SYNC_INTERVAL` (see `journal.rs`);
    /// sleeps while nothing is written.
    pub async fn run_syncer(self: Arc<Self>) {
        loop {
            self.journal.unsynced.notified().await;
            tokio::time::sleep(super::journal::SYNC_INTERVAL).await;
            if !self.journal.needs_sync() {
                continue;
            }
            let me = self.clone();
            let result = tokio::task::spawn_blocking(move || me.journal.sync()).await;
            if let Ok(Err(e)) = result {
                tracing::error!("cannot make the journal durable: {e}");
                self.journal.unsynced.notify_one(); // try again after the next interval
            }
        }
    }

    /// Uploads everything pending now (tests, unmount). Returns what is left.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.journal.pending() > 0 && tokio::time::Instant::now() < deadline {
            let notified = self.journal.changed.notified();
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
        self.journal.pending()
    }

    fn after_upload(&self, entry: &Entry) {
        let id = self.journal.resolve(entry.op.node());
        if let Some(data) = entry.op.data() {
            let mut local = self.local.lock().unwrap();
            if local.get(&id).is_some_and(|l| l.data == data) {
                local.remove(&id);
            }
        }
        self.maybe_unpin(id);
    }

    pub(crate) fn maybe_unpin(&self, id: NodeId) {
        if is_local(id) || self.journal.has_pending(id) {
            return;
        }
        let has_local = self.local.lock().unwrap().contains_key(&id);
        let has_staging = self.staging.lock().unwrap().contains_key(&id);
        if has_local || has_staging {
            return;
        }
        self.tree.unpin(id);
    }

    pub(crate) async fn upload(&self, entry: &Entry) -> Res<()> {
        match &entry.op {
            Op::Create {
                node,
                parent,
                name,
                kind,
                mode,
                mtime_ns,
            } => {
                self.upload_create(entry.seq, *node, *parent, name, kind, *mode, *mtime_ns)
                    .await
            }
            Op::Content {
                node,
                base_version,
                base_blocks,
                data,
                size,
                mtime_ns,
            } => {
                self.upload_content(
                    entry.seq,
                    *node,
                    *base_version,
                    base_blocks,
                    data.as_deref(),
                    *size,
                    *mtime_ns,
                )
                .await
            }
            Op::Move {
                node,
                new_parent,
                new_name,
                mode,
                expect,
            } => {
                self.upload_move(*node, *new_parent, new_name, *mode, expect.clone())
                    .await
            }
            Op::Delete {
                node,
                base_version,
                base_blocks,
            } => self.upload_delete(*node, *base_version, base_blocks).await,
            Op::SetAttr {
                node,
                mode,
                mtime_ns,
            } => {
                let id = self.journal.resolve(*node);
                if is_local(id) {
                    return Ok(());
                }
                let known = self.tree.get(id).map(|n| n.blocks.clone());
                match self
                    .api
                    .set_attr(
                        id,
                        &SetAttr {
                            mode: *mode,
                            mtime_ns: *mtime_ns,
                        },
                    )
                    .await
                {
                    Ok(n) => {
                        let ours = known.as_ref() == Some(&n.blocks);
                        self.apply_answer(n, ours);
                        Ok(())
                    }
                    Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Cuts a content file into blocks, caches them, and sends the ones the service lacks.
    async fn upload_data(&self, data: Option<&str>, size: u64) -> Res<Content> {
        let Some(data) = data else {
            return Ok(Content {
                inline: None,
                size: 0,
                blocks: vec![],
            });
        };
        // The pre-uploader may be sending this very file: wait for it rather than race it.
        for _ in 0..6000 {
            if !self.pre_busy.lock().unwrap().contains(data) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ready = self.pre.lock().unwrap().remove(data);
        if let Some(content) = ready {
            return Ok(content);
        }
        let content = self.hash_data(data, size).await?;
        if content.inline.is_none() {
            self.send_blocks(vec![(self.journal.data_path(data), content.blocks.clone())])
                .await?;
        }
        Ok(content)
    }

    /// Whether small files' bytes go inline with their commit (the service said it takes
    /// them).
    pub(crate) fn inlines(&self) -> bool {
        self.inline_content.load(Ordering::Relaxed)
    }

    /// Whether content of `size` bytes goes inline (so it has no blocks to send ahead).
    fn goes_inline(&self, size: u64) -> bool {
        self.inlines() && size > 0 && size <= MAX_INLINE_BYTES as u64
    }

    /// Cuts a content file into blocks, hashes them and puts them in the block cache. A
    /// small file's bytes come along inline when the service takes them so
    /// ([`Core::inlines`]): its commit then needs no block upload.
    pub(crate) async fn hash_data(&self, data: &str, size: u64) -> Res<Content> {
        let path = self.journal.data_path(data);
        let cache = self.blocks.clone();
        let inlines = self.inlines();
        let (blocks, size, inline) = tokio::task::spawn_blocking(
            move || -> std::io::Result<(Vec<String>, u64, Option<InlineBytes>)> {
                use std::os::unix::fs::FileExt;
                let file = std::fs::File::open(&path)?;
                let file_len = file.metadata()?.len();
                let len = file_len.min(size);
                let mut hashes = Vec::new();
                let mut buf = vec![0u8; (len.min(BLOCK_SIZE)) as usize];
                let mut off = 0;
                while off < len {
                    let want = ((len - off).min(BLOCK_SIZE)) as usize;
                    file.read_exact_at(&mut buf[..want], off)?;
                    let hash = sha256_hex(&buf[..want]);
                    if want as u64 == file_len {
                        cache.insert_file(&hash, &path, &buf[..want])?; // the whole file
                    } else {
                        cache.insert(&hash, &buf[..want])?;
                    }
                    hashes.push(hash);
                    off += want as u64;
                }
                let inline = (inlines && len > 0 && len <= MAX_INLINE_BYTES as u64)
                    .then(|| InlineBytes(buf[..len as usize].to_vec()));
                Ok((hashes, len, inline))
            },
        )
        .await
        .map_err(|e| Fail::Refused(e.to_string()))??;
        Ok(Content {
            size,
            blocks,
            inline,
        })
    }

    /// Sends the blocks the service lacks: one `missing` question for all, then sixteen PUTs
    /// at a time (at most 64 MiB in memory; on a slow link each round costs a round trip). Blocks are content-addressed, so sending one early is always safe.
    pub(crate) async fn send_blocks(
        &self,
        files: Vec<(std::path::PathBuf, Vec<String>)>,
    ) -> Res<()> {
        let mut whereis: std::collections::HashMap<String, (std::path::PathBuf, usize)> =
            Default::default();
        for (path, hashes) in &files {
            for (i, h) in hashes.iter().enumerate() {
                whereis.entry(h.clone()).or_insert((path.clone(), i));
            }
        }
        let all: Vec<String> = whereis.keys().cloned().collect();
        let mut missing = Vec::new();
        for chunk in all.chunks(MAX_HASHES_PER_REQUEST) {
            missing.extend(self.api.missing_blocks(chunk.to_vec()).await?.missing);
        }
        let uploads = missing.into_iter().map(|m| {
            let place = whereis.get(&m.hash).cloned();
            let cache = self.blocks.clone();
            async move {
                let (path, index) = place.ok_or_else(|| {
                    Fail::Refused(format!("service asked for unknown block {}", m.hash))
                })?;
                let hash = m.hash.clone();
                let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                    match std::fs::read(cache.path(&hash)) {
                        Ok(b) => Ok(b),
                        Err(_) => {
                            use std::os::unix::fs::FileExt;
                            let file = std::fs::File::open(&path)?;
                            let off = index as u64 * BLOCK_SIZE;
                            let len = (file.metadata()?.len() - off).min(BLOCK_SIZE) as usize;
                            let mut buf = vec![0u8; len];
                            file.read_exact_at(&mut buf, off)?;
                            Ok(buf)
                        }
                    }
                })
                .await
                .map_err(|e| Fail::Refused(e.to_string()))??;
                self.api.put_block(&m.url, Bytes::from(bytes)).await?;
                Ok::<(), Fail>(())
            }
        });
        let results: Vec<Res<()>> = futures::stream::iter(uploads)
            .buffer_unordered(16)
            .collect()
            .await;
        for r in results {
            r?;
        }
        Ok(())
    }

    /// Runs forever: sends the blocks of journaled content ahead of the in-order uploader,
    /// many files at once, so the uploader's critical path is one metadata request per
    /// change (this is what makes a hundred small files arrive together).
    pub async fn run_preuploader(self: Arc<Self>) {
        loop {
            let notified = self.journal.changed.notified();
            // Idle (nothing journaled): sleep until something is; an idle mount costs nothing.
            let wait = if self.journal.pending() == 0 {
                Duration::from_secs(60)
            } else {
                Duration::from_millis(50)
            };
            let _ = tokio::time::timeout(wait, notified).await;
            if !self.online.load(Ordering::Relaxed) {
                continue;
            }
            let entries = self.journal.entries();
            let wanted: Vec<(String, u64)> = {
                let mut pre = self.pre.lock().unwrap();
                let live: std::collections::HashSet<&str> =
                    entries.iter().filter_map(|e| e.op.data()).collect();
                pre.retain(|k, _| live.contains(k.as_str()));
                entries
                    .iter()
                    .filter_map(|e| match &e.op {
                        Op::Create {
                            kind:
                                LocalKind::File {
                                    data: Some(d),
                                    size,
                                },
                            ..
                        }
                        | Op::Content {
                            data: Some(d),
                            size,
                            ..
                        } => Some((d.clone(), *size)),
                        _ => None,
                    })
                    .filter(|(d, size)| !pre.contains_key(d) && !self.goes_inline(*size))
                    .take(64)
                    .collect()
            };
            if wanted.len() < 2 {
                continue; // one file: the uploader does it itself
            }
            self.pre_busy
                .lock()
                .unwrap()
                .extend(wanted.iter().map(|(d, _)| d.clone()));
            let mut hashed = Vec::new();
            for (data, size) in wanted {
                if let Ok(content) = self.hash_data(&data, size).await {
                    hashed.push((data, content));
                }
            }
            let files = hashed
                .iter()
                .map(|(d, c)| (self.journal.data_path(d), c.blocks.clone()))
                .collect();
            if self.send_blocks(files).await.is_ok() {
                let mut pre = self.pre.lock().unwrap();
                for (d, c) in &hashed {
                    pre.insert(d.clone(), c.clone());
                }
            }
            self.pre_busy.lock().unwrap().clear();
        }
    }

    /// Applies a node the service returned for our own request.
    fn apply_own(&self, node: Node) {
        self.apply_answer(node, true);
    }

    /// Applies a node the service returned for our own request; `ours`: its content is
    /// what this device knew (so a later commit that finds this version conflicts with no
    /// one). A move retried on a newer version, or an unconditional attribute change, may
    /// carry another device's content: then it is not ours.
    pub(crate) fn apply_answer(&self, node: Node, ours: bool) {
        let _edit = self.edit.lock().unwrap();
        self.apply_answer_locked(node, ours);
    }

    fn apply_answer_locked(&self, node: Node, ours: bool) {
        if ours {
            self.own_version(&node);
        }
        self.own_changed(node.id);
        if let Some(old) = self.tree.get(node.id) {
            if old.version > node.version {
                return;
            }
        }
        // Keep a place we changed locally since (a later journal entry moves or deletes it;
        // the entry being uploaded is not later: its answer is the place). A node deleted
        // here since is not linked again: its old name may hold a new file already.
        let now = self.uploading.load(Ordering::Relaxed);
        if self.replaced_later(now, node.id) {
            // A rename here replaces this node (the move is still to go): it stays unlisted.
            self.tree.put(node);
            return;
        }
        let keep_place = self.journal.entries().iter().any(|e| {
            e.seq > now
                && matches!(e.op, Op::Move { .. } | Op::Delete { .. })
                && self.journal.resolve(e.op.node()) == node.id
        });
        if keep_place {
            if let Some(old) = self.tree.get(node.id) {
                let mut n = node;
                n.parent = old.parent;
                n.name = old.name.clone();
                self.tree.put(n);
            }
            return;
        }
        self.tree.place(node);
    }

    /// Whether a journal entry after `after_seq` is a rename that replaces node `id` (it saw
    /// `id` at its target name): until it is sent, `id` shows nowhere on this device.
    pub(crate) fn replaced_later(&self, after_seq: u64, id: NodeId) -> bool {
        self.journal.entries().iter().any(|e| {
            e.seq > after_seq
                && matches!(&e.op, Op::Move { expect: Some(Seen::Node { id: t, .. }), .. }
                    if self.journal.resolve(*t) == id)
        })
    }

    /// Rebases later content changes and deletes of `id` from `old` onto the version just
    /// committed. In the journal, not only in memory: after a crash a delete based on the
    /// version before our own commit would find "someone else's edit" and bring the file
    /// back.
    /// A later rename that replaces `id` as it was at `old` now expects it as it is: our
    /// own commit is what the app saw there (after a crash, the memory of our own versions
    /// is gone, and the file would be kept as "another device's" conflict copy).
    fn rebase(&self, after_seq: u64, id: NodeId, old: Version, new: &Node) {
        for e in self.journal.entries() {
            if e.seq <= after_seq {
                continue;
            }
            let op = if self.journal.resolve(e.op.node()) == id {
                rebased(&e.op, old, new)
            } else {
                self.rebased_expect(&e.op, id, old, new)
            };
            if let Some(op) = op {
                let _ = self.journal.rewrite(e.seq, op);
            }
        }
    }

    /// `op`, when it is a rename expecting `id` at version `old`, expecting `new` instead.
    fn rebased_expect(&self, op: &Op, id: NodeId, old: Version, new: &Node) -> Option<Op> {
        let Op::Move {
            node,
            new_parent,
            new_name,
            mode,
            expect:
                Some(Seen::Node {
                    id: target,
                    version,
                    ..
                }),
        } = op
        else {
            return None;
        };
        if *version != old || self.journal.resolve(*target) != id {
            return None;
        }
        Some(Op::Move {
            node: *node,
            new_parent: *new_parent,
            new_name: new_name.clone(),
            mode: *mode,
            expect: Some(Seen::Node {
                id: *target,
                version: new.version,
                blocks: new.blocks.clone(),
            }),
        })
    }

    /// Remembers the version our own request produced (see `own`).
    fn own_version(&self, node: &Node) {
        let mut own = self.own.lock().unwrap();
        let v = own.entry(node.id).or_insert(0);
        if *v < node.version {
            *v = node.version;
        }
    }

    /// Our local node `local` is node `server` on the service from now on.
    fn adopt(&self, local: NodeId, server: Node) -> Res<()> {
        let _edit = self.edit.lock().unwrap();
        self.own_version(&server);
        if local == server.id {
            self.apply_answer_locked(server, true);
            return Ok(());
        }
        let id = server.id;
        let old = self.tree.get(local);
        {
            // Moved and aliased under the staging and local-content locks, so a reader that
            // looks up either id under those locks sees one consistent state.
            let mut staging = self.staging.lock().unwrap();
            let mut contents = self.local.lock().unwrap();
            if let Some(s) = staging.remove(&local) {
                staging.insert(id, s);
            }
            if let Some(l) = contents.remove(&local) {
                contents.insert(id, l);
            }
            // The tree first: the journal's alias sends readers to the new id at once.
            self.tree.alias(local, id);
            self.open_files.rekey(local, id);
            self.journal.add_alias(local, id)?;
        }
        if self.unsent.lock().unwrap().remove(&local) {
            self.unsent.lock().unwrap().insert(id);
        }
        self.rebase_staging(&server);
        let mut node = server;
        if let Some(old) = &old {
            // Our local place and mode are newer than the service's while changes are pending.
            node.parent = old.parent;
            node.name = old.name.clone();
            node.mode = old.mode;
            if node.is_dir() && !self.tree.has_listing(id) {
                self.tree.new_listing(id);
            }
        }
        self.tree.pin(node);
        self.own_changed(id);
        Ok(())
    }

    fn taken(&self, parent: NodeId, name: &str) -> bool {
        matches!(self.tree.child(parent, name), Some(Some(_)))
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload_create(
        &self,
        seq: u64,
        local: NodeId,
        parent: NodeId,
        name: &str,
        kind: &LocalKind,
        mode: u32,
        mtime_ns: i64,
    ) -> Res<()> {
        if self.journal.resolve(local) != local {
            return Ok(()); // created already (replay after a crash)
        }
        let mut parent = self.journal.resolve(parent);
        if is_local(parent) {
            // Its folder never reached the service (removed before it was uploaded): the
            // file is kept at the top rather than lost.
            tracing::warn!(
                local,
                name,
                "the folder of a new file is gone: kept at the top"
            );
            parent = ROOT_ID;
        }
        let new_kind = match kind {
            LocalKind::File { data, size } => NewKind::File {
                content: self.upload_data(data.as_deref(), *size).await?,
            },
            LocalKind::Dir => NewKind::Dir,
            LocalKind::Symlink { target } => NewKind::Symlink {
                target: target.clone(),
            },
        };
        let mut name = name.to_string();
        for attempt in 0..8 {
            let req = CreateNode {
                parent,
                name: name.clone(),
                kind: new_kind.clone(),
                mode: Some(mode),
                mtime_ns: Some(mtime_ns),
            };
            match self.api.create(&req).await {
                Ok(node) => return self.created(seq, local, node),
                Err(e) if e.code() == Some(ErrorCode::Exists) => {
                    let Some(current) = e.current() else {
                        return Err(Fail::Refused(format!("{name} exists")));
                    };
                    self.suspect([parent, current.parent, current.id]);
                    let same = match (&new_kind, current.kind) {
                        (NewKind::Dir, NodeKind::Dir) => true,
                        (NewKind::File { content }, NodeKind::File) => {
                            content.blocks == current.blocks
                        }
                        (NewKind::Symlink { target }, NodeKind::Symlink) => {
                            current.target.as_deref() == Some(target.as_str())
                        }
                        _ => false,
                    };
                    if same {
                        let id = current.id;
                        self.adopt(local, current)?;
                        self.rebase_local(seq, local, &self.tree.get(id).map(|n| (*n).clone()));
                        return Ok(());
                    }
                    // Keep both: the service's node keeps the name, ours gets a conflict name.
                    let new_name =
                        free_conflict_name(&name, &self.cfg.device_name, now_ns(), |n| {
                            self.taken(parent, n)
                        });
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                    self.rename_local(local, parent, &name, &new_name, Some(current));
                    name = new_name;
                }
                Err(e) if e.code() == Some(ErrorCode::NotFound) && attempt < 2 => {
                    // The parent is gone on the service: the new node goes to the root.
                    self.suspect([parent, ROOT_ID]);
                    self.suspect(self.parent_here(local));
                    parent = ROOT_ID;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Fail::Refused(format!(
            "could not find a free name for {name}"
        )))
    }

    /// Our create of `local` (journal entry `seq`) made `node` on the service.
    pub(crate) fn created(&self, seq: u64, local: NodeId, node: Node) -> Res<()> {
        self.rebase(seq, node.id, 0, &node);
        let id = node.id;
        self.adopt(local, node)?;
        self.rebase_local(seq, local, &self.tree.get(id).map(|n| (*n).clone()));
        Ok(())
    }

    /// Our content commit of `id` (journal entry `seq`, based on `base_version`) made `node`.
    pub(crate) fn committed(&self, seq: u64, id: NodeId, base_version: Version, node: Node) {
        self.rebase(seq, id, base_version, &node);
        self.rebase_staging(&node);
        self.apply_own(node);
    }

    /// Later content entries and deletes of a node created locally were based on version 0.
    fn rebase_local(&self, seq: u64, local: NodeId, node: &Option<Node>) {
        if let Some(node) = node {
            for e in self.journal.entries() {
                if e.seq > seq && e.op.node() == local {
                    if let Some(op) = rebased(&e.op, 0, node) {
                        let _ = self.journal.rewrite(e.seq, op);
                    }
                }
            }
        }
    }

    /// Shows a conflict locally: our node `id` takes `new_name`; `theirs` takes `name`.
    fn rename_local(
        &self,
        id: NodeId,
        parent: NodeId,
        name: &str,
        new_name: &str,
        theirs: Option<Node>,
    ) {
        if let Some(n) = self.tree.get(id) {
            let mut n = (*n).clone();
            self.tree.unlink(n.parent, &n.name, id);
            n.parent = parent;
            n.name = new_name.to_string();
            self.tree.link(parent, new_name, id);
            self.tree.pin(n);
        }
        if let Some(t) = theirs {
            let tid = t.id;
            self.tree.place(t);
            self.inval(Inval::Inode(tid));
        }
        self.inval(Inval::Entry {
            parent,
            name: name.to_string(),
        });
        self.inval(Inval::Entry {
            parent,
            name: new_name.to_string(),
        });
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload_content(
        &self,
        seq: u64,
        node: NodeId,
        base_version: Version,
        base_blocks: &[BlockHash],
        data: Option<&str>,
        size: u64,
        mtime_ns: i64,
    ) -> Res<()> {
        let id = self.journal.resolve(node);
        if is_local(id) {
            return Ok(()); // its create was dropped; nothing to attach the content to
        }
        let content = self.upload_data(data, size).await?;
        let mut base = base_version;
        for _ in 0..4 {
            let req = CommitContent {
                base_version: base,
                content: content.clone(),
                mtime_ns: Some(mtime_ns),
            };
            match self.api.commit(id, &req).await {
                Ok(n) => {
                    if base != base_version {
                        // Retried on our own newer version: what was journaled after it
                        // may be based on that one.
                        self.rebase(seq, id, base, &n);
                    }
                    self.committed(seq, id, base_version, n);
                    return Ok(());
                }
                Err(e) if e.code() == Some(ErrorCode::Conflict) => {
                    let Some(current) = e.current() else {
                        return Err(e.into());
                    };
                    if current.blocks == content.blocks && current.size == content.size {
                        self.rebase(seq, id, base_version, &current);
                        self.apply_own(current);
                        return Ok(());
                    }
                    // Only metadata changed since our base, or the service holds exactly what
                    // this device itself committed last: no one else touched the content.
                    let ours = self.own.lock().unwrap().get(&id) == Some(&current.version);
                    if current.blocks == base_blocks || ours {
                        base = current.version;
                        continue;
                    }
                    self.suspect([current.parent]);
                    self.suspect(self.parent_here(id));
                    return self.content_conflict(id, current, content, mtime_ns).await;
                }
                Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                    self.suspect(self.parent_here(id));
                    return self.recreate(id, content, mtime_ns).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Fail::Refused("content commit kept conflicting".into()))
    }

    /// Stores our content as a conflict copy beside the remote version, which keeps the name.
    async fn content_conflict(
        &self,
        id: NodeId,
        current: Node,
        content: Content,
        mtime_ns: i64,
    ) -> Res<()> {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
        let parent = current.parent;
        let mode = self.tree.get(id).map(|n| n.mode).unwrap_or(current.mode);
        let created = self
            .create_copy(parent, &current.name, content, mode, mtime_ns)
            .await?;
        // The original name shows the remote version again.
        self.drop_local_content(id);
        self.tree.unpin(id);
        self.tree.place(current.clone());
        if self.journal.has_pending(id) {
            self.tree.pin(current.clone());
        }
        self.inval(Inval::Inode(id));
        self.inval(Inval::Entry {
            parent,
            name: current.name.clone(),
        });
        self.inval(Inval::Entry {
            parent: created.parent,
            name: created.name.clone(),
        });
        self.own_changed(created.id);
        self.own_changed(id);
        self.tree.place(created);
        Ok(())
    }

    async fn create_copy(
        &self,
        parent: NodeId,
        name: &str,
        content: Content,
        mode: u32,
        mtime_ns: i64,
    ) -> Res<Node> {
        let mut parent = parent;
        // Named after the edit's time, not the clock's, and tried in the same order every
        // time: a retry after a lost answer asks for the name the first try took, and the
        // service's "exists, with this content" says the copy is there (a name from the
        // clock made a second copy in a later second).
        for attempt in 1..=8u32 {
            let copy_name =
                super::conflict::conflict_name(name, &self.cfg.device_name, mtime_ns, attempt);
            let req = CreateNode {
                parent,
                name: copy_name,
                kind: NewKind::File {
                    content: content.clone(),
                },
                mode: Some(mode),
                mtime_ns: Some(mtime_ns),
            };
            match self.api.create(&req).await {
                Ok(n) => return Ok(n),
                Err(e) if e.code() == Some(ErrorCode::Exists) => {
                    if e.current().is_some_and(|c| c.blocks == content.blocks) {
                        return Ok(e.current().unwrap());
                    }
                }
                Err(e) if e.code() == Some(ErrorCode::NotFound) => parent = ROOT_ID,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Fail::Refused(format!("no free conflict name for {name}")))
    }

    /// Edit beats delete: the node was deleted elsewhere, our edit brings it back.
    async fn recreate(&self, id: NodeId, content: Content, mtime_ns: i64) -> Res<()> {
        // After a restart the tree may have forgotten where the deleted file lived. Never
        // drop the edit for that: bring it back in the top folder under a name that says so.
        let old = self.tree.get(id).unwrap_or_else(|| {
            std::sync::Arc::new(Node {
                id,
                parent: ROOT_ID,
                name: format!("recovered file {id}"),
                kind: NodeKind::File,
                size: content.size,
                mode: 0o644,
                mtime_ns,
                version: 0,
                blocks: Vec::new(),
                target: None,
            })
        });
        let mut parent = self.journal.resolve(old.parent);
        if is_local(parent) {
            parent = ROOT_ID;
        }
        let mut name = old.name.clone();
        for _ in 0..8 {
            let req = CreateNode {
                parent,
                name: name.clone(),
                kind: NewKind::File {
                    content: content.clone(),
                },
                mode: Some(old.mode),
                mtime_ns: Some(mtime_ns),
            };
            match self.api.create(&req).await {
                Ok(n) => {
                    self.show_recreated(id, n)?;
                    return Ok(());
                }
                Err(e) if e.code() == Some(ErrorCode::Exists) => {
                    if let Some(c) = e.current().filter(|c| c.blocks == content.blocks) {
                        self.show_recreated(id, c)?;
                        return Ok(());
                    }
                    // After the edit's time, as `create_copy` names it: a retry after a
                    // lost answer meets the copy it made.
                    name = free_conflict_name(&old.name, &self.cfg.device_name, mtime_ns, |n| {
                        n == name || self.taken(parent, n)
                    });
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.code() == Some(ErrorCode::NotFound) => parent = ROOT_ID,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Fail::Refused(format!("could not bring back {}", old.name)))
    }

    /// Node `id`, deleted elsewhere, lives on as `node` (possibly under another name): it
    /// shows there, unless a later local move will place it.
    fn show_recreated(&self, id: NodeId, node: Node) -> Res<()> {
        let new_id = node.id;
        self.suspect([node.parent]);
        self.own_changed(new_id);
        let old = self.tree.get(id);
        self.adopt(id, node.clone())?;
        let now = self.uploading.load(Ordering::Relaxed);
        let moved_later = self.journal.entries().iter().any(|e| {
            e.seq > now
                && matches!(e.op, Op::Move { .. })
                && self.journal.resolve(e.op.node()) == new_id
        });
        if moved_later {
            return Ok(());
        }
        if let Some(old) = old {
            self.tree.unlink(old.parent, &old.name, new_id);
            self.tree.unlink(old.parent, &old.name, id);
            self.inval(Inval::Entry {
                parent: old.parent,
                name: old.name.clone(),
            });
        }
        let mut shown = node;
        if let Some(cur) = self.tree.get(new_id) {
            shown.mode = cur.mode;
        }
        self.tree.link_remote(shown.parent, &shown.name, new_id);
        self.inval(Inval::Entry {
            parent: shown.parent,
            name: shown.name.clone(),
        });
        self.tree.pin(shown);
        Ok(())
    }

    /// Node `id` is gone on the service: it goes here too, unless a later local change
    /// still needs it (an edit brings it back).
    pub(crate) fn drop_gone(&self, id: NodeId) {
        if self
            .journal
            .has_later(self.uploading.load(Ordering::Relaxed), id)
        {
            return;
        }
        self.own_changed(id);
        if let Some(n) = self.tree.get(id) {
            self.tree.unlink(n.parent, &n.name, id);
            self.inval(Inval::Delete {
                parent: n.parent,
                child: id,
                name: n.name.clone(),
            });
        }
        self.drop_local_content(id);
        self.forget_node(id);
    }

    /// The service keeps `node` where it is, although this device deleted it: it shows
    /// again here (a directory with what it holds now, listed afresh).
    fn bring_back(&self, node: Node) {
        let (id, parent, name) = (node.id, node.parent, node.name.clone());
        self.suspect([parent]);
        self.own_changed(id);
        if let Some(old) = self.tree.get(id) {
            self.tree.unlink(old.parent, &old.name, id);
        }
        self.tree.forget(id);
        self.tree.put(node);
        self.tree.link_remote(parent, &name, id);
        self.inval(Inval::Entry { parent, name });
        self.inval(Inval::Inode(parent));
    }

    async fn upload_move(
        &self,
        node: NodeId,
        new_parent: NodeId,
        new_name: &str,
        mode: MoveMode,
        seen: Option<Seen>,
    ) -> Res<()> {
        let id = self.journal.resolve(node);
        let np = self.journal.resolve(new_parent);
        // The content this device saw at the target, and what the service is told to expect.
        let (seen_node, mut expect) = match seen {
            None => (None, None),
            Some(Seen::Free) => (None, Some(TargetExpect::Free)),
            Some(Seen::Node {
                id: target,
                version,
                blocks,
            }) => {
                let target = self.journal.resolve(target);
                (
                    Some((target, blocks)),
                    Some(TargetExpect::Node {
                        id: target,
                        version,
                    }),
                )
            }
        };
        if is_local(id) || is_local(np) {
            return Ok(());
        }
        let mut base = match self.tree.get(id) {
            Some(n) if n.version > 0 => n.version,
            _ => match self.api.get_node(id).await {
                Ok(n) => n.version,
                Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                    self.drop_gone(id);
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            },
        };
        // The moved version's content is ours only if the version we move is: the tree may
        // know another device's edit (taken from an event while our own edit is pending),
        // and a move retried on a newer version carries that edit.
        let first_base = base;
        let base_was_ours = self.own.lock().unwrap().get(&id) == Some(&first_base);
        for _ in 0..4 {
            let req = MoveNode {
                base_version: base,
                new_parent: np,
                new_name: new_name.to_string(),
                mode,
                expect_target: expect,
            };
            match self.api.move_node(id, &req).await {
                Ok(result) => {
                    let replaced_nothing = result.other.is_none();
                    if let Some(other) = result.other {
                        if mode == MoveMode::Exchange {
                            let ours = self.tree.get(other.id).map(|n| n.blocks.clone())
                                == Some(other.blocks.clone());
                            self.apply_answer(other, ours);
                        } else if self.tree.get(other.id).is_some() {
                            self.tree.unlink(other.parent, &other.name, other.id);
                            self.forget_node(other.id);
                        }
                    }
                    // The app replaced a node here, but on the service nothing was at the
                    // target any more (another device moved it away first): that node lives
                    // on where the service has it, and this device, which unlinked it when
                    // the app renamed, must list it again there.
                    if mode == MoveMode::Replace && replaced_nothing && seen_node.is_some() {
                        self.suspect_all();
                    }
                    let ours = base_was_ours && base == first_base;
                    self.apply_answer(result.node, ours);
                    return Ok(());
                }
                Err(e) if e.code() == Some(ErrorCode::Conflict) => match e.current() {
                    Some(c) => {
                        self.suspect([np, c.parent]);
                        base = c.version;
                    }
                    None => return Err(e.into()),
                },
                Err(e) if e.code() == Some(ErrorCode::Exists) && mode == MoveMode::Replace => {
                    // The target name holds something this device did not see when the app
                    // renamed: another device's edit of the replaced file, or a file made
                    // there meanwhile. Unless it is our own newer version, it is kept under
                    // a conflict name, and the rename then goes ahead.
                    let Some(c) = e.current() else {
                        return Err(e.into());
                    };
                    // The node this device saw, moved or renamed since (by us, or by
                    // anyone: a place is not content) but with the content seen, or at a
                    // version our own requests made, is what the app meant to replace.
                    let own = self.own.lock().unwrap().get(&c.id) == Some(&c.version);
                    let same = seen_node
                        .as_ref()
                        .is_some_and(|(t, blocks)| *t == c.id && (own || *blocks == c.blocks));
                    if same {
                        expect = Some(TargetExpect::Node {
                            id: c.id,
                            version: c.version,
                        });
                        continue;
                    }
                    self.keep_displaced(c).await?;
                    expect = Some(TargetExpect::Free);
                }
                Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                    // The node or its new parent is gone: the listings will tell which.
                    self.suspect([np]);
                    self.suspect(self.parent_here(id));
                    self.suspect_service_place(id).await?;
                    return Ok(());
                }
                Err(e) => {
                    self.suspect([np]);
                    self.suspect(self.parent_here(id));
                    if !e.is_transient() {
                        self.suspect_service_place(id).await?;
                    }
                    return Err(e.into());
                }
            }
        }
        Err(Fail::Refused("move kept conflicting".into()))
    }

    /// A move of `id` did not happen: the node lives on where the service has it. This
    /// device shows it at the place the app moved it to (the tree holds one place per node,
    /// the local one while the move is pending), so the place it came from is nowhere in the
    /// tree any more, and the listing of the move's target, the only one suspected so far,
    /// never had it. The service is asked where the node is, and that directory is re-listed
    /// (reconciliation takes the service's place of every node without local changes); a
    /// node gone from the service too is dropped by the re-listed places.
    async fn suspect_service_place(&self, id: NodeId) -> Res<()> {
        match self.api.get_node(id).await {
            Ok(n) => self.suspect([n.parent]),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Another device's node that a rename of ours would have replaced keeps living under
    /// a conflict name beside it (edit beats replace, as edit beats delete).
    async fn keep_displaced(&self, theirs: Node) -> Res<()> {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
        for attempt in 1..8u32 {
            let name = super::conflict::conflict_name(
                &theirs.name,
                &self.cfg.device_name,
                now_ns(),
                attempt,
            );
            let req = MoveNode {
                base_version: theirs.version,
                new_parent: theirs.parent,
                new_name: name,
                mode: MoveMode::NoReplace,
                expect_target: None,
            };
            match self.api.move_node(theirs.id, &req).await {
                Ok(result) => {
                    tracing::info!(
                        "kept another device's {:?} as {:?}: a rename of ours replaced it",
                        theirs.name,
                        result.node.name
                    );
                    self.suspect([theirs.parent]);
                    self.apply_answer(result.node.clone(), false);
                    self.inval(Inval::Entry {
                        parent: theirs.parent,
                        name: theirs.name.clone(),
                    });
                    self.inval(Inval::Entry {
                        parent: result.node.parent,
                        name: result.node.name.clone(),
                    });
                    return Ok(());
                }
                Err(e) if e.code() == Some(ErrorCode::Exists) => continue,
                // Changed or gone again meanwhile: the rename's next try looks afresh.
                Err(e) if matches!(e.code(), Some(ErrorCode::Conflict | ErrorCode::NotFound)) => {
                    return Ok(())
                }
                Err(e) => {
                    // The service may have moved it and the answer be lost (dropped after,
                    // torn, a gateway's 500): the rename's next try then finds the name free
                    // and never comes back here, and the listener skips our own echo of
                    // this move, so the folder is read again once the journal drains.
                    if e.code().is_none() {
                        self.suspect([theirs.parent]);
                    }
                    return Err(e.into());
                }
            }
        }
        Err(Fail::Refused(format!(
            "no free conflict name for {}",
            theirs.name
        )))
    }

    async fn upload_delete(
        &self,
        node: NodeId,
        base_version: Version,
        base_blocks: &[BlockHash],
    ) -> Res<()> {
        let id = self.journal.resolve(node);
        if is_local(id) {
            return Ok(());
        }
        let mut base = base_version;
        for _ in 0..4 {
            // Never recursive: a directory this device saw empty may hold something another
            // device put there since; the service then refuses, and the directory comes back.
            match self.api.delete(id, base, false).await {
                Ok(_) => {
                    self.drop_gone(id);
                    return Ok(());
                }
                Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                    self.drop_gone(id);
                    return Ok(());
                }
                Err(e) if e.code() == Some(ErrorCode::NotEmpty) => {
                    let current = match e.current() {
                        Some(c) => c,
                        None => self.api.get_node(id).await?,
                    };
                    tracing::info!(
                        "rmdir of {} undone: another device put something in it",
                        current.name
                    );
                    self.bring_back(current);
                    return Ok(());
                }
                Err(e) if e.code() == Some(ErrorCode::Conflict) => {
                    let Some(current) = e.current() else {
                        return Err(e.into());
                    };
                    // The service holds what this device itself committed last (a delete
                    // journaled while the file's create or edit was on its way): no one
                    // else's edit to keep.
                    let ours = self.own.lock().unwrap().get(&id) == Some(&current.version);
                    if ours {
                        base = current.version;
                        continue;
                    }
                    self.suspect([current.parent]);
                    if current.kind == NodeKind::File && current.blocks != base_blocks {
                        // Edit beats delete: the edited file comes back here.
                        self.bring_back(current);
                        return Ok(());
                    }
                    base = current.version;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Fail::Refused("delete kept conflicting".into()))
    }
}
