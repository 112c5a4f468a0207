//! The service as the client sees it: one [`Api`] trait with every route the client uses, and
//! [`HttpApi`], its reqwest implementation (rustls, the workspace's one TLS stack).
//!
//! Why a trait: the core is tested against a fake service (and a test can wrap the real one
//! to inject latency or failures) without a network. Every method returns [`ApiErr`], which
//! separates "the service said no" (an [`ApiError`] body with a code the client knows) from
//! everything else, which is **transient** ([`ApiErr::is_transient`]): keep the change and
//! try again later. Transient covers more than an unreachable service: a 5xx, 408 or 429
//! with any body (API Gateway's throttling answers `429 {"message":"Too Many Requests"}`),
//! and any answer that is not the service's own JSON (a proxy's HTML page, a 413 from a
//! proxy's body limit, a torn body). An answer the client does not understand is never a
//! reason to give up on a user's change.
//!
//! **The token can change under a running mount**: when the service refuses it (401) and
//! the token came from the config file, the file is read again, and a new token there (the
//! machine was linked again with `jewelfs login`) is used from the next request on. So an
//! unlinked machine's mount waits offline with its pending changes and uploads them once it
//! is linked again, without a remount.
//!
//! Block URLs may be relative (`/blob/...`, the embedded server) or absolute (presigned S3);
//! relative ones are joined to the server's base URL here, so callers never care.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use jewel_wire::*;

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiErr {
    /// The service could not be reached (connection refused, reset, timeout).
    #[error("server unreachable: {0}")]
    Offline(String),
    /// The service (or something in front of it) asked us to come back later: 408, 429,
    /// 502, 503, 504, with the wait it named (`Retry-After`), if any.
    #[error("server busy (HTTP {status}){}", retry_after.map(|d| format!(", retry after {} s", d.as_secs_f32())).unwrap_or_default())]
    Busy {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// The service answered with an error body.
    #[error("{0}")]
    Api(ApiError),
    /// The service answered something we cannot read.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

impl ApiErr {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ApiErr::Api(e) => Some(e.code),
            _ => None,
        }
    }
    /// The service was not reached at all (no answer).
    pub fn is_offline(&self) -> bool {
        matches!(self, ApiErr::Offline(_))
    }
    /// Worth trying again later, as it is: the service was not reached, was busy, failed
    /// inside, or answered something that is not its own JSON. Only an answer of the
    /// service's own with a code the client knows is final for a request.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiErr::Offline(_) | ApiErr::Busy { .. } | ApiErr::Protocol(_) => true,
            ApiErr::Api(e) => matches!(e.code, ErrorCode::Unavailable | ErrorCode::Internal),
        }
    }
    /// How long the service asked us to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiErr::Busy { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
    pub fn current(&self) -> Option<Node> {
        match self {
            ApiErr::Api(e) => e.current.as_deref().cloned(),
            _ => None,
        }
    }
}

pub type ApiResult<T> = Result<T, ApiErr>;

/// Every route of the service the client uses (see the table in `jewel_wire`).
#[async_trait]
pub trait Api: Send + Sync + 'static {
    async fn me(&self) -> ApiResult<Me>;
    async fn get_node(&self, id: NodeId) -> ApiResult<Node>;
    async fn list_children(&self, id: NodeId, after: Option<String>) -> ApiResult<ListPage>;
    async fn create(&self, req: &CreateNode) -> ApiResult<Node>;
    async fn commit(&self, id: NodeId, req: &CommitContent) -> ApiResult<Node>;
    async fn move_node(&self, id: NodeId, req: &MoveNode) -> ApiResult<MoveResult>;
    async fn set_attr(&self, id: NodeId, req: &SetAttr) -> ApiResult<Node>;
    async fn delete(&self, id: NodeId, base_version: Version, recursive: bool) -> ApiResult<Node>;
    async fn register_device(&self, name: &str) -> ApiResult<Device>;
    /// `POST /devices/{id}/listen`: how an already registered device listens now (in AWS
    /// mode, fresh credentials for its queue). `NotFound` when the service no longer knows
    /// the device. The default (for test services without the route) says exactly that, so
    /// a client registers anew.
    async fn renew_listen(&self, device: DeviceId) -> ApiResult<Device> {
        Err(ApiErr::Api(ApiError::new(
            ErrorCode::NotFound,
            format!("no device {device} here"),
        )))
    }
    async fn changes(&self, since: Seq, limit: u32) -> ApiResult<ChangePage>;
    async fn poll(&self, device: DeviceId, since: Seq, timeout_ms: u64) -> ApiResult<ChangePage>;
    async fn missing_blocks(&self, hashes: Vec<BlockHash>) -> ApiResult<MissingBlocks>;
    /// `POST /batch`. No default: a wrapper that forgot to forward it would silently turn
    /// batching off (a service without the route answers `NotFound`, and the uploader then
    /// sends changes one by one).
    async fn batch(&self, batch: &Batch) -> ApiResult<BatchAnswer>;
    async fn block_urls(&self, hashes: Vec<BlockHash>) -> ApiResult<BlockUrls>;
    async fn put_block(&self, url: &str, bytes: Bytes) -> ApiResult<()>;
    async fn get_block(&self, url: &str) -> ApiResult<Bytes>;
    /// Names this client's device on later mutating requests (echo suppression).
    fn set_device(&self, id: DeviceId);
}

