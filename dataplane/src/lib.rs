//! anyhub's dataplane.
//!
//! - [`sadb`]: the child SAs the IKE endpoint established, kept in memory
//!   for status.
//! - [`io`]: the batched TUN/UDP I/O layer (userspace GSO/GRO, UDP GSO/GRO,
//!   `sendmmsg`/`recvmmsg`) and the forwarding loop a [`io::PacketTransform`]
//!   (the ESP core) plugs into.
//! - [`sys`]: the only `unsafe` in the crate (TUN ioctls, batched sockets).

#![deny(unsafe_code)]

pub mod io;
pub mod sadb;
#[allow(unsafe_code)]
pub mod sys;

pub use sadb::{Change, SaSummary, SaTable};
