//! anyhubctl: asks a running anyhubd for its state (docs/daemon-contract.md).

use anyhub_control::config::DEFAULT_STATUS_SOCKET;
use anyhub_control::status::{self, Request, Status};
use clap::{Parser, Subcommand, ValueEnum};
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
    /// Rekey a tunnel's IKE SAs, or its child SAs, now.
    Rekey {
        tunnel: String,
        #[arg(value_enum, default_value = "child")]
        what: What,
    },
    /// Delete a tunnel's IKE SAs (with their child SAs), or only its child
    /// SAs, telling the peer.
    Terminate {
        tunnel: String,
        #[arg(value_enum, default_value = "ike")]
        what: What,
    },
    /// Start a tunnel as initiator (it needs a remote_address).
    Initiate { tunnel: String },
    /// The fleet's certificates for the sync bus (docs/sa-sync.md): run
    /// on an offline admin host, copy each node its files.
    Fleet {
        #[command(subcommand)]
        command: Fleet,
    },
}

#[derive(Subcommand)]
enum Fleet {
    /// A new fleet CA in DIR: ca.pem (every node) and ca.key (keep it
    /// offline). Refuses to overwrite an existing CA.
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// A node certificate signed by DIR's CA: <NAME>.pem and <NAME>.key,
    /// naming the node's index (`[node] index`) and name (`[node] name`).
    AddNode {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[arg(long)]
        index: u16,
        #[arg(long)]
        name: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum What {
    Ike,
    Child,
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
        Command::Fleet { command } => {
            match command {
                Fleet::Init { dir } => {
                    anyhub_sa_sync::fleet::init(&dir)?;
                    println!(
                        "fleet CA written to {} (ca.pem for every node; keep ca.key offline)",
                        dir.display()
                    );
                }
                Fleet::AddNode { dir, index, name } => {
                    let (cert, key) = anyhub_sa_sync::fleet::add_node(&dir, index, &name)?;
                    println!(
                        "node {index} ({name}): {} and {} (copy them and ca.pem to the node's [sync] fleet_dir)",
                        cert.display(),
                        key.display()
                    );
                }
            }
            Ok(())
        }
        Command::Rekey { tunnel, what } => act(
            &args.socket,
            Request::Rekey {
                tunnel,
                ike: matches!(what, What::Ike),
            },
        ),
        Command::Terminate { tunnel, what } => act(
            &args.socket,
            Request::Terminate {
                tunnel,
                ike: matches!(what, What::Ike),
            },
        ),
        Command::Initiate { tunnel } => act(&args.socket, Request::Initiate { tunnel }),
    }
}

/// Sends an action request and prints what the daemon started.
fn act(socket: &std::path::Path, request: Request) -> anyhow::Result<()> {
    let reply = status::ask(socket, &request, TIMEOUT)?;
    let value: serde_json::Value = serde_json::from_str(&reply)?;
    println!("{}", value["ok"].as_str().unwrap_or(&reply));
    Ok(())
}
