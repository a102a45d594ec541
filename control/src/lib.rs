//! anyhub's control plane: the node daemon `anyhubd` and the operator CLI
//! `anyhubctl` (docs/daemon-contract.md).
//!
//! - [`config`]: the TOML file → a validated [`config::DaemonConfig`].
//! - [`node`]: the driver around the sans-IO IKE [`anyhub_ike::Endpoint`]:
//!   UDP sockets, the timer, signals, the status socket.
//! - [`dataplane`]: `[dataplane]`: the TUN, its routes and the ESP workers
//!   that own the NAT-T socket.
//! - [`status`]: the status JSON, shared by the daemon and anyhubctl.
//! - [`sync`]: `[sync]`: SA replication with the other nodes (sa-sync).
//! - [`seq`]: outbound sequence numbers handed over between nodes.

#![deny(unsafe_code)]

pub mod config;
pub mod dataplane;
pub mod node;
pub mod seq;
pub mod status;
pub mod sync;

pub use config::{ConfigError, DaemonConfig};
