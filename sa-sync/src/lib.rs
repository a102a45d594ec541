//! anyhub's SA replication (docs/sa-sync.md).
//!
//! - [`core`]: the sans-IO replication protocol (one [`core::Node`] per
//!   process: frames in, frames and applied changes out, `now` passed in).
//! - [`table`]: the replicated table (last writer wins by HLC, tombstones,
//!   compacted change feed, anti-entropy digests).
//! - [`hlc`]: the hybrid logical clock behind versions.

pub mod core;
pub mod hlc;
pub mod key;
pub mod pb;
pub mod table;

pub use crate::core::{
    Barrier, BarrierId, BarrierOutcome, Config, Event, Node, PeerId, PublishError, Status,
    Transmit, WaitFor,
};
pub use key::Key;
pub use table::Lifetimes;
pub mod convert;
pub mod fleet;
pub mod quic;
