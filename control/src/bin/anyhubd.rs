//! anyhubd: the anyhub node daemon (docs/daemon-contract.md).

use anyhow::Context as _;
use anyhub_control::config::DaemonConfig;
use clap::{Parser, ValueEnum};
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// anyhub node daemon: an anycast IKEv2/IPsec edge.
#[derive(Parser)]
#[command(name = "anyhubd", version)]
struct Args {
    /// The configuration file (TOML).
    #[arg(long, value_name = "PATH")]
    config: PathBuf,
    /// Validate the configuration and exit: 0 if valid, 1 with the error.
    #[arg(long)]
    check: bool,
    /// Log level (default: RUST_LOG if set, else info).
    #[arg(long, value_enum, value_name = "LEVEL")]
    log_level: Option<LogLevel>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("anyhubd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = DaemonConfig::load(&args.config)?;
    if args.check {
        println!(
            "{}: OK (node {}, index {}, {} tunnel(s))",
            args.config.display(),
            config.node_name,
            config.node_index,
            config.endpoint.tunnels.len()
        );
        return Ok(());
    }
    let filter = match args.log_level {
        Some(level) => EnvFilter::new(level.as_str()),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    anyhub_control::node::run(config).context("node failed")
}
