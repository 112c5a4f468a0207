//! Client memory with a big tree: how much a `jewelfs` mount holds once it knows 100,000 files
//! (issue 3's target: under 100 MiB idle).
//!
//! The tree is made through the API (empty files need no blocks, so this measures the
//! metadata path, not block transfer): `dirs` folders of `per_dir` files each. A fresh mount
//! then lists every folder and stats every file through the kernel (`ls -lR` by hand), so every
//! node has been fetched, cached and handed to the kernel; its resident memory is read right
//! after, and again once the mount has been idle for a moment (caches settled, the listener
//! waiting).

use std::path::Path;
use std::time::{Duration, Instant};

use jewel_wire::{Content, CreateNode, NewKind, Node, ROOT_ID};

use crate::env::{progress, BenchServer, FuseClient};

/// What [`client_with_big_tree`] measured.
pub struct BigTree {
    pub files: usize,
    pub dirs: usize,
    /// Wall time to create the tree through the API (creates are sent 4 at a time).
    pub create_s: f64,
    /// A fresh mount listing every folder and stating every file, cold.
    pub walk_cold_s: f64,
    /// The same walk again, warm.
    pub walk_warm_s: f64,
    /// Client resident memory right after mounting, after the walks, and idle after that.
    pub rss_mounted: u64,
    pub rss_walked: u64,
    pub rss_idle: u64,
}

fn create(http: &reqwest::blocking::Client, url: &str, token: &str, req: &CreateNode) -> Node {
    let resp = http
        .post(format!("{url}/api/v1/nodes"))
        .bearer_auth(token)
        .json(req)
        .send()
        .expect("create request");
    assert!(resp.status().is_success(), "create: {}", resp.status());
    resp.json().expect("created node")
}

/// Makes `dirs` × `per_dir` empty files for a new user, mounts, walks, and measures.
pub fn client_with_big_tree(work: &Path, dirs: usize, per_dir: usize) -> BigTree {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).expect("bench scratch folder");
    let server = BenchServer::start(&work.join("server"), "memory");
    let token = server.add_users("big", 1).remove(0);
    let url = server.url.clone();

    progress(&format!(
        "client memory: creating {} files in {dirs} folders through the API",
        dirs * per_dir
    ));
    let t = Instant::now();
    let http = reqwest::blocking::Client::new();
    let folders: Vec<Node> = (0..dirs)
        .map(|d| {
            let req = CreateNode {
                parent: ROOT_ID,
                name: format!("folder-{d:03}"),
                kind: NewKind::Dir,
                mode: None,
                mtime_ns: None,
            };
            create(&http, &url, &token, &req)
        })
        .collect();
    std::thread::scope(|s| {
        for part in folders.chunks(dirs.div_ceil(4).max(1)) {
            let (http, url, token) = (http.clone(), url.as_str(), token.as_str());
            s.spawn(move || {
                for folder in part {
                    for f in 0..per_dir {
                        let req = CreateNode {
                            parent: folder.id,
                            name: format!("file-{f:04}.txt"),
                            kind: NewKind::File {
                                content: Content::default(),
                            },
                            mode: None,
                            mtime_ns: None,
                        };
                        create(&http, url, token, &req);
                    }
                }
            });
        }
    });
    let create_s = t.elapsed().as_secs_f64();

    let client = FuseClient::mount(&work.join("client"), &url, &token, "big-tree");
    let rss_mounted = client.rss();
    let walk = || {
        let t = Instant::now();
        let mut seen = 0;
        for folder in std::fs::read_dir(&client.mnt).expect("list the mount root") {
            let folder = folder.expect("root entry").path();
            for file in std::fs::read_dir(&folder).expect("list a folder") {
                let file = file.expect("folder entry").path();
                std::fs::symlink_metadata(&file).expect("stat a file");
                seen += 1;
            }
        }
        assert_eq!(seen, dirs * per_dir, "every file is listed by the mount");
        t.elapsed().as_secs_f64()
    };
    progress("client memory: walking the tree through the mount");
    let walk_cold_s = walk();
    let walk_warm_s = walk();
    let rss_walked = client.rss();
    // Idle: no requests of ours for a few seconds; the listener keeps its long-poll open.
    std::thread::sleep(Duration::from_secs(3));
    let rss_idle = client.rss();
    BigTree {
        files: dirs * per_dir,
        dirs,
        create_s,
        walk_cold_s,
        walk_warm_s,
        rss_mounted,
        rss_walked,
        rss_idle,
    }
}
