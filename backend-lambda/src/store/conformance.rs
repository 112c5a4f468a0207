//! The `MetaStore` conformance suite: the one set of tests every engine must pass.
//!
//! Each case is a `pub async fn(&dyn MetaStore)` given a fresh, empty store. An engine runs all
//! of them with one line in its test module, which expands to one `#[tokio::test]` per case
//! (so a failure names its case):
//!
//! ```ignore
//! // the store needs nothing else to live:
//! backend_lambda::meta_store_conformance!(async { SqliteStore::open_in_memory().unwrap() });
//! // the store needs a guard kept alive beside it (a temp dir, a server process):
//! backend_lambda::meta_store_conformance!(guarded async { (make_store().await, guard) });
//! ```
//!
//! The rules checked here are the contract the router relies on (see `mod.rs` and the engine
//! notes in `sqlite.rs`): versions and conflicts, POSIX rename over existing names, the trash
//! and restore, the change log and its cursor, and that users never see each other's nodes.
//! Cases use only the trait, assume nothing about id values beyond the wire's rules, and create
//! their own users, so an engine may share one backing store between cases if each gets a
//! fresh namespace.

use std::collections::BTreeSet;

use jewel_wire::{
    ChangeEvent, ChangeOp, Content, FileVersion, MoveMode, NewKind, Node, NodeId, NodeKind, Place,
    SetAttr, Version, ROOT_ID,
};

use super::{BatchOp, MetaStore, NewNode, Origin, StoreError, User, UserId, MAX_VERSIONS};

/// Expands to one `#[tokio::test]` per conformance case for the store made by the given
/// `async` expression (evaluated once per case). With `guarded`, the expression yields
/// `(store, guard)` and the guard is kept alive until the case ends.
#[macro_export]
macro_rules! meta_store_conformance {
    (@cases $how:tt) => {
        $crate::meta_store_conformance!(@each $how
            users_lifecycle,
            tokens_and_revocation,
            devices,
            root_rules,
            create_and_get,
            create_errors,
            batch_in_order_stops_at_first_failure,
            batch_moves_take_free_names_only,
            list_children_pages,
            list_children_bytewise_order,
            commit_content_versions,
            set_attr_bumps_version,
            move_rename_and_reparent,
            move_dir_below_itself,
            move_replace_file,
            move_replace_kinds,
            move_no_replace,
            move_exchange,
            remove_and_trash,
            restore_brings_subtree_back,
            restore_name_taken,
            restore_parent_gone,
            change_log_order_and_paging,
            cursor_too_old_after_trim,
            users_isolated,
            events_carry_device,
            referenced_blocks,
            purge_trash_forgets_old_deletions,
            versions_keep_replaced_content,
            concurrent_reads_and_writes,
            pages_are_bounded_in_bytes,
            devices_are_capped_and_forgotten,
            a_registration_retried_with_its_key_is_one_device,
            removed_user_leaves_no_versions,
            devices_link_with_their_own_tokens,
            small_blocks_kept_with_their_nodes,
            small_blocks_stay_while_named,
            a_device_hears_the_folders_it_listed,
        );
    };
    (@each $how:tt $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::meta_store_conformance!(@run $how $case);
            }
        )*
    };
    (@run (guarded $make:expr) $case:ident) => {
        let (store, _guard) = $make.await;
        $crate::store::conformance::$case(&store).await;
    };
    (@run (plain $make:expr) $case:ident) => {
        let store = $make.await;
        $crate::store::conformance::$case(&store).await;
    };
    (guarded $make:expr) => {
        $crate::meta_store_conformance!(@cases (guarded $make));
    };
    ($make:expr) => {
        $crate::meta_store_conformance!(@cases (plain $make));
    };
}

// ---- helpers ----

/// Asserts that a result is an error matching the pattern (and optional guard).
macro_rules! assert_err {
    ($result:expr, $pat:pat $(if $guard:expr)?) => {
        match $result {
            Err($pat) $(if $guard)? => {}
            other => panic!(
                "{}: expected Err({}), got {:?}",
                stringify!($result),
                stringify!($pat $(if $guard)?),
                other
            ),
        }
    };
}

pub(crate) fn at(now_ns: i64) -> Origin {
    Origin {
        device: None,
        now_ns,
    }
}

/// A well-formed block hash derived from a small number.
pub fn hash(n: u32) -> String {
    format!("{n:064x}")
}

async fn new_user(s: &dyn MetaStore, name: &str) -> User {
    s.create_user(name, &format!("hash-of-{name}"), 1)
        .await
        .expect("create_user")
}

fn new_node(parent: NodeId, name: &str, kind: NewKind) -> NewNode {
    let mode = match kind {
        NewKind::Dir => 0o755,
        NewKind::File { .. } => 0o644,
        NewKind::Symlink { .. } => 0o777,
    };
    NewNode {
        parent,
        name: name.to_string(),
        kind,
        mode,
        mtime_ns: 1,
    }
}

async fn make(s: &dyn MetaStore, user: &UserId, parent: NodeId, name: &str, kind: NewKind) -> Node {
    s.create(user, &new_node(parent, name, kind), at(1))
        .await
        .unwrap_or_else(|e| panic!("create {name:?}: {e}"))
        .0
}

/// A file of 3 bytes in one block.
pub(crate) async fn file(s: &dyn MetaStore, user: &UserId, parent: NodeId, name: &str) -> Node {
    let content = Content {
        inline: None,
        size: 3,
        blocks: vec![hash(3)],
    };
    make(s, user, parent, name, NewKind::File { content }).await
}

pub(crate) async fn dir(s: &dyn MetaStore, user: &UserId, parent: NodeId, name: &str) -> Node {
    make(s, user, parent, name, NewKind::Dir).await
}

async fn names(s: &dyn MetaStore, user: &UserId, parent: NodeId) -> Vec<String> {
    let list = s
        .list_children(user, parent, None, 1000)
        .await
        .expect("list_children")
        .entries;
    list.into_iter().map(|n| n.name).collect()
}

async fn all_events(s: &dyn MetaStore, user: &UserId) -> Vec<ChangeEvent> {
    s.changes_since(user, 0, 1000)
        .await
        .expect("changes_since")
        .events
}

async fn trash_ids(s: &dyn MetaStore, user: &UserId) -> Vec<NodeId> {
    s.list_trash(user, None, 1000)
        .await
        .expect("list_trash")
        .entries
        .into_iter()
        .map(|e| e.node.id)
        .collect()
}

fn place(parent: NodeId, name: &str) -> Option<Place> {
    Some(Place {
        parent,
        name: name.to_string(),
    })
}

// ---- users, tokens, devices ----

pub async fn users_lifecycle(s: &dyn MetaStore) {
    let ann = s.create_user("ann", "hash-ann", 100).await.unwrap();
    assert_eq!(ann.name, "ann");
    assert_eq!(ann.created_at_ns, 100);
    let bob = new_user(s, "bob").await;
    assert_ne!(ann.id, bob.id);
    assert_err!(s.create_user("ann", "another-hash", 5).await, StoreError::UserExists(n) if n == "ann");

    let mut listed: Vec<String> = s
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    listed.sort();
    assert_eq!(listed, ["ann", "bob"]);

    let root = s.get_node(&ann.id, ROOT_ID).await.unwrap();
    assert_eq!(root.kind, NodeKind::Dir);
    assert_eq!(
        (root.parent, root.name.as_str(), root.mode, root.version),
        (ROOT_ID, "", 0o755, 1)
    );
    assert!(names(s, &ann.id, ROOT_ID).await.is_empty());
    assert_eq!(s.latest_seq(&ann.id).await.unwrap(), 0);

    // Removing a user removes its token, devices, tree and log.
    let f = file(s, &ann.id, ROOT_ID, "f").await;
    let laptop = s.register_device(&ann.id, "laptop", 100).await.unwrap();
    s.remove_user("ann").await.unwrap();
    assert!(s.user_by_token("hash-ann").await.unwrap().is_none());
    let listed: Vec<String> = s
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(listed, ["bob"]);
    assert_err!(s.remove_user("ann").await, StoreError::UnknownUser(n) if n == "ann");
    assert_err!(s.get_node(&ann.id, f.id).await, StoreError::NotFound);
    assert_err!(s.get_node(&ann.id, ROOT_ID).await, StoreError::NotFound);
    assert_err!(s.device(&ann.id, laptop).await, StoreError::UnknownDevice);

    // The name can be reused; the new user is a new id with an empty tree and log.
    let ann2 = s.create_user("ann", "hash-ann-2", 200).await.unwrap();
    assert_ne!(ann2.id, ann.id);
    assert!(names(s, &ann2.id, ROOT_ID).await.is_empty());
    assert_eq!(s.latest_seq(&ann2.id).await.unwrap(), 0);
    assert_err!(s.get_node(&ann2.id, f.id).await, StoreError::NotFound);
    assert!(s.devices(&ann2.id).await.unwrap().is_empty());
    // Bob was never touched.
    assert_eq!(
        s.get_node(&bob.id, ROOT_ID).await.unwrap().kind,
        NodeKind::Dir
    );
}

pub async fn tokens_and_revocation(s: &dyn MetaStore) {
    let ann = new_user(s, "ann").await;
    assert_eq!(
        s.user_by_token("hash-of-ann").await.unwrap(),
        Some(ann.clone())
    );
    assert_eq!(s.user_by_token("no-such-hash").await.unwrap(), None);

    let again = s.set_token("ann", "fresh-hash").await.unwrap();
    assert_eq!(again, ann);
    assert_eq!(
        s.user_by_token("hash-of-ann").await.unwrap(),
        None,
        "the old token is revoked"
    );
    assert_eq!(
        s.user_by_token("fresh-hash").await.unwrap(),
        Some(ann.clone())
    );
    assert_err!(s.set_token("nobody", "x").await, StoreError::UnknownUser(n) if n == "nobody");

    // A token change leaves the user's tree alone.
    assert_eq!(s.get_node(&ann.id, ROOT_ID).await.unwrap().version, 1);
}

pub async fn devices(s: &dyn MetaStore) {
    let ann = new_user(s, "ann").await;
    let bob = new_user(s, "bob").await;
    let laptop = s.register_device(&ann.id, "laptop", 100).await.unwrap();
    let phone = s.register_device(&ann.id, "phone", 100).await.unwrap();
    assert_ne!(laptop, phone);
    assert!(
        laptop < (1 << 53) && phone < (1 << 53),
        "ids stay exact in JavaScript"
    );
    assert_eq!(s.device(&ann.id, laptop).await.unwrap(), "laptop");
    assert_eq!(s.device(&ann.id, phone).await.unwrap(), "phone");
    let listed: Vec<_> = s
        .devices(&ann.id)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.id, d.name, d.linked))
        .collect();
    let expected = vec![
        (laptop, "laptop".to_string(), false),
        (phone, "phone".to_string(), false),
    ];
    assert_eq!(listed, expected, "by name, without their own tokens");

    assert_err!(s.device(&bob.id, laptop).await, StoreError::UnknownDevice);
    assert_err!(s.device(&ann.id, 4242).await, StoreError::UnknownDevice);
    assert!(s.devices(&bob.id).await.unwrap().is_empty());
    let bobs = s.register_device(&bob.id, "laptop", 100).await.unwrap();
    assert_ne!(bobs, laptop);
    let bob_devices = s.devices(&bob.id).await.unwrap();
    assert_eq!(bob_devices.len(), 1);
    assert_eq!(
        (bob_devices[0].id, bob_devices[0].name.as_str()),
        (bobs, "laptop")
    );
}

// ---- the tree ----

