//! The crate's only `unsafe`: raw BoringSSL calls for what the safe `boring`
//! API does not offer in a shareable, allocation-free form.
//!
//! - [`AeadCtx`]: an `EVP_AEAD_CTX` whose seal/open take `&self` (boring's
//!   `AeadCtx` wants `&mut self` for the benefit of the stateful TLS AEADs,
//!   which we never construct) and report failure without allocating an
//!   `ErrorStack`.
//! - [`AesKey`]: an expanded `AES_KEY` and in-place `AES_cbc_encrypt`.
//! - [`ModpDh`]: a `DH` over RFC 3526 group 14 with a caller-chosen private
//!   exponent, so that all randomness comes from our [`crate::Rng`].
//! - [`wipe`]: zeroing of flat hash states that hold HMAC pads.
//!
//! Every function here checks its arguments before crossing the FFI
//! boundary; callers in the rest of the crate need not uphold anything.
//!
//! BoringSSL's own frees (`EVP_AEAD_CTX_free`, `DH_free`, `BN_free`) go
//! through `OPENSSL_free`, which cleanses the allocation, so key schedules
//! and private exponents inside BoringSSL are wiped when released.

#![allow(unsafe_code)]

use std::mem::size_of;
use std::ptr::{self, NonNull};

use boring_sys as ffi;

use crate::CryptoError;

/// Drops whatever BoringSSL pushed on this thread's error queue and reports
/// a backend failure. We never surface BoringSSL's strings (they can name
/// internals, and collecting them allocates), but stale entries would
/// otherwise be picked up by the next unrelated `boring` call.
fn backend_failure() -> CryptoError {
    // SAFETY: no arguments; clears thread-local state only.
    unsafe { ffi::ERR_clear_error() };
    CryptoError::Backend
}

// ---------------------------------------------------------------------------
// Wiping flat hash states
// ---------------------------------------------------------------------------

/// Marker for plain-old-data types: no pointers, no references, no niches,
/// every bit pattern (in particular all zeros) a valid value.
///
/// # Safety
///
/// Only implement for types meeting that description.
pub(crate) unsafe trait Flat: Sized {}

// boring's hashers are newtypes over BoringSSL's `SHA_CTX` / `SHA256_CTX` /
// `SHA512_CTX`, which are integer arrays and counters (see the bindgen
// layouts). The size checks below catch boring ever adding a field.
const _: () = assert!(size_of::<boring::sha::Sha1>() == size_of::<ffi::SHA_CTX>());
const _: () = assert!(size_of::<boring::sha::Sha256>() == size_of::<ffi::SHA256_CTX>());
const _: () = assert!(size_of::<boring::sha::Sha384>() == size_of::<ffi::SHA512_CTX>());
const _: () = assert!(size_of::<boring::sha::Sha512>() == size_of::<ffi::SHA512_CTX>());
// SAFETY: see above — the types are exactly the flat BoringSSL contexts.
unsafe impl Flat for boring::sha::Sha1 {}
// SAFETY: as above.
unsafe impl Flat for boring::sha::Sha256 {}
// SAFETY: as above.
unsafe impl Flat for boring::sha::Sha384 {}
// SAFETY: as above.
unsafe impl Flat for boring::sha::Sha512 {}

/// Overwrites `value` with zeros in a way the optimiser may not elide.
pub(crate) fn wipe<T: Flat>(value: &mut T) {
    // SAFETY: `T: Flat` guarantees all-zero is a valid `T` with nothing to
    // leak or double-free; the pointer comes from a live `&mut`.
    unsafe { zeroize::zeroize_flat_type(value as *mut T) }
}

// ---------------------------------------------------------------------------
// EVP_AEAD
// ---------------------------------------------------------------------------

/// The AEADs we build contexts for. All three are stateless after
/// initialisation, which is what makes [`AeadCtx`] `Sync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AeadKind {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

/// Nonce length of all three AEADs (RFC 5116 §5.1, RFC 8439 §2.8).
pub(crate) const AEAD_NONCE_LEN: usize = 12;
/// Full-length tag of all three AEADs.
pub(crate) const AEAD_TAG_LEN: usize = 16;

/// A heap-allocated, initialised `EVP_AEAD_CTX` (heap, so that BoringSSL's
/// internal alignment of the key schedule survives Rust moves).
pub(crate) struct AeadCtx(NonNull<ffi::EVP_AEAD_CTX>);

