//! `bench`: the benchmarks of `make bench`, written to `docs/BENCHMARKS.md` with PNG charts.
//!
//! 1. The original experiments (see `src/bench/sync.rs`): independent and dependent users,
//!    N = 1, 10, 100, 1000 — creation and deletion time of 100 files, request time p50/p99.
//!    Real FUSE mounts for N ≤ 10, the same sync core without FUSE above.
//! 2. Bytes and requests per synced file (a pair of FUSE mounts through a counting proxy).
//! 3. Filesystem speed: jewelfs, bindfs and the native disk in one run (`src/bench/fs.rs`).
//! 4. API latency under 64 clients (the `api_latency` program, its table included).
//! 6. Client memory with 100,000 files known (`src/bench/memory.rs`; 10,000 with `--quick`).
//! 7. Idle cost: CPU-seconds and writes per idle minute of a mount and its server
//!    (`src/bench/idle.rs`; 20 s of idling scaled to a minute, 10 s with `--quick`).
//!
//! 5. AWS mode on loopback (`make setup-aws`: DynamoDB Local for DynamoDB, moto for S3),
//!    independent users N = 10 (FUSE mounts) and 100 (sync cores), with the service's AWS
//!    requests counted and turned into dollars per user-month (`src/bench/aws_cost.rs`).
//!
//! `--quick` (make bench QUICK=1): smaller N, one run, a smaller file set; under 5 minutes.
//! Other flags: `--only sync,aws,wire,fs,api,memory,idle`, `--runs N`, `--big-runs N` (runs at N = 1000), `--ind 1,10` / `--dep 1,10` (the N; `none` leaves that half out), `--out DIR` (default `docs`),
//! `--work DIR` (scratch, default `/var/tmp/jewel-bench`).
//!
//! Needs root (drop_caches, FUSE), `bindfs` and `fusermount3`; `make bench` installs them.

#[path = "../bench/aws_cost.rs"]
mod aws_cost;
#[path = "../bench/chart.rs"]
mod chart;
#[path = "../bench/env.rs"]
mod env;
#[path = "../bench/fs.rs"]
mod fs;
#[path = "../bench/idle.rs"]
mod idle;
#[path = "../bench/memory.rs"]
mod memory;
#[path = "../bench/stats.rs"]
mod stats;
#[path = "../bench/sync.rs"]
mod sync;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use env::{mib, progress, sh, BenchServer};
use plotters::style::RGBColor;
use serde::Serialize;
use stats::{agg, fmt_agg, num, Agg};
use sync::{Mode, SyncResult};

struct Args {
    quick: bool,
    only: Vec<String>,
    runs: Option<usize>,
    out: PathBuf,
    work: PathBuf,
    fuse_max: usize,
    ind: Option<Vec<usize>>,
    dep: Option<Vec<usize>>,
    /// Runs at N = 1000 (default: as many as the others).
    big_runs: Option<usize>,
}

fn parse_args() -> Args {
    let mut a = Args {
        quick: std::env::var("QUICK").is_ok_and(|v| !v.is_empty() && v != "0"),
        only: vec![],
        runs: None,
        out: PathBuf::from("docs"),
        work: PathBuf::from("/var/tmp/jewel-bench"),
        fuse_max: 10,
        ind: None,
        dep: None,
        big_runs: None,
    };
    let ns = |v: Option<String>| -> Option<Vec<usize>> {
        Some(v?.split(',').filter_map(|x| x.parse().ok()).collect())
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--quick" => a.quick = true,
            "--only" => {
                a.only = it
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            "--runs" => a.runs = it.next().and_then(|v| v.parse().ok()),
            "--out" => a.out = PathBuf::from(it.next().expect("--out DIR")),
            "--work" => a.work = PathBuf::from(it.next().expect("--work DIR")),
            "--ind" => a.ind = ns(it.next()),
            "--dep" => a.dep = ns(it.next()),
            "--big-runs" => a.big_runs = it.next().and_then(|v| v.parse().ok()),
            "--fuse-max" => a.fuse_max = it.next().and_then(|v| v.parse().ok()).unwrap_or(10),
            other => panic!("unknown flag {other}; see the doc comment of bench.rs"),
        }
    }
    a
}

#[derive(Serialize)]
struct Machine {
    date: String,
    cpu: String,
    nproc: String,
    memory: String,
    kernel: String,
    disk: String,
    load_start: String,
    load_end: String,
    rustc: String,
    commit: String,
    bindfs: String,
    fuse: String,
}

#[derive(Serialize, Default)]
struct Results {
    quick: bool,
    runs: usize,
    independent: Vec<SyncResult>,
    dependent: Vec<SyncResult>,
    wire: Option<sync::WireCost>,
    fs: Option<fs::FsResult>,
    fs_settings: Option<String>,
    api_latency: Option<String>,
    big_tree: Option<BigTreeResult>,
    idle: Option<idle::IdleResult>,
    aws: String,
    aws_independent: Vec<SyncResult>,
    aws_costs: Vec<aws_cost::Measured>,
    /// Which server answered DynamoDB in AWS mode.
    aws_dynamodb: String,
    user_add_s: f64,
    elapsed_s: f64,
}

/// What `memory::client_with_big_tree` measured, as kept in results.json.
#[derive(Serialize)]
struct BigTreeResult {
    files: usize,
    dirs: usize,
    create_s: f64,
    walk_cold_s: f64,
    walk_warm_s: f64,
    rss_mounted: u64,
    rss_walked: u64,
    rss_idle: u64,
}

