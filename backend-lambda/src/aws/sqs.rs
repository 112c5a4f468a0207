//! `ChangeBus` on SQS: one standard queue per device, `<prefix>_<user>-<device>`.
//!
//! - **register_device** creates the device's queue (idempotent: registering again returns the
//!   same queue) with 20 s long polling as its default and a 4-day retention (a device away
//!   longer catches up from the change log anyway), then hands the device short-lived
//!   credentials for it: STS `AssumeRole` on `JEWEL_LISTENER_ROLE_ARN` with a *session policy*
//!   that allows only `ReceiveMessage`, `DeleteMessage`, `ChangeMessageVisibility` and
//!   `GetQueueAttributes` on that one queue. The effective permissions are the intersection
//!   of the role's policy (all JewelFS queues, receive side only) and the session policy, so a
//!   device can read its own queue and nothing else, and never holds the service's keys.
//!   The credentials last one hour (the limit when a Lambda role chains into another role);
//!   calling `register_device` again for the same device renews them for the same queue.
//!   The queue's URL and ARN are recorded beside the device ([`super::device_queues`]) once
//!   the device holds credentials, and renewal reads them there: one `GetItem` and STS, no
//!   SQS control-plane call.
//! - **publish** sends the events to each given device's queue with `SendMessageBatch`, only
//!   to devices whose registration completed and that renewed within the queue's retention
//!   (see [`super::device_queues`] for why). Each
//!   message body is a JSON `ChangePage` of consecutive events, at most [`MAX_BODY`] bytes, so a
//!   whole batch usually bills as one request (SQS bills per 64 KiB of payload). The sends to
//!   different devices run concurrently, at most [`MAX_CONCURRENT_SENDS`] at a time.
//! - **wait_after** is [`BusError::PollUnsupported`]: devices read their queues themselves.
//!
//! Queue records are cached per process for [`RECORD_CACHE`] (a warm Lambda sends without
//! reading them); a queue deleted behind our back is created again on the next send.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use jewel_wire::{ChangeEvent, ChangePage, DeviceId, Listen, Seq, SqsCredentials};

use super::device_queues::{now_secs, DeviceQueue, DeviceQueues, RENEWED_GRANULARITY};
use super::{count, sdk_err, AwsSettings};
use crate::bus::{BusError, BusResult, ChangeBus};
use crate::store::UserId;

/// Largest message body we send: below 64 KiB, so each message is one billed request.
pub const MAX_BODY: usize = 60 * 1024;
/// Largest batch payload (SQS allows 256 KiB per batch).
const MAX_BATCH_BYTES: usize = 240 * 1024;
/// Most sends to device queues in flight for one commit: a user with many devices (at most
/// `Limits::max_devices`) does not open a connection per device at once.
pub const MAX_CONCURRENT_SENDS: usize = 8;
/// Lifetime of device credentials (the most STS grants to a chained role session).
const CREDENTIALS_LIFETIME: Duration = Duration::from_secs(3600);
/// How long a process trusts a device's queue record it read (a device that went silent is
/// noticed this much later; one that registered is read afresh, as it was not cached).
pub const RECORD_CACHE: Duration = Duration::from_secs(3600);

pub struct SqsBus {
    sqs: aws_sdk_sqs::Client,
    sts: aws_sdk_sts::Client,
    prefix: String,
    role_arn: Option<String>,
    region: String,
    /// The SQS endpoint devices must use, when it is not AWS itself (loopback).
    endpoint: Option<String>,
    urls: Mutex<HashMap<String, String>>,
    queues: DeviceQueues,
    /// Queue records read by this process, with when they were read.
    records: Mutex<HashMap<(String, DeviceId), (std::time::Instant, DeviceQueue)>>,
}

fn be<E: std::error::Error + 'static>(e: E) -> BusError {
    BusError::Backend(sdk_err(&e))
}

