//! The local block folder: `ROOT/<user>/<first two hex digits>/<hash>`, with HMAC-signed URLs.
//!
//! A URL is signed as `url_key.rs` says, keyed by a random secret kept in `ROOT/.key`
//! (created on first open, readable by the owner only). Writes are verified against the hash and land atomically (temporary file, fsync,
//! rename), so a block on disk is always whole and always matches its name. Folders are
//! 0700 and block files 0600 (the temporary file's mode, kept by the rename): other local
//! users read nothing.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;
use jewel_wire::is_block_hash;

use super::{sha256_hex, BlobError, BlobResult, BlobStore, StoredBlock};
use crate::store::UserId;

use super::url_key::UrlKey;
pub use super::url_key::{BlobOp, SignedUrl};

pub struct LocalBlobStore {
    root: PathBuf,
    key: UrlKey,
}

impl LocalBlobStore {
    pub fn open(root: &Path) -> BlobResult<LocalBlobStore> {
        crate::service::private_dir(root).map_err(backend)?;
        let key_path = root.join(".key");
        let key = match std::fs::read(&key_path) {
            Ok(key) if key.len() >= 32 => key,
            _ => {
                use rand::RngCore;
                let mut key = vec![0u8; 32];
                rand::thread_rng().fill_bytes(&mut key);
                write_private(&key_path, &key).map_err(backend)?;
                key
            }
        };
        Ok(LocalBlobStore {
            root: root.to_path_buf(),
            key: UrlKey::new(key),
        })
    }

    /// A relative URL for `op` on one block (see [`UrlKey::sign`]).
    pub fn sign(&self, op: BlobOp, user: &str, hash: &str) -> String {
        self.key.sign(op, user, hash)
    }

    /// Checks a URL's signature and expiry (see [`UrlKey::verify`]).
    pub fn verify(&self, url: &SignedUrl<'_>) -> BlobResult<()> {
        self.key.verify(url)
    }

    /// The key this folder's URLs are signed with.
    pub fn url_key(&self) -> &UrlKey {
        &self.key
    }

    fn path(&self, user: &str, hash: &str) -> BlobResult<PathBuf> {
        if !is_block_hash(hash) {
            return Err(BlobError::BadHash(hash.to_string()));
        }
        if user.is_empty()
            || !user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(BlobError::NotFound);
        }
        Ok(self.root.join(user).join(&hash[..2]).join(hash))
    }
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn remove_user(&self, user: &UserId) -> BlobResult<u64> {
        if user.is_empty()
            || !user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Ok(0);
        }
        let dir = self.root.join(user);
        let mut n = 0;
        if let Ok(prefixes) = std::fs::read_dir(&dir) {
            for p in prefixes.flatten() {
                n += std::fs::read_dir(p.path()).map(|d| d.count()).unwrap_or(0) as u64;
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(BlobError::Backend(format!("{}: {e}", dir.display()))),
        }
    }

    async fn missing(&self, user: &UserId, hashes: &[String]) -> BlobResult<Vec<String>> {
        let mut missing = Vec::new();
        for hash in hashes {
            if !self.path(user, hash)?.exists() {
                missing.push(hash.clone());
            }
        }
        Ok(missing)
    }

    async fn upload_url(&self, user: &UserId, hash: &str) -> BlobResult<String> {
        self.path(user, hash)?;
        Ok(self.sign(BlobOp::Put, user, hash))
    }

    async fn download_url(&self, user: &UserId, hash: &str) -> BlobResult<String> {
        self.path(user, hash)?;
        Ok(self.sign(BlobOp::Get, user, hash))
    }

    async fn put(&self, user: &UserId, hash: &str, bytes: Bytes) -> BlobResult<()> {
        let path = self.path(user, hash)?;
        let hash = hash.to_string();
        tokio::task::spawn_blocking(move || {
            if sha256_hex(&bytes) != hash {
                return Err(BlobError::HashMismatch(hash));
            }
            if path.exists() {
                return Ok(());
            }
            let dir = path.parent().expect("block paths have a parent");
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(backend)?;
            let mut tmp = tempfile_in(dir)?;
            tmp.write_all(&bytes).map_err(backend)?;
            tmp.as_file().sync_data().map_err(backend)?;
            tmp.persist(&path).map_err(|e| backend(e.error))?;
            Ok(())
        })
        .await
        .map_err(|e| BlobError::Backend(e.to_string()))?
    }

    async fn get(&self, user: &UserId, hash: &str) -> BlobResult<Bytes> {
        let path = self.path(user, hash)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Bytes::from(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::NotFound),
            Err(e) => Err(backend(e)),
        }
    }

    async fn delete(&self, user: &UserId, hash: &str) -> BlobResult<()> {
        let path = self.path(user, hash)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    async fn list(&self, user: &UserId) -> BlobResult<Vec<StoredBlock>> {
        if self.path(user, &"0".repeat(64)).is_err() {
            return Ok(Vec::new());
        }
        let dir = self.root.join(user.as_str());
        tokio::task::spawn_blocking(move || list_blocks(&dir))
            .await
            .map_err(|e| BlobError::Backend(e.to_string()))?
    }
}

