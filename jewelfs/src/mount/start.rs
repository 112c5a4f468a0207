//! Starting a client, without the kernel: everything `jewelfs mount` runs around the core
//! except the FUSE session, in one function, [`start`], so the command and the tests that
//! run "the client users run" (`integration-tests/tests/core_model.rs`) share one code path.
//!
//! [`start`] opens the core on its cache, connects (waiting out a busy service), lists the
//! top folder, and starts the client's tasks: the uploader, the pre-uploader, the journal
//! syncer, the listener (with its change sources, `sources/`), and the tree saver that keeps
//! `tree.json` fresh for an offline start. When the service cannot be reached (or refuses a
//! token it accepted before) and the cache holds an earlier mount, the client starts
//! offline from that saved tree and its journal; it goes online by itself when the service
//! answers.
//!
//! What [`start`] hands back, [`Running`], owns those tasks: [`Running::finish`] is the
//! orderly end (the tree saver stopped, the journal made durable, the tree saved for the
//! next start); dropping a `Running` without it stops every task where it is, as a crash
//! would (the journal on disk is what the next start replays).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::core::api::{Api, ApiErr};
use crate::core::{Config, Core};

/// How soon a changed tree is saved at the earliest, and the longest a quiet client waits
/// between two looks (the interval doubles from the one to the other while nothing changes).
const SAVE_FAST: Duration = Duration::from_millis(200);
const SAVE_IDLE: Duration = Duration::from_secs(10);

/// Why a client could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartErr {
    #[error("opening cache {dir}: {why:#}")]
    Cache { dir: PathBuf, why: anyhow::Error },
    #[error("the server at {server} refused the token ({message}); run `jewelfs login` to link this machine")]
    Refused { server: String, message: String },
    #[error("cannot reach the server at {server} ({why}) and there is no cache in {dir} to work offline from")]
    Unreachable {
        server: String,
        dir: PathBuf,
        why: ApiErr,
    },
    #[error("the server at {server} answered unexpectedly: {why}")]
    Unexpected { server: String, why: ApiErr },
}

/// How the client started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// Connected; the top folder is listed.
    Online,
    /// From the cache of an earlier mount, the service unreachable or refusing the token
    /// (a sentence a person can read, for the command to print).
    Offline(String),
}

/// A started client: the core and the tasks that run it (see the module docs).
pub struct Running {
    core: Arc<Core>,
    /// The tree saver, stopped first by [`Running::finish`] so that it writes no more.
    saver: Option<JoinHandle<()>>,
    /// The uploader, pre-uploader, syncer and listener.
    tasks: Vec<JoinHandle<()>>,
    pub started: Started,
}

impl Running {
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The orderly end: stops the tree saver, makes the journal durable and saves the tree
    /// for the next (maybe offline) start. Returns how many changes are left to upload (they
    /// stay in the journal). The other tasks stop when `self` is dropped, here.
    pub async fn finish(mut self) -> usize {
        if let Some(saver) = self.saver.take() {
            saver.abort();
            let _ = saver.await; // stopped: it saves no more
        }
        let _ = self.core.journal.sync();
        if let Err(e) = self.core.save_snapshot() {
            eprintln!("jewelfs: could not save the tree for offline use: {e}");
        }
        self.core.journal.pending()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in self.saver.iter().chain(&self.tasks) {
            t.abort();
        }
    }
}