pub async fn root_rules(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    assert_err!(
        s.remove(&u, ROOT_ID, None, true, at(2)).await,
        StoreError::InvalidMove(_)
    );
    assert_err!(
        s.remove(&u, ROOT_ID, Some(1), false, at(2)).await,
        StoreError::InvalidMove(_)
    );
    assert_err!(
        s.move_node(&u, ROOT_ID, 1, ROOT_ID, "x", MoveMode::Replace, at(2))
            .await,
        StoreError::InvalidMove(_)
    );
    assert_err!(
        s.commit_content(&u, ROOT_ID, 1, &Content::default(), None, at(2))
            .await,
        StoreError::IsADirectory
    );
    assert_err!(s.child(&u, ROOT_ID, "").await, StoreError::NotFound);
    let d = dir(s, &u, ROOT_ID, "d").await;
    assert_eq!(
        names(s, &u, ROOT_ID).await,
        ["d"],
        "the root is not its own child"
    );
    assert_err!(
        s.move_node(&u, ROOT_ID, 1, d.id, "root", MoveMode::Replace, at(2))
            .await,
        StoreError::InvalidMove(_)
    );
    assert_eq!(s.get_node(&u, ROOT_ID).await.unwrap().version, 1);
    assert_eq!(
        s.latest_seq(&u).await.unwrap(),
        1,
        "failed calls log nothing"
    );
}

pub async fn create_and_get(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let content = Content {
        inline: None,
        size: 5,
        blocks: vec![hash(1)],
    };
    let new = NewNode {
        parent: ROOT_ID,
        name: "a.txt".into(),
        kind: NewKind::File { content },
        mode: 0o640,
        mtime_ns: 1234,
    };
    let (f, ev) = s.create(&u, &new, at(10)).await.unwrap();
    assert!(f.id != ROOT_ID && f.id < (1 << 53));
    assert_eq!(
        (f.parent, f.name.as_str(), f.kind),
        (ROOT_ID, "a.txt", NodeKind::File)
    );
    assert_eq!((f.size, f.mode, f.mtime_ns, f.version), (5, 0o640, 1234, 1));
    assert_eq!(f.blocks, [hash(1)]);
    assert_eq!(f.target, None);
    assert_eq!(ev.seq, 1);
    assert_eq!(ev.op, ChangeOp::Upsert);
    assert_eq!(ev.node, f);
    assert_eq!((ev.from.clone(), ev.device, ev.at_ns), (None, None, 10));
    assert_eq!(s.get_node(&u, f.id).await.unwrap(), f);
    assert_eq!(s.child(&u, ROOT_ID, "a.txt").await.unwrap(), f);

    let (d, ev) = s
        .create(&u, &new_node(ROOT_ID, "docs", NewKind::Dir), at(11))
        .await
        .unwrap();
    assert_eq!(
        (d.kind, d.size, d.mode, d.version),
        (NodeKind::Dir, 0, 0o755, 1)
    );
    assert!(d.blocks.is_empty());
    assert_ne!(d.id, f.id);
    assert_eq!(ev.seq, 2);

    let link = NewKind::Symlink {
        target: "a.txt".into(),
    };
    let (l, ev) = s
        .create(&u, &new_node(d.id, "link", link), at(12))
        .await
        .unwrap();
    assert_eq!((l.kind, l.size, l.parent), (NodeKind::Symlink, 5, d.id));
    assert_eq!(l.target.as_deref(), Some("a.txt"));
    assert_eq!(ev.seq, 3);
    assert_eq!(s.child(&u, d.id, "link").await.unwrap(), l);
    assert_err!(s.child(&u, ROOT_ID, "link").await, StoreError::NotFound);
    assert_err!(s.child(&u, d.id, "a.txt").await, StoreError::NotFound);
    assert_err!(s.get_node(&u, 987_654_321).await, StoreError::NotFound);

    // An empty file has no blocks.
    let empty = file_with(s, &u, ROOT_ID, "empty", Content::default()).await;
    assert_eq!((empty.size, empty.blocks.len()), (0, 0));
    assert_eq!(s.latest_seq(&u).await.unwrap(), 4);
}

async fn file_with(s: &dyn MetaStore, u: &UserId, parent: NodeId, name: &str, c: Content) -> Node {
    make(s, u, parent, name, NewKind::File { content: c }).await
}

pub async fn create_errors(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let a = file(s, &u, ROOT_ID, "a").await;
    let d = dir(s, &u, ROOT_ID, "d").await;
    assert_err!(
        s.create(&u, &new_node(ROOT_ID, "a", NewKind::Dir), at(2)).await,
        StoreError::Exists(n) if n.id == a.id
    );
    assert_err!(
        s.create(&u, &new_node(ROOT_ID, "d", NewKind::Dir), at(2)).await,
        StoreError::Exists(n) if n.id == d.id && n.kind == NodeKind::Dir
    );
    assert_err!(
        s.create(&u, &new_node(987_654_321, "x", NewKind::Dir), at(2))
            .await,
        StoreError::NotFound
    );
    assert_err!(
        s.create(&u, &new_node(a.id, "x", NewKind::Dir), at(2))
            .await,
        StoreError::NotADirectory
    );
    s.remove(&u, d.id, None, false, at(3)).await.unwrap();
    assert_err!(
        s.create(&u, &new_node(d.id, "x", NewKind::Dir), at(4))
            .await,
        StoreError::NotFound
    );
    // After the occupant is trashed the name is free again.
    s.remove(&u, a.id, None, false, at(5)).await.unwrap();
    let a2 = file(s, &u, ROOT_ID, "a").await;
    assert_ne!(a2.id, a.id);
    assert_eq!(
        s.latest_seq(&u).await.unwrap(),
        5,
        "failed creates log nothing"
    );
}

/// A batch applies its changes in order, each as its own method would (same events); the
/// first that fails leaves nothing behind, and the ones after it are not applied.
pub async fn batch_in_order_stops_at_first_failure(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let old = file(s, &u, ROOT_ID, "old").await;
    let before = s.latest_seq(&u).await.unwrap();
    let content = Content {
        inline: None,
        size: 3,
        blocks: vec![format!("{:064x}", 7)],
    };
    let ops = vec![
        BatchOp::Create(new_node(ROOT_ID, "a", NewKind::Dir)),
        BatchOp::Commit {
            id: old.id,
            base: old.version,
            content: content.clone(),
            mtime_ns: Some(9),
        },
        // Taken: fails, and ends the batch.
        BatchOp::Create(new_node(ROOT_ID, "a", NewKind::Dir)),
        BatchOp::Create(new_node(ROOT_ID, "never", NewKind::Dir)),
    ];
    let done = s.apply_batch(&u, ops, at(5)).await.unwrap();
    assert_eq!(done.applied.len(), 2);
    assert!(
        matches!(&done.failed, Some(StoreError::Exists(n)) if n.id == done.applied[0].0.id),
        "{:?}",
        done.failed
    );
    assert_eq!(done.applied[1].0.blocks, content.blocks);
    assert_eq!(done.applied[1].0.version, old.version + 1);
    let seqs: Vec<u64> = done.applied.iter().map(|(_, e)| e.seq).collect();
    assert_eq!(seqs, [before + 1, before + 2], "one event each, in order");
    assert_eq!(
        s.latest_seq(&u).await.unwrap(),
        before + 2,
        "the failed change logged nothing"
    );
    assert_eq!(names(s, &u, ROOT_ID).await, ["a", "old"]);

    let removed = s
        .apply_batch(
            &u,
            vec![
                BatchOp::Remove {
                    id: done.applied[0].0.id,
                    base: done.applied[0].0.version,
                },
                // A stale base: refused, with the current node.
                BatchOp::Remove {
                    id: old.id,
                    base: old.version,
                },
            ],
            at(6),
        )
        .await
        .unwrap();
    assert_eq!(removed.applied.len(), 1);
    assert!(matches!(removed.failed, Some(StoreError::Conflict(_))));
    assert_eq!(names(s, &u, ROOT_ID).await, ["old"]);
}

/// A batch's renames and attribute changes mean what their own methods mean, except that a
/// rename in a batch only ever takes a free name: a taken one (also the node's own place)
/// fails with `Exists` and ends the batch, replacing nothing.
pub async fn batch_moves_take_free_names_only(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let a = file(s, &u, ROOT_ID, "a").await;
    let b = file(s, &u, ROOT_ID, "b").await;
    let d = dir(s, &u, ROOT_ID, "d").await;
    let before = s.latest_seq(&u).await.unwrap();
    let ops = vec![
        BatchOp::Move {
            id: a.id,
            base: a.version,
            new_parent: d.id,
            new_name: "a2".into(),
        },
        BatchOp::SetAttr {
            id: a.id,
            attr: SetAttr {
                mode: Some(0o600),
                mtime_ns: Some(77),
            },
        },
        // Taken by `b`: fails without replacing it, and ends the batch.
        BatchOp::Move {
            id: d.id,
            base: d.version,
            new_parent: ROOT_ID,
            new_name: "b".into(),
        },
        BatchOp::SetAttr {
            id: b.id,
            attr: SetAttr {
                mode: Some(0o700),
                mtime_ns: None,
            },
        },
    ];
    let done = s.apply_batch(&u, ops, at(5)).await.unwrap();
    assert_eq!(done.applied.len(), 2);
    assert!(
        matches!(&done.failed, Some(StoreError::Exists(n)) if n.id == b.id),
        "{:?}",
        done.failed
    );
    let (moved, ev) = &done.applied[0];
    assert_eq!((moved.parent, moved.name.as_str()), (d.id, "a2"));
    assert_eq!(moved.version, a.version + 1);
    assert_eq!(
        ev.from.as_ref().map(|p| (p.parent, p.name.as_str())),
        Some((ROOT_ID, "a")),
        "the move's event says where the node was"
    );
    let (attrs, _) = &done.applied[1];
    assert_eq!((attrs.mode, attrs.mtime_ns), (0o600, 77));
    assert_eq!(attrs.version, a.version + 2);
    let seqs: Vec<u64> = done.applied.iter().map(|(_, e)| e.seq).collect();
    assert_eq!(seqs, [before + 1, before + 2], "one event each, in order");
    assert_eq!(names(s, &u, ROOT_ID).await, ["b", "d"]);
    assert_eq!(names(s, &u, d.id).await, ["a2"]);
    let b_now = s.get_node(&u, b.id).await.unwrap();
    assert_eq!(
        (b_now.version, b_now.mode),
        (b.version, b.mode),
        "b untouched"
    );

    // A move onto the node's own place changes nothing: for a batch that is a taken name.
    let d_now = s.get_node(&u, d.id).await.unwrap();
    let same = s
        .apply_batch(
            &u,
            vec![BatchOp::Move {
                id: d.id,
                base: d_now.version,
                new_parent: ROOT_ID,
                new_name: "d".into(),
            }],
            at(6),
        )
        .await
        .unwrap();
    assert!(same.applied.is_empty());
    assert!(matches!(same.failed, Some(StoreError::Exists(_))));
    assert_eq!(
        s.latest_seq(&u).await.unwrap(),
        before + 2,
        "nothing logged"
    );
}

pub async fn list_children_pages(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let d = dir(s, &u, ROOT_ID, "d").await;
    for i in 0..25 {
        // Created out of order; listed in name order.
        file(s, &u, d.id, &format!("f{:02}", (i * 7) % 25)).await;
    }
    let expected: Vec<String> = (0..25).map(|i| format!("f{i:02}")).collect();
    let page1 = s.list_children(&u, d.id, None, 10).await.unwrap().entries;
    let page2 = s
        .list_children(&u, d.id, Some("f09"), 10)
        .await
        .unwrap()
        .entries;
    let page3 = s
        .list_children(&u, d.id, Some("f19"), 10)
        .await
        .unwrap()
        .entries;
    let page4 = s
        .list_children(&u, d.id, Some("f24"), 10)
        .await
        .unwrap()
        .entries;
    assert_eq!(
        (page1.len(), page2.len(), page3.len(), page4.len()),
        (10, 10, 5, 0)
    );
    let all: Vec<String> = [page1, page2, page3]
        .concat()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(all, expected);
    // `after` need not be an existing name.
    let from = s
        .list_children(&u, d.id, Some("f10x"), 2)
        .await
        .unwrap()
        .entries;
    assert_eq!(
        from.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["f11", "f12"]
    );
    // Entries carry the full node (what readdirplus needs).
    for n in s.list_children(&u, d.id, None, 1000).await.unwrap().entries {
        assert_eq!(s.get_node(&u, n.id).await.unwrap(), n);
        assert_eq!(n.parent, d.id);
    }
    // Trashed entries are not listed.
    let f03 = s.child(&u, d.id, "f03").await.unwrap();
    s.remove(&u, f03.id, None, false, at(2)).await.unwrap();
    let listed = names(s, &u, d.id).await;
    assert_eq!(listed.len(), 24);
    assert!(!listed.contains(&"f03".to_string()));
    assert_eq!(names(s, &u, ROOT_ID).await, ["d"]);

    let f = s.child(&u, d.id, "f00").await.unwrap();
    assert_err!(
        s.list_children(&u, f.id, None, 10).await,
        StoreError::NotADirectory
    );
    assert_err!(
        s.list_children(&u, 987_654_321, None, 10).await,
        StoreError::NotFound
    );
}

