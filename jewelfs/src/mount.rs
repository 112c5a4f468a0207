//! The commands: `mount`, `unmount`, `status`.
//!
//! `mount` resolves its settings, checks the mountpoint, then starts the client without the
//! kernel ([`start`], in `mount/start.rs`: the core, its uploader, pre-uploader, syncer,
//! listener and tree saver, online or offline from the cache; the model test starts clients
//! the same way) and only then mounts the FUSE session (`fuse/session.rs`) over it and
//! publishes its status. Nothing here knows `fuser`.
//!
//! A running mount publishes its [`Status`] (see [`crate::status`]: a file rewritten only
//! when it changes, and a socket that answers with the status of the moment). `status` asks
//! the socket (the file when no mount answers).
//!
//! **Stopping.** On SIGINT or SIGTERM (Ctrl-C, `jewelfs unmount`, `systemctl --user stop`,
//! logout) the mount first waits for its pending uploads — every journal entry, including
//! one still in its settle window, which a save a moment before counts as — for up to
//! [`STOP_WAIT`] and only while the server is reachable, then unmounts itself. A second
//! signal cuts the wait short. What is left stays in the journal for the next mount; the
//! last status file says how much. `unmount` sends the signal, shows the count draining,
//! and reports the outcome.
//!
//! Settings come from, in order: the command line, `JEWEL_SERVER` / `JEWEL_TOKEN`, then
//! `~/.config/jewel/config.toml` (`server`, `token`, `device`, `cache_dir`, `cache_size`).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sha2::Digest;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::core::api::{Api, HttpApi};
use crate::core::{Config, Core, Status};
use crate::status::StatusFile;

mod start;
pub use start::{start, Running, StartErr, Started};

/// The longest a stopping mount waits for its pending uploads (while the server answers).
/// 60 s: a few large files on a slow uplink; well inside systemd's 90 s stop timeout.
pub const STOP_WAIT: Duration = Duration::from_secs(60);

/// How often the status file is refreshed while things happen, and at most how long it
/// lags when nothing has for a while (the interval doubles from the one to the other). Idle,
/// that is 6 wake-ups a minute; a reader that needs the status of the moment asks the
/// socket instead.
const STATUS_FAST: Duration = Duration::from_millis(200);
const STATUS_IDLE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default)]
pub struct MountArgs {
    pub mountpoint: PathBuf,
    pub server: Option<String>,
    pub token: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub device: Option<String>,
    pub cache_size: Option<String>,
    pub daemon: bool,
    /// Let other local users (and root) in, with the stored modes enforced by the kernel
    /// (`allow_other` and `default_permissions`); see [`check_allow_other`].
    pub allow_other: bool,
    /// Replay other machines' changes through the mount so inotify watchers hear them
    /// (`fuse/replay.rs`). Off by default: see the limit in `docs/SEMANTICS.md` (a client
    /// killed while a replay waits on its own mount leaves the mount hung).
    pub inotify_replay: bool,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct FileConfig {
    pub(crate) server: Option<String>,
    pub(crate) token: Option<String>,
    pub(crate) device: Option<String>,
    pub(crate) cache_dir: Option<PathBuf>,
    cache_size: Option<String>,
    allow_other: Option<bool>,
    inotify_replay: Option<bool>,
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

pub fn config_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".config"));
    base.join("jewel").join("config.toml")
}

pub(crate) fn read_config() -> anyhow::Result<FileConfig> {
    let path = config_path();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            warn_if_readable_by_others(&path);
            toml::from_str(&text).with_context(|| format!("reading {}", path.display()))
        }
        Err(_) => Ok(FileConfig::default()),
    }
}

/// The config file holds the token: like ssh with a private key, say so when other local
/// users can read it (and how to fix it), rather than use it silently.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "jewelfs: WARNING: {} holds your token and is readable by others (mode {mode:o}); run: chmod 600 {}",
                path.display(),
                path.display()
            );
        }
    }
}

/// Where default cache folders live: `~/.cache/jewel/`.
pub(crate) fn default_cache_base() -> PathBuf {
    home().join(".cache").join("jewel")
}

/// The default cache folder's name for a server and token (12 hex digits of a hash).
pub(crate) fn cache_key(server: &str, token: &str) -> String {
    hex::encode(&sha2::Sha256::digest(format!("{server}\n{token}"))[..6])
}

