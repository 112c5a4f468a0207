//! The disk block cache: content blocks by SHA-256, in one folder, bounded in bytes (LRU).
//!
//! Blocks are immutable (content-addressed), so a cached block never goes stale; the cache
//! only has to be bounded, trustworthy and quick:
//! - **Bounded**: an in-memory LRU index (rebuilt from the folder at start, oldest mtime
//!   first) evicts the least recently used blocks when the total passes the capacity.
//! - **Verified**: a downloaded block is hashed before it is stored; a block already on disk
//!   is hashed on its first use by this process, and a corrupt one is deleted and fetched
//!   again. After that the block is trusted (the file is ours: written by rename, or a
//!   journal content file of this machine linked in, which never changes).
//! - **One fetch per block**: concurrent readers of a missing block wait on one download
//!   (a per-hash async lock), then all read the stored file.
//! - **Read-ahead**: [`BlockCache::prefetch`] claims several blocks at once, asks for their
//!   URLs in one request and downloads them concurrently in the background; a reader of a
//!   claimed block waits for that download rather than asking again.
//! - **Fetch-ahead**: [`BlockCache::fetch_ahead`] gathers the blocks of files other machines
//!   just wrote and fetches them together (one URL request per thousand blocks, sixteen
//!   downloads at a time), before anyone reads them.
//!
//! Reads go through a small table of open files, so a sequential read of a cached file costs
//! one `pread` per kernel request.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use jewel_wire::BlockHash;
use sha2::{Digest, Sha256};

use super::api::{Api, ApiErr};

#[derive(Debug, thiserror::Error)]
pub enum BlockErr {
    #[error("{0}")]
    Api(#[from] ApiErr),
    #[error("block {0} is not on the server")]
    Missing(String),
    #[error("block {0} came back with the wrong hash")]
    Corrupt(String),
    #[error("block cache: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Default)]
struct Lru {
    map: HashMap<String, (u64, u64)>,
    order: BTreeMap<u64, String>,
    tick: u64,
    used: u64,
}

impl Lru {
    fn touch(&mut self, hash: &str) -> bool {
        let Some(entry) = self.map.get_mut(hash) else {
            return false;
        };
        self.order.remove(&entry.1);
        self.tick += 1;
        entry.1 = self.tick;
        self.order.insert(self.tick, hash.to_string());
        true
    }
    fn add(&mut self, hash: &str, size: u64) {
        if self.touch(hash) {
            return;
        }
        self.tick += 1;
        self.map.insert(hash.to_string(), (size, self.tick));
        self.order.insert(self.tick, hash.to_string());
        self.used += size;
    }
    fn remove(&mut self, hash: &str) {
        if let Some((size, tick)) = self.map.remove(hash) {
            self.order.remove(&tick);
            self.used -= size;
        }
    }
    fn pop_oldest(&mut self) -> Option<String> {
        let (_, hash) = self.order.pop_first()?;
        if let Some((size, _)) = self.map.remove(&hash) {
            self.used -= size;
        }
        Some(hash)
    }
}

pub struct BlockCache {
    dir: PathBuf,
    capacity: u64,
    lru: Mutex<Lru>,
    verified: Mutex<HashSet<String>>,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    files: Mutex<HashMap<String, Arc<File>>>,
    api: Arc<dyn Api>,
    /// Blocks other machines' changes named, waiting to be fetched ahead (see
    /// [`BlockCache::fetch_ahead`]), and whether a task is fetching them.
    ahead: Mutex<(Vec<Claim>, bool)>,
}

/// A block claimed for one download: its hash and its fetch lock, held until the block is
/// stored or given up (readers of it wait on the lock meanwhile).
type Claim = (BlockHash, tokio::sync::OwnedMutexGuard<()>);

/// Downloads at once, per read-ahead or fetch-ahead request.
const DOWNLOADS_AT_ONCE: usize = 16;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl BlockCache {
    /// Opens (creating) the cache folder and indexes what it holds, oldest first.
    pub fn open(dir: &Path, capacity: u64, api: Arc<dyn Api>) -> std::io::Result<BlockCache> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !jewel_wire::is_block_hash(&name) {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let meta = entry.metadata()?;
            found.push((meta.modified().ok(), name, meta.len()));
        }
        found.sort();
        let mut lru = Lru::default();
        for (_, name, size) in found {
            lru.add(&name, size);
        }
        let cache = BlockCache {
            dir: dir.to_path_buf(),
            capacity,
            lru: Mutex::new(lru),
            verified: Mutex::new(HashSet::new()),
            inflight: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            api,
            ahead: Mutex::new((Vec::new(), false)),
        };
        cache.evict();
        Ok(cache)
    }

    pub fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(hash)
    }

