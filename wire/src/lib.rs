//! The JewelFS wire protocol: every request, response, change event and error that crosses
//! between the client (`jewelfs`), the service (`backend-lambda`) and the web portal.
//!
//! These types are defined here once and imported by both sides, so the two can never drift.
//! Everything is JSON. Ids are `u64` values below 2^53 so that JavaScript (the portal) reads
//! them exactly. Times are nanoseconds since the Unix epoch (`i64`), UTC.
//!
//! The routes, all under [`API_PREFIX`] and all requiring `Authorization: Bearer <token>`:
//!
//! | method | path | body → answer |
//! |---|---|---|
//! | GET | `/me` | → [`Me`] |
//! | GET | `/nodes/{id}` | → [`Node`] |
//! | GET | `/nodes/{id}/children?after=&limit=` | → [`ListPage`] |
//! | GET | `/nodes/{id}/children/{name}` | → [`Node`] |
//! | GET | `/lookup?path=/a/b` | → [`Node`] |
//! | POST | `/nodes` | [`CreateNode`] → [`Node`] (201) |
//! | PUT | `/nodes/{id}/content` | [`CommitContent`] → [`Node`] |
//! | POST | `/nodes/{id}/move` | [`MoveNode`] → [`MoveResult`] |
//! | PATCH | `/nodes/{id}` | [`SetAttr`] → [`Node`] |
//! | DELETE | `/nodes/{id}?base_version=&recursive=` | → [`Node`] (the trashed node) |
//! | GET | `/nodes/{id}/versions?before=&limit=` | → [`VersionList`] (earlier contents of a file) |
//! | POST | `/nodes/{id}/versions/{version}/restore` | → [`Node`] (that content, as a new version) |
//! | GET | `/trash?after=&limit=` | → [`TrashPage`] |
//! | POST | `/trash/{id}/restore` | → [`Node`] |
//! | POST | `/devices` | [`RegisterDevice`] → [`Device`] |
//! | GET | `/changes?since=&limit=` | → [`ChangePage`], or 410 `cursor_too_old` |
//! | GET | `/devices/{id}/poll?since=&timeout_ms=` | → [`ChangePage`] (long-poll) |
//! | POST | `/devices/{id}/listen` | → [`Device`] (renewed `listen`, e.g. fresh credentials) |
//! | POST | `/batch` | [`Batch`] → [`BatchAnswer`] (many changes in one round trip) |
//! | POST | `/blocks/missing` | [`BlockHashes`] → [`MissingBlocks`] |
//! | POST | `/blocks/urls` | [`BlockHashes`] → [`BlockUrls`] |
//! | GET | `/devices` | → [`DeviceList`] (this user's machines: name, linked, last seen) |
//! | DELETE | `/devices/{id}` | → 204: unlink (its token stops working at once) |
//! | POST | `/links` (**no token**) | [`NewLink`] → [`LinkStarted`] (201): a machine asks to be linked |
//! | GET | `/links/{code}` | → [`LinkInfo`] (the machine waiting behind a code) |
//! | POST | `/links/{code}/approve` | → [`DeviceInfo`] (201): link it; its own token now works |
//!
//! **Linking a machine** (`jewelfs login`): the machine draws its own device token, keeps it,
//! and sends only its SHA-256 with `POST /links`; it gets a short code ([`LINK_CODE_LEN`]
//! letters and digits) to show its user, who approves it signed in to the portal
//! (`/#/link/CODE`). Approval stores the hash on a new device; the machine, polling `GET /me`
//! with its token (401 until then), is linked. A device token is bound to its device: its
//! requests are that device's whatever [`DEVICE_HEADER`] says.
//!
//! Every answer is bounded in bytes: a page (listing, trash, versions, change feed, long-poll)
//! stops at [`MAX_PAGE`] entries or once it holds about [`MAX_PAGE_BYTES`] of JSON, whichever
//! comes first, and always holds at least one entry when there is one. A page that was cut
//! says so (`next`, or a `latest_seq` beyond its last event): follow it. One entry is bounded
//! too: a file has at most [`MAX_FILE_BLOCKS`] blocks, so a node is at most about
//! [`MAX_NODE_JSON_BYTES`] of JSON.
//!
//! Mutating requests may carry [`DEVICE_HEADER`] naming the caller's device, so the change
//! events they cause say which device caused them (a client skips its own echoes). A
//! long-poll whose page holds only the caller's own changes may be held back up to a second,
//! for another device's change to go with it: own echoes arrive, but not one answer each.
//!
//! **Who hears what.** A device hears the changes in the folders it has listed, not every
//! change of its user: a listing (`GET /nodes/{id}/children`, first page) with
//! [`DEVICE_HEADER`] makes the service remember that the device watches that folder, from
//! the user's newest sequence number on, and the device's long-poll and its `GET /changes`
//! (with the header) then carry only events whose node is in, or moved out of, a watched
//! folder (or is a watched folder itself), with [`ChangePage::through`] saying how far the
//! page covers. A folder the device never listed costs it nothing: it lists it when it opens
//! it. A device that watches more than [`MAX_WATCHED_FOLDERS`] folders hears everything from
//! then on. A device may ask for every change anyway (`every_folder=true` on the long-poll and
//! the feed; a mount that replays changes for inotify watchers does). A service may also send
//! every event (AWS mode's queues do): `through` is then unset.