/// Where a new token may be found when the service refuses ours (the config file).
pub type TokenSource = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// The HTTP implementation.
pub struct HttpApi {
    base: String,
    token: std::sync::RwLock<String>,
    token_source: Option<TokenSource>,
    client: reqwest::Client,
    device: AtomicU64,
    /// The request id of the registration under way: drawn for the first try, sent again with
    /// every retry until one is answered, so a try stored by the service whose answer was
    /// lost is found again instead of becoming a second device.
    registration: std::sync::Mutex<Option<String>>,
    /// Ask for every change of the user, not only those in the folders this device listed
    /// (`every_folder=true` on the change feed and the long-poll): a mount that replays other
    /// machines' changes for inotify watchers needs them, as a program may watch a folder it
    /// never read.
    every_folder: bool,
}

impl HttpApi {
    pub fn new(base: &str, token: &str) -> anyhow::Result<HttpApi> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .pool_max_idle_per_host(16)
            .tcp_nodelay(true)
            .build()?;
        Ok(HttpApi {
            base: base.trim_end_matches('/').to_string(),
            token: std::sync::RwLock::new(token.to_string()),
            token_source: None,
            client,
            device: AtomicU64::new(0),
            registration: std::sync::Mutex::new(None),
            every_folder: false,
        })
    }

    /// Hears every change of the user (see `every_folder`).
    pub fn hearing_every_folder(mut self, on: bool) -> HttpApi {
        self.every_folder = on;
        self
    }

    /// Reads a new token from `source` whenever the service refuses the current one.
    pub fn with_token_source(mut self, source: TokenSource) -> HttpApi {
        self.token_source = Some(source);
        self
    }

    /// The service refused our token: take a different one from the token source, if any.
    fn token_refused(&self) {
        let Some(fresh) = self.token_source.as_ref().and_then(|source| source()) else {
            return;
        };
        let mut token = self.token.write().unwrap();
        if *token != fresh {
            tracing::info!(
                "the service refused this machine's token; using the new one in the config file"
            );
            *token = fresh;
        }
    }

    /// A change-feed request asking for every folder when this client does.
    fn scoped(&self, b: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if self.every_folder {
            b.query(&[("every_folder", "true")])
        } else {
            b
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}{}", self.base, API_PREFIX, path)
    }

    fn abs(&self, url: &str) -> String {
        if url.starts_with("http://") || url.starts_with("https://") {
            url.to_string()
        } else {
            format!("{}{}", self.base, url)
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut b = self
            .client
            .request(method, self.url(path))
            .bearer_auth(self.token.read().unwrap().as_str())
            .timeout(Duration::from_secs(60));
        let dev = self.device.load(Ordering::Relaxed);
        if dev != 0 {
            b = b.header(DEVICE_HEADER, dev.to_string());
        }
        b
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        b: reqwest::RequestBuilder,
    ) -> ApiResult<T> {
        let resp = b.send().await.map_err(net_err)?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            self.token_refused();
        }
        let retry_after = retry_after(resp.headers());
        let body = resp.bytes().await.map_err(net_err)?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| ApiErr::Protocol(format!("{e}: {}", excerpt(&body))));
        }
        Err(status_err(status, retry_after, &body))
    }
}

