//! `link_bench`: how fast files reach another machine over a real link, not loopback.
//! Part of `make bench` (`make bench-link` alone); writes `docs/BENCHMARKS-LINK.md`.
//!
//! Two mounts of one user, each talking to the service through its own proxy on loopback
//! (`integration_tests::fault_proxy`) that holds every answer back by the link's round trip
//! (`--rtt-ms`, default 50): every request costs what it costs a laptop tens of milliseconds
//! from its server, the long-polls that carry the news included. Machine A writes N small
//! files (1 KiB) into a folder that B has open (listed, as a file manager would); the time
//! runs until machine B has read every one of them back with the right content (what B has
//! not fetched ahead crosses the link when read). Then A deletes them, and
//! the time runs until B's folder is empty. The proxy counts requests by route.
//!
//! Flags: `--n 100,1000` (the sizes), `--runs 3` (the median is reported), `--rtt-ms 50`,
//! `--out docs` (where the Markdown goes). Needs root (FUSE) and release binaries.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use integration_tests::fault_proxy::{Fault, FaultProxy, Plan, Scope, Stats};
use integration_tests::{wait_for, Mount, Server};

const FILE_BYTES: usize = 1024;
const DEADLINE: Duration = Duration::from_secs(600);

struct Args {
    ns: Vec<usize>,
    runs: usize,
    rtt: Duration,
    out: PathBuf,
}

fn parse_args() -> Args {
    let mut args = Args {
        ns: vec![100, 1000],
        runs: 3,
        rtt: Duration::from_millis(50),
        out: PathBuf::from("docs"),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => {
                args.ns = value
                    .split(',')
                    .map(|n| n.parse().expect("--n takes numbers"))
                    .collect()
            }
            "--runs" => args.runs = value.parse().expect("--runs takes a number"),
            "--rtt-ms" => args.rtt = Duration::from_millis(value.parse().expect("--rtt-ms")),
            "--out" => args.out = PathBuf::from(value),
            other => panic!("unknown flag {other} (see the doc comment of link_bench.rs)"),
        }
    }
    args
}

fn content(i: usize) -> Vec<u8> {
    let mut v = format!("link file {i}\n").into_bytes();
    v.resize(FILE_BYTES, b'a' + (i % 26) as u8);
    v
}

/// One run's numbers.
struct Run {
    create_s: f64,
    delete_s: f64,
    /// Requests of both machines (long-polls excluded) per file, create and delete.
    requests_per_file: f64,
    /// Requests by route on A's and B's links, both phases.
    routes_a: BTreeMap<String, u64>,
    routes_b: BTreeMap<String, u64>,
}

fn requests(from: &Stats, to: &Stats) -> (u64, BTreeMap<String, u64>) {
    let mut total = 0;
    let mut routes = BTreeMap::new();
    for (route, n) in &to.by_route {
        let n = n - from.by_route.get(route).copied().unwrap_or(0);
        if n == 0 || route.ends_with("/poll") {
            continue;
        }
        total += n;
        routes.insert(route.clone(), n);
    }
    (total, routes)
}

