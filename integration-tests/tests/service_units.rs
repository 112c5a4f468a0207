//! The systemd units: the user unit `jewelfs service install` writes (mounts `~/Jewel` at
//! login) and the server's system unit in `docs/`. Both must pass `systemd-analyze verify`
//! with no complaint (it checks keys, values and that each command exists), and the user
//! unit's command must mount with nothing but the config file: no token on a command line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use integration_tests::*;

/// A private home for `jewelfs service` (config, units, the mountpoint) whose `systemctl
/// --user` reaches no user manager: the test never touches the real one.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new(server: &Server, token: &str) -> Home {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join(".config/jewel");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        std::fs::write(
            config.join("config.toml"),
            format!("server = \"{}\"\ntoken = \"{token}\"\n", server.url),
        )
        .unwrap();
        // As the README says to keep it: readable by its user only.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            config.join("config.toml"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        Home { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("HOME", self.path())
            .env("XDG_CONFIG_HOME", self.path().join(".config"))
            .env("XDG_RUNTIME_DIR", self.path().join("run"))
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env_remove("JEWEL_TOKEN")
            .env_remove("JEWEL_SERVER");
        cmd
    }

    fn unit(&self) -> PathBuf {
        self.path().join(".config/systemd/user/jewelfs.service")
    }
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `systemd-analyze [--user] verify UNIT`: must succeed and say nothing (a warning about an
/// unknown key or a bad value is a failure here).
fn verify(home: &Home, user: bool, unit: &Path) {
    let mut cmd = home.cmd("systemd-analyze");
    if user {
        cmd.arg("--user");
    }
    let out = cmd.arg("verify").arg(unit).output().expect(
        "run systemd-analyze (Debian package systemd; `make setup` installs it when missing)",
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {} ({}):\n{said}\n--- the unit ---\n{}",
        unit.display(),
        out.status,
        std::fs::read_to_string(unit).unwrap_or_default()
    );
}

/// The words of the unit's `ExecStart=` line (quoted words as systemd reads them).
fn exec_start(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == ' ' {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => word.extend(chars.next()),
                    c => word.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word.replace("%%", "%").replace("$$", "$"));
    }
    words
}

#[test]
fn the_user_unit_verifies_and_mounts_from_the_config_file_alone() {
    let server = Server::start();
    let token = server.add_user("alice");
    let home = Home::new(&server, &token);
    let mountpoint = home.path().join("My Jewel");
    let out = home
        .cmd(bin("jewelfs"))
        .args(["service", "install", "--no-start", "--mountpoint"])
        .arg(&mountpoint)
        .output()
        .unwrap();
    ok(out, "jewelfs service install");
    let text = std::fs::read_to_string(home.unit()).expect("the unit was written");
    assert!(
        !text.contains(&token),
        "the token is not in the unit:\n{text}"
    );
    for want in [
        "Type=simple",
        "Restart=on-failure",
        "WantedBy=default.target",
    ] {
        assert!(text.contains(want), "{want} in:\n{text}");
    }
    assert!(mountpoint.is_dir(), "the mountpoint was created");
    verify(&home, true, &home.unit());

    // What systemd would run: mounts with the server and token from the config file, and
    // stops on SIGTERM (as at logout) after uploading what was just saved.
    let words = exec_start(&text);
    assert_eq!(
        std::path::Path::new(&words[0]).canonicalize().ok(),
        bin("jewelfs").canonicalize().ok(),
        "the unit runs this jewelfs"
    );
    assert_eq!(
        words[1..],
        ["mount".to_string(), mountpoint.display().to_string()]
    );
    let log = std::fs::File::create(home.path().join("unit.log")).unwrap();
    let mut child = home
        .cmd(&words[0])
        .args(&words[1..])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(&token));
    let unit_log = || std::fs::read_to_string(home.path().join("unit.log")).unwrap_or_default();
    wait_for(
        "the unit's command to mount",
        Duration::from_secs(20),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the unit's command exited ({status}):\n{}", unit_log());
            }
            is_mounted(&mountpoint).then_some(())
        },
    );
    std::fs::write(
        mountpoint.join("at-logout.txt"),
        b"saved just before logout",
    )
    .unwrap();
    kill(child.id(), "TERM");
    let status = wait_for("the mount to stop", Duration::from_secs(30), || {
        child.try_wait().unwrap()
    });
    assert!(status.success(), "{status}:\n{}", unit_log());
    assert!(!is_mounted(&mountpoint));
    let log = unit_log();
    assert!(
        !log.contains("still to upload") && !log.contains("WARN"),
        "{log}"
    );
    let reader = Mount::new(&server, &token, "desktop");
    wait_content(
        &reader.p("at-logout.txt"),
        b"saved just before logout",
        Duration::from_secs(20),
    );

    // Uninstall removes it (no user manager answers here: it says so and goes on).
    let out = home
        .cmd(bin("jewelfs"))
        .args(["service", "uninstall"])
        .output()
        .unwrap();
    ok(out, "jewelfs service uninstall");
    assert!(!home.unit().exists());
}

#[test]
fn install_refuses_without_a_server_and_token_in_the_config() {
    let server = Server::start();
    let home = Home::new(&server, "unused");
    std::fs::write(home.path().join(".config/jewel/config.toml"), "").unwrap();
    let out = home
        .cmd(bin("jewelfs"))
        .args(["service", "install", "--no-start"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.toml") && err.contains("server"),
        "{err}"
    );
    assert!(!home.unit().exists());
}

#[test]
fn the_server_unit_in_docs_verifies() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/jewel-server.service");
    let text = std::fs::read_to_string(&docs).unwrap();
    for want in [
        "User=jewel",
        "StateDirectory=jewel",
        "ExecStart=/usr/local/bin/jewel-server serve --data /var/lib/jewel",
    ] {
        assert!(text.contains(want), "{want} in {}", docs.display());
    }
    // Verified with the binary it names at the path the test built it to.
    let server = Server::start();
    let home = Home::new(&server, "unused");
    let unit = home.path().join("jewel-server.service");
    let built = bin("jewel-server");
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/jewel-server", &built.to_string_lossy()),
    )
    .unwrap();
    verify(&home, false, &unit);
}

fn kill(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}