fn net_err(e: reqwest::Error) -> ApiErr {
    ApiErr::Offline(e.to_string())
}

/// The first bytes of a body, for a message (an HTML error page can be long).
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    if body.len() > 200 {
        format!("{text}…")
    } else {
        text
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare from APIs; it is ignored), capped
/// at ten minutes so a wrong header cannot park the client for a day.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: f64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(600.0)))
}

/// Classifies an answer that is not a success (see the module doc: only the service's own
/// JSON error is final; busy statuses are transient whatever their body says).
pub fn status_err(
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> ApiErr {
    if matches!(status.as_u16(), 408 | 429 | 502 | 503 | 504) {
        return ApiErr::Busy {
            status: status.as_u16(),
            retry_after,
        };
    }
    match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => ApiErr::Api(e),
        Err(_) => ApiErr::Protocol(format!("HTTP {status}: {}", excerpt(body))),
    }
}

#[async_trait]
impl Api for HttpApi {
    async fn me(&self) -> ApiResult<Me> {
        self.send(
            self.req(reqwest::Method::GET, "/me")
                .timeout(Duration::from_secs(5)),
        )
        .await
    }
    async fn get_node(&self, id: NodeId) -> ApiResult<Node> {
        self.send(self.req(reqwest::Method::GET, &format!("/nodes/{id}")))
            .await
    }
    async fn list_children(&self, id: NodeId, after: Option<String>) -> ApiResult<ListPage> {
        let mut b = self
            .req(reqwest::Method::GET, &format!("/nodes/{id}/children"))
            .query(&[("limit", MAX_PAGE.to_string())]);
        if let Some(a) = after {
            b = b.query(&[("after", a)]);
        }
        self.send(b).await
    }
    async fn create(&self, req: &CreateNode) -> ApiResult<Node> {
        self.send(self.req(reqwest::Method::POST, "/nodes").json(req))
            .await
    }
    async fn commit(&self, id: NodeId, req: &CommitContent) -> ApiResult<Node> {
        self.send(
            self.req(reqwest::Method::PUT, &format!("/nodes/{id}/content"))
                .json(req),
        )
        .await
    }
    async fn move_node(&self, id: NodeId, req: &MoveNode) -> ApiResult<MoveResult> {
        self.send(
            self.req(reqwest::Method::POST, &format!("/nodes/{id}/move"))
                .json(req),
        )
        .await
    }
    async fn set_attr(&self, id: NodeId, req: &SetAttr) -> ApiResult<Node> {
        self.send(
            self.req(reqwest::Method::PATCH, &format!("/nodes/{id}"))
                .json(req),
        )
        .await
    }
    async fn delete(&self, id: NodeId, base_version: Version, recursive: bool) -> ApiResult<Node> {
        let b = self
            .req(reqwest::Method::DELETE, &format!("/nodes/{id}"))
            .query(&[
                ("base_version", base_version.to_string()),
                ("recursive", recursive.to_string()),
            ]);
        self.send(b).await
    }
    async fn register_device(&self, name: &str) -> ApiResult<Device> {
        let request_id = self
            .registration
            .lock()
            .unwrap()
            .get_or_insert_with(|| format!("{:032x}", rand::random::<u128>()))
            .clone();
        let body = RegisterDevice {
            name: name.to_string(),
            request_id: Some(request_id),
        };
        let answer = self
            .send(self.req(reqwest::Method::POST, "/devices").json(&body))
            .await;
        if answer.is_ok() {
            // Registered: a later registration (the service forgot this device) is another.
            *self.registration.lock().unwrap() = None;
        }
        answer
    }
    async fn renew_listen(&self, device: DeviceId) -> ApiResult<Device> {
        self.send(self.req(reqwest::Method::POST, &format!("/devices/{device}/listen")))
            .await
    }
    async fn changes(&self, since: Seq, limit: u32) -> ApiResult<ChangePage> {
        let b = self
            .req(reqwest::Method::GET, "/changes")
            .query(&[("since", since.to_string()), ("limit", limit.to_string())]);
        self.send(self.scoped(b)).await
    }
    async fn poll(&self, device: DeviceId, since: Seq, timeout_ms: u64) -> ApiResult<ChangePage> {
        let b = self
            .req(reqwest::Method::GET, &format!("/devices/{device}/poll"))
            .query(&[
                ("since", since.to_string()),
                ("timeout_ms", timeout_ms.to_string()),
            ])
            .timeout(Duration::from_millis(timeout_ms + 15_000));
        self.send(self.scoped(b)).await
    }
    async fn missing_blocks(&self, hashes: Vec<BlockHash>) -> ApiResult<MissingBlocks> {
        let body = BlockHashes { hashes };
        self.send(
            self.req(reqwest::Method::POST, "/blocks/missing")
                .json(&body),
        )
        .await
    }
    async fn block_urls(&self, hashes: Vec<BlockHash>) -> ApiResult<BlockUrls> {
        let body = BlockHashes { hashes };
        self.send(self.req(reqwest::Method::POST, "/blocks/urls").json(&body))
            .await
    }
    async fn batch(&self, batch: &Batch) -> ApiResult<BatchAnswer> {
        self.send(self.req(reqwest::Method::POST, "/batch").json(batch))
            .await
    }
    async fn put_block(&self, url: &str, bytes: Bytes) -> ApiResult<()> {
        let resp = self
            .client
            .put(self.abs(url))
            .header("content-type", "application/octet-stream")
            // S3 verifies the bytes against this (its presigned URLs sign the header); the
            // local block store verifies the hash itself and ignores it.
            .header("x-amz-checksum-sha256", sha256_base64(&bytes))
            .timeout(Duration::from_secs(120))
            .body(bytes)
            .send()
            .await
            .map_err(net_err)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let wait = retry_after(resp.headers());
        let body = resp.bytes().await.map_err(net_err)?;
        Err(status_err(status, wait, &body))
    }
    async fn get_block(&self, url: &str) -> ApiResult<Bytes> {
        let resp = self
            .client
            .get(self.abs(url))
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .map_err(net_err)?;
        let status = resp.status();
        let wait = retry_after(resp.headers());
        let body = resp.bytes().await.map_err(net_err)?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(status_err(status, wait, &body))
        }
    }
    fn set_device(&self, id: DeviceId) {
        self.device.store(id, Ordering::Relaxed);
    }
}