/// The published numbers of the original design (issue 6).
const ORIG_INDEP: [(usize, f64, f64, f64); 4] = [
    (1, 95.637, 31.723, 0.033),
    (10, 87.627, 42.123, 0.037),
    (100, 108.844, 48.146, 0.051),
    (1000, 671.856, 581.248, 0.749),
];
/// (creation s, deletion s, request s); `None`: never finished.
type Orig = Option<(f64, f64, f64)>;
const ORIG_DEP: [(usize, Orig); 4] = [
    (1, Some((86.234, 22.627, 0.039))),
    (10, Some((168.762, 123.783, 0.033))),
    (100, None),
    (1000, None),
];

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--worker") {
        return sync::worker_main(&argv[2]);
    }
    let args = parse_args();
    let t0 = Instant::now();
    progress(&format!(
        "make bench{}: results go to {}/BENCHMARKS.md",
        if args.quick { " QUICK=1" } else { "" },
        args.out.display()
    ));
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 3 });
    let (mut ind_ns, mut dep_ns): (Vec<usize>, Vec<usize>) = if args.quick {
        (vec![1, 10, 100], vec![1, 10])
    } else {
        (vec![1, 10, 100, 1000], vec![1, 10, 100, 1000])
    };
    if let Some(v) = &args.ind {
        ind_ns = v.clone();
    }
    if let Some(v) = &args.dep {
        dep_ns = v.clone();
    }
    let deadline = Duration::from_secs(if args.quick { 60 } else { 300 });
    let fs_settings = if args.quick {
        fs::FsSettings {
            big_mib: 256,
            small_files: 1000,
            random_reads: 5000,
            runs,
        }
    } else {
        fs::FsSettings {
            big_mib: 1024,
            small_files: 10_000,
            random_reads: 20_000,
            runs,
        }
    };
    // Thousands of in-process clients keep journal and content files open: raise the
    // descriptor limit (root may; the server started from here inherits it).
    let nofile = sh(&format!(
        "prlimit --pid {} --nofile=1048576:1048576 2>&1; prlimit --pid {} --nofile --noheadings --output SOFT",
        std::process::id(),
        std::process::id()
    ));
    progress(&format!(
        "open files limit: {}",
        nofile.lines().last().unwrap_or("?").trim()
    ));
    let _ = std::fs::remove_dir_all(&args.work);
    std::fs::create_dir_all(&args.work).unwrap();
    std::fs::create_dir_all(&args.out).unwrap();
    let mut machine = Machine {
        date: sh("date -u '+%Y-%m-%d %H:%M UTC'"),
        cpu: sh("lscpu | sed -n 's/^Model name: *//p' | head -1"),
        nproc: sh("nproc"),
        memory: sh("free -m | awk '/^Mem:/ {print $2\" MiB\"}'"),
        kernel: sh("uname -r"),
        disk: sh(&format!(
            "df -hT {} | awk 'NR==2 {{print $2\", \"$1\", \"$3\" size\"}}'",
            args.work.display()
        )),
        load_start: sh("uptime"),
        load_end: String::new(),
        rustc: sh("rustc -V"),
        commit: sh("git rev-parse --short HEAD 2>/dev/null"),
        bindfs: sh("bindfs --version 2>&1 | head -1"),
        fuse: sh("fusermount3 --version 2>&1 | head -1"),
    };
    let mut res = Results {
        quick: args.quick,
        runs,
        aws: aws_note(),
        ..Default::default()
    };

    // Independent users (`--ind none` leaves them out): one server, max N users made once.
    if let Some(&maxn) = ind_ns.iter().max().filter(|_| want("sync")) {
        let server = BenchServer::start(&args.work, "independent");
        progress(&format!("adding {maxn} users (jewel-server user add)"));
        let t = Instant::now();
        let tokens = server.add_users("u", maxn);
        res.user_add_s = t.elapsed().as_secs_f64();
        for &n in &ind_ns {
            // 100,000 files through one server on this machine take minutes: let them.
            let deadline = if n >= 1000 {
                deadline.max(Duration::from_secs(600))
            } else {
                deadline
            };
            let r = run_sync(
                &args,
                &server,
                &tokens,
                Mode::Independent,
                n,
                runs,
                deadline,
            );
            res.independent.push(r);
        }
        progress("stopping the server");
        drop(server);
    }
    // Dependent users (`--dep none` leaves them out): one account, a server of its own.
    if want("sync") && !dep_ns.is_empty() {
        progress("dependent users: new server");
        let server = BenchServer::start(&args.work, "dependent");
        let tokens = server.add_users("shared", 1);
        for &n in &dep_ns {
            // Every client of the account receives every change: N = 1000 means 100,000
            // files each seen by 1,000 clients. Give it a bounded time and report how far
            // it got.
            let deadline = if n >= 1000 {
                Duration::from_secs(90)
            } else {
                deadline
            };
            let r = run_sync(&args, &server, &tokens, Mode::Dependent, n, runs, deadline);
            res.dependent.push(r);
        }
        drop(server);
    }
    if want("aws") {
        progress(
            "AWS mode on loopback: DynamoDB Local + moto, aws-init, jewel-server --backend aws",
        );
        match BenchServer::start_aws(&args.work, "aws") {
            Some((server, dynamodb)) => {
                let ns: Vec<usize> = if args.quick { vec![10] } else { vec![10, 100] };
                let tokens = server.add_users("aws", *ns.iter().max().unwrap());
                for &n in &ns {
                    // One run: it is the request counts that carry over to AWS, not the speed
                    // of emulators on this machine.
                    let before = server.aws_requests();
                    let t = Instant::now();
                    // Emulators on a shared 2-core machine: give N = 100 (10,000 files) time.
                    let deadline = deadline.max(Duration::from_secs(600));
                    let r = run_sync(&args, &server, &tokens, Mode::Independent, n, 1, deadline);
                    let wall_s = t.elapsed().as_secs_f64();
                    let after = server.aws_requests();
                    res.aws_costs.push(measured(&r, before, after, wall_s));
                    res.aws_independent.push(r);
                }
                res.aws_dynamodb = dynamodb.to_string();
                res.aws = format!(
                    "ran: `jewel-server serve --backend aws` with DynamoDB served by {dynamodb} \
                     and S3 by moto 5.2.5 on loopback (`JEWEL_BUS=local`: the long-poll bus, so \
                     SQS on moto adds no load); FUSE mounts at N = 10, sync cores above"
                );
            }
            None => {
                res.aws = "not run: moto is not installed (`make setup-aws` installs it into \
                           .venv-emu) or `jewel-server aws-init` failed"
                    .into()
            }
        }
    }
    if want("wire") || want("fs") {
        let server = BenchServer::start(&args.work, "fs");
        let tokens = server.add_users("fs", 2);
        if want("wire") {
            progress("bytes and requests per synced file (counting proxy)");
            res.wire = Some(sync::wire_cost(&server, &tokens[1], &args.work));
        }
        if want("fs") {
            progress(&format!("filesystem speed: {fs_settings:?}"));
            res.fs = Some(fs::run_fs(&server, &tokens[0], &args.work, fs_settings));
            res.fs_settings = Some(format!(
                "big file {} MiB, {} small files of 1 KiB, {} random 4 KiB reads, {} run(s)",
                fs_settings.big_mib, fs_settings.small_files, fs_settings.random_reads, runs
            ));
        }
        drop(server);
    }
    if want("api") {
        progress("API latency (api_latency, 64 clients)");
        let secs = if args.quick { 3 } else { 10 };
        let out = std::process::Command::new(integration_tests::bin("api_latency"))
            .args(["--seconds", &secs.to_string()])
            .output();
        res.api_latency = match out {
            Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).to_string()),
            Ok(o) => Some(format!(
                "api_latency failed: {}",
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => Some(format!("api_latency could not run: {e}")),
        };
    }
    if want("idle") {
        let secs = if args.quick { 10 } else { 20 };
        res.idle = Some(idle::idle_cost(&args.work.join("idle"), secs));
    }
    if want("memory") {
        let (dirs, per_dir) = if args.quick { (10, 1000) } else { (100, 1000) };
        let m = memory::client_with_big_tree(&args.work.join("memory"), dirs, per_dir);
        res.big_tree = Some(BigTreeResult {
            files: m.files,
            dirs: m.dirs,
            create_s: m.create_s,
            walk_cold_s: m.walk_cold_s,
            walk_warm_s: m.walk_warm_s,
            rss_mounted: m.rss_mounted,
            rss_walked: m.rss_walked,
            rss_idle: m.rss_idle,
        });
    }
    machine.load_end = sh("uptime");
    res.elapsed_s = t0.elapsed().as_secs_f64();
    let json = serde_json::to_string_pretty(&(&machine, &res)).unwrap();
    let _ = std::fs::write(args.work.join("results.json"), &json);
    let charts = write_charts(&args.out, &res);
    let md = report(&machine, &res, &charts, &args);
    std::fs::write(args.out.join("BENCHMARKS.md"), md).unwrap();
    let _ = std::fs::remove_dir_all(&args.work);
    progress(&format!(
        "done in {:.0} s: {}/BENCHMARKS.md",
        res.elapsed_s,
        args.out.display()
    ));
}