pub async fn list_children_bytewise_order(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    for name in ["é", "a", "Z", "_", "B", "a b", "ab", "10", "9"] {
        file(s, &u, ROOT_ID, name).await;
    }
    assert_eq!(
        names(s, &u, ROOT_ID).await,
        ["10", "9", "B", "Z", "_", "a", "a b", "ab", "é"]
    );
    let after = s
        .list_children(&u, ROOT_ID, Some("a"), 2)
        .await
        .unwrap()
        .entries;
    assert_eq!(
        after.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["a b", "ab"]
    );
}

pub async fn commit_content_versions(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let f = file(s, &u, ROOT_ID, "f").await;
    let d = dir(s, &u, ROOT_ID, "d").await;
    let l = make(s, &u, ROOT_ID, "l", NewKind::Symlink { target: "f".into() }).await;
    let seq0 = s.latest_seq(&u).await.unwrap();

    let c2 = Content {
        inline: None,
        size: 10,
        blocks: vec![hash(2), hash(3)],
    };
    let origin = Origin {
        device: Some(7),
        now_ns: 20,
    };
    let (n, ev) = s
        .commit_content(&u, f.id, 1, &c2, Some(555), origin)
        .await
        .unwrap();
    assert_eq!((n.id, n.version, n.size, n.mtime_ns), (f.id, 2, 10, 555));
    assert_eq!(n.blocks, c2.blocks);
    assert_eq!((n.parent, n.name.as_str(), n.mode), (f.parent, "f", f.mode));
    assert_eq!(
        (ev.seq, ev.op, ev.device, ev.at_ns),
        (seq0 + 1, ChangeOp::Upsert, Some(7), 20)
    );
    assert_eq!(ev.node, n);
    assert_eq!(s.get_node(&u, f.id).await.unwrap(), n);

    // A stale base is a conflict carrying the current node, and changes nothing.
    let c3 = Content {
        inline: None,
        size: 1,
        blocks: vec![hash(9)],
    };
    assert_err!(
        s.commit_content(&u, f.id, 1, &c3, None, at(21)).await,
        StoreError::Conflict(cur) if *cur == n
    );
    assert_err!(
        s.commit_content(&u, f.id, 3, &c3, None, at(21)).await,
        StoreError::Conflict(_)
    );
    assert_eq!(s.get_node(&u, f.id).await.unwrap(), n);

    // No mtime means now.
    let (n3, _) = s
        .commit_content(&u, f.id, 2, &c3, None, at(777))
        .await
        .unwrap();
    assert_eq!((n3.version, n3.mtime_ns, n3.size), (3, 777, 1));
    // Identical content on the current base is accepted and still bumps the version.
    let (n4, _) = s
        .commit_content(&u, f.id, 3, &c3, None, at(778))
        .await
        .unwrap();
    assert_eq!(n4.version, 4);

    assert_err!(
        s.commit_content(&u, d.id, 1, &c3, None, at(30)).await,
        StoreError::IsADirectory
    );
    assert_err!(
        s.commit_content(&u, l.id, 1, &c3, None, at(30)).await,
        StoreError::InvalidMove(_)
    );
    assert_err!(
        s.commit_content(&u, 987_654_321, 1, &c3, None, at(30))
            .await,
        StoreError::NotFound
    );
    s.remove(&u, f.id, None, false, at(31)).await.unwrap();
    assert_err!(
        s.commit_content(&u, f.id, 4, &c3, None, at(32)).await,
        StoreError::NotFound
    );
    assert_eq!(s.latest_seq(&u).await.unwrap(), seq0 + 4);
}

pub async fn set_attr_bumps_version(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let f = file(s, &u, ROOT_ID, "f").await;
    let seq0 = s.latest_seq(&u).await.unwrap();
    let mode_only = SetAttr {
        mode: Some(0o600),
        mtime_ns: None,
    };
    let (n, ev) = s.set_attr(&u, f.id, &mode_only, at(5)).await.unwrap();
    assert_eq!((n.mode, n.mtime_ns, n.version), (0o600, f.mtime_ns, 2));
    assert_eq!((ev.seq, ev.op), (seq0 + 1, ChangeOp::Upsert));
    assert_eq!(ev.node, n);
    let mtime_only = SetAttr {
        mode: None,
        mtime_ns: Some(99),
    };
    let (n, _) = s.set_attr(&u, f.id, &mtime_only, at(6)).await.unwrap();
    assert_eq!((n.mode, n.mtime_ns, n.version), (0o600, 99, 3));
    assert_eq!(n.blocks, f.blocks, "content is untouched");
    assert_eq!(s.get_node(&u, f.id).await.unwrap(), n);

    let d = dir(s, &u, ROOT_ID, "d").await;
    let (dn, _) = s.set_attr(&u, d.id, &mode_only, at(7)).await.unwrap();
    assert_eq!((dn.mode, dn.version), (0o600, 2));
    assert_err!(
        s.set_attr(&u, 987_654_321, &mode_only, at(8)).await,
        StoreError::NotFound
    );
    s.remove(&u, f.id, None, false, at(9)).await.unwrap();
    assert_err!(
        s.set_attr(&u, f.id, &mode_only, at(10)).await,
        StoreError::NotFound
    );
}

pub async fn move_rename_and_reparent(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let a = dir(s, &u, ROOT_ID, "a").await;
    let b = dir(s, &u, ROOT_ID, "b").await;
    let f = file(s, &u, a.id, "x").await;
    let seq0 = s.latest_seq(&u).await.unwrap();

    let moved = s
        .move_node(&u, f.id, 1, a.id, "y", MoveMode::Replace, at(5))
        .await
        .unwrap();
    let n = moved.node.clone();
    assert_eq!(
        (n.id, n.parent, n.name.as_str(), n.version),
        (f.id, a.id, "y", 2)
    );
    assert_eq!((n.size, &n.blocks, n.mode), (f.size, &f.blocks, f.mode));
    assert!(moved.other.is_none());
    assert_eq!(moved.events.len(), 1);
    let ev = &moved.events[0];
    assert_eq!((ev.seq, ev.op, ev.at_ns), (seq0 + 1, ChangeOp::Upsert, 5));
    assert_eq!(ev.node, n);
    assert_eq!(ev.from, place(a.id, "x"));
    assert_err!(s.child(&u, a.id, "x").await, StoreError::NotFound);
    assert_eq!(s.child(&u, a.id, "y").await.unwrap(), n);

    let moved = s
        .move_node(&u, f.id, 2, b.id, "z", MoveMode::Replace, at(6))
        .await
        .unwrap();
    assert_eq!(
        (
            moved.node.parent,
            moved.node.name.as_str(),
            moved.node.version
        ),
        (b.id, "z", 3)
    );
    assert_eq!(moved.events[0].from, place(a.id, "y"));
    assert!(names(s, &u, a.id).await.is_empty());
    assert_eq!(names(s, &u, b.id).await, ["z"]);

    // Stale base.
    assert_err!(
        s.move_node(&u, f.id, 2, a.id, "w", MoveMode::Replace, at(7)).await,
        StoreError::Conflict(cur) if cur.version == 3 && cur.parent == b.id
    );
    // Target parent missing, a file, trashed.
    assert_err!(
        s.move_node(&u, f.id, 3, 987_654_321, "w", MoveMode::Replace, at(7))
            .await,
        StoreError::NotFound
    );
    let g = file(s, &u, ROOT_ID, "g").await;
    assert_err!(
        s.move_node(&u, f.id, 3, g.id, "w", MoveMode::Replace, at(7))
            .await,
        StoreError::NotADirectory
    );
    s.remove(&u, a.id, None, false, at(8)).await.unwrap();
    assert_err!(
        s.move_node(&u, f.id, 3, a.id, "w", MoveMode::Replace, at(9))
            .await,
        StoreError::NotFound
    );
    assert_err!(
        s.move_node(&u, 987_654_321, 1, b.id, "w", MoveMode::Replace, at(9))
            .await,
        StoreError::NotFound
    );
    assert_eq!(s.get_node(&u, f.id).await.unwrap().version, 3);

    // A directory moves with its subtree.
    let c = dir(s, &u, ROOT_ID, "c").await;
    let k = file(s, &u, c.id, "k").await;
    let moved = s
        .move_node(&u, c.id, 1, b.id, "c2", MoveMode::Replace, at(10))
        .await
        .unwrap();
    assert_eq!(moved.node.parent, b.id);
    assert_eq!(s.child(&u, c.id, "k").await.unwrap(), k);
    assert_eq!(names(s, &u, b.id).await, ["c2", "z"]);
    assert_eq!(names(s, &u, ROOT_ID).await, ["b", "g"]);
}

pub async fn move_dir_below_itself(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let a = dir(s, &u, ROOT_ID, "a").await;
    let b = dir(s, &u, a.id, "b").await;
    let c = dir(s, &u, b.id, "c").await;
    let seq0 = s.latest_seq(&u).await.unwrap();
    for target in [a.id, b.id, c.id] {
        assert_err!(
            s.move_node(&u, a.id, 1, target, "a", MoveMode::Replace, at(5))
                .await,
            StoreError::InvalidMove(_)
        );
    }
    assert_err!(
        s.move_node(&u, b.id, 1, c.id, "b", MoveMode::NoReplace, at(5))
            .await,
        StoreError::InvalidMove(_)
    );
    assert_eq!(s.latest_seq(&u).await.unwrap(), seq0);
    // Moving up is fine.
    let moved = s
        .move_node(&u, c.id, 1, ROOT_ID, "c", MoveMode::Replace, at(6))
        .await
        .unwrap();
    assert_eq!(moved.node.parent, ROOT_ID);
    // And a now-unrelated directory may go below another.
    let moved = s
        .move_node(&u, a.id, 1, c.id, "a", MoveMode::Replace, at(7))
        .await
        .unwrap();
    assert_eq!(moved.node.parent, c.id);
}

pub async fn move_replace_file(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let x = file_with(
        s,
        &u,
        ROOT_ID,
        "x",
        Content {
            inline: None,
            size: 1,
            blocks: vec![hash(1)],
        },
    )
    .await;
    let y = file_with(
        s,
        &u,
        ROOT_ID,
        "y",
        Content {
            inline: None,
            size: 2,
            blocks: vec![hash(2)],
        },
    )
    .await;
    let seq0 = s.latest_seq(&u).await.unwrap();

    let moved = s
        .move_node(&u, x.id, 1, ROOT_ID, "y", MoveMode::Replace, at(40))
        .await
        .unwrap();
    assert_eq!(
        (moved.node.id, moved.node.name.as_str(), moved.node.version),
        (x.id, "y", 2)
    );
    assert_eq!(moved.other.as_ref().map(|o| o.id), Some(y.id));
    assert_eq!(moved.events.len(), 2);
    let (removed, upserted) = (&moved.events[0], &moved.events[1]);
    assert_eq!(
        (removed.seq, removed.op, removed.node.id),
        (seq0 + 1, ChangeOp::Remove, y.id)
    );
    assert_eq!(
        (removed.node.parent, removed.node.name.as_str()),
        (ROOT_ID, "y")
    );
    assert_eq!((upserted.seq, upserted.op), (seq0 + 2, ChangeOp::Upsert));
    assert_eq!(upserted.node, moved.node);
    assert_eq!(upserted.from, place(ROOT_ID, "x"));
    assert_eq!(all_events(s, &u).await[seq0 as usize..], moved.events[..]);

    assert_eq!(s.child(&u, ROOT_ID, "y").await.unwrap(), moved.node);
    assert_err!(s.get_node(&u, y.id).await, StoreError::NotFound);
    assert_eq!(names(s, &u, ROOT_ID).await, ["y"]);
    let trash = s.list_trash(&u, None, 1000).await.unwrap().entries;
    assert_eq!(trash.len(), 1);
    assert_eq!((trash[0].node.id, trash[0].node.name.as_str()), (y.id, "y"));
    assert_eq!(trash[0].deleted_at_ns, 40);
    assert!(
        s.referenced_blocks(&u).await.unwrap().contains(&hash(2)),
        "trashed content is kept"
    );
}

