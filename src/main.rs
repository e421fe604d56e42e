//! The `tether` binary: `tether [run]`, `tether demo`, `tether config`,
//! `tether check` (which runs the `tether-check` binary).
//!
//! Errors end the process with one line on stderr (no backtrace, whatever
//! `RUST_BACKTRACE` says) and exit status 2 when tether could not start
//! (configuration, listeners, journal), 1 when it failed later.

mod checker;
mod demo;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use tether::cli::{self, Cli, Command, ServeError};
use tether::config::Config;

fn main() -> ExitCode {
    // `--demo-page-listen` belongs to the demo, which is part of the binary
    // only: it is added here rather than to the library's `Cli`.
    let matches = Cli::command()
        .arg(
            clap::Arg::new("demo_page_listen")
                .long("demo-page-listen")
                .value_name("ADDR")
                .value_parser(clap::value_parser!(SocketAddr))
                .global(true)
                .help("tether demo: address of the demo page [default: 127.0.0.1:8081]"),
        )
        .get_matches();
    let demo_page = matches.get_one::<SocketAddr>("demo_page_listen").copied();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // The checker needs no configuration: a bad TETHER_* variable must not
    // stop it.
    if let Some(Command::Check { args }) = &cli.command {
        return checker::exec(args);
    }
    let mut config = match cli.config() {
        Ok(c) => c,
        Err(e) => return fail(&e, 2),
    };
    match cli.command.take().unwrap_or(Command::Run) {
        Command::Run => match cli::serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e, e.exit_code()),
        },
        Command::Config => {
            print!("{}", shown(config));
            ExitCode::SUCCESS
        }
        Command::Check { args } => checker::exec(&args),
        Command::Demo => {
            demo::adjust_config(&mut config, &cli);
            if let Err(e) = cli::init_logs(&config.log) {
                return fail(&e, e.exit_code());
            }
            let result = cli::runtime().map_err(ServeError::Setup).map(|rt| rt.block_on(demo::run(config, demo_page)));
            match result {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(e @ demo::DemoError::Start(_))) => fail(&e, 2),
                Ok(Err(e)) => fail(&e, 1),
                Err(e) => fail(&e, e.exit_code()),
            }
        }
    }
}

/// The effective configuration as TOML, with the secret redacted.
fn shown(mut config: Config) -> String {
    if !config.token.secret.is_empty() {
        config.token.secret = "<redacted>".into();
    }
    toml::to_string(&config).unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
}

fn fail(e: &dyn std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("tether: {e}");
    ExitCode::from(code)
}