/// Starts a client on `cfg.cache_dir` talking to the service through `api` (see the module
/// docs). Must run inside a multi-threaded Tokio runtime; the tasks run there.
pub async fn start(cfg: Config, api: Arc<dyn Api>) -> Result<Running, StartErr> {
    let cache_dir = cfg.cache_dir.clone();
    let server = cfg.server.clone();
    let had_cache = cache_dir.join("state.json").exists();
    let core = Core::open(cfg, api.clone()).map_err(|why| StartErr::Cache {
        dir: cache_dir.clone(),
        why,
    })?;
    let offline = |core: &Core, why: String| {
        if let Err(err) = core.load_snapshot() {
            eprintln!(
                "jewelfs: the saved tree in {} is unreadable ({err}); starting empty",
                cache_dir.display()
            );
        }
        Started::Offline(why)
    };
    let started = match connect_patiently(&core).await {
        Ok(_) => {
            if let Ok(root) = api.get_node(jewel_wire::ROOT_ID).await {
                core.tree.put(root);
            }
            // The top folder is listed up front: `ls` is instant and new files can be
            // created there even if the service goes away before anyone looked.
            let _ = core.ensure_listing(jewel_wire::ROOT_ID).await;
            let _ = std::fs::write(
                cache_dir.join("state.json"),
                format!("{{\"server\":{server:?}}}\n"),
            );
            Started::Online
        }
        Err(ApiErr::Api(e)) if e.code == jewel_wire::ErrorCode::Unauthorized && had_cache => {
            // Unlinked, say, with changes still journaled: keep them and the cached files
            // at hand; they upload once the machine is linked again (`jewelfs login`).
            offline(
                &core,
                format!(
                    "the server at {server} refused this machine's token ({}); mounting offline: run `jewelfs login` to link it again",
                    e.message
                ),
            )
        }
        Err(ApiErr::Api(e)) if e.code == jewel_wire::ErrorCode::Unauthorized => {
            return Err(StartErr::Refused {
                server,
                message: e.message,
            })
        }
        Err(why) if why.is_transient() => {
            if !had_cache {
                return Err(StartErr::Unreachable {
                    server,
                    dir: cache_dir,
                    why,
                });
            }
            offline(
                &core,
                format!("server {server} unreachable ({why}); mounting offline, changes will upload when it is back"),
            )
        }
        Err(why) => return Err(StartErr::Unexpected { server, why }),
    };

    // Each task's log lines name the device (a process may run many clients: the bench).
    let span = tracing::info_span!("client", device = %core.cfg.device_name);
    let tasks = vec![
        tokio::spawn(core.clone().run_uploader().instrument(span.clone())),
        tokio::spawn(core.clone().run_listener().instrument(span.clone())),
        tokio::spawn(core.clone().run_syncer().instrument(span.clone())),
        tokio::spawn(core.clone().run_preuploader().instrument(span.clone())),
    ];
    let saver = Some(tokio::spawn(save_tree(core.clone()).instrument(span)));
    Ok(Running {
        core,
        saver,
        tasks,
        started,
    })
}

/// Connects, waiting out a busy service (throttled, 503, an answer that is not the
/// service's JSON) for as long as it takes; an unreachable one or a refusal returns at once
/// (the caller starts offline from the cache, or says why it cannot).
async fn connect_patiently(core: &Core) -> Result<jewel_wire::Me, ApiErr> {
    let mut wait = Duration::from_millis(200);
    loop {
        match core.connect().await {
            Err(e) if e.is_transient() && !e.is_offline() => {
                eprintln!("jewelfs: the server is busy ({e}); trying again");
                tokio::time::sleep(wait.max(e.retry_after().unwrap_or_default())).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            other => return other,
        }
    }
}

/// Runs until aborted: saves the tree for offline starts once it changed (a local change is
/// noticed at once, another device's within [`SAVE_IDLE`] when all was quiet; at most a
/// tenth of the time: a huge tree less often; the journal keeps local changes durable on its
/// own). Looks every [`SAVE_FAST`] while things change, backing off to [`SAVE_IDLE`] when
/// nothing has.
///
/// The save runs in place (not on a blocking thread of its own), so that once this task is
/// aborted and awaited no save of it is still writing `tree.json` ([`Running::finish`]
/// saves last).
async fn save_tree(core: Arc<Core>) {
    let mut interval = SAVE_FAST;
    let mut saved = u64::MAX; // saved once soon after start, for an offline start later
    let mut next_save = Instant::now();
    loop {
        let journaled = core.journal.changed.notified();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = journaled => {}
        }
        let generation = core.tree.generation();
        // Uploaded journal entries wait for a saved tree (the checkpoint, see `journal.rs`).
        let waiting = !core.journal.uploaded().is_empty();
        if (generation != saved || waiting) && Instant::now() >= next_save {
            let started = Instant::now();
            if let Err(e) = tokio::task::block_in_place(|| core.save_snapshot()) {
                tracing::debug!("could not save the tree: {e}");
            }
            saved = generation;
            next_save = Instant::now() + (started.elapsed() * 10).max(Duration::from_secs(1));
        }
        interval = if generation != saved {
            SAVE_FAST
        } else {
            (interval * 2).min(SAVE_IDLE)
        };
    }
}