pub async fn move_replace_kinds(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let d1 = dir(s, &u, ROOT_ID, "d1").await;
    let d2 = dir(s, &u, ROOT_ID, "d2").await;
    let d3 = dir(s, &u, ROOT_ID, "d3").await;
    file(s, &u, d3.id, "inside").await;
    let f = file(s, &u, ROOT_ID, "f").await;
    let g = file(s, &u, ROOT_ID, "g").await;
    let seq0 = s.latest_seq(&u).await.unwrap();

    let mv = |id: NodeId, name: &'static str| {
        s.move_node(&u, id, 1, ROOT_ID, name, MoveMode::Replace, at(50))
    };
    assert_err!(mv(d1.id, "f").await, StoreError::NotADirectory);
    assert_err!(mv(f.id, "d2").await, StoreError::IsADirectory);
    assert_err!(mv(d1.id, "d3").await, StoreError::NotEmpty);
    assert_eq!(
        s.latest_seq(&u).await.unwrap(),
        seq0,
        "refused moves log nothing"
    );

    // Onto its own place: a successful no-op.
    let same = mv(f.id, "f").await.unwrap();
    assert_eq!(same.node, f);
    assert!(same.other.is_none() && same.events.is_empty());
    assert_eq!(s.latest_seq(&u).await.unwrap(), seq0);

    // A directory replaces an empty directory.
    let moved = mv(d1.id, "d2").await.unwrap();
    assert_eq!(moved.other.as_ref().map(|o| o.id), Some(d2.id));
    assert_eq!(
        moved.events.iter().map(|e| e.op).collect::<Vec<_>>(),
        [ChangeOp::Remove, ChangeOp::Upsert]
    );
    assert_eq!(s.child(&u, ROOT_ID, "d2").await.unwrap().id, d1.id);
    assert_err!(s.get_node(&u, d2.id).await, StoreError::NotFound);

    // A symlink replaces a file.
    let l = make(s, &u, ROOT_ID, "l", NewKind::Symlink { target: "f".into() }).await;
    let moved = mv(l.id, "g").await.unwrap();
    assert_eq!(moved.other.map(|o| o.id), Some(g.id));
    assert_eq!(names(s, &u, ROOT_ID).await, ["d2", "d3", "f", "g"]);
    let mut trash = trash_ids(s, &u).await;
    trash.sort();
    let mut expected = vec![d2.id, g.id];
    expected.sort();
    assert_eq!(trash, expected);
}

pub async fn move_no_replace(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let x = file(s, &u, ROOT_ID, "x").await;
    let y = file(s, &u, ROOT_ID, "y").await;
    assert_err!(
        s.move_node(&u, x.id, 1, ROOT_ID, "y", MoveMode::NoReplace, at(5)).await,
        StoreError::Exists(n) if n.id == y.id
    );
    assert_eq!(s.get_node(&u, x.id).await.unwrap(), x);
    assert_eq!(s.get_node(&u, y.id).await.unwrap(), y);
    let moved = s
        .move_node(&u, x.id, 1, ROOT_ID, "z", MoveMode::NoReplace, at(6))
        .await
        .unwrap();
    assert_eq!((moved.node.name.as_str(), moved.node.version), ("z", 2));
    assert!(moved.other.is_none());
    assert_eq!(names(s, &u, ROOT_ID).await, ["y", "z"]);
}

pub async fn move_exchange(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let a = dir(s, &u, ROOT_ID, "a").await;
    let p = file(s, &u, a.id, "p").await;
    let q = file_with(
        s,
        &u,
        ROOT_ID,
        "q",
        Content {
            inline: None,
            size: 1,
            blocks: vec![hash(1)],
        },
    )
    .await;
    let seq0 = s.latest_seq(&u).await.unwrap();

    let moved = s
        .move_node(&u, p.id, 1, ROOT_ID, "q", MoveMode::Exchange, at(5))
        .await
        .unwrap();
    assert_eq!(
        (moved.node.id, moved.node.parent, moved.node.name.as_str()),
        (p.id, ROOT_ID, "q")
    );
    assert_eq!(moved.node.version, 2);
    let other = moved.other.clone().expect("the exchanged node");
    assert_eq!(
        (other.id, other.parent, other.name.as_str(), other.version),
        (q.id, a.id, "p", 2)
    );
    assert_eq!(other.blocks, q.blocks);
    assert_eq!(moved.events.len(), 2);
    assert_eq!(
        moved.events.iter().map(|e| e.op).collect::<Vec<_>>(),
        [ChangeOp::Upsert; 2]
    );
    assert_eq!(
        moved.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [seq0 + 1, seq0 + 2]
    );
    assert_eq!(moved.events[0].node, moved.node);
    assert_eq!(moved.events[0].from, place(a.id, "p"));
    assert_eq!(moved.events[1].node, other);
    assert_eq!(moved.events[1].from, place(ROOT_ID, "q"));
    assert_eq!(s.child(&u, ROOT_ID, "q").await.unwrap().id, p.id);
    assert_eq!(s.child(&u, a.id, "p").await.unwrap().id, q.id);
    assert!(
        s.list_trash(&u, None, 1000)
            .await
            .unwrap()
            .entries
            .is_empty(),
        "nothing is trashed"
    );

    // The target must exist; the base must be current.
    assert_err!(
        s.move_node(&u, p.id, 2, ROOT_ID, "nothing", MoveMode::Exchange, at(6))
            .await,
        StoreError::NotFound
    );
    assert_err!(
        s.move_node(&u, p.id, 1, a.id, "p", MoveMode::Exchange, at(6))
            .await,
        StoreError::Conflict(_)
    );
    // Kinds may differ.
    let moved = s
        .move_node(&u, a.id, 1, ROOT_ID, "q", MoveMode::Exchange, at(7))
        .await
        .unwrap();
    assert_eq!(moved.node.name, "q");
    assert_eq!(moved.other.map(|o| o.name), Some("a".to_string()));
    assert_eq!(s.child(&u, ROOT_ID, "q").await.unwrap().kind, NodeKind::Dir);
    // A directory cannot be exchanged with something inside it.
    let inner = dir(s, &u, a.id, "inner").await;
    assert_err!(
        s.move_node(&u, inner.id, 1, ROOT_ID, "q", MoveMode::Exchange, at(8))
            .await,
        StoreError::InvalidMove(_)
    );
}

pub async fn remove_and_trash(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let f = file(s, &u, ROOT_ID, "f").await;
    let d = dir(s, &u, ROOT_ID, "d").await;
    let g = file(s, &u, d.id, "g").await;
    let e = dir(s, &u, ROOT_ID, "e").await;
    let seq0 = s.latest_seq(&u).await.unwrap();

    assert_err!(
        s.remove(&u, f.id, Some(2), false, at(50)).await,
        StoreError::Conflict(cur) if *cur == f
    );
    let origin = Origin {
        device: Some(3),
        now_ns: 50,
    };
    let (n, ev) = s.remove(&u, f.id, Some(1), false, origin).await.unwrap();
    assert_eq!(n, f, "the removed node's last state");
    assert_eq!(
        (ev.seq, ev.op, ev.device, ev.at_ns),
        (seq0 + 1, ChangeOp::Remove, Some(3), 50)
    );
    assert_eq!(ev.node, f);
    assert_err!(s.get_node(&u, f.id).await, StoreError::NotFound);
    assert_err!(s.child(&u, ROOT_ID, "f").await, StoreError::NotFound);
    assert_err!(
        s.remove(&u, f.id, None, false, at(51)).await,
        StoreError::NotFound
    );
    let trash = s.list_trash(&u, None, 1000).await.unwrap().entries;
    assert_eq!(trash.len(), 1);
    assert_eq!(trash[0].node, f);
    assert_eq!(trash[0].deleted_at_ns, 50);

    // A non-empty directory needs `recursive`.
    assert_err!(
        s.remove(&u, d.id, None, false, at(60)).await,
        StoreError::NotEmpty
    );
    assert_eq!(s.get_node(&u, g.id).await.unwrap(), g);
    let (_, ev) = s.remove(&u, d.id, None, true, at(60)).await.unwrap();
    assert_eq!(
        (ev.seq, ev.op, ev.node.id),
        (seq0 + 2, ChangeOp::Remove, d.id)
    );
    assert_eq!(
        s.latest_seq(&u).await.unwrap(),
        seq0 + 2,
        "one event for the whole subtree"
    );
    assert_err!(s.get_node(&u, g.id).await, StoreError::NotFound);
    assert_err!(s.child(&u, d.id, "g").await, StoreError::NotFound);
    assert_err!(
        s.list_children(&u, d.id, None, 10).await,
        StoreError::NotFound
    );
    assert_err!(
        s.remove(&u, g.id, None, false, at(61)).await,
        StoreError::NotFound
    );
    // Only the top is listed, newest first.
    assert_eq!(trash_ids(s, &u).await, [d.id, f.id]);

    // An empty directory goes without `recursive`.
    s.remove(&u, e.id, Some(1), false, at(70)).await.unwrap();
    assert_eq!(trash_ids(s, &u).await, [e.id, d.id, f.id]);
    assert!(names(s, &u, ROOT_ID).await.is_empty());
}

pub async fn restore_brings_subtree_back(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let d = dir(s, &u, ROOT_ID, "d").await;
    let g = file(s, &u, d.id, "g").await;
    let sub = dir(s, &u, d.id, "sub").await;
    let t = file(s, &u, sub.id, "t").await;
    s.remove(&u, d.id, None, true, at(10)).await.unwrap();
    let seq0 = s.latest_seq(&u).await.unwrap();

    let origin = Origin {
        device: Some(9),
        now_ns: 20,
    };
    let (n, ev) = s.restore(&u, d.id, origin).await.unwrap();
    assert_eq!(
        (n.id, n.parent, n.name.as_str(), n.version),
        (d.id, ROOT_ID, "d", 2)
    );
    assert_eq!(
        (ev.seq, ev.op, ev.device, ev.at_ns),
        (seq0 + 1, ChangeOp::Upsert, Some(9), 20)
    );
    assert_eq!(ev.node, n);
    assert_eq!(s.get_node(&u, d.id).await.unwrap(), n);
    assert_eq!(s.get_node(&u, g.id).await.unwrap(), g);
    assert_eq!(s.child(&u, sub.id, "t").await.unwrap(), t);
    assert_eq!(names(s, &u, d.id).await, ["g", "sub"]);
    assert!(s
        .list_trash(&u, None, 1000)
        .await
        .unwrap()
        .entries
        .is_empty());

    // Only tops of the trash can be restored.
    assert_err!(s.restore(&u, d.id, at(21)).await, StoreError::NotFound);
    assert_err!(
        s.restore(&u, 987_654_321, at(21)).await,
        StoreError::NotFound
    );
    assert_err!(s.restore(&u, ROOT_ID, at(21)).await, StoreError::NotFound);

    // An earlier deletion inside a later one stays its own trash entry.
    s.remove(&u, g.id, None, false, at(30)).await.unwrap();
    s.remove(&u, d.id, None, true, at(40)).await.unwrap();
    assert_eq!(trash_ids(s, &u).await, [d.id, g.id]);
    assert_err!(s.restore(&u, sub.id, at(41)).await, StoreError::NotFound);
    assert_err!(s.restore(&u, t.id, at(41)).await, StoreError::NotFound);
    s.restore(&u, d.id, at(42)).await.unwrap();
    assert_eq!(
        names(s, &u, d.id).await,
        ["sub"],
        "g was deleted on its own"
    );
    assert_eq!(trash_ids(s, &u).await, [g.id]);
    let (g2, _) = s.restore(&u, g.id, at(43)).await.unwrap();
    assert_eq!((g2.parent, g2.name.as_str(), g2.version), (d.id, "g", 2));
    assert_eq!(g2.blocks, g.blocks);
    assert_eq!(names(s, &u, d.id).await, ["g", "sub"]);
}

