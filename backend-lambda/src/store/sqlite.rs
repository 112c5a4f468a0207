//! The embedded `MetaStore`: one SQLite database file (WAL mode) holding users, devices, the
//! tree of every user and their change logs.
//!
//! **Connections.** One writer connection behind a mutex and a small pool of reader
//! connections ([`SqliteOptions::readers`]). In WAL mode readers never wait for the writer, so
//! many concurrent metadata reads run in parallel while writes are serialised (SQLite allows one
//! writer anyway; serialising in-process avoids busy retries). All SQLite work runs on tokio's
//! blocking pool (`spawn_blocking`), never on an async worker. An in-memory database (tests) has
//! no readers: everything goes through the writer connection.
//!
//! **Atomicity.** Every mutating method is one `BEGIN IMMEDIATE` transaction: it checks, writes
//! the node rows, bumps the user's sequence counter and appends the events, or does nothing.
//! Every multi-statement read runs in one read transaction, so it sees one snapshot.
//!
//! **Schema.** `users(id, name, token_hash, created_at_ns, latest_seq, trimmed_through)`;
//! `devices(user, id, name, token_hash, created_at_ns, last_seen_ns, request_key)` (`token_hash`
//! set for a device linked with a code, unique, see `links`; `request_key` the key a
//! registration was retried with, unique per user); `links(code, token_hash, name,
//! expires_at_ns)`, machines waiting to be linked; `nodes(user, id, parent, name, kind, size, mode, mtime_ns,
//! version, blocks (JSON array), target, trashed_at_ns, trashed_by)`, with a unique index on
//! `(user, parent, name)` over live nodes only (`trashed_at_ns IS NULL`), so a trashed node keeps
//! its old place without blocking the name; `changes(user, seq, event JSON, at_ns)`;
//! `versions(user, id, version, size, blocks, mtime_ns, replaced_at_ns)`, the earlier
//! contents of files, written by the commit that replaces them; `small_blocks(user, hash,
//! bytes)`, small files' blocks (see below). Every query names the user, so another user's id
//! is simply not found.
//!
//! **Small blocks.** A create or commit whose content carries its bytes inline (a file of at
//! most `MAX_INLINE_BYTES`) writes that block into `small_blocks` in its own transaction
//! (`keeps_small_blocks`): no block file, no flush of its own, and a batch of a thousand small
//! files is one commit. The block is checked against its hash before it is written, so a
//! stored block always matches its name. `collect_small_blocks` deletes, in one statement,
//! the rows no node or version names (a block stays while anything could still read it).
//!
//! **Semantics** (the conformance suite checks each):
//! - A node starts at version 1; content commits, moves, attribute changes and restores bump
//!   it by one. A commit of identical content still bumps it (simplest; the client avoids
//!   no-op commits). A stale base is `Conflict` with the current node. Removing does not bump:
//!   the `Remove` event and the trash entry carry the node's last state.
//! - The root (`ROOT_ID`, its own parent, name "") is created with the user; it cannot be
//!   moved or removed (`InvalidMove`) and is never anyone's child.
//! - `commit_content` on a directory is `IsADirectory`, on a symlink `InvalidMove` (only files
//!   have content). A missing `mtime_ns` means "now" (`Origin::now_ns`).
//! - Move follows POSIX `rename`: a file or symlink replaces a file or symlink, a directory
//!   replaces an empty directory; a directory onto a non-directory is `NotADirectory`, a
//!   non-directory onto a directory `IsADirectory`, onto a non-empty directory `NotEmpty`;
//!   moving a node onto its own place is a successful no-op (no bump, no event). The replaced
//!   node goes to the trash: its `Remove` event comes before the moved node's `Upsert` (which
//!   carries `from`). `Exchange` swaps two places, bumps both and writes two `Upsert` events.
//! - Removing marks the node and its live subtree trashed in one statement: every trashed node
//!   records the top of its deletion (`trashed_by`); the top is the node with
//!   `trashed_by = id`. Subtree nodes keep their parent, so restoring the top brings back exactly
//!   that deletion (sub-deletions made earlier stay separate trash entries). A restored node goes
//!   back to its parent, or to the root when the parent is gone; a taken name becomes
//!   `name (restored)`, `name (restored 2)`, …
//! - The change log is a contiguous suffix of seqs: trimming drops a prefix (every event up to
//!   the newest one older than the cut, never the newest event) and records `trimmed_through`;
//!   a cursor below it, or beyond the newest seq (a log from another life), is `CursorTooOld`.
//! - Who hears what: `change_folders(user, folder, seq)` indexes each event under the folders
//!   it touches (`event_folders`), and `watches(user, device, folder, since)` holds the
//!   folders each device listed, from the sequence number it listed them at. A device's page
//!   is read by walking its watches into that index, so it costs the changes in its folders,
//!   not every change of the user; a device past the watch limit has one `EVERY_FOLDER` row
//!   and reads the whole log. Both tables are trimmed, and dropped, with the log and the device.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use jewel_wire::{
    ChangeEvent, ChangeOp, ChangePage, Content, DeviceId, DeviceInfo, FileVersion, InlineBytes,
    MoveMode, NewKind, Node, NodeId, NodeKind, Place, Seq, SetAttr, TrashEntry, Version,
    MAX_WATCHED_FOLDERS, ROOT_ID,
};
use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior,
};

use super::{
    checked_small_block, event_folders, fill_page, folders_touched, is_new_folder, json_len,
    new_id, now_ns, BatchDone, BatchOp, MetaStore, Moved, NewNode, Origin, Page, PendingLink,
    StoreError, StoreResult, TokenOwner, TrashCursor, User, UserId, MAX_PAGE_BYTES, MAX_VERSIONS,
};

/// Knobs of the SQLite engine.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Reader connections. 4: enough to keep 2–4 cores busy with reads (each read is a few
    /// microseconds of SQLite work), few enough to keep file handles and page caches small.
    pub readers: usize,
    /// How long a connection waits for a lock held by another process (an admin CLI run
    /// beside the server) before failing. 5 s: long enough for any one transaction.
    pub busy_timeout: Duration,
    /// Page cache per connection, in KiB. 8 MiB: the hot part of a family's tree fits.
    pub cache_kib: u32,
}

impl SqliteOptions {
    /// For an admin command run beside the server (`jewel-server user add`): one reader, and
    /// a minute's wait for the server's locks — on a loaded machine the server's commits can
    /// keep the lock for seconds together, and an admin command should wait, not fail.
    pub fn admin() -> SqliteOptions {
        SqliteOptions {
            readers: 1,
            busy_timeout: Duration::from_secs(60),
            ..SqliteOptions::default()
        }
    }
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            cache_kib: 8 * 1024,
        }
    }
}

/// The SQLite `MetaStore`. Cheap to clone (all clones share the connections).
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    token_hash      TEXT NOT NULL UNIQUE,
    created_at_ns   INTEGER NOT NULL,
    latest_seq      INTEGER NOT NULL DEFAULT 0,
    trimmed_through INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS devices (
    user          TEXT NOT NULL,
    id            INTEGER NOT NULL,
    name          TEXT NOT NULL,
    token_hash    TEXT,
    created_at_ns INTEGER NOT NULL DEFAULT 0,
    last_seen_ns  INTEGER NOT NULL DEFAULT 0,
    request_key   TEXT,
    PRIMARY KEY (user, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS links (
    code          TEXT PRIMARY KEY,
    token_hash    TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    expires_at_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes (
    user          TEXT NOT NULL,
    id            INTEGER NOT NULL,
    parent        INTEGER NOT NULL,
    name          TEXT NOT NULL,
    kind          TEXT NOT NULL,
    size          INTEGER NOT NULL,
    mode          INTEGER NOT NULL,
    mtime_ns      INTEGER NOT NULL,
    version       INTEGER NOT NULL,
    blocks        TEXT NOT NULL DEFAULT '[]',
    target        TEXT,
    trashed_at_ns INTEGER,
    trashed_by    INTEGER,
    PRIMARY KEY (user, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS nodes_live_entry
    ON nodes (user, parent, name) WHERE trashed_at_ns IS NULL;
CREATE INDEX IF NOT EXISTS nodes_trash_group
    ON nodes (user, trashed_by) WHERE trashed_by IS NOT NULL;
CREATE TABLE IF NOT EXISTS changes (
    user  TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    event TEXT NOT NULL,
    at_ns INTEGER NOT NULL,
    PRIMARY KEY (user, seq)
);
CREATE TABLE IF NOT EXISTS change_folders (
    user   TEXT NOT NULL,
    folder INTEGER NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (user, folder, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watches (
    user   TEXT NOT NULL,
    device INTEGER NOT NULL,
    folder INTEGER NOT NULL,
    since  INTEGER NOT NULL,
    PRIMARY KEY (user, device, folder)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions (
    user           TEXT NOT NULL,
    id             INTEGER NOT NULL,
    version        INTEGER NOT NULL,
    size           INTEGER NOT NULL,
    blocks         TEXT NOT NULL,
    mtime_ns       INTEGER NOT NULL,
    replaced_at_ns INTEGER NOT NULL,
    PRIMARY KEY (user, id, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS small_blocks (
    user  TEXT NOT NULL,
    hash  TEXT NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (user, hash)
);
PRAGMA user_version = 1;
";

/// Brings a database made by an older version up to [`SCHEMA`] (run after it): version 1 had
/// no device tokens, version 2 no registration keys, version 3 kept the change log and small
/// blocks without rowids ([`ROWID_TABLES`]). Then the indexes on the new columns.
fn migrate(conn: &Connection) -> StoreResult<()> {
    let has_tokens: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('devices') WHERE name = 'token_hash')",
            [],
            |r| r.get(0),
        )
        .db()?;
    if !has_tokens {
        conn.execute_batch(
            "ALTER TABLE devices ADD COLUMN token_hash TEXT;
             ALTER TABLE devices ADD COLUMN created_at_ns INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE devices ADD COLUMN last_seen_ns INTEGER NOT NULL DEFAULT 0;",
        )
        .db()?;
    }
    let has_keys: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('devices') WHERE name = 'request_key')",
            [],
            |r| r.get(0),
        )
        .db()?;
    if !has_keys {
        conn.execute_batch("ALTER TABLE devices ADD COLUMN request_key TEXT;")
            .db()?;
    }
    for (table, columns) in ROWID_TABLES {
        rebuild_with_rowid(conn, table, columns)?;
    }
    conn.execute_batch(
        "CREATE UNIQUE INDEX IF NOT EXISTS devices_token
             ON devices (token_hash) WHERE token_hash IS NOT NULL;
         CREATE UNIQUE INDEX IF NOT EXISTS devices_request_key
             ON devices (user, request_key) WHERE request_key IS NOT NULL;",
    )
    .db()
}

/// WAL pages (4 KiB each) after which a commit checkpoints: about 40 MiB of WAL.
const WAL_CHECKPOINT_PAGES: i64 = 10_000;

/// Tables whose rows are large (an event's JSON with a small file's bytes; a small block):
/// they keep a rowid and index their key beside it. As `WITHOUT ROWID` tables they kept each
/// row in the key's b-tree, where a row over about 1 KB spills to overflow pages and every
/// insert rebalanced pages of big rows — the largest cost of a commit in the profile
/// (`docs/PROFILE.md`).
const ROWID_TABLES: [(&str, &str); 2] = [
    ("changes", "user, seq, event, at_ns"),
    ("small_blocks", "user, hash, bytes"),
];

/// Rebuilds `table`, made `WITHOUT ROWID` by an older version, as the rowid table
/// [`SCHEMA`] now declares, keeping every row; one transaction, so a crash leaves the old
/// table. Nothing to do when it already has a rowid.
fn rebuild_with_rowid(conn: &Connection, table: &str, columns: &str) -> StoreResult<()> {
    let sql: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
            params![table],
            |r| r.get(0),
        )
        .optional()
        .db()?;
    let Some(sql) = sql else { return Ok(()) };
    if !sql.to_ascii_uppercase().contains("WITHOUT ROWID") {
        return Ok(());
    }
    let create = SCHEMA
        .split(';')
        .find(|stmt| stmt.contains(&format!("CREATE TABLE IF NOT EXISTS {table} (")))
        .ok_or_else(|| StoreError::Backend(format!("no table {table} in the schema")))?
        .replace(
            &format!("IF NOT EXISTS {table} ("),
            &format!("{table}_rebuilt ("),
        );
    let tx = conn.unchecked_transaction().db()?;
    tx.execute_batch(&format!(
        "{create};
         INSERT INTO {table}_rebuilt ({columns}) SELECT {columns} FROM {table};
         DROP TABLE {table};
         ALTER TABLE {table}_rebuilt RENAME TO {table};"
    ))
    .db()?;
    tx.commit().db()
}

/// Adds a device of `user` (unless the user is unknown or has `max`), under `key` if given.
fn insert_device(
    tx: &rusqlite::Transaction<'_>,
    user: &str,
    name: &str,
    max: usize,
    key: Option<&str>,
) -> StoreResult<DeviceId> {
    let known: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE id = ?1)")
        .db()?
        .query_row(params![user], |r| r.get(0))
        .db()?;
    if !known {
        return Err(StoreError::UnknownUser(user.to_string()));
    }
    let devices: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM devices WHERE user = ?1")
        .db()?
        .query_row(params![user], |r| r.get(0))
        .db()?;
    if devices as usize >= max {
        return Err(StoreError::TooManyDevices(max));
    }
    for _ in 0..16 {
        let id = new_id();
        let inserted = tx
            .prepare_cached(
                "INSERT INTO devices (user, id, name, created_at_ns, request_key)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT DO NOTHING",
            )
            .db()?
            .execute(params![user, sql_id(id), name, now_ns(), key])
            .db()?;
        if inserted == 1 {
            return Ok(id);
        }
    }
    Err(StoreError::Backend(
        "could not draw a free device id".into(),
    ))
}

/// Whether a token hash is any token's: an account's, a device's, or a waiting link's.
fn token_hash_taken(c: &Connection, hash: &str) -> StoreResult<bool> {
    c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM users WHERE token_hash = ?1)
             OR EXISTS (SELECT 1 FROM devices WHERE token_hash = ?1)
             OR EXISTS (SELECT 1 FROM links WHERE token_hash = ?1)",
    )
    .db()?
    .query_row(params![hash], |r| r.get(0))
    .db()
}

fn link_row(r: &Row<'_>) -> rusqlite::Result<PendingLink> {
    Ok(PendingLink {
        code: r.get(0)?,
        token_hash: r.get(1)?,
        name: r.get(2)?,
        expires_at_ns: r.get(3)?,
    })
}

fn live_link(c: &Connection, code: &str, now_ns: i64) -> StoreResult<PendingLink> {
    c.prepare_cached(
        "SELECT code, token_hash, name, expires_at_ns FROM links
         WHERE code = ?1 AND expires_at_ns > ?2",
    )
    .db()?
    .query_row(params![code, now_ns], link_row)
    .optional()
    .db()?
    .ok_or(StoreError::UnknownLink)
}

const NODE_COLS: &str =
    "id, parent, name, kind, size, mode, mtime_ns, version, blocks, target, trashed_at_ns";

/// Turns rusqlite errors into `StoreError::Backend`.
trait Db<T> {
    fn db(self) -> StoreResult<T>;
}

impl<T> Db<T> for rusqlite::Result<T> {
    fn db(self) -> StoreResult<T> {
        self.map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::Busy(format!("sqlite: {e}"))
            }
            _ => StoreError::Backend(format!("sqlite: {e}")),
        })
    }
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Backend(format!("stored JSON: {e}"))
}

