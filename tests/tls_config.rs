//! TLS configuration errors at start: one clear line on stderr, exit status 2.

mod common;

use std::io::Write as _;
use std::process::{Command, Output};

use common::*;

fn tether(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.args(args).env("RUST_BACKTRACE", "1").env("TETHER_TOKEN_SECRET", SECRET).env("TETHER_LOG_LEVEL", "off");
    cmd.stdin(std::process::Stdio::null()).output().expect("run tether")
}

fn refused(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "status {:?}, stderr {stderr}", out.status);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("tether: ") && !stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn missing_or_unpaired_tls_files_are_one_line_and_exit_2() {
    let cases = [
        (
            "[tls]\ncert_file = \"/nonexistent/tls.crt\"\nkey_file = \"/nonexistent/tls.key\"",
            "tls.cert_file /nonexistent/tls.crt: No such file",
        ),
        ("[tls]\ncert_file = \"/nonexistent/tls.crt\"", "tls.cert_file is set but tls.key_file is not"),
        ("[tls]\nupstream_ca_file = \"/nonexistent/ca.crt\"", "tls.upstream_ca_file /nonexistent/ca.crt: No such file"),
        (
            "[tls]\nupstream_client_key_file = \"/k\"",
            "tls.upstream_client_key_file is set but tls.upstream_client_cert_file is not",
        ),
        ("[tls]\nreload_interval = \"0s\"", "tls.reload_interval must be more than 0"),
        ("[server]\nupstream = \"https://backend\"", "only ws:// and wss:// are supported"),
    ];
    for (toml, want) in cases {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(toml.as_bytes()).unwrap();
        let line = refused(&tether(&["config", "--config", f.path().to_str().unwrap()]));
        assert!(line.contains(want), "{toml:?}: {line}");
    }
}

/// Files that exist but hold no certificate stop the start (after the
/// journal opened) with one line naming the file.
#[test]
fn a_certificate_file_without_a_certificate_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, "not a certificate\n").unwrap();
    std::fs::write(&key, "not a key\n").unwrap();
    let data = dir.path().join("journal");
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[journal]\ndata_dir = {:?}\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        data.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap()
    );
    let config = dir.path().join("tether.toml");
    std::fs::write(&config, toml).unwrap();
    let line = refused(&tether(&["run", "--config", config.to_str().unwrap()]));
    assert!(line.contains("tls.crt") && line.contains("no CERTIFICATE"), "{line}");
}