pub async fn restore_name_taken(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let a1 = file(s, &u, ROOT_ID, "a").await;
    s.remove(&u, a1.id, None, false, at(10)).await.unwrap();
    let a2 = file(s, &u, ROOT_ID, "a").await;
    s.remove(&u, a2.id, None, false, at(11)).await.unwrap();
    let a3 = file(s, &u, ROOT_ID, "a").await;

    let (r1, ev) = s.restore(&u, a1.id, at(20)).await.unwrap();
    assert_eq!((r1.parent, r1.name.as_str()), (ROOT_ID, "a (restored)"));
    assert_eq!(ev.node, r1);
    let (r2, _) = s.restore(&u, a2.id, at(21)).await.unwrap();
    assert_eq!(r2.name, "a (restored 2)");
    assert_eq!(s.child(&u, ROOT_ID, "a").await.unwrap().id, a3.id);
    assert_eq!(
        names(s, &u, ROOT_ID).await,
        ["a", "a (restored 2)", "a (restored)"]
    );
}

pub async fn restore_parent_gone(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let d = dir(s, &u, ROOT_ID, "d").await;
    let f = file(s, &u, d.id, "f").await;
    s.remove(&u, f.id, None, false, at(10)).await.unwrap();
    s.remove(&u, d.id, None, true, at(20)).await.unwrap();
    let (n, _) = s.restore(&u, f.id, at(30)).await.unwrap();
    assert_eq!(
        (n.parent, n.name.as_str()),
        (ROOT_ID, "f"),
        "restored into the root"
    );
    assert_eq!(s.child(&u, ROOT_ID, "f").await.unwrap().id, f.id);

    // Into the root, where the name is taken.
    let e = dir(s, &u, ROOT_ID, "e").await;
    let x = file(s, &u, e.id, "x").await;
    file(s, &u, ROOT_ID, "x").await;
    s.remove(&u, x.id, None, false, at(40)).await.unwrap();
    s.remove(&u, e.id, None, false, at(41)).await.unwrap();
    let (n, _) = s.restore(&u, x.id, at(42)).await.unwrap();
    assert_eq!((n.parent, n.name.as_str()), (ROOT_ID, "x (restored)"));
    // The parent is still in the trash, and can come back on its own.
    assert_eq!(trash_ids(s, &u).await, [e.id, d.id]);
    s.restore(&u, e.id, at(43)).await.unwrap();
    assert!(names(s, &u, e.id).await.is_empty());
}

// ---- the change log ----

pub async fn change_log_order_and_paging(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let mut written = Vec::new();
    let (a, ev) = s
        .create(
            &u,
            &new_node(
                ROOT_ID,
                "a",
                NewKind::File {
                    content: Content::default(),
                },
            ),
            at(1),
        )
        .await
        .unwrap();
    written.push(ev);
    let (d, ev) = s
        .create(&u, &new_node(ROOT_ID, "d", NewKind::Dir), at(2))
        .await
        .unwrap();
    written.push(ev);
    let c = Content {
        inline: None,
        size: 1,
        blocks: vec![hash(1)],
    };
    written.push(
        s.commit_content(&u, a.id, 1, &c, None, at(3))
            .await
            .unwrap()
            .1,
    );
    let attr = SetAttr {
        mode: Some(0o600),
        mtime_ns: None,
    };
    written.push(s.set_attr(&u, a.id, &attr, at(4)).await.unwrap().1);
    written.extend(
        s.move_node(&u, a.id, 3, d.id, "a", MoveMode::Replace, at(5))
            .await
            .unwrap()
            .events,
    );
    written.push(s.remove(&u, d.id, None, true, at(6)).await.unwrap().1);
    written.push(s.restore(&u, d.id, at(7)).await.unwrap().1);

    assert_eq!(s.latest_seq(&u).await.unwrap(), 7);
    let page = s.changes_since(&u, 0, 100).await.unwrap();
    assert_eq!(page.latest_seq, 7);
    assert_eq!(
        page.events, written,
        "the log holds exactly the returned events"
    );
    assert_eq!(
        page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7]
    );
    use ChangeOp::{Remove as R, Upsert as U};
    assert_eq!(
        page.events.iter().map(|e| e.op).collect::<Vec<_>>(),
        [U, U, U, U, U, R, U]
    );
    let ids: Vec<NodeId> = page.events.iter().map(|e| e.node.id).collect();
    assert_eq!(ids, [a.id, d.id, a.id, a.id, a.id, d.id, d.id]);
    assert_eq!(
        page.events.iter().map(|e| e.at_ns).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7]
    );

    let tail = s.changes_since(&u, 5, 100).await.unwrap();
    assert_eq!(
        tail.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [6, 7]
    );
    let none = s.changes_since(&u, 7, 100).await.unwrap();
    assert!(none.events.is_empty());
    assert_eq!(none.latest_seq, 7);

    // Paging with a small limit walks the whole log.
    let mut cursor = 0;
    let mut pages = Vec::new();
    loop {
        let page = s.changes_since(&u, cursor, 3).await.unwrap();
        assert_eq!(page.latest_seq, 7);
        if page.events.is_empty() {
            break;
        }
        assert!(page.events.len() <= 3);
        cursor = page.events.last().unwrap().seq;
        pages.push(page.events.iter().map(|e| e.seq).collect::<Vec<_>>());
    }
    assert_eq!(pages, [vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
}

pub async fn cursor_too_old_after_trim(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    s.trim_log(&u, i64::MAX).await.unwrap(); // an empty log trims to nothing
    assert!(s.changes_since(&u, 0, 10).await.unwrap().events.is_empty());
    for (i, t) in [10, 20, 30, 40].into_iter().enumerate() {
        s.create(
            &u,
            &new_node(ROOT_ID, &format!("f{i}"), NewKind::Dir),
            at(t),
        )
        .await
        .unwrap();
    }
    s.trim_log(&u, 35).await.unwrap();
    assert_err!(s.changes_since(&u, 0, 10).await, StoreError::CursorTooOld);
    assert_err!(s.changes_since(&u, 2, 10).await, StoreError::CursorTooOld);
    let page = s.changes_since(&u, 3, 10).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [4]);
    assert_eq!(page.latest_seq, 4);
    assert!(s.changes_since(&u, 4, 10).await.unwrap().events.is_empty());

    // Trimming everything keeps the newest event.
    s.trim_log(&u, 1_000).await.unwrap();
    assert_eq!(s.changes_since(&u, 3, 10).await.unwrap().events.len(), 1);
    s.create(&u, &new_node(ROOT_ID, "late", NewKind::Dir), at(50))
        .await
        .unwrap();
    let page = s.changes_since(&u, 3, 10).await.unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [4, 5]
    );
    s.trim_log(&u, i64::MAX).await.unwrap();
    assert_err!(s.changes_since(&u, 3, 10).await, StoreError::CursorTooOld);
    let page = s.changes_since(&u, 4, 10).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [5]);
    assert_eq!(
        s.latest_seq(&u).await.unwrap(),
        5,
        "trimming never rewinds the sequence"
    );

    // A cursor beyond the newest seq belongs to another life of this log: re-list.
    assert_err!(s.changes_since(&u, 99, 10).await, StoreError::CursorTooOld);
    // The next event continues the sequence.
    let (_, ev) = s
        .create(&u, &new_node(ROOT_ID, "later", NewKind::Dir), at(60))
        .await
        .unwrap();
    assert_eq!(ev.seq, 6);
}

// ---- isolation and origin ----

pub async fn users_isolated(s: &dyn MetaStore) {
    let a = new_user(s, "ann").await.id;
    let b = new_user(s, "bob").await.id;
    let ad = dir(s, &a, ROOT_ID, "docs").await;
    let af = file_with(
        s,
        &a,
        ad.id,
        "secret",
        Content {
            inline: None,
            size: 1,
            blocks: vec![hash(1)],
        },
    )
    .await;
    let gone = file(s, &a, ROOT_ID, "gone").await;
    s.remove(&a, gone.id, None, false, at(5)).await.unwrap();
    let bf = file(s, &b, ROOT_ID, "mine").await;
    let a_seq = s.latest_seq(&a).await.unwrap();

    let c = Content::default();
    let attr = SetAttr {
        mode: Some(0o777),
        mtime_ns: None,
    };
    assert_err!(s.get_node(&b, af.id).await, StoreError::NotFound);
    assert_err!(s.get_node(&b, ad.id).await, StoreError::NotFound);
    assert_err!(s.child(&b, ad.id, "secret").await, StoreError::NotFound);
    assert_err!(s.child(&b, ROOT_ID, "docs").await, StoreError::NotFound);
    assert_err!(
        s.list_children(&b, ad.id, None, 10).await,
        StoreError::NotFound
    );
    assert_err!(
        s.create(&b, &new_node(ad.id, "x", NewKind::Dir), at(6))
            .await,
        StoreError::NotFound
    );
    assert_err!(
        s.commit_content(&b, af.id, 1, &c, None, at(6)).await,
        StoreError::NotFound
    );
    assert_err!(
        s.set_attr(&b, af.id, &attr, at(6)).await,
        StoreError::NotFound
    );
    assert_err!(
        s.move_node(&b, af.id, 1, ROOT_ID, "stolen", MoveMode::Replace, at(6))
            .await,
        StoreError::NotFound
    );
    assert_err!(
        s.move_node(&b, bf.id, 1, ad.id, "planted", MoveMode::Replace, at(6))
            .await,
        StoreError::NotFound
    );
    assert_err!(
        s.remove(&b, af.id, None, true, at(6)).await,
        StoreError::NotFound
    );
    assert_err!(
        s.remove(&b, ad.id, None, true, at(6)).await,
        StoreError::NotFound
    );
    assert_err!(s.restore(&b, gone.id, at(6)).await, StoreError::NotFound);

    assert_eq!(names(s, &b, ROOT_ID).await, ["mine"]);
    assert_eq!(names(s, &a, ROOT_ID).await, ["docs"]);
    assert!(s
        .list_trash(&b, None, 1000)
        .await
        .unwrap()
        .entries
        .is_empty());
    assert_eq!(trash_ids(s, &a).await, [gone.id]);
    assert_eq!(s.referenced_blocks(&b).await.unwrap(), [hash(3)]);
    let b_log = all_events(s, &b).await;
    assert_eq!(b_log.len(), 1);
    assert_eq!(b_log[0].node.id, bf.id);
    assert_eq!(
        s.latest_seq(&a).await.unwrap(),
        a_seq,
        "nothing happened to ann"
    );
    assert_eq!(s.get_node(&a, af.id).await.unwrap(), af);
}

pub async fn events_carry_device(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let dev = s.register_device(&u, "laptop", 100).await.unwrap();
    let o = Origin {
        device: Some(dev),
        now_ns: 100,
    };
    let mut written = Vec::new();
    let (f, ev) = s
        .create(
            &u,
            &new_node(
                ROOT_ID,
                "f",
                NewKind::File {
                    content: Content::default(),
                },
            ),
            o,
        )
        .await
        .unwrap();
    written.push(ev);
    let (g, ev) = s
        .create(
            &u,
            &new_node(
                ROOT_ID,
                "g",
                NewKind::File {
                    content: Content::default(),
                },
            ),
            o,
        )
        .await
        .unwrap();
    written.push(ev);
    written.push(
        s.commit_content(&u, f.id, 1, &Content::default(), None, o)
            .await
            .unwrap()
            .1,
    );
    written.push(
        s.set_attr(&u, f.id, &SetAttr::default(), o)
            .await
            .unwrap()
            .1,
    );
    written.extend(
        s.move_node(&u, f.id, 3, ROOT_ID, "g", MoveMode::Replace, o)
            .await
            .unwrap()
            .events,
    );
    written.push(s.remove(&u, f.id, None, false, o).await.unwrap().1);
    written.push(s.restore(&u, g.id, o).await.unwrap().1);
    assert_eq!(written.len(), 8);
    assert!(
        written
            .iter()
            .all(|e| e.device == Some(dev) && e.at_ns == 100),
        "{written:?}"
    );
    assert_eq!(all_events(s, &u).await, written);

    let (_, ev) = s
        .create(&u, &new_node(ROOT_ID, "h", NewKind::Dir), at(101))
        .await
        .unwrap();
    assert_eq!(ev.device, None);
    assert_eq!(all_events(s, &u).await.last().unwrap().device, None);
}