/// One experiment: FUSE mounts up to `--fuse-max`, sync-core clients above; N = 1000 with
/// `--big-runs` runs.
fn run_sync(
    args: &Args,
    server: &BenchServer,
    tokens: &[String],
    mode: Mode,
    n: usize,
    runs: usize,
    deadline: Duration,
) -> SyncResult {
    let runs = if n >= 1000 {
        args.big_runs.unwrap_or(runs)
    } else {
        runs
    };
    if n <= args.fuse_max {
        sync::run_fuse(server, tokens, mode, n, runs, deadline, &args.work)
    } else {
        sync::run_core(server, tokens, mode, n, runs, deadline, &args.work)
    }
}

/// What one AWS-mode run cost: the server's AWS requests between two reads of its counts,
/// the changes the users made (every file created and deleted) and the API calls.
fn measured(
    r: &SyncResult,
    before: std::collections::BTreeMap<String, u64>,
    after: std::collections::BTreeMap<String, u64>,
    wall_s: f64,
) -> aws_cost::Measured {
    let aws = after
        .into_iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0);
            (d > 0).then_some((k, d))
        })
        .collect();
    let files = sync::FILES as u64;
    let creates: u64 = r.runs.iter().map(|x| x.create_done as u64 * files).sum();
    let deletes: u64 = r.runs.iter().map(|x| x.delete_done as u64 * files).sum();
    aws_cost::Measured {
        users: r.n,
        changes: creates + deletes,
        creates,
        api_calls: r.runs.iter().map(|x| x.requests as u64).sum(),
        aws,
        wall_s,
    }
}

fn aws_note() -> String {
    "not run (left out with --only)".into()
}

// ------------------------------------------------------------------------------ charts

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREY: RGBColor = RGBColor(150, 150, 150);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const RED: RGBColor = RGBColor(214, 39, 40);

fn field(r: &SyncResult, f: impl Fn(&sync::SyncRun) -> f64) -> Option<Agg> {
    agg(&r.runs.iter().map(f).collect::<Vec<_>>())
}

fn one(v: f64) -> Agg {
    Agg {
        median: v,
        min: v,
        max: v,
        runs: 1,
    }
}