/// The token in the config file now, if the file names `server` (a new one after `jewelfs
/// login`: a running mount takes it when the service refuses the one it has).
fn config_token_for(server: &str) -> Option<String> {
    let text = std::fs::read_to_string(config_path()).ok()?;
    let file: FileConfig = toml::from_str(&text).ok()?;
    (file.server.as_deref()? == server)
        .then_some(file.token)
        .flatten()
}

/// Parses sizes like `10G`, `512MiB`, `1000000`.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().with_context(|| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => bail!("bad size unit {other:?} in {s:?} (use K, M, G or T)"),
    };
    Ok((num * mult as f64) as u64)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "this-machine".into())
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

pub use crate::status::{read_status, status_path};

pub(crate) fn is_mounted(mountpoint: &Path) -> bool {
    let abs = absolute(mountpoint);
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines()
        .any(|l| l.split(' ').nth(4).map(unescape_mount) == Some(abs.to_string_lossy().to_string()))
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\134", "\\")
}

/// Whether `pid` is a `jewelfs` process of this user (its executable's name, and the owner
/// of its `/proc` entry): `unmount` signals nothing else, whatever a status claims.
fn is_jewelfs_of_ours(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let ours = std::fs::metadata(&proc).is_ok_and(|m| m.uid() == unsafe { libc::getuid() });
    let exe = std::fs::read_link(proc.join("exe")).ok();
    let named = exe
        .as_ref()
        .and_then(|e| e.file_name())
        .map(|n| {
            n.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        })
        .is_some_and(|n| n == "jewelfs");
    ours && named
}

fn pid_alive(pid: u32) -> bool {
    if pid == 0 || unsafe { libc::kill(pid as i32, 0) } != 0 {
        return false;
    }
    // A zombie (exited, not yet reaped by its parent) is not running.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    state != Some("Z")
}