pub async fn referenced_blocks(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let b = new_user(s, "bob").await.id;
    assert!(s.referenced_blocks(&u).await.unwrap().is_empty());
    let c = |hs: &[u32]| Content {
        inline: None,
        size: hs.len() as u64,
        blocks: hs.iter().map(|h| hash(*h)).collect(),
    };
    let f1 = file_with(s, &u, ROOT_ID, "f1", c(&[1, 2])).await;
    file_with(s, &u, ROOT_ID, "f2", c(&[2, 3, 3])).await;
    let f3 = file_with(s, &u, ROOT_ID, "f3", c(&[4])).await;
    dir(s, &u, ROOT_ID, "d").await;
    make(
        s,
        &u,
        ROOT_ID,
        "l",
        NewKind::Symlink {
            target: "f1".into(),
        },
    )
    .await;
    file_with(s, &b, ROOT_ID, "theirs", c(&[9])).await;
    s.remove(&u, f3.id, None, false, at(2)).await.unwrap();
    s.commit_content(&u, f1.id, 1, &c(&[5, 2]), None, at(3))
        .await
        .unwrap();

    let refs = s.referenced_blocks(&u).await.unwrap();
    let set: BTreeSet<String> = refs.iter().cloned().collect();
    assert_eq!(set.len(), refs.len(), "each hash once: {refs:?}");
    for h in [2, 3, 4, 5] {
        assert!(set.contains(&hash(h)), "hash {h} is referenced: {refs:?}");
    }
    assert!(
        !set.contains(&hash(9)),
        "another user's blocks are not listed"
    );
    assert_eq!(s.referenced_blocks(&b).await.unwrap(), [hash(9)]);
}

pub async fn purge_trash_forgets_old_deletions(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let b = new_user(s, "bob").await.id;
    let c = |h: u32| Content {
        inline: None,
        size: 1,
        blocks: vec![hash(h)],
    };
    let old = file_with(s, &u, ROOT_ID, "old", c(1)).await;
    let d = dir(s, &u, ROOT_ID, "d").await;
    file_with(s, &u, d.id, "inside", c(2)).await;
    let recent = file_with(s, &u, ROOT_ID, "recent", c(3)).await;
    let kept = file_with(s, &u, ROOT_ID, "kept", c(4)).await;
    let theirs = file_with(s, &b, ROOT_ID, "theirs", c(5)).await;
    s.remove(&u, old.id, None, false, at(100)).await.unwrap();
    s.remove(&u, d.id, None, true, at(110)).await.unwrap();
    s.remove(&u, recent.id, None, false, at(300)).await.unwrap();
    s.remove(&b, theirs.id, None, false, at(100)).await.unwrap();
    let seq0 = s.latest_seq(&u).await.unwrap();

    assert_eq!(s.purge_trash(&u, 200).await.unwrap(), 2);
    assert_eq!(trash_ids(s, &u).await, [recent.id], "newer trash stays");
    assert_err!(s.restore(&u, old.id, at(400)).await, StoreError::NotFound);
    assert_err!(s.restore(&u, d.id, at(400)).await, StoreError::NotFound);
    let refs: BTreeSet<String> = s.referenced_blocks(&u).await.unwrap().into_iter().collect();
    assert_eq!(
        refs,
        [hash(3), hash(4)].into_iter().collect(),
        "purged content is no longer referenced; live and newer trashed content is"
    );
    assert_eq!(s.get_node(&u, kept.id).await.unwrap(), kept);
    assert_eq!(names(s, &u, ROOT_ID).await, ["kept"]);
    assert_eq!(
        s.latest_seq(&u).await.unwrap(),
        seq0,
        "purging logs nothing"
    );
    assert_eq!(
        trash_ids(s, &b).await,
        [theirs.id],
        "another user's trash stays"
    );

    // Again: nothing left to do. Then a name once trashed is free to reuse and purge again.
    assert_eq!(s.purge_trash(&u, 200).await.unwrap(), 0);
    let again = file_with(s, &u, ROOT_ID, "old", c(6)).await;
    s.remove(&u, again.id, None, false, at(500)).await.unwrap();
    assert_eq!(s.purge_trash(&u, 1000).await.unwrap(), 2);
    assert!(trash_ids(s, &u).await.is_empty());
    assert_eq!(names(s, &u, ROOT_ID).await, ["kept"]);
}

pub async fn versions_keep_replaced_content(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let b = new_user(s, "bob").await.id;
    let c = |h: u32| Content {
        inline: None,
        size: 1,
        blocks: vec![hash(h)],
    };
    let f = file_with(s, &u, ROOT_ID, "f", c(1)).await;
    s.commit_content(&u, f.id, 1, &c(2), Some(5), at(10))
        .await
        .unwrap();
    s.commit_content(&u, f.id, 2, &c(3), Some(6), at(20))
        .await
        .unwrap();
    let versions = s.list_versions(&u, f.id, None, 1000).await.unwrap().entries;
    assert_eq!(
        versions,
        [
            FileVersion {
                version: 2,
                content: c(2),
                mtime_ns: 5,
                replaced_at_ns: 20
            },
            FileVersion {
                version: 1,
                content: c(1),
                mtime_ns: 1,
                replaced_at_ns: 10
            },
        ],
        "newest first, each with the time it was replaced"
    );
    let refs: BTreeSet<String> = s.referenced_blocks(&u).await.unwrap().into_iter().collect();
    assert!(refs.contains(&hash(1)) && refs.contains(&hash(2)) && refs.contains(&hash(3)));

    // Committing the same content again keeps no copy of it.
    let same = s.get_node(&u, f.id).await.unwrap();
    s.commit_content(&u, f.id, same.version, &c(3), None, at(25))
        .await
        .unwrap();
    assert_eq!(
        s.list_versions(&u, f.id, None, 1000)
            .await
            .unwrap()
            .entries
            .len(),
        2
    );

    // Empty content is not kept; directories and other users' files have no versions.
    let e = make(
        s,
        &u,
        ROOT_ID,
        "e",
        NewKind::File {
            content: Content::default(),
        },
    )
    .await;
    s.commit_content(&u, e.id, 1, &c(4), None, at(30))
        .await
        .unwrap();
    assert!(s
        .list_versions(&u, e.id, None, 1000)
        .await
        .unwrap()
        .entries
        .is_empty());
    let d = dir(s, &u, ROOT_ID, "d").await;
    assert_err!(
        s.list_versions(&u, d.id, None, 1000).await,
        StoreError::NotFound
    );
    assert_err!(
        s.list_versions(&b, f.id, None, 1000).await,
        StoreError::NotFound
    );

    // Retention: versions replaced before the cut go.
    assert_eq!(s.purge_versions(&u, 15).await.unwrap(), 1);
    let left: Vec<Version> = s
        .list_versions(&u, f.id, None, 1000)
        .await
        .unwrap()
        .entries
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(
        left,
        [2],
        "version 1 (replaced at 10) goes, version 2 (at 20) stays"
    );
    assert!(!s.referenced_blocks(&u).await.unwrap().contains(&hash(1)));

    // At most MAX_VERSIONS per file: the oldest go first.
    let g = file_with(s, &u, ROOT_ID, "g", c(100)).await;
    let mut base = g.version;
    for k in 0..(MAX_VERSIONS as u32 + 2) {
        base = s
            .commit_content(&u, g.id, base, &c(101 + k), None, at(100 + k as i64))
            .await
            .unwrap()
            .0
            .version;
    }
    assert_eq!(s.purge_versions(&u, 0).await.unwrap(), 2);
    let kept = s.list_versions(&u, g.id, None, 1000).await.unwrap().entries;
    assert_eq!(kept.len(), MAX_VERSIONS);
    assert_eq!(kept[0].version, base - 1, "the newest is kept");
    assert_eq!(kept[MAX_VERSIONS - 1].version, base - MAX_VERSIONS as u64);

    // Purging a file's trash entry takes its versions along.
    s.remove(&u, f.id, None, false, at(500)).await.unwrap();
    assert_eq!(s.purge_trash(&u, 1000).await.unwrap(), 1);
    assert!(!s.referenced_blocks(&u).await.unwrap().contains(&hash(2)));
}

pub async fn concurrent_reads_and_writes(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let d = dir(s, &u, ROOT_ID, "d").await;
    for i in 0..20 {
        file(s, &u, d.id, &format!("r{i:02}")).await;
    }
    let seq0 = s.latest_seq(&u).await.unwrap();
    let (u, did) = (&u, d.id);
    let reads = (0..64).map(|i| async move {
        match i % 3 {
            0 => s.get_node(u, did).await.map(|n| n.id == did),
            1 => s
                .child(u, did, &format!("r{:02}", i % 20))
                .await
                .map(|n| n.parent == did),
            _ => s.list_children(u, did, None, 5).await.map(|l| l.len() == 5),
        }
    });
    let writes = (0..16).map(|i| async move {
        s.create(
            u,
            &new_node(ROOT_ID, &format!("w{i:02}"), NewKind::Dir),
            at(100 + i),
        )
        .await
    });
    let (reads, writes) = futures::future::join(
        futures::future::join_all(reads),
        futures::future::join_all(writes),
    )
    .await;
    for r in reads {
        assert!(r.expect("read"), "a read saw a wrong answer");
    }
    let mut seqs: Vec<u64> = writes
        .into_iter()
        .map(|w| w.expect("write").1.seq)
        .collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (seq0 + 1..=seq0 + 16).collect::<Vec<_>>(),
        "each write its own seq"
    );
    let page = s.changes_since(u, seq0, 100).await.unwrap();
    assert_eq!(page.events.len(), 16);
    assert!(page.events.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    assert_eq!(names(s, u, ROOT_ID).await.len(), 17);
}

/// A file whose block list makes its node about `blocks * 67` bytes of JSON (every engine
/// stores 4000 blocks: DynamoDB's items hold up to ~5000).
fn big_content(blocks: usize) -> Content {
    Content {
        inline: None,
        size: blocks as u64 * jewel_wire::BLOCK_SIZE,
        blocks: vec![hash(7); blocks],
    }
}

