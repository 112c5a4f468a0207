//! What a sync costs in requests, counted where a real link would carry them: machine B
//! talks to the service through the fault proxy (with no faults planned), which counts every
//! request by route. On a link of tens of milliseconds per round trip each request is that
//! much waiting, so a count that grows is a slowdown even when loopback hides it.

use std::time::Duration;

use integration_tests::fault_proxy::FaultProxy;
use integration_tests::*;

const SYNC: Duration = Duration::from_secs(30);
/// The client's block size (4 MiB).
const BLOCK: usize = 4 << 20;

#[test]
fn a_cold_read_asks_for_block_urls_once_per_read_ahead_window() {
    let server = Server::start();
    let token = server.add_user("reader");
    let proxy = FaultProxy::start(&server.url);
    let a = Mount::new(&server, &token, "writer");
    let b = Mount::with_url(&proxy.url, &token, "reader");

    // Five blocks: the first read's read-ahead window (the block read and the four after it).
    let data = integration_tests::seeded::bytes(5 * BLOCK - 1000, 7);
    std::fs::write(a.p("big.bin"), &data).unwrap();
    a.wait_uploaded(SYNC);
    wait_for("big.bin listed on B", SYNC, || {
        std::fs::metadata(b.p("big.bin"))
            .ok()
            .filter(|m| m.len() == data.len() as u64)
    });

    let before = proxy.stats();
    let read = std::fs::read(b.p("big.bin")).unwrap();
    assert!(read == data, "B reads what A wrote");
    let after = proxy.stats();
    let asked = |route: &str| after.requests(route) - before.requests(route);
    assert_eq!(
        asked("GET /blob/{user}/{hash}"),
        5,
        "each block downloaded once"
    );
    assert_eq!(
        asked("POST /api/v1/blocks/urls"),
        1,
        "one URL request for the whole window (it was three per block: read-ahead in the \
         FUSE layer, again in the core, and once more by the fetch)"
    );
}
