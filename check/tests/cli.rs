//! The `tether-check` binary's command line: help and version exit 0,
//! arguments it cannot use exit 2 with a message. (Its checks run against
//! real tether processes in tether's own tests/check*.rs.)

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tether-check")).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("Usage: tether check [OPTIONS] <URL>"), "{out}");
    assert!(out.contains("Exit status: 0 every check passed"), "{out}");
    let (code, out, _) = run(&["--version"]);
    assert_eq!((code, out.trim()), (Some(0), "tether check 0.1.0"));
}

#[test]
fn unusable_arguments_exit_2() {
    for (args, says) in [
        (&[][..], "required arguments were not provided"),
        (&["ftp://x/"], "must start with ws:// or wss://"),
        (&["ws://x/", "--header", "Tether-Offset: 3"], "set by the checker itself"),
        (&["ws://x/", "--faults", "flood"], "invalid value 'flood'"),
        (&["ws://x/", "--duration", "soon"], "invalid value 'soon'"),
        (&["wss://x/", "--ca-file", "/nonexistent.pem"], "/nonexistent.pem"),
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
