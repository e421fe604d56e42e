//! The `tether` binary: `tether [run]`, `tether demo`, `tether config`.

mod demo;

use anyhow::Context as _;
use clap::Parser;

use tether::cli::{self, Cli, Command};

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    let mut config = cli.config()?;
    match cli.command.take().unwrap_or(Command::Run) {
        Command::Run => Ok(cli::serve(config)?),
        Command::Config => {
            if !config.token.secret.is_empty() {
                config.token.secret = "<redacted>".into();
            }
            print!("{}", toml::to_string(&config)?);
            Ok(())
        }
        Command::Demo => {
            demo::adjust_config(&mut config, &cli);
            cli::init_logs(&config.log)?;
            let rt = cli::runtime().context("starting the tokio runtime")?;
            Ok(rt.block_on(demo::run(config))?)
        }
    }
}
