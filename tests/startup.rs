//! Start-up and configuration errors: one clear line on stderr and exit
//! status 2, never a panic, a backtrace or a crash at exit.

mod common;

use std::io::Write as _;
use std::process::{Command, Output};

use common::*;

/// Runs the `tether` binary with `args` and `env` (and `RUST_BACKTRACE=1`, so
/// a backtrace would show), with no stdin.
fn tether(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.args(args).env("RUST_BACKTRACE", "1").env("TETHER_TOKEN_SECRET", SECRET);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(std::process::Stdio::null()).output().expect("run tether")
}

/// Exit status 2 and exactly one line on stderr, starting `tether: `.
fn refused(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "status {:?}, stderr {stderr}", out.status);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("tether: "), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    stderr
}

fn with_config(toml: &str) -> (tempfile::NamedTempFile, Output) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(toml.as_bytes()).unwrap();
    let out = tether(&["config", "--config", f.path().to_str().unwrap()], &[]);
    (f, out)
}

#[test]
fn bad_values_are_one_line_and_exit_2() {
    let cases = [
        ("[session]\nlinger = \"100000000y\"", "session.linger must be more than 0 and at most 365 days"),
        ("[server]\nhandshake_timeout = \"0s\"", "server.handshake_timeout must be more than 0"),
        ("[journal]\nsync_interval = \"0ms\"", "journal.sync_interval must be more than 0"),
        ("[journal]\nmax_batch = 1000000000000", "journal.max_batch must be between 1 and 65536"),
        ("[journal]\ncommit_delay = \"11ms\"", "journal.commit_delay must be at most 10ms, not 11ms"),
        ("[limits]\nread_buffer_bytes = 1000000000000", "limits.read_buffer_bytes must be between 64 and 16777216"),
        ("[limits]\nmax_sessions = 1000000000000", "limits.max_sessions must be between 1 and 1000000"),
        ("[server]\nupstream = \"ws://backend:99999\"", "port \"99999\" is not in 1..=65535"),
        ("[server]\nupstream = \"ws://u:hunter2@backend\"", "credentials (user@host) are not supported"),
        ("[server]\nupstream = \"ws://backend/api/../admin\"", "must not contain . or .. segments"),
        ("[nope]\nx = 1", "nope: unknown key"),
    ];
    for (toml, want) in cases {
        let (_f, out) = with_config(toml);
        let line = refused(&out);
        assert!(line.contains(want), "{toml:?}: {line}");
        assert!(!line.contains("hunter2"), "{line}");
    }
    // The same checks apply to environment variables.
    let out = tether(&["config"], &[("TETHER_SESSION_PING_TIMEOUT", "0s")]);
    assert!(refused(&out).contains("session.ping_timeout"));
}

#[test]
fn the_admin_port_is_loopback_unless_asked() {
    let out = tether(&["config"], &[]);
    assert!(out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("admin_listen = \"127.0.0.1:9090\""), "{shown}");
    assert!(shown.contains("listen = \"0.0.0.0:8080\""), "{shown}");
}

/// A data directory that cannot be created is an I/O error naming the path,
/// not a "corrupt journal record".
#[test]
fn unusable_data_dir_is_named() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let dir = file.path().join("journal");
    let out =
        tether(&["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir", dir.to_str().unwrap()], &[]);
    let line = refused(&out);
    assert!(line.contains("cannot open the journal") && line.contains(dir.to_str().unwrap()), "{line}");
    assert!(!line.contains("corrupt"), "{line}");
}

/// A listener that cannot be bound fails the start before the journal is
/// opened: nothing is created, and the process ends with status 2.
#[test]
fn address_in_use_leaves_nothing_behind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("journal");
    for _ in 0..10 {
        let out =
            tether(&["--listen", "127.0.0.1:0", "--admin-listen", &admin, "--data-dir", data.to_str().unwrap()], &[]);
        assert_eq!(
            refused(&out),
            format!(
                "tether: cannot listen on {admin} (server.admin_listen): the address is in use: another process \
                 (another tether?) listens there\n"
            )
        );
        assert!(!data.exists(), "the journal directory was created");
    }
}

/// Starts tether on `data` in the background and waits until it serves.
fn running_on(data: &std::path::Path) -> std::process::Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--data-dir")
        .arg(data)
        .env("TETHER_TOKEN_SECRET", SECRET)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    assert!(lines.any(|l| l.unwrap().contains("tether is serving")), "tether did not start");
    child
}

#[test]
fn a_journal_in_use_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("journal");
    let mut first = running_on(&data);
    let out = tether(
        &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()],
        &[],
    );
    let want = format!(
        "tether: cannot open the journal: another tether holds this journal ({}/LOCK is locked): stop it, or give \
         each tether its own journal.data_dir\n",
        data.display()
    );
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(refused(&out), want);
}

#[test]
fn a_file_in_the_way_is_named() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().to_str().unwrap();
    let start =
        |data: &str| tether(&["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir", data], &[]);
    assert_eq!(
        refused(&start(path)),
        format!("tether: cannot open the journal: journal.data_dir {path}: is a file, not a directory\n")
    );
    let below = format!("{path}/journal");
    assert_eq!(
        refused(&start(&below)),
        format!("tether: cannot open the journal: journal.data_dir {below}: {path} is a file, not a directory\n")
    );
}

/// A directory tether's user cannot write to. As root (CI), tether runs as
/// nobody (65534) for this test, since root may write anywhere.
#[test]
fn a_directory_tether_cannot_write_is_named() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::CommandExt as _;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let uid = if root { 65534 } else { unsafe { libc::geteuid() } };
    for data in [locked.clone(), locked.join("journal")] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"]).arg(&data);
        cmd.env("TETHER_TOKEN_SECRET", SECRET).stdin(std::process::Stdio::null());
        if root {
            cmd.uid(65534).gid(65534);
        }
        let out = cmd.output().unwrap();
        assert_eq!(
            refused(&out),
            format!(
                "tether: cannot open the journal: journal.data_dir {}: permission denied (tether runs as uid {uid}): \
                 make it writable for that user\n",
                data.display()
            )
        );
    }
}

/// `--version` names the commit and the RocksDB version linked in.
#[test]
fn version_names_commit_and_rocksdb() {
    let out = tether(&["--version"], &[]);
    assert!(out.status.success());
    let v = String::from_utf8_lossy(&out.stdout);
    let re = v.trim();
    assert!(re.starts_with("tether 0.1.0 (commit "), "{re}");
    let rocks = re.rsplit_once("RocksDB ").map(|x| x.1.trim_end_matches(')')).unwrap_or("");
    assert!(rocks.split('.').count() == 3 && rocks.split('.').all(|p| p.parse::<u32>().is_ok()), "{re}");
}
