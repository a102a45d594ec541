//! The crate's one error type.

/// Why a cryptographic operation failed.
///
/// `Copy` and allocation-free, so a peer sending garbage costs no heap
/// traffic; the messages never carry key or plaintext material.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// An AEAD tag or an integrity check value did not verify.
    #[error("authentication failed")]
    AuthFailed,
    /// A key (or key material) of the wrong length for the algorithm.
    #[error("bad key length")]
    BadKeyLength,
    /// Input of a length the operation cannot process (e.g. CBC data that
    /// is not a whole number of blocks).
    #[error("bad input length")]
    BadInputLength,
    /// A peer's Diffie-Hellman public value was rejected: wrong length, out
    /// of range, not on the curve, or yielding an all-zero secret.
    #[error("invalid public value")]
    InvalidPublicValue,
    /// BoringSSL reported an internal failure (allocation, etc.).
    #[error("crypto backend failure")]
    Backend,
}
