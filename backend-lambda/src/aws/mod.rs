//! AWS mode: `MetaStore` on DynamoDB ([`dynamo`]), `BlobStore` on S3 ([`s3`], served through
//! the block collector's guard, [`gc_guard`]) and `ChangeBus` on SQS ([`sqs`]), all through the
//! AWS SDK for Rust; and the scheduled maintenance ([`scheduled`]: trash, versions, and block
//! garbage collection, [`block_gc`]).
//!
//! Configuration comes from the environment, the same in Lambda, in `jewel-server --backend
//! aws` and in the loopback tests:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `JEWEL_TABLE` | the DynamoDB table (single-table design, keys `PK`/`SK`, TTL on `ttl`) | `jewel` |
//! | `JEWEL_BUCKET` | the S3 bucket holding blocks under `u/<user>/b/<hash>` | `jewel-blocks` |
//! | `JEWEL_QUEUE_PREFIX` | name prefix of the per-device SQS queues | `jewel` |
//! | `JEWEL_LISTENER_ROLE_ARN` | role assumed (with a one-queue session policy) to hand devices receive-only credentials | none: devices get no credentials, see [`sqs`] |
//! | `JEWEL_BUS` | `sqs`, or `local` for one `jewel-server` process serving long-poll | `sqs` |
//! | `JEWEL_LOG_RETENTION_DAYS` | how long change-log items live before DynamoDB's TTL drops them | 30 |
//! | `AWS_REGION`, `AWS_ENDPOINT_URL[_DYNAMODB/_S3/_SQS/_STS]`, credentials | the standard AWS environment | |
//!
//! One subtle point: the SDK is built without its default HTTPS client; we give it a hyper
//! client on rustls with the *ring* provider, the same TLS stack `reqwest` uses in the
//! workspace, so the binary carries one TLS implementation. Every SDK call is counted per
//! operation ([`request_counts`]) so tests and benchmarks can show what a workload costs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use crate::blobs::BlobStore;
use crate::bus::ChangeBus;

pub mod batch_get;
pub mod block_gc;
pub mod device_queues;
pub mod dynamo;
pub mod gc_guard;
pub mod s3;
pub mod scheduled;
pub mod sqs;

#[cfg(test)]
mod block_gc_tests;
#[cfg(test)]
mod device_registration_tests;
#[cfg(test)]
mod log_visibility_tests;
#[cfg(test)]
mod marking_tests;
#[cfg(test)]
mod small_block_tests;
#[cfg(any(test, feature = "conformance"))]
pub mod testing;
#[cfg(test)]
mod tests;

/// The names the deployment and the code share (Terraform's `aws_naming_test` checks them).
pub const ENV_TABLE: &str = "JEWEL_TABLE";
pub const ENV_BUCKET: &str = "JEWEL_BUCKET";
pub const ENV_QUEUE_PREFIX: &str = "JEWEL_QUEUE_PREFIX";
pub const ENV_LISTENER_ROLE: &str = "JEWEL_LISTENER_ROLE_ARN";
pub const ENV_LOG_RETENTION_DAYS: &str = "JEWEL_LOG_RETENTION_DAYS";
/// `sqs` (default): a queue per device. `local`: the in-process long-poll bus — right only
/// for a single `jewel-server` process on the AWS stores (never for Lambda, whose instances
/// do not share memory), and what today's long-polling clients need.
pub const ENV_BUS: &str = "JEWEL_BUS";
/// The table's key attributes and its TTL attribute.
pub const PK: &str = "PK";
pub const SK: &str = "SK";
pub const TTL_ATTR: &str = "ttl";

/// Everything AWS mode needs to know besides the SDK's own configuration.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    pub table: String,
    pub bucket: String,
    /// Queues are named `<prefix>-<user>-<device>`.
    pub queue_prefix: String,
    /// Role to assume for device credentials; `None` hands out none.
    pub listener_role_arn: Option<String>,
    /// Change-log retention (TTL): long enough for a laptop to be away on holiday.
    pub log_retention: Duration,
    /// Presigned block URLs live this long: enough for one 4 MiB block on a slow link.
    pub url_lifetime: Duration,
}

impl Default for AwsSettings {
    fn default() -> Self {
        AwsSettings {
            table: "jewel".into(),
            bucket: "jewel-blocks".into(),
            queue_prefix: "jewel".into(),
            listener_role_arn: None,
            log_retention: Duration::from_secs(30 * 24 * 3600),
            url_lifetime: Duration::from_secs(10 * 60),
        }
    }
}

impl AwsSettings {
    pub fn from_env() -> anyhow::Result<AwsSettings> {
        let mut s = AwsSettings::default();
        if let Ok(v) = std::env::var(ENV_TABLE) {
            s.table = v;
        }
        if let Ok(v) = std::env::var(ENV_BUCKET) {
            s.bucket = v;
        }
        if let Ok(v) = std::env::var(ENV_QUEUE_PREFIX) {
            s.queue_prefix = v;
        }
        s.listener_role_arn = std::env::var(ENV_LISTENER_ROLE)
            .ok()
            .filter(|v| !v.is_empty());
        if let Ok(v) = std::env::var(ENV_LOG_RETENTION_DAYS) {
            let days: u64 = v.parse().with_context(|| {
                format!("{ENV_LOG_RETENTION_DAYS}={v:?} is not a number of days")
            })?;
            s.log_retention = Duration::from_secs(days * 24 * 3600);
        }
        Ok(s)
    }
}

