//! A stand-in [`PacketTransform`] that pays for real crypto: AES-256-GCM
//! through [`anyhub_crypto::aead::AeadKey`], with an ESP-like layout, so
//! the I/O layer can be measured before the ESP core plugs in. **Not
//! ESP**: no SPI lookup, no replay window, no padding or next header.
//!
//! ```text
//! +--------+----------------+---------------------------+---------+
//! | id (4) | IV counter (8) | ciphertext (inner packet) | tag (16)|
//! +--------+----------------+---------------------------+---------+
//!   AAD = id | IV; nonce = salt | IV (RFC 4106 §4)
//! ```
//!
//! IVs come from one counter per transform, shared by the workers that use
//! it, with an 8-bit prefix per transform instance: instances sharing a key
//! (one per queue) never emit the same (key, IV) pair.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhub_crypto::aead::{AeadAlg, AeadKey, IV_LEN, TAG_LEN};
use anyhub_crypto::CryptoError;

use super::forward::{PacketTransform, Verdict};

const HDR: usize = 4 + IV_LEN;

/// AES-256-GCM over a single peer (see the module doc).
pub struct AeadTestTransform {
    seal: AeadKey,
    open: AeadKey,
    id_out: u32,
    id_in: u32,
    peer: SocketAddr,
    iv: AtomicU64,
    /// Datagrams that failed authentication or were malformed.
    pub bad: AtomicU64,
}

impl AeadTestTransform {
    /// `keymat_*` are 36 bytes (AES-256 key + 4-byte salt) per direction;
    /// `id_out` is written into every datagram we send, `id_in` expected
    /// in every one we receive; `iv_prefix` is the top byte of every IV
    /// this instance emits (distinct per instance sharing `keymat_out`).
    pub fn new(
        keymat_out: &[u8],
        keymat_in: &[u8],
        id_out: u32,
        id_in: u32,
        peer: SocketAddr,
        iv_prefix: u8,
    ) -> Result<Self, CryptoError> {
        Ok(AeadTestTransform {
            seal: AeadKey::new(AeadAlg::AesGcm16_256, keymat_out)?,
            open: AeadKey::new(AeadAlg::AesGcm16_256, keymat_in)?,
            id_out,
            id_in,
            peer,
            iv: AtomicU64::new(((iv_prefix as u64) << 56) | 1),
            bad: AtomicU64::new(0),
        })
    }
}

impl PacketTransform for AeadTestTransform {
    fn headroom(&self) -> usize {
        HDR
    }

    fn tailroom(&self) -> usize {
        TAG_LEN
    }

    fn outbound(&self, buf: &mut [u8], inner_len: usize) -> Verdict {
        match self.seal(buf, inner_len) {
            Some(range) => Verdict::Network {
                range,
                to: self.peer,
            },
            None => Verdict::Done,
        }
    }

    fn inbound(&self, _from: SocketAddr, outer: &mut [u8]) -> Verdict {
        match self.open(outer) {
            Some(r) => Verdict::Tun(r),
            None => Verdict::Done,
        }
    }
}

impl AeadTestTransform {
    fn seal(&self, buf: &mut [u8], inner_len: usize) -> Option<Range<usize>> {
        let iv = self.iv.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        let (hdr, rest) = buf.split_at_mut(HDR);
        hdr[..4].copy_from_slice(&self.id_out.to_be_bytes());
        hdr[4..].copy_from_slice(&iv);
        let (body, tail) = rest.split_at_mut(inner_len);
        let tag: &mut [u8; TAG_LEN] = (&mut tail[..TAG_LEN]).try_into().ok()?;
        self.seal.seal_in_place(&iv, hdr, body, tag).ok()?;
        Some(0..HDR + inner_len + TAG_LEN)
    }

    fn open(&self, outer: &mut [u8]) -> Option<Range<usize>> {
        if outer.len() < HDR + TAG_LEN + 20 || outer[..4] != self.id_in.to_be_bytes() {
            self.bad.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let n = outer.len();
        let (hdr, rest) = outer.split_at_mut(HDR);
        let iv: [u8; IV_LEN] = hdr[4..].try_into().ok()?;
        let (body, tag) = rest.split_at_mut(n - HDR - TAG_LEN);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().ok()?;
        if self.open.open_in_place(&iv, hdr, body, tag).is_err() {
            self.bad.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(HDR..n - TAG_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_between_two_sides() {
        let (k1, k2) = ([1u8; 36], [2u8; 36]);
        let peer: SocketAddr = "192.0.2.1:4500".parse().unwrap();
        let a = AeadTestTransform::new(&k1, &k2, 7, 8, peer, 0).unwrap();
        let b = AeadTestTransform::new(&k2, &k1, 8, 7, peer, 0).unwrap();
        let inner: Vec<u8> = (0..100u8).collect();
        let mut buf = vec![0u8; HDR + inner.len() + TAG_LEN];
        buf[HDR..HDR + inner.len()].copy_from_slice(&inner);
        let n = buf.len();
        assert_eq!(
            a.outbound(&mut buf, inner.len()),
            Verdict::Network {
                range: 0..n,
                to: peer
            }
        );
        assert_ne!(&buf[HDR..HDR + inner.len()], &inner[..]);
        let mut tampered = buf.clone();
        let mut other = buf.clone();
        let Verdict::Tun(r) = b.inbound(peer, &mut buf) else {
            panic!("not opened")
        };
        assert_eq!(&buf[r], &inner[..]);
        tampered[HDR + 3] ^= 1;
        assert_eq!(b.inbound(peer, &mut tampered), Verdict::Done);
        // Right id, wrong key: authentication fails.
        let c = AeadTestTransform::new(&k2, &k2, 8, 7, peer, 0).unwrap();
        assert_eq!(c.inbound(peer, &mut other), Verdict::Done);
        assert_eq!(c.bad.load(Ordering::Relaxed), 1);
        assert_eq!(b.bad.load(Ordering::Relaxed), 1);
    }
}
