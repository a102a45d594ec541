//! anyhub's dataplane.
//!
//! - [`esp`]: ESP in tunnel mode (RFC 4303), ESP-in-UDP (RFC 3948), the
//!   anti-replay window and the fleet-wide IV scheme; sans-IO, in place.
//! - [`sad`]: the SA database fed by IKE events, read lock-free by the
//!   packet workers; also what status lists.
//! - [`counters`]: packets, bytes and drops by [`DropReason`].

#![deny(unsafe_code)]

pub mod counters;
pub mod esp;
pub mod sad;

pub use counters::DropReason;
pub use sad::{Change, SaSummary, Sad, SadConfig, Snapshot};
