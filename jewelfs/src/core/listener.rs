//! The change listener: hears what other devices changed and applies it to the tree cache,
//! then tells the kernel (through [`Inval`] messages to the notifier thread).
//!
//! The changes come from a [`ChangeSource`](crate::sources::ChangeSource) (`sources/`): the
//! embedded service's long-poll (`GET /devices/{id}/poll?since=cursor`, which answers as
//! soon as there are events after the cursor) or, in AWS mode, the device's SQS queue
//! (`sources/sqs.rs`). Subtle cases:
//! - **gaps**: the first event must be `cursor + 1`; otherwise (a dropped notification) the
//!   listener reads `GET /changes?since=cursor` page by page until it reaches `latest_seq`.
//!   Except in a page chosen for this device (`through` set: the embedded service sends only
//!   the changes in folders this device has listed): it covers the log up to `through`,
//!   skipped events included, and the cursor moves there.
//! - **reconnects**: after any failure the listener catches up from its cursor the same way,
//!   so nothing that happened while offline is missed.
//! - **`cursor_too_old`** (410): the log was trimmed past our cursor; the listener drops
//!   every cached listing and node that has no local changes, tells the kernel to forget
//!   them, and starts again from the service's newest sequence number (a re-list).
//! - **our own echoes** (events naming our device, made since this process attached it: the
//!   device id is kept across mounts, see `listen.rs`) are skipped: the uploader already applied
//!   the service's answer, and an echo may be older than the local view (a file created as
//!   `x.lock` and renamed since must not reappear under its first name). Except a `Remove`:
//!   our delete is final, and its echo clears a ghost that an older event of another device
//!   (read after our delete) linked again.
//! - **local changes win locally**: a remote change to a node with a pending local change
//!   does not move it or hide it; the uploader settles the conflict when it sends ours.
//! - **small files arrive whole**: the content of a file another machine wrote, up to
//!   [`FETCH_AHEAD_MAX_BYTES`], in a folder this device has listed (one its user looked
//!   at), is fetched ahead into the block cache as its change is applied (many files per
//!   request, `BlockCache::fetch_ahead`), so opening it here costs no round trip; bigger
//!   files, and files in folders never listed here, are fetched when read.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use jewel_wire::*;

use super::api::ApiErr;
use super::blocks::sha256_hex;

/// How `status` starts while the service will not take this mount as a device.
pub const NOT_A_DEVICE: &str = "the service does not take this machine as a device";

/// What `status` says while the service refuses this machine's token.
pub const TOKEN_REFUSED: &str = "the service refused this machine's token (unlinked, or the \
    account token was reissued): run `jewelfs login` to link it again; pending changes are kept \
    and upload then";
use super::listen::apply_batch;
use super::{Core, Heard, Inval};
use crate::sources::Sources;

/// Files up to this size that other machines write are fetched ahead (one block).
pub const FETCH_AHEAD_MAX_BYTES: u64 = BLOCK_SIZE;

