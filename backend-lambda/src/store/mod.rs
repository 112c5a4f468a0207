//! `MetaStore`: the user's tree, versions, devices, tokens and change log.
//!
//! One trait, two engines: SQLite (`sqlite.rs`, the embedded default) and DynamoDB (AWS mode).
//! Both pass the same conformance suite (`conformance.rs`), so a new engine is done when that
//! suite passes.
//!
//! Every mutating method is one atomic change: it checks the caller's base version (a stale
//! base is [`StoreError::Conflict`] carrying the current node), applies the change, and appends
//! one change event per affected node to the user's log with the next per-user sequence number
//! — all or nothing. The user id always comes from the caller (the router takes it from the
//! token), never from a request body. A node of another user is [`StoreError::NotFound`],
//! exactly like a missing one.
//!
//! Deleting moves a node (and its subtree, which stays attached to it) to the trash; only the
//! top of a deleted subtree is listed in the trash and can be restored. A node in the trash is
//! invisible to every tree method.
//!
//! Committing new content keeps the content it replaces as a [`FileVersion`] (empty content
//! excepted), so an overwrite can be undone; versions go with [`purge_versions`] after the
//! retention time, beyond [`MAX_VERSIONS`] per file, and with their file when its trash entry
//! is purged.
//!
//! Every method that returns many items returns a bounded [`Page`]: at most the asked number
//! of entries, and entries only while the page holds less than
//! [`jewel_wire::MAX_PAGE_BYTES`] of JSON (so one page ends at most one entry past it; a
//! single larger entry still comes alone, so paging always moves on). Engines fill pages
//! with [`fill_page`] while reading rows, so a directory of huge nodes never sits in memory
//! whole.
//!
//! [`purge_versions`]: MetaStore::purge_versions

use async_trait::async_trait;
use jewel_wire::{
    ChangeEvent, ChangePage, Content, DeviceId, DeviceInfo, FileVersion, MoveMode, NewKind, Node,
    NodeId, Seq, SetAttr, TrashEntry, Version,
};

pub use jewel_wire::MAX_PAGE_BYTES;

pub mod sqlite;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

/// The most earlier contents kept per file: enough to go back through a day of saves.
pub const MAX_VERSIONS: usize = 100;

/// The stable id of a user (not its name, which an admin may reuse after removal).
pub type UserId = String;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub name: String,
    pub created_at_ns: i64,
}

/// Whom a token belongs to: a user, and the device when it is a device's own token (linked
/// with a code, see `jewel_wire`'s docs) rather than the account's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    pub user: User,
    pub device: Option<DeviceId>,
    /// When the device's token was last recorded as used (0 for the account's token).
    pub last_seen_ns: i64,
}

/// A machine waiting to be linked: the code its user approves, and the hash of the token it
/// drew (the token itself never reaches the service before it is used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLink {
    /// `XXXX-XXXX` (see `jewel_wire::normalize_link_code`).
    pub code: String,
    pub token_hash: String,
    pub name: String,
    pub expires_at_ns: i64,
}

/// What a mutating call needs besides its own arguments.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin {
    /// The device that asked, recorded in the change events.
    pub device: Option<DeviceId>,
    /// The time the change happens, ns since the epoch.
    pub now_ns: i64,
}

/// One change of a batch ([`MetaStore::apply_batch`]), its input already checked.
#[derive(Debug, Clone)]
pub enum BatchOp {
    Create(NewNode),
    Commit {
        id: NodeId,
        base: Version,
        content: Content,
        mtime_ns: Option<i64>,
    },
    /// A file or an empty folder, at version `base`.
    Remove {
        id: NodeId,
        base: Version,
    },
    /// A rename or move at version `base` to a free name ([`MoveMode::NoReplace`]): a taken
    /// name, even by the node itself, fails with [`StoreError::Exists`].
    Move {
        id: NodeId,
        base: Version,
        new_parent: NodeId,
        new_name: String,
    },
    SetAttr {
        id: NodeId,
        attr: SetAttr,
    },
}