/// `jewelfs mount`.
pub fn mount(args: MountArgs) -> anyhow::Result<()> {
    let file = read_config()?;
    let server = args
        .server
        .clone()
        .or(file.server)
        .context("no server: pass --server URL, set JEWEL_SERVER, or put server = \"...\" in ~/.config/jewel/config.toml")?;
    let token_from_file = args.token.is_none();
    let token = args.token.clone().or(file.token).context(
        "no token: run `jewelfs login SERVER` to link this machine (or set JEWEL_TOKEN)",
    )?;
    let device = args.device.clone().or(file.device).unwrap_or_else(hostname);
    let cache_size = match args.cache_size.clone().or(file.cache_size) {
        Some(s) => parse_size(&s)?,
        None => 10 << 30,
    };
    let cache_dir = args
        .cache_dir
        .clone()
        .or(file.cache_dir)
        .unwrap_or_else(|| default_cache_base().join(cache_key(&server, &token)));
    let mountpoint = absolute(&args.mountpoint);
    let allow_other = args.allow_other || file.allow_other.unwrap_or(false);
    let inotify_replay = args.inotify_replay || file.inotify_replay.unwrap_or(false);

    // Checks a person can act on, before anything starts.
    if allow_other {
        check_allow_other(
            unsafe { libc::getuid() },
            &std::fs::read_to_string(FUSE_CONF).unwrap_or_default(),
        )?;
    }
    let meta = std::fs::metadata(&mountpoint).map_err(|e| {
        anyhow::anyhow!(
            "mountpoint {} is not usable: {e} (create it with `mkdir -p {}`)",
            mountpoint.display(),
            mountpoint.display()
        )
    })?;
    if is_mounted(&mountpoint) {
        bail!(
            "{} is already mounted (unmount it first: `jewelfs unmount {}`)",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", mountpoint.display());
    }
    if std::fs::read_dir(&mountpoint)?.next().is_some() {
        bail!(
            "mountpoint {} is not empty: mount on an empty directory",
            mountpoint.display()
        );
    }

    if args.daemon {
        return daemonize(&args, &cache_dir, &mountpoint);
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("jewelfs-io")
        .enable_all()
        .build()?;
    let mut http = HttpApi::new(&server, &token)?.hearing_every_folder(inotify_replay);
    if token_from_file {
        let server = server.clone();
        http = http.with_token_source(Box::new(move || config_token_for(&server)));
    }
    let api: Arc<dyn Api> = Arc::new(http);
    let mut cfg = Config::new(cache_dir.clone(), device);
    cfg.cache_size = cache_size;
    cfg.server = server.clone();
    // Everything but the kernel session, as the model test starts it too (`mount/start.rs`).
    let running = rt.block_on(start(cfg, api))?;
    if let Started::Offline(why) = &running.started {
        eprintln!("jewelfs: {why}");
    }
    let core = running.core().clone();

    let options = crate::fuse::session::Options {
        allow_other,
        inotify_replay,
    };
    let mut session = crate::fuse::session::mount(&core, rt.handle(), &mountpoint, &options)?;

    // SIGINT / SIGTERM: wait for pending uploads, then unmount; the session loop returns.
    let signals = {
        let _in_rt = rt.enter();
        StopSignals::new()?
    };
    let mut unmounter = session.unmounter();
    let mp = mountpoint.clone();
    let stopping = core.clone();
    rt.spawn(async move {
        let mut signals = signals;
        signals.next().await;
        wait_for_uploads(&stopping, &mut signals, STOP_WAIT).await;
        tracing::info!("unmounting {}", mp.display());
        if let Err(e) = unmounter.unmount() {
            tracing::warn!("unmount failed ({e}); detaching lazily");
            let _ = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&mp)
                .status();
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&mp)
                .status();
        }
    });

    // The status: a file rewritten when it changes, a socket answering on request.
    let base = Status {
        server: server.clone(),
        mountpoint: mountpoint.display().to_string(),
        cache_dir: cache_dir.display().to_string(),
        pid: std::process::id(),
        ready: true,
        ..Default::default()
    };
    // The socket first: whoever sees the file (ready, this pid) may ask it at once.
    {
        let (core, base) = (core.clone(), base.clone());
        crate::status::serve(rt.handle(), &mountpoint, move || full_status(&core, &base))?;
    }
    let mut status_file = StatusFile::new(&mountpoint)?;
    status_file.publish(&full_status(&core, &base))?;
    let publisher = rt.spawn(publish_status(core.clone(), status_file, base.clone()));
    eprintln!("jewelfs: {} mounted ({})", mountpoint.display(), server);

    let result = session.run();
    crate::status::remove_socket(&mountpoint);
    let left = rt.block_on(async {
        publisher.abort();
        let _ = publisher.await; // stopped: it writes the file no more
        running.finish().await
    });
    // The last word, for `jewelfs unmount` (which reads it once this process is gone).
    let mut last = full_status(&core, &base);
    last.ready = false;
    if let Err(e) = StatusFile::new(&mountpoint).and_then(|mut f| f.publish(&last)) {
        tracing::debug!("could not write the last status: {e}");
    }
    if left > 0 {
        eprintln!("jewelfs: unmounted with {left} change(s) still to upload; they upload at the next mount");
    } else {
        eprintln!("jewelfs: unmounted {}", mountpoint.display());
    }
    drop(core);
    rt.shutdown_timeout(Duration::from_millis(500));
    result.context("the FUSE session ended with an error")
}

/// Where `fusermount3` reads whether users may mount with `allow_other`.
const FUSE_CONF: &str = "/etc/fuse.conf";

/// `--allow-other` for a user other than root needs `user_allow_other` in `/etc/fuse.conf`
/// (`fusermount3` refuses otherwise, with a message that does not say which option of
/// ours caused it): said up front, with what to do.
pub fn check_allow_other(uid: u32, fuse_conf: &str) -> anyhow::Result<()> {
    let permitted = fuse_conf
        .lines()
        .any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other");
    if uid != 0 && !permitted {
        bail!(
            "--allow-other needs the line `user_allow_other` in {FUSE_CONF} (it lets users \
             open their FUSE mounts to others); as root: echo user_allow_other >> {FUSE_CONF}. \
             Or mount without --allow-other (only you can reach the drive then)"
        );
    }
    Ok(())
}

/// The core's status with what only the mount knows (server, paths, pid).
fn full_status(core: &Core, base: &Status) -> Status {
    Status {
        server: base.server.clone(),
        mountpoint: base.mountpoint.clone(),
        cache_dir: base.cache_dir.clone(),
        pid: base.pid,
        ready: base.ready,
        ..core.status()
    }
}