impl Core {
    /// Caches a small file's content that came with its change event, once it proves to be
    /// the node's one block; false when there was none (or it was not that block: the
    /// block is then fetched as usual).
    fn keep_inline(&self, node: &Node, inline: Option<&InlineBytes>) -> bool {
        let Some(InlineBytes(bytes)) = inline else {
            return false;
        };
        let [hash] = node.blocks.as_slice() else {
            return false;
        };
        if bytes.len() as u64 != node.size || sha256_hex(bytes) != *hash {
            tracing::warn!(
                id = node.id,
                "inline content does not match its node; fetching it"
            );
            return false;
        }
        match self.blocks.insert(hash, bytes) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(id = node.id, "could not cache inline content: {e}");
                false
            }
        }
    }

    /// Registers this device (once per mount) and starts from the service's newest change.
    pub async fn connect(&self) -> Result<Me, ApiErr> {
        let me = self.api.me().await?;
        self.inline_content
            .store(me.inline_content, Ordering::Relaxed);
        if self.device.load(Ordering::Relaxed) == 0 {
            self.attach_device(&me).await?;
        }
        if !self.cursor_known.swap(true, Ordering::Relaxed) {
            self.cursor.store(me.latest_seq, Ordering::Relaxed);
        }
        self.online.store(true, Ordering::Relaxed);
        self.token_accepted();
        Ok(me)
    }

    /// The service refused this machine's token (it was unlinked, or the account token was
    /// reissued): the mount is offline for that service until a new token is in the config
    /// file (see `api.rs`); pending changes stay journaled meanwhile.
    pub(crate) fn token_refused(&self, e: &ApiErr) {
        if self.online.swap(false, Ordering::Relaxed) {
            tracing::warn!("the service refused this machine's token: {e}");
        }
        *self.last_error.lock().unwrap() = Some(TOKEN_REFUSED.to_string());
    }

    /// The service will not take this mount as a device (a full device list, say): nothing
    /// uploads until it does, so `status` says why (logged once per message).
    fn device_refused(&self, e: &ApiErr) {
        let why = format!("{NOT_A_DEVICE}: {e}; changes wait in the journal");
        let mut last = self.last_error.lock().unwrap();
        if last.as_deref() != Some(why.as_str()) {
            tracing::warn!("{why}");
            *last = Some(why);
        }
    }

    /// The token works (again): forget the refusal (of the token, or of the device).
    pub(crate) fn token_accepted(&self) {
        let mut last = self.last_error.lock().unwrap();
        if last
            .as_deref()
            .is_some_and(|l| l == TOKEN_REFUSED || l.starts_with(NOT_A_DEVICE))
        {
            *last = None;
        }
    }

    /// Runs forever: waits for changes (from the device's [`ChangeSource`], long-poll or SQS)
    /// and applies them.
    ///
    /// [`ChangeSource`]: crate::sources::ChangeSource
    pub async fn run_listener(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        let mut need_catch_up = false;
        let mut sources = Sources::new(self.cfg.poll_timeout_ms);
        // Whether the tree was saved since the feed last answered (see `went_offline`).
        let mut saved = false;
        loop {
            if self.device.load(Ordering::Relaxed) == 0 {
                if let Err(e) = self.connect().await {
                    self.online.store(false, Ordering::Relaxed);
                    if e.code() == Some(ErrorCode::Unauthorized) {
                        self.token_refused(&e);
                    } else if !e.is_transient() {
                        self.device_refused(&e);
                    }
                    tracing::debug!("service unreachable: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
            if need_catch_up {
                match self.catch_up().await {
                    Ok(()) => {
                        need_catch_up = false;
                        saved = false;
                    }
                    Err(e) => {
                        self.went_offline(&e, &mut backoff, &mut saved).await;
                        continue;
                    }
                }
            }
            let device = self.device.load(Ordering::Relaxed);
            let cursor = self.cursor.load(Ordering::Relaxed);
            let listen = self.listen.lock().unwrap().clone();
            let source = sources.current(&listen);
            match source.next_batch(&*self.api, device, cursor).await {
                Ok(batch) => {
                    saved = false;
                    if !self.online.swap(true, Ordering::Relaxed) {
                        self.journal.changed.notify_waiters();
                    }
                    backoff = Duration::from_millis(100);
                    if !apply_batch(&self, batch) {
                        need_catch_up = true;
                    }
                    source.applied().await;
                }
                Err(e) if e.code() == Some(ErrorCode::CursorTooOld) => self.relist().await,
                Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                    // Our device is unknown (the service was reset): register again.
                    self.device.store(0, Ordering::Relaxed);
                    need_catch_up = true;
                }
                Err(e) => {
                    self.went_offline(&e, &mut backoff, &mut saved).await;
                    need_catch_up = true;
                }
            }
        }
    }

    /// The feed did not answer. When the service is unreachable, the tree is saved at once
    /// (once per outage, `saved`): no other device's change arrives until it answers again,
    /// so the saved tree and the journal then hold all this device shows, should it crash
    /// and start again offline (the saver alone could be a second or more behind).
    async fn went_offline(self: &Arc<Self>, e: &ApiErr, backoff: &mut Duration, saved: &mut bool) {
        if e.code() == Some(ErrorCode::CursorTooOld) {
            self.relist().await;
            return;
        }
        if e.code() == Some(ErrorCode::Unauthorized) {
            self.token_refused(e);
        } else if !e.is_offline() {
            // Reached but busy or unreadable: not offline; try again after the pause.
            tracing::debug!("listening waits: {e}");
        } else {
            if self.online.swap(false, Ordering::Relaxed) {
                tracing::info!("offline: {e}");
            }
            if !std::mem::replace(saved, true) {
                // On a blocking thread: the save writes and flushes a file.
                let core = Arc::clone(self);
                match tokio::task::spawn_blocking(move || core.save_snapshot()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::debug!("could not save the tree: {e}"),
                    Err(e) => tracing::warn!("the tree save failed: {e}"),
                }
            }
        }
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
    }

    /// Reads the change feed from the cursor up to the newest change.
    pub async fn catch_up(&self) -> Result<(), ApiErr> {
        loop {
            let cursor = self.cursor.load(Ordering::Relaxed);
            let page = self.api.changes(cursor, MAX_PAGE).await?;
            self.online.store(true, Ordering::Relaxed);
            for ev in &page.events {
                if ev.seq > self.cursor.load(Ordering::Relaxed) {
                    self.apply_event(ev);
                    self.cursor.store(ev.seq, Ordering::Relaxed);
                }
            }
            if let Some(through) = page.through {
                // A page for this device: it covers the log up to `through`.
                self.cursor.fetch_max(through, Ordering::Relaxed);
                if self.cursor.load(Ordering::Relaxed) >= page.latest_seq {
                    return Ok(());
                }
                continue;
            }
            if page.events.is_empty() || self.cursor.load(Ordering::Relaxed) >= page.latest_seq {
                if page.events.is_empty() && page.latest_seq > self.cursor.load(Ordering::Relaxed) {
                    // Nothing left to read but a newer seq: events were trimmed or skipped.
                    self.cursor.store(page.latest_seq, Ordering::Relaxed);
                }
                return Ok(());
            }
        }
    }

    /// Applies a long-poll page; false when a gap means the feed must be read. A page chosen
    /// for this device (`through` set) has no gaps by construction: it holds every event this
    /// device needs up to `through`, which the cursor then moves to.
    pub fn apply_page(&self, page: &ChangePage) -> bool {
        let mut events: Vec<&ChangeEvent> = page.events.iter().collect();
        events.sort_by_key(|e| e.seq);
        for ev in events {
            let cursor = self.cursor.load(Ordering::Relaxed);
            if ev.seq <= cursor {
                continue;
            }
            if page.through.is_none() && ev.seq != cursor + 1 {
                return false;
            }
            self.apply_event(ev);
            self.cursor.store(ev.seq, Ordering::Relaxed);
        }
        if let Some(through) = page.through {
            self.cursor.fetch_max(through, Ordering::Relaxed);
        }
        self.cursor.load(Ordering::Relaxed) >= page.latest_seq
    }

    pub(crate) fn has_local_changes(&self, id: NodeId) -> bool {
        if self.journal.has_pending(id) {
            return true;
        }
        let has_local = self.local.lock().unwrap().contains_key(&id);
        has_local || self.staging.lock().unwrap().contains_key(&id)
    }

    /// Makes sure a node this device knows at a place is listed there. Events come in the
    /// service's order, but this device may know a node's newer state already (its own
    /// answer, a listing): an older event of *another* node that held the name meanwhile
    /// then takes the entry and, with its next event, leaves it empty. The later event (or
    /// our own echo) about this node, skipped as already known, puts the entry back.
    fn keep_listed(&self, id: NodeId) {
        let Some(n) = self.tree.get(id) else { return };
        if n.id == n.parent || self.tree.child(n.parent, &n.name) != Some(None) {
            return; // the root, a listing not loaded, or the name is listed
        }
        let deleted_here = self.journal.entries().iter().any(|e| {
            matches!(e.op, super::journal::Op::Delete { .. })
                && self.journal.resolve(e.op.node()) == id
        });
        if deleted_here || self.replaced_later(0, id) {
            return;
        }
        tracing::debug!(id, name = %n.name, "listed again where this device knows it");
        self.tree.link_remote(n.parent, &n.name, id);
        self.inval(Inval::Entry {
            parent: n.parent,
            name: n.name.clone(),
        });
    }

    /// Applies one remote change to the tree and queues the kernel invalidations.
    pub fn apply_event(&self, ev: &ChangeEvent) {
        let own = ev.device.is_some()
            && ev.device == Some(self.device.load(Ordering::Relaxed))
            && ev.seq > self.echo_floor.load(Ordering::Relaxed);
        // Our own delete is final (ids are never reused): its echo may hide a ghost that an
        // older event of another device brought back meanwhile.
        let own_remove = own && ev.op == ChangeOp::Remove;
        if (own && !own_remove) || self.journal.resolve(ev.node.id) != ev.node.id {
            // (A node we replaced by a new one, e.g. an edit brought back after a delete
            // elsewhere: news about the old node must not touch the new one.)
            // The uploader applied the service's answer already; an echo can only be older
            // than our local view (it may name a place we have since moved the node from).
            if own && self.journal.resolve(ev.node.id) == ev.node.id {
                let _edit = self.edit.lock().unwrap();
                self.keep_listed(ev.node.id);
            }
            return;
        }
        let _edit = self.edit.lock().unwrap();
        self.remember(ev);
        let node = &ev.node;
        let old = self.tree.get(node.id);
        let mut invals = Vec::new();
        let mut heard = Vec::new();
        match ev.op {
            ChangeOp::Upsert => {
                if old.as_ref().is_some_and(|o| o.version >= node.version) {
                    tracing::debug!(id = node.id, "event of a version already known");
                    // Already known (a listing read after the change): only make sure the
                    // place it moved from no longer shows it, here and in the kernel (a
                    // listing may have moved it in the tree without telling the kernel).
                    if let Some(from) = &ev.from {
                        let moved = old
                            .as_ref()
                            .is_some_and(|o| o.parent != from.parent || o.name != from.name);
                        if moved {
                            self.tree.unlink(from.parent, &from.name, node.id);
                            self.inval(Inval::Entry {
                                parent: from.parent,
                                name: from.name.clone(),
                            });
                        }
                    }
                    self.keep_listed(node.id);
                    return;
                }
                if self.has_local_changes(node.id) {
                    // Take the new version, keep the local place and attributes.
                    if let Some(o) = &old {
                        let mut n = node.clone();
                        n.parent = o.parent;
                        n.name = o.name.clone();
                        n.mode = o.mode;
                        self.tree.put(n);
                    } else {
                        self.tree.put(node.clone());
                    }
                    return;
                }
                if let Some(o) = &old {
                    if o.parent != node.parent || o.name != node.name {
                        self.tree.unlink(o.parent, &o.name, node.id);
                        invals.push(Inval::Entry {
                            parent: o.parent,
                            name: o.name.clone(),
                        });
                        heard.push(Heard::Moved {
                            from_parent: o.parent,
                            from_name: o.name.clone(),
                            id: node.id,
                        });
                    }
                    if o.blocks != node.blocks
                        || o.size != node.size
                        || o.mode != node.mode
                        || o.mtime_ns != node.mtime_ns
                        || o.target != node.target
                    {
                        invals.push(Inval::Inode(node.id));
                    }
                    let content = o.blocks != node.blocks || o.size != node.size;
                    if !node.is_dir() && content {
                        heard.push(Heard::Changed { id: node.id });
                    } else if !content && (o.mode != node.mode || o.mtime_ns != node.mtime_ns) {
                        heard.push(Heard::Attributes { id: node.id });
                    }
                } else if let Some(from) = &ev.from {
                    self.tree.unlink(from.parent, &from.name, node.id);
                    invals.push(Inval::Entry {
                        parent: from.parent,
                        name: from.name.clone(),
                    });
                    invals.push(Inval::Inode(node.id));
                } else {
                    invals.push(Inval::Inode(node.id));
                }
                if old.is_none() {
                    heard.push(Heard::Created {
                        parent: node.parent,
                        name: node.name.clone(),
                        id: node.id,
                    });
                }
                if let Some(from) = &ev.from {
                    if old.is_some() {
                        self.tree.unlink(from.parent, &from.name, node.id);
                    }
                }
                // (A local node holding the name wins; the tree marks the name as shadowed,
                // and a local remove or rename away from it has the directory listed again.)
                // Claimed before the name shows: a reader that opens it at once waits for
                // this fetch instead of making its own.
                tracing::debug!(
                    id = node.id,
                    listed = self.tree.has_listing(node.parent),
                    "remote change applied"
                );
                if node.kind == NodeKind::File
                    && node.size <= FETCH_AHEAD_MAX_BYTES
                    && self.tree.has_listing(node.parent)
                    && !self.keep_inline(node, ev.inline.as_ref())
                {
                    self.blocks.fetch_ahead(node.blocks.clone());
                }
                self.tree.link_remote(node.parent, &node.name, node.id);
                self.tree.put(node.clone());
                invals.push(Inval::Entry {
                    parent: node.parent,
                    name: node.name.clone(),
                });
                if let Some(p) = self.tree.get(node.parent) {
                    invals.push(Inval::Inode(p.id));
                }
            }
            ChangeOp::Remove => {
                if own_remove && old.is_none() {
                    return;
                }
                if self.has_local_changes(node.id) {
                    return; // an edit here beats the delete there
                }
                let (parent, name) = match &old {
                    Some(o) => (o.parent, o.name.clone()),
                    None => (node.parent, node.name.clone()),
                };
                self.tree.unlink(parent, &name, node.id);
                self.tree.forget(node.id);
                // Replayed as an unlink (which tells the kernel), else told as a delete.
                let mut gone = old.as_deref().unwrap_or(node).clone();
                (gone.parent, gone.name) = (parent, name);
                heard.push(Heard::Removed { node: gone });
                invals.push(Inval::Inode(parent));
            }
        }
        if !own || own_remove {
            // The invalidations first: a watcher that reads on hearing the change must
            // find the new content, not pages the kernel still holds.
            for i in invals {
                self.inval(i);
            }
            for h in heard {
                self.inval(Inval::Replay(h));
            }
        }
    }

    /// The cursor is older than the log: forget what may be stale and start afresh.
    pub async fn relist(&self) {
        tracing::warn!("change log trimmed past our cursor: re-listing");
        let known = self.tree.known();
        let dirs = self.tree.listed_dirs();
        for dir in &dirs {
            if let Some(listing) = self.tree.listing(*dir) {
                for (name, child) in listing {
                    if !self.tree.is_pinned(child) {
                        self.inval(Inval::Entry { parent: *dir, name });
                    }
                }
            }
        }
        self.tree.clear_unpinned();
        for n in known {
            if !self.tree.is_pinned(n.id) {
                self.inval(Inval::Inode(n.id));
            }
        }
        if let Ok(me) = self.api.me().await {
            self.cursor.store(me.latest_seq, Ordering::Relaxed);
        }
        if let Ok(root) = self.api.get_node(ROOT_ID).await {
            self.tree.put(root);
        }
    }
}
