//! `jewelfs versions FILE` and `jewelfs restore-version FILE VERSION`: a file's earlier
//! contents, from the terminal, for a file inside a mounted drive.
//!
//! The service keeps the content each save replaced (see the service's `MetaStore`); these
//! commands only ask it. The mount a file belongs to is the nearest folder above it with a
//! running mount's status; its server comes from that status, the token as for `mount` (the
//! command line, `JEWEL_TOKEN`, then the config file — the mount does not hand out its
//! token). The file is found by its path below the mountpoint (`/lookup`), so it must have
//! reached the service. A restore is an ordinary new commit: the mount (and every other
//! machine) hears of it like any change made elsewhere, and the content it replaces becomes
//! a version in turn.

use std::path::Path;

use anyhow::{bail, Context};
use jewel_wire::{ApiError, FileVersion, Node, NodeKind, VersionList, API_PREFIX};

use crate::core::conflict::format_utc as utc;
use crate::mount::{read_config, read_status};

/// A file inside a running mount, with what is needed to ask the service about it.
struct Target {
    server: String,
    token: String,
    /// The path below the mountpoint, starting with `/`.
    inner: String,
    shown: String,
}

/// Finds the mount holding `file` and the token to use.
fn target(file: &Path, token: Option<String>) -> anyhow::Result<Target> {
    let abs = std::path::absolute(file).with_context(|| format!("bad path {}", file.display()))?;
    let mut dir: Option<&Path> = Some(abs.as_path());
    while let Some(d) = dir {
        if let Some(status) = read_status(d).filter(|s| !s.server.is_empty()) {
            let rel = abs.strip_prefix(d).expect("an ancestor");
            if rel.as_os_str().is_empty() {
                bail!("{} is the top of the drive, not a file", file.display());
            }
            let inner = format!("/{}", rel.to_string_lossy());
            let token = token
                .or(read_config()?.token)
                .context("no token: pass --token, set JEWEL_TOKEN, or put token = \"...\" in ~/.config/jewel/config.toml")?;
            return Ok(Target {
                server: status.server.trim_end_matches('/').to_string(),
                token,
                inner,
                shown: file.display().to_string(),
            });
        }
        dir = d.parent();
    }
    bail!(
        "{} is not inside a mounted JewelFS drive (no running `jewelfs mount` above it)",
        file.display()
    )
}

/// One request to the service; an error answer becomes a message a person reads.
async fn call<T: serde::de::DeserializeOwned>(
    t: &Target,
    req: reqwest::RequestBuilder,
) -> anyhow::Result<T> {
    let resp = req
        .bearer_auth(&t.token)
        .send()
        .await
        .with_context(|| format!("cannot reach the server at {}", t.server))?;
    let status = resp.status();
    let body = resp.bytes().await.context("reading the server's answer")?;
    if status.is_success() {
        return serde_json::from_slice(&body).context("the server's answer is not what we expect");
    }
    match serde_json::from_slice::<ApiError>(&body) {
        Ok(e) => bail!("{} (HTTP {status})", e.message),
        Err(_) => bail!("the server answered HTTP {status}"),
    }
}

async fn lookup(http: &reqwest::Client, t: &Target) -> anyhow::Result<Node> {
    let url = format!("{}{API_PREFIX}/lookup", t.server);
    let node: Node = call(t, http.get(url).query(&[("path", t.inner.as_str())]))
        .await
        .with_context(|| format!("{}: not found on the server (not uploaded yet?)", t.shown))?;
    if node.kind != NodeKind::File {
        bail!("{} is not a file: only files have versions", t.shown);
    }
    Ok(node)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `jewelfs versions FILE [--json]`.
pub fn list(file: &Path, token: Option<String>, json: bool) -> anyhow::Result<()> {
    let t = target(file, token)?;
    let versions: Vec<FileVersion> = runtime()?.block_on(async {
        let http = reqwest::Client::new();
        let node = lookup(&http, &t).await?;
        let url = format!("{}{API_PREFIX}/nodes/{}/versions", t.server, node.id);
        // The service answers a bounded page at a time; `next` goes on to older versions.
        let mut versions = Vec::new();
        let mut before = None;
        loop {
            let mut req = http.get(&url);
            if let Some(b) = before {
                req = req.query(&[("before", b)]);
            }
            let list: VersionList = call(&t, req).await?;
            versions.extend(list.versions);
            match list.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        anyhow::Ok(versions)
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&versions)?);
        return Ok(());
    }
    if versions.is_empty() {
        println!(
            "{}: no earlier versions (kept for 30 days, up to 100 per file)",
            t.shown
        );
        return Ok(());
    }
    println!(
        "{:>8}  {:<17}  {:>12}  replaced (UTC)",
        "version", "saved (UTC)", "bytes"
    );
    for v in &versions {
        println!(
            "{:>8}  {}  {:>12}  {}",
            v.version,
            utc(v.mtime_ns),
            v.content.size,
            utc(v.replaced_at_ns)
        );
    }
    println!(
        "restore one with: jewelfs restore-version {} VERSION",
        t.shown
    );
    Ok(())
}

/// `jewelfs restore-version FILE VERSION`.
pub fn restore(file: &Path, version: u64, token: Option<String>) -> anyhow::Result<()> {
    let t = target(file, token)?;
    let node: Node = runtime()?.block_on(async {
        let http = reqwest::Client::new();
        let node = lookup(&http, &t).await?;
        let url = format!(
            "{}{API_PREFIX}/nodes/{}/versions/{version}/restore",
            t.server, node.id
        );
        call(&t, http.post(url).json(&serde_json::json!({}))).await
    })?;
    println!(
        "{}: version {version} restored ({} bytes); it shows on every machine in a moment",
        t.shown, node.size
    );
    Ok(())
}