impl SqsBus {
    pub fn new(sdk: &aws_config::SdkConfig, settings: &AwsSettings) -> SqsBus {
        SqsBus {
            sqs: aws_sdk_sqs::Client::new(sdk),
            sts: aws_sdk_sts::Client::new(sdk),
            prefix: settings.queue_prefix.clone(),
            role_arn: settings.listener_role_arn.clone(),
            region: sdk
                .region()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "us-east-1".into()),
            endpoint: std::env::var("AWS_ENDPOINT_URL_SQS")
                .ok()
                .filter(|v| !v.is_empty())
                .or_else(|| sdk.endpoint_url().map(str::to_string)),
            urls: Mutex::new(HashMap::new()),
            queues: DeviceQueues::new(aws_sdk_dynamodb::Client::new(sdk), &settings.table),
            records: Mutex::new(HashMap::new()),
        }
    }

    /// The same bus sending through another SQS client (tests watch its requests).
    pub fn with_sqs_client(mut self, sqs: aws_sdk_sqs::Client) -> SqsBus {
        self.sqs = sqs;
        self
    }

    /// The queue records of the devices that are listening (registered fully, renewed within
    /// the queue's retention), from the process cache or the table.
    async fn listening(
        &self,
        user: &str,
        devices: &[DeviceId],
    ) -> BusResult<HashMap<DeviceId, DeviceQueue>> {
        let now = now_secs();
        let mut out = HashMap::new();
        let mut unknown = Vec::new();
        {
            let cache = self.records.lock().unwrap();
            for &d in devices {
                match cache.get(&(user.to_string(), d)) {
                    Some((at, q)) if at.elapsed() < RECORD_CACHE && q.listening(now) => {
                        out.insert(d, q.clone());
                    }
                    _ => unknown.push(d),
                }
            }
        }
        if !unknown.is_empty() {
            let read = self.queues.get_many(user, &unknown).await?;
            let mut cache = self.records.lock().unwrap();
            for (d, q) in read {
                if q.listening(now) {
                    cache.insert(
                        (user.to_string(), d),
                        (std::time::Instant::now(), q.clone()),
                    );
                    out.insert(d, q);
                }
            }
        }
        Ok(out)
    }

    pub fn queue_name(&self, user: &str, device: DeviceId) -> String {
        queue_name(&self.prefix, user, device)
    }

    /// Creates the queue if needed and returns its URL (cached).
    async fn queue_url(&self, user: &str, device: DeviceId) -> BusResult<String> {
        let name = self.queue_name(user, device);
        if let Some(url) = self.urls.lock().unwrap().get(&name) {
            return Ok(url.clone());
        }
        count("sqs:CreateQueue");
        let out = self
            .sqs
            .create_queue()
            .queue_name(&name)
            .attributes(QueueAttributeName::ReceiveMessageWaitTimeSeconds, "20")
            .attributes(
                QueueAttributeName::MessageRetentionPeriod,
                (4 * 24 * 3600).to_string(),
            )
            .tags("jewel-user", user)
            .send()
            .await
            .map_err(be)?;
        let url = out
            .queue_url
            .ok_or_else(|| BusError::Backend("CreateQueue gave no URL".into()))?;
        self.urls.lock().unwrap().insert(name, url.clone());
        Ok(url)
    }

    async fn queue_arn(&self, url: &str) -> BusResult<String> {
        count("sqs:GetQueueAttributes");
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(be)?;
        out.attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .ok_or_else(|| BusError::Backend("the queue has no ARN".into()))
    }

    /// Credentials that can only receive from and delete on the queue `arn`.
    async fn device_credentials(&self, arn: &str, device: DeviceId) -> BusResult<SqsCredentials> {
        let role = self.role_arn.as_deref().ok_or_else(|| {
            BusError::Backend(format!(
                "{} is not set: devices cannot be given credentials for their queues",
                super::ENV_LISTENER_ROLE
            ))
        })?;
        count("sts:AssumeRole");
        let out = self
            .sts
            .assume_role()
            .role_arn(role)
            .role_session_name(format!("jewel-device-{device}"))
            .policy(session_policy(arn))
            .duration_seconds(CREDENTIALS_LIFETIME.as_secs() as i32)
            .send()
            .await
            .map_err(be)?;
        let c = out
            .credentials
            .ok_or_else(|| BusError::Backend("AssumeRole gave no credentials".into()))?;
        let exp = c.expiration();
        Ok(SqsCredentials {
            access_key_id: c.access_key_id().to_string(),
            secret_access_key: c.secret_access_key().to_string(),
            session_token: Some(c.session_token().to_string()),
            expires_ns: exp.secs() * 1_000_000_000 + exp.subsec_nanos() as i64,
        })
    }
}

/// The queue name of one device, `<prefix>_<user>-<device>`: only the characters SQS allows,
/// at most 80. The prefix (the deployment's name) has no `_`, so the first `_` ends it and
/// the IAM pattern `<prefix>_*` covers exactly this deployment's queues (`terraform/iam.tf`).
pub fn queue_name(prefix: &str, user: &str, device: DeviceId) -> String {
    let mut name = format!("{}{device}", user_queue_prefix(prefix, user));
    name.truncate(80);
    name
}

