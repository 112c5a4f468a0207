//! Block garbage collection in AWS mode: deletes the S3 blocks of a user that no node (live
//! or in the trash) and no kept version references, while any number of Lambda instances
//! commit at the same time and none of them tells the collector anything.
//!
//! **Why mark-and-sweep with a grace period, not reference counts.** Counting references in
//! the commit transactions would make every commit write one counter item per distinct block
//! (a 1 GiB file names 256; DynamoDB takes at most 100 items a transaction, and the purges of
//! trash and versions would have to decrement in theirs), and it would change every write
//! path of both engines. Mark-and-sweep leaves the commits as they are, costs one consistent
//! `BatchGetItem` on the condemned-block items per block check (`gc_guard.rs`), and does its
//! work on the schedule, where time is cheap.
//!
//! **The protocol** (items in `dynamo/condemned.rs`), run per user by [`Collector::sweep_user`]:
//! 1. *Claim*: every condemnation older than the grace period becomes `deleting` (a
//!    conditional write: it fails if a commit rescued the block meanwhile). Claims a run died
//!    with are taken over once they are [`GcSettings::stale_claim`] old.
//! 2. *Read the references* — after the claims — and the user's blocks in S3.
//! 3. *Sweep*: claimed blocks still unreferenced are deleted from S3 (1000 per
//!    `DeleteObjects`); then every claimed item is forgotten (25 per `BatchWriteItem`).
//!    A claimed block that is referenced now is only forgotten, kept.
//! 4. *Mark*: blocks stored longer ago than the grace, unreferenced and without an item are
//!    condemned (conditionally: never over another run's claim); condemnations of blocks
//!    referenced again or gone from S3 are dropped.
//!
//! Every check of a commit (and every `POST /blocks/missing`) goes through the guard: a block
//! `deleting` is answered missing (its client uploads it again), a `condemned` one is
//! rescued (its item deleted, conditionally) before it is answered present.
//!
//! **Why a commit racing a sweep never loses a block.** Take a commit that checked block `b`
//! (the guard read `b`'s item at `t_check`) and stored its node at `t_commit`, and a run that
//! claimed `b` at `t_claim` and read the references at `t_ref > t_claim`.
//! - If `t_check > t_claim`, the guard saw `deleting` and refused the commit.
//! - If the guard saw `b` condemned, it rescued it, so the claim (conditional on the
//!   condemnation it read) failed — unless the claim came first, and then the guard's rescue
//!   failed and the commit was refused.
//! - If the guard saw no item, the condemnation the run claimed was written after
//!   `t_check`, and claimed at least the grace period later: `t_claim > t_check + grace`.
//!   A commit stores its node within the grace period of its check (a request lasts at most
//!   29 s behind API Gateway; the grace is an hour), so `t_commit < t_claim < t_ref`, the run
//!   sees the reference and keeps `b`.
//!
//! A block deleted this way stays in S3 as a noncurrent version for the bucket's trash
//! retention (Terraform turns versioning on), so even a bug here is recoverable for a while.
//! The one assumption is the one above: no process stores a commit more than the grace period
//! after checking its blocks. A `jewel-server --backend aws` stalled that long mid-request
//! could break it; Lambda cannot (it is stopped at its timeout).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};

use super::dynamo::{Condemnation, DynamoStore};
use super::s3::S3BlobStore;
use crate::blobs::{BlobError, BlobStore};
use crate::store::StoreError;

/// Concurrent conditional writes (claims, condemnations) per user.
const WRITES_AT_ONCE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("block collection: reading or writing the table: {0}")]
    Store(#[from] StoreError),
    #[error("block collection: listing or deleting blocks in S3: {0}")]
    Blobs(#[from] BlobError),
}

/// The collector's timings.
#[derive(Debug, Clone, Copy)]
pub struct GcSettings {
    /// How long a block stays unreferenced before it is condemned, and condemned before it is
    /// claimed: far longer than a commit takes from checking its blocks to storing its node
    /// (29 s at most behind API Gateway) and than a client takes from uploading a block to
    /// committing it.
    pub grace: Duration,
    /// A claim older than this was left by a run that died (runs stop after
    /// [`crate::aws::scheduled::RUN_BUDGET`], Lambda kills them at 15 minutes); the next run
    /// finishes it.
    pub stale_claim: Duration,
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings {
            grace: crate::maintenance::BLOCK_GRACE,
            stale_claim: Duration::from_secs(3600),
        }
    }
}

/// What one sweep of one user did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Blocks condemned (they go in a later run if still unreferenced).
    pub condemned: usize,
    /// Condemnations (or stale claims) this run claimed.
    pub claimed: usize,
    /// Blocks deleted from S3.
    pub deleted: usize,
    /// Claimed or condemned blocks kept because something references them again.
    pub rescued: usize,
    /// `DeleteObjects` requests made.
    pub delete_requests: usize,
}

impl std::ops::AddAssign for Swept {
    fn add_assign(&mut self, o: Swept) {
        self.condemned += o.condemned;
        self.claimed += o.claimed;
        self.deleted += o.deleted;
        self.rescued += o.rescued;
        self.delete_requests += o.delete_requests;
    }
}

