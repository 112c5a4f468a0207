//! What a sync costs in requests, counted where a real link would carry them: machine B
//! talks to the service through the fault proxy (with no faults planned), which counts every
//! request by route. On a link of tens of milliseconds per round trip each request is that
//! much waiting, so a count that grows is a slowdown even when loopback hides it.

use std::time::Duration;

use integration_tests::fault_proxy::{Fault, FaultProxy, Plan, Scope};
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

    // A link of tens of milliseconds, as users have (on loopback how many changes wait for
    // the next batch depends on how fast this machine answers, not on the client).
    proxy.set(Plan::new(1).with(Fault::Slow(Duration::from_millis(30)), Scope::Changes, 1.0));
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

/// Renames and `chmod`s go up in batches too (each was a round trip: on a 50 ms link a
/// thousand renames took 50 s). A rename over an existing file still goes alone, through
/// every rule for a taken name, and lands.
#[test]
fn many_renames_and_chmods_go_up_in_batches() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start();
    let token = server.add_user("renamer");
    let proxy = FaultProxy::start(&server.url);
    let a = Mount::with_url(&proxy.url, &token, "writer");
    let b = Mount::new(&server, &token, "reader");
    const FILES: usize = 300;
    std::fs::create_dir(a.p("from")).unwrap();
    std::fs::create_dir(a.p("to")).unwrap();
    for i in 0..FILES {
        std::fs::write(a.p(&format!("from/f{i}")), format!("file {i}")).unwrap();
    }
    a.wait_uploaded(SYNC);

    // A link of tens of milliseconds, as users have: on loopback each answer comes back
    // before the app's next few renames, so a batch could never hold more than those.
    proxy.set(Plan::new(1).with(Fault::Slow(Duration::from_millis(30)), Scope::Changes, 1.0));
    let before = proxy.stats();
    // `mv from/* to/`, each renamed on the way; then `chmod 600 to/*`.
    for i in 0..FILES {
        let to = a.p(&format!("to/g{i}"));
        std::fs::rename(a.p(&format!("from/f{i}")), &to).unwrap();
        if i % 50 == 0 {
            // A file renamed and chmod-ed at once (the chmod may ride with the rename).
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    for i in 0..FILES {
        let to = a.p(&format!("to/g{i}"));
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // An editor's save in the middle of it all: a rename over an existing file.
    std::fs::rename(a.p("to/g7"), a.p("to/g8")).unwrap();
    a.wait_uploaded(SYNC);
    let after = proxy.stats();
    let sent = |route: &str| after.requests(route) - before.requests(route);
    let (moves, chmods, batches) = (
        sent("POST /api/v1/nodes/{id}/move"),
        sent("PATCH /api/v1/nodes/{id}"),
        sent("POST /api/v1/batch"),
    );
    eprintln!(
        "{FILES} renames + {FILES} chmods: {batches} batches, {moves} single moves, \
         {chmods} single chmods"
    );
    assert!(
        moves + chmods + batches <= (2 * FILES / 10) as u64,
        "{} renames and chmods took {batches} batches + {moves} single moves + {chmods} \
         single chmods: more than one request per 10 changes",
        2 * FILES
    );

    wait_for("B shows every file at its new name", SYNC, || {
        let names = std::fs::read_dir(b.p("to"))
            .unwrap()
            .filter_map(|e| e.ok())
            .count();
        let left = std::fs::read_dir(b.p("from")).unwrap().count();
        (names == FILES - 1 && left == 0).then_some(())
    });
    wait_content(&b.p("to/g8"), b"file 7", SYNC);
    assert!(!b.p("to/g7").exists(), "g7 was renamed over g8");
    for i in (0..FILES).filter(|i| *i != 7 && *i != 8).step_by(29) {
        let path = b.p(&format!("to/g{i}"));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            format!("file {i}").as_bytes()
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{path:?} keeps its chmod");
    }
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