use serde::{Deserialize, Serialize};

/// Every API route lives under this prefix.
pub const API_PREFIX: &str = "/api/v1";
/// Header naming the device that makes a request.
pub const DEVICE_HEADER: &str = "x-jewel-device";
/// A device that has listed more folders than this hears every change of its user.
pub const MAX_WATCHED_FOLDERS: u64 = 50_000;
/// The id of every user's root directory.
pub const ROOT_ID: NodeId = 1;
/// Content is split into blocks of this size; a file of at most this size is one block.
pub const BLOCK_SIZE: u64 = 4 * 1024 * 1024;
/// Longest accepted name, in bytes (as most Linux filesystems).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest accepted symlink target, in bytes.
pub const MAX_SYMLINK_BYTES: usize = 4096;
/// Largest number of hashes in one block request.
pub const MAX_HASHES_PER_REQUEST: usize = 1024;
/// Largest page size for listings and change feeds.
pub const MAX_PAGE: u32 = 1000;
/// About the most JSON one page holds: a page takes entries while it holds less than this, so
/// it ends at most one entry beyond it (and a single larger entry still comes alone). 1 MiB
/// keeps every answer far below AWS Lambda's 6 MB response limit and a server's memory per
/// request small, while a page of ordinary nodes (~300 bytes each) still reaches [`MAX_PAGE`].
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;
/// Most blocks one file may have: 16,384 blocks of [`BLOCK_SIZE`] is a 64 GiB file, and its
/// block list (67 bytes of JSON per hash) about 1.1 MB. A larger file cannot be stored.
pub const MAX_FILE_BLOCKS: usize = 16 * 1024;
// A page (at most MAX_PAGE_BYTES and one entry beyond) stays far below Lambda's 6 MB.
const _: () = assert!(MAX_PAGE_BYTES + MAX_NODE_JSON_BYTES < 6_000_000 / 2);

/// Largest file size: [`MAX_FILE_BLOCKS`] full blocks.
pub const MAX_FILE_SIZE: u64 = MAX_FILE_BLOCKS as u64 * BLOCK_SIZE;
/// Upper bound of one node's JSON: its block list, a name and a symlink target of the longest
/// kinds with every byte escaped (`\u0001` is 6 bytes), and the fixed fields. Checked by a test.
pub const MAX_NODE_JSON_BYTES: usize =
    MAX_FILE_BLOCKS * 67 + 6 * (MAX_NAME_BYTES + MAX_SYMLINK_BYTES) + 512;

pub type NodeId = u64;
pub type DeviceId = u64;
pub type Seq = u64;
pub type Version = u64;
/// Lower-case hex SHA-256 of one block's bytes.
pub type BlockHash = String;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
}

/// A file, directory or symlink with everything `getattr`/`readdirplus` need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    /// The parent directory; the root is its own parent.
    pub parent: NodeId,
    /// The name within the parent; empty for the root.
    pub name: String,
    pub kind: NodeKind,
    /// Bytes of content (files), target length (symlinks), 0 (directories).
    pub size: u64,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Bumped by every change of content, place or attributes.
    pub version: Version,
    /// Content blocks in order (files only); each [`BLOCK_SIZE`] except the last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<BlockHash>,
    /// The target (symlinks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        self.kind == NodeKind::Dir
    }
}

