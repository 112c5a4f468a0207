//! DynamoDB: the devices' own tokens and the machines waiting to be linked (the device-link
//! flow of `jewel_wire`'s docs), kept apart from the tree code of `dynamo.rs`.
//!
//! | item | PK | SK | attributes |
//! |---|---|---|---|
//! | device | `U#<uid>` | `DEV#<id>` | `name`, `id`, `token` (hash, linked devices only), `created`, `seen`, `rkey` (its registration key, if any) |
//! | registration key | `U#<uid>` | `RK#<key>` | `device`: the device a registration with this key made |
//! | device token | `T#<token hash>` | `T` | `uid`, `name` (the user's), `created`, `dev` (the device id) |
//! | waiting link | `LINKS` | `<code>` | `th` (token hash), `name`, `exp` (ns), `ttl` |
//!
//! A device token is a token item like the account's, with `dev`: one `GetItem` finds the
//! owner of any token; the device item is read too (a second `GetItem`), so a token whose
//! device is gone works no more even if a removal stopped half way. Unlinking deletes the
//! token item first, then the device: cut short, the device stays listed without a working
//! token and unlinking it again finishes. Approving is one transaction: the link deleted (it
//! must exist), the device and its token item put (neither may exist). Waiting links share
//! one partition, so their number is one query (capped by `create_link`'s `max_pending`);
//! expired ones are deleted when seen, and by the table's TTL.
//!
//! A registration retried with its key (`register_device_keyed`) finds the device through the
//! key item; the first registration puts the device and the key item in one transaction
//! (neither may exist), so two racing with one key make one device. Removing a device deletes
//! its key item with it; a key item whose device is gone (a removal cut short) is dropped
//! when next used.

use jewel_wire::{DeviceId, DeviceInfo};

use super::{
    dev_sk, get_n, get_s, key, n, new_id, s, token_pk, unix_secs, user_pk, Cond, DynamoStore, Item,
    StoreError, StoreResult, Tx, TxOutcome, UserId, MAX_ATTEMPTS, META,
};
use crate::aws::TTL_ATTR;
use crate::store::{PendingLink, TokenOwner, User};

fn reg_sk(reg_key: &str) -> String {
    format!("RK#{reg_key}")
}

/// The keys of the registration-key items of these device items (those registered with one).
pub(super) fn reg_keys_of(user: &str, devices: &[Item]) -> Vec<Item> {
    devices
        .iter()
        .filter_map(|d| get_s(d, "rkey").ok())
        .map(|k| key(user_pk(user), reg_sk(&k)))
        .collect()
}

fn links_pk() -> String {
    "LINKS".into()
}

fn link_from(item: &Item) -> StoreResult<PendingLink> {
    Ok(PendingLink {
        code: get_s(item, super::SK)?,
        token_hash: get_s(item, "th")?,
        name: get_s(item, "name")?,
        expires_at_ns: get_n(item, "exp")?,
    })
}

fn opt_i64(item: &Item, name: &str) -> i64 {
    get_n(item, name).unwrap_or(0)
}

/// A device item as the API lists it.
pub(super) fn device_info(item: &Item) -> StoreResult<DeviceInfo> {
    Ok(DeviceInfo {
        id: get_n(item, "id")?,
        name: get_s(item, "name")?,
        linked: item.contains_key("token"),
        created_at_ns: opt_i64(item, "created"),
        last_seen_ns: opt_i64(item, "seen"),
        this_device: false,
    })
}

/// The token items to delete with these device items (their own tokens).
pub(super) fn token_keys_of(devices: &[Item]) -> Vec<Item> {
    devices
        .iter()
        .filter_map(|d| get_s(d, "token").ok())
        .map(|t| key(token_pk(&t), "T".into()))
        .collect()
}