fn ago(now_ns: i64, d: Duration) -> i64 {
    now_ns.saturating_sub(d.as_nanos().min(i64::MAX as u128) as i64)
}

/// The collector over one deployment's table and bucket.
#[derive(Clone, Copy)]
pub struct Collector<'a> {
    pub meta: &'a DynamoStore,
    pub blobs: &'a S3BlobStore,
    pub settings: GcSettings,
}

impl Collector<'_> {
    /// One collection of one user's blocks: claim, sweep, mark (see the module's protocol).
    /// A block becomes garbage, is condemned by the first run once it is `grace` old, and is
    /// deleted by the first run at least `grace` after that.
    pub async fn sweep_user(&self, user: &str, now_ns: i64) -> Result<Swept, GcError> {
        let items = self.meta.condemned_blocks(user).await?;
        let claimed = self.claim(user, &items, now_ns).await?;
        let (refs, mut swept) = self.sweep(user, &claimed).await?;
        swept += self.mark(user, &items, &claimed, &refs, now_ns).await?;
        Ok(swept)
    }

    /// Step 1: claims the condemnations older than the grace and the stale claims; returns
    /// the claimed hashes.
    pub async fn claim(
        &self,
        user: &str,
        items: &[(String, Condemnation)],
        now_ns: i64,
    ) -> Result<Vec<String>, GcError> {
        let s = self.settings;
        let eligible = items.iter().filter(|(_, c)| match *c {
            Condemnation::Condemned { at_ns } => at_ns <= ago(now_ns, s.grace),
            Condemnation::Deleting { claimed_ns } => claimed_ns <= ago(now_ns, s.stale_claim),
        });
        let won: Vec<Option<String>> = futures::stream::iter(eligible)
            .map(|(hash, seen)| async move {
                let ok = self.meta.claim(user, hash, *seen, now_ns).await?;
                Ok::<_, GcError>(ok.then(|| hash.clone()))
            })
            .buffer_unordered(WRITES_AT_ONCE)
            .try_collect()
            .await?;
        Ok(won.into_iter().flatten().collect())
    }

    /// Steps 2 and 3: reads the references, deletes the claimed blocks nothing references
    /// and forgets every claim. Returns the references read (for [`Collector::mark`]) with
    /// what it did.
    pub async fn sweep(
        &self,
        user: &str,
        claimed: &[String],
    ) -> Result<(HashSet<String>, Swept), GcError> {
        let refs = self.meta.block_references(user).await?;
        let (kept, gone): (Vec<String>, Vec<String>) =
            claimed.iter().cloned().partition(|h| refs.contains(h));
        let delete_requests = self.blobs.delete_many(user, &gone).await?;
        self.meta.forget_claims(user, claimed).await?;
        Ok((
            refs,
            Swept {
                claimed: claimed.len(),
                deleted: gone.len(),
                rescued: kept.len(),
                delete_requests,
                ..Swept::default()
            },
        ))
    }

    /// Step 4: condemns the old unreferenced blocks that have no item, and drops the
    /// condemnations of blocks referenced again or no longer stored. `items` are the items
    /// read before [`Collector::claim`], `claimed` what it claimed (forgotten since).
    pub async fn mark(
        &self,
        user: &str,
        items: &[(String, Condemnation)],
        claimed: &[String],
        refs: &HashSet<String>,
        now_ns: i64,
    ) -> Result<Swept, GcError> {
        let stored: HashMap<String, i64> = self
            .blobs
            .list(&user.to_string())
            .await?
            .into_iter()
            .map(|b| (b.hash, b.stored_at_ns))
            .collect();
        let claimed: HashSet<&String> = claimed.iter().collect();
        let had_item: HashSet<&String> = items.iter().map(|(h, _)| h).collect();
        let old = ago(now_ns, self.settings.grace);
        let to_condemn: Vec<&String> = stored
            .iter()
            .filter(|(h, at)| **at <= old && !refs.contains(*h) && !had_item.contains(h))
            .map(|(h, _)| h)
            .collect();
        let to_drop: Vec<&String> = items
            .iter()
            .filter(|(h, c)| {
                matches!(c, Condemnation::Condemned { .. })
                    && !claimed.contains(h)
                    && (refs.contains(h) || !stored.contains_key(h))
            })
            .map(|(h, _)| h)
            .collect();
        let condemned = futures::stream::iter(to_condemn)
            .map(|h| self.meta.condemn(user, h, now_ns))
            .buffer_unordered(WRITES_AT_ONCE)
            .try_fold(0, |n, done| async move { Ok(n + usize::from(done)) })
            .await?;
        let rescued = futures::stream::iter(to_drop)
            .map(|h| self.meta.rescue(user, h))
            .buffer_unordered(WRITES_AT_ONCE)
            .try_fold(0, |n, done| async move { Ok(n + usize::from(done)) })
            .await?;
        Ok(Swept {
            condemned,
            rescued,
            ..Swept::default()
        })
    }
}
