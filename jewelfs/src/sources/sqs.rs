//! The AWS-mode [`ChangeSource`]: receive this device's change notifications from its own SQS
//! queue (`Listen::Sqs`).
//!
//! - **Credentials** are the short-lived ones the API handed out (STS, narrowed by a session
//!   policy to receive/delete on this one queue). The SQS client is built with exactly those,
//!   as static credentials: never the SDK's default chain, never instance metadata. Before
//!   they expire ([`RENEW_BEFORE`]), or when SQS refuses them, the source asks the API again
//!   (`POST /devices/{id}/listen`) and hands the new `Listen` back in its [`Batch`]
//!   (`renewed`); the listener keeps it and builds a new source for it.
//! - **Refused again and again** (IAM still propagating a new role, an SCP denying SQS, the
//!   queue deleted and not yet made again): the first refusal renews at once (credentials
//!   that expired early), each further one in a row waits before renewing, 1 s doubling to
//!   [`MAX_REFUSED_PAUSE`], and reads the change feed meanwhile. Renewal builds a new source,
//!   so the streak is kept per queue ([`Refusals`]), not in the source; a receive that works
//!   ends it. Without this a device renewed and received at API speed (thousands of STS calls,
//!   Lambda runs and SQS requests a minute).
//! - **SQS unreachable** (but perhaps not the service): the source asks for a catch-up from
//!   the change feed and pauses before its next receive (1 s doubling to 30 s), so an SQS
//!   outage neither spins nor marks the mount offline while the API answers.
//! - **Long polling**: `ReceiveMessage` with `WaitTimeSeconds` 20 (the SQS maximum), up to 10
//!   messages. A message arrives within the receive round trip; an idle device costs three
//!   receives a minute.
//! - **Visibility**: a message taken by a receive whose client is gone (a mount stopped during
//!   its long poll; SQS still answers that receive) returns after [`VISIBILITY_SECONDS`].
//! - **Delete after applying**: the listener calls [`ChangeSource::applied`] once the batch is
//!   in the tree; only then are the messages deleted (`DeleteMessageBatch`). A message whose
//!   delete fails comes back after the visibility timeout and is skipped as already applied.
//! - **Duplicates, order, gaps**: a standard queue may deliver twice and out of order; every
//!   body is a JSON `ChangePage`, applied by sequence number, so repeats are skipped and a gap
//!   (or a body we cannot read) sends the listener to the change feed (`catch_up`). A new
//!   source starts with a catch-up (events committed between the device's `GET /me` and its
//!   queue's creation reached no queue), except one that only carries renewed credentials
//!   for the queue already being read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use jewel_wire::{ChangePage, DeviceId, Seq, SqsCredentials};

use super::{Batch, ChangeSource};
use crate::core::api::{Api, ApiResult};

/// Long-poll wait of one receive: the SQS maximum, so an idle device costs the fewest requests.
pub const WAIT_SECONDS: i32 = 20;
/// How long a received message stays hidden from other receives. We delete it right after
/// applying it (milliseconds), so this only matters when a receive's answer goes nowhere: a
/// client that died (or unmounted) during its long poll leaves that receive waiting at SQS,
/// and the message it takes comes back to the next mount after this time, not the queue's
/// default 30 s. Too short only means a repeat, which is skipped by sequence number.
pub const VISIBILITY_SECONDS: i32 = 5;
/// The longest pause between receives while SQS cannot be reached.
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// The longest wait before renewing credentials that SQS keeps refusing.
pub const MAX_REFUSED_PAUSE: Duration = Duration::from_secs(5 * 60);

/// Refusals in a row per queue URL, kept across the sources that renewal rebuilds. It holds
/// only queues being refused right now (one per mount at most): a working receive removes
/// its entry.
struct Refusals;

static REFUSED: std::sync::Mutex<Vec<(String, u32)>> = std::sync::Mutex::new(Vec::new());

impl Refusals {
    /// Counts one more refusal of `queue`; the pause before renewing: none for the first,
    /// then 1 s doubling up to [`MAX_REFUSED_PAUSE`].
    fn refused(queue: &str) -> Duration {
        let mut all = REFUSED.lock().unwrap();
        let streak = match all.iter_mut().find(|(q, _)| q == queue) {
            Some((_, n)) => {
                *n = n.saturating_add(1);
                *n
            }
            None => {
                all.push((queue.to_string(), 1));
                1
            }
        };
        match streak {
            1 => Duration::ZERO,
            n => Duration::from_secs(1u64 << (n - 2).min(16)).min(MAX_REFUSED_PAUSE),
        }
    }

    /// A receive from `queue` worked: the streak is over.
    fn accepted(queue: &str) {
        REFUSED.lock().unwrap().retain(|(q, _)| q != queue);
    }
}

