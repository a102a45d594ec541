//! IKEv2 wire format: every payload of RFC 7296 §3, and the Encrypted
//! Fragment payload of RFC 7383 §2.5.
//!
//! Decoding goes in phases (after quinn's `PartialDecode`):
//!
//! 1. [`Header::parse`] — SPIs, exchange, flags, message ID: enough to find
//!    the IKE SA and to answer INVALID_MAJOR_VERSION;
//! 2. [`Message::parse`] — the payloads in the clear, and where the SK/SKF
//!    payload ([`Encrypted`]) sits: its associated data and IV‖ciphertext‖ICV
//!    as ranges of the received buffer, so decryption works in place;
//! 3. [`parse_payloads`] — the decrypted inner chain.
//!
//! Encoding mirrors it: [`emit_payloads`] writes a chain (the plaintext to
//! encrypt, or the body of an unencrypted message via [`Message::emit`]);
//! [`emit_sk_prefix`] / [`emit_skf_prefix`] write the header and encrypted
//! payload header in front of the ciphertext.
//!
//! # Panic and allocation contract
//!
//! Parsing is fed attacker bytes. No parser here panics, whatever the input:
//! every read goes through the bounds-checked [`codec::Reader`]. Every
//! peer-controlled length and count is checked against a named limit in
//! [`limits`] *before* anything is allocated for it, and a failure is a
//! [`MalformedError`] — `Copy`, allocation-free, naming what failed.
//!
//! Emitting does not panic either. It trusts the caller's values: a field
//! too large for its wire width (a 300-byte SPI, a 70 KB payload) is
//! truncated or saturated and yields a message the peer rejects, never
//! memory unsafety.
//!
//! Reserved fields, and the Critical bit of payload types we know, are
//! emitted as zero and ignored on parse (RFC 7296 §2.5); Key Length is
//! emitted first among a transform's attributes. So `parse(emit(x)) == x`
//! for every `x` parsing can produce, and `emit(parse(bytes)) == bytes` for
//! every message that follows those conventions — which every IKEv2
//! implementation we know of does.

pub mod codec;
pub mod limits;
pub mod registry;

mod header;
mod message;
mod payload;
mod sa;
mod ts;

pub use codec::MalformedError;
pub use header::{Flags, Header};
pub use message::{emit_sk_prefix, emit_skf_prefix, Encrypted, Message};
pub use payload::{
    emit_payloads, parse_payloads, Auth, Cert, CertReq, CfgAttr, Cp, Delete, Id, Ke, Nonce, Notify,
    Payload,
};
pub use registry::*;
pub use sa::{AttrValue, Proposal, SaPayload, Transform, TransformAttr};
pub use ts::{TrafficSelector, Ts};