fn write_charts(out: &Path, res: &Results) -> Vec<(String, String)> {
    let mut made = Vec::new();
    if !chart::init_font() {
        progress("no TTF font found (fonts-dejavu-core): charts skipped");
        return made;
    }
    if !res.independent.is_empty() {
        let panel = |rs: &[SyncResult], orig: Vec<(usize, f64, f64)>| {
            let ours = |name: &str, color, f: fn(&sync::SyncRun) -> f64| chart::Series {
                label: name.into(),
                color,
                dashed: false,
                points: rs
                    .iter()
                    .filter_map(|r| Some((r.n as f64, field(r, f)?)))
                    .collect(),
            };
            vec![
                ours("JewelFS creation", BLUE, |r| r.create_s),
                ours("JewelFS deletion", ORANGE, |r| r.delete_s),
                chart::Series {
                    label: "original creation".into(),
                    color: GREY,
                    dashed: true,
                    points: orig.iter().map(|o| (o.0 as f64, one(o.1))).collect(),
                },
                chart::Series {
                    label: "original deletion".into(),
                    color: RED,
                    dashed: true,
                    points: orig.iter().map(|o| (o.0 as f64, one(o.2))).collect(),
                },
            ]
        };
        let panels = vec![
            (
                "independent users".to_string(),
                panel(
                    &res.independent,
                    ORIG_INDEP.iter().map(|o| (o.0, o.1, o.2)).collect(),
                ),
            ),
            (
                "dependent users (one account)".to_string(),
                panel(
                    &res.dependent,
                    ORIG_DEP
                        .iter()
                        .filter_map(|(n, o)| o.map(|o| (*n, o.0, o.1)))
                        .collect(),
                ),
            ),
        ];
        let p = out.join("bench-sync.png");
        match chart::loglog_panels(
            &p,
            "100 files: time until they all arrived (s, log)",
            "seconds",
            &panels,
        ) {
            Ok(()) => made.push(("bench-sync.png".into(), "creation and deletion time".into())),
            Err(e) => progress(&format!("chart {}: {e}", p.display())),
        }
        let req = |rs: &[SyncResult]| {
            vec![
                chart::Series {
                    label: "p50 (server)".into(),
                    color: BLUE,
                    dashed: false,
                    points: rs
                        .iter()
                        .filter_map(|r| Some((r.n as f64, field(r, |x| x.server_p50_ms / 1000.0)?)))
                        .collect(),
                },
                chart::Series {
                    label: "p99 (server)".into(),
                    color: ORANGE,
                    dashed: false,
                    points: rs
                        .iter()
                        .filter_map(|r| Some((r.n as f64, field(r, |x| x.server_p99_ms / 1000.0)?)))
                        .collect(),
                },
            ]
        };
        let mut ind = req(&res.independent);
        ind.push(chart::Series {
            label: "original (mean?)".into(),
            color: GREY,
            dashed: true,
            points: ORIG_INDEP.iter().map(|o| (o.0 as f64, one(o.3))).collect(),
        });
        let mut dep = req(&res.dependent);
        dep.push(chart::Series {
            label: "original".into(),
            color: GREY,
            dashed: true,
            points: ORIG_DEP
                .iter()
                .filter_map(|(n, o)| o.map(|o| (*n as f64, one(o.2))))
                .collect(),
        });
        let p = out.join("bench-requests.png");
        match chart::loglog_panels(
            &p,
            "request time (s, log)",
            "seconds",
            &[
                ("independent users".into(), ind),
                ("dependent users".into(), dep),
            ],
        ) {
            Ok(()) => made.push(("bench-requests.png".into(), "request time".into())),
            Err(e) => progress(&format!("chart {}: {e}", p.display())),
        }
    }
    if let Some(f) = &res.fs {
        let ops = [
            ("seq_write", "write"),
            ("seq_read_cold", "read cold"),
            ("seq_read_cold_server", "read cold (server)"),
            ("seq_read_cached", "read cached"),
        ];
        let targets = [
            ("native".to_string(), GREEN),
            ("bindfs".to_string(), GREY),
            ("jewelfs".to_string(), BLUE),
        ];
        let values: Vec<Vec<Option<Agg>>> = ops
            .iter()
            .map(|(op, _)| {
                targets
                    .iter()
                    .map(|(t, _)| agg(f.values.get(t)?.get(*op)?))
                    .collect()
            })
            .collect();
        let p = out.join("bench-fs.png");
        match chart::grouped_bars(
            &p,
            "sequential throughput (MiB/s, log; bars: median, lines: min–max)",
            "MiB/s",
            &ops.iter().map(|o| o.1.to_string()).collect::<Vec<_>>(),
            &targets,
            &values,
        ) {
            Ok(()) => made.push(("bench-fs.png".into(), "sequential throughput".into())),
            Err(e) => progress(&format!("chart {}: {e}", p.display())),
        }
    }
    made
}

// ------------------------------------------------------------------------------ report

fn sync_table(rs: &[SyncResult], ns: &[usize]) -> String {
    let mut s = String::new();
    let _ = write!(s, "| users |");
    for n in ns {
        let _ = write!(s, " {n} |");
    }
    let _ = write!(s, "\n|---|");
    for _ in ns {
        let _ = write!(s, "---|");
    }
    s.push('\n');
    let find = |n: usize| rs.iter().find(|r| r.n == n);
    let mut row = |name: &str, f: &dyn Fn(&SyncResult) -> String| {
        let _ = write!(s, "| {name} |");
        for &n in ns {
            let _ = write!(
                s,
                " {} |",
                find(n).map(f).unwrap_or_else(|| "not run".into())
            );
        }
        s.push('\n');
    };
    row("clients", &|r| {
        format!(
            "{} × {}",
            r.clients,
            if r.fuse {
                "FUSE mount"
            } else {
                "sync core, no FUSE"
            }
        )
    });
    let fin = |r: &SyncResult, done: fn(&sync::SyncRun) -> usize, v: fn(&sync::SyncRun) -> f64| {
        if r.runs.iter().all(|x| done(x) == r.n) {
            fmt_agg(field(r, v))
        } else {
            let d = r.runs.iter().map(done).min().unwrap_or(0);
            format!("**did not finish** ({d}/{} users)", r.n)
        }
    };
    row("creation time (s)", &|r| {
        fin(r, |x| x.create_done, |x| x.create_s)
    });
    row("deletion time (s)", &|r| {
        fin(r, |x| x.delete_done, |x| x.delete_s)
    });
    row("creation, median user (s)", &|r| {
        fmt_agg(field(r, |x| x.create_user_median_s))
    });
    row("deletion, median user (s)", &|r| {
        fmt_agg(field(r, |x| x.delete_user_median_s))
    });
    row("request time p50, server (ms)", &|r| {
        fmt_agg(field(r, |x| x.server_p50_ms))
    });
    row("request time p99, server (ms)", &|r| {
        fmt_agg(field(r, |x| x.server_p99_ms))
    });
    row("request time p50, client (ms)", &|r| {
        if r.fuse {
            "(FUSE: n/a)".into()
        } else {
            fmt_agg(field(r, |x| x.client_p50_ms))
        }
    });
    row("request time p99, client (ms)", &|r| {
        if r.fuse {
            "(FUSE: n/a)".into()
        } else {
            fmt_agg(field(r, |x| x.client_p99_ms))
        }
    });
    row("requests per file (create + delete)", &|r| {
        fmt_agg(field(r, |x| x.requests_per_file))
    });
    row("CPU s, server / all clients (both phases)", &|r| {
        format!(
            "{} / {}",
            fmt_agg(field(r, |x| x.server_cpu_s)),
            fmt_agg(field(r, |x| x.clients_cpu_s))
        )
    });
    row("wall s of both phases", &|r| {
        fmt_agg(field(r, |x| x.wall_s))
    });
    row("CPU s of the whole machine (all processes)", &|r| {
        fmt_agg(field(r, |x| x.machine_cpu_s))
    });
    row("I/O stall s (PSI some)", &|r| {
        fmt_agg(field(r, |x| x.io_stall_s))
    });
    row("server errors (5xx)", &|r| {
        r.runs.iter().map(|x| x.errors).sum::<usize>().to_string()
    });
    row("runs", &|r| {
        let mut t = r.runs.len().to_string();
        if !r.note.is_empty() {
            let _ = write!(t, " ({})", r.note);
        }
        t
    });
    s
}

fn median_of(r: Option<&SyncResult>, f: fn(&sync::SyncRun) -> f64) -> Option<f64> {
    field(r?, f).map(|a| a.median)
}

fn finished(r: Option<&SyncResult>) -> Option<bool> {
    let r = r?;
    Some(!r.runs.is_empty() && r.runs.iter().all(|x| x.delete_done == r.n))
}

