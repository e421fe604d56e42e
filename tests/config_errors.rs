//! Every configuration error names the key and where its value came from
//! (the file and line, the `TETHER_…` variable or the flag), and `tether
//! config` refuses exactly what `tether run` refuses. Each case runs the
//! real binary and compares the whole stderr line.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

const SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// Runs `tether <args>` with `env` and no stdin.
fn tether(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.args(args).env("TETHER_TOKEN_SECRET", SECRET).env("RUST_BACKTRACE", "1").stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run tether")
}

/// Asserts exit status 2 and that stderr is exactly `line`.
fn refused_with(out: &Output, line: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr, format!("tether: {line}\n"));
}

fn file(toml: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(toml.as_bytes()).unwrap();
    f
}

/// Both subcommands, with the file, refuse with `line` (`{file}` is the
/// file's path). `run` is refused before it binds or opens anything.
fn both_refuse(toml: &str, line: &str) {
    let f = file(toml);
    let path = f.path().to_str().unwrap();
    let line = line.replace("{file}", path);
    refused_with(&tether(&["config", "--config", path], &[]), &line);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("journal");
    let run = ["run", "--config", path, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    let out = tether(&[&run[..], &["--data-dir", data.to_str().unwrap()]].concat(), &[]);
    refused_with(&out, &line);
    assert!(!data.exists(), "a refused configuration created the journal");
}

const SESSION_KEYS: &str = "\"linger\", \"ping_interval\", \"ping_timeout\", \"upstream_stall_timeout\", \
     \"slow_consumer\", \"slow_consumer_lag\", \"backend_on_restart\", \"restart_dials_per_second\", \
     \"restart_dial_concurrency\", \"restart_credential_headers\", \"restart_keep_credentials\"";

#[test]
fn an_unknown_key_names_the_key_and_the_line() {
    both_refuse(
        "[server]\nlisten = \"0.0.0.0:8080\"\n\n[session]\nlingerr = \"5s\"\n",
        &format!("session.lingerr: unknown key, expected one of {SESSION_KEYS} ({{file}} line 5)"),
    );
    both_refuse(
        "[nope]\nx = 1\n",
        "nope: unknown key, expected one of \"server\", \"tls\", \"limits\", \"session\", \"token\", \"stamp\", \
         \"journal\", \"log\", \"cluster\" ({file} line 1)",
    );
}

#[test]
fn a_bad_value_names_the_key_and_the_line() {
    both_refuse(
        "[session]\nlinger = \"2m\"\nslow_consumer = \"sometimes\"\n",
        "session.slow_consumer: unknown variant \"sometimes\", expected one of \"gap\", \"disconnect\", \
         \"backpressure\" ({file} line 3)",
    );
    both_refuse(
        "[limits]\nmax_sessions = \"many\"\n",
        "limits.max_sessions: invalid type: string \"many\", expected usize ({file} line 2)",
    );
    both_refuse(
        "[session]\nlinger = \"0s\"\n",
        "session.linger must be more than 0 and at most 365 days, not 0s ({file} line 2)",
    );
    both_refuse("[session\nlinger = 1\n", "{file} line 1, column 9: invalid table header, expected `.`, `]`");
}

/// `tether=loud` used to pass `tether config` and fail `tether run`.
#[test]
fn a_bad_log_filter_is_refused_by_both() {
    both_refuse(
        "[log]\nlevel = \"tether=loud\"\n",
        "log.level \"tether=loud\" is not a log filter: error parsing level filter: expected one of \"off\", \
         \"error\", \"warn\", \"info\", \"debug\", \"trace\", or a number 0-5 ({file} line 2)",
    );
    both_refuse(
        "[token]\nidentity_headers = [\"bad header\"]\n",
        "token.identity_headers: \"bad header\" is not a valid header name ({file} line 2)",
    );
}

#[test]
fn a_variable_or_a_flag_is_named() {
    let out = tether(&["config"], &[("TETHER_SESSION_SLOW_CONSUMER", "sometimes")]);
    refused_with(
        &out,
        "session.slow_consumer: unknown variant \"sometimes\", expected one of \"gap\", \"disconnect\", \
         \"backpressure\" (environment variable TETHER_SESSION_SLOW_CONSUMER)",
    );
    let out = tether(&["config"], &[("TETHER_SESSION_LINGERR", "5s")]);
    refused_with(
        &out,
        &format!(
            "session.lingerr: unknown key, expected one of {SESSION_KEYS} (environment variable TETHER_SESSION_LINGERR)"
        ),
    );
    // A variable overrides the file, and is what the error names.
    let f = file("[session]\nping_timeout = \"45s\"\n");
    let out = tether(&["config", "-c", f.path().to_str().unwrap()], &[("TETHER_SESSION_PING_TIMEOUT", "0s")]);
    refused_with(
        &out,
        "session.ping_timeout must be more than 0 and at most 365 days, not 0s (environment variable \
         TETHER_SESSION_PING_TIMEOUT)",
    );
    let out = tether(&["config", "--upstream", "http://backend"], &[]);
    refused_with(&out, "server.upstream \"http://backend\": only ws:// and wss:// are supported (flag --upstream)");
    // A constraint on a key nobody set names the default.
    let env = [("TETHER_SESSION_SLOW_CONSUMER", "disconnect"), ("TETHER_JOURNAL_MAX_SESSION_FRAMES", "1000")];
    refused_with(
        &tether(&["config"], &env),
        "session.slow_consumer_lag must be between 1 and journal.max_session_frames - 1 (999) with slow_consumer = \
         \"disconnect\", not 50000: retention would trim a slow client before it is cut (the default)",
    );
}
