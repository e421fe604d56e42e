//! Build metadata for `tether --version` and `tether_build_info`: the git
//! commit (when built from a checkout) and the RocksDB version linked in
//! (from Cargo.lock: librocksdb-sys versions read `<crate>+<rocksdb>`).

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
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
    // A new commit changes HEAD or the branch it points to.
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Ok(head) = std::fs::read_to_string(".git/HEAD") {
        if let Some(r) = head.trim().strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed=.git/{r}");
        }
    }
}
