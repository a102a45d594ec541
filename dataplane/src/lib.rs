//! anyhub's dataplane.
//!
//! - [`esp`]: ESP in tunnel mode (RFC 4303), ESP-in-UDP (RFC 3948), the
//!   anti-replay window and the fleet-wide IV scheme; sans-IO, in place.
//! - [`sadb`]: the child SAs the IKE endpoint established, for status.
//! - [`counters`]: packets, bytes and drops by [`DropReason`].

#![deny(unsafe_code)]

pub mod counters;
pub mod esp;
pub mod sadb;

pub use counters::DropReason;
pub use sadb::{Change, SaSummary, SaTable};