/// Renew the credentials this long before they expire: more than one long poll plus a slow
/// API answer, far less than their one-hour life.
pub const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

pub struct SqsSource {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    expires_ns: i64,
    /// Receipt handles of the last batch, deleted once it is applied.
    receipts: Vec<String>,
    started: bool,
    /// Receives failed in a row (SQS unreachable): the pause before the next one grows.
    failures: u32,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Error codes meaning "these credentials no longer work": renew them.
fn is_credentials_error(code: &str) -> bool {
    matches!(
        code,
        "ExpiredToken"
            | "ExpiredTokenException"
            | "InvalidClientTokenId"
            | "InvalidAccessKeyId"
            | "InvalidSecurity"
            | "AccessDenied"
            | "AccessDeniedException"
            | "SignatureDoesNotMatch"
            | "RequestExpired"
            | "UnrecognizedClientException"
    )
}

impl SqsSource {
    pub fn new(
        queue_url: &str,
        region: &str,
        endpoint: Option<&str>,
        creds: &SqsCredentials,
    ) -> SqsSource {
        let credentials = aws_sdk_sqs::config::Credentials::new(
            &creds.access_key_id,
            &creds.secret_access_key,
            creds.session_token.clone(),
            u64::try_from(creds.expires_ns)
                .ok()
                .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns)),
            "jewel-api",
        );
        let mut conf = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new(region.to_string()))
            .credentials_provider(credentials)
            .http_client(http_client())
            // A connection that dies silently (a laptop going to sleep) must not hold the
            // listener for ever: a receive answers within its wait, or it is given up.
            .timeout_config(
                aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(WAIT_SECONDS as u64 + 10))
                    .build(),
            );
        if let Some(ep) = endpoint {
            conf = conf.endpoint_url(ep);
        }
        SqsSource {
            client: aws_sdk_sqs::Client::from_conf(conf.build()),
            queue_url: queue_url.to_string(),
            expires_ns: creds.expires_ns,
            receipts: Vec::new(),
            started: false,
            failures: 0,
        }
    }

    /// This source only renews the credentials of one that read the same queue: it starts
    /// without reading the change feed.
    pub fn skip_catch_up(&mut self) {
        self.started = true;
    }
}

/// hyper on rustls with the ring provider: the workspace's one TLS stack.
fn http_client() -> aws_sdk_sqs::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

#[async_trait]
impl ChangeSource for SqsSource {
    async fn next_batch(
        &mut self,
        api: &dyn Api,
        device: DeviceId,
        _cursor: Seq,
    ) -> ApiResult<Batch> {
        if !self.started {
            self.started = true;
            return Ok(Batch {
                catch_up: true,
                ..Batch::default()
            });
        }
        if now_ns() + RENEW_BEFORE.as_nanos() as i64 >= self.expires_ns {
            tracing::debug!("queue credentials expire soon: renewing");
            let renewed = api.renew_listen(device).await?.listen;
            return Ok(Batch {
                renewed: Some(renewed),
                ..Batch::default()
            });
        }
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(WAIT_SECONDS)
            .visibility_timeout(VISIBILITY_SECONDS)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let code = e.code().unwrap_or_default().to_string();
                let msg = format!("SQS receive: {}", aws_err(&e));
                let missing =
                    code.contains("NonExistentQueue") || code.contains("QueueDoesNotExist");
                if is_credentials_error(&code) || missing {
                    // Renew (the service makes a missing queue again when it next sends to
                    // it); when refused again and again, only after a growing pause, reading
                    // the change feed meanwhile.
                    let pause = Refusals::refused(&self.queue_url);
                    if pause.is_zero() {
                        tracing::info!("{msg}: renewing the queue credentials");
                    } else {
                        tracing::warn!("{msg} again: renewing in {pause:?}");
                        tokio::time::sleep(pause).await;
                    }
                    let renewed = api.renew_listen(device).await?.listen;
                    return Ok(Batch {
                        pages: Vec::new(),
                        catch_up: missing || !pause.is_zero(),
                        renewed: Some(renewed),
                    });
                }
                // SQS unreachable says nothing about the service: read the feed from it (which
                // marks the mount offline only if the service is unreachable too) and try SQS
                // again after a growing pause.
                self.failures = (self.failures + 1).min(6);
                let pause = Duration::from_millis(500 << self.failures).min(MAX_PAUSE);
                tracing::warn!("{msg}: reading the change feed, retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                return Ok(Batch {
                    catch_up: true,
                    ..Batch::default()
                });
            }
        };
        self.failures = 0;
        Refusals::accepted(&self.queue_url);
        let mut batch = Batch::default();
        for m in out.messages() {
            if let Some(r) = m.receipt_handle() {
                self.receipts.push(r.to_string());
            }
            match serde_json::from_str::<ChangePage>(m.body().unwrap_or_default()) {
                Ok(page) => batch.pages.push(page),
                Err(e) => {
                    tracing::warn!("unreadable change message ({e}): reading the change feed");
                    batch.catch_up = true;
                }
            }
        }
        Ok(batch)
    }

    async fn applied(&mut self) {
        while !self.receipts.is_empty() {
            let n = self.receipts.len().min(10);
            let entries: Vec<_> = self
                .receipts
                .drain(..n)
                .enumerate()
                .filter_map(|(i, r)| {
                    aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .build()
                        .ok()
                })
                .collect();
            let res = self
                .client
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
            if let Err(e) = res {
                // They come back after the visibility timeout and are skipped as applied.
                tracing::debug!("SQS delete: {}", aws_err(&e));
            }
        }
    }
}