/// Every listing, the trash, a file's versions and the change log are cut in bytes, not
/// only in count: five nodes of ~270 KB each never come in one page, every page stays within
/// `MAX_PAGE_BYTES` plus one entry, and following the pages gives every entry exactly once.
pub async fn pages_are_bounded_in_bytes(s: &dyn MetaStore) {
    use super::{json_len, Page, TrashCursor, MAX_PAGE_BYTES};
    let u = new_user(s, "ann").await.id;
    let d = dir(s, &u, ROOT_ID, "d").await;
    let big = big_content(4000);
    let mut files = Vec::new();
    for i in 0..5 {
        let kind = NewKind::File {
            content: big.clone(),
        };
        files.push(make(s, &u, d.id, &format!("f{i}"), kind).await);
    }
    let entry = json_len(&files[0]);
    assert!(entry > 250_000, "{entry}");
    let bounded = |bytes: usize, what: &str| {
        assert!(
            bytes < MAX_PAGE_BYTES + entry + 1000,
            "{what}: a page of {bytes} bytes"
        );
    };
    fn bytes<T: serde::Serialize>(page: &Page<T>) -> usize {
        page.entries.iter().map(json_len).sum()
    }

    // Children.
    let (mut after, mut seen, mut pages) = (None::<String>, Vec::new(), 0);
    loop {
        let page = s
            .list_children(&u, d.id, after.as_deref(), 1000)
            .await
            .unwrap();
        bounded(bytes(&page), "children");
        assert!(!page.is_empty(), "a page always moves on");
        pages += 1;
        seen.extend(page.entries.iter().map(|n| n.name.clone()));
        if !page.more {
            break;
        }
        after = page.entries.last().map(|n| n.name.clone());
    }
    assert_eq!(seen, ["f0", "f1", "f2", "f3", "f4"]);
    assert!(pages >= 2, "five big nodes came in {pages} page(s)");
    // The count still cuts too, and says so.
    let two = s.list_children(&u, d.id, None, 2).await.unwrap();
    assert!(two.len() <= 2 && two.more);

    // Versions: four earlier contents of one file.
    let f = &files[0];
    let mut version = f.version;
    for i in 0..4 {
        let mut c = big.clone();
        c.blocks[0] = hash(100 + i);
        version = s
            .commit_content(&u, f.id, version, &c, None, at(10 + i as i64))
            .await
            .unwrap()
            .0
            .version;
    }
    let (mut before, mut got) = (None, Vec::new());
    loop {
        let page = s.list_versions(&u, f.id, before, 1000).await.unwrap();
        bounded(bytes(&page), "versions");
        assert!(!page.is_empty());
        got.extend(page.entries.iter().map(|v| v.version));
        if !page.more {
            break;
        }
        before = page.entries.last().map(|v| v.version);
    }
    assert_eq!(got.len(), 4);
    assert!(got.windows(2).all(|w| w[0] > w[1]), "newest first: {got:?}");

    // Trash.
    for (i, f) in files.iter().enumerate() {
        s.remove(&u, f.id, None, false, at(100 + i as i64))
            .await
            .unwrap();
    }
    let (mut after, mut trashed, mut pages) = (None, Vec::new(), 0);
    loop {
        let page = s.list_trash(&u, after, 1000).await.unwrap();
        bounded(bytes(&page), "trash");
        assert!(!page.is_empty());
        pages += 1;
        trashed.extend(page.entries.iter().map(|e| e.node.name.clone()));
        if !page.more {
            break;
        }
        after = page.entries.last().map(TrashCursor::of);
    }
    assert_eq!(trashed, ["f4", "f3", "f2", "f1", "f0"], "newest first");
    assert!(pages >= 2);
    let one = s.list_trash(&u, None, 1).await.unwrap();
    assert!(one.len() == 1 && one.more);
    let rest = s
        .list_trash(&u, Some(TrashCursor::of(&one.entries[0])), 1000)
        .await
        .unwrap();
    assert_eq!(rest.entries[0].node.name, "f3");

    // The change log: every event once, in order, each page bounded.
    let latest = s.latest_seq(&u).await.unwrap();
    let (mut cursor, mut pages) = (0, 0);
    while cursor < latest {
        let page = s.changes_since(&u, cursor, 1000).await.unwrap();
        let b: usize = page.events.iter().map(json_len).sum();
        bounded(b, "changes");
        assert!(!page.events.is_empty());
        for e in &page.events {
            assert_eq!(e.seq, cursor + 1);
            cursor = e.seq;
        }
        pages += 1;
    }
    assert!(
        pages >= 2,
        "{latest} events of big nodes came in {pages} page(s)"
    );
}

/// A user has at most the given number of devices; forgetting them frees the slots.
pub async fn devices_are_capped_and_forgotten(s: &dyn MetaStore) {
    let ann = new_user(s, "ann").await.id;
    let bob = new_user(s, "bob").await.id;
    for i in 0..3 {
        s.register_device(&ann, &format!("d{i}"), 3).await.unwrap();
    }
    assert_err!(
        s.register_device(&ann, "one more", 3).await,
        StoreError::TooManyDevices(3)
    );
    assert_eq!(s.devices(&ann).await.unwrap().len(), 3, "nothing changed");
    // Another user's slots are their own.
    s.register_device(&bob, "laptop", 3).await.unwrap();
    assert_eq!(s.remove_devices(&ann).await.unwrap(), 3);
    assert!(s.devices(&ann).await.unwrap().is_empty());
    assert_eq!(s.devices(&bob).await.unwrap().len(), 1, "bob keeps his");
    s.register_device(&ann, "again", 3).await.unwrap();
}

/// A registration whose answer was lost is sent again with the same key: it finds the device
/// the first one made (also when the user is at the cap), never a second one that would be
/// sent every change for nothing. Keys are per user, and leave with their device.
pub async fn a_registration_retried_with_its_key_is_one_device(s: &dyn MetaStore) {
    let ann = new_user(s, "ann").await.id;
    let bob = new_user(s, "bob").await.id;
    let key = "k-0123456789abcdef";
    let (first, created) = s
        .register_device_keyed(&ann, "laptop", 2, key)
        .await
        .unwrap();
    assert!(created);
    let (again, created) = s
        .register_device_keyed(&ann, "laptop", 2, key)
        .await
        .unwrap();
    assert_eq!(
        (again, created),
        (first, false),
        "the retry finds the device"
    );
    assert_eq!(s.devices(&ann).await.unwrap().len(), 1);
    assert_eq!(s.device(&ann, first).await.unwrap(), "laptop");
    // Another key is another device; at the cap, a retry still finds its device.
    let (phone, _) = s
        .register_device_keyed(&ann, "phone", 2, "k-fedcba9876543210")
        .await
        .unwrap();
    assert_ne!(phone, first);
    assert_eq!(
        s.register_device_keyed(&ann, "laptop", 2, key)
            .await
            .unwrap(),
        (first, false)
    );
    assert_err!(
        s.register_device_keyed(&ann, "third", 2, "k-another-machine-1")
            .await,
        StoreError::TooManyDevices(2)
    );
    // Bob's key space is his own.
    let (bobs, created) = s
        .register_device_keyed(&bob, "laptop", 2, key)
        .await
        .unwrap();
    assert!(created);
    assert_ne!(bobs, first);
    // The key leaves with its device: unlinked, the same key registers a new device.
    s.remove_device(&ann, first).await.unwrap();
    let (fresh, created) = s
        .register_device_keyed(&ann, "laptop", 2, key)
        .await
        .unwrap();
    assert!(created);
    assert_ne!(fresh, first);
    // And with every device forgotten.
    assert_eq!(s.remove_devices(&ann).await.unwrap(), 2);
    let (last, created) = s
        .register_device_keyed(&ann, "laptop", 2, key)
        .await
        .unwrap();
    assert!(created && last != fresh);
    assert_eq!(s.devices(&ann).await.unwrap().len(), 1);
}

/// Removing a user takes its earlier versions too (they name blocks: the collector must not
/// keep them alive, and nothing of the user may stay behind).
pub async fn removed_user_leaves_no_versions(s: &dyn MetaStore) {
    let ann = new_user(s, "ann").await.id;
    let f = file(s, &ann, ROOT_ID, "f").await;
    let c = Content {
        inline: None,
        size: 3,
        blocks: vec![hash(99)],
    };
    s.commit_content(&ann, f.id, f.version, &c, None, at(5))
        .await
        .unwrap();
    assert!(s.user_exists(&ann).await.unwrap());
    assert!(s.referenced_blocks(&ann).await.unwrap().contains(&hash(3)));
    s.remove_user("ann").await.unwrap();
    assert!(!s.user_exists(&ann).await.unwrap());
    assert!(
        s.referenced_blocks(&ann).await.unwrap().is_empty(),
        "the removed user's versions still name blocks"
    );
}

/// A machine waits behind a code with the hash of the token it drew; approving it makes a
/// device holding that token, which names the device and its user; unlinking revokes it.
pub async fn devices_link_with_their_own_tokens(s: &dyn MetaStore) {
    use crate::store::PendingLink;
    let ann = new_user(s, "ann").await;
    let bob = new_user(s, "bob").await;
    let link = |code: &str, hash: &str, exp: i64| PendingLink {
        code: code.into(),
        token_hash: hash.into(),
        name: "laptop".into(),
        expires_at_ns: exp,
    };
    // The account's token names no device.
    let owner = s.token_owner("hash-of-ann").await.unwrap().unwrap();
    assert_eq!(
        (owner.user.id.clone(), owner.device),
        (ann.id.clone(), None)
    );
    assert_eq!(s.token_owner("dev-hash").await.unwrap(), None);

    s.create_link(&link("AAAA-BBBB", "dev-hash", 1000), 10, 3)
        .await
        .unwrap();
    assert_err!(
        s.create_link(&link("AAAA-BBBB", "other", 1000), 10, 3)
            .await,
        StoreError::LinkCodeTaken
    );
    assert_err!(
        s.create_link(&link("CCCC-DDDD", "hash-of-bob", 1000), 10, 3)
            .await,
        StoreError::TokenInUse
    );
    assert_eq!(s.link("AAAA-BBBB", 10).await.unwrap().name, "laptop");
    assert_err!(s.link("AAAA-BBBB", 1000).await, StoreError::UnknownLink);
    assert_err!(s.link("ZZZZ-ZZZZ", 10).await, StoreError::UnknownLink);
    assert_eq!(
        s.token_owner("dev-hash").await.unwrap(),
        None,
        "a waiting machine's token works for nothing"
    );
    // Expired codes cannot be approved, and free their place.
    s.create_link(&link("EEEE-FFFF", "h2", 20), 10, 3)
        .await
        .unwrap();
    s.create_link(&link("GGGG-HHHH", "h3", 20), 10, 3)
        .await
        .unwrap();
    assert_err!(
        s.create_link(&link("JJJJ-KKKK", "h4", 1000), 10, 3).await,
        StoreError::TooManyLinks(3)
    );
    assert_err!(
        s.approve_link(&ann.id, "EEEE-FFFF", 100, 25).await,
        StoreError::UnknownLink
    );
    s.create_link(&link("JJJJ-KKKK", "h4", 1000), 25, 3)
        .await
        .unwrap();

    let dev = s.approve_link(&ann.id, "AAAA-BBBB", 100, 30).await.unwrap();
    assert!(dev < (1 << 53));
    assert_err!(
        s.approve_link(&bob.id, "AAAA-BBBB", 100, 31).await,
        StoreError::UnknownLink
    );
    let owner = s.token_owner("dev-hash").await.unwrap().unwrap();
    assert_eq!((owner.user, owner.device), (ann.clone(), Some(dev)));
    assert_eq!(s.device(&ann.id, dev).await.unwrap(), "laptop");
    let listed = s.devices(&ann.id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].linked && listed[0].created_at_ns == 30);
    s.touch_device(&ann.id, dev, 90).await.unwrap();
    assert_eq!(s.devices(&ann.id).await.unwrap()[0].last_seen_ns, 90);
    assert_eq!(
        s.token_owner("dev-hash")
            .await
            .unwrap()
            .unwrap()
            .last_seen_ns,
        90
    );
    // A full account links nothing more, and the code stays for later.
    assert_err!(
        s.approve_link(&bob.id, "JJJJ-KKKK", 0, 31).await,
        StoreError::TooManyDevices(0)
    );
    assert!(s.link("JJJJ-KKKK", 31).await.is_ok());

    // Unlinking: another user's device is unknown; the owner's goes with its token.
    assert_err!(
        s.remove_device(&bob.id, dev).await,
        StoreError::UnknownDevice
    );
    s.remove_device(&ann.id, dev).await.unwrap();
    assert_eq!(s.token_owner("dev-hash").await.unwrap(), None, "revoked");
    assert_err!(s.device(&ann.id, dev).await, StoreError::UnknownDevice);
    assert_err!(
        s.remove_device(&ann.id, dev).await,
        StoreError::UnknownDevice
    );
    s.touch_device(&ann.id, dev, 99).await.unwrap();
    assert!(
        s.devices(&ann.id).await.unwrap().is_empty(),
        "a touch makes no device"
    );

    // Forgetting all devices, or the user, revokes their tokens too.
    let d4 = s.approve_link(&ann.id, "JJJJ-KKKK", 100, 40).await.unwrap();
    assert_eq!(s.token_owner("h4").await.unwrap().unwrap().device, Some(d4));
    assert_eq!(s.remove_devices(&ann.id).await.unwrap(), 1);
    assert_eq!(s.token_owner("h4").await.unwrap(), None);
    s.create_link(&link("LLLL-MMMM", "h5", 1000), 40, 3)
        .await
        .unwrap();
    s.approve_link(&bob.id, "LLLL-MMMM", 100, 41).await.unwrap();
    s.remove_user("bob").await.unwrap();
    assert_eq!(s.token_owner("h5").await.unwrap(), None);
    assert_eq!(
        s.token_owner("hash-of-ann").await.unwrap().unwrap().user,
        ann
    );
}

