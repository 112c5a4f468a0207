//! Earlier versions from the terminal: `jewelfs versions FILE` and `jewelfs restore-version
//! FILE VERSION` on a file in a real mount, against a real server — what a user types after
//! saving over the wrong thing. The restored content shows in this mount and in a second one
//! (another machine), and the restore is itself undoable.

use std::process::{Command, Output};
use std::time::Duration;

use integration_tests::{bin, wait_content, Mount, Server};
use jewel_wire::FileVersion;

const SYNC: Duration = Duration::from_secs(20);

fn jewelfs(args: &[&str], token: &str) -> Output {
    Command::new(bin("jewelfs"))
        .args(args)
        .env("JEWEL_TOKEN", token)
        .output()
        .expect("run jewelfs")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "jewelfs failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn versions(path: &std::path::Path, token: &str) -> Vec<FileVersion> {
    let out = ok(jewelfs(
        &["versions", path.to_str().unwrap(), "--json"],
        token,
    ));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn versions_are_listed_and_restored_from_the_terminal() {
    let server = Server::start();
    let token = server.add_user("terry");
    let laptop = Mount::new(&server, &token, "laptop");
    let desktop = Mount::new(&server, &token, "desktop");
    let file = laptop.p("essay.txt");

    std::fs::write(&file, b"the good paragraph").unwrap();
    laptop.wait_uploaded(SYNC);
    assert!(
        versions(&file, &token).is_empty(),
        "a new file has no earlier versions"
    );
    std::fs::write(&file, b"saved over by mistake").unwrap();
    laptop.wait_uploaded(SYNC);
    wait_content(&desktop.p("essay.txt"), b"saved over by mistake", SYNC);

    let kept = versions(&file, &token);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].content.size, b"the good paragraph".len() as u64);
    let table = ok(jewelfs(&["versions", file.to_str().unwrap()], &token));
    assert!(
        table.contains(&kept[0].version.to_string()) && table.contains("restore-version"),
        "{table}"
    );

    let v = kept[0].version.to_string();
    ok(jewelfs(
        &["restore-version", file.to_str().unwrap(), &v],
        &token,
    ));
    wait_content(&file, b"the good paragraph", SYNC);
    wait_content(&desktop.p("essay.txt"), b"the good paragraph", SYNC);
    // What the restore replaced is kept in turn.
    let after = versions(&file, &token);
    assert_eq!(after.len(), 2);
    assert_eq!(after[0].content.size, b"saved over by mistake".len() as u64);

    // Clear refusals: a version that is not kept, a folder, a path outside any drive, no token.
    let bad = jewelfs(&["restore-version", file.to_str().unwrap(), "999"], &token);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no kept version 999"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    std::fs::create_dir(laptop.p("folder")).unwrap();
    laptop.wait_uploaded(SYNC);
    let dir = jewelfs(&["versions", laptop.p("folder").to_str().unwrap()], &token);
    assert!(String::from_utf8_lossy(&dir.stderr).contains("not a file"));
    let outside = jewelfs(&["versions", "/etc/hostname"], &token);
    assert!(String::from_utf8_lossy(&outside.stderr).contains("not inside a mounted JewelFS drive"));
    let no_token = Command::new(bin("jewelfs"))
        .args(["versions", file.to_str().unwrap()])
        .env_remove("JEWEL_TOKEN")
        .env("XDG_CONFIG_HOME", laptop.cache_dir())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("no token"));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"the good paragraph",
        "nothing changed"
    );
}