/// A batch's move ([`BatchOp::Move`]) as one applied change: a no-replace move that
/// changed nothing (the node was at that name already) is a taken name for a batch, so
/// every applied change has its event.
pub fn moved_to_free_name(moved: Moved) -> StoreResult<(Node, ChangeEvent)> {
    let Moved {
        node, mut events, ..
    } = moved;
    match (events.pop(), events.is_empty()) {
        (Some(event), true) => Ok((node, event)),
        _ => Err(StoreError::Exists(Box::new(node))),
    }
}

/// What a batch did: the changes applied (in order), and why the next one was not.
#[derive(Debug, Default)]
pub struct BatchDone {
    pub applied: Vec<(Node, ChangeEvent)>,
    pub failed: Option<StoreError>,
}

/// A node to create.
#[derive(Debug, Clone)]
pub struct NewNode {
    pub parent: NodeId,
    pub name: String,
    pub kind: NewKind,
    pub mode: u32,
    pub mtime_ns: i64,
}

/// The result of a move: the moved node, the node it replaced (now trashed) or exchanged with
/// (now at the old place), and the events written.
#[derive(Debug, Clone)]
pub struct Moved {
    pub node: Node,
    pub other: Option<Node>,
    pub events: Vec<ChangeEvent>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such node")]
    NotFound,
    #[error("the base version is stale (current version {})", .0.version)]
    Conflict(Box<Node>),
    #[error("the name is taken")]
    Exists(Box<Node>),
    #[error("the directory is not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("invalid move: {0}")]
    InvalidMove(&'static str),
    #[error("the change log no longer holds events after this cursor; re-list")]
    CursorTooOld,
    #[error("a user named {0:?} already exists")]
    UserExists(String),
    #[error("no user named {0:?}")]
    UnknownUser(String),
    #[error("no such device")]
    UnknownDevice,
    #[error(
        "this user already has {0} devices, the most allowed; an administrator frees the \
         slots with `jewel-server user forget-devices NAME` (each machine registers again \
         when it next mounts)"
    )]
    TooManyDevices(usize),
    #[error("no machine waits to be linked with this code (mistyped, expired, or linked already)")]
    UnknownLink,
    /// Drawn again by the caller: two pending links cannot share a code.
    #[error("the link code is taken")]
    LinkCodeTaken,
    #[error("{0} machines are waiting to be linked already, the most allowed; try again in a few minutes")]
    TooManyLinks(usize),
    #[error("that token is in use already: draw another")]
    TokenInUse,
    #[error("too large for this store: {0}")]
    TooLarge(String),
    /// Another process (the running server, beside an admin command) held the database
    /// longer than the connection's busy timeout. Nothing was changed; trying again is safe.
    #[error("the database is busy (held by another process): {0}")]
    Busy(String),
    #[error("storage failure: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    // ---- users and tokens (admin) ----
    /// Creates a user whose token has the given hash. Creates its root directory too.
    async fn create_user(&self, name: &str, token_hash: &str, now_ns: i64) -> StoreResult<User>;
    async fn list_users(&self) -> StoreResult<Vec<User>>;
    /// Removes the user, its token, devices, tree and log.
    async fn remove_user(&self, name: &str) -> StoreResult<()>;
    /// Replaces the user's token hash (the old token stops working at once).
    async fn set_token(&self, name: &str, token_hash: &str) -> StoreResult<User>;
    /// The user a token hash belongs to, if any.
    async fn user_by_token(&self, token_hash: &str) -> StoreResult<Option<User>>;
    /// Whether a user with this id exists (block URLs name the user by id).
    async fn user_exists(&self, user: &UserId) -> StoreResult<bool>;
    /// Whom a token hash belongs to: the account's token or one device's own token.
    async fn token_owner(&self, token_hash: &str) -> StoreResult<Option<TokenOwner>>;

    // ---- linking machines (see `jewel_wire`'s docs) ----
    /// Records a machine waiting to be linked until `link.expires_at_ns`. Links expired by
    /// `now_ns` are forgotten first; `TooManyLinks` when `max_pending` still wait;
    /// `LinkCodeTaken` when the code is in use; `TokenInUse` when the hash is any token's.
    async fn create_link(
        &self,
        link: &PendingLink,
        now_ns: i64,
        max_pending: usize,
    ) -> StoreResult<()>;
    /// The machine waiting behind `code`, or `UnknownLink` (none, or expired by `now_ns`).
    async fn link(&self, code: &str, now_ns: i64) -> StoreResult<PendingLink>;
    /// Links the machine waiting behind `code` to `user` as a new device holding the link's
    /// token, and forgets the link, in one change; `UnknownLink` as [`MetaStore::link`],
    /// `TooManyDevices` when the user has `max_devices`.
    async fn approve_link(
        &self,
        user: &UserId,
        code: &str,
        max_devices: usize,
        now_ns: i64,
    ) -> StoreResult<DeviceId>;

    // ---- devices ----
    /// Registers a new device; `TooManyDevices` when the user has `max` already.
    async fn register_device(&self, user: &UserId, name: &str, max: usize)
        -> StoreResult<DeviceId>;
    /// [`MetaStore::register_device`] made idempotent by `key`, which the client draws once per
    /// registration and sends again with each retry of it: the device registered under `key`
    /// when there is one (`false`: not created now; also when the user is at `max`), else a
    /// new one under it (`true`). A key is the user's own, and goes with its device: once the
    /// device is removed, the same key registers a new one.
    async fn register_device_keyed(
        &self,
        user: &UserId,
        name: &str,
        max: usize,
        key: &str,
    ) -> StoreResult<(DeviceId, bool)>;
    /// Forgets every device of the user (frees the slots, revokes their own tokens); returns
    /// how many went.
    async fn remove_devices(&self, user: &UserId) -> StoreResult<usize>;
    /// Unlinks one device: forgets it and revokes its own token in one change;
    /// `UnknownDevice` when it is not one of this user's devices.
    async fn remove_device(&self, user: &UserId, device: DeviceId) -> StoreResult<()>;
    /// Records that the device's token was used at `now_ns` (callers do it at most once a
    /// minute per device); a device gone meanwhile is no error.
    async fn touch_device(&self, user: &UserId, device: DeviceId, now_ns: i64) -> StoreResult<()>;
    /// The device's name, or `UnknownDevice` when it is not one of this user's devices.
    async fn device(&self, user: &UserId, device: DeviceId) -> StoreResult<String>;
    /// The user's devices by name (then id); `this_device` is false in every entry.
    async fn devices(&self, user: &UserId) -> StoreResult<Vec<DeviceInfo>>;

    // ---- the tree ----
    async fn get_node(&self, user: &UserId, id: NodeId) -> StoreResult<Node>;
    async fn child(&self, user: &UserId, parent: NodeId, name: &str) -> StoreResult<Node>;
    /// Children of a directory ordered by name (bytewise), those after `after`, one bounded
    /// page of at most `limit`.
    async fn list_children(
        &self,
        user: &UserId,
        parent: NodeId,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Page<Node>>;
    /// Creates a node; `Exists` (with the occupant) when the name is taken.
    async fn create(
        &self,
        user: &UserId,
        node: &NewNode,
        origin: Origin,
    ) -> StoreResult<(Node, ChangeEvent)>;
    /// Replaces a file's content when `base` is its current version.
    async fn commit_content(
        &self,
        user: &UserId,
        id: NodeId,
        base: Version,
        content: &Content,
        mtime_ns: Option<i64>,
        origin: Origin,
    ) -> StoreResult<(Node, ChangeEvent)>;
    async fn set_attr(
        &self,
        user: &UserId,
        id: NodeId,
        attr: &SetAttr,
        origin: Origin,
    ) -> StoreResult<(Node, ChangeEvent)>;
    /// Renames and/or moves a node when `base` is its current version. `Replace` trashes an
    /// existing target (a file, or an empty directory when the moved node is a directory);
    /// `NoReplace` refuses with `Exists`; `Exchange` swaps two nodes. A directory cannot move
    /// below itself.
    #[allow(clippy::too_many_arguments)]
    async fn move_node(
        &self,
        user: &UserId,
        id: NodeId,
        base: Version,
        new_parent: NodeId,
        new_name: &str,
        mode: MoveMode,
        origin: Origin,
    ) -> StoreResult<Moved>;
    /// Moves a node to the trash. `base`, when given, must be the current version. A
    /// non-empty directory needs `recursive`. The root cannot be removed.
    async fn remove(
        &self,
        user: &UserId,
        id: NodeId,
        base: Option<Version>,
        recursive: bool,
        origin: Origin,
    ) -> StoreResult<(Node, ChangeEvent)>;
    /// Applies the changes of a batch in order, stopping at the first that fails; those
    /// before it stay applied. Each means what its own method means (same checks, same
    /// event). This default applies each on its own; an engine that can applies them in one
    /// transaction (SQLite: one commit and one trip to the writer for the lot).
    async fn apply_batch(
        &self,
        user: &UserId,
        ops: Vec<BatchOp>,
        origin: Origin,
    ) -> StoreResult<BatchDone> {
        let mut done = BatchDone::default();
        for op in ops {
            let applied = match op {
                BatchOp::Create(new) => self.create(user, &new, origin).await,
                BatchOp::Commit {
                    id,
                    base,
                    content,
                    mtime_ns,
                } => {
                    self.commit_content(user, id, base, &content, mtime_ns, origin)
                        .await
                }
                BatchOp::Remove { id, base } => {
                    self.remove(user, id, Some(base), false, origin).await
                }
                BatchOp::Move {
                    id,
                    base,
                    new_parent,
                    new_name,
                } => self
                    .move_node(
                        user,
                        id,
                        base,
                        new_parent,
                        &new_name,
                        MoveMode::NoReplace,
                        origin,
                    )
                    .await
                    .and_then(moved_to_free_name),
                BatchOp::SetAttr { id, attr } => self.set_attr(user, id, &attr, origin).await,
            };
            match applied {
                Ok(change) => done.applied.push(change),
                Err(e) => {
                    done.failed = Some(e);
                    break;
                }
            }
        }
        Ok(done)
    }
    /// Tops of deleted subtrees, newest first (then by id), those after `after`, one bounded
    /// page of at most `limit`. Entries are ordered by [`TrashCursor`].
    async fn list_trash(
        &self,
        user: &UserId,
        after: Option<TrashCursor>,
        limit: u32,
    ) -> StoreResult<Page<TrashEntry>>;
    /// Puts a trashed node back where it was (its parent must still exist, else in the root);
    /// when its name is taken there it comes back as `name (restored N)`.
    async fn restore(
        &self,
        user: &UserId,
        id: NodeId,
        origin: Origin,
    ) -> StoreResult<(Node, ChangeEvent)>;

    // ---- the change log ----
    /// Events with `seq > since`, oldest first, at most `limit` and bounded in bytes like a
    /// [`Page`] (at least one event when there is one); `CursorTooOld` when events after
    /// `since` were trimmed.
    async fn changes_since(&self, user: &UserId, since: Seq, limit: u32)
        -> StoreResult<ChangePage>;
    /// The events after `since` that `device` needs: those in the folders it watches (see
    /// [`MetaStore::watch_folder`]), oldest first, bounded like [`MetaStore::changes_since`],
    /// with [`ChangePage::through`] set to the sequence number the page covers (its last
    /// event when it was cut, else the newest). An engine that does not keep watches (the
    /// default) sends every event, without `through`.
    async fn changes_for_device(
        &self,
        user: &UserId,
        _device: DeviceId,
        since: Seq,
        limit: u32,
    ) -> StoreResult<ChangePage> {
        self.changes_since(user, since, limit).await
    }
    /// Records that `device` lists `folder`: from the user's newest sequence number on, its
    /// changes go to that device (a folder already watched keeps its older start); true when
    /// the watch is new. After [`jewel_wire::MAX_WATCHED_FOLDERS`] folders the device hears
    /// everything. A folder a device creates is watched by it from its creation event on
    /// ([`is_new_folder`]), without a call. Nothing to do for an engine that does not keep
    /// watches.
    async fn watch_folder(
        &self,
        _user: &UserId,
        _device: DeviceId,
        _folder: NodeId,
    ) -> StoreResult<bool> {
        Ok(false)
    }
    /// The folders `device` watches, for a long-poll that waits on them; `None` when it hears
    /// everything (the default, and a device past the limit).
    async fn watched_folders(
        &self,
        _user: &UserId,
        _device: DeviceId,
    ) -> StoreResult<Option<Vec<NodeId>>> {
        Ok(None)
    }
    async fn latest_seq(&self, user: &UserId) -> StoreResult<Seq>;
    /// Drops events older than `before_ns`, always keeping the newest one.
    async fn trim_log(&self, user: &UserId, before_ns: i64) -> StoreResult<()>;
    /// Every block hash referenced by a live or trashed file, or by a kept earlier version,
    /// of this user (for GC).
    async fn referenced_blocks(&self, user: &UserId) -> StoreResult<Vec<String>>;
    /// The earlier contents of a live file, newest first, those older than `before`, one
    /// bounded page of at most `limit` (`NotFound` for anything but a live file).
    async fn list_versions(
        &self,
        user: &UserId,
        id: NodeId,
        before: Option<Version>,
        limit: u32,
    ) -> StoreResult<Page<FileVersion>>;
    /// Forgets earlier contents replaced before `before_ns`, and all but the newest
    /// [`MAX_VERSIONS`] of each file; returns how many went.
    async fn purge_versions(&self, user: &UserId, before_ns: i64) -> StoreResult<usize>;
    /// Deletes for good the trash entries deleted before `before_ns`, with their subtrees
    /// and the earlier versions of the files in them;
    /// returns how many entries went. Live nodes and newer trash are untouched, so running it
    /// again (after a crash half-way) only finishes the job.
    async fn purge_trash(&self, user: &UserId, before_ns: i64) -> StoreResult<usize>;

    // ---- small blocks kept with their nodes ----
    /// Whether this engine keeps small files' blocks itself: a create or commit (alone or in
    /// a batch) whose content carries its bytes inline ([`Content::inline`]) then stores that
    /// block in the same atomic change as the node that names it, and the block service
    /// stores nothing for it. An engine that does not (the default) leaves small blocks to the
    /// block store like any other; the methods below then hold nothing.
    fn keeps_small_blocks(&self) -> bool {
        false
    }
    /// The bytes of a small block this engine keeps for `user`, if it keeps that one.
    async fn small_block(&self, _user: &UserId, _hash: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(None)
    }
    /// Which of `hashes` (in their order) are small blocks this engine keeps for `user`.
    async fn small_blocks_held(
        &self,
        _user: &UserId,
        _hashes: &[String],
    ) -> StoreResult<Vec<String>> {
        Ok(Vec::new())
    }
    /// Forgets the kept small blocks of `user` that no live or trashed file and no kept
    /// earlier version names any more (what [`MetaStore::referenced_blocks`] lists); returns
    /// how many went. A change that stores an inline block at the same time lands either
    /// before (the block is named, and stays) or after (it writes the block again): SQLite
    /// deletes in one transaction, DynamoDB each block on the condition that no change wrote
    /// it since it was read. A commit that names a kept block without carrying it is kept
    /// apart from this by `Service::block_guard` in the embedded server; in AWS mode the
    /// router gives it the block's bytes (so it writes the block again too).
    async fn collect_small_blocks(&self, _user: &UserId) -> StoreResult<usize> {
        Ok(0)
    }
}

