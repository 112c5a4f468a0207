//! `load`: many devices long-polling and committing at once against one `jewel-server`.
//!
//! Starts a real `jewel-server` (the release build when this program is built with
//! `--release`; `make load` does) with `--users` users, and simulates `--devices` devices
//! spread over them (default 1000 over 100 users: ten machines each). Every device
//! - registers itself and creates its own file,
//! - long-polls `GET /devices/{id}/poll` without pause, applying each page to its cursor,
//! - and every 5–30 s (random) writes new content to its file the way the client does: ask
//!   which block is missing, PUT it at the signed URL, commit on the version it last saw.
//!
//! For `--seconds` (default 300) it records every request's latency by kind, every error, how
//! long a change took to reach the user's other devices (commit time to poll answer), and the
//! server's resident memory, threads and open descriptors once a second (from `/proc`).
//! Prints a Markdown report; `--out FILE` also writes it there.
//!
//! `make load` runs the default; `make soak` includes it. Numbers of a run are kept in
//! `docs/LOAD.md`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use integration_tests::{sha256_hex, Server};
use jewel_wire::{ChangePage, Device, Me, MissingBlocks, Node, API_PREFIX, DEVICE_HEADER, ROOT_ID};
use serde_json::json;

struct Args {
    devices: usize,
    users: usize,
    seconds: u64,
    min_interval: u64,
    max_interval: u64,
    out: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        devices: 1000,
        users: 100,
        seconds: 300,
        min_interval: 5,
        max_interval: 30,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        let num = |v: &str| -> u64 {
            v.parse()
                .unwrap_or_else(|_| panic!("{flag} wants a number"))
        };
        match flag.as_str() {
            "--devices" => args.devices = num(&value) as usize,
            "--users" => args.users = num(&value) as usize,
            "--seconds" => args.seconds = num(&value),
            "--min-interval" => args.min_interval = num(&value),
            "--max-interval" => args.max_interval = num(&value),
            "--out" => args.out = Some(value),
            other => panic!(
                "unknown flag {other}; use --devices N --users N --seconds N \
                 --min-interval S --max-interval S --out FILE"
            ),
        }
    }
    assert!(args.users >= 1 && args.devices >= args.users);
    assert!(args.min_interval >= 1 && args.max_interval >= args.min_interval);
    args
}

/// Everything measured, shared by the device tasks.
#[derive(Default)]
struct Stats {
    /// Latency in microseconds, by request kind (long-polls excluded: they wait on purpose).
    latency: Mutex<BTreeMap<&'static str, Vec<u32>>>,
    /// Commit-to-other-device delay, in microseconds.
    propagation: Mutex<Vec<u32>>,
    /// Errors by kind, with a few examples.
    errors: Mutex<BTreeMap<String, u64>>,
    examples: Mutex<Vec<String>>,
    commits: AtomicU64,
    polls: AtomicU64,
    events_seen: AtomicU64,
}

impl Stats {
    fn record(&self, kind: &'static str, took: Duration) {
        let us = took.as_micros().min(u32::MAX as u128) as u32;
        self.latency
            .lock()
            .unwrap()
            .entry(kind)
            .or_default()
            .push(us);
    }
    fn error(&self, kind: &str, detail: String) {
        *self
            .errors
            .lock()
            .unwrap()
            .entry(kind.to_string())
            .or_default() += 1;
        let mut ex = self.examples.lock().unwrap();
        if ex.len() < 10 {
            ex.push(format!("{kind}: {detail}"));
        }
    }
}

/// A tiny xorshift generator: each device has its own, seeded from its index.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// One simulated device.
struct Sim {
    http: reqwest::Client,
    base: String,
    token: String,
    index: usize,
    stats: Arc<Stats>,
}

