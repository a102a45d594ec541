//! anyhub's dataplane.
//!
//! - [`sadb`]: the child SAs the IKE endpoint established, kept in memory
//!   for status.
//! - The packet path around ESP, all sans-IO (bytes in, verdicts out):
//!   [`wire`] (zero-copy IPv4/IPv6/UDP/TCP/ICMP/GRE views), [`route`]
//!   (tenants, per-tenant longest-prefix match) published whole with
//!   [`published`], [`policy`] (traffic selectors), [`path`] (the
//!   forwarding pipeline: selectors, route, TTL, MTU, MSS; [`path::PathDrop`]),
//!   [`icmp_error`] (Fragmentation Needed / Packet Too Big / Time Exceeded,
//!   rate-limited), [`mss`] (tunnel MTUs from the real overhead, MSS
//!   clamping), [`gre`] (GRE tunnels and keepalives) and [`xfrm`] (the
//!   Linux XFRM netlink messages for a child SA, built and parsed).

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
