//! anyhubctl: asks a running anyhubd for its state (docs/daemon-contract.md).

use anyhub_control::config::DEFAULT_STATUS_SOCKET;
use anyhub_control::status::{self, Status};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// How long anyhubctl waits for the daemon.
const TIMEOUT: Duration = Duration::from_secs(5);

/// anyhub operator CLI.
#[derive(Parser)]
#[command(name = "anyhubctl", version)]
struct Args {
    /// anyhubd's status socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_STATUS_SOCKET, global = true)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The node's IKE SAs, child SAs and counters.
    Status {
        /// Print the daemon's JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("anyhubctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Status { json } => {
            let reply = status::query(&args.socket, TIMEOUT)?;
            if json {
                println!("{reply}");
            } else {
                let status: Status = serde_json::from_str(&reply).map_err(|e| {
                    anyhow::anyhow!("anyhubd sent a status this anyhubctl cannot read: {e}")
                })?;
                print!("{}", status.render());
            }
            Ok(())
        }
    }
}
