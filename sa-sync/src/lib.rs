//! anyhub's SA replication (docs/sa-sync.md).
//!
//! - [`core`]: the sans-IO replication protocol (one [`core::Node`] per
//!   process: frames in, frames and applied changes out, `now` passed in).
//! - [`table`]: the replicated table (last writer wins by HLC, tombstones,
//!   compacted change feed, anti-entropy digests).
//! - [`fleet`]: the fleet CA and node certificates (rcgen).
//! - [`quic`]: the thin quinn driver (mutual TLS, one connection per peer).

pub mod hlc;
pub mod key;
pub mod pb;

pub mod table;

pub use key::Key;
