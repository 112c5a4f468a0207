//! The embedded service's [`ChangeSource`] (`Listen::Poll`): one long-poll,
//! `GET /devices/{id}/poll?since=cursor`, which answers as soon as there are events after the
//! cursor, or empty after the wait.

use async_trait::async_trait;
use jewel_wire::{DeviceId, Seq};

use super::{Batch, ChangeSource};
use crate::core::api::{Api, ApiResult};

/// The embedded service's long-poll.
pub struct PollSource {
    /// How long the service may hold one poll (`Config::poll_timeout_ms`).
    timeout_ms: u64,
}

impl PollSource {
    pub fn new(timeout_ms: u64) -> PollSource {
        PollSource { timeout_ms }
    }
}

#[async_trait]
impl ChangeSource for PollSource {
    async fn next_batch(
        &mut self,
        api: &dyn Api,
        device: DeviceId,
        cursor: Seq,
    ) -> ApiResult<Batch> {
        let page = api.poll(device, cursor, self.timeout_ms).await?;
        Ok(Batch {
            pages: vec![page],
            ..Batch::default()
        })
    }
    async fn applied(&mut self) {}
}
