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

#[test]
fn many_small_files_go_up_in_batches_not_a_round_trip_each() {
    let server = Server::start();
    let token = server.add_user("batcher");
    let proxy = FaultProxy::start(&server.url);
    let a = Mount::with_url(&proxy.url, &token, "writer");
    let b = Mount::new(&server, &token, "reader");
    const FILES: usize = 400;
    std::fs::create_dir(a.p("many")).unwrap();
    a.wait_uploaded(SYNC);

    let before = proxy.stats();
    for i in 0..FILES {
        std::fs::write(a.p(&format!("many/f{i}")), format!("small file {i}")).unwrap();
    }
    a.wait_uploaded(SYNC);
    let created = proxy.stats();
    let sent = |from: &integration_tests::fault_proxy::Stats,
                to: &integration_tests::fault_proxy::Stats,
                route: &str| to.requests(route) - from.requests(route);
    let one_by_one = sent(&before, &created, "POST /api/v1/nodes");
    let batches = sent(&before, &created, "POST /api/v1/batch");
    let block_questions = sent(&before, &created, "POST /api/v1/blocks/missing");
    eprintln!("{FILES} creates: {batches} batches, {one_by_one} single creates, {block_questions} block questions");
    assert!(
        one_by_one + batches + block_questions <= (FILES / 10) as u64,
        "{FILES} new files took {batches} batches + {one_by_one} single creates + \
         {block_questions} block questions: more than one request per 10 files"
    );
    for i in (0..FILES).step_by(37) {
        wait_content(
            &b.p(&format!("many/f{i}")),
            format!("small file {i}").as_bytes(),
            SYNC,
        );
    }

    for i in 0..FILES {
        std::fs::remove_file(a.p(&format!("many/f{i}"))).unwrap();
    }
    a.wait_uploaded(SYNC);
    let deleted = proxy.stats();
    let one_by_one = sent(&created, &deleted, "DELETE /api/v1/nodes/{id}");
    let batches = sent(&created, &deleted, "POST /api/v1/batch");
    eprintln!("{FILES} deletes: {batches} batches, {one_by_one} single deletes");
    assert!(
        one_by_one + batches <= (FILES / 10) as u64,
        "{FILES} deletes took {batches} batches + {one_by_one} single deletes"
    );
    wait_for("B sees the folder empty", SYNC, || {
        (std::fs::read_dir(b.p("many")).unwrap().count() == 0).then_some(())
    });
}

#[test]
fn small_files_travel_inline_with_their_change_and_open_without_a_request() {
    let server = Server::start();
    let token = server.add_user("inliner");
    let to_a = FaultProxy::start(&server.url);
    let to_b = FaultProxy::start(&server.url);
    let a = Mount::with_url(&to_a.url, &token, "writer");
    let b = Mount::with_url(&to_b.url, &token, "reader");
    std::fs::create_dir(a.p("notes")).unwrap();
    a.wait_uploaded(SYNC);
    // B looks at the folder, as its user would: changes in it now arrive in full.
    wait_for("the folder on B", SYNC, || {
        std::fs::read_dir(b.p("notes")).ok().map(|d| d.count())
    });

    // Sizes from 1 byte to the inline limit (4 KiB), and one file just above it.
    let small: Vec<(String, Vec<u8>)> = (0..50)
        .map(|i| {
            let len = 1 + (i * 83) % 4096;
            (format!("notes/n{i}.txt"), seeded::bytes(len, i as u64))
        })
        .chain([("notes/n50.txt".to_string(), seeded::bytes(4096, 50))])
        .collect();
    let bigger = seeded::bytes(10_000, 99);
    let (a_before, b_before) = (to_a.stats(), to_b.stats());
    for (name, data) in &small {
        std::fs::write(a.p(name), data).unwrap();
    }
    std::fs::write(a.p("notes/bigger.bin"), &bigger).unwrap();
    a.wait_uploaded(SYNC);
    let a_after = to_a.stats();
    let up = |route: &str| a_after.requests(route) - a_before.requests(route);
    eprintln!(
        "A: {} block questions, {} block uploads, {} batches, {} creates",
        up("POST /api/v1/blocks/missing"),
        up("PUT /blob/{user}/{hash}"),
        up("POST /api/v1/batch"),
        up("POST /api/v1/nodes")
    );
    assert!(
        up("PUT /blob/{user}/{hash}") <= 1,
        "only the file above 4 KiB uploads a block; the small ones went inline"
    );
    assert!(up("POST /api/v1/blocks/missing") <= 1);

    // B: every file shows with its size, then opens without one request to the service.
    for (name, data) in small
        .iter()
        .chain([&("notes/bigger.bin".to_string(), bigger.clone())])
    {
        wait_for(&format!("{name} on B"), SYNC, || {
            std::fs::metadata(b.p(name))
                .ok()
                .filter(|m| m.len() == data.len() as u64)
        });
    }
    // The file above the limit first: it is fetched ahead, maybe still on its way.
    assert!(std::fs::read(b.p("notes/bigger.bin")).unwrap() == bigger);
    let b_listed = to_b.stats();
    for (name, data) in &small {
        let read = std::fs::read(b.p(name)).unwrap();
        assert!(read == *data, "B reads {name} as A wrote it");
    }
    let b_after = to_b.stats();
    let down = |from: &integration_tests::fault_proxy::Stats, route: &str| {
        b_after.requests(route) - from.requests(route)
    };
    assert_eq!(
        down(&b_listed, "POST /api/v1/blocks/urls") + down(&b_listed, "GET /blob/{user}/{hash}"),
        0,
        "the small files were in B's cache before their names showed"
    );
    assert!(
        down(&b_before, "GET /blob/{user}/{hash}") <= 1,
        "B downloaded only the file above the inline limit"
    );
}