/// Runs until aborted: keeps the status file current (written only when it changes). Polls
/// every [`STATUS_FAST`] while things change, backing off to [`STATUS_IDLE`] when nothing
/// has. (The tree saved for offline starts is `mount/start.rs`'s.)
async fn publish_status(core: Arc<Core>, mut file: StatusFile, base: Status) {
    let mut interval = STATUS_FAST;
    loop {
        tokio::time::sleep(interval).await;
        let wrote = match file.publish(&full_status(&core, &base)) {
            Ok(wrote) => wrote,
            Err(e) => {
                tracing::debug!("could not write the status file: {e}");
                false
            }
        };
        interval = if wrote {
            STATUS_FAST
        } else {
            (interval * 2).min(STATUS_IDLE)
        };
    }
}

/// SIGINT and SIGTERM, either of which asks the mount to stop.
struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    /// Must run inside the runtime.
    fn new() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}

/// Waits until the journal is empty — counting entries still in their settle window, which
/// the uploader has not taken yet — or the server is unreachable, or `limit` has passed, or
/// a second stop signal comes. Says what it waits for.
async fn wait_for_uploads(core: &Core, signals: &mut StopSignals, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut said = 0;
    loop {
        let pending = core.journal.pending();
        if pending == 0
            || !core.online.load(Ordering::Relaxed)
            || tokio::time::Instant::now() >= deadline
        {
            return;
        }
        if pending != said {
            eprintln!(
                "jewelfs: waiting for {pending} upload(s) before unmounting (interrupt again to stop waiting)"
            );
            said = pending;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {},
            _ = signals.next() => return,
        }
    }
}

