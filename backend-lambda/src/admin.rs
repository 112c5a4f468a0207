//! Administration: users and their tokens, the same for every backend.
//!
//! A token is shown once, when it is issued (`add_user`, `reissue_token`); the store keeps only
//! its hash. Issuing a new token revokes the old one in the same write.

use crate::blobs::BlobError;
use crate::bus::BusError;
use crate::service::{new_token, token_hash, Service};
use crate::store::{now_ns, MetaStore, StoreError, StoreResult, User};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("invalid user name {0:?}: use 1 to 64 letters, digits, '.', '_' or '-'")]
    InvalidName(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("removing the user's blocks: {0} (nothing else was removed; run the removal again)")]
    Blobs(#[from] BlobError),
    #[error(
        "removing the user's device queues: {0} (nothing else was removed; run the removal again)"
    )]
    Bus(#[from] BusError),
}

fn valid_user_name(name: &str) -> Result<(), AdminError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AdminError::InvalidName(name.to_string()))
    }
}

/// Creates a user and returns it with its first token.
pub async fn add_user(meta: &dyn MetaStore, name: &str) -> Result<(User, String), AdminError> {
    valid_user_name(name)?;
    let token = new_token();
    let user = meta
        .create_user(name, &token_hash(&token), now_ns())
        .await?;
    Ok((user, token))
}

/// Issues a new token for a user; the old one stops working.
pub async fn reissue_token(meta: &dyn MetaStore, name: &str) -> Result<String, AdminError> {
    let token = new_token();
    meta.set_token(name, &token_hash(&token)).await?;
    Ok(token)
}

pub async fn list_users(meta: &dyn MetaStore) -> StoreResult<Vec<User>> {
    meta.list_users().await
}

pub async fn remove_user(meta: &dyn MetaStore, name: &str) -> StoreResult<()> {
    meta.remove_user(name).await
}

/// What [`remove_user_everywhere`] deleted besides the user's items in the store.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub blocks: u64,
    pub queues: u64,
}

/// Removes a user and everything it owns: its blocks (S3 objects or local files), its device
/// channels (SQS queues), then its tree, versions, devices, log and token in the store. The
/// store goes last, so a removal cut short (a network failure half way) leaves the user known
/// and can simply be run again. Once the store has forgotten the user, the local block URLs
/// signed for it are refused (`api/blocks.rs` asks the store), and the blocks are swept once
/// more: an upload that was under way during the first sweep is gone too.
pub async fn remove_user_everywhere(svc: &Service, name: &str) -> Result<Removed, AdminError> {
    let user = find_user(svc, name).await?;
    let blocks = svc.blobs.remove_user(&user.id).await?;
    let queues = svc.bus.remove_user(&user.id).await?;
    svc.meta.remove_user(name).await?;
    let late = svc.blobs.remove_user(&user.id).await?;
    Ok(Removed {
        blocks: blocks + late,
        queues,
    })
}

/// Forgets every device of a user, freeing its device slots (see `Limits::max_devices`), and
/// deletes their channels (SQS queues). Each machine registers anew at its next mount (the
/// client does when the service no longer knows its saved device); a mount running meanwhile
/// is told its device is gone when it next renews or polls. Returns how many devices went.
pub async fn forget_devices(svc: &Service, name: &str) -> Result<usize, AdminError> {
    let user = find_user(svc, name).await?;
    let devices = svc.meta.remove_devices(&user.id).await?;
    svc.bus.remove_user(&user.id).await?;
    Ok(devices)
}

async fn find_user(svc: &Service, name: &str) -> Result<User, AdminError> {
    Ok(svc
        .meta
        .list_users()
        .await?
        .into_iter()
        .find(|u| u.name == name)
        .ok_or_else(|| StoreError::UnknownUser(name.to_string()))?)
}

/// How long an admin command keeps trying while the database is busy: a running server's
/// commits on a loaded machine can hold it for seconds at a time; a person would rather wait
/// than retry by hand.
pub const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Whether `err` (from opening the store or from an admin operation) failed only because
/// another process held the database: nothing was changed, and trying again is safe.
pub fn is_busy(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<StoreError>(),
            Some(StoreError::Busy(_))
        ) || matches!(
            cause.downcast_ref::<AdminError>(),
            Some(AdminError::Store(StoreError::Busy(_)))
        )
    })
}

/// Runs `op` until it succeeds, fails for another reason than a busy database, or `wait`
/// has passed; says once on stderr that it is waiting for the database.
pub async fn retry_while_busy<T, F, Fut>(wait: std::time::Duration, mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut said = false;
    loop {
        match op().await {
            Err(e) if is_busy(&e) && tokio::time::Instant::now() < deadline => {
                if !said {
                    eprintln!("the database is busy (the server is writing); waiting for it...");
                    said = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}
