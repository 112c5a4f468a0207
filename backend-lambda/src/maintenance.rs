//! Housekeeping a long-running `jewel-server` does on its own: trimming each user's change log
//! to the retention time.
//!
//! A device that was away longer than [`LOG_RETENTION`] gets `cursor_too_old` and re-lists its
//! tree, so trimming never loses a change — it only bounds the log's size. (In AWS mode,
//! DynamoDB's TTL does the same job without a process.)

use std::sync::Arc;
use std::time::Duration;

use crate::service::Service;
use crate::store::now_ns;

/// How long change events are kept: long enough for a laptop back from a month away to catch
/// up by the log instead of re-listing.
pub const LOG_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// How often the housekeeping runs.
pub const INTERVAL: Duration = Duration::from_secs(3600);

/// Trims every user's log once.
pub async fn trim_logs(service: &Service, retention: Duration) -> anyhow::Result<usize> {
    let before = now_ns() - retention.as_nanos() as i64;
    let users = service.meta.list_users().await?;
    for user in &users {
        service.meta.trim_log(&user.id, before).await?;
    }
    Ok(users.len())
}

/// Runs [`trim_logs`] now and every [`INTERVAL`], in the background, for the process's life.
pub fn spawn(service: Arc<Service>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(INTERVAL);
        loop {
            ticker.tick().await;
            match trim_logs(&service, LOG_RETENTION).await {
                Ok(n) => tracing::debug!("trimmed the change logs of {n} users"),
                Err(e) => tracing::warn!(error = %e, "could not trim change logs; will retry"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn old_events_are_trimmed_and_devices_told_to_relist() {
        let dir = tempfile::tempdir().unwrap();
        let service = Service::embedded(dir.path()).unwrap();
        let (user, _) = crate::admin::add_user(service.meta.as_ref(), "u")
            .await
            .unwrap();
        let origin = crate::store::Origin {
            device: None,
            now_ns: now_ns(),
        };
        for name in ["a", "b"] {
            let node = crate::store::NewNode {
                parent: jewel_wire::ROOT_ID,
                name: name.into(),
                kind: jewel_wire::NewKind::Dir,
                mode: 0o755,
                mtime_ns: 0,
            };
            service.meta.create(&user.id, &node, origin).await.unwrap();
        }
        assert_eq!(
            service
                .meta
                .changes_since(&user.id, 0, 10)
                .await
                .unwrap()
                .events
                .len(),
            2
        );
        // Retention zero: everything but the newest event goes.
        assert_eq!(trim_logs(&service, Duration::ZERO).await.unwrap(), 1);
        let err = service
            .meta
            .changes_since(&user.id, 0, 10)
            .await
            .unwrap_err();
        assert!(matches!(err, crate::store::StoreError::CursorTooOld));
        let latest = service.meta.latest_seq(&user.id).await.unwrap();
        assert!(service
            .meta
            .changes_since(&user.id, latest, 10)
            .await
            .unwrap()
            .events
            .is_empty());
    }
}
