//! A user's machines: list them, unlink one, and link a new one with a short code.
//!
//! **Linking** (the flow of `gh auth login` and TV sign-ins, without a secret ever sent back):
//! the machine draws its own token, keeps it, and sends only its SHA-256 with `POST /links`
//! (no token needed: it has none yet). It gets a code to show its user, who approves it in the
//! portal, signed in on another machine (`POST /links/{code}/approve`). Approval stores the
//! hash on a new device; the machine, trying `GET /me` with its token, is in. So the service
//! never holds a usable token, not even while a code waits, and nothing a stranger sends to
//! `POST /links` works before a signed-in user approves its code. Codes are
//! `jewel_wire::LINK_CODE_LEN` characters of 32 (40 bits), live `Limits::link_lifetime`, and
//! at most `Limits::max_pending_links` wait at once.
//!
//! **Unlinking** deletes the device and its token in one store change, deletes its channel
//! (SQS queue), forgets it in this process's auth cache and ends its long-polls: its next
//! request is refused at once (other processes: within `AUTH_CACHE_TTL`). A device registered
//! with the account token (no token of its own) is only forgotten: the account token still
//! works on that machine; `jewel-server user token NAME` revokes that one everywhere.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use jewel_wire::{
    check_name, normalize_link_code, DeviceId, DeviceInfo, DeviceList, ErrorCode, LinkInfo,
    LinkStarted, NewLink, LINK_CODE_ALPHABET, LINK_CODE_LEN,
};

use super::auth::Caller;
use super::error::{ApiPath, AppError, AppResult, JsonBody};
use crate::service::Service;
use crate::store::{now_ns, PendingLink, StoreError};

type S = State<Arc<Service>>;

/// How many fresh codes a link request draws when the ones drawn are taken.
const CODE_TRIES: usize = 8;

pub async fn list(State(svc): S, caller: Caller) -> AppResult<Json<DeviceList>> {
    let mut devices = svc.meta.devices(&caller.user.id).await?;
    for d in &mut devices {
        d.this_device = caller.device == Some(d.id);
    }
    Ok(Json(DeviceList { devices }))
}

pub async fn unlink(
    State(svc): S,
    caller: Caller,
    ApiPath(id): ApiPath<DeviceId>,
) -> AppResult<StatusCode> {
    svc.meta.remove_device(&caller.user.id, id).await?;
    svc.auth_cache.forget_device(&caller.user, id);
    if let Err(e) = svc.bus.remove_device(&caller.user.id, id).await {
        // The device and its token are gone already; its queue is then left for
        // `user remove` or `forget-devices` (which delete every queue of the user).
        tracing::warn!("device {id} unlinked, but its channel stays: {e}");
    }
    tracing::info!(target: "jewel::devices", user = %caller.user.name, device = id, "unlinked");
    Ok(StatusCode::NO_CONTENT)
}

fn new_code() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let raw: String = (0..LINK_CODE_LEN)
        .map(|_| LINK_CODE_ALPHABET[rng.gen_range(0..LINK_CODE_ALPHABET.len())] as char)
        .collect();
    normalize_link_code(&raw).expect("drawn from the alphabet")
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub async fn start(
    State(svc): S,
    JsonBody(req): JsonBody<NewLink>,
) -> AppResult<(StatusCode, Json<LinkStarted>)> {
    check_name(&req.name)
        .map_err(|e| AppError::new(ErrorCode::InvalidName, format!("machine name: {e}")))?;
    if !is_sha256_hex(&req.token_sha256) {
        return Err(AppError::bad_request(
            "token_sha256 must be the SHA-256 of the machine's token: 64 lower-case hex digits",
        ));
    }
    let lifetime = svc.limits.link_lifetime;
    let now = now_ns();
    for _ in 0..CODE_TRIES {
        let link = PendingLink {
            code: new_code(),
            token_hash: req.token_sha256.clone(),
            name: req.name.clone(),
            expires_at_ns: now + lifetime.as_nanos() as i64,
        };
        match svc
            .meta
            .create_link(&link, now, svc.limits.max_pending_links)
            .await
        {
            Ok(()) => {
                return Ok((
                    StatusCode::CREATED,
                    Json(LinkStarted {
                        approve_path: format!("/#/link/{}", link.code),
                        code: link.code,
                        expires_in_ms: lifetime.as_millis() as u64,
                    }),
                ))
            }
            Err(StoreError::LinkCodeTaken) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::LinkCodeTaken.into())
}

/// The code in a path, in its stored form; anything that cannot be a code is simply unknown.
fn code_of(text: &str) -> Result<String, AppError> {
    normalize_link_code(text).ok_or_else(|| StoreError::UnknownLink.into())
}

pub async fn show(
    State(svc): S,
    _caller: Caller,
    ApiPath(code): ApiPath<String>,
) -> AppResult<Json<LinkInfo>> {
    let link = svc.meta.link(&code_of(&code)?, now_ns()).await?;
    Ok(Json(LinkInfo {
        code: link.code,
        name: link.name,
        expires_at_ns: link.expires_at_ns,
    }))
}

pub async fn approve(
    State(svc): S,
    caller: Caller,
    ApiPath(code): ApiPath<String>,
) -> AppResult<(StatusCode, Json<DeviceInfo>)> {
    let code = code_of(&code)?;
    let now = now_ns();
    let link = svc.meta.link(&code, now).await?;
    let id = svc
        .meta
        .approve_link(&caller.user.id, &code, svc.limits.max_devices, now)
        .await?;
    tracing::info!(target: "jewel::devices", user = %caller.user.name, device = id, "linked");
    Ok((
        StatusCode::CREATED,
        Json(DeviceInfo {
            id,
            name: link.name,
            linked: true,
            created_at_ns: now,
            last_seen_ns: now,
            this_device: false,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_drawn_from_the_alphabet_and_read_back() {
        for _ in 0..100 {
            let code = new_code();
            assert_eq!(code.len(), LINK_CODE_LEN + 1);
            assert_eq!(
                normalize_link_code(&code.to_lowercase()),
                Some(code.clone())
            );
            assert_eq!(normalize_link_code(&code.replace('-', " ")), Some(code));
        }
        for bad in [
            "",
            "ABCD-EFG",
            "ABCD-EFGHJ",
            "ABCD-EFG0",
            "ABCD-EFGI",
            "ÄBCD-EFGH",
        ] {
            assert_eq!(normalize_link_code(bad), None, "{bad}");
        }
        assert!(is_sha256_hex(&"a1".repeat(32)));
        assert!(!is_sha256_hex(&"A1".repeat(32)) && !is_sha256_hex("abc"));
    }
}