/// The one block a content names, with its bytes, checked: bytes that are not the block
/// named are refused (the router checks this before; here it keeps a wrong block from ever
/// being stored under a hash). Engines that keep small blocks store what this returns.
pub fn checked_small_block<'a>(
    blocks: &'a [String],
    inline: Option<&'a jewel_wire::InlineBytes>,
) -> StoreResult<Option<(&'a str, &'a [u8])>> {
    let Some(inline) = inline else {
        return Ok(None);
    };
    let [hash] = blocks else {
        return Err(StoreError::Backend(
            "inline content must name exactly one block".into(),
        ));
    };
    if crate::blobs::sha256_hex(&inline.0) != *hash {
        return Err(StoreError::Backend(
            "inline content is not the block it names".into(),
        ));
    }
    Ok(Some((hash.as_str(), inline.0.as_slice())))
}

/// The folders whose watchers hear an event: the node's folder, the folder it moved out of,
/// and a folder itself (a device inside it hears it renamed or deleted). The root has no
/// folder of its own but itself.
pub fn event_folders(event: &ChangeEvent) -> Vec<NodeId> {
    let node = &event.node;
    folders_touched(
        node.parent,
        event.from.as_ref().map(|from| from.parent),
        node.is_dir().then_some(node.id),
    )
}