/// File content as the service stores it: a size and the blocks that hold it.
///
/// A small file's content (1 to [`MAX_INLINE_BYTES`] bytes, so one block) may also carry its
/// bytes, `inline`, in the commit that stores it: the service stores that block itself, so
/// the writer needs no `blocks/missing` question and no upload round trips, and the change
/// event carries the bytes on to the other devices (see [`ChangeEvent::inline`]). The bytes
/// must be exactly the one block the content names (its SHA-256 and its size).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    pub size: u64,
    #[serde(default)]
    pub blocks: Vec<BlockHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<InlineBytes>,
}

/// The most bytes of content that travel inline ([`Content::inline`]). A few KiB: most
/// small files people keep (notes, configuration, source files) fit, and an event carrying
/// them stays a few KiB of JSON (a page of events stays within [`MAX_PAGE_BYTES`], a queue
/// message far within SQS's 256 KiB).
pub const MAX_INLINE_BYTES: usize = 4096;

/// Bytes inside JSON, as standard padded base64; at most [`MAX_INLINE_BYTES`] (a longer
/// string is refused before it is decoded, so reading one allocates a bounded amount).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct InlineBytes(pub Vec<u8>);

impl std::fmt::Debug for InlineBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InlineBytes({} bytes)", self.0.len())
    }
}

impl Serialize for InlineBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for InlineBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        if text.len() > MAX_INLINE_BYTES.div_ceil(3) * 4 {
            return Err(serde::de::Error::custom(format!(
                "inline content is at most {MAX_INLINE_BYTES} bytes"
            )));
        }
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(InlineBytes)
            .map_err(|e| serde::de::Error::custom(format!("inline content is not base64: {e}")))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Me {
    pub user: String,
    pub root: NodeId,
    /// The newest sequence number of this user's change log.
    pub latest_seq: Seq,
    /// Whether the service takes small files' bytes inline with their commit
    /// ([`Content::inline`]); an older service says nothing (false), and a client then
    /// uploads every block.
    #[serde(default)]
    pub inline_content: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListPage {
    pub entries: Vec<Node>,
    /// Pass as `after` for the next page; `None` when this page is the last.
    #[serde(default)]
    pub next: Option<String>,
}

/// What to create: a file with content, a directory or a symlink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum NewKind {
    File {
        #[serde(default)]
        content: Content,
    },
    Dir,
    Symlink {
        target: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateNode {
    pub parent: NodeId,
    pub name: String,
    #[serde(flatten)]
    pub kind: NewKind,
    /// Permission bits; defaults to 0o644 for files, 0o755 for directories, 0o777 symlinks.
    #[serde(default)]
    pub mode: Option<u32>,
    /// Modification time; defaults to the server's now.
    #[serde(default)]
    pub mtime_ns: Option<i64>,
}

/// New content for a file, based on the version the writer started from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitContent {
    pub base_version: Version,
    pub content: Content,
    #[serde(default)]
    pub mtime_ns: Option<i64>,
}

/// The most changes one [`Batch`] may carry.
pub const MAX_BATCH_CHANGES: usize = 256;

/// `POST /batch`: changes applied in order, each exactly as its own route would apply it
/// (its own checks, its own change event, its own version), in one round trip. The first
/// change that fails ends the batch: the ones after it are not applied, so a batch means
/// what the same requests sent one after another and stopped at the first error would
/// mean. At most [`MAX_BATCH_CHANGES`] changes, and the body is bounded as every JSON body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    pub changes: Vec<Change>,
}

/// One change of a [`Batch`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// As `POST /nodes`.
    Create(CreateNode),
    /// As `PUT /nodes/{id}/content`.
    Commit { id: NodeId, commit: CommitContent },
    /// As `DELETE /nodes/{id}?base_version=` (never recursive).
    Remove { id: NodeId, base_version: Version },
    /// As `POST /nodes/{id}/move`, but a move in a batch never replaces or exchanges:
    /// `mode` must be `no_replace` (else 400 `bad_request`), and a taken target name ends
    /// the batch with 409 `exists` — also when the node is already there — so the client
    /// sends that move again on its own, where every rule for a taken name applies.
    Move { id: NodeId, mv: MoveNode },
    /// As `PATCH /nodes/{id}`.
    SetAttr { id: NodeId, attr: SetAttr },
}

