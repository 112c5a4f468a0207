//! `jewelfs login [SERVER]`: link this machine with a code (`jewelfs devices` lists and
//! unlinks machines: `devices.rs`).
//!
//! It draws this machine's own token (256 random bits, as the service's), sends only
//! its SHA-256 with the machine's name (`POST /links`), and shows the code it gets and the
//! portal page that approves it. It then asks `GET /me` with the token every
//! [`POLL_EVERY`] (refused until the code is approved) until the code expires. Once in, the
//! token is written to the config file (`~/.config/jewel/config.toml`, mode 0600, written to
//! a fresh file and renamed over, other settings kept) — never printed, never on a command
//! line. A mount that was running with a refused token picks it up from there (see
//! `core/api.rs`).
//!
//! The config also gets a `cache_dir` when it has none, so the cache (and its journal of
//! pending changes) stays the same folder whatever token the machine holds: the default
//! folder is named after the server and token, and a machine linked again gets a new token.
//! When the folder of the token being replaced exists, that one is kept.
//!
//! A machine linked again (`jewelfs login` where a device token is kept already, still
//! working) unlinks its previous device with that token once the new one is saved: no device
//! is left with a working token that nobody keeps.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use jewel_wire::{ApiError, LinkStarted, Me, NewLink, API_PREFIX};
use sha2::Digest;

use crate::mount::{config_path, read_config};

/// How often a waiting login asks whether its code was approved.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

pub(crate) fn rt() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub(crate) fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()?)
}

pub(crate) fn api_url(server: &str, path: &str) -> String {
    format!("{}{API_PREFIX}{path}", server.trim_end_matches('/'))
}

/// The service's error answer as a sentence, or the status when it sent none.
pub(crate) async fn refusal(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<ApiError>(&body) {
        Ok(e) => e.message,
        Err(_) => format!("HTTP {status}"),
    }
}

/// A new device token, `jwl_` and 64 hex digits (the form the service issues).
fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("jwl_{}", hex::encode(bytes))
}

fn sha256_hex(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "this-machine".into())
}

