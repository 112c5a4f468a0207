//! Idle cost: what a mounted drive costs while nothing happens (issue 18's goal: no file
//! writes, and under 0.01 CPU-seconds a minute beyond the long-poll itself).
//!
//! A fresh server, started as a person would (its default log level: no request log), and
//! one mount. After a warm-up — the mount's first status file and tree snapshot written,
//! its first long-poll open — both processes are left alone for `seconds`, and what the
//! kernel counted for each in that window is scaled to a minute:
//! - CPU: `utime + stime` from `/proc/PID/stat` (in ticks of 10 ms), so short
//!   windows are coarse: that is why the default window is 20 s;
//! - write calls: `syscw` from `/proc/PID/io`, every `write`-family system call, sockets
//!   included — the long-poll's request and answer (one round every 25 s) are a few of them,
//!   and so is each wake-up of the async runtime from another thread (an 8-byte eventfd
//!   write), which makes this the count of wake-ups more than of file writes;
//! - bytes written: `wchar` (all write calls, sockets included) and `write_bytes` (what went
//!   to the storage layer: file writes that reach the disk).
//!
//! Reading another process's `/proc/PID/io` needs the same user or root (`make bench` runs
//! as root).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::env::{progress, BenchServer, FuseClient};

/// What one process did while idle, per minute.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct IdleCost {
    pub cpu_s_per_min: f64,
    pub write_calls_per_min: f64,
    pub bytes_written_per_min: f64,
    pub storage_bytes_per_min: f64,
}

/// The idle cost of a client (mount) and its server.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct IdleResult {
    pub seconds: f64,
    pub client: IdleCost,
    pub server: IdleCost,
}

/// The kernel's counters for one process at one moment.
#[derive(Debug, Clone, Copy)]
struct Counters {
    cpu_ticks: u64,
    syscw: u64,
    wchar: u64,
    write_bytes: u64,
}

fn counters(pid: u32) -> Counters {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at the state, field 3;
    // utime and stime are fields 14 and 15.
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok());
    let cpu_ticks = tick(14).unwrap_or(0) + tick(15).unwrap_or(0);
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io");
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Counters {
        cpu_ticks,
        syscw: field("syscw"),
        wchar: field("wchar"),
        write_bytes: field("write_bytes"),
    }
}

/// `/proc` counts CPU time in USER_HZ ticks, 100 a second on Linux everywhere.
const TICKS_PER_S: f64 = 100.0;

fn per_minute(before: Counters, after: Counters, elapsed: Duration) -> IdleCost {
    let scale = 60.0 / elapsed.as_secs_f64();
    IdleCost {
        cpu_s_per_min: (after.cpu_ticks - before.cpu_ticks) as f64 / TICKS_PER_S * scale,
        write_calls_per_min: (after.syscw - before.syscw) as f64 * scale,
        bytes_written_per_min: (after.wchar - before.wchar) as f64 * scale,
        storage_bytes_per_min: (after.write_bytes - before.write_bytes) as f64 * scale,
    }
}

/// Starts a server and a mount under `work`, lets them settle, and measures `seconds` of
/// nothing happening.
pub fn idle_cost(work: &Path, seconds: u64) -> IdleResult {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).expect("bench scratch folder");
    let server = BenchServer::start_quiet(&work.join("server"), "idle");
    let token = server.add_users("idle", 1).remove(0);
    let client = FuseClient::mount(&work.join("client"), &server.url, &token, "idle");
    // Something happened once (a file saved and uploaded), then nothing.
    std::fs::write(client.mnt.join("hello.txt"), b"once").expect("write into the mount");
    client.wait_uploaded(Duration::from_secs(30));
    progress(&format!(
        "idle cost: warming up, then {seconds} s of nothing"
    ));
    std::thread::sleep(Duration::from_secs(3));
    let (c0, s0) = (counters(client.pid()), counters(server.pid()));
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let (c1, s1) = (counters(client.pid()), counters(server.pid()));
    let elapsed = start.elapsed();
    let result = IdleResult {
        seconds: elapsed.as_secs_f64(),
        client: per_minute(c0, c1, elapsed),
        server: per_minute(s0, s1, elapsed),
    };
    progress(&format!(
        "idle cost per minute: client {:.3} CPU-s, {:.0} write calls; server {:.3} CPU-s, {:.0} write calls",
        result.client.cpu_s_per_min,
        result.client.write_calls_per_min,
        result.server.cpu_s_per_min,
        result.server.write_calls_per_min
    ));
    drop(client);
    drop(server);
    result
}