/// The SDK configuration from the standard AWS environment, on our one TLS stack.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http_client())
        .load()
        .await
}

/// The SDK's HTTP client: hyper on rustls with the ring provider.
pub fn http_client() -> aws_sdk_dynamodb::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// The three stores, configured from the environment.
pub async fn stores_from_env() -> anyhow::Result<(
    Arc<dynamo::DynamoStore>,
    Arc<dyn BlobStore>,
    Arc<dyn ChangeBus>,
)> {
    let settings = AwsSettings::from_env()?;
    let sdk = sdk_config().await;
    let meta = Arc::new(dynamo::DynamoStore::new(&sdk, &settings));
    let s3 = Arc::new(s3::S3BlobStore::new(&sdk, &settings));
    // Commits check their blocks through the collector's guard (see `block_gc.rs`).
    let blobs = gc_guard::GuardedBlobs::new(s3, meta.clone());
    let bus: Arc<dyn ChangeBus> = match std::env::var(ENV_BUS).as_deref() {
        Ok("sqs") | Ok("") | Err(_) => Arc::new(sqs::SqsBus::new(&sdk, &settings)),
        Ok("local") => Arc::new(crate::bus::local::LocalBus::default()),
        Ok(other) => anyhow::bail!("{ENV_BUS}={other:?}: expected `sqs` or `local`"),
    };
    Ok((meta, Arc::new(blobs), bus))
}

/// The service on AWS stores, with the table's key for the URLs of the small blocks the
/// table keeps (one `GetItem` at start; see `dynamo/url_key.rs`).
pub async fn service(
    meta: Arc<dynamo::DynamoStore>,
    blobs: Arc<dyn BlobStore>,
    bus: Arc<dyn ChangeBus>,
) -> anyhow::Result<crate::service::Service> {
    let key = meta
        .block_url_key()
        .await
        .context("reading the block URL key from the table")?;
    let mut service = crate::service::Service::new(meta, blobs, bus);
    service.kept_block_urls = Some(crate::blobs::url_key::UrlKey::new(key));
    Ok(service)
}

/// Refuses to serve with a setting that would fail every device quietly: with the SQS bus
/// (the default) devices receive from their queues with credentials made from
/// `JEWEL_LISTENER_ROLE_ARN`; without it every device registration fails and mounts only look
/// offline. Admin commands need no role, so only serving checks this.
pub fn check_serving_env() -> anyhow::Result<()> {
    let settings = AwsSettings::from_env()?;
    let sqs = matches!(
        std::env::var(ENV_BUS).as_deref(),
        Ok("sqs") | Ok("") | Err(_)
    );
    if sqs && settings.listener_role_arn.is_none() {
        anyhow::bail!(
            "{ENV_LISTENER_ROLE} is not set: with the SQS change bus ({ENV_BUS}=sqs, the default) \
             devices need it to receive from their queues. Set it to the listener role (the \
             Terraform output `listener_role_arn`), or set {ENV_BUS}=local when one jewel-server \
             process serves every client"
        );
    }
    Ok(())
}

/// The service on the AWS stores, configured from the environment.
pub async fn service_from_env() -> anyhow::Result<crate::service::Service> {
    let (meta, blobs, bus) = stores_from_env().await?;
    service(meta, blobs, bus).await
}

/// Creates whatever is missing: the table (with TTL) and the bucket. Safe to run again.
pub async fn init_from_env() -> anyhow::Result<()> {
    let settings = AwsSettings::from_env()?;
    let sdk = sdk_config().await;
    dynamo::DynamoStore::new(&sdk, &settings)
        .create_table()
        .await?;
    s3::S3BlobStore::new(&sdk, &settings)
        .create_bucket()
        .await?;
    Ok(())
}

static REQUESTS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// Counts one AWS request (`"dynamodb:GetItem"`, …).
pub(crate) fn count(op: &'static str) {
    count_n(op, 1);
}

/// Counts `n` of something (items written in a transaction, for write units).
pub(crate) fn count_n(op: &'static str, n: u64) {
    *REQUESTS.lock().unwrap().entry(op).or_default() += n;
}

/// How many AWS requests of each operation this process made so far.
pub fn request_counts() -> BTreeMap<&'static str, u64> {
    REQUESTS.lock().unwrap().clone()
}

/// Forgets the counts (benchmarks measure one phase at a time).
pub fn reset_request_counts() {
    REQUESTS.lock().unwrap().clear();
}

/// When set, a serving process writes its [`request_counts`] as JSON to this file about once
/// a second (replacing it whole), so a benchmark can read what a workload cost in AWS
/// requests from outside the process.
pub const ENV_REQUEST_COUNTS_FILE: &str = "JEWEL_REQUEST_COUNTS_FILE";

/// Starts the writer of [`ENV_REQUEST_COUNTS_FILE`] when that variable is set.
pub fn spawn_request_counts_writer() {
    let Some(path) = std::env::var_os(ENV_REQUEST_COUNTS_FILE).map(std::path::PathBuf::from) else {
        return;
    };
    tokio::spawn(async move {
        let tmp = path.with_extension("tmp");
        loop {
            let json = serde_json::to_vec(&request_counts()).expect("counts serialise");
            if std::fs::write(&tmp, json)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .is_err()
            {
                tracing::warn!("cannot write the request counts to {}", path.display());
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

/// Formats an SDK error with its whole chain (the SDK's `Display` alone says only "service
/// error").
pub(crate) fn sdk_err(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}