// SAFETY: the context is exclusively owned and BoringSSL allows using it from
// any thread.
unsafe impl Send for AeadCtx {}
// SAFETY: aead.h: "This function may be called concurrently with itself or
// any other seal/open function on the same EVP_AEAD_CTX" — true for the
// generic AES-GCM and ChaCha20-Poly1305 AEADs, the only ones `AeadKind`
// can name (the TLS variants, which are stateful, are unreachable here).
unsafe impl Sync for AeadCtx {}

impl AeadCtx {
    pub(crate) fn new(kind: AeadKind, key: &[u8]) -> Result<Self, CryptoError> {
        boring::init();
        // SAFETY: these return pointers to static `EVP_AEAD` tables.
        let aead = unsafe {
            match kind {
                AeadKind::Aes128Gcm => ffi::EVP_aead_aes_128_gcm(),
                AeadKind::Aes256Gcm => ffi::EVP_aead_aes_256_gcm(),
                AeadKind::ChaCha20Poly1305 => ffi::EVP_aead_chacha20_poly1305(),
            }
        };
        // SAFETY: `aead` is a valid static table.
        let (key_len, nonce_len) = unsafe {
            (
                ffi::EVP_AEAD_key_length(aead),
                ffi::EVP_AEAD_nonce_length(aead),
            )
        };
        if key.len() != key_len {
            return Err(CryptoError::BadKeyLength);
        }
        debug_assert_eq!(nonce_len, AEAD_NONCE_LEN);
        // SAFETY: `key` is valid for `key.len()` bytes; BoringSSL copies and
        // expands it, keeping no reference.
        let ctx = unsafe { ffi::EVP_AEAD_CTX_new(aead, key.as_ptr(), key.len(), AEAD_TAG_LEN) };
        NonNull::new(ctx).map(AeadCtx).ok_or_else(backend_failure)
    }

    /// Encrypts `buf` in place and writes the detached tag.
    pub(crate) fn seal(
        &self,
        nonce: &[u8; AEAD_NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &mut [u8; AEAD_TAG_LEN],
    ) -> Result<(), CryptoError> {
        let mut tag_len = 0usize;
        let io = buf.as_mut_ptr();
        // SAFETY: `out == in` (exact aliasing, which aead.h permits) and both
        // are valid for `buf.len()` bytes; `tag` is valid for
        // `AEAD_TAG_LEN` bytes and does not alias; nonce and AD are valid
        // for their lengths; no extra input.
        let ok = unsafe {
            ffi::EVP_AEAD_CTX_seal_scatter(
                self.0.as_ptr(),
                io,
                tag.as_mut_ptr(),
                &mut tag_len,
                AEAD_TAG_LEN,
                nonce.as_ptr(),
                nonce.len(),
                io,
                buf.len(),
                ptr::null(),
                0,
                aad.as_ptr(),
                aad.len(),
            )
        };
        if ok != 1 || tag_len != AEAD_TAG_LEN {
            return Err(backend_failure());
        }
        Ok(())
    }

    /// Verifies `tag` and decrypts `buf` in place. On failure BoringSSL has
    /// zeroed `buf`.
    pub(crate) fn open(
        &self,
        nonce: &[u8; AEAD_NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; AEAD_TAG_LEN],
    ) -> Result<(), CryptoError> {
        let io = buf.as_mut_ptr();
        // SAFETY: as for `seal`: exact in/out aliasing over `buf`, every
        // other pointer valid for the length passed with it.
        let ok = unsafe {
            ffi::EVP_AEAD_CTX_open_gather(
                self.0.as_ptr(),
                io,
                nonce.as_ptr(),
                nonce.len(),
                io,
                buf.len(),
                tag.as_ptr(),
                tag.len(),
                aad.as_ptr(),
                aad.len(),
            )
        };
        if ok != 1 {
            // SAFETY: clears thread-local state only.
            unsafe { ffi::ERR_clear_error() };
            return Err(CryptoError::AuthFailed);
        }
        Ok(())
    }
}

impl Drop for AeadCtx {
    fn drop(&mut self) {
        // SAFETY: we own the context; it was created by EVP_AEAD_CTX_new and
        // is freed exactly once. The free cleanses the key schedule.
        unsafe { ffi::EVP_AEAD_CTX_free(self.0.as_ptr()) }
    }
}

// ---------------------------------------------------------------------------
// AES key schedule + CBC
// ---------------------------------------------------------------------------

/// AES block length.
pub(crate) const AES_BLOCK_LEN: usize = 16;

/// An expanded AES key, for one direction.
pub(crate) struct AesKey(ffi::AES_KEY);

impl AesKey {
    fn new(key: &[u8], encrypt: bool) -> Result<Self, CryptoError> {
        if !matches!(key.len(), 16 | 24 | 32) {
            return Err(CryptoError::BadKeyLength);
        }
        boring::init();
        let mut schedule = AesKey(ffi::AES_KEY {
            rd_key: [0; 60],
            rounds: 0,
        });
        let bits = (key.len() * 8) as std::os::raw::c_uint;
        // SAFETY: `key` holds `bits / 8` bytes; the schedule is a valid,
        // writable AES_KEY.
        let rc = unsafe {
            if encrypt {
                ffi::AES_set_encrypt_key(key.as_ptr(), bits, &mut schedule.0)
            } else {
                ffi::AES_set_decrypt_key(key.as_ptr(), bits, &mut schedule.0)
            }
        };
        if rc != 0 {
            return Err(backend_failure());
        }
        Ok(schedule)
    }

