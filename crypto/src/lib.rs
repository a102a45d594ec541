//! anyhub's cryptographic primitives, over BoringSSL (`boring`) and
//! x25519-dalek.
//!
//! One crate is shared by the IKEv2 daemon and the ESP dataplane so that
//! both sides of an SA use the same, tested implementation of every
//! algorithm they negotiate:
//!
//! | module | what | used by |
//! |---|---|---|
//! | [`secret`] | [`Secret`]: zeroizing key bytes, redacted `Debug`, constant-time `==` | everything |
//! | [`rng`] | [`Rng`]: [`SystemRng`] in production, [`SeededRng`] for tests and fuzzing | IKE (SPIs, nonces, IVs, DH) |
//! | [`prf`] | IKE PRFs and `prf+` (RFC 7296 §2.13), SHA-1 for NAT detection | IKE key schedule |
//! | [`integ`] | truncated HMAC integrity (RFC 2404, RFC 4868) | IKE SK payload, ESP |
//! | [`cipher`] | AES-CBC (RFC 3602), in place, caller pads | IKE SK payload, ESP |
//! | [`aead`] | AES-GCM (RFC 4106/5282) and ChaCha20-Poly1305 (RFC 7634) with salt‖IV nonces | IKE SK payload, ESP |
//! | [`dh`] | MODP-2048, ECP-256/384, Curve25519 key exchange (RFC 7296 §3.4) | IKE |
//! | [`sig`] | RSA (PKCS#1 v1.5, PSS) and ECDSA signatures, RFC 7427 AlgorithmIdentifiers | IKE certificate authentication |
//! | [`x509`] | certificates, chain validation against trust anchors, DNs, CERTREQ hashes | IKE certificate authentication |
//!
//! Dataplane-facing types ([`aead::AeadKey`], [`integ::IntegKey`],
//! [`cipher::AesCbc`]) expand their keys once at construction; sealing,
//! opening and MACing then take `&self`, never allocate, and the key types
//! are `Send + Sync` so worker threads can share one SA.
//!
//! Secrets never appear in `Debug` output or in errors; everything holding
//! key material wipes it on drop. `unsafe` lives only in the private `sys`
//! module (raw BoringSSL calls the safe `boring` API does not offer).

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod aead;
pub mod cipher;
pub mod dh;
pub mod error;
mod hmac;
pub mod integ;
pub mod prf;
pub mod rng;
pub mod secret;
pub mod sig;
mod sys;
pub mod x509;

pub use error::CryptoError;
pub use rng::{Rng, SeededRng, SystemRng};
pub use secret::Secret;
