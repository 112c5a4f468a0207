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

/// `POST /devices` stored the device, then failed (here: no credentials for its queue, as when
/// STS refuses); the client sends the same request again with its request id, to another
/// instance: it gets the device the first try made, and the user has one device, not an
/// orphan that would be counted against the cap for good. Without a request id each try is
/// a device (what clients before the id get).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_retried_after_failing_halfway_is_one_device() {
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use tower::ServiceExt;

    use crate::store::MetaStore;

    let Some(setup) = Setup::new().await else {
        return;
    };
    let meta = Arc::new(DynamoStore::new(&setup.sdk, &setup.settings));
    let blocks = tempfile::tempdir().unwrap();
    let blobs = Arc::new(crate::blobs::local::LocalBlobStore::open(blocks.path()).unwrap());
    let mut no_role = setup.settings.clone();
    no_role.listener_role_arn = None;
    let instance = |bus: SqsBus| {
        crate::api::router(Arc::new(crate::service::Service::new(
            meta.clone(),
            blobs.clone(),
            Arc::new(bus),
        )))
    };
    let (broken, good) = (
        instance(SqsBus::new(&setup.sdk, &no_role)),
        instance(setup.bus()),
    );
    let (user, token) = crate::admin::add_user(meta.as_ref(), "erin").await.unwrap();
    let post = |app: axum::Router, body: serde_json::Value| {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/devices")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(body.to_string()))
            .unwrap();
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            let json = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default();
            (status, json)
        }
    };
    let body = serde_json::json!({"name": "laptop", "request_id": "0123456789abcdef0123"});
    let (status, err) = post(broken.clone(), body.clone()).await;
    assert!(status.is_server_error(), "{status} {err}");
    let (status, dev) = post(good.clone(), body.clone()).await;
    assert_eq!(status, StatusCode::OK, "found, not created: {dev}");
    let devices = meta.devices(&user.id).await.unwrap();
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(dev["id"].as_u64(), Some(devices[0].id));
    assert!(
        matches!(dev["listen"]["via"].as_str(), Some("sqs")),
        "{dev}"
    );

    // A bad request id is refused, and changes nothing.
    let (status, err) = post(
        good.clone(),
        serde_json::json!({"name": "laptop", "request_id": "short"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(meta.devices(&user.id).await.unwrap().len(), 1);

    // Without a request id, the same two tries leave two devices.
    let plain = serde_json::json!({"name": "old client"});
    let (status, _) = post(broken, plain.clone()).await;
    assert!(status.is_server_error());
    let (status, _) = post(good, plain).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(meta.devices(&user.id).await.unwrap().len(), 3);
}
