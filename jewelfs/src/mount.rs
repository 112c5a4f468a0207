//! The commands: `mount`, `unmount`, `status`.
//!
//! A running mount publishes its [`Status`] as JSON in a small file, refreshed a few times a
//! second, at a path derived from the mountpoint (`$XDG_RUNTIME_DIR/jewelfs/` or
//! `/tmp/jewelfs-<uid>/`, named by a hash of the absolute mountpoint). `status` reads it;
//! `unmount` watches its pending count drain, then sends the mount SIGTERM, on which the
//! mount unmounts itself cleanly (as on SIGINT). A mount killed hard leaves the file behind;
//! its `pid` tells whether it is still alive.
//!
//! Settings come from, in order: the command line, `JEWEL_SERVER` / `JEWEL_TOKEN`, then
//! `~/.config/jewel/config.toml` (`server`, `token`, `device`, `cache_dir`, `cache_size`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sha2::Digest;

use crate::core::api::{Api, ApiErr, HttpApi};
use crate::core::{Config, Core, Inval, Status};

#[derive(Debug, Clone, Default)]
pub struct MountArgs {
    pub mountpoint: PathBuf,
    pub server: Option<String>,
    pub token: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub device: Option<String>,
    pub cache_size: Option<String>,
    pub daemon: bool,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct FileConfig {
    server: Option<String>,
    pub(crate) token: Option<String>,
    device: Option<String>,
    cache_dir: Option<PathBuf>,
    cache_size: Option<String>,
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
        Ok(text) => toml::from_str(&text).with_context(|| format!("reading {}", path.display())),
        Err(_) => Ok(FileConfig::default()),
    }
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

/// Where a mount at `mountpoint` publishes its status.
pub fn status_path(mountpoint: &Path) -> PathBuf {
    let abs = absolute(mountpoint);
    let hash = hex::encode(&sha2::Sha256::digest(abs.as_os_str().as_encoded_bytes())[..8]);
    let base = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("jewelfs"),
        None => std::env::temp_dir().join(format!("jewelfs-{}", unsafe { libc::getuid() })),
    };
    base.join(format!("{hash}.json"))
}

