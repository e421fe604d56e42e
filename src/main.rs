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
    let running = tether::server::start(config).await?;
    wait_for_signal().await?;
    tracing::info!("signal received; draining");
    running.drain().await?;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
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