/// The answer to a [`Batch`]: the node each applied change left (in order), and, when a
/// change failed, its error (that change is `changes[done.len()]`; none after it ran).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BatchAnswer {
    pub done: Vec<Node>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<ApiError>,
}

/// Rename and/or move, based on the version the mover saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveNode {
    pub base_version: Version,
    pub new_parent: NodeId,
    pub new_name: String,
    /// What to do when the target name is taken.
    #[serde(default)]
    pub mode: MoveMode,
    /// For `replace`: what the mover saw at the target name. When the name holds anything
    /// else now (another device's edit of the file, or a file made there meanwhile), the
    /// service refuses with 409 `exists` (its `current`: what is there), so the client can
    /// keep that as a conflict copy rather than send it to the trash. Absent: replace
    /// whatever is there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_target: Option<TargetExpect>,
}

/// What a `replace` move expects at its target name (see [`MoveNode::expect_target`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TargetExpect {
    /// The name is free.
    Free,
    /// The name holds this node at this version.
    Node { id: NodeId, version: Version },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveMode {
    /// POSIX `rename`: an existing target (file, or empty directory) is replaced and trashed.
    #[default]
    Replace,
    /// `RENAME_NOREPLACE`: refuse with 409 `exists` when the target name is taken.
    NoReplace,
    /// `RENAME_EXCHANGE`: swap the two nodes; the target must exist.
    Exchange,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveResult {
    pub node: Node,
    /// The node that was replaced (now in the trash) or exchanged (now at the old place).
    #[serde(default)]
    pub other: Option<Node>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SetAttr {
    #[serde(default)]
    pub mode: Option<u32>,
    #[serde(default)]
    pub mtime_ns: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrashEntry {
    /// The node as it was when deleted (its `parent`/`name` are where it lived).
    pub node: Node,
    pub deleted_at_ns: i64,
}

/// An earlier content of a file, kept after newer content replaced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVersion {
    /// The file's version number while it held this content.
    pub version: Version,
    pub content: Content,
    pub mtime_ns: i64,
    /// When newer content replaced it.
    pub replaced_at_ns: i64,
}

/// A file's earlier contents, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionList {
    pub versions: Vec<FileVersion>,
    /// Pass as `before` for the next (older) page; `None` when this page is the last.
    #[serde(default)]
    pub next: Option<Version>,
}

/// Tops of deleted subtrees, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrashPage {
    pub entries: Vec<TrashEntry>,
    /// Pass as `after` for the next page; `None` when this page is the last.
    #[serde(default)]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterDevice {
    pub name: String,
    /// A key the client draws once per registration and sends again with every retry of it
    /// (see [`valid_request_id`]): a retry whose first try was stored but whose answer was
    /// lost gets that device back instead of making a second one. Optional: without it every
    /// request makes a device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Whether `id` can be a [`RegisterDevice::request_id`]: 16 to 64 ASCII letters, digits, `-`
/// or `_` (enough to be unguessable, short enough to be a key).
pub fn valid_request_id(id: &str) -> bool {
    (16..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Characters of a link code, without separators (shown as `XXXX-XXXX`).
pub const LINK_CODE_LEN: usize = 8;
/// The letters and digits link codes are drawn from: no `0`/`O`, `1`/`I`, which people
/// confuse when they type a code they read on another screen.
pub const LINK_CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// A link code as people type it (any case, with or without `-` and spaces) in its one
/// stored form (`XXXX-XXXX`), or `None` when it cannot be a code.
pub fn normalize_link_code(text: &str) -> Option<String> {
    let raw: Vec<u8> = text
        .bytes()
        .filter(|b| !matches!(b, b'-' | b' '))
        .map(|b| b.to_ascii_uppercase())
        .collect();
    if raw.len() != LINK_CODE_LEN || !raw.iter().all(|b| LINK_CODE_ALPHABET.contains(b)) {
        return None;
    }
    let (a, b) = raw.split_at(LINK_CODE_LEN / 2);
    Some(format!(
        "{}-{}",
        std::str::from_utf8(a).ok()?,
        std::str::from_utf8(b).ok()?
    ))
}

/// `POST /links`: a machine asks to be linked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewLink {
    /// The machine's name, as its devices list will show it.
    pub name: String,
    /// SHA-256 (64 lower-case hex digits) of the device token the machine drew and keeps.
    pub token_sha256: String,
}

/// The answer to [`NewLink`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkStarted {
    /// The code to approve, `XXXX-XXXX`.
    pub code: String,
    /// The portal page that approves it (a path on the service: `/#/link/CODE`).
    pub approve_path: String,
    /// How long the code can be approved.
    pub expires_in_ms: u64,
}

/// A machine waiting to be linked, as the approving user sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkInfo {
    pub code: String,
    pub name: String,
    pub expires_at_ns: i64,
}

