//! The `alagg` command line: parses the arguments, sets up logging and runs one of
//! [`alagg::cli`]'s commands.

use std::process::ExitCode;

use alagg::cli::{self, Cli, Command, LogFormat};
use clap::Parser as _;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match &cli.log_level {
        Some(level) => tracing_subscriber::EnvFilter::try_new(level),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .or_else(|_| tracing_subscriber::EnvFilter::try_new("info")),
    };
    let filter = match filter {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("alagg: error: --log-level / RUST_LOG: {error}");
            return ExitCode::FAILURE;
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("alagg: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up { config } => cli::up(&config),
        Command::Check { config } => cli::check(&config),
        Command::Down { config } => cli::down(&config),
        Command::Reload { config } => cli::reload(&config),
        Command::Status { config, tun, json } => cli::status(config.as_deref(), tun, json),
        Command::Steal { queue } => cli::steal(queue),
        Command::Blast {
            config,
            size,
            seconds,
        } => cli::blast(&config, size, seconds),
        Command::Sink { config, seconds } => cli::sink(&config, seconds),
        Command::Genkey => cli::genkey(),
        Command::Attach {
            interfaces,
            ethertype,
            mode,
            seconds,
        } => cli::attach(&interfaces, &ethertype, mode, seconds),
    }
}
