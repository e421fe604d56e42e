//! `tether-check` (also run as `tether check`): see docs/CHECK.md.
//!
//! Exit status: 0 every check passed, 1 a check failed, 2 the check could
//! not run (bad arguments, the URL unreachable or not tether).

use std::process::ExitCode;

use clap::Parser;

use tether_check::{CheckError, Opts};

fn main() -> ExitCode {
    let opts = match Opts::try_parse() {
        Ok(o) => o,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let json = opts.json;
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, 2),
    };
    match rt.block_on(tether_check::run(opts)) {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => return fail(&e, 2),
                }
            } else {
                print!("{}", report.human());
            }
            ExitCode::from(if report.passed { 0 } else { 1 })
        }
        Err(e @ (CheckError::Target(_) | CheckError::Usage(_) | CheckError::Unreachable { .. })) => fail(&e, 2),
    }
}

fn fail(e: &dyn std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("tether check: {e}");
    ExitCode::from(code)
}
