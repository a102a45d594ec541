//! anyhub's dataplane.
//!
//! - [`esp`]: ESP in tunnel mode (RFC 4303), ESP-in-UDP (RFC 3948), the
//!   anti-replay window and the fleet-wide IV scheme; sans-IO, in place.
//! - [`sad`]: the SA database fed by IKE events, read lock-free by the
//!   packet workers; also what status lists.
//! - [`counters`]: packets, bytes and drops by [`DropReason`].
//! - The packet path around ESP, all sans-IO (bytes in, verdicts out):
//!   [`wire`] (zero-copy IPv4/IPv6/UDP/TCP/ICMP/GRE views), [`route`]
//!   (tenants, per-tenant longest-prefix match) published whole with
//!   [`published`], [`policy`] (traffic selectors), [`path`] (the
//!   forwarding pipeline: selectors, route, TTL, MTU, MSS; [`path::PathDrop`]),
//!   [`icmp_error`] (Fragmentation Needed / Packet Too Big / Time Exceeded,
//!   rate-limited), [`mss`] (tunnel MTUs from the real overhead, MSS
//!   clamping), [`gre`] (GRE tunnels and keepalives) and [`xfrm`] (the
//!   Linux XFRM netlink messages for a child SA, built and parsed).
//! - [`io`]: the batched TUN/UDP I/O layer (userspace GSO/GRO, UDP GSO/GRO,
//!   `sendmmsg`/`recvmmsg`) and the forwarding loop a [`io::PacketTransform`]
//!   (the ESP core) plugs into.
//! - [`esp_transform`]: the ESP dataplane as the loop's
//!   [`io::PacketTransform`]: TUN ⇄ path ⇄ SAD ⇄ ESP-in-UDP, IKE handed off.
//! - [`sys`]: the only `unsafe` in the crate (TUN ioctls, batched sockets).

#![deny(unsafe_code)]

pub mod counters;
pub mod esp;
pub mod esp_raw;
pub mod esp_transform;
pub mod gre;
pub mod gre_side;
pub mod icmp_error;
pub mod io;
pub mod mss;
pub mod path;
pub mod policy;
pub mod published;
pub mod route;
pub mod sad;
#[allow(unsafe_code)]
pub mod sys;
pub mod wire;
pub mod xfrm;

pub use counters::DropReason;
pub use sad::{Change, SaSummary, Sad, SadConfig, Snapshot};
