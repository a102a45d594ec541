//! anyhub's dataplane.
//!
//! For now only [`sadb`]: the child SAs the IKE endpoint established, kept
//! in memory for status. Userspace ESP/GRE over TUN lands here next, behind
//! the same table.

#![deny(unsafe_code)]

pub mod gre;
pub mod icmp_error;
pub mod mss;
pub mod path;
pub mod policy;
pub mod published;
pub mod route;
pub mod sadb;
pub mod wire;
pub mod xfrm;

pub use sadb::{Change, SaSummary, SaTable};
