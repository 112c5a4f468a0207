//! The one `BlobStore` suite every engine passes (local folder, S3).
//!
//! Each case is a public async function over `&dyn BlobStore`; the
//! [`blob_store_conformance!`](crate::blob_store_conformance) macro expands to one
//! `#[tokio::test]` per case, given an async expression that yields `(store, guard)` — the
//! guard keeps whatever the store needs alive (a temp folder, an emulator) until the test ends.
//! URLs are engine-specific (relative and router-served here, presigned in S3); each engine's
//! own tests fetch them.

use bytes::Bytes;

use super::{sha256_hex, BlobError, BlobStore};

fn user(n: u32) -> String {
    format!("conf{n}{}", crate::store::new_id())
}

pub async fn put_then_get_round_trips(store: &dyn BlobStore) {
    let u = user(1);
    let data = Bytes::from(vec![7u8; 100_000]);
    let hash = sha256_hex(&data);
    store.put(&u, &hash, data.clone()).await.unwrap();
    assert_eq!(store.get(&u, &hash).await.unwrap(), data);
    // Storing the same block again is harmless.
    store.put(&u, &hash, data.clone()).await.unwrap();
}

pub async fn wrong_bytes_are_refused_and_not_stored(store: &dyn BlobStore) {
    let u = user(2);
    let hash = sha256_hex(b"right");
    let err = store
        .put(&u, &hash, Bytes::from_static(b"wrong"))
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::HashMismatch(_)), "{err:?}");
    assert!(matches!(
        store.get(&u, &hash).await,
        Err(BlobError::NotFound)
    ));
    assert_eq!(
        store
            .missing(&u, std::slice::from_ref(&hash))
            .await
            .unwrap(),
        vec![hash]
    );
}

pub async fn missing_lists_only_absent_blocks(store: &dyn BlobStore) {
    let u = user(3);
    let present = sha256_hex(b"present");
    store
        .put(&u, &present, Bytes::from_static(b"present"))
        .await
        .unwrap();
    let absent = sha256_hex(b"absent");
    let missing = store
        .missing(&u, &[present.clone(), absent.clone()])
        .await
        .unwrap();
    assert_eq!(missing, vec![absent]);
}

pub async fn users_do_not_share_blocks(store: &dyn BlobStore) {
    let (a, b) = (user(4), user(5));
    let hash = sha256_hex(b"secret");
    store
        .put(&a, &hash, Bytes::from_static(b"secret"))
        .await
        .unwrap();
    assert!(matches!(
        store.get(&b, &hash).await,
        Err(BlobError::NotFound)
    ));
    assert_eq!(
        store
            .missing(&b, std::slice::from_ref(&hash))
            .await
            .unwrap(),
        vec![hash]
    );
}

pub async fn delete_removes_and_is_idempotent(store: &dyn BlobStore) {
    let u = user(6);
    let hash = sha256_hex(b"gone");
    store
        .put(&u, &hash, Bytes::from_static(b"gone"))
        .await
        .unwrap();
    store.delete(&u, &hash).await.unwrap();
    store.delete(&u, &hash).await.unwrap();
    assert!(matches!(
        store.get(&u, &hash).await,
        Err(BlobError::NotFound)
    ));
}

pub async fn malformed_hashes_are_refused(store: &dyn BlobStore) {
    let u = user(7);
    for bad in ["", "../../etc/passwd", "ABCDEF", &"g".repeat(64)] {
        assert!(
            store.put(&u, bad, Bytes::from_static(b"x")).await.is_err(),
            "{bad:?}"
        );
        assert!(store.get(&u, bad).await.is_err(), "{bad:?}");
    }
}

pub async fn empty_block_works(store: &dyn BlobStore) {
    let u = user(8);
    let hash = sha256_hex(b"");
    store.put(&u, &hash, Bytes::new()).await.unwrap();
    assert_eq!(store.get(&u, &hash).await.unwrap().len(), 0);
}

pub async fn list_shows_a_users_blocks_only(store: &dyn BlobStore) {
    let (a, b) = (user(11), user(12));
    assert!(store.list(&a).await.unwrap().is_empty());
    let before = crate::store::now_ns() - 60_000_000_000;
    let mut hashes = Vec::new();
    for data in [&b"one"[..], b"two", b""] {
        let hash = sha256_hex(data);
        store
            .put(&a, &hash, Bytes::copy_from_slice(data))
            .await
            .unwrap();
        hashes.push(hash);
    }
    let theirs = sha256_hex(b"theirs");
    store
        .put(&b, &theirs, Bytes::from_static(b"theirs"))
        .await
        .unwrap();
    let listed = store.list(&a).await.unwrap();
    let mut got: Vec<String> = listed.iter().map(|s| s.hash.clone()).collect();
    got.sort();
    hashes.sort();
    assert_eq!(got, hashes);
    assert!(
        listed.iter().all(|s| s.stored_at_ns > before),
        "stored times are real: {listed:?}"
    );
    store.delete(&a, &hashes[0]).await.unwrap();
    assert_eq!(store.list(&a).await.unwrap().len(), 2);
}

pub async fn remove_user_deletes_only_that_users_blocks(store: &dyn BlobStore) {
    let (a, b) = (user(9), user(10));
    let mut hashes = Vec::new();
    for i in 0..3 {
        let bytes = Bytes::from(format!("block {i}"));
        let hash = sha256_hex(&bytes);
        store.put(&a, &hash, bytes.clone()).await.unwrap();
        store.put(&b, &hash, bytes).await.unwrap();
        hashes.push(hash);
    }
    assert_eq!(store.remove_user(&a).await.unwrap(), 3);
    assert_eq!(store.missing(&a, &hashes).await.unwrap(), hashes);
    assert!(store.missing(&b, &hashes).await.unwrap().is_empty());
    assert_eq!(
        store.remove_user(&a).await.unwrap(),
        0,
        "again: nothing left"
    );
}

/// Expands to one `#[tokio::test]` per conformance case. `$make` is an async expression
/// giving `(store, guard)`.
#[macro_export]
macro_rules! blob_store_conformance {
    ($make:expr) => {
        $crate::blob_store_conformance!(@cases $make;
            put_then_get_round_trips,
            wrong_bytes_are_refused_and_not_stored,
            missing_lists_only_absent_blocks,
            users_do_not_share_blocks,
            delete_removes_and_is_idempotent,
            malformed_hashes_are_refused,
            empty_block_works,
            list_shows_a_users_blocks_only,
            remove_user_deletes_only_that_users_blocks
        );
    };
    (@cases $make:expr; $($case:ident),*) => {
        mod blob_conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _guard) = $make.await;
                    $crate::blobs::conformance::$case(&store).await;
                }
            )*
        }
    };
}