impl Sim {
    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}{path}", self.base)
    }

    /// Sends one request, records its latency under `kind`, and returns the JSON answer; an
    /// error (transport or non-2xx) is recorded and returned as `None`.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        kind: &'static str,
        req: reqwest::RequestBuilder,
        measure: bool,
    ) -> Option<T> {
        let start = Instant::now();
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.stats
                    .error(&format!("{kind}: transport"), format!("{e:?}"));
                return None;
            }
        };
        let status = resp.status();
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                self.stats.error(&format!("{kind}: body"), format!("{e:?}"));
                return None;
            }
        };
        if measure {
            self.stats.record(kind, start.elapsed());
        }
        if !status.is_success() {
            self.stats.error(
                &format!("{kind}: HTTP {}", status.as_u16()),
                String::from_utf8_lossy(&body).chars().take(200).collect(),
            );
            return None;
        }
        if body.is_empty() {
            return serde_json::from_slice(b"null").ok();
        }
        match serde_json::from_slice(&body) {
            Ok(v) => Some(v),
            Err(e) => {
                self.stats
                    .error(&format!("{kind}: bad JSON"), e.to_string());
                None
            }
        }
    }

    /// Uploads `data` as one block if the service lacks it; returns its hash.
    async fn upload(&self, device: u64, data: &[u8], measure: bool) -> Option<String> {
        let hash = sha256_hex(data);
        let missing: MissingBlocks = self
            .call(
                "blocks/missing",
                self.http
                    .post(self.url("/blocks/missing"))
                    .bearer_auth(&self.token)
                    .header(DEVICE_HEADER, device)
                    .json(&json!({ "hashes": [hash] })),
                measure,
            )
            .await?;
        for block in missing.missing {
            let _: Option<()> = self
                .call(
                    "PUT block",
                    self.http
                        .put(format!("{}{}", self.base, block.url))
                        .body(data.to_vec()),
                    measure,
                )
                .await;
        }
        Some(hash)
    }
}

async fn run_device(
    sim: Sim,
    args: Arc<Args>,
    start_gate: Arc<tokio::sync::Barrier>,
    setup_permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (sim.index as u64 + 1).wrapping_mul(0x2545_F491));
    // Set-up, not measured: register, create the device's file, read the cursor.
    let device: Option<Device> = sim
        .call(
            "register",
            sim.http
                .post(sim.url("/devices"))
                .bearer_auth(&sim.token)
                .json(&json!({ "name": format!("load-{}", sim.index) })),
            false,
        )
        .await;
    let data = format!("device {} initial", sim.index);
    let hash = match &device {
        Some(d) => sim.upload(d.id, data.as_bytes(), false).await,
        None => None,
    };
    let file: Option<Node> = match (&device, hash) {
        (Some(d), Some(hash)) => {
            sim.call(
                "create",
                sim.http
                    .post(sim.url("/nodes"))
                    .bearer_auth(&sim.token)
                    .header(DEVICE_HEADER, d.id)
                    .json(&json!({
                        "parent": ROOT_ID, "name": format!("device-{}.txt", sim.index),
                        "kind": "file", "content": {"size": data.len(), "blocks": [hash]},
                    })),
                false,
            )
            .await
        }
        _ => None,
    };
    let me: Option<Me> = sim
        .call(
            "me",
            sim.http.get(sim.url("/me")).bearer_auth(&sim.token),
            false,
        )
        .await;
    drop(setup_permit);
    start_gate.wait().await;
    // Every device leaves the gate at the same moment, so each fixes the same end.
    let end = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    let (Some(device), Some(mut file), Some(me)) = (device, file, me) else {
        return;
    };
    let sim = Arc::new(sim);

    // The listener: long-poll without pause.
    let poller = {
        let sim = sim.clone();
        tokio::spawn(async move {
            let mut cursor = me.latest_seq;
            loop {
                let req = sim
                    .http
                    .get(sim.url(&format!(
                        "/devices/{}/poll?since={cursor}&timeout_ms=25000",
                        device.id
                    )))
                    .bearer_auth(&sim.token);
                let page: Option<ChangePage> = tokio::select! {
                    page = sim.call("poll", req, false) => page,
                    () = tokio::time::sleep_until(end) => break,
                };
                sim.stats.polls.fetch_add(1, Ordering::Relaxed);
                let Some(page) = page else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                let now = now_ns();
                for event in &page.events {
                    if event.device != Some(device.id) {
                        let delay_us = ((now - event.at_ns).max(0) / 1000) as u32;
                        sim.stats.propagation.lock().unwrap().push(delay_us);
                        sim.stats.events_seen.fetch_add(1, Ordering::Relaxed);
                    }
                }
                cursor = match page.events.last() {
                    Some(last) => last.seq,
                    None => cursor.max(page.latest_seq),
                };
            }
        })
    };

    // The writer: new content every few seconds.
    let first = rng.range(0, args.max_interval * 1000);
    let mut next = tokio::time::Instant::now() + Duration::from_millis(first);
    let mut n = 0u64;
    loop {
        if next >= end {
            break;
        }
        tokio::time::sleep_until(next).await;
        n += 1;
        let size = rng.range(100, 8192) as usize;
        let mut data = format!("device {} commit {n} ", sim.index).into_bytes();
        data.resize(size, b'.');
        let Some(hash) = sim.upload(device.id, &data, true).await else {
            next += Duration::from_secs(rng.range(args.min_interval, args.max_interval));
            continue;
        };
        let committed: Option<Node> = sim
            .call(
                "commit",
                sim.http
                    .put(sim.url(&format!("/nodes/{}/content", file.id)))
                    .bearer_auth(&sim.token)
                    .header(DEVICE_HEADER, device.id)
                    .json(&json!({
                        "base_version": file.version,
                        "content": {"size": size, "blocks": [hash]},
                    })),
                true,
            )
            .await;
        if let Some(node) = committed {
            file = node;
            sim.stats.commits.fetch_add(1, Ordering::Relaxed);
        } else if let Some(node) = sim
            .call::<Node>(
                "get node",
                sim.http
                    .get(sim.url(&format!("/nodes/{}", file.id)))
                    .bearer_auth(&sim.token),
                true,
            )
            .await
        {
            file = node;
        }
        next += Duration::from_secs(rng.range(args.min_interval, args.max_interval));
    }
    let _ = poller.await;
}

