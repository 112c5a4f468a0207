//! `jewelfs service install` / `uninstall`: `~/Jewel` mounted at every login by the user's
//! own systemd (a **user** unit, `~/.config/systemd/user/jewelfs.service`), so the drive is
//! there without anyone starting it.
//!
//! The unit runs `jewelfs mount MOUNTPOINT` in the foreground (`Type=simple`): systemd sees
//! the mount's own life, its messages go to the journal (`journalctl --user -u jewelfs`),
//! and a mount that fails is started again (`Restart=on-failure`, a few times, then systemd
//! gives up rather than loop). Stopping it — logout, `systemctl --user stop jewelfs`,
//! `uninstall` — sends SIGTERM, on which the mount waits for its pending uploads (at most
//! [`crate::mount::STOP_WAIT`], inside the unit's stop timeout) and unmounts, as `jewelfs
//! unmount` does. A mount left behind by a client that crashed is detached before a start.
//!
//! The server and token come from `~/.config/jewel/config.toml`, read by the mount at
//! start; they are never written into the unit (a unit's command line is visible to every
//! user of the machine). The unit names the `jewelfs` binary that installed it, by its
//! absolute path.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The unit's name.
pub const UNIT: &str = "jewelfs.service";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "{path} has no {what}: the unit reads the server and token from it (write \
         `server = \"http://HOST:7070\"` and `token = \"...\"` there, or run `make run` once)"
    )]
    NotConfigured { path: PathBuf, what: &'static str },
    #[error("reading {path}: {why}")]
    Config { path: PathBuf, why: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot tell where this jewelfs binary is: {0}")]
    NoBinary(std::io::Error),
    #[error("{0} is not installed (Debian package fuse3)")]
    Missing(&'static str),
}

/// What the unit runs, and where.
#[derive(Debug, Clone)]
pub struct UnitSpec {
    /// The `jewelfs` binary (absolute).
    pub jewelfs: PathBuf,
    /// `fusermount3` (absolute), to detach a mount left by a crash.
    pub fusermount: PathBuf,
    /// The mountpoint (absolute).
    pub mountpoint: PathBuf,
}

/// `$XDG_CONFIG_HOME/systemd/user/jewelfs.service` (`~/.config/...` by default).
pub fn unit_path() -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".config"));
    config.join("systemd").join("user").join(UNIT)
}

/// The default mountpoint, `~/Jewel`.
pub fn default_mountpoint() -> PathBuf {
    home().join("Jewel")
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// A word of a unit's command line: quoted, with systemd's specifiers (`%`) and variable
/// references (`$`) escaped, so any path stays one literal argument.
fn exec_word(p: &Path) -> String {
    let s = p.to_string_lossy();
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    format!("\"{escaped}\"")
}

/// The unit's text.
pub fn unit_text(spec: &UnitSpec) -> String {
    let mp = exec_word(&spec.mountpoint);
    let description = spec.mountpoint.to_string_lossy().replace('%', "%%");
    format!(
        "# Written by `jewelfs service install`; `jewelfs service uninstall` removes it.
# Mounts the JewelFS drive at login; the server and token come from
# ~/.config/jewel/config.toml. Logs: journalctl --user -u jewelfs
[Unit]
Description=JewelFS drive at {description}
# A mount that keeps failing (no server and no cache yet, say) is given up after 5 tries.
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
Type=simple
# A mount left behind by a client that crashed is detached first (\"-\": none is fine).
ExecStartPre=-{fusermount} -u -z {mp}
ExecStart={jewelfs} mount {mp}
# Stopping (logout, systemctl --user stop jewelfs) sends SIGTERM to the mount alone: it
# waits for pending uploads (at most 60 s), then unmounts.
KillMode=mixed
TimeoutStopSec=90
Restart=on-failure
RestartSec=10

[Install]
WantedBy=default.target
",
        fusermount = exec_word(&spec.fusermount),
        jewelfs = exec_word(&spec.jewelfs),
    )
}

/// Looks `name` up on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The unit for this binary and `mountpoint`.
pub fn spec_for(mountpoint: &Path) -> Result<UnitSpec, ServiceError> {
    let jewelfs = std::env::current_exe().map_err(ServiceError::NoBinary)?;
    let fusermount = which("fusermount3").ok_or(ServiceError::Missing("fusermount3"))?;
    let mountpoint = std::path::absolute(mountpoint).map_err(|source| ServiceError::Io {
        path: mountpoint.to_path_buf(),
        source,
    })?;
    Ok(UnitSpec {
        jewelfs,
        fusermount,
        mountpoint,
    })
}

/// Checks that the config file names a server and a token (the unit has no other source).
fn check_config() -> Result<(), ServiceError> {
    let path = crate::mount::config_path();
    let config = crate::mount::read_config().map_err(|e| ServiceError::Config {
        path: path.clone(),
        why: format!("{e:#}"),
    })?;
    if config.server.is_none() {
        return Err(ServiceError::NotConfigured {
            path,
            what: "server",
        });
    }
    if config.token.is_none() {
        return Err(ServiceError::NotConfigured {
            path,
            what: "token",
        });
    }
    Ok(())
}

/// `systemctl --user ARGS`; the error text when it fails or cannot run.
fn systemctl(args: &[&str]) -> Result<(), String> {
    match Command::new("systemctl").arg("--user").args(args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        Err(e) => Err(format!("cannot run systemctl: {e}")),
    }
}

/// `jewelfs service install`: writes the unit, creates the mountpoint, and (unless
/// `start` is false) enables and starts it. A user manager that cannot be reached (no login
/// session, a container) is reported, not an error: the unit is in place for the next login.
pub fn install(mountpoint: &Path, start: bool) -> Result<(), ServiceError> {
    check_config()?;
    let spec = spec_for(mountpoint)?;
    std::fs::create_dir_all(&spec.mountpoint).map_err(|source| ServiceError::Io {
        path: spec.mountpoint.clone(),
        source,
    })?;
    let path = unit_path();
    let io = |source| ServiceError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(path.parent().expect("a unit path has a folder")).map_err(io)?;
    std::fs::write(&path, unit_text(&spec)).map_err(io)?;
    println!("wrote {}", path.display());
    if !start {
        println!(
            "start it with: systemctl --user daemon-reload && systemctl --user enable --now {UNIT}"
        );
        return Ok(());
    }
    match systemctl(&["daemon-reload"]).and_then(|()| systemctl(&["enable", "--now", UNIT])) {
        Ok(()) => println!(
            "{} is mounted now and at every login (logs: journalctl --user -u jewelfs)",
            spec.mountpoint.display()
        ),
        Err(why) => println!(
            "could not start it now ({why}); it mounts {} at your next login, or run: \
             systemctl --user enable --now {UNIT}",
            spec.mountpoint.display()
        ),
    }
    Ok(())
}

/// `jewelfs service uninstall`: stops the unit (the mount uploads what is pending and
/// unmounts), disables it and removes it.
pub fn uninstall() -> Result<(), ServiceError> {
    let path = unit_path();
    if let Err(why) = systemctl(&["disable", "--now", UNIT]) {
        println!("systemctl --user disable --now {UNIT}: {why}");
    }
    match std::fs::remove_file(&path) {
        Ok(()) => println!("removed {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("{} was not installed", path.display())
        }
        Err(source) => return Err(ServiceError::Io { path, source }),
    }
    let _ = systemctl(&["daemon-reload"]);
    Ok(())
}