/// [`event_folders`] from the three places it reads: the node's folder, the folder it moved
/// out of, and the node itself when it is a folder.
pub fn folders_touched(
    parent: NodeId,
    moved_from: Option<NodeId>,
    folder_itself: Option<NodeId>,
) -> Vec<NodeId> {
    let mut folders: Vec<NodeId> = [Some(parent), moved_from, folder_itself]
        .into_iter()
        .flatten()
        .collect();
    folders.sort_unstable();
    folders.dedup();
    folders
}

/// Whether an event is a folder's creation (a node starts at version 1): its device then
/// watches it (it shows the folder as listed without ever listing it).
pub fn is_new_folder(event: &ChangeEvent) -> bool {
    event.op == jewel_wire::ChangeOp::Upsert && event.node.is_dir() && event.node.version == 1
}

/// One page of a listing: its entries, and whether more follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub entries: Vec<T>,
    /// More entries follow the last one (the page was cut by its entry count or its bytes).
    pub more: bool,
}

impl<T> Page<T> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Where a trash listing goes on: the last entry's deletion time and id. The trash is
/// ordered newest first, then by id; as text it is `<deleted_at_ns>.<id>` (opaque to clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrashCursor {
    pub deleted_at_ns: i64,
    pub id: NodeId,
}

