//! Build metadata for `tether --version` and `tether_build_info`: the git
//! commit (when built from a checkout) and the RocksDB version linked in
//! (from Cargo.lock: librocksdb-sys versions read `<crate>+<rocksdb>`).

use std::path::Path;
use std::process::Command;

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let rocksdb = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"librocksdb-sys\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .and_then(|v| v.trim_end_matches('"').split_once('+').map(|(_, r)| r.to_owned()))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TETHER_COMMIT={commit}");
    println!("cargo:rustc-env=TETHER_ROCKSDB_VERSION={rocksdb}");
    println!("cargo:rerun-if-changed=Cargo.lock");
    // A new commit changes HEAD or the branch it points to (a loose ref, or
    // packed-refs). git says where they are: in a `git worktree` checkout
    // `.git` is a file and HEAD lives elsewhere. Only paths that exist are
    // watched: cargo reruns a script whose watched path is missing on every
    // build, which recompiled tether each time (outside a checkout too).
    let mut watch = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(git(&["rev-parse", "--git-path", &branch]));
        watch.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    }
    for path in watch.into_iter().flatten().filter(|p| Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
}

/// `git <args>` in the package's directory: its trimmed output, if it succeeded.
fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}
