//! `jewelfs`: the command line. Parsing only; the work is in the library.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "jewelfs",
    version,
    about = "JewelFS: your files on every machine (a FUSE drive synced through a JewelFS server)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Link this machine to your account: shows a code to approve in the web portal, then
    /// keeps this machine's own token in ~/.config/jewel/config.toml (readable by you only).
    Login {
        /// Server base URL, e.g. http://myserver:7070 (default: JEWEL_SERVER, then the
        /// config file's).
        server: Option<String>,
        /// This machine's name in your devices list; default the host name.
        #[arg(long)]
        name: Option<String>,
    },
    /// List your machines (name, own token or the account's, last seen, when linked).
    Devices {
        #[command(subcommand)]
        cmd: Option<DevicesCmd>,
        #[arg(long)]
        json: bool,
    },
    /// Mount the drive at MOUNTPOINT (runs in the foreground unless --daemon).
    Mount {
        mountpoint: PathBuf,
        /// Server base URL, e.g. http://127.0.0.1:8080.
        #[arg(long, env = "JEWEL_SERVER")]
        server: Option<String>,
        /// Access token; better `jewelfs login` (kept in the config file): a command line is
        /// visible to every local user.
        #[arg(long, env = "JEWEL_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Cache folder (blocks, journal); default ~/.cache/jewel/<server+user>.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// This machine's name (in conflict copy names); default the host name.
        #[arg(long)]
        device: Option<String>,
        /// Block cache size, e.g. 10G, 512M.
        #[arg(long)]
        cache_size: Option<String>,
        /// Detach once the mount is ready.
        #[arg(long)]
        daemon: bool,
        /// Let other local users and root reach the drive, with the stored permission bits
        /// enforced (every file belongs to you); needs `user_allow_other` in /etc/fuse.conf
        /// unless you are root. Also `allow_other = true` in the config file.
        #[arg(long)]
        allow_other: bool,
        /// Let inotify watchers (file managers, editors, build tools) hear other machines'
        /// changes: each is replayed through the mount. Off by default: a client killed
        /// while a replay waits leaves the mount hung (docs/SEMANTICS.md). Also
        /// `inotify_replay = true` in the config file.
        #[arg(long)]
        inotify_replay: bool,
    },
    /// Wait for pending uploads, then unmount.
    Unmount {
        mountpoint: PathBuf,
        /// Longest wait for uploads, in seconds.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Show online/offline, pending uploads, cache use, last change seen, conflicts.
    Status {
        mountpoint: PathBuf,
        #[arg(long)]
        json: bool,
        /// Print a one-line summary each time it changes, until the mount ends (waits for
        /// the mount to start first).
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// List the earlier contents the server keeps of a file in a mounted drive.
    Versions {
        file: PathBuf,
        /// Access token (default as for mount: JEWEL_TOKEN, then the config file).
        #[arg(long, env = "JEWEL_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Mount the drive at every login (a systemd user unit), or stop doing so.
    Service {
        #[command(subcommand)]
        cmd: ServiceCmd,
    },
    /// Make an earlier content of a file its newest again (what it replaces is kept too).
    RestoreVersion {
        file: PathBuf,
        /// A version number from `jewelfs versions FILE`.
        version: u64,
        /// Access token (default as for mount: JEWEL_TOKEN, then the config file).
        #[arg(long, env = "JEWEL_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Subcommand)]
enum DevicesCmd {
    /// Unlink a machine (by id or name): its token stops working at once.
    Unlink { device: String },
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// Write ~/.config/systemd/user/jewelfs.service (mounts at login, unmounts cleanly at
    /// logout after pending uploads; server and token from ~/.config/jewel/config.toml),
    /// then enable and start it.
    Install {
        /// Where to mount; default ~/Jewel.
        #[arg(long)]
        mountpoint: Option<PathBuf>,
        /// Only write the unit; do not enable or start it.
        #[arg(long)]
        no_start: bool,
    },
    /// Stop the unit (after pending uploads), disable it and remove it.
    Uninstall,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JEWEL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not into a log file or the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Login { server, name } => jewelfs::login::login(server, name),
        Cmd::Devices { cmd: None, json } => jewelfs::devices::list(json),
        Cmd::Devices {
            cmd: Some(DevicesCmd::Unlink { device }),
            ..
        } => jewelfs::devices::unlink(&device),
        Cmd::Mount {
            mountpoint,
            server,
            token,
            cache_dir,
            device,
            cache_size,
            daemon,
            allow_other,
            inotify_replay,
        } => jewelfs::mount::mount(jewelfs::mount::MountArgs {
            mountpoint,
            server,
            token,
            cache_dir,
            device,
            cache_size,
            daemon,
            allow_other,
            inotify_replay,
        }),
        Cmd::Unmount { mountpoint, wait } => {
            jewelfs::mount::unmount(&mountpoint, Duration::from_secs(wait))
        }
        Cmd::Status {
            mountpoint,
            json: _,
            watch: true,
        } => jewelfs::mount::watch_status(&mountpoint),
        Cmd::Status {
            mountpoint, json, ..
        } => jewelfs::mount::status(&mountpoint, json),
        Cmd::Service {
            cmd:
                ServiceCmd::Install {
                    mountpoint,
                    no_start,
                },
        } => jewelfs::service::install(
            &mountpoint.unwrap_or_else(jewelfs::service::default_mountpoint),
            !no_start,
        )
        .map_err(Into::into),
        Cmd::Service {
            cmd: ServiceCmd::Uninstall,
        } => jewelfs::service::uninstall().map_err(Into::into),
        Cmd::Versions { file, token, json } => jewelfs::versions::list(&file, token, json),
        Cmd::RestoreVersion {
            file,
            version,
            token,
        } => jewelfs::versions::restore(&file, version, token),
    };
    if let Err(e) = result {
        eprintln!("jewelfs: {e:#}");
        std::process::exit(1);
    }
}
