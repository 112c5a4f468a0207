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
//! [`purge_versions`]: MetaStore::purge_versions

use async_trait::async_trait;
use jewel_wire::{
    ChangeEvent, ChangePage, Content, DeviceId, FileVersion, MoveMode, NewKind, Node, NodeId, Seq,
    SetAttr, TrashEntry, Version,
};

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

/// What a mutating call needs besides its own arguments.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin {
    /// The device that asked, recorded in the change events.
    pub device: Option<DeviceId>,
    /// The time the change happens, ns since the epoch.
    pub now_ns: i64,
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

    // ---- devices ----
    async fn register_device(&self, user: &UserId, name: &str) -> StoreResult<DeviceId>;
    /// The device's name, or `UnknownDevice` when it is not one of this user's devices.
    async fn device(&self, user: &UserId, device: DeviceId) -> StoreResult<String>;
    async fn devices(&self, user: &UserId) -> StoreResult<Vec<(DeviceId, String)>>;

    // ---- the tree ----
    async fn get_node(&self, user: &UserId, id: NodeId) -> StoreResult<Node>;
    async fn child(&self, user: &UserId, parent: NodeId, name: &str) -> StoreResult<Node>;
    /// Children of a directory ordered by name (bytewise), those after `after`, at most
    /// `limit`.
    async fn list_children(
        &self,
        user: &UserId,
        parent: NodeId,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<Node>>;
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
    /// Tops of deleted subtrees, newest first.
    async fn list_trash(&self, user: &UserId) -> StoreResult<Vec<TrashEntry>>;
    /// Puts a trashed node back where it was (its parent must still exist, else in the root);
    /// when its name is taken there it comes back as `name (restored N)`.
    async fn restore(
        &self,
        user: &UserId,
        id: NodeId,
        origin: Origin,
    ) -> StoreResult<(Node, ChangeEvent)>;

    // ---- the change log ----
    /// Events with `seq > since`, oldest first, at most `limit`; `CursorTooOld` when events
    /// after `since` were trimmed.
    async fn changes_since(&self, user: &UserId, since: Seq, limit: u32)
        -> StoreResult<ChangePage>;
    async fn latest_seq(&self, user: &UserId) -> StoreResult<Seq>;
    /// Drops events older than `before_ns`, always keeping the newest one.
    async fn trim_log(&self, user: &UserId, before_ns: i64) -> StoreResult<()>;
    /// Every block hash referenced by a live or trashed file, or by a kept earlier version,
    /// of this user (for GC).
    async fn referenced_blocks(&self, user: &UserId) -> StoreResult<Vec<String>>;
    /// The earlier contents of a live file, newest first (`NotFound` for anything else).
    async fn list_versions(&self, user: &UserId, id: NodeId) -> StoreResult<Vec<FileVersion>>;
    /// Forgets earlier contents replaced before `before_ns`, and all but the newest
    /// [`MAX_VERSIONS`] of each file; returns how many went.
    async fn purge_versions(&self, user: &UserId, before_ns: i64) -> StoreResult<usize>;
    /// Deletes for good the trash entries deleted before `before_ns`, with their subtrees
    /// and the earlier versions of the files in them;
    /// returns how many entries went. Live nodes and newer trash are untouched, so running it
    /// again (after a crash half-way) only finishes the job.
    async fn purge_trash(&self, user: &UserId, before_ns: i64) -> StoreResult<usize>;
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
