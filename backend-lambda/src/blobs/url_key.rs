//! Signed block URLs served by this router: `/blob/<user>/<hash>?exp=<unix seconds>&sig=<hex
//! HMAC-SHA256>` over the operation (GET or PUT), the user, the hash and the expiry. Changing
//! any part, or using a GET URL to PUT, breaks the signature; an expired URL is refused even
//! with a valid signature.
//!
//! Two owners hold such a key: the local block folder (`local.rs`, its `.key` file), whose
//! every block is served this way, and in AWS mode the table (`aws/dynamo/url_key.rs`), for
//! the small blocks it keeps, which S3 does not hold.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{BlobError, BlobResult};

/// How long a block URL stays valid: long enough for a 4 MiB block on a slow link.
const URL_LIFETIME: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOp {
    Get,
    Put,
}

impl BlobOp {
    fn as_str(self) -> &'static str {
        match self {
            BlobOp::Get => "GET",
            BlobOp::Put => "PUT",
        }
    }
}

/// The parts of a block URL that the signature covers.
pub struct SignedUrl<'a> {
    pub op: BlobOp,
    pub user: &'a str,
    pub hash: &'a str,
    pub exp: u64,
    pub sig: &'a str,
}

/// The secret block URLs are signed with.
#[derive(Clone, PartialEq, Eq)]
pub struct UrlKey(Vec<u8>);

impl std::fmt::Debug for UrlKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlKey(..)")
    }
}

impl UrlKey {
    pub fn new(key: Vec<u8>) -> UrlKey {
        UrlKey(key)
    }

    fn mac(&self, op: BlobOp, user: &str, hash: &str, exp: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length works");
        mac.update(format!("{}\n{user}\n{hash}\n{exp}", op.as_str()).as_bytes());
        mac
    }

    /// The signature of `op` on one block until `exp`, in hex.
    pub(crate) fn signature(&self, op: BlobOp, user: &str, hash: &str, exp: u64) -> String {
        hex::encode(self.mac(op, user, hash, exp).finalize().into_bytes())
    }

    /// A relative URL for `op` on one block, valid for [`URL_LIFETIME`].
    pub fn sign(&self, op: BlobOp, user: &str, hash: &str) -> String {
        let exp = unix_now() + URL_LIFETIME.as_secs();
        let sig = self.signature(op, user, hash, exp);
        format!("/blob/{user}/{hash}?exp={exp}&sig={sig}")
    }

    /// Checks a URL's signature (in constant time) and expiry.
    pub fn verify(&self, url: &SignedUrl<'_>) -> BlobResult<()> {
        let given = hex::decode(url.sig).map_err(|_| BlobError::BadSignature)?;
        self.mac(url.op, url.user, url.hash, url.exp)
            .verify_slice(&given)
            .map_err(|_| BlobError::BadSignature)?;
        if url.exp < unix_now() {
            return Err(BlobError::BadSignature);
        }
        Ok(())
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
