//! A block collected as garbage between a client's block upload and its commit: the service
//! refuses the commit (`missing_blocks`), and the client must upload the block again and
//! commit — never drop the change.
//!
//! The server's collector deletes blocks that nothing references and that are older than an
//! hour; a client that uploaded (or found present) a block and then stayed away from the
//! commit for that long meets exactly this. Here the deletion is forced at the worst moment: a
//! wrapper around the real HTTP API deletes the blocks a commit names from the server's block
//! folder just before sending that commit, once. Real server process, real SQLite, the
//! client core without FUSE.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use integration_tests::{sha256_hex, Server};
use jewel_wire::*;
use jewelfs::core::api::{Api, ApiErr, ApiResult, HttpApi};
use jewelfs::core::{Config, Core};

/// The HTTP API, except that the first commit naming blocks finds them deleted on the server.
struct CollectingApi {
    inner: HttpApi,
    blocks_dir: PathBuf,
    deleted: AtomicUsize,
}

impl CollectingApi {
    /// Deletes these blocks from the server's folder (`<user>/<xx>/<hash>`), the first time.
    fn collect_once(&self, blocks: &[BlockHash]) {
        if blocks.is_empty() || self.deleted.load(Ordering::SeqCst) > 0 {
            return;
        }
        for hash in blocks {
            for user in std::fs::read_dir(&self.blocks_dir).unwrap().flatten() {
                let path = user.path().join(&hash[..2]).join(hash);
                if std::fs::remove_file(&path).is_ok() {
                    self.deleted.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

#[async_trait]
impl Api for CollectingApi {
    async fn me(&self) -> ApiResult<Me> {
        self.inner.me().await
    }
    async fn get_node(&self, id: NodeId) -> ApiResult<Node> {
        self.inner.get_node(id).await
    }
    async fn list_children(&self, id: NodeId, after: Option<String>) -> ApiResult<ListPage> {
        self.inner.list_children(id, after).await
    }
    async fn create(&self, req: &CreateNode) -> ApiResult<Node> {
        if let NewKind::File { content } = &req.kind {
            self.collect_once(&content.blocks);
        }
        self.inner.create(req).await
    }
    async fn commit(&self, id: NodeId, req: &CommitContent) -> ApiResult<Node> {
        self.collect_once(&req.content.blocks);
        self.inner.commit(id, req).await
    }
    async fn move_node(&self, id: NodeId, req: &MoveNode) -> ApiResult<MoveResult> {
        self.inner.move_node(id, req).await
    }
    async fn set_attr(&self, id: NodeId, req: &SetAttr) -> ApiResult<Node> {
        self.inner.set_attr(id, req).await
    }
    async fn delete(&self, id: NodeId, base_version: Version, recursive: bool) -> ApiResult<Node> {
        self.inner.delete(id, base_version, recursive).await
    }
    async fn register_device(&self, name: &str) -> ApiResult<Device> {
        self.inner.register_device(name).await
    }
    async fn renew_listen(&self, device: DeviceId) -> ApiResult<Device> {
        self.inner.renew_listen(device).await
    }
    async fn changes(&self, since: Seq, limit: u32) -> ApiResult<ChangePage> {
        self.inner.changes(since, limit).await
    }
    async fn poll(&self, device: DeviceId, since: Seq, timeout_ms: u64) -> ApiResult<ChangePage> {
        self.inner.poll(device, since, timeout_ms).await
    }
    async fn missing_blocks(&self, hashes: Vec<BlockHash>) -> ApiResult<MissingBlocks> {
        self.inner.missing_blocks(hashes).await
    }
    async fn batch(&self, _batch: &Batch) -> ApiResult<BatchAnswer> {
        // The race is staged on single commits: this service has no batches (as an older one).
        Err(ApiErr::Api(ApiError::new(
            ErrorCode::NotFound,
            "no such route",
        )))
    }
    async fn block_urls(&self, hashes: Vec<BlockHash>) -> ApiResult<BlockUrls> {
        self.inner.block_urls(hashes).await
    }
    async fn put_block(&self, url: &str, bytes: Bytes) -> ApiResult<()> {
        self.inner.put_block(url, bytes).await
    }
    async fn get_block(&self, url: &str) -> ApiResult<Bytes> {
        self.inner.get_block(url).await
    }
    fn set_device(&self, id: DeviceId) {
        self.inner.set_device(id)
    }
}

async fn read_on_server(api: &HttpApi, name: &str) -> Option<Vec<u8>> {
    let page = api.list_children(ROOT_ID, None).await.unwrap();
    let node = page.entries.into_iter().find(|n| n.name == name)?;
    let urls = api.block_urls(node.blocks.clone()).await.unwrap();
    let mut out = Vec::new();
    for hash in &node.blocks {
        let url = &urls.urls.iter().find(|u| &u.hash == hash)?.url;
        out.extend_from_slice(&api.get_block(url).await.unwrap());
    }
    Some(out)
}

/// Text repeated past the inline limit: such a file's block is uploaded on its own (a small
/// file's block travels inside its commit, where no collection can come between).
fn above_inline(text: &str) -> Vec<u8> {
    text.repeat(MAX_INLINE_BYTES / text.len() + 1).into_bytes()
}

async fn write_file(core: &Core, name: &str, data: &[u8]) {
    let id = match core.lookup(ROOT_ID, name).await {
        Ok(n) => {
            core.open_file(n.id, true, true).await.unwrap();
            n.id
        }
        Err(_) => core.create_file(ROOT_ID, name, 0o644).await.unwrap().id,
    };
    let id = core.resolve(id);
    core.write(id, 0, data).unwrap();
    core.release(id, true).unwrap();
}

#[test]
fn a_block_collected_before_the_commit_is_uploaded_again() {
    // The server (and its blocking admin calls) live outside the async runtime.
    let server = Server::start();
    let token = server.add_user("gina");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(collected_block_is_sent_again(&server, &token));
}

async fn collected_block_is_sent_again(server: &Server, token: &str) {
    let api = Arc::new(CollectingApi {
        inner: HttpApi::new(&server.url, token).unwrap(),
        blocks_dir: server.data.path().join("blocks"),
        deleted: AtomicUsize::new(0),
    });
    let cache = tempfile::tempdir().unwrap();
    let core = Core::open(
        Config::new(cache.path().join("c"), "laptop".into()),
        api.clone() as Arc<dyn Api>,
    )
    .unwrap();
    core.connect().await.expect("connect");
    core.tree.put(api.get_node(ROOT_ID).await.unwrap());
    core.readdir(ROOT_ID).await.unwrap();
    let uploader = tokio::spawn(core.clone().run_uploader());

    // A new file, then an edit of it: both commits meet a collected block once between them.
    let observer = HttpApi::new(&server.url, token).unwrap();
    let draft = above_inline("the first draft of the report");
    write_file(&core, "report.txt", &draft).await;
    assert_eq!(
        core.drain(Duration::from_secs(20)).await,
        0,
        "nothing left pending"
    );
    assert_eq!(
        api.deleted.load(Ordering::SeqCst),
        1,
        "the block was collected"
    );
    assert_eq!(
        read_on_server(&observer, "report.txt").await,
        Some(draft),
        "the create landed with its content"
    );
    assert_eq!(core.status().last_error, None, "no change was refused");

    api.deleted.store(0, Ordering::SeqCst);
    let edit = above_inline("the final report, longer than the draft");
    write_file(&core, "report.txt", &edit).await;
    assert_eq!(core.drain(Duration::from_secs(20)).await, 0);
    assert_eq!(api.deleted.load(Ordering::SeqCst), 1);
    assert_eq!(
        read_on_server(&observer, "report.txt").await,
        Some(edit.clone())
    );
    assert_eq!(core.status().last_error, None);
    // Every block the file names is on the server again.
    let hash = sha256_hex(&edit);
    assert!(observer
        .missing_blocks(vec![hash])
        .await
        .unwrap()
        .missing
        .is_empty());
    uploader.abort();
}
