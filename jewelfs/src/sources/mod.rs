//! Where change notifications come from: one small interface, [`ChangeSource`], with two
//! implementations, chosen by the [`Listen`] the service hands this device when it registers
//! (`POST /devices`) or renews (`POST /devices/{id}/listen`):
//!
//! - [`PollSource`] (`poll.rs`, `Listen::Poll`, the embedded service): long-polls
//!   `GET /devices/{id}/poll?since=cursor`;
//! - [`SqsSource`] (`sqs.rs`, `Listen::Sqs`, AWS mode): receives from this device's own SQS
//!   queue with the short-lived credentials from the API.
//!
//! A source talks to the service only through an [`Api`], never to the core: it hands back
//! what it heard as a [`Batch`], and the listener (`core/listener.rs`) does the rest. The
//! listener does not care which source it has: it asks for the next [`Batch`], applies its
//! pages by sequence number (a gap means reading the change feed from the cursor, as does
//! every reconnect), keeps a renewed `Listen` the batch carries, then calls
//! [`ChangeSource::applied`] (SQS deletes the messages then, so a crash before applying
//! leaves them in the queue). [`Sources`] rebuilds the source whenever the device's `Listen`
//! changes (renewed credentials, a new registration).

mod poll;
mod sqs;

pub use poll::PollSource;
pub use sqs::{SqsSource, MAX_REFUSED_PAUSE, RENEW_BEFORE, VISIBILITY_SECONDS, WAIT_SECONDS};

use async_trait::async_trait;
use jewel_wire::{ChangePage, DeviceId, Listen, Seq};

use crate::core::api::{Api, ApiResult};

/// What one wait for notifications brought.
#[derive(Debug, Default)]
pub struct Batch {
    /// Pages of change events, in any order; events may repeat or be older than the cursor.
    pub pages: Vec<ChangePage>,
    /// The source may have missed events (it just started, or lost messages): read the change
    /// feed from the cursor before applying anything newer.
    pub catch_up: bool,
    /// How this device listens from now on, when the source asked the service again
    /// (credentials about to expire or refused, a queue made again): the listener keeps it,
    /// and its next wait uses a source built for it.
    pub renewed: Option<Listen>,
}

/// One way of hearing about other devices' changes.
#[async_trait]
pub trait ChangeSource: Send {
    /// Waits (up to the source's own long-poll time) for notifications after `cursor`; an
    /// empty batch when none came in time.
    async fn next_batch(
        &mut self,
        api: &dyn Api,
        device: DeviceId,
        cursor: Seq,
    ) -> ApiResult<Batch>;
    /// The last batch is applied (or covered by a catch-up): acknowledge it.
    async fn applied(&mut self);
}

/// The source for the device's current [`Listen`], rebuilt when that changes.
pub struct Sources {
    /// The long-poll wait of a [`PollSource`].
    poll_timeout_ms: u64,
    listen: Option<Listen>,
    source: Option<Box<dyn ChangeSource>>,
}

impl Sources {
    pub fn new(poll_timeout_ms: u64) -> Sources {
        Sources {
            poll_timeout_ms,
            listen: None,
            source: None,
        }
    }

    /// The source for `listen` (the one built last, unless `listen` changed since).
    pub fn current(&mut self, listen: &Listen) -> &mut dyn ChangeSource {
        if self.source.is_none() || self.listen.as_ref() != Some(listen) {
            // Fresh credentials for the queue we read already: no messages were missed, so
            // the new source need not read the feed first (one request less an hour).
            let same_queue = matches!(
                (&self.listen, listen),
                (Some(Listen::Sqs { queue_url: old, .. }), Listen::Sqs { queue_url: new, .. })
                    if old == new
            );
            let source: Box<dyn ChangeSource> = match listen {
                Listen::Poll => Box::new(PollSource::new(self.poll_timeout_ms)),
                Listen::Sqs {
                    queue_url,
                    region,
                    endpoint,
                    credentials,
                } => {
                    if !same_queue {
                        tracing::info!("listening on SQS queue {queue_url}");
                    }
                    let mut source =
                        SqsSource::new(queue_url, region, endpoint.as_deref(), credentials);
                    if same_queue {
                        source.skip_catch_up();
                    }
                    Box::new(source)
                }
            };
            self.source = Some(source);
            self.listen = Some(listen.clone());
        }
        self.source.as_deref_mut().expect("set above")
    }
}
