//! `jewelfs devices` (the account's machines: name, own token or the account's, last seen,
//! when linked, and the pending uploads of this machine's running mounts) and `jewelfs
//! devices unlink ID|NAME`.
//!
//! Both use the server and token of the environment (`JEWEL_SERVER` / `JEWEL_TOKEN`), then of
//! the config file (`jewelfs login` writes it). `unlink` takes a device id or a name; a name
//! must be one device's only, so a typo or an ambiguous name unlinks nothing.

use anyhow::{bail, Context};
use jewel_wire::{DeviceInfo, DeviceList};

use crate::core::conflict::format_utc as utc;
use crate::login::{api_url, client, refusal, rt};
use crate::mount::read_config;

/// The server and token `devices` uses: the environment's, then the config file's.
fn account() -> anyhow::Result<(String, String)> {
    let config = read_config()?;
    let server = std::env::var("JEWEL_SERVER")
        .ok()
        .or(config.server)
        .context("no server: run `jewelfs login SERVER` first")?;
    let token = std::env::var("JEWEL_TOKEN")
        .ok()
        .or(config.token)
        .context("no token: run `jewelfs login SERVER` first")?;
    Ok((server.trim_end_matches('/').to_string(), token))
}

async fn list_devices(
    http: &reqwest::Client,
    server: &str,
    token: &str,
) -> anyhow::Result<Vec<DeviceInfo>> {
    let resp = http
        .get(api_url(server, "/devices"))
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach the server at {server}"))?;
    if !resp.status().is_success() {
        bail!("the server at {server} refused: {}", refusal(resp).await);
    }
    let list: DeviceList = resp.json().await.context("reading the server's answer")?;
    Ok(list.devices)
}

fn seen(ns: i64) -> String {
    if ns == 0 {
        "-".into()
    } else {
        utc(ns)
    }
}

/// `jewelfs devices`: the account's machines.
pub fn list(json: bool) -> anyhow::Result<()> {
    let (server, token) = account()?;
    let devices = rt()?.block_on(list_devices(&client()?, &server, &token))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&devices)?);
        return Ok(());
    }
    // Pending uploads are known only here, for this machine's running mounts of this server
    // (the service cannot know what a machine has not sent).
    let local = crate::status::running_statuses();
    let pending = |id| {
        local
            .iter()
            .filter(|s| s.device_id == id && s.server.trim_end_matches('/') == server)
            .map(|s| s.pending_uploads)
            .reduce(|a, b| a + b)
    };
    println!(
        "{:<18} {:<24} {:<8} {:<19} {:<19} PENDING",
        "ID", "NAME", "TOKEN", "LAST SEEN (UTC)", "LINKED (UTC)"
    );
    for d in &devices {
        let this = if d.this_device {
            "  (this machine)"
        } else {
            ""
        };
        println!(
            "{:<18} {:<24} {:<8} {:<19} {:<19} {}{this}",
            d.id,
            d.name,
            if d.linked { "own" } else { "account" },
            seen(d.last_seen_ns),
            seen(d.created_at_ns),
            pending(d.id).map_or("-".to_string(), |n| n.to_string()),
        );
    }
    Ok(())
}

/// `jewelfs devices unlink ID|NAME`.
pub fn unlink(which: &str) -> anyhow::Result<()> {
    let (server, token) = account()?;
    let http = client()?;
    rt()?.block_on(async {
        let devices = list_devices(&http, &server, &token).await?;
        let matching: Vec<&DeviceInfo> = devices
            .iter()
            .filter(|d| d.id.to_string() == which || d.name == which)
            .collect();
        let device = match matching.as_slice() {
            [one] => *one,
            [] => bail!("no device {which:?} (see `jewelfs devices`)"),
            _ => bail!(
                "several devices are named {which:?}: unlink one by its id (see `jewelfs devices`)"
            ),
        };
        let resp = http
            .delete(api_url(&server, &format!("/devices/{}", device.id)))
            .bearer_auth(&token)
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {server}"))?;
        if !resp.status().is_success() {
            bail!("the server at {server} refused: {}", refusal(resp).await);
        }
        if device.linked {
            println!(
                "Unlinked {} ({}): its token no longer works.",
                device.name, device.id
            );
        } else {
            println!(
                "Forgot {} ({}). It used the account token, which still works there: \
                 `jewel-server user token NAME` revokes that everywhere.",
                device.name, device.id
            );
        }
        Ok(())
    })
}