/// The block's SHA-256 as S3's `x-amz-checksum-sha256` wants it: base64 of the raw digest.
fn sha256_base64(bytes: &[u8]) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod registration_tests {
    //! A registration whose answer was lost is retried with the same request id (so the
    //! service finds the device the first try made); a new registration draws a new one.

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Answers each `POST /devices` with the next status of `statuses` (a device for a
    /// success), and hands back the request ids it was sent.
    async fn service(statuses: Vec<u16>) -> (String, tokio::task::JoinHandle<Vec<Option<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for status in statuses {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                let body = loop {
                    let mut chunk = [0u8; 4096];
                    let n = conn.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "the request ended early");
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let len: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break buf[end + 4..end + 4 + len].to_vec();
                    }
                };
                let req: RegisterDevice = serde_json::from_slice(&body).unwrap();
                seen.push(req.request_id);
                let answer = if status < 300 {
                    serde_json::to_string(&Device {
                        id: 7,
                        name: req.name,
                        listen: Listen::Poll,
                    })
                    .unwrap()
                } else {
                    r#"{"code":"internal","message":"the store failed"}"#.to_string()
                };
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    answer.len()
                );
                conn.write_all(head.as_bytes()).await.unwrap();
                conn.write_all(answer.as_bytes()).await.unwrap();
            }
            seen
        });
        (base, task)
    }

    #[tokio::test]
    async fn a_retried_registration_sends_the_same_request_id_and_a_new_one_another() {
        let (base, seen) = service(vec![500, 201, 201]).await;
        let api = HttpApi::new(&base, "jwl_test").unwrap();
        assert!(api.register_device("laptop").await.is_err());
        assert_eq!(api.register_device("laptop").await.unwrap().id, 7);
        api.register_device("laptop").await.unwrap();
        let seen = seen.await.unwrap();
        let ids: Vec<&str> = seen.iter().map(|s| s.as_deref().unwrap()).collect();
        assert!(
            ids.iter().all(|id| jewel_wire::valid_request_id(id)),
            "{ids:?}"
        );
        assert_eq!(ids[0], ids[1], "the retry is the same registration");
        assert_ne!(ids[1], ids[2], "a registration after a success is another");
    }
}