impl TrashCursor {
    pub fn of(entry: &TrashEntry) -> TrashCursor {
        TrashCursor {
            deleted_at_ns: entry.deleted_at_ns,
            id: entry.node.id,
        }
    }

    /// Whether `entry` comes after this cursor in trash order.
    pub fn precedes(&self, entry: &TrashEntry) -> bool {
        (std::cmp::Reverse(self.deleted_at_ns), self.id)
            < (std::cmp::Reverse(entry.deleted_at_ns), entry.node.id)
    }

    pub fn parse(text: &str) -> Option<TrashCursor> {
        let (at, id) = text.split_once('.')?;
        Some(TrashCursor {
            deleted_at_ns: at.parse().ok()?,
            id: id.parse().ok()?,
        })
    }
}

impl std::fmt::Display for TrashCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.deleted_at_ns, self.id)
    }
}

/// The length of a value's JSON, without building it.
pub fn json_len<T: serde::Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail, and our types always serialize.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Fills one page from `rows` (each an entry and the length of its JSON), read lazily: at most
/// `limit` entries, taken while the page holds less than `max_bytes`. `more` is whether a row
/// was left over. Give it one row beyond `limit` when there is one (e.g. `LIMIT limit + 1`),
/// so `more` is exact.
pub fn fill_page<T>(
    rows: impl IntoIterator<Item = StoreResult<(T, usize)>>,
    limit: u32,
    max_bytes: usize,
) -> StoreResult<Page<T>> {
    let mut entries = Vec::new();
    let mut bytes = 0usize;
    for row in rows {
        let (entry, len) = row?;
        if entries.len() >= limit as usize || (bytes >= max_bytes && !entries.is_empty()) {
            return Ok(Page {
                entries,
                more: true,
            });
        }
        bytes += len;
        entries.push(entry);
    }
    Ok(Page {
        entries,
        more: false,
    })
}

