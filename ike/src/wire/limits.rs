//! A named limit for every length and count a peer controls.
//!
//! The parser enforces these before it allocates, so the memory one datagram
//! can make us hold is bounded by what is written here, and a limit hit is a
//! [`MalformedError`](super::MalformedError) naming it. Each limit is far
//! above what a conforming implementation sends (strongSwan, libreswan, iOS,
//! Windows) and far below what the 16-bit length fields would allow.

/// Largest IKE message we parse, in bytes (header included).
///
/// IKE over UDP cannot exceed a UDP payload (65535 − 8 − IP header); over TCP
/// (RFC 8229) the length prefix is 16 bits. The header's 32-bit `Length`
/// field is therefore never legitimately above this.
pub const MAX_MESSAGE_LEN: usize = 65535;

/// Most payloads in one chain (the outer chain and, separately, the chain
/// inside SK).
///
/// The busiest real message, IKE_AUTH with a certificate chain, CP, two TS,
/// and a dozen status notifies, holds about 20. Every payload costs at least
/// one allocation, so this bounds the work per message.
pub const MAX_PAYLOADS: usize = 64;

/// Most proposals in one SA payload. The Proposal Num field is 8 bits; real
/// initiators send one to a handful (strongSwan: one per configured proposal).
pub const MAX_PROPOSALS: usize = 64;

/// Most transforms in one proposal. A generous "offer everything" proposal
/// (every ENCR × PRF × INTEG × DH we know) has about 30.
pub const MAX_TRANSFORMS: usize = 64;

/// Most attributes in one transform. Only KEY_LENGTH is defined (RFC 7296
/// §3.3.5); a few more leave room for unknown attributes to round-trip.
pub const MAX_TRANSFORM_ATTRS: usize = 4;

/// Most traffic selectors in one TSi/TSr payload. The Number of TSs field is
/// 8 bits; road warriors send one or two, site-to-site configs a few more.
pub const MAX_TRAFFIC_SELECTORS: usize = 32;

/// Shortest nonce a peer may send: RFC 7296 §2.10 "Nonces used in IKEv2 MUST
/// be randomly chosen, MUST be at least 128 bits in size".
pub const MIN_NONCE_LEN: usize = 16;

/// Longest nonce a peer may send: RFC 7296 §3.9 "The size of the Nonce Data
/// MUST be between 16 and 256 octets, inclusive."
pub const MAX_NONCE_LEN: usize = 256;

/// Longest Key Exchange Data in a KE payload, in bytes. The largest group we
/// might see, MODP 8192 (group 18), has 1024-byte public values; ECP and
/// Curve25519/448 are far smaller. (Post-quantum additional key exchanges,
/// RFC 9370 with ML-KEM-1024, would need 1568 — raise this with them.)
pub const MAX_KE_DATA_LEN: usize = 1024;

/// Longest SPI in a proposal, notify or delete payload: 8 bytes for IKE SAs,
/// 4 for ESP/AH (RFC 7296 §3.3.1).
pub const MAX_SPI_LEN: usize = 8;

/// Most SPIs in one Delete payload. A peer tearing down all its child SAs at
/// once sends one per SA; we never hold more than a few per IKE SA.
pub const MAX_DELETE_SPIS: usize = 256;

/// Most attributes in one Configuration payload. A CFG_REQUEST from a client
/// asks for about ten (addresses, DNS, subnets, vendor attributes).
pub const MAX_CP_ATTRS: usize = 64;

/// Most fragments one message may be split into (RFC 7383 Total Fragments).
/// A 64 KiB message in the smallest fragments RFC 7383 §2.5.1 allows (IPv4,
/// 576-byte datagrams, roughly 500 bytes of content each) needs about 130.
pub const MAX_FRAGMENTS: u16 = 256;
