//! The dataplane's I/O layer: everything between the kernel's TUN and UDP
//! interfaces and the per-packet transform, built to cross the kernel as
//! rarely as possible.
//!
//! | module | what |
//! |---|---|
//! | [`vnet`] | `virtio_net_hdr`, the metadata of TUN offloads |
//! | [`csum`] | Internet checksum and pseudo-headers |
//! | [`gso`] | TUN super-packet → MSS-sized packets (userspace TSO/USO) |
//! | [`gro`] | inner TCP segments → TUN super-packet (userspace GRO) |
//! | [`forward`] | the worker loops and the [`PacketTransform`] trait |
//! | [`aead_test`] | an AES-256-GCM stand-in transform for measurements |
//!
//! Measured choices are in `docs/tun.md`; the design in
//! `docs/architecture.md`, "Dataplane I/O".

pub mod aead_test;
pub mod csum;
pub mod forward;
pub mod gro;
pub mod gso;
pub mod vnet;

pub use forward::{Forwarder, IoConfig, IoCounters, PacketTransform, UdpMode, Verdict};