fn daemonize(args: &MountArgs, cache_dir: &Path, mountpoint: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(cache_dir)?;
    let log_path = cache_dir.join("jewelfs.log");
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("mount").arg(mountpoint);
    if let Some(s) = &args.server {
        cmd.arg("--server").arg(s);
    }
    if let Some(t) = &args.token {
        // Through the environment: a command line is visible to every user (`ps`).
        cmd.env("JEWEL_TOKEN", t);
    }
    cmd.arg("--cache-dir").arg(cache_dir);
    if let Some(d) = &args.device {
        cmd.arg("--device").arg(d);
    }
    if let Some(c) = &args.cache_size {
        cmd.arg("--cache-size").arg(c);
    }
    if args.allow_other {
        cmd.arg("--allow-other");
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("the mount stopped ({status}):\n{log}");
        }
        if is_mounted(mountpoint) && read_status(mountpoint).is_some_and(|s| s.ready) {
            println!(
                "{} mounted (pid {}, log {})",
                mountpoint.display(),
                child.id(),
                log_path.display()
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "the mount did not become ready in 30 s; see {}",
        log_path.display()
    )
}

/// `jewelfs status`.
pub fn status(mountpoint: &Path, json: bool) -> anyhow::Result<()> {
    let Some(s) = running_status(mountpoint) else {
        bail!("{} is not a running jewelfs mount", mountpoint.display());
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("mount:      {} (pid {})", s.mountpoint, s.pid);
    println!(
        "server:     {} — {}",
        s.server,
        if s.online { "online" } else { "OFFLINE" }
    );
    println!("device:     {} (id {})", s.device, s.device_id);
    println!("pending:    {} change(s) to upload", s.pending_uploads);
    for p in &s.pending {
        println!("            - {p}");
    }
    println!("uploaded:   {} change(s) this session", s.uploaded);
    println!(
        "cache:      {:.1} MiB of {:.1} MiB in {}",
        s.cache_bytes as f64 / 1048576.0,
        s.cache_limit as f64 / 1048576.0,
        s.cache_dir
    );
    println!("last change seen: #{}", s.last_seq);
    println!("conflicts:  {} conflict copies made", s.conflicts);
    let refused = Path::new(&s.cache_dir).join("refused");
    if std::fs::read_dir(&refused).is_ok_and(|mut d| d.next().is_some()) {
        println!(
            "refused:    content the server refused is kept in {}",
            refused.display()
        );
    }
    if let Some(e) = &s.last_error {
        println!("last error: {e}");
    }
    Ok(())
}

/// One line a person can glance at: online or not, what is left to upload, what went up.
pub fn summary(s: &Status) -> String {
    let mut line = format!(
        "{} · {} to upload · {} uploaded",
        if s.online {
            "online"
        } else {
            "OFFLINE (server unreachable)"
        },
        s.pending_uploads,
        s.uploaded
    );
    if s.conflicts > 0 {
        line.push_str(&format!(" · {} conflict copies", s.conflicts));
    }
    if let Some(e) = &s.last_error {
        line.push_str(&format!(" · last error: {e}"));
    }
    line
}

/// `jewelfs status --watch`: waits up to 30 s for a mount at `mountpoint`, then prints
/// [`summary`] each time it changes (checked once a second) until the mount ends.
pub fn watch_status(mountpoint: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    while crate::status::query(mountpoint).is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("{} is not a running jewelfs mount", mountpoint.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut last = String::new();
    while let Some(s) = crate::status::query(mountpoint) {
        let line = summary(&s);
        if line != last {
            println!("{}: {line}", mountpoint.display());
            last = line;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

/// The status of the mount running at `mountpoint`, as of now when it answers (else as its
/// file last said, if that mount is still alive and mounted); `None` when none runs there.
pub fn running_status(mountpoint: &Path) -> Option<Status> {
    crate::status::query(mountpoint).or_else(|| {
        read_status(mountpoint)
            .filter(|s| s.ready && pid_alive(s.pid) && is_mounted(&absolute(mountpoint)))
    })
}

/// `jewelfs unmount`: asks the mount to stop (it waits for its uploads, see the module
/// docs), shows the count draining, and reports what is left. After `wait` it asks again,
/// which makes the mount stop waiting.
pub fn unmount(mountpoint: &Path, wait: Duration) -> anyhow::Result<()> {
    let mountpoint = absolute(mountpoint);
    let Some(first) = running_status(&mountpoint) else {
        if is_mounted(&mountpoint) {
            let ok = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(&mountpoint)
                .status()?
                .success()
                || std::process::Command::new("umount")
                    .arg(&mountpoint)
                    .status()?
                    .success();
            if ok {
                println!(
                    "{} unmounted (its client was not running)",
                    mountpoint.display()
                );
                return Ok(());
            }
            bail!("could not unmount {}", mountpoint.display());
        }
        bail!("{} is not mounted", mountpoint.display());
    };
    let pid = first.pid;
    if !is_jewelfs_of_ours(pid) {
        bail!("the status of {} names process {pid}, which is not a jewelfs client of this user's: not signalling it", mountpoint.display());
    }
    let stop = |pid: u32| unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    };
    stop(pid);
    let start = Instant::now();
    let mut asked_again = false;
    let mut last = usize::MAX;
    while pid_alive(pid) && start.elapsed() < wait + Duration::from_secs(15) {
        if let Some(s) = crate::status::query(&mountpoint) {
            if s.pending_uploads > 0 && s.pending_uploads != last {
                eprintln!(
                    "waiting for {} upload(s){}...",
                    s.pending_uploads,
                    if s.online {
                        ""
                    } else {
                        " (server unreachable)"
                    }
                );
            }
            last = s.pending_uploads;
        }
        if !asked_again && start.elapsed() >= wait {
            stop(pid);
            asked_again = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if is_mounted(&mountpoint) {
        bail!(
            "{} is still mounted (files open?); close them and try again",
            mountpoint.display()
        );
    }
    // The mount's last status says what it could not upload.
    let end = read_status(&mountpoint).filter(|s| s.pid == pid && !s.ready);
    match end {
        Some(s) if s.pending_uploads > 0 => {
            eprintln!(
                "{} unmounted; {} change(s) could not be uploaded yet and stay in the journal:",
                mountpoint.display(),
                s.pending_uploads
            );
            for p in &s.pending {
                eprintln!("  - {p}");
            }
            eprintln!("they upload at the next mount");
        }
        Some(_) => println!("{} unmounted; everything uploaded", mountpoint.display()),
        None => println!("{} unmounted", mountpoint.display()),
    }
    Ok(())
}

/// Keeps `core` reachable for tests of the command layer.
pub fn is_online(core: &Core) -> bool {
    core.online.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_other_is_checked_against_fuse_conf_for_users_only() {
        let refused = check_allow_other(1000, "# user_allow_other\nmount_max = 1000\n");
        let message = refused.unwrap_err().to_string();
        assert!(message.contains("user_allow_other") && message.contains(FUSE_CONF));
        assert!(check_allow_other(1000, "user_allow_other  # for jewelfs\n").is_ok());
        assert!(check_allow_other(0, "").is_ok(), "root needs no permission");
    }
}
