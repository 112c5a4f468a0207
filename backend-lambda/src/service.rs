//! `Service`: the three stores and the settings every route shares, plus token handling.
//!
//! A `Service` is built once per process (by `jewel-server` or the Lambda `bootstrap`) and
//! handed to [`crate::api::router`]. Tokens are random 256-bit values shown to the user once;
//! the stores keep only their SHA-256, so a leaked database does not leak working tokens.

use std::sync::Arc;
use std::time::Duration;

use crate::blobs::local::LocalBlobStore;
use crate::blobs::url_key::UrlKey;
use crate::blobs::{sha256_hex, BlobStore};
use crate::bus::ChangeBus;
use crate::store::MetaStore;

/// Limits and timings of the API. Each default says why it is what it is.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest JSON request body. A commit of a 100 GiB file names 25,600 hashes of 67 bytes
    /// (~1.7 MB), so 4 MiB leaves room without letting a client exhaust memory.
    pub max_json_body: usize,
    /// Longest a long-poll waits before answering empty: below API Gateway's 30 s limit.
    pub max_poll: Duration,
    /// Largest page for listings and change feeds (pages are also cut at
    /// `jewel_wire::MAX_PAGE_BYTES` of JSON by the stores).
    pub max_page: u32,
    /// Most devices per user: each costs a queue and a send per change in AWS mode, so a user
    /// must not create them without end. 100 is far beyond a household's machines.
    pub max_devices: usize,
    /// Most machines waiting to be linked at once, server-wide: `POST /links` needs no token,
    /// so this bounds what strangers can make the store keep. Far more than people link
    /// within [`Limits::link_lifetime`]; a flood makes linking wait, nothing else.
    pub max_pending_links: usize,
    /// How long a link code can be approved: time to walk to another machine, sign in and
    /// type it, short enough that a code seen over a shoulder is soon worthless.
    pub link_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_json_body: 4 * 1024 * 1024,
            max_poll: Duration::from_secs(25),
            max_page: jewel_wire::MAX_PAGE,
            max_devices: 100,
            max_pending_links: 1000,
            link_lifetime: Duration::from_secs(600),
        }
    }
}

pub struct Service {
    pub meta: Arc<dyn MetaStore>,
    pub blobs: Arc<dyn BlobStore>,
    pub bus: Arc<dyn ChangeBus>,
    /// Set when blocks live in a local folder: the router then serves its signed URLs.
    pub local_blobs: Option<Arc<LocalBlobStore>>,
    /// Set when blocks live elsewhere (S3) but the metadata store keeps small ones
    /// (`MetaStore::keeps_small_blocks`): the router serves those at URLs signed with this
    /// key, shared by every process serving the same store (AWS mode: `aws::service`).
    pub kept_block_urls: Option<UrlKey>,
    pub limits: Limits,
    /// Keeps block garbage collection and commits apart: a commit that names blocks holds it
    /// shared from checking that its blocks exist until it is stored; the collector holds it
    /// exclusively while it decides and deletes. So a block the collector deletes is never
    /// named by a commit that slipped in between (that commit is refused with
    /// `missing_blocks` and its client uploads the block again). It guards one process only,
    /// which is why only the embedded server collects blocks this way (`maintenance.rs`); AWS
    /// mode collects through the table instead (`aws/block_gc.rs`).
    pub block_guard: tokio::sync::RwLock<()>,
    /// Recently checked tokens and devices (see `api/auth.rs`).
    pub auth_cache: crate::api::auth::AuthCache,
}

impl Service {
    pub fn new(
        meta: Arc<dyn MetaStore>,
        blobs: Arc<dyn BlobStore>,
        bus: Arc<dyn ChangeBus>,
    ) -> Service {
        Service {
            meta,
            blobs,
            bus,
            local_blobs: None,
            kept_block_urls: None,
            limits: Limits::default(),
            block_guard: tokio::sync::RwLock::new(()),
            auth_cache: Default::default(),
        }
    }

    /// The embedded service: SQLite and a block folder under `data`, the in-process bus.
    /// The folder is made private (0700; the database 0600, see `store::sqlite`), also when
    /// an older version created it open to other local users.
    pub fn embedded(data: &std::path::Path) -> anyhow::Result<Service> {
        Self::embedded_with(data, &crate::store::sqlite::SqliteOptions::default())
    }

    /// [`Service::embedded`] with chosen SQLite options (an admin command's longer wait).
    pub fn embedded_with(
        data: &std::path::Path,
        options: &crate::store::sqlite::SqliteOptions,
    ) -> anyhow::Result<Service> {
        private_dir(data)?;
        let meta = Arc::new(crate::store::sqlite::SqliteStore::open_with(
            &data.join("meta.db"),
            options,
        )?);
        let blobs = Arc::new(LocalBlobStore::open(&data.join("blocks"))?);
        let bus = Arc::new(crate::bus::local::LocalBus::default());
        let mut service = Service::new(meta, blobs.clone(), bus);
        service.local_blobs = Some(blobs);
        Ok(service)
    }
}

/// Creates `dir` (and missing parents) readable by its owner only, or takes group and other
/// access away from it when it exists.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// A new random token, `jwl_` and 64 hex digits.
pub fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("jwl_{}", hex::encode(bytes))
}

/// What the stores keep of a token.
pub fn token_hash(token: &str) -> String {
    sha256_hex(token.as_bytes())
}