/// A new user's root directory, as every engine creates it.
pub fn new_root(now_ns: i64) -> Node {
    Node {
        id: jewel_wire::ROOT_ID,
        parent: jewel_wire::ROOT_ID,
        name: String::new(),
        kind: jewel_wire::NodeKind::Dir,
        size: 0,
        mode: 0o755,
        mtime_ns: now_ns,
        version: 1,
        blocks: Vec::new(),
        target: None,
    }
}

/// The `k`-th name tried for a restored node whose place is taken: `name (restored)`,
/// `name (restored 2)`, …, the stem cut (at a character boundary) so the result stays within
/// the name length limit. Every engine names restores this way.
pub fn restored_name(name: &str, k: u32) -> String {
    let suffix = if k == 1 {
        " (restored)".to_string()
    } else {
        format!(" (restored {k})")
    };
    let mut stem = name
        .len()
        .min(jewel_wire::MAX_NAME_BYTES.saturating_sub(suffix.len()));
    while !name.is_char_boundary(stem) {
        stem -= 1;
    }
    format!("{}{suffix}", &name[..stem])
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A fresh random node or device id: above the root id, below 2^53 (exact in JavaScript).
pub fn new_id() -> u64 {
    use rand::Rng;
    rand::thread_rng().gen_range(1024..(1u64 << 53))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(lens: &[usize]) -> Vec<StoreResult<(usize, usize)>> {
        lens.iter().copied().enumerate().map(Ok).collect()
    }

    #[test]
    fn pages_stop_at_their_count_or_their_bytes() {
        let page = fill_page(rows(&[10, 10, 10]), 2, 100).unwrap();
        assert_eq!((page.entries, page.more), (vec![0, 1], true));
        let page = fill_page(rows(&[10, 10]), 2, 100).unwrap();
        assert_eq!((page.entries, page.more), (vec![0, 1], false));
        // Entries are taken while the page holds less than the bytes: 60 + 60 >= 100.
        let page = fill_page(rows(&[60, 60, 60]), 10, 100).unwrap();
        assert_eq!((page.entries, page.more), (vec![0, 1], true));
        // One entry larger than the whole budget still comes, alone.
        let page = fill_page(rows(&[500, 1]), 10, 100).unwrap();
        assert_eq!((page.entries, page.more), (vec![0], true));
        let page = fill_page(rows(&[]), 10, 100).unwrap();
        assert!(page.entries.is_empty() && !page.more);
    }

    #[test]
    fn json_len_is_the_length_of_the_json() {
        let node = new_root(123);
        assert_eq!(json_len(&node), serde_json::to_vec(&node).unwrap().len());
    }

    #[test]
    fn trash_cursors_round_trip_and_order() {
        let c = TrashCursor {
            deleted_at_ns: -5,
            id: 42,
        };
        assert_eq!(TrashCursor::parse(&c.to_string()), Some(c));
        for bad in ["", "1", "x.1", "1.x", "1.-2"] {
            assert_eq!(TrashCursor::parse(bad), None, "{bad}");
        }
        let entry = |at, id| TrashEntry {
            node: Node { id, ..new_root(0) },
            deleted_at_ns: at,
        };
        let c = TrashCursor {
            deleted_at_ns: 10,
            id: 5,
        };
        assert!(c.precedes(&entry(9, 1)), "older comes later");
        assert!(c.precedes(&entry(10, 6)), "same time, larger id");
        assert!(!c.precedes(&entry(10, 5)) && !c.precedes(&entry(11, 9)));
    }
}
