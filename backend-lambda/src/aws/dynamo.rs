//! `MetaStore` on DynamoDB: one table, the single-table design of DESIGN.md.
//!
//! | item | PK | SK | attributes |
//! |---|---|---|---|
//! | user | `USERS` | `<name>` | `uid`, `token`, `created` |
//! | token | `T#<token hash>` | `T` | `uid`, `name`, `created` |
//! | user meta | `U#<uid>` | `META` | `seq` (the per-user sequence counter), `name` |
//! | device | `U#<uid>` | `DEV#<id>` | `name`, `id`; device tokens and links: `dynamo_devices.rs` |
//! | device queue | `U#<uid>` | `Q#<id>` | `url`, `arn`, `renewed` (written by the SQS bus, see `device_queues.rs`) |
//! | pointer | `U#<uid>` | `N#<id>` | the whole node; `trash_at` on the top of a deleted subtree, `in_trash` (the top's id) below it |
//! | entry | `U#<uid>#D#<parent>` | `<name>` | the whole node (so one query lists a directory with its attributes) |
//! | trash | `U#<uid>#TRASH` | `N#<id>` | the node as deleted, `at` |
//! | version | `U#<uid>` | `V#<id>#<version, 20 digits>` | an earlier content (the node as it was), `at` (replaced), `ttl` |
//! | event | `U#<uid>#LOG` | `<seq, 20 digits>` | `ev` (the JSON event), `at`, `ttl` |
//! | pending mark | `U#<uid>#MARK` | `N#<dir>` | `top`: the children of `dir` still to be (un)marked for the deleted or restored folder `top` (see `marks.rs`) |
//! | condemned block | `U#<uid>#GC` | `<hash>` | `state`, `at` or `claimed`: block garbage collection (see `condemned.rs`, `../block_gc.rs`) |
//! | small block | `U#<uid>#SB` | `<hash>` | `b` (bytes), `w`: a small file's block, kept with the change that names it (see `small_blocks.rs`) |
//! | block URL key | `CONFIG` | `URL_KEY` | `key`: the secret signing the block URLs the service itself serves (see `url_key.rs`) |
//!
//! The pointer is the node's authority (its `ver` is what a base version is checked against);
//! the entry is a copy kept in the same transaction, so listing is one query. All pointers of a
//! user share one partition, which makes `referenced_blocks` one paginated query.
//!
//! **Every mutation is read, check, write-with-guards.** It reads what it depends on
//! (strongly consistent), decides in Rust exactly as the SQLite engine does, and commits one
//! `TransactWriteItems` whose conditions guard everything it read: the node's version, the
//! target name's occupant, the parent still being live, and the user's sequence counter
//! (`seq = :read`). The counter guard serialises a user's writes, so sequence numbers are
//! dense and appear in commit order — a client that has seen `n` has seen everything before
//! `n`. When a guard fails the transaction is cancelled and the whole operation runs again on
//! fresh reads, which then report the real outcome (`Conflict`, `Exists`, …) or succeed.
//! Within one process a per-user lock queues a user's writes first (a cancelled transaction
//! still costs its write units); each transaction carries a client request token, so the
//! SDK's retry after a lost answer is the success it was, not a failed guard.
//!
//! Subtle cases:
//! - Deleting a directory keeps its subtree attached. Nodes below it are marked `in_trash`
//!   after the transaction (batch writes, outside it: a subtree may exceed the 100-item
//!   limit), and unmarked on restore; the transaction writes the work down first, so a
//!   marking cut short resumes with the user's next writes (`marks.rs`). `list_children` and `child` check the parent's own
//!   pointer, so the deleted directory's direct children vanish with the transaction; deeper
//!   nodes vanish from `get_node` a moment later, when the marking is done.
//! - A file has at most [`MAX_BLOCKS`] blocks (~19.5 GiB): the node, with its block list, is
//!   an item of at most 400 KB. A larger commit is refused with a message saying so.
//! - The change log is trimmed by TTL (`ttl`, epoch seconds) and by `trim_log`. Since sequence
//!   numbers are dense, a cursor is too old exactly when the event `cursor + 1` is gone; items
//!   whose TTL passed but that DynamoDB has not yet deleted are treated as gone. A `Query` is
//!   read-committed (a `GetItem` is serializable), so it may miss a just-committed log item:
//!   `changes_since` reads `cursor + 1` by its key when the query does not start with it, and
//!   answers only the contiguous prefix it sees (the device reads on to `latest_seq`).
//! - Emptiness of a directory (for a non-recursive remove or a replacing rename) is read, not
//!   guarded: a child created in the same instant can end up in the trash with its parent,
//!   where it is still restorable.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, DeleteRequest,
    KeySchemaElement, KeyType, Put, ScalarAttributeType, TimeToLiveSpecification,
    TransactWriteItem, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use jewel_wire::{
    ChangeEvent, ChangeOp, ChangePage, Content, DeviceId, DeviceInfo, FileVersion, MoveMode,
    NewKind, Node, NodeId, NodeKind, Place, Seq, SetAttr, TrashEntry, Version, ROOT_ID,
};

use super::{count, count_n, sdk_err, AwsSettings, PK, SK, TTL_ATTR};

mod condemned;
mod marks;
mod small_blocks;
mod url_key;
use crate::store::{
    fill_page, json_len, new_id, MetaStore, Moved, NewNode, Origin, Page, PendingLink, StoreError,
    StoreResult, TokenOwner, TrashCursor, User, UserId, MAX_PAGE_BYTES, MAX_VERSIONS,
};
pub use condemned::Condemnation;
pub use marks::CHILDREN_PAGE;

type Item = HashMap<String, AttributeValue>;

#[path = "dynamo_devices.rs"]
mod devices;

/// Most blocks one file may have here (~19.5 GiB): a node (with its block list) lives in
/// DynamoDB items of at most 400 KB, and each hash takes ~67 bytes.
pub const MAX_BLOCKS: usize = 5000;

fn check_blocks(n: usize) -> StoreResult<()> {
    if n > MAX_BLOCKS {
        return Err(StoreError::TooLarge(format!(
            "a file of {n} blocks is larger than AWS mode stores (at most {MAX_BLOCKS} blocks, {} GiB)",
            (MAX_BLOCKS as u64 * jewel_wire::BLOCK_SIZE) >> 30
        )));
    }
    Ok(())
}

/// How often an operation re-runs after a guard failed before giving up.
const MAX_ATTEMPTS: usize = 20;

pub struct DynamoStore {
    client: Client,
    table: String,
    log_retention: Duration,
    /// One lock per user serialises this process's writes of one user: the sequence guard
    /// would serialise them anyway, and a cancelled transaction still costs its write units.
    /// Other processes (other Lambda instances) are kept in order by the guards alone.
    writers: std::sync::Mutex<HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>,
    /// Tests only: write each transaction item as its own request (for servers without
    /// transactions, such as dynalite, which checks every expression strictly).
    one_by_one: bool,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}
fn be<E: std::error::Error + 'static>(e: E) -> StoreError {
    StoreError::Backend(sdk_err(&e))
}

fn users_pk() -> String {
    "USERS".into()
}
fn token_pk(hash: &str) -> String {
    format!("T#{hash}")
}
fn user_pk(uid: &str) -> String {
    format!("U#{uid}")
}
fn dir_pk(uid: &str, parent: NodeId) -> String {
    format!("U#{uid}#D#{parent}")
}
fn log_pk(uid: &str) -> String {
    format!("U#{uid}#LOG")
}
fn trash_pk(uid: &str) -> String {
    format!("U#{uid}#TRASH")
}
fn node_sk(id: NodeId) -> String {
    format!("N#{id}")
}
/// Sort-key prefix of every kept version of one file.
fn versions_prefix(id: NodeId) -> String {
    format!("V#{id}#")
}
fn version_sk(id: NodeId, version: Version) -> String {
    format!("V#{id}#{version:020}")
}
fn dev_sk(id: DeviceId) -> String {
    format!("DEV#{id}")
}
fn seq_sk(seq: Seq) -> String {
    format!("{seq:020}")
}
const META: &str = "META";

fn key(pk: String, sk: String) -> Item {
    HashMap::from([(PK.to_string(), s(pk)), (SK.to_string(), s(sk))])
}

