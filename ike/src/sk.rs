//! The Encrypted payload (SK, RFC 7296 §3.14): sealing and opening a
//! message's protected payloads, with AEADs per RFC 5282 / RFC 7634 or
//! AES-CBC plus HMAC per RFC 7296 §3.14 and RFC 4868.
//!
//! ```text
//!  IKE header (28) | SK generic header (4) | IV | ciphertext | ICV
//!  \____________ AAD (AEAD) _____________/
//!  \_________________ integrity-protected (CBC+HMAC) _______/
//!  plaintext = inner payloads | padding | pad length (1)
//! ```

use crate::keys::{Cipher, IkeKeys};
use crate::wire::{self, Header, Payload, PayloadType};
use anyhub_crypto::aead::AeadKey;
use anyhub_crypto::cipher::AesCbc;
use anyhub_crypto::integ::Integ;
use anyhub_crypto::{Rng, Secret};

/// Why a protected message could not be opened. Copy, no allocation: the
/// caller only counts and drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// ICV or AEAD tag mismatch: not from our peer, or corrupted.
    Integrity,
    /// Lengths inside the encrypted body do not add up.
    Malformed,
    /// The decrypted payload chain does not parse.
    Payloads(wire::MalformedError),
}

/// Smallest plaintext share of one fragment we send, whatever the
/// configured size: below this fragmentation would only multiply overhead.
const MIN_FRAGMENT_PLAINTEXT: usize = 64;

struct Overhead {
    fixed: usize,
    max_pad: usize,
}

enum Direction {
    Aead(AeadKey),
    // Boxed: the expanded AES key schedule is large, and CBC is the rare case.
    Cbc {
        cipher: Box<AesCbc>,
        integ: Integ,
        integ_key: Secret,
    },
}

/// The SK keys of one IKE SA, expanded once, for both directions.
pub(crate) struct SkCrypto {
    from_initiator: Direction,
    from_responder: Direction,
    /// AEAD IVs must never repeat under one key (RFC 5282 §3.1): a per-SA
    /// counter gives that for the messages this side sends.
    next_iv: u64,
}

impl std::fmt::Debug for SkCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SkCrypto(<redacted>)")
    }
}

impl SkCrypto {
    pub(crate) fn new(keys: &IkeKeys) -> Option<SkCrypto> {
        let dir = |ek: &Secret, ak: &Secret| -> Option<Direction> {
            Some(match keys.suite.cipher {
                Cipher::Aead(alg) => Direction::Aead(AeadKey::new(alg, ek.as_bytes()).ok()?),
                Cipher::AesCbc(_) => Direction::Cbc {
                    cipher: Box::new(AesCbc::new(ek.as_bytes()).ok()?),
                    integ: keys.suite.integ?,
                    integ_key: ak.clone(),
                },
            })
        };
        Some(SkCrypto {
            from_initiator: dir(&keys.sk_ei, &keys.sk_ai)?,
            from_responder: dir(&keys.sk_er, &keys.sk_ar)?,
            next_iv: 0,
        })
    }

    /// The AEAD IV counter of the next message we seal (takeover state).
    pub(crate) fn next_iv(&self) -> u64 {
        self.next_iv
    }

    /// Continues sealing at IV counter `iv` (an adopted SA, whose old owner
    /// used the IVs below it).
    pub(crate) fn set_next_iv(&mut self, iv: u64) {
        self.next_iv = iv;
    }

    /// Builds a whole protected message: `header` (next payload and length
    /// are filled in) with `payloads` inside SK. `we_are_initiator` is the
    /// original-initiator role of the IKE SA, which picks the keys.
    pub(crate) fn seal(
        &mut self,
        we_are_initiator: bool,
        header: &Header,
        payloads: &[Payload],
        rng: &mut dyn Rng,
    ) -> Vec<u8> {
        let mut inner = Vec::new();
        let first = wire::emit_payloads(payloads, &mut inner);
        self.seal_plain(we_are_initiator, header, first, None, inner, rng)
    }