/// What the names of one user's queues begin with, `<prefix>_<user>-`.
pub fn user_queue_prefix(prefix: &str, user: &str) -> String {
    let clean: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}_{clean}-")
}

/// The session policy that narrows the listener role to one queue.
pub fn session_policy(queue_arn: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes"
            ],
            "Resource": queue_arn
        }]
    })
    .to_string()
}

/// Splits events into message bodies of at most [`MAX_BODY`] bytes, in order. An event that
/// alone exceeds that becomes an empty page naming its sequence number (read from the log).
pub fn bodies(events: &[ChangeEvent]) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let mut end = start + 1;
        let mut body = page_json(&events[start..end]);
        if body.len() > MAX_BODY {
            // One event too large for a message (a file of thousands of blocks): send only its
            // sequence number; the device sees `latest_seq` beyond its cursor with no events
            // and reads the event from the change log, as after any gap.
            body = serde_json::to_string(&ChangePage {
                events: Vec::new(),
                latest_seq: events[start].seq,
                through: None,
            })
            .expect("serialise");
        }
        while end < events.len() {
            let next = page_json(&events[start..end + 1]);
            if next.len() > MAX_BODY {
                break;
            }
            body = next;
            end += 1;
        }
        out.push(body);
        start = end;
    }
    out
}

fn page_json(events: &[ChangeEvent]) -> String {
    let latest_seq: Seq = events.iter().map(|e| e.seq).max().unwrap_or(0);
    serde_json::to_string(&ChangePage {
        events: events.to_vec(),
        latest_seq,
        through: None,
    })
    .expect("serialise")
}

#[async_trait]
impl ChangeBus for SqsBus {
    async fn register_device(&self, user: &UserId, device: DeviceId) -> BusResult<Listen> {
        // A renewal: the queue is recorded, only the credentials are new.
        if let Some(mut queue) = self.queues.get(user, device).await? {
            let credentials = self.device_credentials(&queue.arn, device).await?;
            let now = now_secs();
            if now.saturating_sub(queue.renewed) >= RENEWED_GRANULARITY.as_secs() {
                queue.renewed = now;
                self.queues.put(user, device, &queue).await?;
            }
            return Ok(Listen::Sqs {
                queue_url: queue.url,
                region: self.region.clone(),
                endpoint: self.endpoint.clone(),
                credentials,
            });
        }
        let mut queue_url = self.queue_url(user, device).await?;
        let arn = match self.queue_arn(&queue_url).await {
            Ok(arn) => arn,
            Err(_) => {
                // A cached URL of a queue deleted behind our back: create it again (a device
                // asking for its listener after its queue vanished must get a working one).
                self.urls
                    .lock()
                    .unwrap()
                    .remove(&self.queue_name(user, device));
                queue_url = self.queue_url(user, device).await?;
                self.queue_arn(&queue_url).await?
            }
        };
        let credentials = self.device_credentials(&arn, device).await?;
        // Recorded last: a registration that failed before this point is sent nothing.
        let queue = DeviceQueue {
            url: queue_url.clone(),
            arn,
            renewed: now_secs(),
        };
        self.queues.put(user, device, &queue).await?;
        Ok(Listen::Sqs {
            queue_url,
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            credentials,
        })
    }

    async fn publish(
        &self,
        user: &UserId,
        devices: &[DeviceId],
        events: &[ChangeEvent],
    ) -> BusResult<()> {
        if events.is_empty() || devices.is_empty() {
            return Ok(());
        }
        let listening = self.listening(user, devices).await?;
        let bodies = bodies(events);
        // Every device gets its copy even when another device's send fails; the first failure
        // is reported after all were tried.
        let sends: Vec<_> = listening
            .iter()
            .map(|(&d, q)| self.publish_to(user, d, &q.url, &bodies))
            .collect();
        let results = crate::bus::bounded(sends, MAX_CONCURRENT_SENDS).await;
        results.into_iter().collect::<BusResult<Vec<()>>>()?;
        Ok(())
    }

    async fn wait_after(&self, _user: &UserId, _after: Seq, _timeout: Duration) -> BusResult<Seq> {
        Err(BusError::PollUnsupported)
    }

