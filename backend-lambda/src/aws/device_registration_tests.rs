//! Device registration on the SQS bus as it holds at scale: a registration that fails halfway
//! leaves nothing that is sent every later change, a renewal (hourly, per device) makes no
//! SQS control-plane call, and a device that went silent stops being sent to.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aws_sdk_sqs::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_sqs::config::{ConfigBag, Intercept};
use aws_sdk_sqs::operation::create_queue::CreateQueueInput;
use aws_sdk_sqs::operation::get_queue_attributes::GetQueueAttributesInput;
use aws_sdk_sqs::operation::get_queue_url::GetQueueUrlInput;
use jewel_wire::Listen;

use super::device_queues::{now_secs, DeviceQueues, SILENT_AFTER};
use super::dynamo::DynamoStore;
use super::sqs::SqsBus;
use super::testing::{fresh_settings, moto, sdk_for, Emulator};
use super::tests::{event, receive_all};
use super::AwsSettings;
use crate::bus::ChangeBus;

/// Counts the SQS control-plane requests a client makes.
#[derive(Debug, Default, Clone)]
struct ControlPlaneCalls(Arc<AtomicUsize>);

impl Intercept for ControlPlaneCalls {
    fn name(&self) -> &'static str {
        "ControlPlaneCalls"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_sqs::error::BoxError> {
        let input = context.input();
        if input.downcast_ref::<CreateQueueInput>().is_some()
            || input.downcast_ref::<GetQueueAttributesInput>().is_some()
            || input.downcast_ref::<GetQueueUrlInput>().is_some()
        {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

struct Setup {
    sdk: aws_config::SdkConfig,
    settings: AwsSettings,
    _moto: Arc<Emulator>,
}

impl Setup {
    async fn new() -> Option<Setup> {
        let m = moto()?;
        let sdk = sdk_for(&m.url).await;
        let settings = fresh_settings();
        DynamoStore::new(&sdk, &settings)
            .create_table()
            .await
            .unwrap();
        Some(Setup {
            sdk,
            settings,
            _moto: m,
        })
    }

    /// A bus as a fresh Lambda instance has it: nothing cached.
    fn bus(&self) -> SqsBus {
        SqsBus::new(&self.sdk, &self.settings)
    }

    /// What waits in a queue, read with the service's own client (not the device's).
    async fn waiting(&self, url: &str) -> usize {
        let sqs = aws_sdk_sqs::Client::new(&self.sdk);
        let mut n = 0;
        loop {
            let got = sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap()
                .messages
                .unwrap_or_default();
            if got.is_empty() {
                return n;
            }
            n += got.len();
        }
    }
}

fn url_of(listen: &Listen) -> String {
    match listen {
        Listen::Sqs { queue_url, .. } => queue_url.clone(),
        other => panic!("not SQS: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_that_fails_halfway_is_sent_nothing() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let user = "dora".to_string();
    // The queue is created, then the credentials cannot be had (no listener role: as when
    // STS refuses): the device asked in vain and will register again.
    let mut no_role = setup.settings.clone();
    no_role.listener_role_arn = None;
    let broken = SqsBus::new(&setup.sdk, &no_role);
    assert!(broken.register_device(&user, 301).await.is_err());
    let queue = broken.queue_name(&user, 301);
    let url = aws_sdk_sqs::Client::new(&setup.sdk)
        .get_queue_url()
        .queue_name(&queue)
        .send()
        .await
        .expect("the queue was made before the failure")
        .queue_url
        .unwrap();

    let bus = setup.bus();
    let good = bus.register_device(&user, 302).await.unwrap();
    // The store still lists device 301 (its item was written first): the bus must not send.
    bus.publish(&user, &[301, 302], &[event(1, 5)])
        .await
        .unwrap();
    assert_eq!(receive_all(&good).await.len(), 1);
    assert_eq!(
        setup.waiting(&url).await,
        0,
        "the half-registered device's queue is sent nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_and_publish_make_no_queue_control_plane_call() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let user = "erin".to_string();
    let first = setup.bus().register_device(&user, 401).await.unwrap();

    // Another instance (a cold Lambda) renews the device and publishes to it.
    let calls = ControlPlaneCalls::default();
    let conf = aws_sdk_sqs::config::Builder::from(&setup.sdk)
        .interceptor(calls.clone())
        .build();
    let bus = setup
        .bus()
        .with_sqs_client(aws_sdk_sqs::Client::from_conf(conf));
    let renewed = bus.register_device(&user, 401).await.unwrap();
    assert_eq!(url_of(&renewed), url_of(&first), "the same queue");
    bus.publish(&user, &[401], &[event(1, 5)]).await.unwrap();
    assert_eq!(
        calls.0.load(Ordering::SeqCst),
        0,
        "no CreateQueue, GetQueueAttributes or GetQueueUrl on renewal or publish"
    );
    assert_eq!(receive_all(&renewed).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_silent_past_the_queue_retention_is_sent_nothing_until_it_renews() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let user = "fred".to_string();
    let listen = setup.bus().register_device(&user, 501).await.unwrap();
    // Its last renewal was longer ago than the queue keeps messages.
    let queues = DeviceQueues::new(
        aws_sdk_dynamodb::Client::new(&setup.sdk),
        &setup.settings.table,
    );
    let mut record = queues.get(&user, 501).await.unwrap().unwrap();
    record.renewed = now_secs() - SILENT_AFTER.as_secs() - 60;
    queues.put(&user, 501, &record).await.unwrap();

    let bus = setup.bus();
    bus.publish(&user, &[501], &[event(1, 5)]).await.unwrap();
    assert_eq!(
        setup.waiting(&url_of(&listen)).await,
        0,
        "silent: sent nothing"
    );

    // It comes back: renews, and is sent to again (it reads the log for what it missed).
    let back = setup.bus().register_device(&user, 501).await.unwrap();
    setup
        .bus()
        .publish(&user, &[501], &[event(2, 5)])
        .await
        .unwrap();
    let got: Vec<u64> = receive_all(&back).await.iter().map(|e| e.seq).collect();
    assert_eq!(got, vec![2]);
}