    /// Like [`SkCrypto::seal`], but as IKE fragments (RFC 7383 §2.5) when the
    /// whole message would be longer than `max_len` bytes: each fragment a
    /// whole message of at most `max_len` bytes, with its own IV and ICV.
    /// One datagram when it fits.
    pub(crate) fn seal_datagrams(
        &mut self,
        we_are_initiator: bool,
        header: &Header,
        payloads: &[Payload],
        max_len: usize,
        rng: &mut dyn Rng,
    ) -> Vec<Vec<u8>> {
        let mut inner = Vec::new();
        let first = wire::emit_payloads(payloads, &mut inner);
        let overhead = self.overhead(we_are_initiator);
        if Header::LEN + 4 + overhead.fixed + inner.len() + overhead.max_pad <= max_len {
            return vec![self.seal_plain(we_are_initiator, header, first, None, inner, rng)];
        }
        // Room for plaintext in one fragment: the limit minus the IKE header,
        // the SKF header with its two fields, IV, ICV and the worst padding.
        let room = max_len
            .saturating_sub(Header::LEN + 8 + overhead.fixed + overhead.max_pad)
            .max(MIN_FRAGMENT_PLAINTEXT);
        let chunks: Vec<&[u8]> = inner.chunks(room).collect();
        let total = chunks.len().min(usize::from(u16::MAX)) as u16;
        chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| {
                let number = i as u16 + 1;
                // Only fragment 1 names the first inner payload (§2.5).
                let first_inner = if number == 1 {
                    first
                } else {
                    PayloadType::NONE
                };
                self.seal_plain(
                    we_are_initiator,
                    header,
                    first_inner,
                    Some((number, total)),
                    chunk.to_vec(),
                    rng,
                )
            })
            .collect()
    }

    /// IV, ICV and pad-length bytes (`fixed`) and the most padding one
    /// message of ours can carry (`max_pad`).
    fn overhead(&self, we_are_initiator: bool) -> Overhead {
        match self.dir(we_are_initiator) {
            Direction::Aead(_) => Overhead {
                fixed: 8 + 16 + 1,
                max_pad: 0,
            },
            Direction::Cbc { integ, .. } => Overhead {
                fixed: 16 + integ.icv_len() + 1,
                max_pad: 15,
            },
        }
    }

    fn dir(&self, we_are_initiator: bool) -> &Direction {
        if we_are_initiator {
            &self.from_initiator
        } else {
            &self.from_responder
        }
    }

    /// Encrypts `inner` (an emitted payload chain, or one fragment of one)
    /// into a whole message: SK, or SKF with `fragment` = (number, total).
    pub(crate) fn seal_plain(
        &mut self,
        we_are_initiator: bool,
        header: &Header,
        first: PayloadType,
        fragment: Option<(u16, u16)>,
        mut inner: Vec<u8>,
        rng: &mut dyn Rng,
    ) -> Vec<u8> {
        let iv_counter = self.next_iv;
        self.next_iv += 1;
        let prefix = |out: &mut Vec<u8>, body_len: usize| match fragment {
            None => wire::emit_sk_prefix(header, first, body_len, out),
            Some((number, total)) => {
                wire::emit_skf_prefix(header, first, number, total, body_len, out)
            }
        };
        match self.dir(we_are_initiator) {
            Direction::Aead(key) => {
                // Zero octets of padding, then the pad length (RFC 5282 §3).
                inner.push(0);
                let body_len = 8 + inner.len() + 16;
                let mut out = Vec::with_capacity(Header::LEN + 8 + body_len);
                let aad_len = prefix(&mut out, body_len);
                let iv = iv_counter.to_be_bytes();
                out.extend_from_slice(&iv);
                let ct_at = out.len();
                out.extend_from_slice(&inner);
                let mut tag = [0u8; 16];
                let (aad, ct) = out.split_at_mut(ct_at);
                key.seal_in_place(&iv, &aad[..aad_len], ct, &mut tag)
                    .expect("sealing into a correctly sized buffer cannot fail");
                out.extend_from_slice(&tag);
                out
            }
            Direction::Cbc {
                cipher,
                integ,
                integ_key,
            } => {
                // Pad so that payloads | padding | pad length fills whole blocks.
                let pad = (16 - (inner.len() + 1) % 16) % 16;
                inner.extend(std::iter::repeat_n(0u8, pad));
                inner.push(pad as u8);
                let icv_len = integ.icv_len();
                let body_len = 16 + inner.len() + icv_len;
                let mut out = Vec::with_capacity(Header::LEN + 8 + body_len);
                prefix(&mut out, body_len);
                let mut iv = [0u8; 16];
                rng.fill(&mut iv);
                out.extend_from_slice(&iv);
                let ct_at = out.len();
                out.extend_from_slice(&inner);
                cipher
                    .encrypt_in_place(&iv, &mut out[ct_at..])
                    .expect("buffer is a whole number of blocks");
                let mut icv = vec![0u8; icv_len];
                integ.compute(integ_key.as_bytes(), &[&out], &mut icv);
                out.extend_from_slice(&icv);
                out
            }
        }
    }

    /// Opens the SK payload of `msg` (the whole datagram) sent by the
    /// original initiator (`from_initiator`) or responder.
    pub(crate) fn open(
        &self,
        from_initiator: bool,
        msg: &[u8],
        first_inner: PayloadType,
        aad_len: usize,
        body: std::ops::Range<usize>,
    ) -> Result<Vec<Payload>, OpenError> {
        let plain = self.open_raw(from_initiator, msg, aad_len, body)?;
        wire::parse_payloads(first_inner, &plain).map_err(OpenError::Payloads)
    }

    /// Checks and decrypts an SK or SKF body: the plaintext without its
    /// padding (a payload chain, or one fragment of one).
    pub(crate) fn open_raw(
        &self,
        from_initiator: bool,
        msg: &[u8],
        aad_len: usize,
        body: std::ops::Range<usize>,
    ) -> Result<Vec<u8>, OpenError> {
        let dir = self.dir(from_initiator);
        let body_bytes = msg.get(body.clone()).ok_or(OpenError::Malformed)?;
        let mut plain = match dir {
            Direction::Aead(key) => {
                if body_bytes.len() < 8 + 1 + 16 {
                    return Err(OpenError::Malformed);
                }
                let iv: [u8; 8] = body_bytes[..8].try_into().expect("length checked");
                let tag: [u8; 16] = body_bytes[body_bytes.len() - 16..]
                    .try_into()
                    .expect("length checked");
                let mut buf = body_bytes[8..body_bytes.len() - 16].to_vec();
                let aad = msg.get(..aad_len).ok_or(OpenError::Malformed)?;
                key.open_in_place(&iv, aad, &mut buf, &tag)
                    .map_err(|_| OpenError::Integrity)?;
                buf
            }
            Direction::Cbc {
                cipher,
                integ,
                integ_key,
            } => {
                let icv_len = integ.icv_len();
                if body_bytes.len() < 16 + 16 + icv_len
                    || (body_bytes.len() - 16 - icv_len) % 16 != 0
                {
                    return Err(OpenError::Malformed);
                }
                let icv_at = body.end - icv_len;
                if !integ.verify(
                    integ_key.as_bytes(),
                    &[&msg[..icv_at]],
                    &msg[icv_at..body.end],
                ) {
                    return Err(OpenError::Integrity);
                }
                let iv: [u8; 16] = body_bytes[..16].try_into().expect("length checked");
                let mut buf = msg[body.start + 16..icv_at].to_vec();
                cipher
                    .decrypt_in_place(&iv, &mut buf)
                    .map_err(|_| OpenError::Malformed)?;
                buf
            }
        };
        let pad_len = *plain.last().ok_or(OpenError::Malformed)? as usize;
        if pad_len + 1 > plain.len() {
            return Err(OpenError::Malformed);
        }
        plain.truncate(plain.len() - 1 - pad_len);
        Ok(plain)
    }
}
