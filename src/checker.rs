//! `tether check`: runs the deployment checker, a binary of its own
//! (`tether-check`, the `check/` crate) so that the service links none of
//! it; as git runs its subcommands, from next to this binary, else from
//! PATH. Part of the binary, not the library.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

/// The checker's file name.
const CHECKER: &str = "tether-check";

/// Replaces this process with `tether-check args...`; returns only if that
/// fails (exit status 2, as the checker's own "could not run").
pub(crate) fn exec(args: &[OsString]) -> ExitCode {
    let beside = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join(CHECKER)));
    let bin = beside.filter(|p| p.is_file()).unwrap_or_else(|| PathBuf::from(CHECKER));
    let err = std::process::Command::new(&bin).arg0("tether check").args(args).exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        eprintln!(
            "tether: `tether check` needs the {CHECKER} binary next to tether or on PATH \
             (cargo build --release -p tether-check; the container image ships both)"
        );
    } else {
        eprintln!("tether: cannot run {}: {err}", bin.display());
    }
    ExitCode::from(2)
}