/// A wire id as SQLite's signed integer; ids beyond `i64` cannot exist, so they become -1
/// (never stored) instead of wrapping onto a real id.
fn sql_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(-1)
}

fn kind_str(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::File => "file",
        NodeKind::Dir => "dir",
        NodeKind::Symlink => "symlink",
    }
}

fn conversion_err(msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        Box::<dyn std::error::Error + Send + Sync>::from(msg),
    )
}

/// A node row (selected with [`NODE_COLS`]) and its trash time.
fn node_row(r: &Row<'_>) -> rusqlite::Result<(Node, Option<i64>)> {
    let kind = match r.get_ref(3)?.as_str()? {
        "file" => NodeKind::File,
        "dir" => NodeKind::Dir,
        "symlink" => NodeKind::Symlink,
        other => return Err(conversion_err(format!("unknown node kind {other:?}"))),
    };
    let blocks: Vec<String> = serde_json::from_str(r.get_ref(8)?.as_str()?)
        .map_err(|e| conversion_err(format!("blocks: {e}")))?;
    let node = Node {
        id: r.get::<_, i64>(0)? as u64,
        parent: r.get::<_, i64>(1)? as u64,
        name: r.get(2)?,
        kind,
        size: r.get::<_, i64>(4)? as u64,
        mode: r.get::<_, i64>(5)? as u32,
        mtime_ns: r.get(6)?,
        version: r.get::<_, i64>(7)? as u64,
        blocks,
        target: r.get(9)?,
    };
    Ok((node, r.get(10)?))
}

fn user_row(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        created_at_ns: r.get(2)?,
    })
}

// ---- statements shared by several methods (all run inside a transaction) ----

/// Any node of the user, live or trashed, with its trash time.
fn any_node(c: &Connection, user: &str, id: NodeId) -> StoreResult<Option<(Node, Option<i64>)>> {
    c.prepare_cached(&format!(
        "SELECT {NODE_COLS} FROM nodes WHERE user = ?1 AND id = ?2"
    ))
    .db()?
    .query_row(params![user, sql_id(id)], node_row)
    .optional()
    .db()
}

/// A live node, or `NotFound`.
fn live_node(c: &Connection, user: &str, id: NodeId) -> StoreResult<Node> {
    match any_node(c, user, id)? {
        Some((node, None)) => Ok(node),
        _ => Err(StoreError::NotFound),
    }
}

/// A live directory, `NotFound` or `NotADirectory`.
fn live_dir(c: &Connection, user: &str, id: NodeId) -> StoreResult<Node> {
    let node = live_node(c, user, id)?;
    if node.kind != NodeKind::Dir {
        return Err(StoreError::NotADirectory);
    }
    Ok(node)
}

/// The live entry `name` in `parent`, if any (never the root).
fn live_child(c: &Connection, user: &str, parent: NodeId, name: &str) -> StoreResult<Option<Node>> {
    c.prepare_cached(&format!(
        "SELECT {NODE_COLS} FROM nodes
         WHERE user = ?1 AND parent = ?2 AND name = ?3 AND trashed_at_ns IS NULL AND id != 1"
    ))
    .db()?
    .query_row(params![user, sql_id(parent), name], node_row)
    .optional()
    .db()
    .map(|row| row.map(|(node, _)| node))
}

fn has_live_children(c: &Connection, user: &str, dir: NodeId) -> StoreResult<bool> {
    c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM nodes
         WHERE user = ?1 AND parent = ?2 AND trashed_at_ns IS NULL AND id != 1)",
    )
    .db()?
    .query_row(params![user, sql_id(dir)], |r| r.get(0))
    .db()
}

/// Whether `node` is `ancestor` or lies below it (walking live parents up to the root).
fn is_within(c: &Connection, user: &str, node: NodeId, ancestor: NodeId) -> StoreResult<bool> {
    let mut cur = node;
    // The depth bound only guards against a corrupt (cyclic) table.
    for _ in 0..100_000 {
        if cur == ancestor {
            return Ok(true);
        }
        if cur == ROOT_ID {
            return Ok(false);
        }
        cur = live_node(c, user, cur)?.parent;
    }
    Err(StoreError::Backend("the tree has a cycle".into()))
}

fn insert_node(c: &Connection, user: &str, n: &Node) -> StoreResult<()> {
    let blocks = serde_json::to_string(&n.blocks).map_err(json_err)?;
    c.prepare_cached(
        "INSERT INTO nodes (user, id, parent, name, kind, size, mode, mtime_ns, version, blocks,
                            target)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .db()?
    .execute(params![
        user,
        sql_id(n.id),
        sql_id(n.parent),
        n.name,
        kind_str(n.kind),
        n.size as i64,
        n.mode as i64,
        n.mtime_ns,
        n.version as i64,
        blocks,
        n.target
    ])
    .db()?;
    Ok(())
}

/// Keeps a file's current content as an earlier version before a commit replaces it with
/// other content (empty content is not worth keeping).
fn keep_version(c: &Connection, user: &str, n: &Node, now_ns: i64) -> StoreResult<()> {
    if n.size == 0 {
        return Ok(());
    }
    let blocks = serde_json::to_string(&n.blocks).map_err(json_err)?;
    c.prepare_cached(
        "INSERT OR REPLACE INTO versions (user, id, version, size, blocks, mtime_ns, replaced_at_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .db()?
    .execute(params![
        user,
        sql_id(n.id),
        n.version as i64,
        n.size as i64,
        blocks,
        n.mtime_ns,
        now_ns
    ])
    .db()?;
    Ok(())
}

/// Writes a node's place, attributes, content and version.
fn update_node(c: &Connection, user: &str, n: &Node) -> StoreResult<()> {
    let blocks = serde_json::to_string(&n.blocks).map_err(json_err)?;
    c.prepare_cached(
        "UPDATE nodes SET parent = ?3, name = ?4, size = ?5, mode = ?6, mtime_ns = ?7,
                          version = ?8, blocks = ?9, target = ?10
         WHERE user = ?1 AND id = ?2",
    )
    .db()?
    .execute(params![
        user,
        sql_id(n.id),
        sql_id(n.parent),
        n.name,
        n.size as i64,
        n.mode as i64,
        n.mtime_ns,
        n.version as i64,
        blocks,
        n.target
    ])
    .db()?;
    Ok(())
}

/// Puts only a node's place (used to park a node during an exchange).
fn set_place(
    c: &Connection,
    user: &str,
    id: NodeId,
    parent: NodeId,
    name: &str,
) -> StoreResult<()> {
    c.prepare_cached("UPDATE nodes SET parent = ?3, name = ?4 WHERE user = ?1 AND id = ?2")
        .db()?
        .execute(params![user, sql_id(id), sql_id(parent), name])
        .db()?;
    Ok(())
}

/// Marks a node and its live subtree trashed, with the node as the top of the deletion.
fn trash_subtree(c: &Connection, user: &str, top: NodeId, now_ns: i64) -> StoreResult<()> {
    // The subtree first (`CROSS JOIN`: from each node to its children through the parent
    // index; left to itself the planner put the nodes outside and walked every live node of
    // the user at each step, so removing one of a user's 10,000 files read 10,000 rows),
    // then each node by its key.
    let ids: Vec<i64> = c
        .prepare_cached(TRASH_SUBTREE_IDS)
        .db()?
        .query_map(params![user, sql_id(top)], |r| r.get(0))
        .db()?
        .collect::<rusqlite::Result<_>>()
        .db()?;
    let mut trash = c.prepare_cached(TRASH_ONE).db()?;
    for id in ids {
        trash.execute(params![user, id, sql_id(top), now_ns]).db()?;
    }
    Ok(())
}

/// The live nodes of a subtree (`?1` user, `?2` its top), the top included.
const TRASH_SUBTREE_IDS: &str = "WITH RECURSIVE sub(id) AS (
         SELECT ?2
         UNION ALL
         SELECT n.id FROM sub CROSS JOIN nodes n ON n.parent = sub.id
         WHERE n.user = ?1 AND n.trashed_at_ns IS NULL AND n.id != 1
     )
     SELECT id FROM sub";