fn is_mounted(mountpoint: &Path) -> bool {
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

pub fn read_status(mountpoint: &Path) -> Option<Status> {
    let text = std::fs::read(status_path(mountpoint)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn write_status(path: &Path, status: &Status) {
    let tmp = path.with_extension("tmp");
    if let Ok(mut f) = std::fs::File::create(&tmp) {
        let _ = f.write_all(&serde_json::to_vec_pretty(status).unwrap_or_default());
        let _ = std::fs::rename(&tmp, path);
    }
}

/// `jewelfs mount`.
pub fn mount(args: MountArgs) -> anyhow::Result<()> {
    let file = read_config()?;
    let server = args
        .server
        .clone()
        .or(file.server)
        .context("no server: pass --server URL, set JEWEL_SERVER, or put server = \"...\" in ~/.config/jewel/config.toml")?;
    let token = args
        .token
        .clone()
        .or(file.token)
        .context("no token: pass --token, set JEWEL_TOKEN, or put token = \"...\" in ~/.config/jewel/config.toml")?;
    let device = args.device.clone().or(file.device).unwrap_or_else(hostname);
    let cache_size = match args.cache_size.clone().or(file.cache_size) {
        Some(s) => parse_size(&s)?,
        None => 10 << 30,
    };
    let cache_dir = args
        .cache_dir
        .clone()
        .or(file.cache_dir)
        .unwrap_or_else(|| {
            let key = hex::encode(&sha2::Sha256::digest(format!("{server}\n{token}"))[..6]);
            home().join(".cache").join("jewel").join(key)
        });
    let mountpoint = absolute(&args.mountpoint);

    // Checks a person can act on, before anything starts.
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
    let api: Arc<dyn Api> = Arc::new(HttpApi::new(&server, &token)?);
    let mut cfg = Config::new(cache_dir.clone(), device);
    cfg.cache_size = cache_size;
    cfg.server = server.clone();
    let had_cache = cache_dir.join("state.json").exists();
    let core = Core::open(cfg, api.clone())
        .with_context(|| format!("opening cache {}", cache_dir.display()))?;

    match rt.block_on(connect_patiently(&core)) {
        Ok(_) => {
            if let Ok(root) = rt.block_on(api.get_node(jewel_wire::ROOT_ID)) {
                core.tree.put(root);
            }
            // The top folder is listed up front: `ls` is instant and new files can be
            // created there even if the service goes away before anyone looked.
            let _ = rt.block_on(core.ensure_listing(jewel_wire::ROOT_ID));
            let _ = std::fs::write(
                cache_dir.join("state.json"),
                format!("{{\"server\":{:?}}}\n", server),
            );
        }
        Err(ApiErr::Api(e)) if e.code == jewel_wire::ErrorCode::Unauthorized => {
            bail!(
                "the server at {server} refused the token ({}); check --token / JEWEL_TOKEN",
                e.message
            )
        }
        Err(e) if e.is_transient() => {
            if !had_cache {
                bail!("cannot reach the server at {server} ({e}) and there is no cache in {} to work offline from", cache_dir.display());
            }
            if let Err(err) = core.load_snapshot() {
                eprintln!(
                    "jewelfs: the saved tree in {} is unreadable ({err}); starting empty",
                    cache_dir.display()
                );
            }
            eprintln!("jewelfs: server {server} unreachable ({e}); mounting offline, changes will upload when it is back");
        }
        Err(e) => bail!("the server at {server} answered unexpectedly: {e}"),
    }

    rt.spawn(core.clone().run_uploader());
    rt.spawn(core.clone().run_listener());
    rt.spawn(core.clone().run_syncer());
    rt.spawn(core.clone().run_preuploader());

    let fs = crate::fuse::JewelFs::new(core.clone(), rt.handle().clone());
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("jewelfs".into()),
        fuser::MountOption::Subtype("jewelfs".into()),
        fuser::MountOption::NoAtime,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    config.n_threads = Some(4);
    let mut session = fuser::Session::new(fs, &mountpoint, &config).with_context(|| {
        format!(
            "mounting {} (is /dev/fuse usable and fusermount3 installed?)",
            mountpoint.display()
        )
    })?;

    // Kernel invalidations: their own thread, never inside a callback.
    let notifier = session.notifier();
    let (tx, rx) = std::sync::mpsc::channel::<Inval>();
    core.set_invalidator(tx);
    std::thread::Builder::new()
        .name("jewelfs-notify".into())
        .spawn(move || {
            for what in rx {
                let r = match &what {
                    Inval::Entry { parent, name } => {
                        notifier.inval_entry(fuser::INodeNo(*parent), name.as_ref())
                    }
                    Inval::Inode(id) => notifier.inval_inode(fuser::INodeNo(*id), 0, 0),
                    Inval::Delete {
                        parent,
                        child,
                        name,
                    } => notifier
                        .delete(
                            fuser::INodeNo(*parent),
                            fuser::INodeNo(*child),
                            name.as_ref(),
                        )
                        .or_else(|_| notifier.inval_entry(fuser::INodeNo(*parent), name.as_ref())),
                };
                if let Err(e) = r {
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        tracing::debug!(?what, "kernel invalidation failed: {e}");
                    }
                }
            }
        })?;

    // SIGINT / SIGTERM: unmount cleanly; the session loop then returns.
    let mut unmounter = session.unmount_callable();
    let mp = mountpoint.clone();
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("signal received: unmounting {}", mp.display());
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

    // Status publisher.
    let spath = status_path(&mountpoint);
    if let Some(dir) = spath.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let base = Status {
        server: server.clone(),
        mountpoint: mountpoint.display().to_string(),
        cache_dir: cache_dir.display().to_string(),
        pid: std::process::id(),
        ready: true,
        ..Default::default()
    };
    {
        let core = core.clone();
        let spath = spath.clone();
        rt.spawn(async move {
            let mut tick = 0u64;
            let mut saved = u64::MAX;
            let mut next_save = std::time::Instant::now();
            loop {
                tick += 1;
                // The tree is saved for offline starts (after a crash too) about a second
                // after it changed, but at most a tenth of the time: a huge tree less often.
                let generation = core.tree.generation();
                if tick.is_multiple_of(5)
                    && generation != saved
                    && std::time::Instant::now() >= next_save
                {
                    let started = std::time::Instant::now();
                    let c = core.clone();
                    let _ = tokio::task::spawn_blocking(move || c.save_snapshot()).await;
                    saved = generation;
                    next_save = std::time::Instant::now()
                        + (started.elapsed() * 10).max(Duration::from_secs(1));
                }
                let mut s = core.status();
                s.server = base.server.clone();
                s.mountpoint = base.mountpoint.clone();
                s.cache_dir = base.cache_dir.clone();
                s.pid = base.pid;
                s.ready = true;
                let path = spath.clone();
                let _ = tokio::task::spawn_blocking(move || write_status(&path, &s)).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    eprintln!("jewelfs: {} mounted ({})", mountpoint.display(), server);

    let result = session.run();
    let _ = core.journal.sync();
    if let Err(e) = core.save_snapshot() {
        eprintln!("jewelfs: could not save the tree for offline use: {e}");
    }
    let left = core.journal.pending();
    let _ = std::fs::remove_file(&spath);
    if left > 0 {
        eprintln!("jewelfs: unmounted with {left} change(s) still to upload; they upload at the next mount");
    } else {
        eprintln!("jewelfs: unmounted {}", mountpoint.display());
    }
    drop(core);
    rt.shutdown_timeout(Duration::from_millis(500));
    result.context("the FUSE session ended with an error")
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
        cmd.arg("--token").arg(t);
    }
    cmd.arg("--cache-dir").arg(cache_dir);
    if let Some(d) = &args.device {
        cmd.arg("--device").arg(d);
    }
    if let Some(c) = &args.cache_size {
        cmd.arg("--cache-size").arg(c);
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
    let Some(s) = read_status(mountpoint).filter(|s| pid_alive(s.pid)) else {
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
    if let Some(e) = &s.last_error {
        println!("last error: {e}");
    }
    Ok(())
}

/// `jewelfs unmount`: waits for uploads (showing progress), then unmounts.
pub fn unmount(mountpoint: &Path, wait: Duration) -> anyhow::Result<()> {
    let mountpoint = absolute(mountpoint);
    let status = read_status(&mountpoint).filter(|s| pid_alive(s.pid));
    let Some(first) = status else {
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
    // The mount rewrites its status every 200 ms: wait for one written after this command
    // began, so that changes saved a moment ago are counted (a stale "0 pending" would stop
    // the mount before they are uploaded, and say everything was).
    let begun = std::time::SystemTime::now();
    let mut s = first;
    let fresh_by = Instant::now() + Duration::from_secs(2);
    while Instant::now() < fresh_by {
        let written = std::fs::metadata(status_path(&mountpoint)).and_then(|m| m.modified());
        if written.is_ok_and(|t| t > begun) {
            if let Some(now) = read_status(&mountpoint) {
                s = now;
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = Instant::now();
    let mut last = usize::MAX;
    while s.pending_uploads > 0 && start.elapsed() < wait {
        if s.pending_uploads != last {
            eprintln!(
                "waiting for {} upload(s){}...",
                s.pending_uploads,
                if s.online {
                    ""
                } else {
                    " (server unreachable)"
                }
            );
            last = s.pending_uploads;
        }
        std::thread::sleep(Duration::from_millis(100));
        match read_status(&mountpoint) {
            Some(n) => s = n,
            None => break,
        }
    }
    let pending = s.pending_uploads;
    unsafe {
        libc::kill(s.pid as i32, libc::SIGTERM);
    }
    let t = Instant::now();
    while (is_mounted(&mountpoint) || pid_alive(s.pid)) && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if is_mounted(&mountpoint) {
        bail!(
            "{} is still mounted (files open?); close them and try again",
            mountpoint.display()
        );
    }
    if pending > 0 {
        eprintln!(
            "{} unmounted; {pending} change(s) could not be uploaded yet and stay in the journal:",
            mountpoint.display()
        );
        for p in &s.pending {
            eprintln!("  - {p}");
        }
        eprintln!("they upload at the next mount");
    } else {
        println!("{} unmounted; everything uploaded", mountpoint.display());
    }
    Ok(())
}

/// Keeps `core` reachable for tests of the command layer.
pub fn is_online(core: &Core) -> bool {
    core.online.load(Ordering::Relaxed)
}

/// Connects, waiting out a busy service (throttled, 503, an answer that is not the
/// service's JSON) for as long as it takes; an unreachable one or a refusal returns at once
/// (the caller mounts offline from the cache, or says why it cannot).
async fn connect_patiently(core: &Core) -> Result<jewel_wire::Me, ApiErr> {
    let mut wait = std::time::Duration::from_millis(200);
    loop {
        match core.connect().await {
            Err(e) if e.is_transient() && !e.is_offline() => {
                eprintln!("jewelfs: the server is busy ({e}); trying again");
                tokio::time::sleep(wait.max(e.retry_after().unwrap_or_default())).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(10));
            }
            other => return other,
        }
    }
}