    /// Deletes the device's queue (a queue already gone is no error).
    async fn remove_device(&self, user: &UserId, device: DeviceId) -> BusResult<()> {
        let name = self.queue_name(user, device);
        self.urls.lock().unwrap().remove(&name);
        // The record first: a device without one is sent nothing, whatever happens next.
        self.records
            .lock()
            .unwrap()
            .remove(&(user.to_string(), device));
        self.queues.delete(user, device).await?;
        count("sqs:GetQueueUrl");
        let url = match self.sqs.get_queue_url().queue_name(&name).send().await {
            Ok(out) => out.queue_url().unwrap_or_default().to_string(),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_queue_does_not_exist()) =>
            {
                return Ok(())
            }
            Err(e) => return Err(be(e)),
        };
        count("sqs:DeleteQueue");
        match self.sqs.delete_queue().queue_url(&url).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_queue_does_not_exist()) =>
            {
                Ok(())
            }
            Err(e) => Err(be(e)),
        }
    }

    /// Deletes every queue record of the user, then every queue named
    /// `<prefix>_<user>-<device>`, found by listing the name prefix (so also queues of devices
    /// whose items are already gone).
    async fn remove_user(&self, user: &UserId) -> BusResult<u64> {
        self.records.lock().unwrap().retain(|(u, _), _| u != user);
        self.queues.delete_all(user).await?;
        let prefix = user_queue_prefix(&self.prefix, user);
        let mut urls = Vec::new();
        let mut next: Option<String> = None;
        loop {
            count("sqs:ListQueues");
            let out = self
                .sqs
                .list_queues()
                .queue_name_prefix(&prefix)
                .max_results(1000)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(be)?;
            urls.extend(out.queue_urls().iter().cloned());
            match out.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => break,
            }
        }
        let mut removed = 0;
        for url in urls {
            // Only `<prefix><digits>`: a longer user id sharing our prefix is someone else.
            let name = url.rsplit('/').next().unwrap_or_default();
            let device = name.strip_prefix(&prefix).unwrap_or_default();
            if device.is_empty() || !device.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            count("sqs:DeleteQueue");
            match self.sqs.delete_queue().queue_url(&url).send().await {
                Ok(_) => removed += 1,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_queue_does_not_exist()) => {}
                Err(e) => return Err(be(e)),
            }
            self.urls.lock().unwrap().remove(name);
        }
        Ok(removed)
    }
}

impl SqsBus {
    /// Sends the bodies to one device's queue. A queue deleted behind our back (a cached URL
    /// gone stale) is created again once; if that fails too (AWS refuses to recreate a queue
    /// name for 60 s), the device catches up from the change log when it next asks for its
    /// listener.
    async fn publish_to(
        &self,
        user: &str,
        device: DeviceId,
        recorded_url: &str,
        bodies: &[String],
    ) -> BusResult<()> {
        let mut url = recorded_url.to_string();
        for attempt in 0..2 {
            match self.send_all(&url, bodies).await {
                Err(Sent::Gone) if attempt == 0 => {
                    self.urls
                        .lock()
                        .unwrap()
                        .remove(&self.queue_name(user, device));
                    url = self.queue_url(user, device).await?;
                }
                Err(Sent::Gone) => {
                    return Err(BusError::Backend(format!(
                        "the queue of device {device} is gone"
                    )))
                }
                Err(Sent::Failed(e)) => return Err(e),
                Ok(()) => return Ok(()),
            }
        }
        Ok(())
    }

    async fn send_all(&self, url: &str, bodies: &[String]) -> Result<(), Sent> {
        let mut batch: Vec<SendMessageBatchRequestEntry> = Vec::new();
        let mut bytes = 0;
        for (i, body) in bodies.iter().enumerate() {
            if batch.len() == 10 || (bytes + body.len() > MAX_BATCH_BYTES && !batch.is_empty()) {
                self.send_batch(url, std::mem::take(&mut batch)).await?;
                bytes = 0;
            }
            bytes += body.len();
            batch.push(
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body.clone())
                    .build()
                    .map_err(|e| Sent::Failed(be(e)))?,
            );
        }
        self.send_batch(url, batch).await
    }

    async fn send_batch(
        &self,
        url: &str,
        batch: Vec<SendMessageBatchRequestEntry>,
    ) -> Result<(), Sent> {
        if batch.is_empty() {
            return Ok(());
        }
        count("sqs:SendMessageBatch");
        let out = match self
            .sqs
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(batch))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_queue_does_not_exist()) =>
            {
                return Err(Sent::Gone)
            }
            Err(e) => return Err(Sent::Failed(be(e))),
        };
        if let Some(f) = out.failed.first() {
            return Err(Sent::Failed(BusError::Backend(format!(
                "SQS refused a change message: {} {}",
                f.code,
                f.message.as_deref().unwrap_or("")
            ))));
        }
        Ok(())
    }
}

/// Why a send did not go through.
enum Sent {
    /// The queue does not exist (any more).
    Gone,
    Failed(BusError),
}