/// A small file's inline block: the engine keeps it (every engine does: a small file then
/// costs no block store request) from the change that names it (a create, a commit, a
/// batch) for as long as a live or trashed file or a kept version names it, to that user
/// only; collecting forgets it once nothing does.
pub async fn small_blocks_kept_with_their_nodes(s: &dyn MetaStore) {
    use jewel_wire::InlineBytes;
    let u = new_user(s, "ann").await.id;
    let b = new_user(s, "bob").await.id;
    let small = |bytes: &[u8]| Content {
        inline: Some(InlineBytes(bytes.to_vec())),
        size: bytes.len() as u64,
        blocks: vec![crate::blobs::sha256_hex(bytes)],
    };
    let (one, two, three) = (small(b"one"), small(b"two"), small(b"three"));
    let h = |c: &Content| c.blocks[0].clone();
    let held = |user: UserId| {
        let all = [h(&one), h(&two), h(&three)];
        async move { s.small_blocks_held(&user, &all).await.unwrap() }
    };
    let f = file_with(s, &u, ROOT_ID, "f", one.clone()).await;
    assert!(s.keeps_small_blocks());
    assert_eq!(
        s.small_block(&u, &h(&one)).await.unwrap().as_deref(),
        Some(&b"one"[..])
    );
    assert_eq!(
        s.small_block(&b, &h(&one)).await.unwrap(),
        None,
        "ann's only"
    );
    // A commit keeps the replaced content as a version; a batch stores its blocks too.
    s.commit_content(&u, f.id, f.version, &two, None, at(2))
        .await
        .unwrap();
    let g = new_node(
        ROOT_ID,
        "g",
        NewKind::File {
            content: three.clone(),
        },
    );
    let done = s
        .apply_batch(&u, vec![BatchOp::Create(g)], at(3))
        .await
        .unwrap();
    assert!(done.failed.is_none(), "{:?}", done.failed);
    let g = done.applied[0].0.clone();
    assert_eq!(held(u.clone()).await, [h(&one), h(&two), h(&three)]);
    assert!(held(b.clone()).await.is_empty());
    assert_eq!(s.collect_small_blocks(&u).await.unwrap(), 0, "all named");

    // g trashed: still named (restorable). Its trash purged: only its block goes.
    s.remove(&u, g.id, None, false, at(4)).await.unwrap();
    assert_eq!(
        s.collect_small_blocks(&u).await.unwrap(),
        0,
        "trash names it"
    );
    assert_eq!(s.purge_trash(&u, 5).await.unwrap(), 1);
    assert_eq!(s.collect_small_blocks(&u).await.unwrap(), 1);
    assert_eq!(held(u.clone()).await, [h(&one), h(&two)]);
    assert_eq!(s.small_block(&u, &h(&three)).await.unwrap(), None);
    // The version of "one" forgotten: its block goes; the live file's stays, readable.
    assert_eq!(s.purge_versions(&u, 10).await.unwrap(), 1);
    assert_eq!(s.collect_small_blocks(&u).await.unwrap(), 1);
    assert_eq!(held(u.clone()).await, [h(&two)]);
    assert_eq!(
        s.small_block(&u, &h(&two)).await.unwrap().as_deref(),
        Some(&b"two"[..])
    );
    // A block named again after it went is stored again by the change that names it.
    file_with(s, &u, ROOT_ID, "again", three.clone()).await;
    assert_eq!(held(u.clone()).await, [h(&two), h(&three)]);
    // Bytes that are not the block the content names are refused, and nothing is kept.
    let lie = Content {
        blocks: vec![hash(7)],
        ..one.clone()
    };
    assert!(s
        .create(
            &u,
            &new_node(ROOT_ID, "lie", NewKind::File { content: lie }),
            at(6)
        )
        .await
        .is_err());
    assert_eq!(s.small_block(&u, &hash(7)).await.unwrap(), None);
    assert_eq!(names(s, &u, ROOT_ID).await, ["again", "f"]);
    s.remove_user("ann").await.unwrap();
    assert!(
        held(u.clone()).await.is_empty(),
        "a removed user's blocks go"
    );
}

/// What a user reads back of a small file after it changed stays readable, and collecting
/// never takes a block something still names: an overwritten content (a version), a file
/// deleted and restored, one block named by two files after one of them is purged.
pub async fn small_blocks_stay_while_named(s: &dyn MetaStore) {
    use jewel_wire::InlineBytes;
    let u = new_user(s, "ann").await.id;
    let small = |bytes: &[u8]| Content {
        inline: Some(InlineBytes(bytes.to_vec())),
        size: bytes.len() as u64,
        blocks: vec![crate::blobs::sha256_hex(bytes)],
    };
    let read = |hash: String| {
        let u = u.clone();
        async move { s.small_block(&u, &hash).await.unwrap() }
    };
    let (one, two, three) = (small(b"first draft"), small(b"second"), small(b"shared"));

    // Overwritten: the version names the first content, which reads back whole.
    let f = file_with(s, &u, ROOT_ID, "f", one.clone()).await;
    s.commit_content(&u, f.id, f.version, &two, None, at(2))
        .await
        .unwrap();
    assert_eq!(s.collect_small_blocks(&u).await.unwrap(), 0);
    let versions = s.list_versions(&u, f.id, None, 10).await.unwrap().entries;
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].content.blocks, one.blocks);
    assert_eq!(
        read(versions[0].content.blocks[0].clone()).await.as_deref(),
        Some(&b"first draft"[..])
    );

    // Deleted, collected, restored: the restored file's content is there.
    let g = file_with(s, &u, ROOT_ID, "g", three.clone()).await;
    s.remove(&u, g.id, None, false, at(3)).await.unwrap();
    assert_eq!(s.collect_small_blocks(&u).await.unwrap(), 0);
    let (back, _) = s.restore(&u, g.id, at(4)).await.unwrap();
    assert_eq!(back.blocks, three.blocks);
    assert_eq!(
        read(first_block(&three)).await.as_deref(),
        Some(&b"shared"[..])
    );

    // The same bytes in two files: purging one leaves the other's content.
    let copy = file_with(s, &u, ROOT_ID, "copy", three.clone()).await;
    s.remove(&u, g.id, None, false, at(5)).await.unwrap();
    assert_eq!(s.purge_trash(&u, 6).await.unwrap(), 1);
    assert_eq!(
        s.collect_small_blocks(&u).await.unwrap(),
        0,
        "copy names it"
    );
    assert_eq!(
        read(first_block(&three)).await.as_deref(),
        Some(&b"shared"[..])
    );
    // Once nothing names it, it goes; the live file's content stays.
    s.remove(&u, copy.id, None, false, at(7)).await.unwrap();
    assert_eq!(s.purge_trash(&u, 8).await.unwrap(), 1);
    assert_eq!(s.collect_small_blocks(&u).await.unwrap(), 1);
    assert_eq!(read(first_block(&three)).await, None);
    assert_eq!(
        read(two.blocks[0].clone()).await.as_deref(),
        Some(&b"second"[..])
    );
}

fn first_block(c: &Content) -> String {
    c.blocks[0].clone()
}

/// A device's page holds every change in the folders it watches — a node in one, moved into
/// or out of one, a watched folder itself renamed — from the moment it watched them, and
/// nothing else; `through` says how far the page covers, and paging by it misses nothing.
/// An engine that keeps no watches sends every event, without `through`.
pub async fn a_device_hears_the_folders_it_listed(s: &dyn MetaStore) {
    let u = new_user(s, "ann").await.id;
    let other = new_user(s, "bob").await.id;
    let dev = s.register_device(&u, "laptop", 10).await.unwrap();
    let (seen, unseen) = (
        dir(s, &u, ROOT_ID, "seen").await,
        dir(s, &u, ROOT_ID, "unseen").await,
    );
    let before = file(s, &u, seen.id, "before").await; // older than the watch
    s.watch_folder(&u, dev, seen.id).await.unwrap();
    s.watch_folder(&u, dev, seen.id).await.unwrap(); // again: keeps its start
    let start = s.latest_seq(&u).await.unwrap();
    let inside = file(s, &u, seen.id, "inside").await;
    let outside = file(s, &u, unseen.id, "outside").await;
    s.move_node(
        &u,
        outside.id,
        1,
        seen.id,
        "came",
        MoveMode::NoReplace,
        at(3),
    )
    .await
    .unwrap();
    s.move_node(
        &u,
        before.id,
        1,
        unseen.id,
        "went",
        MoveMode::NoReplace,
        at(4),
    )
    .await
    .unwrap();
    file(s, &u, unseen.id, "elsewhere").await;
    s.move_node(&u, seen.id, 1, ROOT_ID, "seen2", MoveMode::NoReplace, at(5))
        .await
        .unwrap();
    let bobs = dir(s, &other, ROOT_ID, "bobs").await;
    file(s, &other, bobs.id, "b").await;
    let latest = s.latest_seq(&u).await.unwrap();
    let page = s.changes_for_device(&u, dev, start, 1000).await.unwrap();
    let got: Vec<NodeId> = page.events.iter().map(|e| e.node.id).collect();
    assert_eq!(page.latest_seq, latest);
    let Some(through) = page.through else {
        // Every event, as `changes_since` sends them.
        assert_eq!(
            page.events.len() as u64,
            latest - start,
            "every event: {got:?}"
        );
        return;
    };
    assert_eq!(through, latest);
    assert_eq!(
        got,
        vec![inside.id, outside.id, before.id, seen.id],
        "the new file, the one moved in, the one moved out, the folder renamed"
    );
    // Paged one event at a time by `through`: the same events, the cursor at the end.
    let mut cursor = start;
    let mut paged = Vec::new();
    while cursor < latest {
        let page = s.changes_for_device(&u, dev, cursor, 1).await.unwrap();
        assert!(page.events.len() <= 1);
        paged.extend(page.events.iter().map(|e| e.node.id));
        let next = page.through.unwrap();
        assert!(next > cursor, "a page moves the cursor");
        cursor = next;
    }
    assert_eq!(paged, got);
    // From before the watch: what was older than it is not sent (a listing read after
    // watching shows it).
    let page = s.changes_for_device(&u, dev, 0, 1000).await.unwrap();
    assert_eq!(
        page.events.len(),
        got.len(),
        "nothing from before the watch"
    );
    // Another device, watching nothing, hears nothing, and still moves to the end.
    let quiet = s.register_device(&u, "phone", 10).await.unwrap();
    let page = s.changes_for_device(&u, quiet, 0, 1000).await.unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.through, Some(latest));
    assert_eq!(s.watched_folders(&u, quiet).await.unwrap(), Some(vec![]));
    assert_eq!(
        s.watched_folders(&u, dev).await.unwrap(),
        Some(vec![seen.id])
    );
    // A folder a device makes is watched by that device from its birth (it shows it listed).
    let made = s
        .create(
            &u,
            &new_node(ROOT_ID, "made", NewKind::Dir),
            Origin {
                device: Some(quiet),
                now_ns: 6,
            },
        )
        .await
        .unwrap()
        .0;
    let born = s.latest_seq(&u).await.unwrap();
    let child = file(s, &u, made.id, "child").await;
    let page = s.changes_for_device(&u, quiet, born, 1000).await.unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.node.id).collect::<Vec<_>>(),
        vec![child.id]
    );
    // An unlinked device's watches go with it.
    s.remove_device(&u, dev).await.unwrap();
    assert_eq!(s.watched_folders(&u, dev).await.unwrap(), Some(vec![]));
}