/// The reasons behind missed targets, from the measurements themselves.
fn findings(res: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let ind = |n: usize| res.independent.iter().find(|r| r.n == n);
    let dep = |n: usize| res.dependent.iter().find(|r| r.n == n);
    let med = |r: &SyncResult, f: fn(&sync::SyncRun) -> f64| field(r, f).map(|a| a.median);
    if let Some(r) = ind(1) {
        if let (Some(c), Some(p50)) = (med(r, |x| x.create_s), med(r, |x| x.server_p50_ms)) {
            if c > 0.3 {
                out.push(format!(
                    "**100 files between two mounts take {} s, not ≤ 0.3 s**: {:.1} ms per file. \
                     Each `close` journals the file (made durable by a group sync within 50 ms), \
                     and the uploader sends the \
                     journal one entry at a time: `blocks/missing` (batched), the block `PUT`, \
                     then `POST /nodes`, each waiting for the previous (server handler time p50 \
                     {} ms; the rest is round trips, scheduling and the 20 ms settle time). \
                     Deletion is one request per file and takes {} s. Sending several journal \
                     entries at once (or one batched create) is what would reach 0.3 s.",
                    num(c),
                    c * 1000.0 / 100.0,
                    num(p50),
                    med(r, |x| x.delete_s).map(num).unwrap_or_default()
                ));
            }
        }
    }
    let ncpu: f64 = sh("nproc").parse().unwrap_or(2.0);
    for (name, r) in [("independent", ind(1000)), ("dependent", dep(100))] {
        let Some(r) = r else { continue };
        let (Some(sc), Some(cc), Some(w)) = (
            med(r, |x| x.server_cpu_s),
            med(r, |x| x.clients_cpu_s),
            med(r, |x| x.wall_s),
        ) else {
            continue;
        };
        let files = (r.n * sync::FILES) as f64;
        out.push(format!(
            "**{name} N={}: the machine is the limit.** In {} s of both phases the server used \
             {} CPU-s and the {} clients (all on this machine) {} CPU-s — {:.0} % of its {} \
             cores, which other work shared too. That is {:.2} ms of server CPU and {:.2} ms of \
             client CPU per synced file (create + delete); creating and syncing {} files in 5 s \
             would need the server alone to spend under {:.3} ms per file on these cores. \
             Request times grow with the queue: the handler time includes waiting for the CPU \
             and SQLite's single writer.",
            r.n,
            num(w),
            num(sc),
            r.clients,
            num(cc),
            (sc + cc) / w / ncpu * 100.0,
            ncpu,
            sc * 1000.0 / files,
            cc * 1000.0 / files,
            files as u64,
            5.0 * ncpu * 1000.0 / files
        ));
    }
    if let Some(r) = dep(1000) {
        if !finished(Some(r)).unwrap_or(false) {
            out.push(format!(
                "**dependent N=1000 does not finish** in the time given ({}). One account with \
                 1,000 clients: 100,000 new files, each a change event that all 1,000 clients \
                 receive and apply — 10⁸ event deliveries, quadratic in N. The service \
                 answers (no errors), but the fan-out work on one machine is the bound; \
                 coalescing events per directory, or listing instead of replaying when a \
                 client is far behind, would change the order of growth.",
                r.note
            ));
        }
    }
    if let (Some(d), Some(i)) = (dep(100), ind(100)) {
        if let (Some(dc), Some(ic)) = (med(d, |x| x.create_s), med(i, |x| x.create_s)) {
            if dc > 2.0 * ic {
                out.push(format!(
                    "**dependent N=100 takes {:.1}× the independent time** ({} s vs {} s): \
                     each of the 100 clients receives all 10,000 changes of the shared folder \
                     instead of its own 100.",
                    dc / ic,
                    num(dc),
                    num(ic)
                ));
            }
        }
    }
    if let Some(f) = &res.fs {
        let get = |tg: &str, op: &str| agg(f.values.get(tg)?.get(op)?).map(|a| a.median);
        if let Some(cs) = get("jewelfs", "seq_read_cold_server") {
            if cs < 500.0 {
                out.push(format!(
                    "**cold read from the server: {} MiB/s, not ≥ 500**: after drop_caches the \
                     server reads each 4 MiB block from its disk, sends it over loopback HTTP, \
                     and the client verifies its SHA-256 and writes it to its block cache before \
                     answering the kernel (read-ahead: 4 blocks). The native cold read of the \
                     same disk is {} MiB/s here.",
                    num(cs),
                    get("native", "seq_read_cold").map(num).unwrap_or_default()
                ));
            }
        }
        if let Some(w) = get("jewelfs", "seq_write") {
            if w < 800.0 {
                out.push(format!(
                    "**sequential write {} MiB/s, not ≥ 800**: the writes go through FUSE into a \
                     staging file, and close journals it durably (fsync of the whole file) \
                     before returning.",
                    num(w)
                ));
            }
        }
        if let Some(l) = get("jewelfs", "ls_1000_warm") {
            if l > 0.01 {
                out.push(format!(
                    "**`ls -l` of 1,000 files warm: {} s, not ≤ 0.01**: this counts starting the \
                     `ls` process (the native disk takes {} s for the same), plus the kernel's \
                     getattr and readdirplus calls through FUSE.",
                    num(l),
                    get("native", "ls_1000_warm").map(num).unwrap_or_default()
                ));
            }
        }
        if let Some(c) = get("jewelfs", "create_1000") {
            if c > 0.2 {
                out.push(format!(
                    "**1,000 × 1 KiB files written in {} s, not ≤ 0.2**: {:.2} ms per file: five \
                     FUSE round trips per file (lookup, create, write, flush, release) and a \
                     staging file created in the cache folder (an ext4 inode allocation, slow \
                     near many recently deleted inodes on this machine's unjournalled ext4); \
                     close does not wait for the disk (group sync within 50 ms). Native: {} s.",
                    num(c),
                    c,
                    get("native", "create_1000").map(num).unwrap_or_default()
                ));
            }
        }
    }
    out
}

fn verdict(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "met",
        Some(false) => "**MISSED**",
        None => "not measured in this run",
    }
}