    pub(crate) fn new_encrypt(key: &[u8]) -> Result<Self, CryptoError> {
        AesKey::new(key, true)
    }

    pub(crate) fn new_decrypt(key: &[u8]) -> Result<Self, CryptoError> {
        AesKey::new(key, false)
    }

    /// CBC over `buf` in place. `self` must be an encryption schedule when
    /// `encrypt`, a decryption schedule otherwise (garbage output, not UB,
    /// if mixed up).
    pub(crate) fn cbc_in_place(
        &self,
        iv: &[u8; AES_BLOCK_LEN],
        buf: &mut [u8],
        encrypt: bool,
    ) -> Result<(), CryptoError> {
        if buf.len() % AES_BLOCK_LEN != 0 {
            return Err(CryptoError::BadInputLength);
        }
        // AES_cbc_encrypt advances the IV it is given; keep the caller's.
        let mut ivec = *iv;
        let io = buf.as_mut_ptr();
        let enc = if encrypt {
            ffi::AES_ENCRYPT
        } else {
            ffi::AES_DECRYPT
        };
        // SAFETY: `buf.len()` is a whole number of blocks (checked above);
        // in == out is supported by every BoringSSL CBC back end (hardware,
        // vpaes via CRYPTO_cbc128_*, and nohw, which copies before
        // decrypting); `ivec` is a writable 16-byte buffer.
        unsafe {
            ffi::AES_cbc_encrypt(io, io, buf.len(), &self.0, ivec.as_mut_ptr(), enc as _);
        }
        Ok(())
    }
}

impl Drop for AesKey {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.0.rd_key.zeroize();
        self.0.rounds.zeroize();
    }
}

// ---------------------------------------------------------------------------
// Finite-field DH, RFC 3526 group 14
// ---------------------------------------------------------------------------

/// Length of group 14's modulus, public values and shared secrets.
pub(crate) const MODP2048_LEN: usize = 256;

/// A BoringSSL `DH` over the RFC 3526 §3 2048-bit MODP group (generator 2),
/// holding our private exponent and the matching public value.
pub(crate) struct ModpDh(NonNull<ffi::DH>);

// SAFETY: exclusively owned; BoringSSL DH objects may move between threads.
unsafe impl Send for ModpDh {}
// SAFETY: after construction we only call DH_get0_pub_key, DH_check_pub_key
// and DH_compute_key_padded. The first two read only; the last lazily
// creates the Montgomery context under the DH's own lock
// (BN_MONT_CTX_set_locked), so concurrent calls are safe.
unsafe impl Sync for ModpDh {}

impl ModpDh {
    /// Group 14 with private exponent `x` (big-endian). Computes g^x mod p
    /// with BoringSSL's constant-time exponentiation.
    pub(crate) fn new_group14(x: &[u8]) -> Result<Self, CryptoError> {
        if x.is_empty() || x.len() > MODP2048_LEN {
            return Err(CryptoError::BadKeyLength);
        }
        boring::init();
        // SAFETY: each pointer is checked for NULL before use; ownership of
        // p, g and the private BIGNUM passes to the DH only when the set0
        // call succeeds, and is freed here otherwise; `dh` frees the DH on
        // every early return.
        unsafe {
            let dh = ModpDh(NonNull::new(ffi::DH_new()).ok_or_else(backend_failure)?);
            let p = ffi::BN_get_rfc3526_prime_2048(ptr::null_mut());
            let g = ffi::BN_new();
            if p.is_null()
                || g.is_null()
                || ffi::BN_set_word(g, 2) != 1
                || ffi::DH_set0_pqg(dh.0.as_ptr(), p, ptr::null_mut(), g) != 1
            {
                ffi::BN_free(p);
                ffi::BN_free(g);
                return Err(backend_failure());
            }
            let private = ffi::BN_bin2bn(x.as_ptr(), x.len(), ptr::null_mut());
            if private.is_null() {
                return Err(backend_failure());
            }
            if ffi::DH_set0_key(dh.0.as_ptr(), ptr::null_mut(), private) != 1 {
                ffi::BN_clear_free(private);
                return Err(backend_failure());
            }
            // With a private key already set, this only computes the public
            // value (dh.cc: "Only generate a private key if there's
            // already one. Otherwise, `DH_generate_key` recomputes the
            // public key.").
            if ffi::DH_generate_key(dh.0.as_ptr()) != 1 {
                return Err(backend_failure());
            }
            Ok(dh)
        }
    }

