//! The one `ChangeBus` suite every engine passes (in-process, SQS).
//!
//! What every bus must do: register a device, and accept published events for the user's
//! devices without error, in batches of any size. Waking a long-poll is checked only for buses
//! read by long-poll (`wait_after` not answering `PollUnsupported`); how an SQS device
//! receives is checked by that engine's own tests, which read its queue.

use std::time::{Duration, Instant};

use jewel_wire::{ChangeEvent, ChangeOp, Node, NodeKind};

use super::{BusError, ChangeBus};

pub fn event(seq: u64) -> ChangeEvent {
    ChangeEvent {
        inline: None,
        seq,
        op: ChangeOp::Upsert,
        node: Node {
            id: 1000 + seq,
            parent: 1,
            name: format!("f{seq}"),
            kind: NodeKind::File,
            size: 0,
            mode: 0o644,
            mtime_ns: 0,
            version: 1,
            blocks: vec![],
            target: None,
        },
        from: None,
        device: None,
        at_ns: 0,
    }
}

fn user() -> String {
    format!("bus{}", crate::store::new_id())
}

pub async fn publish_reaches_a_waiting_poller(bus: &dyn ChangeBus) {
    let u = user();
    bus.register_device(&u, 11).await.unwrap();
    match bus.wait_after(&u, 0, Duration::from_millis(1)).await {
        Err(BusError::PollUnsupported) => return,
        other => assert_eq!(other.unwrap(), 0),
    }
    let start = Instant::now();
    let (newest, ()) = tokio::join!(bus.wait_after(&u, 0, Duration::from_secs(10)), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        bus.publish(&u, &[11], &[event(1), event(2)]).await.unwrap();
    });
    assert_eq!(newest.unwrap(), 2);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the poller was not woken"
    );
}

pub async fn wait_returns_at_once_when_already_newer(bus: &dyn ChangeBus) {
    let u = user();
    bus.register_device(&u, 12).await.unwrap();
    bus.publish(&u, &[12], &[event(5)]).await.unwrap();
    match bus.wait_after(&u, 3, Duration::from_secs(10)).await {
        Err(BusError::PollUnsupported) => {}
        other => assert_eq!(other.unwrap(), 5),
    }
}

pub async fn users_are_separate(bus: &dyn ChangeBus) {
    let (a, b) = (user(), user());
    bus.register_device(&a, 13).await.unwrap();
    bus.register_device(&b, 14).await.unwrap();
    bus.publish(&a, &[13], &[event(9)]).await.unwrap();
    match bus.wait_after(&b, 0, Duration::from_millis(50)).await {
        Err(BusError::PollUnsupported) => {}
        other => assert_eq!(other.unwrap(), 0, "user b saw user a's change"),
    }
}

pub async fn large_batches_publish(bus: &dyn ChangeBus) {
    let u = user();
    bus.register_device(&u, 15).await.unwrap();
    bus.register_device(&u, 16).await.unwrap();
    let events: Vec<_> = (1..=25).map(event).collect();
    bus.publish(&u, &[15, 16], &events).await.unwrap();
}

/// Expands to one `#[tokio::test]` per conformance case. `$make` is an async expression
/// giving `(bus, guard)`.
#[macro_export]
macro_rules! change_bus_conformance {
    ($make:expr) => {
        $crate::change_bus_conformance!(@cases $make;
            publish_reaches_a_waiting_poller,
            wait_returns_at_once_when_already_newer,
            users_are_separate,
            large_batches_publish
        );
    };
    (@cases $make:expr; $($case:ident),*) => {
        mod bus_conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (bus, _guard) = $make.await;
                    $crate::bus::conformance::$case(&bus).await;
                }
            )*
        }
    };
}