/// Trashes one live node (`?1` user, `?2` id) with its group (`?3`, the subtree's top).
const TRASH_ONE: &str = "UPDATE nodes SET trashed_at_ns = ?4, trashed_by = ?3
     WHERE user = ?1 AND id = ?2 AND trashed_at_ns IS NULL";

/// The watch row of a device that hears every change (it listed more than
/// [`MAX_WATCHED_FOLDERS`] folders). No node has this id.
const EVERY_FOLDER: i64 = -1;

/// A device's page (`?1` user, `?2` device, `?3` cursor, `?4` rows), driven by its watches:
/// one range of the folder index per watched folder, so a device pays for its folders'
/// changes, not for all of its user's. `CROSS JOIN` fixes that order: left to itself, the
/// planner scanned every indexed change of the user, then every change of the log, per poll
/// (`a_device_page_reads_only_its_folders` checks the plan).
const DEVICE_PAGE: &str = "SELECT c.event FROM (
         SELECT DISTINCT f.seq AS seq FROM watches w
         CROSS JOIN change_folders f
           ON f.user = w.user AND f.folder = w.folder AND f.seq > MAX(w.since, ?3)
         WHERE w.user = ?1 AND w.device = ?2
         ORDER BY f.seq LIMIT ?4
     ) s CROSS JOIN changes c ON c.user = ?1 AND c.seq = s.seq
     ORDER BY s.seq";

/// Past this many watched folders a device's page is read from the log in order, keeping
/// each event that touches a watched folder, instead of as the union of each folder's range
/// of `change_folders`: that costs a seek per watch and a sort of every event found, on
/// every poll, and a device that made or listed a thousand busy folders spent most of the
/// server's CPU on it (`docs/PROFILE.md`).
const SCAN_LOG_PAST_WATCHES: i64 = 64;

/// How many rows of the log one scanned page reads at most, per event the page may hold.
/// A device that watches many quiet folders of a busy user gets a page that ends where the
/// scan stopped (`through`), and reads on from there with its next page.
const SCAN_ROWS_PER_EVENT: u32 = 8;

/// Whether `device` watches more than [`SCAN_LOG_PAST_WATCHES`] folders (counted no further).
fn watches_many(tx: &Transaction<'_>, user: &str, device: DeviceId) -> StoreResult<bool> {
    let counted: i64 = tx
        .prepare_cached(
            "SELECT COUNT(*) FROM (SELECT 1 FROM watches WHERE user = ?1 AND device = ?2 LIMIT ?3)",
        )
        .db()?
        .query_row(
            params![user, sql_id(device), SCAN_LOG_PAST_WATCHES + 1],
            |r| r.get(0),
        )
        .db()?;
    Ok(counted > SCAN_LOG_PAST_WATCHES)
}

/// What a scanned page reads of a stored event to decide whether to keep it: the places
/// [`event_folders`] names, without the names, block lists and inline bytes (those are
/// parsed only for the events kept).
#[derive(serde::Deserialize)]
struct EventPlaces {
    node: NodePlace,
    #[serde(default)]
    from: Option<FolderOf>,
}

#[derive(serde::Deserialize)]
struct NodePlace {
    id: NodeId,
    parent: NodeId,
    kind: NodeKind,
}

#[derive(serde::Deserialize)]
struct FolderOf {
    parent: NodeId,
}

impl EventPlaces {
    fn folders(&self) -> Vec<NodeId> {
        folders_touched(
            self.node.parent,
            self.from.as_ref().map(|from| from.parent),
            (self.node.kind == NodeKind::Dir).then_some(self.node.id),
        )
    }
}