fn run_once(server: &Server, token: &str, rtt: Duration, n: usize, run: usize) -> Run {
    let link = || {
        let proxy = FaultProxy::start(&server.url);
        proxy.set(Plan::new(1).with(Fault::Slow(rtt), Scope::All, 1.0));
        proxy
    };
    let (link_a, link_b) = (link(), link());
    let a = Mount::with_url(&link_a.url, token, &format!("a{n}-{run}"));
    let b = Mount::with_url(&link_b.url, token, &format!("b{n}-{run}"));
    let dir = format!("n{n}-r{run}");
    std::fs::create_dir(a.p(&dir)).unwrap();
    a.wait_uploaded(DEADLINE);
    // B has the folder open, as a file manager would (it is listed there).
    wait_for("the run folder on B", DEADLINE, || {
        std::fs::read_dir(b.p(&dir)).ok().map(|d| d.count())
    });
    let (a0, b0) = (link_a.stats(), link_b.stats());

    let start = Instant::now();
    for i in 0..n {
        std::fs::write(a.p(&format!("{dir}/f{i}")), content(i)).unwrap();
    }
    let mut unread: Vec<usize> = (0..n).collect();
    wait_for("every file read back on B", DEADLINE, || {
        unread.retain(|&i| std::fs::read(b.p(&format!("{dir}/f{i}"))).ok() != Some(content(i)));
        unread.is_empty().then_some(())
    });
    let create_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    for i in 0..n {
        std::fs::remove_file(a.p(&format!("{dir}/f{i}"))).unwrap();
    }
    wait_for("B's folder empty", DEADLINE, || {
        (std::fs::read_dir(b.p(&dir)).map(|d| d.count()).ok() == Some(0)).then_some(())
    });
    let delete_s = start.elapsed().as_secs_f64();

    if let Ok(dir) = std::env::var("LINK_LOG_DIR") {
        // The clients' logs, to see where a slow run spent its time (JEWEL_LOG=debug).
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(format!("{dir}/a-{n}-{run}.log"), a.log());
        let _ = std::fs::write(format!("{dir}/b-{n}-{run}.log"), b.log());
    }
    let (on_a, routes_a) = requests(&a0, &link_a.stats());
    let (on_b, routes_b) = requests(&b0, &link_b.stats());
    Run {
        create_s,
        delete_s,
        requests_per_file: (on_a + on_b) as f64 / n as f64,
        routes_a,
        routes_b,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args = parse_args();
    let server = Server::start();
    let token = server.add_user("link");
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Over a slow link\n\n\
         Generated by `make bench-link` (`integration-tests/src/bin/link_bench.rs`; part of \
         `make bench`) on {}, commit {}. Two mounts of one user, each behind a proxy that \
         holds every answer back {} ms (one round trip per request, long-polls included). \
         A writes N files of 1 KiB; *create* ends when B has read every one back with the \
         right content; *delete* when B's folder is empty. Median of {} runs ({} build); \
         server, proxies and both clients on this 2-core machine. A 1 KiB file travels \
         inline: inside its batch going up, inside its change event coming down, so no \
         block crosses the link as a request of its own.\n\n\
         Measured before (same link, debug build): 2026-11, one request per change: 100 \
         files 12.6 s / 5.9 s, 1000 files 122.8 s / 54.6 s; 2026-12-03 04:38 (c2815c0), with \
         batches and fetch-ahead but blocks as requests of their own: 0.85 s / 0.20 s and \
         4.74 s / 1.15 s, 1.1 requests per file. Syncthing with a 1 s watcher delay on the \
         same link: 2.2 / 2.4 and 10.0 / 3.0.\n\n\
         | N | create (s) | delete (s) | requests per file (both machines, long-polls excluded) |\n\
         |---|---|---|---|",
        sh("date -u '+%Y-%m-%d %H:%M UTC'"),
        sh("git rev-parse --short HEAD"),
        args.rtt.as_millis(),
        args.runs,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );
    let mut routes_md = String::new();
    for &n in &args.ns {
        let runs: Vec<Run> = (0..args.runs)
            .map(|r| {
                let run = run_once(&server, &token, args.rtt, n, r);
                eprintln!(
                    "N={n} run {r}: create {:.2} s, delete {:.2} s, {:.2} requests per file",
                    run.create_s, run.delete_s, run.requests_per_file
                );
                run
            })
            .collect();
        let _ = writeln!(
            md,
            "| {n} | {:.2} | {:.2} | {:.2} |",
            median(runs.iter().map(|r| r.create_s).collect()),
            median(runs.iter().map(|r| r.delete_s).collect()),
            median(runs.iter().map(|r| r.requests_per_file).collect()),
        );
        let last = runs.last().unwrap();
        for (who, routes) in [("A", &last.routes_a), ("B", &last.routes_b)] {
            let _ = writeln!(routes_md, "\n{who}'s requests, N = {n}, last run:\n");
            for (route, count) in routes {
                let _ = writeln!(routes_md, "- `{route}`: {count}");
            }
        }
    }
    md.push_str(&routes_md);
    std::fs::create_dir_all(&args.out).unwrap();
    let path = args.out.join("BENCHMARKS-LINK.md");
    std::fs::write(&path, &md).unwrap();
    println!("{md}");
    eprintln!("written to {}", path.display());
}

fn sh(cmd: &str) -> String {
    std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