    /// Writes the public value g^x mod p, big-endian, left-padded to 256
    /// bytes (RFC 7296 §3.4).
    pub(crate) fn public_value(&self, out: &mut [u8; MODP2048_LEN]) -> Result<(), CryptoError> {
        // SAFETY: the DH is live; DH_get0_pub_key returns a borrowed pointer
        // (non-NULL after DH_generate_key succeeded, checked anyway); `out`
        // is writable for its full length.
        unsafe {
            let y = ffi::DH_get0_pub_key(self.0.as_ptr());
            if y.is_null() || ffi::BN_bn2bin_padded(out.as_mut_ptr(), out.len(), y) != 1 {
                return Err(backend_failure());
            }
        }
        Ok(())
    }

    /// Validates the peer's public value (1 < y < p-1, DH_check_pub_key)
    /// and writes y^x mod p, big-endian, left-padded to 256 bytes.
    pub(crate) fn compute_key(
        &self,
        peer: &[u8],
        out: &mut [u8; MODP2048_LEN],
    ) -> Result<(), CryptoError> {
        if peer.len() != MODP2048_LEN {
            return Err(CryptoError::InvalidPublicValue);
        }
        // SAFETY: `peer` is valid for its length; the BIGNUM made from it is
        // freed on every path; `out` holds DH_size (= 256) bytes, as
        // DH_compute_key_padded requires.
        unsafe {
            let y = ffi::BN_bin2bn(peer.as_ptr(), peer.len(), ptr::null_mut());
            if y.is_null() {
                return Err(backend_failure());
            }
            let mut flags = 0;
            let checked = ffi::DH_check_pub_key(self.0.as_ptr(), y, &mut flags);
            let result = if checked != 1 {
                Err(backend_failure())
            } else if flags != 0 {
                Err(CryptoError::InvalidPublicValue)
            } else if ffi::DH_size(self.0.as_ptr()) as usize != out.len() {
                Err(CryptoError::Backend)
            } else if ffi::DH_compute_key_padded(out.as_mut_ptr(), y, self.0.as_ptr())
                != MODP2048_LEN as std::os::raw::c_int
            {
                // After the range check this cannot be the peer's fault: p is
                // a safe prime, so only 1 and p-1 have order < q, and our
                // exponent is far below q.
                Err(backend_failure())
            } else {
                Ok(())
            };
            ffi::BN_free(y);
            result
        }
    }
}

impl Drop for ModpDh {
    fn drop(&mut self) {
        // SAFETY: we own the DH and free it exactly once; DH_free releases
        // the private exponent through OPENSSL_free, which cleanses it.
        unsafe { ffi::DH_free(self.0.as_ptr()) }
    }
}

// ---------------------------------------------------------------------------
// X.509 extension flags
// ---------------------------------------------------------------------------

/// `X509_check_ca`: whether basicConstraints marks `cert` as a CA.
pub(crate) fn x509_is_ca(cert: &boring::x509::X509Ref) -> bool {
    use foreign_types::ForeignTypeRef;
    // SAFETY: `cert` is a live, parsed X509 borrowed for the call;
    // X509_check_ca only reads it (and caches decoded extensions inside it,
    // under BoringSSL's own lock).
    unsafe { ffi::X509_check_ca(cert.as_ptr()) > 0 }
}

/// `X509_get_key_usage`: the keyUsage bits, or `None` when the certificate
/// has no keyUsage extension (BoringSSL then returns all ones).
pub(crate) fn x509_key_usage(cert: &boring::x509::X509Ref) -> Option<u32> {
    use foreign_types::ForeignTypeRef;
    // SAFETY: as above; read-only on a live X509.
    let ku = unsafe { ffi::X509_get_key_usage(cert.as_ptr()) };
    (ku != u32::MAX).then_some(ku)
}