fn get_s(item: &Item, name: &str) -> StoreResult<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        _ => Err(StoreError::Backend(format!(
            "item lacks string attribute {name}"
        ))),
    }
}
fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> StoreResult<T> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map_err(|_| StoreError::Backend(format!("bad number in {name}: {v}"))),
        _ => Err(StoreError::Backend(format!(
            "item lacks number attribute {name}"
        ))),
    }
}
fn opt_n<T: std::str::FromStr>(item: &Item, name: &str) -> StoreResult<Option<T>> {
    if item.contains_key(name) {
        get_n(item, name).map(Some)
    } else {
        Ok(None)
    }
}

fn kind_str(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::File => "file",
        NodeKind::Dir => "dir",
        NodeKind::Symlink => "symlink",
    }
}

/// The node's attributes, added to `item`.
fn put_node(item: &mut Item, node: &Node) {
    item.insert("id".into(), n(node.id));
    item.insert("parent".into(), n(node.parent));
    item.insert("name".into(), s(&node.name));
    item.insert("kind".into(), s(kind_str(node.kind)));
    item.insert("size".into(), n(node.size));
    item.insert("mode".into(), n(node.mode));
    item.insert("mtime".into(), n(node.mtime_ns));
    item.insert("ver".into(), n(node.version));
    if !node.blocks.is_empty() {
        item.insert(
            "blocks".into(),
            AttributeValue::L(node.blocks.iter().map(s).collect()),
        );
    }
    if let Some(t) = &node.target {
        item.insert("target".into(), s(t));
    }
}

fn read_node(item: &Item) -> StoreResult<Node> {
    let kind = match get_s(item, "kind")?.as_str() {
        "file" => NodeKind::File,
        "dir" => NodeKind::Dir,
        "symlink" => NodeKind::Symlink,
        other => return Err(StoreError::Backend(format!("unknown node kind {other}"))),
    };
    let blocks = match item.get("blocks") {
        Some(AttributeValue::L(list)) => list
            .iter()
            .map(|v| match v {
                AttributeValue::S(h) => Ok(h.clone()),
                _ => Err(StoreError::Backend("bad block list".into())),
            })
            .collect::<StoreResult<Vec<_>>>()?,
        _ => Vec::new(),
    };
    Ok(Node {
        id: get_n(item, "id")?,
        parent: get_n(item, "parent")?,
        name: get_s(item, "name")?,
        kind,
        size: get_n(item, "size")?,
        mode: get_n(item, "mode")?,
        mtime_ns: get_n(item, "mtime")?,
        version: get_n(item, "ver")?,
        blocks,
        target: match item.get("target") {
            Some(AttributeValue::S(t)) => Some(t.clone()),
            _ => None,
        },
    })
}

/// About the bytes of JSON an item turns into: its strings and lists of strings (names,
/// block lists, events), plus a little per attribute.
fn item_len(item: &Item) -> usize {
    fn len(v: &AttributeValue) -> usize {
        match v {
            AttributeValue::S(t) => t.len() + 3,
            AttributeValue::L(list) => list.iter().map(len).sum::<usize>() + 2,
            _ => 24,
        }
    }
    item.iter().map(|(k, v)| k.len() + len(v)).sum()
}

/// A node's pointer item as read: the node and its trash state.
#[derive(Debug, Clone)]
struct Ptr {
    node: Node,
    trash_at: Option<i64>,
    in_trash: Option<NodeId>,
}