/// One of the user's machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub id: DeviceId,
    pub name: String,
    /// It has its own token (linked with a code); otherwise it uses the account's token, and
    /// unlinking only forgets it (the account token keeps working: reissue that one).
    pub linked: bool,
    /// When it was linked or registered (0 when not known: registered by an older version).
    pub created_at_ns: i64,
    /// When its token was last used (to within a minute; 0 when not known: devices without
    /// their own token are not tracked).
    pub last_seen_ns: i64,
    /// It is the device of the token that asked.
    #[serde(default)]
    pub this_device: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceList {
    pub devices: Vec<DeviceInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: DeviceId,
    pub name: String,
    /// How this device hears about changes made elsewhere.
    #[serde(default)]
    pub listen: Listen,
}

/// Where a device's change notifications come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum Listen {
    /// Long-poll `GET /devices/{id}/poll` on the service (the embedded `ChangeBus`).
    #[default]
    Poll,
    /// Receive from this device's own SQS queue (AWS mode) with long polling (20 s), deleting
    /// each message once applied. Every message body is a JSON [`ChangePage`]; messages may
    /// arrive twice or out of order (standard queue), so apply by sequence number and fall back
    /// to `GET /changes` on a gap (a page may carry no events, only a `latest_seq`: an event
    /// too large for a message, to be read from the feed). `credentials` allow only receiving
    /// from and deleting on this queue and expire at `credentials.expires_ns` (one hour): ask
    /// the service for this device's listener again before then (the service's
    /// `ChangeBus::register_device` for the same device id returns the same queue with fresh
    /// credentials).
    Sqs {
        queue_url: String,
        region: String,
        /// Set only when the service talks to an AWS-compatible endpoint other than AWS itself
        /// (loopback tests); the client then sends its SQS requests there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        credentials: SqsCredentials,
    },
}

/// Short-lived AWS credentials for one device's queue (from STS, narrowed by a session policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// When the credentials stop working, ns since the epoch.
    pub expires_ns: i64,
}

/// What one change did, as recorded in the user's change log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    /// The node was created, or its content, attributes or place changed: `node` is its new
    /// state; `from` is where it was before when it moved.
    Upsert,
    /// The node (and everything below it) went to the trash: `node` is its last state.
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    pub parent: NodeId,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub seq: Seq,
    pub op: ChangeOp,
    pub node: Node,
    /// The previous place of a moved node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Place>,
    /// The device whose request caused the change, when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    pub at_ns: i64,
    /// The file's content, when the change stored a small file's bytes inline
    /// ([`Content::inline`]): a device that hears the event caches it, so the file opens
    /// without asking the service. Verify it against the node's one block hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<InlineBytes>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangePage {
    pub events: Vec<ChangeEvent>,
    /// The newest sequence number the service knows for this user; a client whose cursor is
    /// below it after applying `events` asks again.
    pub latest_seq: Seq,
    /// Set when the page was chosen for one device (the long-poll, or `GET /changes` with
    /// [`DEVICE_HEADER`]): `events` are every event that device needs up to this sequence
    /// number — those in the folders it has listed (see "Who hears what" above) — so its
    /// cursor moves here once they are applied, past events it was not sent. Unset: `events`
    /// are every event after the cursor, in order and without gaps, and a gap means
    /// something was missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through: Option<Seq>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockHashes {
    pub hashes: Vec<BlockHash>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockUrl {
    pub hash: BlockHash,
    /// Absolute (`http://…`) or relative to the service's base URL (`/blob/…`).
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MissingBlocks {
    /// Upload URLs (HTTP PUT, body = the block's bytes) for each hash the store lacks.
    pub missing: Vec<BlockUrl>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockUrls {
    /// Download URLs (HTTP GET) for each requested hash the store has.
    pub urls: Vec<BlockUrl>,
}

/// Machine-readable error codes; each has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    InvalidName,
    Unauthorized,
    Forbidden,
    NotFound,
    /// The base version is stale: `current` holds the node as it is now.
    Conflict,
    /// The name is taken: `current` holds the node that has it.
    Exists,
    NotEmpty,
    NotADirectory,
    IsADirectory,
    /// A commit names blocks the store does not have.
    MissingBlocks,
    /// The change-log cursor is older than the retained log: re-list.
    CursorTooOld,
    PayloadTooLarge,
    /// Too many requests of this kind wait already (machines waiting to be linked): try again
    /// in a few minutes.
    TooManyRequests,
    Internal,
    Unavailable,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::InvalidName
            | ErrorCode::NotADirectory
            | ErrorCode::IsADirectory
            | ErrorCode::MissingBlocks => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict | ErrorCode::Exists | ErrorCode::NotEmpty => 409,
            ErrorCode::CursorTooOld => 410,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// For `conflict` and `exists`: the node as the service has it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Box<Node>>,
    /// For `missing_blocks`: the hashes the store lacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<BlockHash>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            current: None,
            missing: Vec::new(),
        }
    }

    pub fn with_current(mut self, node: Node) -> Self {
        self.current = Some(Box::new(node));
        self
    }
}