fn report(m: &Machine, res: &Results, charts: &[(String, String)], args: &Args) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Written by `make bench{}` (`integration-tests/src/bin/bench.rs`); do not edit by hand — \
         run it again. Every figure is the **median of {} run(s)**, with (min–max) when there \
         were several. {}\n",
        if res.quick { " QUICK=1" } else { "" },
        res.runs,
        if res.quick {
            "**This is a QUICK run**: smaller N, one run, a 256 MiB file and 1,000 small files; \
             `make bench` (without QUICK) runs everything."
        } else {
            ""
        }
    );
    let _ = writeln!(s, "## Machine, versions, settings\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    let rows = [
        ("date", m.date.clone()),
        ("CPU", format!("{} ({} cores online)", m.cpu, m.nproc)),
        ("memory", m.memory.clone()),
        ("kernel", m.kernel.clone()),
        ("disk (scratch, server data, caches)", m.disk.clone()),
        ("load at start (`uptime`)", m.load_start.clone()),
        ("load at end", m.load_end.clone()),
        ("rustc", m.rustc.clone()),
        ("commit", m.commit.clone()),
        ("build", "release (`cargo build --release --workspace --bins`)".into()),
        ("FUSE", m.fuse.clone()),
        ("bindfs", format!("{} with `-o big_writes`", m.bindfs)),
        ("server", "`jewel-server serve` (embedded: SQLite + block folder), loopback; request log on (`jewel::request=info`)".into()),
        ("client", "`jewelfs mount` defaults (settle 20 ms, long-poll 25 s, 4 FUSE threads, 2 I/O threads)".into()),
        ("total time", format!("{:.0} s", res.elapsed_s)),
    ];
    for (k, v) in rows {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    let _ = writeln!(
        s,
        "\nThe machine is shared: other work was running during the measurements (see the load); \
         timings are noisier than on an idle machine.\n"
    );

    // ---- sync
    if !res.independent.is_empty() {
        let _ = writeln!(s, "## The original experiments\n");
        let _ = writeln!(
            s,
            "Each **user** has two synchronized clients. One creates 100 files of 1 KiB in a fresh \
             folder; **creation time** runs from the common start until the *last* user's other \
             client lists all 100 (the median user is shown too). Then the first client deletes \
             them; **deletion time** until the last user's other client lists none. \
             **Independent users**: N accounts, one pair each. **Dependent users**: N clients of \
             *one* account in one shared folder, each client's files in a subfolder of it: \
             client k writes `c{{k}}/f000…099` and client k+1 waits for them there (N = 1: one \
             writer, one watcher). Every client sees every subfolder, and hears the changes in \
             those it has listed (its own and the one it watches), as a drive's user hears the \
             folders they have open; the original experiment put all files in the one folder, \
             so that every client received all N × 100 changes (and so did this bench before \
             2026-12-03).\n\n\
             **Which clients**: N ≤ {} are real `jewelfs` FUSE mounts (one process each; files \
             written with `write(2)` and looked up through the kernel). Above that, every client \
             is the same sync core (`jewelfs::core::Core`: tree cache, journal, uploader, \
             long-poll listener) without the FUSE adapter, 150 to a worker process of the bench \
             (the open-file limit here is 20,000 and a core keeps each not-yet-uploaded file \
             open), driven where the FUSE adapter would call it (create_file, write, release; \
             remove) and checked in its tree cache where the kernel would look. Everything — \
             server, every client, the bench — shares this one machine's cores and disk, so the \
             CPU and I/O-stall rows say how busy it was. Sync-core clients send one \
             `blocks/missing` per file (a FUSE mount batches them when several files wait), \
             hence 4 requests per file instead of about 3. \
             **Request time**: every request the server handled during both phases, long-polls \
             excluded, timed by the server's request log (handler time); for the sync-core \
             clients also as the clients saw it (wrapping their `Api`: network and queueing \
             included). Users were made with `jewel-server user add` ({} users in {:.1} s, \
             before the timed part).\n",
            args.fuse_max,
            res.independent.iter().map(|r| r.n).max().unwrap_or(0),
            res.user_add_s
        );
        let _ = writeln!(s, "### Independent users\n\nOriginal design:\n");
        let _ = writeln!(
            s,
            "| users | 1 | 10 | 100 | 1000 |\n|---|---|---|---|---|\n| creation time (s) | 95.637 | 87.627 | 108.844 | 671.856 |\n| deletion time (s) | 31.723 | 42.123 | 48.146 | 581.248 |\n| request time (s) | 0.033 | 0.037 | 0.051 | 0.749 |\n"
        );
        let _ = writeln!(s, "JewelFS:\n");
        let _ = writeln!(s, "{}", sync_table(&res.independent, &[1, 10, 100, 1000]));
        let _ = writeln!(s, "### Dependent users\n\nOriginal design:\n");
        let _ = writeln!(
            s,
            "| users | 1 | 10 | 100 | 1000 |\n|---|---|---|---|---|\n| creation time (s) | 86.234 | 168.762 | never finished | never finished |\n| deletion time (s) | 22.627 | 123.783 | never finished | never finished |\n| request time (s) | 0.039 | 0.033 | – | – |\n"
        );
        let _ = writeln!(s, "JewelFS:\n");
        let _ = writeln!(s, "{}", sync_table(&res.dependent, &[1, 10, 100, 1000]));
        for (file, alt) in charts.iter().filter(|c| c.0 != "bench-fs.png") {
            let _ = writeln!(s, "![{alt}]({file})\n");
        }
    }
    {
        let _ = writeln!(s, "### AWS mode on loopback\n\n{}.\n", res.aws);
        if !res.aws_independent.is_empty() {
            let _ = writeln!(
                s,
                "Independent users through the AWS stores ({} and moto share this 2-core \
                 machine with the server and the clients, so the times measure the code path, \
                 not AWS's speed):\n",
                res.aws_dynamodb
            );
            let _ = writeln!(s, "{}", sync_table(&res.aws_independent, &[10, 100]));
            let _ = writeln!(
                s,
                "What the service asked of AWS, per change (a file created or deleted), and \
                 what that costs per user-month in the `docs/COST.md` scenario (3,000 changes, \
                 two always-on devices, 10 GB; prices in `src/bench/aws_cost.rs`). Measured: the \
                 service's DynamoDB and S3 requests and the API calls; derived: the devices' \
                 block PUT and GET (one each per created file) and SQS (6 requests per change, \
                 as `backend-lambda/tests/aws_cost.rs` counts them):\n"
            );
            let _ = writeln!(s, "{}", aws_cost::table(&res.aws_costs));
        }
    }

    // ---- resources
    let _ = writeln!(s, "## Resources\n");
    let _ = writeln!(s, "| what | memory (VmRSS) |\n|---|---|");
    for r in res.independent.iter().chain(&res.dependent) {
        let who = format!("{} N={}", r.mode.name(), r.n);
        let _ = writeln!(
            s,
            "| server, {who}: idle (clients connected) / peak during the runs | {:.0} MiB / {:.0} MiB |",
            mib(r.server_rss_idle),
            mib(r.server_rss_peak)
        );
        if r.fuse {
            let _ = writeln!(
                s,
                "| one `jewelfs` FUSE client, {who}: idle after mount / after the runs | {:.1} MiB / {:.1} MiB |",
                mib(r.client_rss_idle),
                mib(r.client_rss)
            );
        } else {
            let _ = writeln!(
                s,
                "| one sync-core client, {who} (RSS of the worker processes ÷ {} clients, runtime included): idle / peak | {:.2} MiB / {:.2} MiB |",
                r.clients,
                mib(r.client_rss_idle),
                mib(r.client_rss)
            );
        }
    }
    if let Some(m) = &res.big_tree {
        let _ = writeln!(
            s,
            "| one `jewelfs` FUSE client knowing {} files ({} folders of empty files, each listed \
             and every file stat'ed through the mount): after mounting / after the walk / idle \
             3 s later | {:.1} MiB / {:.1} MiB / {:.1} MiB |",
            m.files,
            m.dirs,
            mib(m.rss_mounted),
            mib(m.rss_walked),
            mib(m.rss_idle)
        );
        let _ = writeln!(
            s,
            "\nThat tree: created through the API in {:.1} s; walked through a fresh mount \
             (every folder listed, every file stat'ed) in {:.2} s cold (listings fetched from \
             the server) and {:.2} s warm.",
            m.create_s, m.walk_cold_s, m.walk_warm_s
        );
    }
    if let Some(idle) = &res.idle {
        let _ = writeln!(
            s,
            "\n**Idle cost** — a mount and its server with nothing happening (one file saved and \
             uploaded, then {:.0} s left alone, scaled to a minute; the server at its default \
             log level). Goal: no file writes, under 0.01 CPU-s a minute beyond the long-poll \
             (one request every 25 s). Write calls count every `write`-family system call: \
             sockets (the long-poll's request and answer) and the async runtime's wake-ups \
             (8-byte eventfd writes) too; bytes to storage are the file writes.\n",
            idle.seconds
        );
        let _ = writeln!(
            s,
            "| per idle minute | CPU-s | write calls | bytes written (all) | bytes to storage |\n|---|---|---|---|---|"
        );
        for (who, c) in [
            ("`jewelfs` mount", &idle.client),
            ("`jewel-server`", &idle.server),
        ] {
            let _ = writeln!(
                s,
                "| {who} | {:.3} | {:.0} | {:.0} | {:.0} |",
                c.cpu_s_per_min,
                c.write_calls_per_min,
                c.bytes_written_per_min,
                c.storage_bytes_per_min
            );
        }
        let _ = writeln!(s);
    }
    if let Some(w) = &res.wire {
        let f = w.files as f64;
        let _ = writeln!(
            s,
            "\n**Bytes and requests per synced file** — one user, two FUSE mounts whose every \
             connection goes through a byte-counting TCP proxy (both directions, HTTP headers and \
             JSON included, both clients: the writer's uploads and the watcher's long-poll \
             answers); requests counted from the server's request log. 100 files of 1 KiB:\n"
        );
        let _ = writeln!(
            s,
            "| phase | bytes up / file | bytes down / file | requests / file (no polls) | long-poll answers / file |\n|---|---|---|---|---|"
        );
        let _ = writeln!(
            s,
            "| create (1 KiB files) | {:.0} | {:.0} | {:.2} | {:.2} |",
            w.create_up as f64 / f,
            w.create_down as f64 / f,
            w.create_requests as f64 / f,
            w.create_polls as f64 / f
        );
        let _ = writeln!(
            s,
            "| delete | {:.0} | {:.0} | {:.2} | {:.2} |\n",
            w.delete_up as f64 / f,
            w.delete_down as f64 / f,
            w.delete_requests as f64 / f,
            w.delete_polls as f64 / f
        );
        let routes = |v: &[(String, usize)]| {
            v.iter()
                .map(|(r, c)| format!("`{r}` × {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "TCP connections opened by the two clients: {}.\n",
            w.connections
        );
        let _ = writeln!(
            s,
            "Requests by route, create phase: {}.\n",
            routes(&w.create_routes)
        );
        let _ = writeln!(s, "Delete phase: {}.\n", routes(&w.delete_routes));
    }

    // ---- fs
    if let Some(f) = &res.fs {
        let _ = writeln!(s, "## Filesystem speed\n");
        let _ = writeln!(
            s,
            "The same operations, one run after the other on each target: the **native** disk \
             (a folder on the filesystem above), **bindfs** `-o big_writes` (passthrough FUSE \
             over such a folder) and **jewelfs** (mounted from the embedded server on loopback; a \
             second jewelfs mount of the same user reads the file \"cold from the server\"). \
             Settings: {}. Source tree: {} ({} files, {:.1} MiB tar). Cold = after \
             `echo 3 > /proc/sys/vm/drop_caches` ({}). Writes are timed from open to close \
             without fsync (jewelfs' close journals the file without waiting for the disk; \
             a group sync makes it durable within 50 ms); `ls -l` and `tar` are timed as processes (≈1 ms of process start included). \
             jewelfs uploads in the background; the bench waits for its journal to drain before \
             the next operation and reports that time too. Relative speed: jewelfs ÷ other for \
             rates, other ÷ jewelfs for times — above 1 jewelfs is faster.\n",
            res.fs_settings.clone().unwrap_or_default(),
            f.tarball,
            f.tar_files,
            mib(f.tar_bytes),
            if f.drop_caches {
                "done"
            } else {
                "**could not drop caches: not root?**"
            }
        );
        let _ = writeln!(
            s,
            "| operation | native | bindfs | jewelfs | jewelfs vs native | jewelfs vs bindfs |\n|---|---|---|---|---|---|"
        );
        let get = |t: &str, op: &str| agg(f.values.get(t)?.get(op)?);
        for (op, label, higher) in fs::OPS {
            let (n, b, j) = (get("native", op), get("bindfs", op), get("jewelfs", op));
            if n.is_none() && b.is_none() && j.is_none() {
                continue;
            }
            let rel = |o: Option<Agg>| match (o, j) {
                (Some(o), Some(j)) if o.median > 0.0 && j.median > 0.0 => {
                    let r = if *higher {
                        j.median / o.median
                    } else {
                        o.median / j.median
                    };
                    format!("{r:.2}×")
                }
                _ => "–".into(),
            };
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} | {} |",
                fmt_agg(n),
                fmt_agg(b),
                fmt_agg(j),
                rel(n),
                rel(b)
            );
        }
        s.push('\n');
        if charts.iter().any(|c| c.0 == "bench-fs.png") {
            let _ = writeln!(s, "![sequential throughput](bench-fs.png)\n");
        }
    }

    // ---- targets
    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(s, "| target | measured | verdict |\n|---|---|---|");
    let ind = |n: usize| res.independent.iter().find(|r| r.n == n);
    let dep = |n: usize| res.dependent.iter().find(|r| r.n == n);
    let mut t = |name: &str, measured: Option<f64>, unit: &str, ok: Option<bool>| {
        let _ = writeln!(
            s,
            "| {name} | {} | {} |",
            measured
                .map(|v| format!("{} {unit}", num(v)))
                .unwrap_or_else(|| "–".into()),
            verdict(ok)
        );
    };
    for (n, limit) in [(1usize, 0.3), (1000, 5.0)] {
        let c = median_of(ind(n), |x| x.create_s);
        let d = median_of(ind(n), |x| x.delete_s);
        let fin = finished(ind(n));
        t(
            &format!("independent N={n}: creation ≤ {limit} s"),
            c,
            "s",
            fin.map(|f| f && c.is_some_and(|v| v <= limit)),
        );
        t(
            &format!("independent N={n}: deletion ≤ {limit} s"),
            d,
            "s",
            fin.map(|f| f && d.is_some_and(|v| v <= limit)),
        );
    }
    let p50 = median_of(ind(1000), |x| x.server_p50_ms);
    let p99 = median_of(ind(1000), |x| x.server_p99_ms);
    t(
        "independent N=1000: request p50 ≤ 1 ms (server)",
        p50,
        "ms",
        p50.map(|v| v <= 1.0),
    );
    t(
        "independent N=1000: request p99 ≤ 20 ms (server)",
        p99,
        "ms",
        p99.map(|v| v <= 20.0),
    );
    let cp50 = median_of(ind(1000), |x| x.client_p50_ms);
    let cp99 = median_of(ind(1000), |x| x.client_p99_ms);
    t(
        "independent N=1000: request p50 ≤ 1 ms (client side)",
        cp50,
        "ms",
        cp50.map(|v| v <= 1.0),
    );
    t(
        "independent N=1000: request p99 ≤ 20 ms (client side)",
        cp99,
        "ms",
        cp99.map(|v| v <= 20.0),
    );
    if let Some(m) = &res.big_tree {
        t(
            &format!(
                "client memory idle with {} files known < 100 MiB (issue 3)",
                m.files
            ),
            Some(mib(m.rss_idle)),
            "MiB",
            (m.files >= 100_000).then_some(mib(m.rss_idle) < 100.0),
        );
    }
    for n in [100usize, 1000] {
        let fin = finished(dep(n));
        let dc = median_of(dep(n), |x| x.create_s);
        let ic = median_of(ind(n), |x| x.create_s);
        let ratio = match (dc, ic) {
            (Some(d), Some(i)) if i > 0.0 => Some(d / i),
            _ => None,
        };
        t(
            &format!("dependent N={n} finishes"),
            dc,
            "s (creation)",
            fin,
        );
        t(
            &format!("dependent N={n} within 2× of independent (creation)"),
            ratio,
            "×",
            match (fin, ratio) {
                (Some(false), _) => Some(false),
                (_, Some(r)) => Some(r <= 2.0),
                _ => None,
            },
        );
    }
    if let Some(f) = &res.fs {
        let get = |tg: &str, op: &str| agg(f.values.get(tg)?.get(op)?).map(|a| a.median);
        let jc = get("jewelfs", "seq_read_cached");
        let bc = get("bindfs", "seq_read_cached");
        t(
            "cached sequential read ≥ bindfs `-o big_writes`",
            jc,
            "MiB/s",
            jc.zip(bc).map(|(j, b)| j >= b),
        );
        t(
            "cached sequential read ≥ 1400 MiB/s (issue 3)",
            jc,
            "MiB/s",
            jc.map(|v| v >= 1400.0),
        );
        let cs = get("jewelfs", "seq_read_cold_server");
        t(
            "cold read from the server ≥ 500 MiB/s (issue 3)",
            cs,
            "MiB/s",
            cs.map(|v| v >= 500.0),
        );
        let w = get("jewelfs", "seq_write");
        t(
            "sequential write ≥ 800 MiB/s",
            w,
            "MiB/s",
            w.map(|v| v >= 800.0),
        );
        let l = get("jewelfs", "ls_1000_warm");
        t(
            "`ls -l` of 1,000 files warm ≤ 0.01 s",
            l,
            "s",
            l.map(|v| v <= 0.01),
        );
        let m = get("jewelfs", "upload_100m");
        t(
            "100 MiB file closed → complete in the other mount ≤ 1 s (issue 3)",
            m,
            "s",
            m.map(|v| v <= 1.0),
        );
        let c = get("jewelfs", "create_1000");
        t(
            "1,000 × 1 KiB files written ≤ 0.2 s (issue 3)",
            c,
            "s",
            c.map(|v| v <= 0.2),
        );
        if let Some(fsl) = &res.fs_settings {
            if fsl.contains("10000 small") {
                let l = get("jewelfs", "ls_warm");
                t(
                    "`ls -l` of 10,000 files warm ≤ 0.1 s (issue 3)",
                    l,
                    "s",
                    l.map(|v| v <= 0.1),
                );
            }
        }
    }
    s.push('\n');

    let f = findings(res);
    if !f.is_empty() {
        let _ = writeln!(s, "### Findings: why targets were missed\n");
        for x in f {
            let _ = writeln!(s, "- {x}");
        }
        s.push('\n');
    }

    if let Some(a) = &res.api_latency {
        let _ = writeln!(
            s,
            "## API latency under 64 concurrent clients\n\nFrom `api_latency` (its own server, \
             client-side times in ms):\n"
        );
        let body = a
            .lines()
            .filter(|l| !l.starts_with("## "))
            .collect::<Vec<_>>()
            .join("\n");
        let _ = writeln!(s, "{}\n", body.trim());
    }
    s
}