impl DynamoStore {
    pub(super) async fn dev_token_owner(&self, hash: &str) -> StoreResult<Option<TokenOwner>> {
        let Some(t) = self.get(token_pk(hash), "T".into()).await? else {
            return Ok(None);
        };
        let user = User {
            id: get_s(&t, "uid")?,
            name: get_s(&t, "name")?,
            created_at_ns: get_n(&t, "created")?,
        };
        let Ok(dev) = get_n::<DeviceId>(&t, "dev") else {
            return Ok(Some(TokenOwner {
                user,
                device: None,
                last_seen_ns: 0,
            }));
        };
        let Some(d) = self.get(user_pk(&user.id), dev_sk(dev)).await? else {
            return Ok(None);
        };
        Ok(Some(TokenOwner {
            user,
            device: Some(dev),
            last_seen_ns: opt_i64(&d, "seen"),
        }))
    }

    pub(super) async fn dev_create_link(
        &self,
        link: &PendingLink,
        now_ns: i64,
        max_pending: usize,
    ) -> StoreResult<()> {
        let all = self.query(links_pk(), None, None, None).await?;
        let (live, expired): (Vec<&Item>, Vec<&Item>) = all
            .iter()
            .partition(|i| get_n::<i64>(i, "exp").is_ok_and(|e| e > now_ns));
        if !expired.is_empty() {
            self.batch_write(expired.into_iter().map(Self::delete_req).collect())
                .await?;
        }
        if live.len() >= max_pending {
            return Err(StoreError::TooManyLinks(max_pending));
        }
        if self
            .get(token_pk(&link.token_hash), "T".into())
            .await?
            .is_some()
            || live
                .iter()
                .any(|i| get_s(i, "th").is_ok_and(|h| h == link.token_hash))
        {
            return Err(StoreError::TokenInUse);
        }
        let mut item = key(links_pk(), link.code.clone());
        item.insert("th".into(), s(&link.token_hash));
        item.insert("name".into(), s(&link.name));
        item.insert("exp".into(), n(link.expires_at_ns));
        let ttl = unix_secs() + 3600;
        item.insert(TTL_ATTR.into(), n(ttl));
        // A code is taken while its item lives, expired or not (the condition cannot read
        // the clock); an expired one was deleted above.
        let mut tx = Tx::default();
        tx.put(&self.table, item, Some(Cond::not_exists()));
        match self.commit(tx).await? {
            TxOutcome::Done => Ok(()),
            TxOutcome::Retry => Err(StoreError::LinkCodeTaken),
        }
    }

    pub(super) async fn dev_link(&self, code: &str, now_ns: i64) -> StoreResult<PendingLink> {
        match self.get(links_pk(), code.to_string()).await? {
            Some(item) => {
                let link = link_from(&item)?;
                if link.expires_at_ns > now_ns {
                    Ok(link)
                } else {
                    Err(StoreError::UnknownLink)
                }
            }
            None => Err(StoreError::UnknownLink),
        }
    }

    /// The device count is read, not guarded (as in `register_device`).
    pub(super) async fn dev_approve_link(
        &self,
        user: &UserId,
        code: &str,
        max_devices: usize,
        now_ns: i64,
    ) -> StoreResult<DeviceId> {
        let Some(meta) = self.get(user_pk(user), META.into()).await? else {
            return Err(StoreError::UnknownUser(user.clone()));
        };
        let user_name = get_s(&meta, "name")?;
        let created: i64 = match self.get(super::users_pk(), user_name.clone()).await? {
            Some(u) => get_n(&u, "created")?,
            None => return Err(StoreError::UnknownUser(user.clone())),
        };
        for _ in 0..MAX_ATTEMPTS {
            let link = self.dev_link(code, now_ns).await?;
            let devices = self
                .query(user_pk(user), None, Some("DEV#"), Some(max_devices.max(1)))
                .await?;
            if devices.len() >= max_devices {
                return Err(StoreError::TooManyDevices(max_devices));
            }
            let id = new_id();
            let mut tx = Tx::default();
            tx.delete(
                &self.table,
                key(links_pk(), code.to_string()),
                Some(Cond::exists()),
            );
            let mut dev = key(user_pk(user), dev_sk(id));
            dev.insert("name".into(), s(&link.name));
            dev.insert("id".into(), n(id));
            dev.insert("token".into(), s(&link.token_hash));
            dev.insert("created".into(), n(now_ns));
            dev.insert("seen".into(), n(now_ns));
            tx.put(&self.table, dev, Some(Cond::not_exists()));
            let mut t = key(token_pk(&link.token_hash), "T".into());
            t.insert("uid".into(), s(user));
            t.insert("name".into(), s(&user_name));
            t.insert("created".into(), n(created));
            t.insert("dev".into(), n(id));
            tx.put(&self.table, t, Some(Cond::not_exists()));
            if let TxOutcome::Done = self.commit(tx).await? {
                return Ok(id);
            }
            if self
                .get(token_pk(&link.token_hash), "T".into())
                .await?
                .is_some()
            {
                return Err(StoreError::TokenInUse);
            }
        }
        Err(super::too_many())
    }