/// Why a name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a name cannot be empty")]
    Empty,
    #[error("a name cannot be '.' or '..'")]
    Dots,
    #[error("a name cannot contain '/'")]
    Slash,
    #[error("a name cannot contain NUL")]
    Nul,
    #[error("a name is at most {MAX_NAME_BYTES} bytes, this one has {0}")]
    TooLong(usize),
}

/// Checks one path component, the same way on both sides.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name == "." || name == ".." {
        return Err(NameError::Dots);
    }
    if name.contains('/') {
        return Err(NameError::Slash);
    }
    if name.contains('\0') {
        return Err(NameError::Nul);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong(name.len()));
    }
    Ok(())
}

/// Whether a string is a well-formed block hash (64 lower-case hex digits).
pub fn is_block_hash(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The number of blocks a file of `size` bytes has.
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert_eq!(check_name(".."), Err(NameError::Dots));
        assert_eq!(check_name("a/b"), Err(NameError::Slash));
        assert_eq!(check_name("a\0b"), Err(NameError::Nul));
        assert_eq!(check_name(&"x".repeat(256)), Err(NameError::TooLong(256)));
        assert_eq!(check_name(&"x".repeat(255)), Ok(()));
        assert_eq!(check_name("..."), Ok(()));
    }

    #[test]
    fn create_node_json_is_flat() {
        let body = r#"{"parent":1,"name":"a","kind":"file","content":{"size":0,"blocks":[]}}"#;
        let req: CreateNode = serde_json::from_str(body).unwrap();
        assert_eq!(
            req.kind,
            NewKind::File {
                content: Content::default()
            }
        );
        let dir: CreateNode =
            serde_json::from_str(r#"{"parent":1,"name":"d","kind":"dir"}"#).unwrap();
        assert_eq!(dir.kind, NewKind::Dir);
    }

    #[test]
    fn the_largest_node_fits_its_bound() {
        // Every byte of the name and the target escaped, the largest numbers, every block.
        let node = Node {
            id: u64::MAX,
            parent: u64::MAX,
            name: "\u{1}".repeat(MAX_NAME_BYTES),
            kind: NodeKind::Symlink,
            size: u64::MAX,
            mode: u32::MAX,
            mtime_ns: i64::MIN,
            version: u64::MAX,
            blocks: vec!["f".repeat(64); MAX_FILE_BLOCKS],
            target: Some("\u{1}".repeat(MAX_SYMLINK_BYTES)),
        };
        let len = serde_json::to_vec(&node).unwrap().len();
        assert!(len <= MAX_NODE_JSON_BYTES, "{len} > {MAX_NODE_JSON_BYTES}");
        assert_eq!(MAX_FILE_SIZE, 64 << 30);
        assert_eq!(block_count(MAX_FILE_SIZE), MAX_FILE_BLOCKS as u64);
    }

    #[test]
    fn block_counts() {
        assert_eq!(block_count(0), 0);
        assert_eq!(block_count(1), 1);
        assert_eq!(block_count(BLOCK_SIZE), 1);
        assert_eq!(block_count(BLOCK_SIZE + 1), 2);
    }
}