/// The blocks under one user's folder (`<xx>/<hash>`); temporary upload files are skipped.
fn list_blocks(dir: &Path) -> BlobResult<Vec<StoredBlock>> {
    let mut out = Vec::new();
    let shards = match std::fs::read_dir(dir) {
        Ok(shards) => shards,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(backend(e)),
    };
    for shard in shards {
        let shard = shard.map_err(backend)?;
        if !shard.file_type().map_err(backend)?.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(shard.path()).map_err(backend)? {
            let file = file.map_err(backend)?;
            let name = file.file_name().to_string_lossy().to_string();
            if !is_block_hash(&name) {
                continue;
            }
            let modified = file
                .metadata()
                .and_then(|m| m.modified())
                .map_err(backend)?;
            let stored_at_ns = modified
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64);
            out.push(StoredBlock {
                hash: name,
                stored_at_ns,
            });
        }
    }
    Ok(out)
}

fn tempfile_in(dir: &Path) -> BlobResult<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(".upload-")
        .tempfile_in(dir)
        .map_err(backend)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn backend(e: impl std::fmt::Display) -> BlobError {
    BlobError::Backend(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::url_key::unix_now;
    use super::*;

    #[test]
    fn signatures_cover_every_part() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(dir.path()).unwrap();
        let hash = sha256_hex(b"x");
        let exp = unix_now() + 60;
        let sig = store.key.signature(BlobOp::Get, "u1", &hash, exp);
        let ok = SignedUrl {
            op: BlobOp::Get,
            user: "u1",
            hash: &hash,
            exp,
            sig: &sig,
        };
        assert!(store.verify(&ok).is_ok());
        assert!(store
            .verify(&SignedUrl {
                op: BlobOp::Put,
                ..ok
            })
            .is_err());
        assert!(store.verify(&SignedUrl { user: "u2", ..ok }).is_err());
        assert!(store.verify(&SignedUrl { exp: exp + 1, ..ok }).is_err());
        let other = sha256_hex(b"y");
        assert!(store.verify(&SignedUrl { hash: &other, ..ok }).is_err());
        let expired_exp = unix_now() - 1;
        let expired_sig = store.key.signature(BlobOp::Get, "u1", &hash, expired_exp);
        let expired = SignedUrl {
            exp: expired_exp,
            sig: &expired_sig,
            ..ok
        };
        assert!(matches!(
            store.verify(&expired),
            Err(BlobError::BadSignature)
        ));
    }

    #[test]
    fn the_key_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalBlobStore::open(dir.path()).unwrap();
        let b = LocalBlobStore::open(dir.path()).unwrap();
        assert_eq!(a.key, b.key);
    }

    crate::blob_store_conformance!(async {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(dir.path()).unwrap();
        (store, dir)
    });
}