    pub(super) async fn dev_remove_device(
        &self,
        user: &UserId,
        device: DeviceId,
    ) -> StoreResult<()> {
        let Some(item) = self.get(user_pk(user), dev_sk(device)).await? else {
            return Err(StoreError::UnknownDevice);
        };
        let mut deletes = token_keys_of(std::slice::from_ref(&item));
        deletes.extend(reg_keys_of(user, std::slice::from_ref(&item)));
        self.batch_write(deletes.iter().map(Self::delete_req).collect())
            .await?;
        self.batch_write(vec![Self::delete_req(&item)]).await
    }

    /// The device registered under `key`, or a new one under it (see the module's docs).
    pub(super) async fn dev_register_keyed(
        &self,
        user: &UserId,
        name: &str,
        max: usize,
        reg_key: &str,
    ) -> StoreResult<(DeviceId, bool)> {
        if self.get(user_pk(user), META.into()).await?.is_none() {
            return Err(StoreError::UnknownUser(user.clone()));
        }
        for _ in 0..MAX_ATTEMPTS {
            if let Some(k) = self.get(user_pk(user), reg_sk(reg_key)).await? {
                let id: DeviceId = get_n(&k, "device")?;
                if self.get(user_pk(user), dev_sk(id)).await?.is_some() {
                    return Ok((id, false));
                }
                // Its device is gone (a removal cut short): the key is free again.
                self.batch_write(vec![Self::delete_req(&k)]).await?;
                continue;
            }
            let devices = self
                .query(user_pk(user), None, Some("DEV#"), Some(max.max(1)))
                .await?;
            if devices.len() >= max {
                return Err(StoreError::TooManyDevices(max));
            }
            let id = new_id();
            let mut tx = Tx::default();
            let mut dev = key(user_pk(user), dev_sk(id));
            dev.insert("name".into(), s(name));
            dev.insert("id".into(), n(id));
            dev.insert("created".into(), n(crate::store::now_ns()));
            dev.insert("rkey".into(), s(reg_key));
            tx.put(&self.table, dev, Some(Cond::not_exists()));
            let mut k = key(user_pk(user), reg_sk(reg_key));
            k.insert("device".into(), n(id));
            tx.put(&self.table, k, Some(Cond::not_exists()));
            if let TxOutcome::Done = self.commit(tx).await? {
                return Ok((id, true));
            }
            // Another registration with this key won the race (or the id was taken): look
            // again.
        }
        Err(super::too_many())
    }

    pub(super) async fn dev_touch(
        &self,
        user: &UserId,
        device: DeviceId,
        now_ns: i64,
    ) -> StoreResult<()> {
        super::count("dynamodb:UpdateItem");
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(user_pk(user), dev_sk(device))))
            .update_expression("SET #seen = :now")
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#seen", "seen")
            .expression_attribute_names("#pk", super::PK)
            .expression_attribute_values(":now", n(now_ns))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(super::be(e)),
        }
    }
}