/// `jewelfs login`: links this machine to the account of whoever approves its code.
pub fn login(server: Option<String>, name: Option<String>) -> anyhow::Result<()> {
    let config = read_config()?;
    let server = server
        .or_else(|| std::env::var("JEWEL_SERVER").ok())
        .or(config.server.clone())
        .context("no server: run `jewelfs login http://HOST:7070` (or set JEWEL_SERVER)")?;
    let server = server.trim_end_matches('/').to_string();
    let name = name.or(config.device.clone()).unwrap_or_else(hostname);
    let token = new_token();
    let http = client()?;
    let rt = rt()?;
    let started: LinkStarted = rt.block_on(async {
        let resp = http
            .post(api_url(&server, "/links"))
            .json(&NewLink {
                name: name.clone(),
                token_sha256: sha256_hex(&token),
            })
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {server}"))?;
        if !resp.status().is_success() {
            bail!("the server at {server} refused: {}", refusal(resp).await);
        }
        resp.json().await.context("reading the server's answer")
    })?;
    println!("To link this machine ({name}) to your JewelFS account, open");
    println!();
    println!("    {server}{}", started.approve_path);
    println!();
    println!(
        "signed in on any machine, and approve the code  {}  (it expires in {} minutes).",
        started.code,
        started.expires_in_ms.div_ceil(60_000)
    );
    println!("Waiting for approval...");
    let _ = std::io::stdout().flush();
    let deadline = Instant::now() + Duration::from_millis(started.expires_in_ms);
    let me: Me = rt.block_on(async {
        loop {
            let resp = http
                .get(api_url(&server, "/me"))
                .bearer_auth(&token)
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() => {
                    return r.json().await.context("reading the server's answer");
                }
                Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {}
                Ok(r) => eprintln!("jewelfs: the server answered: {}", refusal(r).await),
                Err(e) => eprintln!("jewelfs: cannot reach the server ({e}); still waiting"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "the code {} was not approved in time; run `jewelfs login` again",
                    started.code
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    })?;
    let path = config_path();
    // The folder this machine used for this server stays (its journal may hold changes);
    // one kept for another server is never shared with this one.
    let same_server = config.server.as_deref().map(|s| s.trim_end_matches('/')) == Some(&server);
    let cache_dir = match (&config.cache_dir, same_server) {
        (Some(dir), true) => dir.clone(),
        _ => cache_dir_for(
            &server,
            config.token.as_deref().filter(|_| same_server),
            &me.user,
        ),
    };
    save_login(&path, &server, &token, &cache_dir)?;
    println!(
        "Linked: this machine is now a device of {}; its token is in {} (only you can read it).",
        me.user,
        path.display()
    );
    if let Some(old) = config.token.as_deref().filter(|_| same_server) {
        if let Some(gone) = rt.block_on(unlink_own_device(&http, &server, old)) {
            println!(
                "The device this machine was before ({gone}) is unlinked: its token works no more."
            );
        }
    }
    println!("Mount your drive with `jewelfs mount ~/Jewel` (or `jewelfs service install`).");
    Ok(())
}

/// Unlinks the device whose own token `old` is (this machine's previous link), so no device
/// is left behind with a working token nobody keeps. Nothing for the account token (it names
/// no device) or a token refused already. Returns the device's id when one went.
async fn unlink_own_device(http: &reqwest::Client, server: &str, old: &str) -> Option<u64> {
    let list: jewel_wire::DeviceList = http
        .get(api_url(server, "/devices"))
        .bearer_auth(old)
        .send()
        .await
        .ok()
        .filter(|r| r.status().is_success())?
        .json()
        .await
        .ok()?;
    let own = list.devices.iter().find(|d| d.this_device && d.linked)?;
    let resp = http
        .delete(api_url(server, &format!("/devices/{}", own.id)))
        .bearer_auth(old)
        .send()
        .await
        .ok()?;
    resp.status().is_success().then_some(own.id)
}

/// The cache folder a newly linked machine keeps: the one of the token it held before, when
/// that exists (its journal may hold pending changes), else one named after server and user.
fn cache_dir_for(server: &str, old_token: Option<&str>, user: &str) -> PathBuf {
    let base = crate::mount::default_cache_base();
    if let Some(old) = old_token {
        let dir = base.join(crate::mount::cache_key(server, old));
        if dir.is_dir() {
            return dir;
        }
    }
    base.join(crate::mount::cache_key(server, &format!("user:{user}")))
}

/// Writes `server`, `token` and `cache_dir` into the config file at `path`, keeping its other
/// settings: to a new file only its owner can read, then renamed over the old one.
pub fn save_login(path: &Path, server: &str, token: &str, cache_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let mut table: toml::Table = match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?,
        Err(_) => toml::Table::new(),
    };
    table.insert("server".into(), server.into());
    table.insert("token".into(), token.into());
    table.insert(
        "cache_dir".into(),
        cache_dir.to_string_lossy().into_owned().into(),
    );
    let dir = path.parent().context("the config file has no folder")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(".config.toml.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(toml::to_string(&table)?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_is_saved_private_and_keeps_other_settings() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jewel").join("config.toml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            "server = \"http://old\"\ntoken = \"jwl_old\"\ncache_size = \"5G\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        save_login(&path, "http://new", "jwl_new", Path::new("/c")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(table["server"].as_str(), Some("http://new"));
        assert_eq!(table["token"].as_str(), Some("jwl_new"));
        assert_eq!(table["cache_size"].as_str(), Some("5G"));
        assert_eq!(table["cache_dir"].as_str(), Some("/c"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn tokens_are_drawn_fresh_in_the_services_form() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("jwl_") && a.len() == 68);
        assert_eq!(sha256_hex("abc").len(), 64);
    }
}