impl Ptr {
    fn live(&self) -> bool {
        self.trash_at.is_none() && self.in_trash.is_none()
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One `TransactWriteItems` under construction.
#[derive(Default)]
struct Tx {
    items: Vec<TransactWriteItem>,
}

/// A condition expression with its names and values (`#a`/`:a` placeholders, always: names
/// such as `name`, `size` and `ttl` are reserved words).
#[derive(Default, Clone)]
struct Cond {
    expr: String,
    names: HashMap<String, String>,
    values: Item,
}

impl Cond {
    fn not_exists() -> Cond {
        Cond {
            expr: "attribute_not_exists(#pk)".into(),
            names: HashMap::from([("#pk".into(), PK.into())]),
            values: Item::new(),
        }
    }
    fn exists() -> Cond {
        Cond {
            expr: "attribute_exists(#pk)".into(),
            names: HashMap::from([("#pk".into(), PK.into())]),
            values: Item::new(),
        }
    }
    /// The item holds this version.
    fn version(v: Version) -> Cond {
        Cond {
            expr: "#ver = :ver".into(),
            names: HashMap::from([("#ver".into(), "ver".into())]),
            values: HashMap::from([(":ver".into(), n(v))]),
        }
    }
    /// A pointer that holds this version and is live (not in the trash).
    fn live_version(v: Version) -> Cond {
        Cond {
            expr: "#ver = :ver AND attribute_not_exists(#ta) AND attribute_not_exists(#it)".into(),
            names: HashMap::from([
                ("#ver".into(), "ver".into()),
                ("#ta".into(), "trash_at".into()),
                ("#it".into(), "in_trash".into()),
            ]),
            values: HashMap::from([(":ver".into(), n(v))]),
        }
    }
    /// A pointer that is live.
    fn live() -> Cond {
        Cond {
            expr:
                "attribute_exists(#pk) AND attribute_not_exists(#ta) AND attribute_not_exists(#it)"
                    .into(),
            names: HashMap::from([
                ("#pk".into(), PK.into()),
                ("#ta".into(), "trash_at".into()),
                ("#it".into(), "in_trash".into()),
            ]),
            values: Item::new(),
        }
    }
}

impl Tx {
    fn put(&mut self, table: &str, item: Item, cond: Option<Cond>) {
        let mut b = Put::builder().table_name(table).set_item(Some(item));
        if let Some(c) = cond {
            b = b
                .condition_expression(c.expr)
                .set_expression_attribute_names(Some(c.names));
            if !c.values.is_empty() {
                b = b.set_expression_attribute_values(Some(c.values));
            }
        }
        self.items.push(
            TransactWriteItem::builder()
                .put(b.build().expect("put"))
                .build(),
        );
    }
    fn delete(&mut self, table: &str, key: Item, cond: Option<Cond>) {
        let mut b = Delete::builder().table_name(table).set_key(Some(key));
        if let Some(c) = cond {
            b = b
                .condition_expression(c.expr)
                .set_expression_attribute_names(Some(c.names));
            if !c.values.is_empty() {
                b = b.set_expression_attribute_values(Some(c.values));
            }
        }
        self.items.push(
            TransactWriteItem::builder()
                .delete(b.build().expect("delete"))
                .build(),
        );
    }
    fn check(&mut self, table: &str, key: Item, c: Cond) {
        let mut b = ConditionCheck::builder()
            .table_name(table)
            .set_key(Some(key))
            .condition_expression(c.expr)
            .set_expression_attribute_names(Some(c.names));
        if !c.values.is_empty() {
            b = b.set_expression_attribute_values(Some(c.values));
        }
        self.items.push(
            TransactWriteItem::builder()
                .condition_check(b.build().expect("check"))
                .build(),
        );
    }
}

/// The outcome of a transaction attempt.
enum TxOutcome {
    Done,
    /// A guard failed (or a concurrent transaction touched an item): run the operation again.
    Retry,
}

impl DynamoStore {
    pub fn new(sdk: &aws_config::SdkConfig, settings: &AwsSettings) -> DynamoStore {
        Self::from_client(Client::new(sdk), &settings.table, settings.log_retention)
    }

    pub fn from_client(client: Client, table: &str, log_retention: Duration) -> DynamoStore {
        DynamoStore {
            client,
            table: table.to_string(),
            log_retention,
            writers: Default::default(),
            one_by_one: false,
        }
    }

    /// Writes transaction items one request at a time — NOT atomic, for testing the
    /// expressions on servers without `TransactWriteItems` (dynalite).
    #[cfg(any(test, feature = "conformance"))]
    pub fn without_transactions(mut self) -> Self {
        self.one_by_one = true;
        self
    }

    async fn commit_one_by_one(&self, tx: Tx) -> StoreResult<TxOutcome> {
        for item in tx.items {
            let failed = if let Some(p) = item.put {
                count("dynamodb:PutItem");
                let r = self
                    .client
                    .put_item()
                    .table_name(p.table_name)
                    .set_item(Some(p.item))
                    .set_condition_expression(p.condition_expression)
                    .set_expression_attribute_names(p.expression_attribute_names)
                    .set_expression_attribute_values(p.expression_attribute_values)
                    .send()
                    .await;
                match r {
                    Ok(_) => false,
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
                    {
                        true
                    }
                    Err(e) => return Err(be(e)),
                }
            } else if let Some(d) = item.delete {
                count("dynamodb:DeleteItem");
                let r = self
                    .client
                    .delete_item()
                    .table_name(d.table_name)
                    .set_key(Some(d.key))
                    .set_condition_expression(d.condition_expression)
                    .set_expression_attribute_names(d.expression_attribute_names)
                    .set_expression_attribute_values(d.expression_attribute_values)
                    .send()
                    .await;
                match r {
                    Ok(_) => false,
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
                    {
                        true
                    }
                    Err(e) => return Err(be(e)),
                }
            } else if let Some(u) = item.update {
                count("dynamodb:UpdateItem");
                let r = self
                    .client
                    .update_item()
                    .table_name(u.table_name)
                    .set_key(Some(u.key))
                    .update_expression(u.update_expression)
                    .set_condition_expression(u.condition_expression)
                    .set_expression_attribute_names(u.expression_attribute_names)
                    .set_expression_attribute_values(u.expression_attribute_values)
                    .send()
                    .await;
                match r {
                    Ok(_) => false,
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
                    {
                        true
                    }
                    Err(e) => return Err(be(e)),
                }
            } else if let Some(c) = item.condition_check {
                // A condition alone: an update that changes nothing, guarded by it.
                count("dynamodb:UpdateItem");
                let r = self
                    .client
                    .update_item()
                    .table_name(c.table_name)
                    .set_key(Some(c.key))
                    .condition_expression(c.condition_expression)
                    .set_expression_attribute_names(c.expression_attribute_names)
                    .set_expression_attribute_values(c.expression_attribute_values)
                    .send()
                    .await;
                match r {
                    Ok(_) => false,
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
                    {
                        true
                    }
                    Err(e) => return Err(be(e)),
                }
            } else {
                false
            };
            if failed {
                return Ok(TxOutcome::Retry);
            }
        }
        Ok(TxOutcome::Done)
    }

    /// Holds this process's write lock of one user.
    async fn write_lock(&self, uid: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.writers.lock().unwrap();
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(uid).and_then(|w| w.upgrade()) {
                Some(l) => l,
                None => {
                    let l = std::sync::Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(uid.to_string(), std::sync::Arc::downgrade(&l));
                    l
                }
            }
        };
        let guard = lock.lock_owned().await;
        // A delete or restore whose marking was cut short (Lambda's time limit): finish it
        // before this write, so the user's tree converges with their next writes.
        self.resume_marks(uid).await;
        guard
    }

    /// Creates the table (on-demand, keys `PK`/`SK`) and turns TTL on, if missing.
    pub async fn create_table(&self) -> anyhow::Result<()> {
        count("dynamodb:DescribeTable");
        let exists = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .is_ok();
        if !exists {
            count("dynamodb:CreateTable");
            self.client
                .create_table()
                .table_name(&self.table)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(PK)
                        .attribute_type(ScalarAttributeType::S)
                        .build()?,
                )
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(SK)
                        .attribute_type(ScalarAttributeType::S)
                        .build()?,
                )
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(PK)
                        .key_type(KeyType::Hash)
                        .build()?,
                )
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(SK)
                        .key_type(KeyType::Range)
                        .build()?,
                )
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("creating table {}: {}", self.table, sdk_err(&e)))?;
            // Wait until it is active (at once on the emulators, seconds on AWS).
            for _ in 0..120 {
                count("dynamodb:DescribeTable");
                let d = self
                    .client
                    .describe_table()
                    .table_name(&self.table)
                    .send()
                    .await?;
                let active = d
                    .table()
                    .and_then(|t| t.table_status())
                    .map(|s| s.as_str() == "ACTIVE")
                    .unwrap_or(false);
                if active {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        count("dynamodb:UpdateTimeToLive");
        let ttl = self
            .client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(TTL_ATTR)
                    .enabled(true)
                    .build()?,
            )
            .send()
            .await;
        if let Err(e) = ttl {
            // Enabling twice is refused ("TimeToLive is already enabled"); anything else matters
            // only on a server without TTL (dynalite), where the log is trimmed by trim_log.
            tracing::info!("time to live on {}: {}", self.table, sdk_err(&e));
        }
        Ok(())
    }

    // ---- reading ----

    async fn get(&self, pk: String, sk: String) -> StoreResult<Option<Item>> {
        count("dynamodb:GetItem");
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(be)?;
        Ok(out.item)
    }

    /// All items of a partition whose sort key is above `after` (or begins with `prefix`), in
    /// order, at most `limit`.
    async fn query(
        &self,
        pk: String,
        after: Option<String>,
        prefix: Option<&str>,
        limit: Option<usize>,
    ) -> StoreResult<Vec<Item>> {
        Ok(self
            .query_within(pk, after, prefix, limit, usize::MAX)
            .await?
            .0)
    }

    /// As [`Self::query`], but asks DynamoDB for no further page once the items read hold
    /// `max_bytes` (as [`item_len`] counts): a page to fill with `fill_page` needs no more,
    /// and a directory of huge nodes is never read whole.
    async fn query_within(
        &self,
        pk: String,
        after: Option<String>,
        prefix: Option<&str>,
        limit: Option<usize>,
        max_bytes: usize,
    ) -> StoreResult<(Vec<Item>, bool)> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut cut = false;
        let mut start: Option<Item> = None;
        loop {
            let mut names = HashMap::from([("#pk".to_string(), PK.to_string())]);
            let mut values = HashMap::from([(":pk".to_string(), s(&pk))]);
            let mut expr = "#pk = :pk".to_string();
            if let Some(a) = &after {
                names.insert("#sk".into(), SK.into());
                values.insert(":sk".into(), s(a));
                expr.push_str(" AND #sk > :sk");
            } else if let Some(p) = prefix {
                names.insert("#sk".into(), SK.into());
                values.insert(":sk".into(), s(p));
                expr.push_str(" AND begins_with(#sk, :sk)");
            }
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression(expr)
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(Some(values))
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            if let Some(l) = limit {
                q = q.limit((l - out.len()).min(1000) as i32);
            }
            count("dynamodb:Query");
            let page = q.send().await.map_err(be)?;
            let items = page.items.unwrap_or_default();
            bytes = items
                .iter()
                .map(item_len)
                .fold(bytes, usize::saturating_add);
            out.extend(items);
            match page.last_evaluated_key {
                Some(k)
                    if !k.is_empty()
                        && limit.is_none_or(|l| out.len() < l)
                        && bytes < max_bytes =>
                {
                    start = Some(k)
                }
                // Stopped by the byte bound with DynamoDB still holding more: the caller's
                // page must say so (its own count of bytes may not reach the bound).
                Some(k) if !k.is_empty() && bytes >= max_bytes => {
                    cut = true;
                    break;
                }
                _ => break,
            }
        }
        Ok((out, cut))
    }

    /// `(deleted at, id)` of every trash entry of the user, read as a projection (the keys
    /// and times only, never the nodes' block lists).
    async fn trash_keys(&self, uid: &str) -> StoreResult<Vec<(i64, NodeId)>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            count("dynamodb:Query");
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk")
                .projection_expression("#sk, #at")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#sk", SK)
                .expression_attribute_names("#at", "at")
                .expression_attribute_values(":pk", s(trash_pk(uid)))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(be)?;
            for item in page.items.unwrap_or_default() {
                let sk = get_s(&item, SK)?;
                let id = sk
                    .strip_prefix("N#")
                    .and_then(|id| id.parse().ok())
                    .ok_or_else(|| StoreError::Backend(format!("bad trash key {sk}")))?;
                out.push((get_n(&item, "at")?, id));
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn ptr(&self, uid: &str, id: NodeId) -> StoreResult<Option<Ptr>> {
        let Some(item) = self.get(user_pk(uid), node_sk(id)).await? else {
            return Ok(None);
        };
        Ok(Some(Ptr {
            node: read_node(&item)?,
            trash_at: opt_n(&item, "trash_at")?,
            in_trash: opt_n(&item, "in_trash")?,
        }))
    }

    /// A live node, or `NotFound`.
    async fn live(&self, uid: &str, id: NodeId) -> StoreResult<Node> {
        match self.ptr(uid, id).await? {
            Some(p) if p.live() => Ok(p.node),
            _ => Err(StoreError::NotFound),
        }
    }

    async fn live_dir(&self, uid: &str, id: NodeId) -> StoreResult<Node> {
        let node = self.live(uid, id).await?;
        if !node.is_dir() {
            return Err(StoreError::NotADirectory);
        }
        Ok(node)
    }

    async fn entry(&self, uid: &str, parent: NodeId, name: &str) -> StoreResult<Option<Node>> {
        if name.is_empty() {
            return Ok(None);
        }
        match self.get(dir_pk(uid, parent), name.to_string()).await? {
            Some(item) => Ok(Some(read_node(&item)?)),
            None => Ok(None),
        }
    }

    async fn is_empty_dir(&self, uid: &str, id: NodeId) -> StoreResult<bool> {
        Ok(self
            .query(dir_pk(uid, id), None, None, Some(1))
            .await?
            .is_empty())
    }

    /// The user's sequence counter; `NotFound` for a user that does not exist.
    async fn seq(&self, uid: &str) -> StoreResult<Seq> {
        match self.get(user_pk(uid), META.into()).await? {
            Some(item) => get_n(&item, "seq"),
            None => Err(StoreError::NotFound),
        }
    }

    // ---- writing ----

    fn ptr_item(&self, uid: &str, node: &Node) -> Item {
        let mut item = key(user_pk(uid), node_sk(node.id));
        put_node(&mut item, node);
        item
    }

    fn entry_item(&self, uid: &str, node: &Node) -> Item {
        let mut item = key(dir_pk(uid, node.parent), node.name.clone());
        put_node(&mut item, node);
        item
    }

    /// Adds the counter guard and the log items for `events` (numbered from `seq + 1`).
    fn log_events(&self, tx: &mut Tx, uid: &str, seq: Seq, events: &mut [ChangeEvent]) {
        let ttl = unix_secs() + self.log_retention.as_secs();
        for (i, ev) in events.iter_mut().enumerate() {
            ev.seq = seq + 1 + i as u64;
            let mut item = key(log_pk(uid), seq_sk(ev.seq));
            item.insert(
                "ev".into(),
                s(serde_json::to_string(ev).expect("events serialise")),
            );
            item.insert("at".into(), n(ev.at_ns));
            item.insert(TTL_ATTR.into(), n(ttl));
            self.tx_put_raw(tx, item, Some(Cond::not_exists()));
        }
        tx.items.push(
            TransactWriteItem::builder()
                .update(
                    aws_sdk_dynamodb::types::Update::builder()
                        .table_name(&self.table)
                        .set_key(Some(key(user_pk(uid), META.into())))
                        .update_expression("SET #seq = :new")
                        .condition_expression("#seq = :old")
                        .expression_attribute_names("#seq", "seq")
                        .expression_attribute_values(":new", n(seq + events.len() as u64))
                        .expression_attribute_values(":old", n(seq))
                        .build()
                        .expect("update"),
                )
                .build(),
        );
    }

    fn tx_put_raw(&self, tx: &mut Tx, item: Item, cond: Option<Cond>) {
        tx.put(&self.table, item, cond)
    }

    async fn commit(&self, tx: Tx) -> StoreResult<TxOutcome> {
        if self.one_by_one {
            return self.commit_one_by_one(tx).await;
        }
        count("dynamodb:TransactWriteItems");
        count_n("dynamodb:TransactWriteItems (items)", tx.items.len() as u64);
        // The token makes the SDK's own retries of this request idempotent: a retry after a
        // lost answer is reported as the success it was, not as a failed guard.
        let token = format!("{:032x}", rand::random::<u128>());
        match self
            .client
            .transact_write_items()
            .client_request_token(token)
            .set_transact_items(Some(tx.items))
            .send()
            .await
        {
            Ok(_) => Ok(TxOutcome::Done),
            Err(e) => {
                use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError as E;
                match e.as_service_error() {
                    Some(E::TransactionCanceledException(_)) => {
                        count("dynamodb:TransactWriteItems (cancelled)");
                        // Another instance won the race: step aside for a random moment so
                        // that the losers do not collide again in lockstep.
                        let pause = rand::random::<u64>() % 40 + 2;
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                        Ok(TxOutcome::Retry)
                    }
                    _ => Err(be(e)),
                }
            }
        }
    }

    async fn batch_write(&self, requests: Vec<WriteRequest>) -> StoreResult<()> {
        for chunk in requests.chunks(25) {
            let mut pending = HashMap::from([(self.table.clone(), chunk.to_vec())]);
            for attempt in 0.. {
                count("dynamodb:BatchWriteItem");
                let out = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(pending))
                    .send()
                    .await
                    .map_err(be)?;
                match out.unprocessed_items {
                    Some(rest) if rest.values().any(|v| !v.is_empty()) => {
                        if attempt > 10 {
                            return Err(StoreError::Backend(
                                "batch write kept being throttled".into(),
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(20 << attempt.min(6))).await;
                        pending = rest;
                    }
                    _ => break,
                }
            }
        }
        Ok(())
    }

    fn delete_req(item: &Item) -> WriteRequest {
        let k: Item = item
            .iter()
            .filter(|(k, _)| k.as_str() == PK || k.as_str() == SK)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        WriteRequest::builder()
            .delete_request(
                DeleteRequest::builder()
                    .set_key(Some(k))
                    .build()
                    .expect("key"),
            )
            .build()
    }

    async fn user_item(&self, name: &str) -> StoreResult<Item> {
        self.get(users_pk(), name.to_string())
            .await?
            .ok_or_else(|| StoreError::UnknownUser(name.into()))
    }

    fn user_from(item: &Item) -> StoreResult<User> {
        Ok(User {
            id: get_s(item, "uid")?,
            name: get_s(item, SK)?,
            created_at_ns: get_n(item, "created")?,
        })
    }
}

fn event(op: ChangeOp, node: &Node, from: Option<Place>, origin: Origin) -> ChangeEvent {
    ChangeEvent {
        inline: None,
        seq: 0,
        op,
        node: node.clone(),
        from,
        device: origin.device,
        at_ns: origin.now_ns,
    }
}

fn too_many() -> StoreError {
    StoreError::Backend("too much contention on this user's data; try again".into())
}

#[async_trait]
impl MetaStore for DynamoStore {
    async fn create_user(&self, name: &str, token_hash: &str, now_ns: i64) -> StoreResult<User> {
        let uid = format!("{:016x}", rand::random::<u64>());
        let mut tx = Tx::default();
        let mut u = key(users_pk(), name.to_string());
        u.insert("uid".into(), s(&uid));
        u.insert("token".into(), s(token_hash));
        u.insert("created".into(), n(now_ns));
        tx.put(&self.table, u, Some(Cond::not_exists()));
        let mut t = key(token_pk(token_hash), "T".into());
        t.insert("uid".into(), s(&uid));
        t.insert("name".into(), s(name));
        t.insert("created".into(), n(now_ns));
        tx.put(&self.table, t, Some(Cond::not_exists()));
        let mut meta = key(user_pk(&uid), META.into());
        meta.insert("seq".into(), n(0));
        meta.insert("name".into(), s(name));
        tx.put(&self.table, meta, None);
        let root = crate::store::new_root(now_ns);
        tx.put(&self.table, self.ptr_item(&uid, &root), None);
        match self.commit(tx).await? {
            TxOutcome::Done => Ok(User {
                id: uid,
                name: name.into(),
                created_at_ns: now_ns,
            }),
            TxOutcome::Retry => {
                if self.get(users_pk(), name.to_string()).await?.is_some() {
                    Err(StoreError::UserExists(name.into()))
                } else {
                    Err(StoreError::Backend(
                        "that token hash is already in use".into(),
                    ))
                }
            }
        }
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        self.query(users_pk(), None, None, None)
            .await?
            .iter()
            .map(Self::user_from)
            .collect()
    }

    async fn remove_user(&self, name: &str) -> StoreResult<()> {
        let u = self.user_item(name).await?;
        let uid = get_s(&u, "uid")?;
        let token = get_s(&u, "token")?;
        let mut deletes = Vec::new();
        let own = self.query(user_pk(&uid), None, None, None).await?;
        for item in &own {
            if get_s(item, SK)?.starts_with("N#") && get_s(item, "kind")? == "dir" {
                let id: NodeId = get_n(item, "id")?;
                for e in self.query(dir_pk(&uid, id), None, None, None).await? {
                    deletes.push(Self::delete_req(&e));
                }
            }
        }
        for pk in [
            log_pk(&uid),
            trash_pk(&uid),
            marks::marks_pk(&uid),
            condemned::gc_pk(&uid),
        ] {
            for e in self.query(pk, None, None, None).await? {
                deletes.push(Self::delete_req(&e));
            }
        }
        // Small blocks by key only: their bytes are not read back.
        for hash in self.small_block_writes(&uid).await?.into_keys() {
            deletes.push(Self::delete_req(&key(small_blocks::small_pk(&uid), hash)));
        }
        // The user's own partition (meta, devices, pointers) last, then the token and name:
        // a removal cut short can be run again.
        let own_devices: Vec<Item> = own
            .iter()
            .filter(|i| get_s(i, SK).is_ok_and(|k| k.starts_with("DEV#")))
            .cloned()
            .collect();
        deletes.extend(
            devices::token_keys_of(&own_devices)
                .iter()
                .map(Self::delete_req),
        );
        deletes.extend(own.iter().map(Self::delete_req));
        deletes.push(Self::delete_req(&key(token_pk(&token), "T".into())));
        deletes.push(Self::delete_req(&key(users_pk(), name.into())));
        self.batch_write(deletes).await
    }

    async fn set_token(&self, name: &str, token_hash: &str) -> StoreResult<User> {
        for _ in 0..MAX_ATTEMPTS {
            let u = self.user_item(name).await?;
            let user = Self::user_from(&u)?;
            let old = get_s(&u, "token")?;
            let mut tx = Tx::default();
            let mut nu = u.clone();
            nu.insert("token".into(), s(token_hash));
            let mut c = Cond::exists();
            c.expr.push_str(" AND #tok = :tok");
            c.names.insert("#tok".into(), "token".into());
            c.values.insert(":tok".into(), s(&old));
            tx.put(&self.table, nu, Some(c));
            if old != token_hash {
                tx.delete(&self.table, key(token_pk(&old), "T".into()), None);
                let mut t = key(token_pk(token_hash), "T".into());
                t.insert("uid".into(), s(&user.id));
                t.insert("name".into(), s(name));
                t.insert("created".into(), n(user.created_at_ns));
                tx.put(&self.table, t, Some(Cond::not_exists()));
            }
            if let TxOutcome::Done = self.commit(tx).await? {
                return Ok(user);
            }
        }
        Err(too_many())
    }

    async fn user_by_token(&self, token_hash: &str) -> StoreResult<Option<User>> {
        let Some(t) = self.get(token_pk(token_hash), "T".into()).await? else {
            return Ok(None);
        };
        Ok(Some(User {
            id: get_s(&t, "uid")?,
            name: get_s(&t, "name")?,
            created_at_ns: get_n(&t, "created")?,
        }))
    }

    async fn user_exists(&self, user: &UserId) -> StoreResult<bool> {
        Ok(self.get(user_pk(user), META.into()).await?.is_some())
    }

    /// The device count is read, not guarded: two registrations at the same instant may both
    /// pass at `max - 1` (the cap bounds a user's devices, it is not an exact quota).
    async fn register_device(
        &self,
        user: &UserId,
        name: &str,
        max: usize,
    ) -> StoreResult<DeviceId> {
        if self.get(user_pk(user), META.into()).await?.is_none() {
            return Err(StoreError::UnknownUser(user.clone()));
        }
        let devices = self
            .query(user_pk(user), None, Some("DEV#"), Some(max))
            .await?;
        if devices.len() >= max {
            return Err(StoreError::TooManyDevices(max));
        }
        let id = new_id();
        let mut item = key(user_pk(user), dev_sk(id));
        item.insert("name".into(), s(name));
        item.insert("id".into(), n(id));
        item.insert("created".into(), n(crate::store::now_ns()));
        count("dynamodb:PutItem");
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await
            .map_err(be)?;
        Ok(id)
    }

    async fn remove_devices(&self, user: &UserId) -> StoreResult<usize> {
        let devices = self.query(user_pk(user), None, Some("DEV#"), None).await?;
        let n = devices.len();
        let mut tokens = devices::token_keys_of(&devices);
        tokens.extend(devices::reg_keys_of(user, &devices));
        self.batch_write(tokens.iter().map(Self::delete_req).collect())
            .await?;
        self.batch_write(devices.iter().map(Self::delete_req).collect())
            .await?;
        Ok(n)
    }

    async fn register_device_keyed(
        &self,
        user: &UserId,
        name: &str,
        max: usize,
        key: &str,
    ) -> StoreResult<(DeviceId, bool)> {
        self.dev_register_keyed(user, name, max, key).await
    }

    async fn remove_device(&self, user: &UserId, device: DeviceId) -> StoreResult<()> {
        self.dev_remove_device(user, device).await
    }

    async fn touch_device(&self, user: &UserId, device: DeviceId, now_ns: i64) -> StoreResult<()> {
        self.dev_touch(user, device, now_ns).await
    }

    async fn token_owner(&self, token_hash: &str) -> StoreResult<Option<TokenOwner>> {
        self.dev_token_owner(token_hash).await
    }

    async fn create_link(
        &self,
        link: &PendingLink,
        now_ns: i64,
        max_pending: usize,
    ) -> StoreResult<()> {
        self.dev_create_link(link, now_ns, max_pending).await
    }

    async fn link(&self, code: &str, now_ns: i64) -> StoreResult<PendingLink> {
        self.dev_link(code, now_ns).await
    }

    async fn approve_link(
        &self,
        user: &UserId,
        code: &str,
        max_devices: usize,
        now_ns: i64,
    ) -> StoreResult<DeviceId> {
        self.dev_approve_link(user, code, max_devices, now_ns).await
    }

    async fn device(&self, user: &UserId, device: DeviceId) -> StoreResult<String> {
        match self.get(user_pk(user), dev_sk(device)).await? {
            Some(item) => get_s(&item, "name"),
            None => Err(StoreError::UnknownDevice),
        }
    }

    async fn devices(&self, user: &UserId) -> StoreResult<Vec<DeviceInfo>> {
        let mut out = self
            .query(user_pk(user), None, Some("DEV#"), None)
            .await?
            .iter()
            .map(devices::device_info)
            .collect::<StoreResult<Vec<DeviceInfo>>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn get_node(&self, user: &UserId, id: NodeId) -> StoreResult<Node> {
        self.live(user, id).await
    }

    async fn child(&self, user: &UserId, parent: NodeId, name: &str) -> StoreResult<Node> {
        let node = self
            .entry(user, parent, name)
            .await?
            .ok_or(StoreError::NotFound)?;
        // Entries below a deleted directory stay; they are visible only under a live parent.
        self.live(user, parent).await?;
        Ok(node)
    }

    async fn list_children(
        &self,
        user: &UserId,
        parent: NodeId,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Page<Node>> {
        self.live_dir(user, parent).await?;
        let after = after.filter(|a| !a.is_empty()).map(str::to_string);
        let (items, cut) = self
            .query_within(
                dir_pk(user, parent),
                after,
                None,
                Some(limit as usize + 1),
                MAX_PAGE_BYTES,
            )
            .await?;
        let rows = items.iter().map(|item| {
            let node = read_node(item)?;
            let len = json_len(&node);
            Ok((node, len))
        });
        let mut page = fill_page(rows, limit, MAX_PAGE_BYTES)?;
        if cut && !page.more {
            // The read stopped at the byte bound (as DynamoDB counts it) but the page did
            // not fill (as JSON counts it): whether anything follows needs one more look.
            if let Some(last) = page.entries.last() {
                let next = self
                    .query(dir_pk(user, parent), Some(last.name.clone()), None, Some(1))
                    .await?;
                page.more = !next.is_empty();
            }
        }
        Ok(page)
    }

    async fn create(
        &self,
        user: &UserId,
        new: &NewNode,
        origin: Origin,
    ) -> StoreResult<(Node, ChangeEvent)> {
        let id = new_id();
        let mut small = None;
        if let NewKind::File { content } = &new.kind {
            check_blocks(content.blocks.len())?;
            small = crate::store::checked_small_block(&content.blocks, content.inline.as_ref())?;
        }
        let _writing = self.write_lock(user).await;
        for _ in 0..MAX_ATTEMPTS {
            let seq = self.seq(user).await?;
            self.live_dir(user, new.parent).await?;
            if let Some(occupant) = self.entry(user, new.parent, &new.name).await? {
                return Err(StoreError::Exists(Box::new(occupant)));
            }
            let (kind, size, blocks, target) = match &new.kind {
                NewKind::File { content } => {
                    (NodeKind::File, content.size, content.blocks.clone(), None)
                }
                NewKind::Dir => (NodeKind::Dir, 0, Vec::new(), None),
                NewKind::Symlink { target } => (
                    NodeKind::Symlink,
                    target.len() as u64,
                    Vec::new(),
                    Some(target.clone()),
                ),
            };
            let node = Node {
                id,
                parent: new.parent,
                name: new.name.clone(),
                kind,
                size,
                mode: new.mode,
                mtime_ns: new.mtime_ns,
                version: 1,
                blocks,
                target,
            };
            let mut events = [event(ChangeOp::Upsert, &node, None, origin)];
            let mut tx = Tx::default();
            tx.put(
                &self.table,
                self.ptr_item(user, &node),
                Some(Cond::not_exists()),
            );
            tx.put(
                &self.table,
                self.entry_item(user, &node),
                Some(Cond::not_exists()),
            );
            tx.check(
                &self.table,
                key(user_pk(user), node_sk(new.parent)),
                Cond::live(),
            );
            self.tx_keep_small_block(&mut tx, user, small, seq + 1);
            self.log_events(&mut tx, user, seq, &mut events);
            if let TxOutcome::Done = self.commit(tx).await? {
                let [ev] = events;
                return Ok((node, ev));
            }
        }
        Err(too_many())
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
        check_blocks(content.blocks.len())?;
        let small = crate::store::checked_small_block(&content.blocks, content.inline.as_ref())?;
        let _writing = self.write_lock(user).await;
        for _ in 0..MAX_ATTEMPTS {
            let seq = self.seq(user).await?;
            let cur = self.live(user, id).await?;
            match cur.kind {
                NodeKind::File => {}
                NodeKind::Dir => return Err(StoreError::IsADirectory),
                NodeKind::Symlink => {
                    return Err(StoreError::InvalidMove("a symlink has no content"))
                }
            }
            if cur.version != base {
                return Err(StoreError::Conflict(Box::new(cur)));
            }
            let node = Node {
                size: content.size,
                blocks: content.blocks.clone(),
                mtime_ns: mtime_ns.unwrap_or(origin.now_ns),
                version: cur.version + 1,
                ..cur.clone()
            };
            let mut events = [event(ChangeOp::Upsert, &node, None, origin)];
            let mut tx = Tx::default();
            tx.put(
                &self.table,
                self.ptr_item(user, &node),
                Some(Cond::live_version(cur.version)),
            );
            tx.put(
                &self.table,
                self.entry_item(user, &node),
                Some(Cond::version(cur.version)),
            );
            if cur.size > 0 && cur.blocks != content.blocks {
                // The replaced content, kept as an earlier version (TTL ends it).
                let mut v = key(user_pk(user), version_sk(id, cur.version));
                put_node(&mut v, &cur);
                v.insert("at".into(), n(origin.now_ns));
                v.insert(
                    TTL_ATTR.into(),
                    n(unix_secs() + crate::maintenance::TRASH_RETENTION.as_secs()),
                );
                tx.put(&self.table, v, None);
            }
            self.tx_keep_small_block(&mut tx, user, small, seq + 1);
            self.log_events(&mut tx, user, seq, &mut events);
            if let TxOutcome::Done = self.commit(tx).await? {
                let [ev] = events;
                return Ok((node, ev));
            }
        }
        Err(too_many())
    }

    async fn set_attr(
        &self,
        user: &UserId,
        id: NodeId,
        attr: &SetAttr,
        origin: Origin,
    ) -> StoreResult<(Node, ChangeEvent)> {
        let _writing = self.write_lock(user).await;
        for _ in 0..MAX_ATTEMPTS {
            let seq = self.seq(user).await?;
            let cur = self.live(user, id).await?;
            let node = Node {
                mode: attr.mode.unwrap_or(cur.mode),
                mtime_ns: attr.mtime_ns.unwrap_or(cur.mtime_ns),
                version: cur.version + 1,
                ..cur.clone()
            };
            let mut events = [event(ChangeOp::Upsert, &node, None, origin)];
            let mut tx = Tx::default();
            tx.put(
                &self.table,
                self.ptr_item(user, &node),
                Some(Cond::live_version(cur.version)),
            );
            if id != ROOT_ID {
                tx.put(
                    &self.table,
                    self.entry_item(user, &node),
                    Some(Cond::version(cur.version)),
                );
            }
            self.log_events(&mut tx, user, seq, &mut events);
            if let TxOutcome::Done = self.commit(tx).await? {
                let [ev] = events;
                return Ok((node, ev));
            }
        }
        Err(too_many())
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
        let _writing = self.write_lock(user).await;
        for _ in 0..MAX_ATTEMPTS {
            let seq = self.seq(user).await?;
            let node = self.live(user, id).await?;
            if id == ROOT_ID {
                return Err(StoreError::InvalidMove("the root cannot be moved"));
            }
            if node.version != base {
                return Err(StoreError::Conflict(Box::new(node)));
            }
            self.live_dir(user, new_parent).await?;
            if node.is_dir() && self.is_below(user, new_parent, id).await? {
                return Err(StoreError::InvalidMove(
                    "a directory cannot move below itself",
                ));
            }
            let target = self.entry(user, new_parent, new_name).await?;
            if target.as_ref().is_some_and(|t| t.id == id) {
                // Already there: nothing changes.
                return Ok(Moved {
                    node,
                    other: None,
                    events: Vec::new(),
                });
            }
            let from = Place {
                parent: node.parent,
                name: node.name.clone(),
            };
            let moved = Node {
                parent: new_parent,
                name: new_name.to_string(),
                version: node.version + 1,
                ..node.clone()
            };
            let mut tx = Tx::default();
            tx.put(
                &self.table,
                self.ptr_item(user, &moved),
                Some(Cond::live_version(node.version)),
            );
            tx.check(
                &self.table,
                key(user_pk(user), node_sk(new_parent)),
                Cond::live(),
            );
            let mut events = vec![event(ChangeOp::Upsert, &moved, Some(from.clone()), origin)];
            let mut other = None;
            let mut trashed_dir = None;
            match (mode, target) {
                (MoveMode::NoReplace, Some(t)) => return Err(StoreError::Exists(Box::new(t))),
                (MoveMode::Exchange, None) => return Err(StoreError::NotFound),
                (_, None) => {
                    tx.delete(
                        &self.table,
                        key(dir_pk(user, node.parent), node.name.clone()),
                        Some(Cond::version(node.version)),
                    );
                    tx.put(
                        &self.table,
                        self.entry_item(user, &moved),
                        Some(Cond::not_exists()),
                    );
                }
                (MoveMode::Replace, Some(t)) => {
                    match (node.is_dir(), t.is_dir()) {
                        (false, true) => return Err(StoreError::IsADirectory),
                        (true, false) => return Err(StoreError::NotADirectory),
                        (true, true) if !self.is_empty_dir(user, t.id).await? => {
                            return Err(StoreError::NotEmpty)
                        }
                        _ => {}
                    }
                    let gone = t.clone();
                    tx.delete(
                        &self.table,
                        key(dir_pk(user, node.parent), node.name.clone()),
                        Some(Cond::version(node.version)),
                    );
                    tx.put(
                        &self.table,
                        self.entry_item(user, &moved),
                        Some(Cond::version(t.version)),
                    );
                    let mut p = self.ptr_item(user, &gone);
                    p.insert("trash_at".into(), n(origin.now_ns));
                    tx.put(&self.table, p, Some(Cond::live_version(t.version)));
                    let mut tr = key(trash_pk(user), node_sk(t.id));
                    put_node(&mut tr, &gone);
                    tr.insert("at".into(), n(origin.now_ns));
                    tx.put(&self.table, tr, None);
                    // The replaced node's removal comes before the move.
                    events.insert(0, event(ChangeOp::Remove, &gone, None, origin));
                    if gone.is_dir() {
                        trashed_dir = Some(gone.id);
                    }
                    other = Some(gone);
                }
                (MoveMode::Exchange, Some(t)) => {
                    if t.is_dir() && self.is_below(user, node.parent, t.id).await? {
                        return Err(StoreError::InvalidMove(
                            "a directory cannot move below itself",
                        ));
                    }
                    let swapped = Node {
                        parent: node.parent,
                        name: node.name.clone(),
                        version: t.version + 1,
                        ..t.clone()
                    };
                    tx.put(
                        &self.table,
                        self.ptr_item(user, &swapped),
                        Some(Cond::live_version(t.version)),
                    );
                    tx.put(
                        &self.table,
                        self.entry_item(user, &moved),
                        Some(Cond::version(t.version)),
                    );
                    tx.put(
                        &self.table,
                        self.entry_item(user, &swapped),
                        Some(Cond::version(node.version)),
                    );
                    let from_t = Place {
                        parent: t.parent,
                        name: t.name.clone(),
                    };
                    events.push(event(ChangeOp::Upsert, &swapped, Some(from_t), origin));
                    other = Some(swapped);
                }
            }
            if let Some(d) = trashed_dir {
                tx.put(&self.table, marks::pending(user, d, d), None);
            }
            self.log_events(&mut tx, user, seq, &mut events);
            if let TxOutcome::Done = self.commit(tx).await? {
                if trashed_dir.is_some() {
                    self.mark_after_commit(user).await;
                }
                return Ok(Moved {
                    node: moved,
                    other,
                    events,
                });
            }
        }
        Err(too_many())
    }

    async fn remove(
        &self,
        user: &UserId,
        id: NodeId,
        base: Option<Version>,
        recursive: bool,
        origin: Origin,
    ) -> StoreResult<(Node, ChangeEvent)> {
        let _writing = self.write_lock(user).await;
        for _ in 0..MAX_ATTEMPTS {
            let seq = self.seq(user).await?;
            let node = self.live(user, id).await?;
            if id == ROOT_ID {
                return Err(StoreError::InvalidMove("the root cannot be removed"));
            }
            if base.is_some_and(|b| b != node.version) {
                return Err(StoreError::Conflict(Box::new(node)));
            }
            if node.is_dir() && !recursive && !self.is_empty_dir(user, id).await? {
                return Err(StoreError::NotEmpty);
            }
            // Removing does not bump: the event and the trash entry carry the last state.
            let gone = node.clone();
            let mut events = [event(ChangeOp::Remove, &gone, None, origin)];
            let mut tx = Tx::default();
            let mut p = self.ptr_item(user, &gone);
            p.insert("trash_at".into(), n(origin.now_ns));
            tx.put(&self.table, p, Some(Cond::live_version(node.version)));
            tx.delete(
                &self.table,
                key(dir_pk(user, node.parent), node.name.clone()),
                Some(Cond::version(node.version)),
            );
            let mut tr = key(trash_pk(user), node_sk(id));
            put_node(&mut tr, &gone);
            tr.insert("at".into(), n(origin.now_ns));
            tx.put(&self.table, tr, None);
            if gone.is_dir() {
                tx.put(&self.table, marks::pending(user, id, id), None);
            }
            self.log_events(&mut tx, user, seq, &mut events);
            if let TxOutcome::Done = self.commit(tx).await? {
                if gone.is_dir() {
                    self.mark_after_commit(user).await;
                }
                let [ev] = events;
                return Ok((gone, ev));
            }
        }
        Err(too_many())
    }

    /// The trash partition is keyed by node id, not by time: its keys and times are read
    /// first (a projection: a few dozen bytes per entry, whatever the nodes hold), ordered,
    /// and only the page's entries are read whole.
    async fn list_trash(
        &self,
        user: &UserId,
        after: Option<TrashCursor>,
        limit: u32,
    ) -> StoreResult<Page<TrashEntry>> {
        let mut keys = self.trash_keys(user).await?;
        keys.sort_by_key(|&(at, id)| (std::cmp::Reverse(at), id));
        let first = match after {
            Some(c) => keys.partition_point(|&(at, id)| {
                (std::cmp::Reverse(at), id) <= (std::cmp::Reverse(c.deleted_at_ns), c.id)
            }),
            None => 0,
        };
        let (mut entries, mut bytes, mut more) = (Vec::new(), 0usize, false);
        for &(_, id) in &keys[first..] {
            if entries.len() >= limit as usize || (bytes >= MAX_PAGE_BYTES && !entries.is_empty()) {
                more = true;
                break;
            }
            let Some(item) = self.get(trash_pk(user), node_sk(id)).await? else {
                continue; // restored or purged meanwhile
            };
            let entry = TrashEntry {
                node: read_node(&item)?,
                deleted_at_ns: get_n(&item, "at")?,
            };
            bytes += json_len(&entry);
            entries.push(entry);
        }
        Ok(Page { entries, more })
    }

    async fn restore(
        &self,
        user: &UserId,
        id: NodeId,
        origin: Origin,
    ) -> StoreResult<(Node, ChangeEvent)> {
        let _writing = self.write_lock(user).await;
        for _ in 0..MAX_ATTEMPTS {
            let seq = self.seq(user).await?;
            let p = match self.ptr(user, id).await? {
                Some(p) if p.trash_at.is_some() && p.in_trash.is_none() => p,
                _ => return Err(StoreError::NotFound),
            };
            let parent = match self.live(user, p.node.parent).await {
                Ok(d) if d.is_dir() => d.id,
                _ => ROOT_ID,
            };
            let mut name = p.node.name.clone();
            let mut k = 1u32;
            while self.entry(user, parent, &name).await?.is_some() {
                name = crate::store::restored_name(&p.node.name, k);
                k += 1;
                if k > 10_000 {
                    return Err(StoreError::Backend(format!(
                        "no free restore name for {name:?}"
                    )));
                }
            }
            let node = Node {
                parent,
                name,
                version: p.node.version + 1,
                ..p.node.clone()
            };
            let mut events = [event(ChangeOp::Upsert, &node, None, origin)];
            let mut tx = Tx::default();
            let mut c = Cond::version(p.node.version);
            c.expr.push_str(" AND attribute_exists(#ta)");
            c.names.insert("#ta".into(), "trash_at".into());
            tx.put(&self.table, self.ptr_item(user, &node), Some(c));
            tx.put(
                &self.table,
                self.entry_item(user, &node),
                Some(Cond::not_exists()),
            );
            tx.delete(&self.table, key(trash_pk(user), node_sk(id)), None);
            if parent != ROOT_ID {
                tx.check(
                    &self.table,
                    key(user_pk(user), node_sk(parent)),
                    Cond::live(),
                );
            }
            if node.is_dir() {
                tx.put(&self.table, marks::pending(user, id, id), None);
            }
            self.log_events(&mut tx, user, seq, &mut events);
            if let TxOutcome::Done = self.commit(tx).await? {
                if node.is_dir() {
                    self.mark_after_commit(user).await;
                }
                let [ev] = events;
                return Ok((node, ev));
            }
        }
        Err(too_many())
    }

    async fn changes_since(
        &self,
        user: &UserId,
        since: Seq,
        limit: u32,
    ) -> StoreResult<ChangePage> {
        let latest = self.latest_seq(user).await?;
        if since > latest {
            // A cursor from another life of this log.
            return Err(StoreError::CursorTooOld);
        }
        if since == latest || limit == 0 {
            return Ok(ChangePage {
                events: Vec::new(),
                latest_seq: latest,
                through: None,
            });
        }
        let now = unix_secs();
        let live = |item: &Item| -> StoreResult<bool> {
            Ok(opt_n::<u64>(item, TTL_ATTR)?.is_none_or(|t| t > now))
        };
        // A page cut short is fine here: the client reads on to `latest_seq`.
        let (mut items, _) = self
            .query_within(
                log_pk(user),
                Some(seq_sk(since)),
                None,
                Some(limit as usize),
                MAX_PAGE_BYTES,
            )
            .await?;
        // Query is read-committed: it may not see yet the log item of a transaction whose
        // counter the GetItem above saw. Only a serializable read of `since + 1` by its key
        // tells "not visible yet" (answer it) from "trimmed" (the cursor is too old).
        let first_key = seq_sk(since + 1);
        let starts_at_cursor = match items.first() {
            Some(item) => get_s(item, SK)? == first_key && live(item)?,
            None => false,
        };
        if !starts_at_cursor {
            match self.get(log_pk(user), first_key.clone()).await? {
                Some(item) if live(&item)? => {
                    items.retain(|i| i.get(SK).and_then(|v| v.as_s().ok()) != Some(&first_key));
                    items.insert(0, item);
                }
                _ => return Err(StoreError::CursorTooOld),
            }
        }
        // The contiguous prefix only: a hole is a change Query does not see yet, and a page
        // past it would make the device skip that change for good.
        let mut rows = Vec::with_capacity(items.len());
        for (item, want) in items.iter().zip(since + 1..) {
            if get_s(item, SK)? != seq_sk(want) || !live(item)? {
                break;
            }
            let json = get_s(item, "ev")?;
            let len = json.len();
            rows.push(Ok((json, len)));
        }
        let mut events = Vec::with_capacity(rows.len());
        for json in fill_page(rows, limit, MAX_PAGE_BYTES)?.entries {
            let ev: ChangeEvent = serde_json::from_str(&json)
                .map_err(|e| StoreError::Backend(format!("bad event in the log: {e}")))?;
            events.push(ev);
        }
        Ok(ChangePage {
            events,
            latest_seq: latest,
            through: None,
        })
    }

    async fn latest_seq(&self, user: &UserId) -> StoreResult<Seq> {
        match self.seq(user).await {
            Err(StoreError::NotFound) => Ok(0),
            other => other,
        }
    }

    async fn trim_log(&self, user: &UserId, before_ns: i64) -> StoreResult<()> {
        // The log stays a contiguous suffix: drop every event up to the newest one older than
        // the cut, never the newest event of all.
        let items = self.query(log_pk(user), None, None, None).await?;
        let Some((_newest, older)) = items.split_last() else {
            return Ok(());
        };
        let mut cut = None;
        for (i, item) in older.iter().enumerate() {
            if get_n::<i64>(item, "at")? < before_ns {
                cut = Some(i);
            }
        }
        let Some(cut) = cut else { return Ok(()) };
        self.batch_write(older[..=cut].iter().map(Self::delete_req).collect())
            .await
    }

    async fn referenced_blocks(&self, user: &UserId) -> StoreResult<Vec<String>> {
        let mut out = Vec::new();
        for prefix in ["N#", "V#"] {
            for item in self.query(user_pk(user), None, Some(prefix), None).await? {
                out.extend(read_node(&item)?.blocks);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn purge_trash(&self, user: &UserId, before_ns: i64) -> StoreResult<usize> {
        let _writing = self.write_lock(user).await;
        let mut purged = 0;
        for item in self.query(trash_pk(user), None, None, None).await? {
            if get_n::<i64>(&item, "at")? >= before_ns {
                continue;
            }
            let top = read_node(&item)?;
            // The top's pointer (only while it is still in the trash: a restore racing this
            // purge wins) and the trash entry go together; then the subtree below, which
            // nothing reaches any more. A purge cut short there leaves unreachable items
            // behind, never a half-deleted live tree.
            let mut tx = Tx::default();
            let mut c = Cond::version(top.version);
            c.expr.push_str(" AND attribute_exists(#ta)");
            c.names.insert("#ta".into(), "trash_at".into());
            tx.delete(&self.table, key(user_pk(user), node_sk(top.id)), Some(c));
            tx.delete(&self.table, key(trash_pk(user), node_sk(top.id)), None);
            if let TxOutcome::Retry = self.commit(tx).await? {
                continue;
            }
            let mut deletes = Vec::new();
            let mut files = Vec::new();
            let mut dirs = vec![];
            match top.kind {
                NodeKind::Dir => dirs.push(top.id),
                NodeKind::File => files.push(top.id),
                NodeKind::Symlink => {}
            }
            while let Some(dir) = dirs.pop() {
                for entry in self.query(dir_pk(user, dir), None, None, None).await? {
                    let node = read_node(&entry)?;
                    match node.kind {
                        NodeKind::Dir => dirs.push(node.id),
                        NodeKind::File => files.push(node.id),
                        NodeKind::Symlink => {}
                    }
                    deletes.push(Self::delete_req(&entry));
                    deletes.push(Self::delete_req(&key(user_pk(user), node_sk(node.id))));
                }
            }
            for id in files {
                let prefix = versions_prefix(id);
                for v in self.query(user_pk(user), None, Some(&prefix), None).await? {
                    deletes.push(Self::delete_req(&v));
                }
            }
            self.batch_write(deletes).await?;
            purged += 1;
        }
        Ok(purged)
    }

    /// A file has at most [`MAX_VERSIONS`] versions, so they are read together (each item is
    /// at most 400 KB) and paged here.
    async fn list_versions(
        &self,
        user: &UserId,
        id: NodeId,
        before: Option<Version>,
        limit: u32,
    ) -> StoreResult<Page<FileVersion>> {
        if self.live(user, id).await?.kind != NodeKind::File {
            return Err(StoreError::NotFound);
        }
        let prefix = versions_prefix(id);
        let now = unix_secs();
        let mut out = Vec::new();
        for item in self.query(user_pk(user), None, Some(&prefix), None).await? {
            if opt_n::<u64>(&item, TTL_ATTR)?.is_some_and(|t| t < now) {
                continue; // expired, not yet deleted by DynamoDB
            }
            let node = read_node(&item)?;
            out.push(FileVersion {
                version: node.version,
                content: Content {
                    inline: None,
                    size: node.size,
                    blocks: node.blocks,
                },
                mtime_ns: node.mtime_ns,
                replaced_at_ns: get_n(&item, "at")?,
            });
        }
        out.sort_by_key(|v| std::cmp::Reverse(v.version));
        let rows = out
            .into_iter()
            .filter(|v| before.is_none_or(|b| v.version < b))
            .map(|v| {
                let len = json_len(&v);
                Ok((v, len))
            });
        fill_page(rows, limit, MAX_PAGE_BYTES)
    }

    async fn purge_versions(&self, user: &UserId, before_ns: i64) -> StoreResult<usize> {
        // Sort keys order each file's versions oldest first (20-digit versions).
        let items = self.query(user_pk(user), None, Some("V#"), None).await?;
        let mut per_file: HashMap<NodeId, Vec<&Item>> = HashMap::new();
        for item in &items {
            per_file.entry(get_n(item, "id")?).or_default().push(item);
        }
        let mut deletes = Vec::new();
        for versions in per_file.values() {
            let beyond = versions.len().saturating_sub(MAX_VERSIONS);
            for (i, item) in versions.iter().enumerate() {
                if i < beyond || get_n::<i64>(item, "at")? < before_ns {
                    deletes.push(Self::delete_req(item));
                }
            }
        }
        let purged = deletes.len();
        self.batch_write(deletes).await?;
        Ok(purged)
    }

    fn keeps_small_blocks(&self) -> bool {
        true
    }

    async fn small_block(&self, user: &UserId, hash: &str) -> StoreResult<Option<Vec<u8>>> {
        self.small_block_bytes(user, hash).await
    }

    async fn small_blocks_held(
        &self,
        user: &UserId,
        hashes: &[String],
    ) -> StoreResult<Vec<String>> {
        self.small_blocks_in(user, hashes).await
    }

    async fn collect_small_blocks(&self, user: &UserId) -> StoreResult<usize> {
        self.collect_unnamed_small_blocks(user).await
    }
}

impl DynamoStore {
    /// Whether `id` is `dir` or lies below it (walking up from `id` to the root).
    async fn is_below(&self, uid: &str, mut id: NodeId, dir: NodeId) -> StoreResult<bool> {
        for _ in 0..4096 {
            if id == dir {
                return Ok(true);
            }
            if id == ROOT_ID {
                return Ok(false);
            }
            id = match self.ptr(uid, id).await? {
                Some(p) => p.node.parent,
                None => return Ok(false),
            };
        }
        Err(StoreError::Backend(
            "the tree is deeper than 4096 levels".into(),
        ))
    }
}