/// Resident memory (KiB), threads and open descriptors of a process, from `/proc`.
fn proc_sample(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((field("VmRSS:")?, field("Threads:")?, fds))
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args = Arc::new(parse_args());
    // Each device holds two connections (listener and writer), on both ends.
    check_fd_limit();
    let server = tokio::task::spawn_blocking(Server::start).await.unwrap();
    let pid = server.pid();
    eprintln!(
        "load: jewel-server pid {pid} at {}; adding {} users",
        server.url, args.users
    );
    let server = Arc::new(server);
    let tokens: Vec<String> = {
        let server = server.clone();
        let users = args.users;
        tokio::task::spawn_blocking(move || {
            (0..users)
                .map(|u| server.add_user(&format!("load{u}")))
                .collect()
        })
        .await
        .unwrap()
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let stats = Arc::new(Stats::default());
    let baseline = proc_sample(pid);
    let gate = Arc::new(tokio::sync::Barrier::new(args.devices + 1));
    let setup_start = Instant::now();
    let mut tasks = Vec::new();
    let setup_limit = Arc::new(tokio::sync::Semaphore::new(64));
    for index in 0..args.devices {
        let sim = Sim {
            http: http.clone(),
            base: server.url.clone(),
            token: tokens[index % args.users].clone(),
            index,
            stats: stats.clone(),
        };
        let (args, gate, limit) = (args.clone(), gate.clone(), setup_limit.clone());
        tasks.push(tokio::spawn(async move {
            // Set-up requests go 64 devices at a time, so the start is not one burst of 4000.
            let permit = limit.acquire_owned().await.unwrap();
            run_device(sim, args, gate, permit).await;
        }));
    }
    // Everyone set up: open the gate and measure from here.
    gate.wait().await;
    let setup_took = setup_start.elapsed();
    let setup_errors: u64 = stats.errors.lock().unwrap().values().sum();
    eprintln!(
        "load: {} devices set up in {:.1}s ({setup_errors} errors); running {}s",
        args.devices,
        setup_took.as_secs_f64(),
        args.seconds
    );
    let run_start = Instant::now();
    let mut samples: Vec<(f64, u64, u64, u64)> = Vec::new();
    let sampler = {
        let seconds = args.seconds;
        tokio::spawn(async move {
            let mut out = Vec::new();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(seconds) {
                if let Some((rss, threads, fds)) = proc_sample(pid) {
                    out.push((start.elapsed().as_secs_f64(), rss, threads, fds));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            out
        })
    };
    let progress = {
        let stats = stats.clone();
        let seconds = args.seconds;
        tokio::spawn(async move {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(seconds) {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let errors: u64 = stats.errors.lock().unwrap().values().sum();
                eprintln!(
                    "load: {:>4}s commits {} polls {} events {} errors {} rss {} KiB",
                    start.elapsed().as_secs(),
                    stats.commits.load(Ordering::Relaxed),
                    stats.polls.load(Ordering::Relaxed),
                    stats.events_seen.load(Ordering::Relaxed),
                    errors,
                    proc_sample(pid).map(|s| s.0).unwrap_or(0),
                );
            }
        })
    };
    for t in tasks {
        let _ = t.await;
    }
    samples.extend(sampler.await.unwrap());
    progress.abort();
    let ran = run_start.elapsed().as_secs_f64();
    let alive = proc_sample(pid).is_some();

    // The report.
    let mut out = String::new();
    let a = &args;
    out.push_str(&format!(
        "## Load: {} devices of {} users, {} s\n\n\
         Each device long-polls without pause and commits new content (100 B–8 KiB, one \
         block uploaded first) every {}–{} s. Server: `jewel-server` ({} build), SQLite + \
         local blocks, on this machine ({} cores, shared with the load generator).\n\n",
        a.devices,
        a.users,
        a.seconds,
        a.min_interval,
        a.max_interval,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    ));
    let errors = stats.errors.lock().unwrap().clone();
    let total_errors: u64 = errors.values().sum();
    out.push_str(&format!(
        "- set-up (register, upload, create; 64 at a time): {:.1} s, {setup_errors} errors\n\
         - commits: {} ({:.1}/s); long-poll answers: {} ({:.1}/s); changes delivered to \
         other devices: {}\n\
         - errors: {total_errors}{}\n\
         - server alive at the end: {}\n\n",
        setup_took.as_secs_f64(),
        stats.commits.load(Ordering::Relaxed),
        stats.commits.load(Ordering::Relaxed) as f64 / ran,
        stats.polls.load(Ordering::Relaxed),
        stats.polls.load(Ordering::Relaxed) as f64 / ran,
        stats.events_seen.load(Ordering::Relaxed),
        if errors.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                errors
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        if alive { "yes" } else { "NO" },
    ));
    for ex in stats.examples.lock().unwrap().iter() {
        out.push_str(&format!("  - e.g. {ex}\n"));
    }
    out.push_str(
        "| request | count | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n",
    );
    let mut latency = std::mem::take(&mut *stats.latency.lock().unwrap());
    let mut all = Vec::new();
    for (kind, v) in latency.iter_mut() {
        v.sort_unstable();
        all.extend_from_slice(v);
        out.push_str(&format!(
            "| {kind} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            v.len(),
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99),
            pct(v, 1.0)
        ));
    }
    all.sort_unstable();
    out.push_str(&format!(
        "| **all (no long-polls)** | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
        all.len(),
        pct(&all, 0.5),
        pct(&all, 0.9),
        pct(&all, 0.99),
        pct(&all, 1.0)
    ));
    let mut prop = std::mem::take(&mut *stats.propagation.lock().unwrap());
    prop.sort_unstable();
    out.push_str(&format!(
        "| change reaches another device (commit → poll answer) | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n\n",
        prop.len(),
        pct(&prop, 0.5),
        pct(&prop, 0.9),
        pct(&prop, 0.99),
        pct(&prop, 1.0)
    ));
    out.push_str("Server process over the run (from /proc):\n\n| t (s) | RSS MiB | threads | open fds |\n|---|---|---|---|\n");
    if let Some((rss, threads, fds)) = baseline {
        out.push_str(&format!(
            "| before set-up | {:.1} | {threads} | {fds} |\n",
            rss as f64 / 1024.0
        ));
    }
    let step = (samples.len() / 10).max(1);
    for (i, (t, rss, threads, fds)) in samples.iter().enumerate() {
        if i % step == 0 || i + 1 == samples.len() {
            out.push_str(&format!(
                "| {t:.0} | {:.1} | {threads} | {fds} |\n",
                *rss as f64 / 1024.0
            ));
        }
    }
    if let Some(max) = samples.iter().map(|s| s.1).max() {
        let first_half_max = samples[..samples.len() / 2]
            .iter()
            .map(|s| s.1)
            .max()
            .unwrap_or(0);
        out.push_str(&format!(
            "\nPeak RSS {:.1} MiB; peak in the first half {:.1} MiB, in the second half {:.1} MiB.\n",
            max as f64 / 1024.0,
            first_half_max as f64 / 1024.0,
            samples[samples.len() / 2..]
                .iter()
                .map(|s| s.1)
                .max()
                .unwrap_or(0) as f64
                / 1024.0
        ));
    }
    println!("{out}");
    if let Some(path) = &args.out {
        std::fs::write(path, &out).expect("write --out");
    }
    drop(server);
    if total_errors > 0 || !alive {
        std::process::exit(1);
    }
}

fn check_fd_limit() {
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        if let Some(line) = limits.lines().find(|l| l.starts_with("Max open files")) {
            let soft: u64 = line
                .split_whitespace()
                .nth(3)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if soft < 8192 {
                eprintln!("load: warning: only {soft} open files allowed (ulimit -n); raise it for 1000 devices");
            }
        }
    }
}
