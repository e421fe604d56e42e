use anyhow::Context as _;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use tether::cli::{Cli, Command};
use tether::config::{Config, LogFormat};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = cli.config()?;
    let command = cli.command.unwrap_or(Command::Run);
    if let Command::Config = command {
        let mut shown = config.clone();
        if !shown.token.secret.is_empty() {
            shown.token.secret = "<redacted>".into();
        }
        print!("{}", toml::to_string(&shown)?);
        return Ok(());
    }
    if let Command::Demo = command {
        tether::demo::adjust_config(
            &mut config,
            cli.listen.is_none(),
            cli.admin_listen.is_none(),
            cli.data_dir.is_none(),
        )?;
    }
    init_logs(&config)?;
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async move {
        match command {
            Command::Demo => Ok(tether::demo::run(config).await?),
            _ => run(config).await,
        }
    })
}

async fn run(config: Config) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM that arrives as soon as tether is serving
    // must drain, not kill the process or go unnoticed.
    let signals = Signals::install()?;
    let running = tether::server::start(config).await?;
    signals.wait().await;
    tracing::info!("signal received; draining");
    running.drain().await?;
    Ok(())
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

fn init_logs(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log.level).with_context(|| format!("log.level {:?}", config.log.level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
    Ok(())
}
