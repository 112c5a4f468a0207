//! The client core (started as the mount starts it: uploader running) against the real
//! router of a `jewel-server` process, with answers it must not take as final: the busy and
//! unreadable answers a proxy or API Gateway gives are retried until the change lands, and a
//! change the service refuses for good keeps its bytes in `<cache>/refused/`.
//!
//! The answers are injected by [`ScriptedApi`], a wrapper of the real HTTP client that
//! replaces chosen answers (the mount-level tests put a real HTTP proxy in between instead).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use integration_tests::Server;
use jewel_wire::*;
use jewelfs::core::api::{Api, ApiErr, ApiResult, HttpApi};
use jewelfs::core::{Config, Core};

/// The real API, whose next `busy` changing requests answer a transient failure first
/// (alternating 429 with `Retry-After`, a 503, and an HTML page), and which refuses for
/// good, with the service's own error, every create of a file named `refuse_name`.
struct ScriptedApi {
    inner: HttpApi,
    busy: AtomicU32,
    refuse_name: &'static str,
}

impl ScriptedApi {
    fn transient(&self) -> Option<ApiErr> {
        let left = self.busy.load(Ordering::Relaxed);
        if left == 0 {
            return None;
        }
        self.busy.store(left - 1, Ordering::Relaxed);
        Some(match left % 3 {
            0 => ApiErr::Busy {
                status: 429,
                retry_after: Some(Duration::from_millis(50)),
            },
            1 => ApiErr::Busy {
                status: 503,
                retry_after: None,
            },
            _ => ApiErr::Protocol("HTTP 502 Bad Gateway: <html>bad gateway</html>".into()),
        })
    }
}

#[async_trait]
impl Api for ScriptedApi {
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
        if let Some(e) = self.transient() {
            return Err(e);
        }
        if req.name == self.refuse_name {
            return Err(ApiErr::Api(ApiError::new(
                ErrorCode::BadRequest,
                "this name is not accepted here (test)",
            )));
        }
        self.inner.create(req).await
    }
    async fn commit(&self, id: NodeId, req: &CommitContent) -> ApiResult<Node> {
        if let Some(e) = self.transient() {
            return Err(e);
        }
        self.inner.commit(id, req).await
    }
    async fn move_node(&self, id: NodeId, req: &MoveNode) -> ApiResult<MoveResult> {
        if let Some(e) = self.transient() {
            return Err(e);
        }
        self.inner.move_node(id, req).await
    }
    async fn set_attr(&self, id: NodeId, req: &SetAttr) -> ApiResult<Node> {
        self.inner.set_attr(id, req).await
    }
    async fn delete(&self, id: NodeId, base_version: Version, recursive: bool) -> ApiResult<Node> {
        if let Some(e) = self.transient() {
            return Err(e);
        }
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
        // The scripts answer single requests: this service has no batches (as an older one).
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

async fn start(server: &Server, token: &str, dir: &std::path::Path, busy: u32) -> Arc<Core> {
    let api = Arc::new(ScriptedApi {
        inner: HttpApi::new(&server.url, token).unwrap(),
        busy: AtomicU32::new(busy),
        refuse_name: "refused.txt",
    });
    let core = Core::open(Config::new(dir.to_path_buf(), "dev".into()), api).unwrap();
    core.connect().await.unwrap();
    core.readdir(ROOT_ID).await.unwrap();
    tokio::spawn(core.clone().run_uploader());
    tokio::spawn(core.clone().run_listener());
    core
}

async fn write_file(core: &Core, name: &str, data: &[u8]) {
    let node = core.create_file(ROOT_ID, name, 0o644).await.unwrap();
    core.write(node.id, 0, data).unwrap();
    core.release(node.id, true).unwrap();
}

/// What the service holds at the top folder, by name (through the real API, no faults).
async fn service_names(server: &Server, token: &str) -> Vec<String> {
    let api = HttpApi::new(&server.url, token).unwrap();
    let page = api.list_children(ROOT_ID, None).await.unwrap();
    let mut names: Vec<String> = page.entries.into_iter().map(|n| n.name).collect();
    names.sort();
    names
}

#[test]
fn busy_and_unreadable_answers_are_retried_until_every_change_lands() {
    let server = Server::start();
    let token = server.add_user("busy");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        // The first 6 changing requests fail: 429s, 503s, a proxy's HTML page.
        let core = start(&server, &token, dir.path(), 6).await;
        for i in 0..6 {
            write_file(&core, &format!("f{i}.txt"), format!("file {i}").as_bytes()).await;
        }
        core.rename(ROOT_ID, "f0.txt", ROOT_ID, "renamed.txt", MoveMode::Replace)
            .await
            .unwrap();
        core.remove(ROOT_ID, "f1.txt", false).await.unwrap();
        let left = core.drain(Duration::from_secs(60)).await;
        assert_eq!(
            left,
            0,
            "changes still pending: {:?}",
            core.status().pending
        );
        let want: Vec<String> = ["f2.txt", "f3.txt", "f4.txt", "f5.txt", "renamed.txt"]
            .map(String::from)
            .to_vec();
        assert_eq!(service_names(&server, &token).await, want);
        assert!(
            core.status().last_error.is_none(),
            "{:?}",
            core.status().last_error
        );
    });
}

#[test]
fn content_refused_for_good_is_kept_where_the_user_can_see_it() {
    let server = Server::start();
    let token = server.add_user("refused");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let core = start(&server, &token, dir.path(), 0).await;
        write_file(&core, "refused.txt", b"the user's words").await;
        write_file(&core, "fine.txt", b"these go up").await;
        assert_eq!(core.drain(Duration::from_secs(30)).await, 0);
        assert_eq!(service_names(&server, &token).await, vec!["fine.txt"]);
        // The refused bytes are in the refused folder, under the file's name.
        let deadline = Instant::now() + Duration::from_secs(10);
        let kept = loop {
            let found: Vec<_> = std::fs::read_dir(core.refused_dir())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("refused (refused ")
                })
                .collect();
            if let Some(e) = found.first() {
                break e.path();
            }
            assert!(
                Instant::now() < deadline,
                "nothing kept in {:?}",
                core.refused_dir()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(std::fs::read(&kept).unwrap(), b"the user's words");
        let shown = core.status().last_error.unwrap_or_default();
        assert!(
            shown.contains("refused") && shown.contains("refused/"),
            "status: {shown}"
        );
    });
}
