//! The record of each device's SQS queue, kept in the table beside the device: `PK=U#<uid>
//! SK=Q#<device>` with `url`, `arn` and `renewed` (epoch seconds of the device's last
//! registration or renewal). The SQS bus ([`super::sqs`]) owns these items; they live in the
//! user's own partition, so removing the user removes them.
//!
//! Why a record, not the queue's name alone:
//! - **Renewal makes no SQS control-plane call.** Every device renews its credentials hourly;
//!   with the record the service needs one `GetItem` and STS, not `CreateQueue` (which tags
//!   the queue: `TagQueue` is limited to 30 per second per account) and `GetQueueAttributes`.
//!   A publishing Lambda finds the URLs here too instead of creating each queue again.
//! - **A half-done registration is no device.** The record is written last, once the queue
//!   exists and the device holds credentials for it; a device without one (its registration
//!   failed halfway, after the store had it) is sent nothing.
//! - **A removed device leaves nothing.** Unlinking a device deletes its record with its queue;
//!   forgetting all of a user's devices deletes every record of the user
//!   ([`DeviceQueues::delete_all`]), so no record outlives its device.
//! - **A device that went silent stops costing.** One that has not renewed for
//!   [`SILENT_AFTER`] (the queue's message retention: what was sent before is gone anyway) is
//!   sent nothing more; when it comes back it renews and reads the change log from its
//!   cursor, as after any gap. This also bounds what a registration whose answer was lost
//!   (the client registers again, leaving an unused device) costs: four days of sends.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, WriteRequest};
use jewel_wire::DeviceId;

use super::batch_get::batch_get;
use super::{count, sdk_err, PK, SK};
use crate::bus::{BusError, BusResult};

type Item = HashMap<String, AttributeValue>;

/// A device not renewed for this long is sent nothing (its queue keeps messages 4 days).
pub const SILENT_AFTER: Duration = Duration::from_secs(4 * 24 * 3600);
/// A renewal rewrites `renewed` only when it is older than this (one write a day per device,
/// not one an hour).
pub const RENEWED_GRANULARITY: Duration = Duration::from_secs(24 * 3600);

/// Where one device's notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceQueue {
    pub url: String,
    pub arn: String,
    /// Epoch seconds of the last registration or renewal that was recorded.
    pub renewed: u64,
}

impl DeviceQueue {
    /// Whether the device renewed recently enough to be sent changes.
    pub fn listening(&self, now: u64) -> bool {
        now.saturating_sub(self.renewed) < SILENT_AFTER.as_secs()
    }
}

pub struct DeviceQueues {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

fn be<E: std::error::Error + 'static>(e: E) -> BusError {
    BusError::Backend(sdk_err(&e))
}

fn key(user: &str, device: DeviceId) -> Item {
    HashMap::from([
        (PK.to_string(), AttributeValue::S(format!("U#{user}"))),
        (SK.to_string(), AttributeValue::S(format!("Q#{device}"))),
    ])
}

fn read(item: &Item) -> Option<(DeviceId, DeviceQueue)> {
    let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let device = s(SK)?.strip_prefix("Q#")?.parse().ok()?;
    let renewed = item.get("renewed")?.as_n().ok()?.parse().ok()?;
    Some((
        device,
        DeviceQueue {
            url: s("url")?,
            arn: s("arn")?,
            renewed,
        },
    ))
}

/// Epoch seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl DeviceQueues {
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> DeviceQueues {
        DeviceQueues {
            client,
            table: table.to_string(),
        }
    }

    /// The device's queue record, if its registration completed.
    pub async fn get(&self, user: &str, device: DeviceId) -> BusResult<Option<DeviceQueue>> {
        count("dynamodb:GetItem");
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(user, device)))
            .consistent_read(true)
            .send()
            .await
            .map_err(be)?;
        Ok(out.item.as_ref().and_then(read).map(|(_, q)| q))
    }

    /// Records (or re-records) the device's queue, renewed now.
    pub async fn put(&self, user: &str, device: DeviceId, queue: &DeviceQueue) -> BusResult<()> {
        let mut item = key(user, device);
        item.insert("url".into(), AttributeValue::S(queue.url.clone()));
        item.insert("arn".into(), AttributeValue::S(queue.arn.clone()));
        item.insert(
            "renewed".into(),
            AttributeValue::N(queue.renewed.to_string()),
        );
        count("dynamodb:PutItem");
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(be)?;
        Ok(())
    }

    /// Forgets the device's record (the device is being removed); no record is no error.
    pub async fn delete(&self, user: &str, device: DeviceId) -> BusResult<()> {
        count("dynamodb:DeleteItem");
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(user, device)))
            .send()
            .await
            .map_err(be)?;
        Ok(())
    }

    /// Forgets every queue record of the user (its devices are being forgotten): reads a page
    /// of keys, deletes it 25 at a time, until none is left. Returns how many went.
    pub async fn delete_all(&self, user: &str) -> BusResult<usize> {
        let mut removed = 0;
        let mut start: Option<Item> = None;
        loop {
            count("dynamodb:Query");
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk AND begins_with(#sk, :q)")
                .projection_expression("#pk, #sk")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#sk", SK)
                .expression_attribute_values(":pk", AttributeValue::S(format!("U#{user}")))
                .expression_attribute_values(":q", AttributeValue::S("Q#".into()))
                .consistent_read(true)
                .limit(1000)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(be)?;
            for chunk in page.items().chunks(25) {
                let mut pending: Vec<WriteRequest> = chunk
                    .iter()
                    .map(|k| {
                        let req = DeleteRequest::builder()
                            .set_key(Some(k.clone()))
                            .build()
                            .map_err(be)?;
                        Ok(WriteRequest::builder().delete_request(req).build())
                    })
                    .collect::<BusResult<_>>()?;
                for attempt in 0.. {
                    if pending.is_empty() {
                        break;
                    }
                    if attempt > 10 {
                        return Err(BusError::Backend(
                            "deleting the device queue records kept being throttled".into(),
                        ));
                    }
                    count("dynamodb:BatchWriteItem");
                    let out = self
                        .client
                        .batch_write_item()
                        .request_items(&self.table, std::mem::take(&mut pending))
                        .send()
                        .await
                        .map_err(be)?;
                    if let Some(rest) = out
                        .unprocessed_items
                        .and_then(|mut r| r.remove(&self.table))
                    {
                        pending = rest;
                        tokio::time::sleep(Duration::from_millis(20 << attempt.min(6))).await;
                    }
                }
                removed += chunk.len();
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(removed),
            }
        }
    }

    /// The records of these devices (those that have one), read in batches of 100.
    pub async fn get_many(
        &self,
        user: &str,
        devices: &[DeviceId],
    ) -> BusResult<HashMap<DeviceId, DeviceQueue>> {
        let keys = devices.iter().map(|&d| key(user, d)).collect();
        let items = batch_get(&self.client, &self.table, keys, None)
            .await
            .map_err(|e| BusError::Backend(e.reading("the device queues")))?;
        Ok(items.iter().filter_map(read).collect())
    }
}