/// An SDK error with its whole chain of causes (the top one alone says "service error").
fn aws_err(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;
    use jewel_wire::*;

    use super::*;
    use crate::core::api::ApiErr;

    /// A service that only renews listeners (counting the calls); nothing else is reachable.
    /// Its listeners name `sqs` as the endpoint (port 9, which answers nothing, by default).
    #[derive(Default)]
    struct Renewer {
        renewals: AtomicU32,
        sqs: Option<String>,
    }

    impl Renewer {
        fn endpoint(&self) -> String {
            self.sqs
                .clone()
                .unwrap_or_else(|| "http://127.0.0.1:9".into())
        }
    }

    fn off<T>() -> ApiResult<T> {
        Err(ApiErr::Offline("not in this test".into()))
    }

    #[async_trait]
    impl Api for Renewer {
        async fn me(&self) -> ApiResult<Me> {
            off()
        }
        async fn get_node(&self, _: NodeId) -> ApiResult<Node> {
            off()
        }
        async fn list_children(&self, _: NodeId, _: Option<String>) -> ApiResult<ListPage> {
            off()
        }
        async fn create(&self, _: &CreateNode) -> ApiResult<Node> {
            off()
        }
        async fn commit(&self, _: NodeId, _: &CommitContent) -> ApiResult<Node> {
            off()
        }
        async fn move_node(&self, _: NodeId, _: &MoveNode) -> ApiResult<MoveResult> {
            off()
        }
        async fn set_attr(&self, _: NodeId, _: &SetAttr) -> ApiResult<Node> {
            off()
        }
        async fn delete(&self, _: NodeId, _: Version, _: bool) -> ApiResult<Node> {
            off()
        }
        async fn register_device(&self, _: &str) -> ApiResult<Device> {
            off()
        }
        async fn renew_listen(&self, device: DeviceId) -> ApiResult<Device> {
            self.renewals.fetch_add(1, Ordering::Relaxed);
            Ok(Device {
                id: device,
                name: "laptop".into(),
                listen: Listen::Sqs {
                    queue_url: format!("{}/1/q", self.endpoint()),
                    region: "us-east-1".into(),
                    endpoint: Some(self.endpoint()),
                    credentials: creds(now_ns() + 3_600_000_000_000),
                },
            })
        }
        async fn changes(&self, _: Seq, _: u32) -> ApiResult<ChangePage> {
            off()
        }
        async fn poll(&self, _: DeviceId, _: Seq, _: u64) -> ApiResult<ChangePage> {
            off()
        }
        async fn missing_blocks(&self, _: Vec<BlockHash>) -> ApiResult<MissingBlocks> {
            off()
        }
        async fn batch(&self, _batch: &jewel_wire::Batch) -> ApiResult<BatchAnswer> {
            off()
        }
        async fn block_urls(&self, _: Vec<BlockHash>) -> ApiResult<BlockUrls> {
            off()
        }
        async fn put_block(&self, _: &str, _: Bytes) -> ApiResult<()> {
            off()
        }
        async fn get_block(&self, _: &str) -> ApiResult<Bytes> {
            off()
        }
        fn set_device(&self, _: DeviceId) {}
    }

    fn creds(expires_ns: i64) -> SqsCredentials {
        SqsCredentials {
            access_key_id: "ASIA".into(),
            secret_access_key: "secret".into(),
            session_token: Some("token".into()),
            expires_ns,
        }
    }

    #[tokio::test]
    async fn credentials_about_to_expire_are_renewed_before_receiving() {
        let api = Arc::new(Renewer::default());
        // Two minutes left: less than RENEW_BEFORE. (Port 9 answers nothing: a receive
        // attempted instead of a renewal would fail the test.)
        let mut src = SqsSource::new(
            "http://127.0.0.1:9/1/q",
            "us-east-1",
            Some("http://127.0.0.1:9"),
            &creds(now_ns() + 120_000_000_000),
        );
        let first = src.next_batch(&*api, 5, 0).await.unwrap();
        assert!(first.catch_up, "a new source reads the feed first");
        let second = src.next_batch(&*api, 5, 0).await.unwrap();
        assert!(second.pages.is_empty() && !second.catch_up);
        assert!(
            second.renewed.is_some(),
            "the listener is handed the new listen"
        );
        assert_eq!(api.renewals.load(Ordering::Relaxed), 1);
        // The listener follows with a source for the same queue that does not start with a
        // catch-up (and, with fresh credentials, renews nothing: it goes to receive).
        let mut sources = crate::sources::Sources::new(1000);
        let listen = Listen::Sqs {
            queue_url: "http://127.0.0.1:9/1/q".into(),
            region: "us-east-1".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            credentials: creds(now_ns() + 120_000_000_000),
        };
        assert!(
            sources
                .current(&listen)
                .next_batch(&*api, 5, 0)
                .await
                .unwrap()
                .catch_up
        );
        let listen = api.renew_listen(5).await.unwrap().listen;
        // (Port 9 refuses: the receive fails, which sends the listener to the feed.)
        let renewed = sources.current(&listen).next_batch(&*api, 5, 0).await;
        assert!(
            matches!(&renewed, Ok(b) if b.catch_up && b.pages.is_empty()),
            "went to receive at once: {renewed:?}"
        );
        assert_eq!(api.renewals.load(Ordering::Relaxed), 2);
        let Listen::Sqs { credentials, .. } = listen else {
            panic!("{listen:?}")
        };
        assert!(credentials.expires_ns > now_ns() + RENEW_BEFORE.as_nanos() as i64);
    }

    /// An SQS endpoint that refuses every request's credentials, as SQS does while a new
    /// role's permissions propagate through IAM or when an SCP denies it. Counts requests.
    async fn sqs_refusing_credentials() -> (String, Arc<AtomicU32>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicU32::new(0));
        let seen = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let body = r#"{"__type":"com.amazon.coral.service#InvalidClientTokenId","message":"The security token included in the request is invalid."}"#;
                    let mut buf = vec![0u8; 64 * 1024];
                    // One request per connection is enough: answer and close.
                    let mut got = Vec::new();
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&got);
                        let Some(head_end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let len = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if got.len() >= head_end + 4 + len {
                            break;
                        }
                    }
                    seen.fetch_add(1, Ordering::SeqCst);
                    let answer = format!(
                        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/x-amz-json-1.0\r\n\
                         x-amzn-query-error: InvalidClientTokenId;Sender\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        (url, requests)
    }

    /// SQS keeps refusing the device's credentials however often they are renewed: the
    /// listener must not renew and receive at API speed (each turn is an STS call, a Lambda
    /// run and an SQS request), but back off.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn credentials_refused_again_and_again_back_off() {
        let (sqs, requests) = sqs_refusing_credentials().await;
        let api = Arc::new(Renewer {
            sqs: Some(sqs),
            ..Renewer::default()
        });
        let mut listen = api.renew_listen(5).await.unwrap().listen;
        let mut sources = crate::sources::Sources::new(1000);
        let watched = std::time::Duration::from_secs(4);
        let deadline = std::time::Instant::now() + watched;
        let mut turns = 0;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            let turn = sources.current(&listen).next_batch(&*api, 5, 0);
            // The listener keeps what a renewal brought; its next turn builds a new source.
            if let Ok(Ok(super::Batch {
                renewed: Some(renewed),
                ..
            })) = tokio::time::timeout(left, turn).await
            {
                listen = renewed;
            }
            turns += 1;
            assert!(turns < 10_000, "bounded loop");
        }
        let renewals = api.renewals.load(Ordering::Relaxed) - 1;
        let receives = requests.load(Ordering::SeqCst);
        eprintln!("in {watched:?}: {renewals} renewals, {receives} refused receives");
        assert!(renewals >= 1, "the first refusal renews at once");
        // 1 s, 2 s, 4 s … between renewals after the first: at most 3 in 4 s.
        assert!(
            renewals <= 3 && receives <= 4,
            "backed off: {renewals} renewals and {receives} receives in {watched:?}"
        );
    }

    #[test]
    fn expired_or_refused_credentials_are_renewed() {
        assert!(is_credentials_error("ExpiredToken"));
        assert!(is_credentials_error("AccessDenied"));
        assert!(!is_credentials_error("ServiceUnavailable"));
    }
}