/// A device's page read from the log in order (see [`SCAN_LOG_PAST_WATCHES`]): the events
/// after `since` that touch a folder it watched by then, and how far the page covers — its
/// last event when the page is full, where the scan stopped when it read its most rows,
/// else the newest sequence number `latest`.
fn scanned_device_page(
    tx: &Transaction<'_>,
    user: &str,
    device: DeviceId,
    since: Seq,
    limit: u32,
    latest: Seq,
) -> StoreResult<(Vec<ChangeEvent>, Seq)> {
    let watched: HashMap<NodeId, Seq> = tx
        .prepare_cached("SELECT folder, since FROM watches WHERE user = ?1 AND device = ?2")
        .db()?
        .query_map(params![user, sql_id(device)], |r| {
            Ok((r.get::<_, i64>(0)? as NodeId, r.get::<_, i64>(1)? as Seq))
        })
        .db()?
        .collect::<rusqlite::Result<_>>()
        .db()?;
    let most_rows = limit.max(1).saturating_mul(SCAN_ROWS_PER_EVENT);
    let mut stmt = tx
        .prepare_cached(
            "SELECT seq, event FROM changes WHERE user = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .db()?;
    let rows = stmt
        .query_map(params![user, sql_id(since), most_rows], |r| {
            Ok((r.get::<_, i64>(0)? as Seq, r.get::<_, String>(1)?))
        })
        .db()?;
    let (mut events, mut bytes, mut read, mut scanned_to) = (Vec::new(), 0usize, 0u32, since);
    for row in rows {
        let (seq, json) = row.db()?;
        let places: EventPlaces = serde_json::from_str(&json).map_err(json_err)?;
        let wanted = places
            .folders()
            .iter()
            .any(|folder| watched.get(folder).is_some_and(|&from| seq > from));
        if wanted {
            if events.len() >= limit as usize || (bytes >= MAX_PAGE_BYTES && !events.is_empty()) {
                return Ok((events, scanned_to));
            }
            bytes += json.len();
            events.push(serde_json::from_str(&json).map_err(json_err)?);
        }
        read += 1;
        scanned_to = seq;
    }
    let through = if read >= most_rows {
        scanned_to
    } else {
        latest
    };
    Ok((events, through))
}

/// The user's newest sequence number, once `since` proves to be a cursor the log can serve
/// (`CursorTooOld` when events after it were trimmed, or it is ahead of the log).
fn log_head(tx: &Transaction<'_>, user: &str, since: Seq) -> StoreResult<Seq> {
    let (latest, trimmed): (i64, i64) = tx
        .prepare_cached("SELECT latest_seq, trimmed_through FROM users WHERE id = ?1")
        .db()?
        .query_row(params![user], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .db()?
        .unwrap_or((0, 0));
    let (latest, trimmed) = (latest as u64, trimmed as u64);
    if since < trimmed || since > latest {
        return Err(StoreError::CursorTooOld);
    }
    Ok(latest)
}

/// Reads stored events (their JSON) into a page bounded by `limit` and in bytes; true when
/// the page was cut before the rows ran out.
fn event_page(
    rows: impl Iterator<Item = rusqlite::Result<String>>,
    limit: u32,
) -> StoreResult<(Vec<ChangeEvent>, bool)> {
    // Each event is stored as its JSON: its length is what it adds to the answer.
    let rows = rows.map(|row| {
        let json = row.db()?;
        let len = json.len();
        Ok((json, len))
    });
    let page = fill_page(rows, limit, MAX_PAGE_BYTES)?;
    let events = page
        .entries
        .iter()
        .map(|json| serde_json::from_str(json).map_err(json_err))
        .collect::<StoreResult<Vec<ChangeEvent>>>()?;
    Ok((events, page.more))
}

/// Appends one event to the user's log with the next sequence number.
fn append_event(
    c: &Connection,
    user: &str,
    op: ChangeOp,
    node: &Node,
    from: Option<Place>,
    origin: Origin,
) -> StoreResult<ChangeEvent> {
    append_content_event(c, user, op, node, from, origin, None)
}

/// [`append_event`] for a change that stored content, with the content's bytes when they
/// came inline (a small file): the event carries them to the other devices.
fn append_content_event(
    c: &Connection,
    user: &str,
    op: ChangeOp,
    node: &Node,
    from: Option<Place>,
    origin: Origin,
    inline: Option<InlineBytes>,
) -> StoreResult<ChangeEvent> {
    let seq: i64 = c
        .prepare_cached(
            "UPDATE users SET latest_seq = latest_seq + 1 WHERE id = ?1 RETURNING latest_seq",
        )
        .db()?
        .query_row(params![user], |r| r.get(0))
        .optional()
        .db()?
        .ok_or(StoreError::NotFound)?;
    let event = ChangeEvent {
        inline,
        seq: seq as u64,
        op,
        node: node.clone(),
        from,
        device: origin.device,
        at_ns: origin.now_ns,
    };
    let json = serde_json::to_string(&event).map_err(json_err)?;
    c.prepare_cached("INSERT INTO changes (user, seq, event, at_ns) VALUES (?1, ?2, ?3, ?4)")
        .db()?
        .execute(params![user, seq, json, origin.now_ns])
        .db()?;
    let mut folder_row = c
        .prepare_cached(
            "INSERT OR IGNORE INTO change_folders (user, folder, seq) VALUES (?1, ?2, ?3)",
        )
        .db()?;
    for folder in event_folders(&event) {
        folder_row
            .execute(params![user, sql_id(folder), seq])
            .db()?;
    }
    if let (Some(device), true) = (origin.device, is_new_folder(&event)) {
        // The device that made a folder shows it as listed (empty) without ever listing it:
        // it watches it from its birth.
        c.prepare_cached(
            "INSERT OR IGNORE INTO watches (user, device, folder, since) VALUES (?1, ?2, ?3, ?4)",
        )
        .db()?
        .execute(params![user, sql_id(device), sql_id(node.id), seq])
        .db()?;
    }
    Ok(event)
}

/// Stores a small file's inline block, the one block its content names, with the change
/// that names it. Bytes that are not that block are refused (the router checks this before;
/// here it keeps a wrong row from ever being served under a hash).
fn keep_small_block(
    c: &Connection,
    user: &str,
    blocks: &[String],
    inline: Option<&InlineBytes>,
) -> StoreResult<()> {
    let Some((hash, bytes)) = checked_small_block(blocks, inline)? else {
        return Ok(());
    };
    c.prepare_cached(
        "INSERT INTO small_blocks (user, hash, bytes) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
    )
    .db()?
    .execute(params![user, hash, bytes])
    .db()?;
    Ok(())
}

// ---- the changes a batch may carry, each inside a transaction its caller opened ----

fn create_tx(
    tx: &Connection,
    user: &str,
    new: NewNode,
    origin: Origin,
) -> StoreResult<(Node, ChangeEvent)> {
    live_dir(tx, user, new.parent)?;
    if let Some(occupant) = live_child(tx, user, new.parent, &new.name)? {
        return Err(StoreError::Exists(Box::new(occupant)));
    }
    let (kind, size, blocks, target, inline) = match new.kind {
        NewKind::File { content } => (
            NodeKind::File,
            content.size,
            content.blocks,
            None,
            content.inline,
        ),
        NewKind::Dir => (NodeKind::Dir, 0, Vec::new(), None, None),
        NewKind::Symlink { target } => (
            NodeKind::Symlink,
            target.len() as u64,
            Vec::new(),
            Some(target),
            None,
        ),
    };
    let node = Node {
        id: fresh_node_id(tx, user)?,
        parent: new.parent,
        name: new.name,
        kind,
        size,
        mode: new.mode,
        mtime_ns: new.mtime_ns,
        version: 1,
        blocks,
        target,
    };
    insert_node(tx, user, &node)?;
    keep_small_block(tx, user, &node.blocks, inline.as_ref())?;
    let event = append_content_event(tx, user, ChangeOp::Upsert, &node, None, origin, inline)?;
    Ok((node, event))
}

fn commit_tx(
    tx: &Connection,
    user: &str,
    id: NodeId,
    base: Version,
    content: Content,
    mtime_ns: Option<i64>,
    origin: Origin,
) -> StoreResult<(Node, ChangeEvent)> {
    let mut node = live_node(tx, user, id)?;
    match node.kind {
        NodeKind::File => {}
        NodeKind::Dir => return Err(StoreError::IsADirectory),
        NodeKind::Symlink => return Err(StoreError::InvalidMove("only a file has content")),
    }
    if node.version != base {
        return Err(StoreError::Conflict(Box::new(node)));
    }
    if node.blocks != content.blocks {
        keep_version(tx, user, &node, origin.now_ns)?;
    }
    node.size = content.size;
    node.blocks = content.blocks;
    node.mtime_ns = mtime_ns.unwrap_or(origin.now_ns);
    node.version += 1;
    update_node(tx, user, &node)?;
    keep_small_block(tx, user, &node.blocks, content.inline.as_ref())?;
    let event = append_content_event(
        tx,
        user,
        ChangeOp::Upsert,
        &node,
        None,
        origin,
        content.inline,
    )?;
    Ok((node, event))
}

fn remove_tx(
    tx: &Connection,
    user: &str,
    id: NodeId,
    base: Option<Version>,
    recursive: bool,
    origin: Origin,
) -> StoreResult<(Node, ChangeEvent)> {
    let node = live_node(tx, user, id)?;
    if id == ROOT_ID {
        return Err(StoreError::InvalidMove("the root cannot be removed"));
    }
    if base.is_some_and(|base| base != node.version) {
        return Err(StoreError::Conflict(Box::new(node)));
    }
    if node.is_dir() && !recursive && has_live_children(tx, user, id)? {
        return Err(StoreError::NotEmpty);
    }
    trash_subtree(tx, user, id, origin.now_ns)?;
    let event = append_event(tx, user, ChangeOp::Remove, &node, None, origin)?;
    Ok((node, event))
}

fn batch_op_tx(
    tx: &Connection,
    user: &str,
    op: BatchOp,
    origin: Origin,
) -> StoreResult<(Node, ChangeEvent)> {
    match op {
        BatchOp::Create(new) => create_tx(tx, user, new, origin),
        BatchOp::Commit {
            id,
            base,
            content,
            mtime_ns,
        } => commit_tx(tx, user, id, base, content, mtime_ns, origin),
        BatchOp::Remove { id, base } => remove_tx(tx, user, id, Some(base), false, origin),
        BatchOp::Move {
            id,
            base,
            new_parent,
            new_name,
        } => move_tx(
            tx,
            user,
            id,
            base,
            new_parent,
            new_name,
            MoveMode::NoReplace,
            origin,
        )
        .and_then(super::moved_to_free_name),
        BatchOp::SetAttr { id, attr } => set_attr_tx(tx, user, id, &attr, origin),
    }
}

/// Renames and/or moves a node (see [`MetaStore::move_node`]).
#[allow(clippy::too_many_arguments)]
fn move_tx(
    tx: &Connection,
    user: &str,
    id: NodeId,
    base: Version,
    new_parent: NodeId,
    new_name: String,
    mode: MoveMode,
    origin: Origin,
) -> StoreResult<Moved> {
    let mut node = live_node(tx, user, id)?;
    if id == ROOT_ID {
        return Err(StoreError::InvalidMove("the root cannot be moved"));
    }
    if node.version != base {
        return Err(StoreError::Conflict(Box::new(node)));
    }
    live_dir(tx, user, new_parent)?;
    if node.is_dir() && is_within(tx, user, new_parent, id)? {
        return Err(StoreError::InvalidMove(
            "a directory cannot move below itself",
        ));
    }
    let from = Place {
        parent: node.parent,
        name: node.name.clone(),
    };
    let target = live_child(tx, user, new_parent, &new_name)?;
    let Some(mut target) = target else {
        if mode == MoveMode::Exchange {
            return Err(StoreError::NotFound);
        }
        node.parent = new_parent;
        node.name = new_name;
        node.version += 1;
        update_node(tx, user, &node)?;
        let event = append_event(tx, user, ChangeOp::Upsert, &node, Some(from), origin)?;
        return Ok(Moved {
            node,
            other: None,
            events: vec![event],
        });
    };
    if target.id == node.id {
        return Ok(Moved {
            node,
            other: None,
            events: Vec::new(),
        });
    }
    match mode {
        MoveMode::NoReplace => Err(StoreError::Exists(Box::new(target))),
        MoveMode::Replace => {
            match (node.is_dir(), target.is_dir()) {
                (true, false) => return Err(StoreError::NotADirectory),
                (false, true) => return Err(StoreError::IsADirectory),
                (true, true) if has_live_children(tx, user, target.id)? => {
                    return Err(StoreError::NotEmpty)
                }
                _ => {}
            }
            trash_subtree(tx, user, target.id, origin.now_ns)?;
            let removed = append_event(tx, user, ChangeOp::Remove, &target, None, origin)?;
            node.parent = new_parent;
            node.name = new_name;
            node.version += 1;
            update_node(tx, user, &node)?;
            let moved = append_event(tx, user, ChangeOp::Upsert, &node, Some(from), origin)?;
            Ok(Moved {
                node,
                other: Some(target),
                events: vec![removed, moved],
            })
        }
        MoveMode::Exchange => {
            if target.is_dir() && is_within(tx, user, from.parent, target.id)? {
                return Err(StoreError::InvalidMove(
                    "a directory cannot move below itself",
                ));
            }
            let target_from = Place {
                parent: target.parent,
                name: target.name.clone(),
            };
            // Park the node under a name no client can use ('\0'), so that neither
            // row ever collides with the other in the unique live-entry index.
            set_place(tx, user, node.id, from.parent, "\0exchange")?;
            target.parent = from.parent;
            target.name = from.name.clone();
            target.version += 1;
            update_node(tx, user, &target)?;
            node.parent = target_from.parent;
            node.name = target_from.name.clone();
            node.version += 1;
            update_node(tx, user, &node)?;
            let first = append_event(tx, user, ChangeOp::Upsert, &node, Some(from), origin)?;
            let second = append_event(
                tx,
                user,
                ChangeOp::Upsert,
                &target,
                Some(target_from),
                origin,
            )?;
            Ok(Moved {
                node,
                other: Some(target),
                events: vec![first, second],
            })
        }
    }
}

/// Changes a node's mode and/or mtime (see [`MetaStore::set_attr`]).
fn set_attr_tx(
    tx: &Connection,
    user: &str,
    id: NodeId,
    attr: &SetAttr,
    origin: Origin,
) -> StoreResult<(Node, ChangeEvent)> {
    let mut node = live_node(tx, user, id)?;
    if let Some(mode) = attr.mode {
        node.mode = mode;
    }
    if let Some(mtime_ns) = attr.mtime_ns {
        node.mtime_ns = mtime_ns;
    }
    node.version += 1;
    update_node(tx, user, &node)?;
    let event = append_event(tx, user, ChangeOp::Upsert, &node, None, origin)?;
    Ok((node, event))
}

/// A node id not yet used by this user.
fn fresh_node_id(c: &Connection, user: &str) -> StoreResult<NodeId> {
    for _ in 0..16 {
        let id = new_id();
        if any_node(c, user, id)?.is_none() {
            return Ok(id);
        }
    }
    Err(StoreError::Backend("could not draw a free node id".into()))
}

/// `name (restored)`, `name (restored 2)`, …: the first one free in `parent`. The name is cut
/// (at a character boundary) so the result stays within the name length limit.
fn restored_name(c: &Connection, user: &str, parent: NodeId, name: &str) -> StoreResult<String> {
    for n in 1u32..=100_000 {
        let candidate = super::restored_name(name, n);
        if live_child(c, user, parent, &candidate)?.is_none() {
            return Ok(candidate);
        }
    }
    Err(StoreError::Backend(format!(
        "no free restore name for {name:?}"
    )))
}

fn user_by_name(c: &Connection, name: &str) -> StoreResult<User> {
    c.prepare_cached("SELECT id, name, created_at_ns FROM users WHERE name = ?1")
        .db()?
        .query_row(params![name], user_row)
        .optional()
        .db()?
        .ok_or_else(|| StoreError::UnknownUser(name.to_string()))
}

// ---- opening ----

fn configure(conn: &Connection, options: &SqliteOptions) -> StoreResult<()> {
    conn.busy_timeout(options.busy_timeout).db()?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "cache_size", -(options.cache_kib as i64))
        .db()?;
    conn.pragma_update(None, "foreign_keys", false).db()?;
    // Statement journals (a batch's savepoint per change) stay in memory: by default SQLite
    // spills them to a temporary file past 64 KiB, and a batch then wrote every page it
    // touched to that file before changing it.
    conn.pragma_update(None, "temp_store", "MEMORY").db()?;
    Ok(())
}

fn open_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` with the default options.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        Self::open_with(path, &SqliteOptions::default())
    }

    pub fn open_with(path: &Path, options: &SqliteOptions) -> StoreResult<SqliteStore> {
        private_file(path).map_err(|e| {
            StoreError::Backend(format!("{}: cannot make it private: {e}", path.display()))
        })?;
        let writer = Connection::open_with_flags(path, open_flags()).db()?;
        configure(&writer, options)?;
        let mode: String = writer
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .db()?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "{}: SQLite refused WAL mode (got {mode})",
                path.display()
            )));
        }
        writer.pragma_update(None, "synchronous", "NORMAL").db()?;
        // A checkpoint copies every page the WAL holds into the database; at SQLite's
        // default of 1,000 pages a busy server copied the same hot pages (the log's last
        // page, the users row, the upper b-tree pages) a few times a second.
        writer
            .pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)
            .db()?;
        writer.execute_batch(SCHEMA).db()?;
        migrate(&writer)?;
        let mut readers = Vec::with_capacity(options.readers);
        for _ in 0..options.readers {
            let reader = Connection::open_with_flags(path, open_flags()).db()?;
            configure(&reader, options)?;
            reader.pragma_update(None, "query_only", true).db()?;
            readers.push(Mutex::new(reader));
        }
        Ok(SqliteStore::from_parts(writer, readers))
    }

    /// A private in-memory database (tests): one connection serves reads and writes.
    pub fn open_in_memory() -> StoreResult<SqliteStore> {
        let conn = Connection::open_in_memory().db()?;
        configure(&conn, &SqliteOptions::default())?;
        conn.execute_batch(SCHEMA).db()?;
        migrate(&conn)?;
        Ok(SqliteStore::from_parts(conn, Vec::new()))
    }

    fn from_parts(writer: Connection, readers: Vec<Mutex<Connection>>) -> SqliteStore {
        SqliteStore {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
            }),
        }
    }

    /// Runs `f` in one read transaction on a reader connection, on the blocking pool.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.reader();
            let tx = conn.transaction().db()?;
            f(&tx)
            // Dropping the transaction ends it (a rollback of nothing).
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on the writer, committing when it
    /// succeeds and rolling back when it fails.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = lock(&inner.writer);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .db()?;
            let out = f(&tx)?;
            tx.commit().db()?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }
}

/// Creates the database file readable by its owner only (0600), or takes group and other
/// access away from an existing one: it holds every user's file names. SQLite gives its
/// `-wal` and `-shm` files the database file's mode.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for file in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(file);
        let Ok(meta) = std::fs::metadata(&name) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&name, std::fs::Permissions::from_mode(mode & 0o700))?;
        }
    }
    Ok(())
}

/// Locks a connection; a panic in another holder left no open transaction behind (dropping a
/// transaction rolls it back), so a poisoned lock is still usable.
fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Inner {
    /// A free reader connection (round robin, skipping busy ones), or the writer when there
    /// are no readers.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        let n = self.readers.len();
        if n == 0 {
            return lock(&self.writer);
        }
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Ok(guard) = self.readers[(start + i) % n].try_lock() {
                return guard;
            }
        }
        lock(&self.readers[start % n])
    }
}

#[async_trait]
impl MetaStore for SqliteStore {
    async fn create_user(&self, name: &str, token_hash: &str, now_ns: i64) -> StoreResult<User> {
        let (name, token_hash) = (name.to_string(), token_hash.to_string());
        self.write(move |tx| {
            let taken: bool = tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1)")
                .db()?
                .query_row(params![name], |r| r.get(0))
                .db()?;
            if taken {
                return Err(StoreError::UserExists(name));
            }
            let hash_taken: bool = tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE token_hash = ?1)")
                .db()?
                .query_row(params![token_hash], |r| r.get(0))
                .db()?;
            if hash_taken {
                return Err(StoreError::Backend(
                    "the token hash is already in use".into(),
                ));
            }
            let user = User {
                id: format!("{:016x}", rand::random::<u64>()),
                name,
                created_at_ns: now_ns,
            };
            tx.prepare_cached(
                "INSERT INTO users (id, name, token_hash, created_at_ns) VALUES (?1, ?2, ?3, ?4)",
            )
            .db()?
            .execute(params![user.id, user.name, token_hash, now_ns])
            .db()?;
            let root = super::new_root(now_ns);
            insert_node(tx, &user.id, &root)?;
            Ok(user)
        })
        .await
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached("SELECT id, name, created_at_ns FROM users ORDER BY name")
                .db()?;
            let users = stmt
                .query_map([], user_row)
                .db()?
                .collect::<rusqlite::Result<_>>();
            users.db()
        })
        .await
    }

    async fn remove_user(&self, name: &str) -> StoreResult<()> {
        let name = name.to_string();
        self.write(move |tx| {
            let user = user_by_name(tx, &name)?;
            for sql in [
                "DELETE FROM nodes WHERE user = ?1",
                "DELETE FROM versions WHERE user = ?1",
                "DELETE FROM small_blocks WHERE user = ?1",
                "DELETE FROM devices WHERE user = ?1",
                "DELETE FROM changes WHERE user = ?1",
                "DELETE FROM change_folders WHERE user = ?1",
                "DELETE FROM watches WHERE user = ?1",
                "DELETE FROM users WHERE id = ?1",
            ] {
                tx.prepare_cached(sql)
                    .db()?
                    .execute(params![user.id])
                    .db()?;
            }
            Ok(())
        })
        .await
    }

    async fn set_token(&self, name: &str, token_hash: &str) -> StoreResult<User> {
        let (name, token_hash) = (name.to_string(), token_hash.to_string());
        self.write(move |tx| {
            let user = user_by_name(tx, &name)?;
            let other: Option<String> = tx
                .prepare_cached("SELECT id FROM users WHERE token_hash = ?1")
                .db()?
                .query_row(params![token_hash], |r| r.get(0))
                .optional()
                .db()?;
            if other.is_some_and(|id| id != user.id) {
                return Err(StoreError::Backend(
                    "the token hash is already in use".into(),
                ));
            }
            tx.prepare_cached("UPDATE users SET token_hash = ?2 WHERE id = ?1")
                .db()?
                .execute(params![user.id, token_hash])
                .db()?;
            Ok(user)
        })
        .await
    }

    async fn user_by_token(&self, token_hash: &str) -> StoreResult<Option<User>> {
        let token_hash = token_hash.to_string();
        self.read(move |tx| {
            tx.prepare_cached("SELECT id, name, created_at_ns FROM users WHERE token_hash = ?1")
                .db()?
                .query_row(params![token_hash], user_row)
                .optional()
                .db()
        })
        .await
    }

    async fn user_exists(&self, user: &UserId) -> StoreResult<bool> {
        let user = user.clone();
        self.read(move |tx| {
            tx.prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE id = ?1)")
                .db()?
                .query_row(params![user], |r| r.get(0))
                .db()
        })
        .await
    }

    async fn register_device(
        &self,
        user: &UserId,
        name: &str,
        max: usize,
    ) -> StoreResult<DeviceId> {
        let (user, name) = (user.clone(), name.to_string());
        self.write(move |tx| insert_device(tx, &user, &name, max, None))
            .await
    }

    async fn register_device_keyed(
        &self,
        user: &UserId,
        name: &str,
        max: usize,
        key: &str,
    ) -> StoreResult<(DeviceId, bool)> {
        let (user, name, key) = (user.clone(), name.to_string(), key.to_string());
        self.write(move |tx| {
            let known: Option<i64> = tx
                .prepare_cached("SELECT id FROM devices WHERE user = ?1 AND request_key = ?2")
                .db()?
                .query_row(params![user, key], |r| r.get(0))
                .optional()
                .db()?;
            if let Some(id) = known {
                return Ok((id as DeviceId, false));
            }
            Ok((insert_device(tx, &user, &name, max, Some(&key))?, true))
        })
        .await
    }

    async fn remove_devices(&self, user: &UserId) -> StoreResult<usize> {
        let user = user.clone();
        self.write(move |tx| {
            tx.prepare_cached("DELETE FROM watches WHERE user = ?1")
                .db()?
                .execute(params![user])
                .db()?;
            tx.prepare_cached("DELETE FROM devices WHERE user = ?1")
                .db()?
                .execute(params![user])
                .db()
        })
        .await
    }

    async fn device(&self, user: &UserId, device: DeviceId) -> StoreResult<String> {
        let user = user.clone();
        self.read(move |tx| {
            tx.prepare_cached("SELECT name FROM devices WHERE user = ?1 AND id = ?2")
                .db()?
                .query_row(params![user, sql_id(device)], |r| r.get(0))
                .optional()
                .db()?
                .ok_or(StoreError::UnknownDevice)
        })
        .await
    }

    async fn devices(&self, user: &UserId) -> StoreResult<Vec<DeviceInfo>> {
        let user = user.clone();
        self.read(move |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT id, name, token_hash IS NOT NULL, created_at_ns, last_seen_ns
                     FROM devices WHERE user = ?1 ORDER BY name, id",
                )
                .db()?;
            let rows = stmt
                .query_map(params![user], |r| {
                    Ok(DeviceInfo {
                        id: r.get::<_, i64>(0)? as u64,
                        name: r.get(1)?,
                        linked: r.get(2)?,
                        created_at_ns: r.get(3)?,
                        last_seen_ns: r.get(4)?,
                        this_device: false,
                    })
                })
                .db()?
                .collect::<rusqlite::Result<_>>();
            rows.db()
        })
        .await
    }

    async fn remove_device(&self, user: &UserId, device: DeviceId) -> StoreResult<()> {
        let user = user.clone();
        self.write(move |tx| {
            let gone = tx
                .prepare_cached("DELETE FROM devices WHERE user = ?1 AND id = ?2")
                .db()?
                .execute(params![user, sql_id(device)])
                .db()?;
            if gone == 0 {
                return Err(StoreError::UnknownDevice);
            }
            tx.prepare_cached("DELETE FROM watches WHERE user = ?1 AND device = ?2")
                .db()?
                .execute(params![user, sql_id(device)])
                .db()?;
            Ok(())
        })
        .await
    }

    async fn touch_device(&self, user: &UserId, device: DeviceId, now_ns: i64) -> StoreResult<()> {
        let user = user.clone();
        self.write(move |tx| {
            tx.prepare_cached("UPDATE devices SET last_seen_ns = ?3 WHERE user = ?1 AND id = ?2")
                .db()?
                .execute(params![user, sql_id(device), now_ns])
                .db()?;
            Ok(())
        })
        .await
    }

    async fn token_owner(&self, token_hash: &str) -> StoreResult<Option<TokenOwner>> {
        let token_hash = token_hash.to_string();
        self.read(move |tx| {
            let user = tx
                .prepare_cached("SELECT id, name, created_at_ns FROM users WHERE token_hash = ?1")
                .db()?
                .query_row(params![token_hash], user_row)
                .optional()
                .db()?;
            if let Some(user) = user {
                return Ok(Some(TokenOwner {
                    user,
                    device: None,
                    last_seen_ns: 0,
                }));
            }
            tx.prepare_cached(
                "SELECT u.id, u.name, u.created_at_ns, d.id, d.last_seen_ns
                 FROM devices d JOIN users u ON u.id = d.user WHERE d.token_hash = ?1",
            )
            .db()?
            .query_row(params![token_hash], |r| {
                Ok(TokenOwner {
                    user: user_row(r)?,
                    device: Some(r.get::<_, i64>(3)? as u64),
                    last_seen_ns: r.get(4)?,
                })
            })
            .optional()
            .db()
        })
        .await
    }

    async fn create_link(
        &self,
        link: &PendingLink,
        now_ns: i64,
        max_pending: usize,
    ) -> StoreResult<()> {
        let link = link.clone();
        self.write(move |tx| {
            tx.prepare_cached("DELETE FROM links WHERE expires_at_ns <= ?1")
                .db()?
                .execute(params![now_ns])
                .db()?;
            let waiting: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM links")
                .db()?
                .query_row([], |r| r.get(0))
                .db()?;
            if waiting as usize >= max_pending {
                return Err(StoreError::TooManyLinks(max_pending));
            }
            if token_hash_taken(tx, &link.token_hash)? {
                return Err(StoreError::TokenInUse);
            }
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO links (code, token_hash, name, expires_at_ns)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                )
                .db()?
                .execute(params![
                    link.code,
                    link.token_hash,
                    link.name,
                    link.expires_at_ns
                ])
                .db()?;
            if inserted == 0 {
                return Err(StoreError::LinkCodeTaken);
            }
            Ok(())
        })
        .await
    }

    async fn link(&self, code: &str, now_ns: i64) -> StoreResult<PendingLink> {
        let code = code.to_string();
        self.read(move |tx| live_link(tx, &code, now_ns)).await
    }

    async fn approve_link(
        &self,
        user: &UserId,
        code: &str,
        max_devices: usize,
        now_ns: i64,
    ) -> StoreResult<DeviceId> {
        let (user, code) = (user.clone(), code.to_string());
        self.write(move |tx| {
            let link = live_link(tx, &code, now_ns)?;
            let devices: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM devices WHERE user = ?1")
                .db()?
                .query_row(params![user], |r| r.get(0))
                .db()?;
            if devices as usize >= max_devices {
                return Err(StoreError::TooManyDevices(max_devices));
            }
            tx.prepare_cached("DELETE FROM links WHERE code = ?1")
                .db()?
                .execute(params![code])
                .db()?;
            if token_hash_taken(tx, &link.token_hash)? {
                return Err(StoreError::TokenInUse);
            }
            for _ in 0..16 {
                let id = new_id();
                let inserted = tx
                    .prepare_cached(
                        "INSERT INTO devices (user, id, name, token_hash, created_at_ns, last_seen_ns)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT DO NOTHING",
                    )
                    .db()?
                    .execute(params![user, sql_id(id), link.name, link.token_hash, now_ns])
                    .db()?;
                if inserted == 1 {
                    return Ok(id);
                }
            }
            Err(StoreError::Backend(
                "could not draw a free device id".into(),
            ))
        })
        .await
    }

    async fn get_node(&self, user: &UserId, id: NodeId) -> StoreResult<Node> {
        let user = user.clone();
        self.read(move |tx| live_node(tx, &user, id)).await
    }

    async fn child(&self, user: &UserId, parent: NodeId, name: &str) -> StoreResult<Node> {
        let (user, name) = (user.clone(), name.to_string());
        self.read(move |tx| live_child(tx, &user, parent, &name)?.ok_or(StoreError::NotFound))
            .await
    }

    async fn list_children(
        &self,
        user: &UserId,
        parent: NodeId,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Page<Node>> {
        let (user, after) = (user.clone(), after.map(str::to_string));
        self.read(move |tx| {
            live_dir(tx, &user, parent)?;
            // `after` is "" for the first page: every name is longer than that.
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {NODE_COLS} FROM nodes
                     WHERE user = ?1 AND parent = ?2 AND trashed_at_ns IS NULL AND id != 1
                       AND name > ?4 ORDER BY name LIMIT ?3"
                ))
                .db()?;
            let after = after.unwrap_or_default();
            let rows = stmt
                .query_map(
                    params![user, sql_id(parent), limit.saturating_add(1), after],
                    node_row,
                )
                .db()?
                .map(|row| {
                    let (node, _) = row.db()?;
                    let len = json_len(&node);
                    Ok((node, len))
                });
            fill_page(rows, limit, MAX_PAGE_BYTES)
        })
        .await
    }

    async fn apply_batch(
        &self,
        user: &UserId,
        ops: Vec<BatchOp>,
        origin: Origin,
    ) -> StoreResult<BatchDone> {
        let user = user.clone();
        self.write(move |tx| {
            let mut done = BatchDone::default();
            for op in ops {
                // A savepoint per change: a change that fails leaves nothing behind, and the
                // ones before it are committed with the transaction.
                tx.execute_batch("SAVEPOINT change").db()?;
                match batch_op_tx(tx, &user, op, origin) {
                    Ok(change) => {
                        tx.execute_batch("RELEASE change").db()?;
                        done.applied.push(change);
                    }
                    Err(e) => {
                        tx.execute_batch("ROLLBACK TO change; RELEASE change")
                            .db()?;
                        done.failed = Some(e);
                        break;
                    }
                }
            }
            Ok(done)
        })
        .await
    }

    async fn create(
        &self,
        user: &UserId,
        node: &NewNode,
        origin: Origin,
    ) -> StoreResult<(Node, ChangeEvent)> {
        let (user, new) = (user.clone(), node.clone());
        self.write(move |tx| create_tx(tx, &user, new, origin))
            .await
    }

    async fn commit_content(
        &self,
        user: &UserId,
        id: NodeId,
        base: Version,
        content: &Content,
        mtime_ns: Option<i64>,
        origin: Origin,
    ) -> StoreResult<(Node, ChangeEvent)> {
        let (user, content) = (user.clone(), content.clone());
        self.write(move |tx| commit_tx(tx, &user, id, base, content, mtime_ns, origin))
            .await
    }

    async fn set_attr(
        &self,
        user: &UserId,
        id: NodeId,
        attr: &SetAttr,
        origin: Origin,
    ) -> StoreResult<(Node, ChangeEvent)> {
        let (user, attr) = (user.clone(), attr.clone());
        self.write(move |tx| set_attr_tx(tx, &user, id, &attr, origin))
            .await
    }

    async fn move_node(
        &self,
        user: &UserId,
        id: NodeId,
        base: Version,
        new_parent: NodeId,
        new_name: &str,
        mode: MoveMode,
        origin: Origin,
    ) -> StoreResult<Moved> {
        let (user, new_name) = (user.clone(), new_name.to_string());
        self.write(move |tx| move_tx(tx, &user, id, base, new_parent, new_name, mode, origin))
            .await
    }

    async fn remove(
        &self,
        user: &UserId,
        id: NodeId,
        base: Option<Version>,
        recursive: bool,
        origin: Origin,
    ) -> StoreResult<(Node, ChangeEvent)> {
        let user = user.clone();
        self.write(move |tx| remove_tx(tx, &user, id, base, recursive, origin))
            .await
    }

    async fn list_trash(
        &self,
        user: &UserId,
        after: Option<TrashCursor>,
        limit: u32,
    ) -> StoreResult<Page<TrashEntry>> {
        let user = user.clone();
        // The first page starts after a cursor that precedes every entry.
        let after = after.unwrap_or(TrashCursor {
            deleted_at_ns: i64::MAX,
            id: 0,
        });
        self.read(move |tx| {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {NODE_COLS} FROM nodes
                     WHERE user = ?1 AND trashed_by IS NOT NULL AND trashed_by = id
                       AND (trashed_at_ns < ?2 OR (trashed_at_ns = ?2 AND id > ?3))
                     ORDER BY trashed_at_ns DESC, id LIMIT ?4"
                ))
                .db()?;
            let rows = stmt
                .query_map(
                    params![
                        user,
                        after.deleted_at_ns,
                        sql_id(after.id),
                        limit.saturating_add(1)
                    ],
                    node_row,
                )
                .db()?
                .map(|row| {
                    let (node, at) = row.db()?;
                    let entry = TrashEntry {
                        node,
                        deleted_at_ns: at.unwrap_or(0),
                    };
                    let len = json_len(&entry);
                    Ok((entry, len))
                });
            fill_page(rows, limit, MAX_PAGE_BYTES)
        })
        .await
    }

    async fn restore(
        &self,
        user: &UserId,
        id: NodeId,
        origin: Origin,
    ) -> StoreResult<(Node, ChangeEvent)> {
        let user = user.clone();
        self.write(move |tx| {
            let top: Option<NodeId> = tx
                .prepare_cached("SELECT trashed_by FROM nodes WHERE user = ?1 AND id = ?2")
                .db()?
                .query_row(params![user, sql_id(id)], |r| r.get::<_, Option<i64>>(0))
                .optional()
                .db()?
                .flatten()
                .map(|t| t as u64);
            if top != Some(id) {
                return Err(StoreError::NotFound);
            }
            let Some((mut node, _)) = any_node(tx, &user, id)? else {
                return Err(StoreError::NotFound);
            };
            match live_dir(tx, &user, node.parent) {
                Ok(_) => {}
                Err(StoreError::NotFound | StoreError::NotADirectory) => node.parent = ROOT_ID,
                Err(e) => return Err(e),
            }
            if live_child(tx, &user, node.parent, &node.name)?.is_some() {
                node.name = restored_name(tx, &user, node.parent, &node.name)?;
            }
            node.version += 1;
            update_node(tx, &user, &node)?;
            tx.prepare_cached(
                "UPDATE nodes SET trashed_at_ns = NULL, trashed_by = NULL
                 WHERE user = ?1 AND trashed_by = ?2",
            )
            .db()?
            .execute(params![user, sql_id(id)])
            .db()?;
            let event = append_event(tx, &user, ChangeOp::Upsert, &node, None, origin)?;
            Ok((node, event))
        })
        .await
    }

    async fn changes_since(
        &self,
        user: &UserId,
        since: Seq,
        limit: u32,
    ) -> StoreResult<ChangePage> {
        let user = user.clone();
        self.read(move |tx| {
            let latest = log_head(tx, &user, since)?;
            let mut stmt = tx
                .prepare_cached(
                    "SELECT event FROM changes WHERE user = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )
                .db()?;
            let rows = stmt
                .query_map(params![user, sql_id(since), limit], |r| {
                    r.get::<_, String>(0)
                })
                .db()?;
            let (events, _) = event_page(rows, limit)?;
            Ok(ChangePage {
                events,
                latest_seq: latest,
                through: None,
            })
        })
        .await
    }

    async fn changes_for_device(
        &self,
        user: &UserId,
        device: DeviceId,
        since: Seq,
        limit: u32,
    ) -> StoreResult<ChangePage> {
        let user = user.clone();
        self.read(move |tx| {
            let latest = log_head(tx, &user, since)?;
            let everything = tx
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM watches
                     WHERE user = ?1 AND device = ?2 AND folder = ?3)",
                )
                .db()?
                .query_row(params![user, sql_id(device), EVERY_FOLDER], |r| {
                    r.get::<_, bool>(0)
                })
                .db()?;
            if !everything && watches_many(tx, &user, device)? {
                let (events, through) =
                    scanned_device_page(tx, &user, device, since, limit, latest)?;
                return Ok(ChangePage {
                    events,
                    latest_seq: latest,
                    through: Some(through),
                });
            }
            let sql = if everything {
                "SELECT event FROM changes WHERE user = ?1 AND seq > ?3 ORDER BY seq LIMIT ?4"
            } else {
                DEVICE_PAGE
            };
            let mut stmt = tx.prepare_cached(sql).db()?;
            // One row more than the page holds tells whether the page was cut.
            let rows = stmt
                .query_map(
                    params![user, sql_id(device), sql_id(since), limit + 1],
                    |r| r.get::<_, String>(0),
                )
                .db()?;
            let (events, cut) = event_page(rows, limit)?;
            let through = match (cut, events.last()) {
                (true, Some(last)) => last.seq,
                _ => latest,
            };
            Ok(ChangePage {
                events,
                latest_seq: latest,
                through: Some(through),
            })
        })
        .await
    }

    async fn watch_folder(
        &self,
        user: &UserId,
        device: DeviceId,
        folder: NodeId,
    ) -> StoreResult<bool> {
        let user = user.clone();
        let watched = {
            let user = user.clone();
            self.read(move |tx| {
                tx.prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM watches
                     WHERE user = ?1 AND device = ?2 AND folder IN (?3, ?4))",
                )
                .db()?
                .query_row(
                    params![user, sql_id(device), sql_id(folder), EVERY_FOLDER],
                    |r| r.get::<_, bool>(0),
                )
                .db()
            })
            .await?
        };
        if watched {
            return Ok(false); // the common case: a read, no write
        }
        self.write(move |tx| {
            let count: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM watches WHERE user = ?1 AND device = ?2")
                .db()?
                .query_row(params![user, sql_id(device)], |r| r.get(0))
                .db()?;
            let folder = if count as u64 >= MAX_WATCHED_FOLDERS {
                EVERY_FOLDER
            } else {
                sql_id(folder)
            };
            let added = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO watches (user, device, folder, since)
                     SELECT ?1, ?2, ?3, latest_seq FROM users WHERE id = ?1",
                )
                .db()?
                .execute(params![user, sql_id(device), folder])
                .db()?;
            Ok(added > 0)
        })
        .await
    }

    async fn watched_folders(
        &self,
        user: &UserId,
        device: DeviceId,
    ) -> StoreResult<Option<Vec<NodeId>>> {
        let user = user.clone();
        self.read(move |tx| {
            let mut stmt = tx
                .prepare_cached("SELECT folder FROM watches WHERE user = ?1 AND device = ?2")
                .db()?;
            let folders = stmt
                .query_map(params![user, sql_id(device)], |r| r.get::<_, i64>(0))
                .db()?
                .collect::<rusqlite::Result<Vec<i64>>>()
                .db()?;
            if folders.contains(&EVERY_FOLDER) {
                return Ok(None);
            }
            Ok(Some(folders.into_iter().map(|f| f as NodeId).collect()))
        })
        .await
    }

    async fn latest_seq(&self, user: &UserId) -> StoreResult<Seq> {
        let user = user.clone();
        self.read(move |tx| {
            let latest: Option<i64> = tx
                .prepare_cached("SELECT latest_seq FROM users WHERE id = ?1")
                .db()?
                .query_row(params![user], |r| r.get(0))
                .optional()
                .db()?;
            Ok(latest.unwrap_or(0) as u64)
        })
        .await
    }

    async fn trim_log(&self, user: &UserId, before_ns: i64) -> StoreResult<()> {
        let user = user.clone();
        self.write(move |tx| {
            // The newest event older than the cut, never the newest event of all.
            let cut: Option<i64> = tx
                .prepare_cached(
                    "SELECT MAX(c.seq) FROM changes c JOIN users u ON u.id = c.user
                     WHERE c.user = ?1 AND c.at_ns < ?2 AND c.seq < u.latest_seq",
                )
                .db()?
                .query_row(params![user, before_ns], |r| r.get(0))
                .db()?;
            let Some(cut) = cut else { return Ok(()) };
            tx.prepare_cached("DELETE FROM changes WHERE user = ?1 AND seq <= ?2")
                .db()?
                .execute(params![user, cut])
                .db()?;
            tx.prepare_cached("DELETE FROM change_folders WHERE user = ?1 AND seq <= ?2")
                .db()?
                .execute(params![user, cut])
                .db()?;
            tx.prepare_cached(
                "UPDATE users SET trimmed_through = MAX(trimmed_through, ?2) WHERE id = ?1",
            )
            .db()?
            .execute(params![user, cut])
            .db()?;
            Ok(())
        })
        .await
    }

    async fn referenced_blocks(&self, user: &UserId) -> StoreResult<Vec<String>> {
        let user = user.clone();
        self.read(move |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT b.value FROM nodes n, json_each(n.blocks) b
                     WHERE n.user = ?1 AND n.kind = 'file'
                     UNION
                     SELECT b.value FROM versions v, json_each(v.blocks) b
                     WHERE v.user = ?1
                     ORDER BY 1",
                )
                .db()?;
            let rows = stmt
                .query_map(params![user], |r| r.get(0))
                .db()?
                .collect::<rusqlite::Result<Vec<String>>>();
            rows.db()
        })
        .await
    }

    fn keeps_small_blocks(&self) -> bool {
        true
    }

    async fn small_block(&self, user: &UserId, hash: &str) -> StoreResult<Option<Vec<u8>>> {
        let (user, hash) = (user.clone(), hash.to_string());
        self.read(move |tx| {
            tx.prepare_cached("SELECT bytes FROM small_blocks WHERE user = ?1 AND hash = ?2")
                .db()?
                .query_row(params![user, hash], |r| r.get(0))
                .optional()
                .db()
        })
        .await
    }

    async fn small_blocks_held(
        &self,
        user: &UserId,
        hashes: &[String],
    ) -> StoreResult<Vec<String>> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let (user, hashes) = (user.clone(), hashes.to_vec());
        self.read(move |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM small_blocks WHERE user = ?1 AND hash = ?2)",
                )
                .db()?;
            let mut held = Vec::new();
            for hash in hashes {
                if stmt.query_row(params![user, hash], |r| r.get(0)).db()? {
                    held.push(hash);
                }
            }
            Ok(held)
        })
        .await
    }

    async fn collect_small_blocks(&self, user: &UserId) -> StoreResult<usize> {
        let user = user.clone();
        self.write(move |tx| {
            tx.prepare_cached(
                "DELETE FROM small_blocks WHERE user = ?1 AND hash NOT IN (
                     SELECT b.value FROM nodes n, json_each(n.blocks) b
                     WHERE n.user = ?1 AND n.kind = 'file'
                     UNION
                     SELECT b.value FROM versions v, json_each(v.blocks) b
                     WHERE v.user = ?1
                 )",
            )
            .db()?
            .execute(params![user])
            .db()
        })
        .await
    }

    async fn purge_trash(&self, user: &UserId, before_ns: i64) -> StoreResult<usize> {
        let user = user.clone();
        self.write(move |tx| {
            // Every node of one deletion shares its time, so a deletion goes whole.
            let tops = tx
                .prepare_cached(
                    "SELECT COUNT(*) FROM nodes
                     WHERE user = ?1 AND trashed_by = id AND trashed_at_ns < ?2",
                )
                .db()?
                .query_row(params![user, before_ns], |r| r.get::<_, i64>(0))
                .db()?;
            tx.prepare_cached(
                "DELETE FROM nodes
                 WHERE user = ?1 AND trashed_at_ns IS NOT NULL AND trashed_at_ns < ?2",
            )
            .db()?
            .execute(params![user, before_ns])
            .db()?;
            tx.prepare_cached(
                "DELETE FROM versions WHERE user = ?1
                 AND id NOT IN (SELECT id FROM nodes WHERE user = ?1)",
            )
            .db()?
            .execute(params![user])
            .db()?;
            Ok(tops as usize)
        })
        .await
    }

    async fn list_versions(
        &self,
        user: &UserId,
        id: NodeId,
        before: Option<Version>,
        limit: u32,
    ) -> StoreResult<Page<FileVersion>> {
        let user = user.clone();
        let before = before.map_or(i64::MAX, sql_id);
        self.read(move |tx| {
            if live_node(tx, &user, id)?.kind != NodeKind::File {
                return Err(StoreError::NotFound);
            }
            let mut stmt = tx
                .prepare_cached(
                    "SELECT version, size, blocks, mtime_ns, replaced_at_ns FROM versions
                     WHERE user = ?1 AND id = ?2 AND version < ?3 ORDER BY version DESC
                     LIMIT ?4",
                )
                .db()?;
            let rows = stmt
                .query_map(
                    params![user, sql_id(id), before, limit.saturating_add(1)],
                    |r| {
                        let blocks: String = r.get(2)?;
                        Ok((
                            r.get::<_, i64>(0)? as u64,
                            r.get::<_, i64>(1)? as u64,
                            blocks,
                            r.get::<_, i64>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    },
                )
                .db()?
                .map(|row| {
                    let (version, size, blocks, mtime_ns, replaced_at_ns) = row.db()?;
                    let entry = FileVersion {
                        version,
                        content: Content {
                            inline: None,
                            size,
                            blocks: serde_json::from_str(&blocks).map_err(json_err)?,
                        },
                        mtime_ns,
                        replaced_at_ns,
                    };
                    let len = json_len(&entry);
                    Ok((entry, len))
                });
            fill_page(rows, limit, MAX_PAGE_BYTES)
        })
        .await
    }

    async fn purge_versions(&self, user: &UserId, before_ns: i64) -> StoreResult<usize> {
        let user = user.clone();
        self.write(move |tx| {
            let old = tx
                .prepare_cached("DELETE FROM versions WHERE user = ?1 AND replaced_at_ns < ?2")
                .db()?
                .execute(params![user, before_ns])
                .db()?;
            let beyond = tx
                .prepare_cached(
                    "DELETE FROM versions WHERE user = ?1 AND (id, version) IN (
                       SELECT id, version FROM (
                         SELECT id, version, ROW_NUMBER() OVER
                           (PARTITION BY id ORDER BY version DESC) AS k
                         FROM versions WHERE user = ?1)
                       WHERE k > ?2)",
                )
                .db()?
                .execute(params![user, MAX_VERSIONS as i64])
                .db()?;
            Ok(old + beyond)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trashing a file reads its subtree through the parent index and updates each node by
    /// its key: no step walks the user's nodes.
    #[test]
    fn trashing_a_node_touches_only_its_subtree() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        migrate(&conn).unwrap();
        let plan = |sql: &str, n: usize| -> Vec<String> {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let args: Vec<i64> = (1..=n as i64).collect();
            stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
                .unwrap()
                .map(|r| r.unwrap())
                .collect()
        };
        let subtree = plan(TRASH_SUBTREE_IDS, 2);
        assert!(
            subtree
                .iter()
                .any(|s| s.contains("SEARCH n USING INDEX nodes_live_entry (user=? AND parent=?)")),
            "{subtree:?}"
        );
        let one = plan(TRASH_ONE, 4);
        assert!(
            one.iter().any(|s| s.contains("(user=? AND id=?)")),
            "{one:?}"
        );
        for step in subtree.iter().chain(&one) {
            assert!(
                !step.ends_with("(user=?)"),
                "a walk of the user's nodes: {step}"
            );
        }
    }

    /// The plan of a device's page searches its watches, then each watched folder's range
    /// of the index, then each event by its key: no step scans a user's whole log.
    #[test]
    fn a_device_page_reads_only_its_folders() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {DEVICE_PAGE}"))
            .unwrap();
        let steps: Vec<String> = stmt
            .query_map(params!["u", 1, 0, 10], |r| r.get::<_, String>(3))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let searches = |table: &str, index: &str, key: &str| {
            steps
                .iter()
                .any(|s| s.starts_with(&format!("SEARCH {table} USING {index} ({key}")))
        };
        assert!(
            searches("w", "PRIMARY KEY", "user=? AND device=?"),
            "{steps:?}"
        );
        assert!(
            searches("f", "PRIMARY KEY", "user=? AND folder=? AND seq>?"),
            "{steps:?}"
        );
        assert!(
            searches("c", "INDEX sqlite_autoindex_changes_1", "user=? AND seq=?"),
            "{steps:?}"
        );
        assert!(
            !steps.iter().any(|s| s.ends_with("(user=?)")),
            "a scan of the user's rows: {steps:?}"
        );
    }

    /// A device past [`SCAN_LOG_PAST_WATCHES`] folders gets its pages read from the log.
    /// Walked page by page with `through`, from several cursors and at several page sizes,
    /// they hold exactly the events the union of its folders' ranges holds, in order: those
    /// after each folder's watch began, moves in and out included.
    #[tokio::test]
    async fn a_page_read_from_the_log_holds_what_its_folders_hold() {
        use crate::store::conformance::{at, dir, file};
        let store = SqliteStore::open_in_memory().unwrap();
        let s: &dyn MetaStore = &store;
        let u = s.create_user("ann", "h", 1).await.unwrap().id;
        let dev = s.register_device(&u, "pc", 10).await.unwrap();
        let mut folders = Vec::new();
        for k in 0..100 {
            folders.push(dir(s, &u, ROOT_ID, &format!("d{k}")).await.id);
        }
        // Three in four folders watched: half from the start, half after 100 changes.
        let watched: Vec<NodeId> = (0..100)
            .filter(|k| k % 4 != 0)
            .map(|k| folders[k])
            .collect();
        for f in watched.iter().step_by(2) {
            s.watch_folder(&u, dev, *f).await.unwrap();
        }
        let mut files = Vec::new();
        for i in 0..300usize {
            if i == 100 {
                for f in watched.iter().skip(1).step_by(2) {
                    s.watch_folder(&u, dev, *f).await.unwrap();
                }
            }
            if i % 50 == 25 {
                // A watched folder renamed: the folder itself is heard.
                s.move_node(
                    &u,
                    watched[i / 50],
                    1,
                    ROOT_ID,
                    &format!("r{i}"),
                    MoveMode::NoReplace,
                    at(8),
                )
                .await
                .unwrap();
            }
            if i % 3 == 2 {
                let (id, version): (NodeId, u64) = files[i / 3];
                let to = folders[(i * 13) % 100];
                s.move_node(
                    &u,
                    id,
                    version,
                    to,
                    &format!("m{i}"),
                    MoveMode::NoReplace,
                    at(9),
                )
                .await
                .unwrap();
            } else {
                let node = file(s, &u, folders[(i * 7) % 100], &format!("f{i}")).await;
                files.push((node.id, node.version));
            }
        }
        let user = u.clone();
        assert!(
            store
                .read(move |tx| watches_many(tx, &user, dev))
                .await
                .unwrap(),
            "the device watches enough folders for its pages to come from the log"
        );
        let latest = s.latest_seq(&u).await.unwrap();
        for since in [0, 50, 150, latest - 5] {
            let (user, sql) = (u.clone(), DEVICE_PAGE);
            let union: Vec<Seq> = store
                .read(move |tx| {
                    let mut stmt = tx.prepare(sql).db()?;
                    let rows = stmt
                        .query_map(params![user, sql_id(dev), sql_id(since), 100_000], |r| {
                            r.get::<_, String>(0)
                        })
                        .db()?;
                    let mut seqs = Vec::new();
                    for row in rows {
                        let event: ChangeEvent = serde_json::from_str(&row.db()?).unwrap();
                        seqs.push(event.seq);
                    }
                    Ok(seqs)
                })
                .await
                .unwrap();
            assert!(!union.is_empty());
            for limit in [1, 2, 7, 1000] {
                let (mut cursor, mut walked) = (since, Vec::new());
                while cursor < latest {
                    let page = s.changes_for_device(&u, dev, cursor, limit).await.unwrap();
                    assert!(page.events.len() <= limit as usize);
                    walked.extend(page.events.iter().map(|e| e.seq));
                    let through = page
                        .through
                        .expect("a device's page says how far it covers");
                    assert!(through > cursor, "a page moves the cursor");
                    cursor = through;
                }
                assert_eq!(walked, union, "from {since}, pages of {limit}");
            }
        }
    }

    mod in_memory {
        crate::meta_store_conformance!(async {
            crate::store::sqlite::SqliteStore::open_in_memory().expect("in-memory store")
        });
    }

    mod on_disk {
        // A temp file with WAL and the reader pool: the configuration the server runs.
        crate::meta_store_conformance!(guarded async {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("meta.db"))
                .expect("store on disk");
            (store, dir)
        });
    }

    /// A database whose change log and small blocks were kept without rowids opens with both
    /// rebuilt as rowid tables, every event and block still there and still found by key.
    #[tokio::test]
    async fn a_log_without_rowids_is_rebuilt_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let user = {
            let store = SqliteStore::open(&path).unwrap();
            store.create_user("ann", "h", 1).await.unwrap()
        };
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "DROP TABLE changes; DROP TABLE small_blocks;
                 CREATE TABLE changes (user TEXT NOT NULL, seq INTEGER NOT NULL,
                     event TEXT NOT NULL, at_ns INTEGER NOT NULL,
                     PRIMARY KEY (user, seq)) WITHOUT ROWID;
                 CREATE TABLE small_blocks (user TEXT NOT NULL, hash TEXT NOT NULL,
                     bytes BLOB NOT NULL, PRIMARY KEY (user, hash)) WITHOUT ROWID;",
            )
            .unwrap();
            c.execute(
                "INSERT INTO small_blocks (user, hash, bytes) VALUES (?1, 'h1', x'6869')",
                params![user.id],
            )
            .unwrap();
            c.execute(
                "INSERT INTO changes (user, seq, event, at_ns) VALUES (?1, 1, '{}', 7)",
                params![user.id],
            )
            .unwrap();
        }
        for _ in 0..2 {
            // Opening twice: the second open finds nothing to rebuild.
            let store = SqliteStore::open(&path).unwrap();
            assert_eq!(
                store.small_block(&user.id, "h1").await.unwrap(),
                Some(b"hi".to_vec())
            );
            drop(store);
            let c = Connection::open(&path).unwrap();
            for table in ["changes", "small_blocks"] {
                let sql: String = c
                    .query_row(
                        "SELECT sql FROM sqlite_master WHERE name = ?1",
                        [table],
                        |r| r.get(0),
                    )
                    .unwrap();
                assert!(!sql.contains("WITHOUT ROWID"), "{sql}");
            }
            let event: (String, i64) = c
                .query_row(
                    "SELECT event, at_ns FROM changes WHERE user = ?1 AND seq = 1",
                    params![user.id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert_eq!(event, ("{}".to_string(), 7));
        }
    }

    /// A database of the version before device tokens (and registration keys) opens, keeps its
    /// devices, links, and registers with keys.
    #[tokio::test]
    async fn a_database_from_before_device_tokens_is_brought_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let user = {
            let store = SqliteStore::open(&path).unwrap();
            store.create_user("ann", "h", 1).await.unwrap()
        };
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "DROP INDEX devices_token; DROP TABLE devices; DROP TABLE links;
                 CREATE TABLE devices (user TEXT NOT NULL, id INTEGER NOT NULL,
                     name TEXT NOT NULL, PRIMARY KEY (user, id)) WITHOUT ROWID;",
            )
            .unwrap();
            c.execute(
                "INSERT INTO devices (user, id, name) VALUES (?1, 5000, 'old-pc')",
                params![user.id],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let listed = store.devices(&user.id).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].id, listed[0].linked), (5000, false));
        let link = PendingLink {
            code: "AAAA-BBBB".into(),
            token_hash: "t".into(),
            name: "new-pc".into(),
            expires_at_ns: i64::MAX,
        };
        store.create_link(&link, 1, 10).await.unwrap();
        let dev = store
            .approve_link(&user.id, "AAAA-BBBB", 10, 2)
            .await
            .unwrap();
        assert_eq!(
            store.token_owner("t").await.unwrap().unwrap().device,
            Some(dev)
        );
        // The registration keys came later too.
        let (keyed, created) = store
            .register_device_keyed(&user.id, "laptop", 10, "0123456789abcdef")
            .await
            .unwrap();
        assert!(created);
        assert_eq!(
            store
                .register_device_keyed(&user.id, "laptop", 10, "0123456789abcdef")
                .await
                .unwrap(),
            (keyed, false)
        );
    }

    #[tokio::test]
    async fn file_store_uses_wal_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let user = {
            let store = SqliteStore::open(&path).unwrap();
            let user = store.create_user("ann", "h1", 1).await.unwrap();
            let new = NewNode {
                parent: ROOT_ID,
                name: "kept".into(),
                kind: NewKind::Dir,
                mode: 0o755,
                mtime_ns: 2,
            };
            store
                .create(
                    &user.id,
                    &new,
                    Origin {
                        device: None,
                        now_ns: 2,
                    },
                )
                .await
                .unwrap();
            let mode: String = lock(&store.inner.writer)
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode.to_lowercase(), "wal");
            assert!(
                dir.path().join("meta.db-wal").exists(),
                "WAL file is in use"
            );
            user
        };
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.user_by_token("h1").await.unwrap().unwrap(), user);
        let kept = store.child(&user.id, ROOT_ID, "kept").await.unwrap();
        assert_eq!(kept.kind, NodeKind::Dir);
        assert_eq!(store.latest_seq(&user.id).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn out_of_range_ids_are_not_found() {
        let store = SqliteStore::open_in_memory().unwrap();
        let user = store.create_user("ann", "h1", 1).await.unwrap();
        assert!(matches!(
            store.get_node(&user.id, u64::MAX).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.changes_since(&user.id, u64::MAX, 10).await,
            Err(StoreError::CursorTooOld)
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_openers_of_one_file_share_it() {
        // The server and an admin command (`jewel-server user token NAME`) at the same time.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let server = SqliteStore::open(&path).unwrap();
        let admin = SqliteStore::open(&path).unwrap();
        let user = admin.create_user("ann", "old", 1).await.unwrap();
        assert_eq!(
            server.user_by_token("old").await.unwrap(),
            Some(user.clone())
        );
        let writes = (0..20).map(|i| {
            let store = if i % 2 == 0 {
                server.clone()
            } else {
                admin.clone()
            };
            let uid = user.id.clone();
            async move {
                let new = NewNode {
                    parent: ROOT_ID,
                    name: format!("n{i}"),
                    kind: NewKind::Dir,
                    mode: 0o755,
                    mtime_ns: 1,
                };
                store
                    .create(
                        &uid,
                        &new,
                        Origin {
                            device: None,
                            now_ns: i,
                        },
                    )
                    .await
            }
        });
        for w in futures::future::join_all(writes).await {
            w.expect("every write lands despite the other opener");
        }
        admin.set_token("ann", "new").await.unwrap();
        assert_eq!(server.user_by_token("old").await.unwrap(), None);
        assert_eq!(server.latest_seq(&user.id).await.unwrap(), 20);
        let listed = server
            .list_children(&user.id, ROOT_ID, None, 100)
            .await
            .unwrap()
            .entries;
        assert_eq!(listed.len(), 20);
    }
}
