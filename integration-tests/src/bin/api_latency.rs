//! `api_latency`: request latency of the JewelFS API on loopback, under concurrency.
//!
//! Starts a real `jewel-server` (release build when this program is built with `--release`),
//! creates a user with a directory of 100 files, then runs `--clients` concurrent clients
//! (default 64) for `--seconds` (default 10). Each client loops over a mix of metadata
//! requests — get a node, look up a child by name, list a 100-entry directory — and, in a
//! separate phase, metadata writes (create then move a directory). Prints p50/p90/p99/max per
//! kind and in total, as Markdown. Targets from the service issue: metadata p50 < 1 ms,
//! p99 < 5 ms with 64 concurrent clients.

use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::{sha256_hex, Server};
use jewel_wire::{ListPage, MissingBlocks, MoveResult, Node, API_PREFIX, ROOT_ID};
use serde_json::json;

struct Args {
    clients: usize,
    seconds: u64,
    /// Requests per second per client during the read phase; 0 = as fast as possible
    /// (a saturation test, where latency is bounded below by clients / throughput).
    rate: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        clients: 64,
        seconds: 10,
        rate: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--clients" => args.clients = value.parse().expect("--clients N"),
            "--seconds" => args.seconds = value.parse().expect("--seconds N"),
            "--rate" => args.rate = value.parse().expect("--rate N"),
            other => panic!("unknown flag {other}; use --clients N --seconds N --rate N"),
        }
    }
    args
}

#[derive(Default)]
struct Samples {
    get: Vec<Duration>,
    child: Vec<Duration>,
    list: Vec<Duration>,
    write: Vec<Duration>,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn row(name: &str, samples: &mut [Duration], seconds: f64) -> String {
    samples.sort();
    format!(
        "| {name} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} |",
        samples.len(),
        samples.len() as f64 / seconds,
        pct(samples, 0.5),
        pct(samples, 0.9),
        pct(samples, 0.99),
        pct(samples, 1.0)
    )
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let server = tokio::task::spawn_blocking(Server::start).await.unwrap();
    let token = server.add_user("bench");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()
        .unwrap();
    let base = format!("{}{API_PREFIX}", server.url);

    // Set-up: a directory with 100 one-block files.
    let dir: Node = http
        .post(format!("{base}/nodes"))
        .bearer_auth(&token)
        .json(&json!({"parent": ROOT_ID, "name": "dir", "kind": "dir"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let data = b"hello".to_vec();
    let hash = sha256_hex(&data);
    let missing: MissingBlocks = http
        .post(format!("{base}/blocks/missing"))
        .bearer_auth(&token)
        .json(&json!({"hashes": [hash]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for m in missing.missing {
        http.put(format!("{}{}", server.url, m.url))
            .body(data.clone())
            .send()
            .await
            .unwrap();
    }
    let mut file_ids = Vec::new();
    for i in 0..100 {
        let node: Node = http
            .post(format!("{base}/nodes"))
            .bearer_auth(&token)
            .json(
                &json!({"parent": dir.id, "name": format!("f{i:03}"), "kind": "file",
                          "content": {"size": 5, "blocks": [hash]}}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        file_ids.push(node.id);
    }
    let file_ids = Arc::new(file_ids);

    let pacing = match args.rate {
        0 => "as fast as each can (saturation)".to_string(),
        r => format!("{r} read rounds/s each"),
    };
    println!(
        "## API request latency (ms), {} concurrent clients, {pacing}, loopback\n",
        args.clients
    );
    println!(
        "| request | count | per second | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|---|"
    );

    // Phase 1: reads.
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (http, base, token, ids) =
            (http.clone(), base.clone(), token.clone(), file_ids.clone());
        let dir = dir.id;
        let interval = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / args.rate as f64));
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::default();
            let mut i = c;
            // Spread the clients' first requests over one interval.
            let mut next = tokio::time::Instant::now()
                + interval
                    .map(|d| d.mul_f64(c as f64 / 64.0))
                    .unwrap_or_default();
            while Instant::now() < deadline {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(next).await;
                    next += interval;
                }
                i += 1;
                let id = ids[i % ids.len()];
                let t = Instant::now();
                let r = http
                    .get(format!("{base}/nodes/{id}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
                s.get.push(t.elapsed());
                let t = Instant::now();
                let r = http
                    .get(format!("{base}/nodes/{dir}/children/f{:03}", i % 100))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
                s.child.push(t.elapsed());
                if i % 4 == 0 {
                    let t = Instant::now();
                    let page: ListPage = http
                        .get(format!("{base}/nodes/{dir}/children"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    assert_eq!(page.entries.len(), 100);
                    s.list.push(t.elapsed());
                }
            }
            s
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        let s = t.await.unwrap();
        all.get.extend(s.get);
        all.child.extend(s.child);
        all.list.extend(s.list);
    }
    let secs = args.seconds as f64;
    println!("{}", row("get node", &mut all.get, secs));
    // (per-second columns are totals over all clients)
    println!("{}", row("look up child", &mut all.child, secs));
    println!("{}", row("list 100 entries", &mut all.list, secs));
    let mut meta: Vec<Duration> = all.get.iter().chain(&all.child).copied().collect();
    println!(
        "{}",
        row("**metadata reads (get + lookup)**", &mut meta, secs)
    );

    // Phase 2: writes (each one transaction + change-log append).
    let deadline = Instant::now() + Duration::from_secs(args.seconds.div_ceil(2));
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                i += 1;
                let t = Instant::now();
                let node: Node = http.post(format!("{base}/nodes")).bearer_auth(&token)
                    .json(&json!({"parent": ROOT_ID, "name": format!("c{c}-{i}"), "kind": "dir"}))
                    .send().await.unwrap().json().await.unwrap();
                out.push(t.elapsed());
                let t = Instant::now();
                let _: MoveResult = http.post(format!("{base}/nodes/{}/move", node.id)).bearer_auth(&token)
                    .json(&json!({"base_version": node.version, "new_parent": ROOT_ID, "new_name": format!("m{c}-{i}")}))
                    .send().await.unwrap().json().await.unwrap();
                out.push(t.elapsed());
            }
            out
        }));
    }
    for t in tasks {
        all.write.extend(t.await.unwrap());
    }
    println!(
        "{}",
        row(
            "metadata writes (create, move)",
            &mut all.write,
            args.seconds.div_ceil(2) as f64
        )
    );
    drop(server);
}
