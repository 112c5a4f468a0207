//! The scheduled maintenance of AWS mode: what the embedded server's housekeeping
//! (`crate::maintenance`) does in its process, done here by a Lambda function that EventBridge
//! starts once a day (`terraform/maintenance.tf`, `maintenance_schedule`), or by `jewel-server
//! maintenance --backend aws`. Daily, not hourly like the embedded server: a run reads every
//! node item of every user (about 1,600 read units for 10,000 files), so hourly runs would
//! cost that user ≈ $0.14 a month, more than the garbage they free is worth; daily runs cost
//! ≈ $0.006 (docs/COST.md).
//! For every user it
//! - empties the trash of deletions older than the trash retention and forgets earlier
//!   versions replaced longer ago (or beyond the newest `MAX_VERSIONS` of a file), with the
//!   embedded server's retention and the same store methods;
//! - collects the blocks nothing references any more (`block_gc.rs`: mark and sweep, safe
//!   against the commits of every other instance), and the small blocks the table keeps
//!   that nothing names (`dynamo/small_blocks.rs`: conditional deletes, equally safe).
//!
//! The change log needs nothing: DynamoDB's TTL trims it.
//!
//! A run stops taking on users after [`RUN_BUDGET`] (Lambda stops a function at 15 minutes),
//! writes down the last user it finished, and the next run goes on from there; each step is
//! idempotent, so a run killed anywhere is simply done again. Runs that overlap (a slow one
//! and the next) are safe too: every change the collector makes is conditional.

use std::time::{Duration, Instant};

use super::block_gc::{Collector, GcError, GcSettings, Swept};
use super::dynamo::DynamoStore;
use super::s3::S3BlobStore;
use crate::store::MetaStore;

/// How long one run works before it leaves the remaining users to the next: well inside
/// Lambda's 15-minute limit, so the cursor is always written.
pub const RUN_BUDGET: Duration = Duration::from_secs(10 * 60);

/// The environment variable that makes `bootstrap` the maintenance function instead of the
/// API (`terraform/maintenance.tf` sets it): `JEWEL_TASK=maintenance`.
pub const ENV_TASK: &str = "JEWEL_TASK";
pub const TASK_MAINTENANCE: &str = "maintenance";

/// Retention, grace and time budget of a run.
#[derive(Debug, Clone, Copy)]
pub struct MaintenanceSettings {
    /// Trash and earlier versions older than this go (the embedded server's retention).
    pub trash_retention: Duration,
    pub gc: GcSettings,
    pub budget: Duration,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        MaintenanceSettings {
            trash_retention: crate::maintenance::TRASH_RETENTION,
            gc: GcSettings::default(),
            budget: RUN_BUDGET,
        }
    }
}

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Users whose maintenance this run finished.
    pub users: usize,
    /// Trash entries (deleted files or folders with their subtrees) purged for good.
    pub trash_entries: usize,
    /// Earlier versions of files forgotten.
    pub versions: usize,
    pub blocks: Swept,
    /// Small blocks kept in the table that nothing named any more, forgotten.
    pub small_blocks: usize,
    /// Every user was done; false when the budget ran out (the next run goes on).
    pub finished: bool,
}

/// One maintenance run over every user (from where the last run stopped), at `now_ns`.
pub async fn run(
    meta: &DynamoStore,
    blobs: &S3BlobStore,
    settings: MaintenanceSettings,
    now_ns: i64,
) -> Result<Report, GcError> {
    let deadline = Instant::now() + settings.budget;
    let collector = Collector {
        meta,
        blobs,
        settings: settings.gc,
    };
    let cursor = meta.gc_cursor().await?;
    let mut users = meta.list_users().await?;
    users.retain(|u| cursor.as_ref().is_none_or(|c| u.name.as_str() > c.as_str()));
    let before = now_ns.saturating_sub(settings.trash_retention.as_nanos() as i64);
    let mut report = Report::default();
    for user in &users {
        if Instant::now() >= deadline {
            tracing::info!(
                users = report.users,
                "maintenance: the run's time is up; the next run goes on after {:?}",
                cursor_of(&report, &users)
            );
            return Ok(report);
        }
        report.trash_entries += meta.purge_trash(&user.id, before).await?;
        report.versions += meta.purge_versions(&user.id, before).await?;
        report.blocks += collector.sweep_user(&user.id, now_ns).await?;
        report.small_blocks += meta.collect_small_blocks(&user.id).await?;
        report.users += 1;
        meta.set_gc_cursor(Some(&user.name)).await?;
    }
    meta.set_gc_cursor(None).await?;
    report.finished = true;
    Ok(report)
}

fn cursor_of<'a>(report: &Report, users: &'a [crate::store::User]) -> Option<&'a str> {
    report.users.checked_sub(1).map(|i| users[i].name.as_str())
}

/// A run on the stores the environment names (`JEWEL_TABLE`, `JEWEL_BUCKET`, the AWS
/// environment), now.
pub async fn run_from_env(settings: MaintenanceSettings) -> anyhow::Result<Report> {
    let aws = super::AwsSettings::from_env()?;
    let sdk = super::sdk_config().await;
    let meta = DynamoStore::new(&sdk, &aws);
    let blobs = S3BlobStore::new(&sdk, &aws);
    Ok(run(&meta, &blobs, settings, crate::store::now_ns()).await?)
}

/// The maintenance function's Lambda loop: every event (EventBridge's scheduled event; its
/// content is not read) starts one run; the answer is the run's report as JSON.
pub async fn lambda_main() -> Result<(), lambda_http::Error> {
    use lambda_http::lambda_runtime::{run, service_fn, LambdaEvent};
    run(service_fn(|_event: LambdaEvent<serde_json::Value>| async {
        let report = run_from_env(MaintenanceSettings::default()).await?;
        tracing::info!(?report, "maintenance run done");
        Ok::<_, lambda_http::Error>(report_json(&report))
    }))
    .await
}

/// The report as the function answers and `jewel-server maintenance` prints it.
pub fn report_json(r: &Report) -> serde_json::Value {
    serde_json::json!({
        "users": r.users,
        "finished": r.finished,
        "trash_entries": r.trash_entries,
        "versions": r.versions,
        "blocks_condemned": r.blocks.condemned,
        "blocks_claimed": r.blocks.claimed,
        "blocks_deleted": r.blocks.deleted,
        "blocks_rescued": r.blocks.rescued,
        "small_blocks_deleted": r.small_blocks,
        "delete_requests": r.blocks.delete_requests,
    })
}