    /// Bytes held on disk.
    pub fn used(&self) -> u64 {
        self.lru.lock().unwrap().used
    }

    /// Whether the block is cached and already verified: a read can be served at once.
    pub fn ready(&self, hash: &str) -> bool {
        self.verified.lock().unwrap().contains(hash) && self.lru.lock().unwrap().touch(hash)
    }

    /// Stores a block whose bytes are known to hash to `hash` (the caller hashed them).
    pub fn insert(&self, hash: &str, bytes: &[u8]) -> std::io::Result<()> {
        if self.lru.lock().unwrap().touch(hash) {
            return Ok(());
        }
        let tmp = self.tmp_name(hash);
        std::fs::write(&tmp, bytes)?;
        self.add_file(hash, &tmp, bytes.len() as u64)
    }

    /// Stores a block that is the whole of file `path` (`len` bytes hashing to `hash`, which
    /// the caller read) by linking that file into the cache: no copy and no new file. For
    /// the journal's content files, which never change once written (see `journal.rs`): a
    /// small file this machine wrote then costs the file system one new file, not two (new
    /// files are what a client making many small ones spends most of its time on). Falls
    /// back to copying `bytes` when the file system cannot link.
    pub fn insert_file(&self, hash: &str, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        if self.lru.lock().unwrap().touch(hash) {
            return Ok(());
        }
        let tmp = self.tmp_name(hash);
        match std::fs::hard_link(path, &tmp) {
            Ok(()) => self.add_file(hash, &tmp, bytes.len() as u64),
            Err(_) => self.insert(hash, bytes),
        }
    }

    /// A unique temporary name: two writers of one block must never share a file.
    fn tmp_name(&self, hash: &str) -> PathBuf {
        static TMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = TMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir.join(format!(".{hash}.{}.{n}", std::process::id()))
    }

    /// Puts the finished file `tmp` in the cache as block `hash`.
    fn add_file(&self, hash: &str, tmp: &Path, len: u64) -> std::io::Result<()> {
        std::fs::rename(tmp, self.path(hash))?;
        self.lru.lock().unwrap().add(hash, len);
        self.verified.lock().unwrap().insert(hash.to_string());
        self.evict();
        Ok(())
    }

    fn evict(&self) {
        loop {
            let victim = {
                let mut lru = self.lru.lock().unwrap();
                if lru.used <= self.capacity || lru.map.len() <= 1 {
                    return;
                }
                lru.pop_oldest()
            };
            let Some(victim) = victim else { return };
            self.files.lock().unwrap().remove(&victim);
            self.verified.lock().unwrap().remove(&victim);
            let _ = std::fs::remove_file(self.path(&victim));
        }
    }

    fn forget(&self, hash: &str) {
        self.lru.lock().unwrap().remove(hash);
        self.verified.lock().unwrap().remove(hash);
        self.files.lock().unwrap().remove(hash);
        let _ = std::fs::remove_file(self.path(hash));
    }

    /// Reads from a ready block (see [`BlockCache::ready`]).
    pub fn read(&self, hash: &str, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let file = {
            let mut files = self.files.lock().unwrap();
            match files.get(hash) {
                Some(f) => f.clone(),
                None => {
                    if files.len() > 256 {
                        files.clear();
                    }
                    let f = Arc::new(File::open(self.path(hash))?);
                    files.insert(hash.to_string(), f.clone());
                    f
                }
            }
        };
        let mut done = 0;
        while done < buf.len() {
            let n = file.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    /// Makes the block ready: verifies a cached copy once, or fetches it (one download for
    /// all concurrent callers).
    pub async fn get(self: &Arc<Self>, hash: &str) -> Result<(), BlockErr> {
        if self.ready(hash) {
            return Ok(());
        }
        let lock = {
            let mut inflight = self.inflight.lock().unwrap();
            inflight.entry(hash.to_string()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let result = self.get_locked(hash, None).await;
        self.inflight.lock().unwrap().remove(hash);
        result
    }

    async fn get_locked(self: &Arc<Self>, hash: &str, url: Option<String>) -> Result<(), BlockErr> {
        if self.ready(hash) {
            return Ok(());
        }
        let cached = self.lru.lock().unwrap().map.contains_key(hash);
        if cached {
            let me = self.clone();
            let h = hash.to_string();
            let good = tokio::task::spawn_blocking(move || {
                std::fs::read(me.path(&h))
                    .map(|b| sha256_hex(&b) == h)
                    .unwrap_or(false)
            })
            .await
            .unwrap_or(false);
            if good {
                self.verified.lock().unwrap().insert(hash.to_string());
                return Ok(());
            }
            tracing::warn!(block = hash, "cached block is corrupt; fetching it again");
            self.forget(hash);
        }
        let url = match url {
            Some(u) => u,
            None => {
                let urls = self.api.block_urls(vec![hash.to_string()]).await?;
                urls.urls
                    .into_iter()
                    .find(|u| u.hash == hash)
                    .map(|u| u.url)
                    .ok_or_else(|| BlockErr::Missing(hash.to_string()))?
            }
        };
        let bytes = self.api.get_block(&url).await?;
        let me = self.clone();
        let h = hash.to_string();
        tokio::task::spawn_blocking(move || {
            if sha256_hex(&bytes) != h {
                return Err(BlockErr::Corrupt(h));
            }
            me.insert(&h, &bytes)?;
            Ok(())
        })
        .await
        .map_err(|e| BlockErr::Io(std::io::Error::other(e)))?
    }

    /// Claims the blocks not cached and not on their way: each one's fetch lock is taken,
    /// so readers of it wait for the download that follows.
    fn claim(&self, hashes: Vec<BlockHash>) -> Vec<Claim> {
        let mut inflight = self.inflight.lock().unwrap();
        let mut claimed: Vec<Claim> = Vec::new();
        for h in hashes {
            if inflight.contains_key(&h)
                || self.lru.lock().unwrap().map.contains_key(&h)
                || claimed.iter().any(|(c, _)| *c == h)
            {
                continue;
            }
            let lock = Arc::new(tokio::sync::Mutex::new(()));
            let guard = lock.clone().try_lock_owned().expect("a new lock is free");
            inflight.insert(h.clone(), lock);
            claimed.push((h, guard));
        }
        claimed
    }

    /// Fetches the given blocks in the background (read-ahead), skipping ready ones and
    /// ones on their way. The blocks are claimed before this returns (each one's fetch lock
    /// taken), so a reader that wants one of them right after waits for this download
    /// instead of asking the service for the block's URL again: a cold read asks once per
    /// read-ahead window, not once per block per layer.
    pub fn prefetch(self: &Arc<Self>, hashes: Vec<BlockHash>) {
        let claimed = self.claim(hashes);
        if claimed.is_empty() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move { me.fetch_claimed(claimed).await });
    }

    /// Downloads blocks claimed by [`BlockCache::prefetch`]: one URL request for all, a few
    /// downloads at a time; each claim ends when its block is stored or given up.
    async fn fetch_claimed(self: &Arc<Self>, claimed: Vec<Claim>) {
        use futures::StreamExt;
        let wanted = claimed.iter().map(|(h, _)| h.clone()).collect();
        let mut urls: HashMap<BlockHash, String> = match self.api.block_urls(wanted).await {
            Ok(u) => u.urls.into_iter().map(|u| (u.hash, u.url)).collect(),
            Err(_) => HashMap::new(), // the readers that need them ask on their own
        };
        let downloads = claimed.into_iter().map(|(hash, guard)| {
            let url = urls.remove(&hash);
            async move {
                if let Some(url) = url {
                    let _ = self.get_locked(&hash, Some(url)).await;
                }
                self.inflight.lock().unwrap().remove(&hash);
                drop(guard);
            }
        });
        futures::stream::iter(downloads)
            .buffer_unordered(DOWNLOADS_AT_ONCE)
            .collect::<Vec<()>>()
            .await;
    }

    /// Fetches blocks ahead of any reader: those of small files other machines just wrote,
    /// so that opening them here costs no round trip (a sync folder has them on disk
    /// already). Claimed at once (a reader that comes first waits for this download rather
    /// than fetching on its own: one round trip each), gathered for a few milliseconds and
    /// fetched together, one URL request per [`MAX_HASHES_PER_REQUEST`] blocks; bounded by
    /// the cache's capacity like every block.
    pub fn fetch_ahead(self: &Arc<Self>, hashes: Vec<BlockHash>) {
        let claimed = self.claim(hashes);
        if claimed.is_empty() {
            return;
        }
        let mut ahead = self.ahead.lock().unwrap();
        ahead.0.extend(claimed);
        if ahead.1 {
            return;
        }
        ahead.1 = true;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                let next: Vec<Claim> = {
                    let mut ahead = me.ahead.lock().unwrap();
                    let n = ahead.0.len().min(jewel_wire::MAX_HASHES_PER_REQUEST);
                    if n == 0 {
                        ahead.1 = false;
                        return;
                    }
                    ahead.0.drain(..n).collect()
                };
                me.fetch_claimed(next).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::api::ApiResult;
    use async_trait::async_trait;
    use bytes::Bytes;
    use jewel_wire::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A service that only serves blocks, counting downloads (slowly, to let readers pile up).
    #[derive(Default)]
    struct BlockServer {
        blocks: Mutex<HashMap<String, Vec<u8>>>,
        downloads: AtomicUsize,
        url_requests: AtomicUsize,
    }

    fn offline<T>() -> ApiResult<T> {
        Err(ApiErr::Offline("not in this test".into()))
    }

    #[async_trait]
    impl Api for BlockServer {
        async fn me(&self) -> ApiResult<Me> {
            offline()
        }
        async fn get_node(&self, _: NodeId) -> ApiResult<Node> {
            offline()
        }
        async fn list_children(&self, _: NodeId, _: Option<String>) -> ApiResult<ListPage> {
            offline()
        }
        async fn create(&self, _: &CreateNode) -> ApiResult<Node> {
            offline()
        }
        async fn commit(&self, _: NodeId, _: &CommitContent) -> ApiResult<Node> {
            offline()
        }
        async fn move_node(&self, _: NodeId, _: &MoveNode) -> ApiResult<MoveResult> {
            offline()
        }
        async fn set_attr(&self, _: NodeId, _: &SetAttr) -> ApiResult<Node> {
            offline()
        }
        async fn delete(&self, _: NodeId, _: Version, _: bool) -> ApiResult<Node> {
            offline()
        }
        async fn register_device(&self, _: &str) -> ApiResult<Device> {
            offline()
        }
        async fn changes(&self, _: Seq, _: u32) -> ApiResult<ChangePage> {
            offline()
        }
        async fn poll(&self, _: DeviceId, _: Seq, _: u64) -> ApiResult<ChangePage> {
            offline()
        }
        async fn missing_blocks(&self, _: Vec<BlockHash>) -> ApiResult<MissingBlocks> {
            offline()
        }
        async fn batch(&self, _batch: &Batch) -> ApiResult<BatchAnswer> {
            offline()
        }
        async fn block_urls(&self, hashes: Vec<BlockHash>) -> ApiResult<BlockUrls> {
            self.url_requests.fetch_add(1, Ordering::SeqCst);
            let blocks = self.blocks.lock().unwrap();
            let urls = hashes
                .into_iter()
                .filter(|h| blocks.contains_key(h))
                .map(|h| BlockUrl {
                    url: format!("/blob/{h}"),
                    hash: h,
                })
                .collect();
            Ok(BlockUrls { urls })
        }
        async fn put_block(&self, _: &str, _: Bytes) -> ApiResult<()> {
            offline()
        }
        async fn get_block(&self, url: &str) -> ApiResult<Bytes> {
            self.downloads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let hash = url.trim_start_matches("/blob/");
            let bytes = self.blocks.lock().unwrap().get(hash).cloned();
            bytes
                .map(Bytes::from)
                .ok_or_else(|| ApiErr::Api(ApiError::new(ErrorCode::NotFound, "no block")))
        }
        fn set_device(&self, _: DeviceId) {}
    }

    fn serve(server: &BlockServer, bytes: &[u8]) -> String {
        let hash = sha256_hex(bytes);
        server
            .blocks
            .lock()
            .unwrap()
            .insert(hash.clone(), bytes.to_vec());
        hash
    }

    #[tokio::test]
    async fn concurrent_readers_share_one_download() {
        let dir = tempfile::tempdir().unwrap();
        let server = Arc::new(BlockServer::default());
        let hash = serve(&server, b"shared block");
        let cache = Arc::new(BlockCache::open(dir.path(), 1 << 20, server.clone()).unwrap());
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let cache = cache.clone();
                let hash = hash.clone();
                tokio::spawn(async move { cache.get(&hash).await.unwrap() })
            })
            .collect();
        for r in readers {
            r.await.unwrap();
        }
        assert_eq!(server.downloads.load(Ordering::SeqCst), 1);
        let mut buf = [0u8; 6];
        assert_eq!(cache.read(&hash, 7, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"block");
    }

    #[tokio::test]
    async fn a_reader_right_after_read_ahead_waits_for_it_instead_of_asking_again() {
        let dir = tempfile::tempdir().unwrap();
        let server = Arc::new(BlockServer::default());
        let hashes: Vec<String> = (0..3u8).map(|i| serve(&server, &[i; 100])).collect();
        let cache = Arc::new(BlockCache::open(dir.path(), 1 << 20, server.clone()).unwrap());
        // What a cold read does: the read-ahead of the window, then the read of its first
        // block, then the next read-ahead (the same window, all claimed already).
        cache.prefetch(hashes.clone());
        for h in &hashes {
            cache.get(h).await.unwrap();
        }
        cache.prefetch(hashes.clone());
        assert_eq!(server.url_requests.load(Ordering::SeqCst), 1);
        assert_eq!(server.downloads.load(Ordering::SeqCst), 3);
    }

    /// A journal content file linked in is the cached block without a second file, and it
    /// stays when the journal removes its own name.
    #[tokio::test]
    async fn a_content_file_linked_in_outlives_its_journal_name() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let server = Arc::new(BlockServer::default());
        let cache = BlockCache::open(&dir.path().join("blocks"), 1 << 20, server.clone()).unwrap();
        let content = dir.path().join("content");
        std::fs::write(&content, b"a small file").unwrap();
        let hash = sha256_hex(b"a small file");
        cache.insert_file(&hash, &content, b"a small file").unwrap();
        let linked = std::fs::metadata(cache.path(&hash)).unwrap();
        assert_eq!(linked.ino(), std::fs::metadata(&content).unwrap().ino());
        std::fs::remove_file(&content).unwrap();
        assert!(cache.ready(&hash));
        let mut buf = [0u8; 20];
        assert_eq!(cache.read(&hash, 0, &mut buf).unwrap(), 12);
        assert_eq!(&buf[..12], b"a small file");
        assert_eq!(server.downloads.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn least_recently_used_blocks_are_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let server = Arc::new(BlockServer::default());
        let cache = BlockCache::open(dir.path(), 2500, server).unwrap();
        let blocks: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 1000]).collect();
        let hashes: Vec<String> = blocks.iter().map(|b| sha256_hex(b)).collect();
        cache.insert(&hashes[0], &blocks[0]).unwrap();
        cache.insert(&hashes[1], &blocks[1]).unwrap();
        assert!(
            cache.ready(&hashes[0]),
            "touching block 0 makes block 1 the oldest"
        );
        cache.insert(&hashes[2], &blocks[2]).unwrap();
        assert!(cache.used() <= 2500);
        assert!(cache.ready(&hashes[0]));
        assert!(
            !cache.ready(&hashes[1]),
            "the least recently used block went"
        );
        assert!(!cache.path(&hashes[1]).exists());
        cache.insert(&hashes[3], &blocks[3]).unwrap();
        assert_eq!(cache.used(), 2000);
        // A reopened cache indexes what is on disk and keeps to its bound.
        drop(cache);
        let server = Arc::new(BlockServer::default());
        let reopened = BlockCache::open(dir.path(), 1500, server).unwrap();
        assert_eq!(reopened.used(), 1000);
    }

    #[tokio::test]
    async fn a_corrupt_cached_block_is_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let server = Arc::new(BlockServer::default());
        let hash = serve(&server, b"the real bytes");
        {
            let cache = Arc::new(BlockCache::open(dir.path(), 1 << 20, server.clone()).unwrap());
            cache.get(&hash).await.unwrap();
        }
        assert_eq!(server.downloads.load(Ordering::SeqCst), 1);
        // Flip the stored bytes behind the cache's back, then start again (a new process).
        std::fs::write(dir.path().join(&hash), b"the fake bytes").unwrap();
        let cache = Arc::new(BlockCache::open(dir.path(), 1 << 20, server.clone()).unwrap());
        assert!(!cache.ready(&hash), "not trusted before it is verified");
        cache.get(&hash).await.unwrap();
        assert_eq!(server.downloads.load(Ordering::SeqCst), 2, "refetched");
        let mut buf = vec![0u8; 14];
        cache.read(&hash, 0, &mut buf).unwrap();
        assert_eq!(buf, b"the real bytes");
        // An intact cached block is verified once and not fetched again.
        let again = Arc::new(BlockCache::open(dir.path(), 1 << 20, server.clone()).unwrap());
        again.get(&hash).await.unwrap();
        assert_eq!(server.downloads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_server_sending_wrong_bytes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let server = Arc::new(BlockServer::default());
        let hash = sha256_hex(b"expected");
        server
            .blocks
            .lock()
            .unwrap()
            .insert(hash.clone(), b"something else".to_vec());
        let cache = Arc::new(BlockCache::open(dir.path(), 1 << 20, server).unwrap());
        assert!(matches!(cache.get(&hash).await, Err(BlockErr::Corrupt(_))));
        assert!(!cache.path(&hash).exists());
    }
}
