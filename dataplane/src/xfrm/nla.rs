//! XFRM netlink attributes (`enum xfrm_attr_type_t` of `linux/xfrm.h`):
//! a buffer walk, an owned [`Nla`] per attribute we build, and
//! [`Nla::Other`] for everything else so unknown kernel attributes
//! round-trip (rust-netlink's pattern).
//!
//! ```text
//! +---------------+---------------+------------------------+---------+
//! | nla_len (u16) | nla_type (u16)| value (nla_len - 4)    | pad to 4|
//! +---------------+---------------+------------------------+---------+
//! ```

use std::fmt;

use anyhub_crypto::Secret;

use super::structs::{ne16, ne32, put_ne16, put_ne32, Address, UserTmpl};
use super::XfrmError;

/// Attribute types we build or read.
pub mod kind {
    pub const ALG_AUTH: u16 = 1;
    pub const ALG_CRYPT: u16 = 2;
    pub const ENCAP: u16 = 4;
    pub const TMPL: u16 = 5;
    pub const SRCADDR: u16 = 13;
    pub const ALG_AEAD: u16 = 18;
    pub const ALG_AUTH_TRUNC: u16 = 20;
    pub const REPLAY_ESN_VAL: u16 = 23;
}

/// Header of one attribute.
pub const NLA_HEADER_LEN: usize = 4;
/// Attributes one message may carry before we call it garbage (XFRM
/// messages carry a handful).
pub const MAX_NLAS: usize = 64;
/// Longest key we accept in an algorithm attribute (bytes): 512 bits,
/// more than any ESP algorithm has.
pub const MAX_KEY_LEN: usize = 64;
/// Templates one policy may carry (`XFRM_MAX_DEPTH`).
pub const MAX_TMPLS: usize = 6;
/// Words of replay bitmap we accept (a 4096-packet window, the kernel's
/// `XFRMA_REPLAY_ESN_MAX`).
pub const MAX_BMP_WORDS: usize = 4096 / 32;

pub(crate) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// `char alg_name[64]`: NUL-padded; kept whole so it round-trips.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AlgName(pub [u8; 64]);

impl AlgName {
    pub const LEN: usize = 64;

    /// A name (truncated to 63 bytes, NUL-terminated).
    pub fn new(name: &str) -> AlgName {
        let mut b = [0u8; 64];
        let n = name.len().min(63);
        b[..n].copy_from_slice(&name.as_bytes()[..n]);
        AlgName(b)
    }

    /// The name up to its NUL (lossy if not UTF-8).
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(64);
        String::from_utf8_lossy(&self.0[..end])
    }
}

impl fmt::Debug for AlgName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// `struct xfrm_encap_tmpl`: ESP-in-UDP (RFC 3948) ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncapTmpl {
    /// UDP_ENCAP_ESPINUDP = 2.
    pub encap_type: u16,
    pub sport: u16,
    pub dport: u16,
    /// Original address for NAT-T checksum fix-ups (transport mode only).
    pub oa: Address,
}

pub const UDP_ENCAP_ESPINUDP: u16 = 2;

impl EncapTmpl {
    pub const LEN: usize = 24;
}

/// `struct xfrm_replay_state_esn`: the replay state when ESN is on or the
/// window is wider than the legacy 32 bits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayEsn {
    /// Bitmap length in 32-bit words (the kernel sizes the window by it).
    pub bmp_len: u32,
    pub oseq: u32,
    pub seq: u32,
    pub oseq_hi: u32,
    pub seq_hi: u32,
    pub replay_window: u32,
    /// The bitmap words actually carried (iproute2 and strongSwan send
    /// none when installing).
    pub bmp: Vec<u32>,
}

impl ReplayEsn {
    pub const HEADER_LEN: usize = 24;
}

/// One attribute.
#[derive(Clone, PartialEq, Eq)]
pub enum Nla {
    /// XFRMA_ALG_AEAD: `struct xfrm_algo_aead` (name, key bits, ICV bits,
    /// key).
    AlgAead {
        name: AlgName,
        key_bits: u32,
        icv_bits: u32,
        key: Secret,
    },
    /// XFRMA_ALG_CRYPT: `struct xfrm_algo`.
    AlgCrypt {
        name: AlgName,
        key_bits: u32,
        key: Secret,
    },
    /// XFRMA_ALG_AUTH_TRUNC: `struct xfrm_algo_auth` (with truncation).
    AlgAuthTrunc {
        name: AlgName,
        key_bits: u32,
        trunc_bits: u32,
        key: Secret,
    },
    Encap(EncapTmpl),
    ReplayEsn(ReplayEsn),
    /// XFRMA_TMPL: one or more `struct xfrm_user_tmpl`.
    Tmpl(Vec<UserTmpl>),
    /// XFRMA_SRCADDR (DELSA names the SA's source with it).
    SrcAddr(Address),
    /// Anything else, type and value as received.
    Other {
        kind: u16,
        value: Vec<u8>,
    },
}

impl fmt::Debug for Nla {
    /// Keys print as `Secret(<redacted> …)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Nla::AlgAead {
                name,
                key_bits,
                icv_bits,
                key,
            } => f
                .debug_struct("AlgAead")
                .field("name", name)
                .field("key_bits", key_bits)
                .field("icv_bits", icv_bits)
                .field("key", key)
                .finish(),
            Nla::AlgCrypt {
                name,
                key_bits,
                key,
            } => f
                .debug_struct("AlgCrypt")
                .field("name", name)
                .field("key_bits", key_bits)
                .field("key", key)
                .finish(),
            Nla::AlgAuthTrunc {
                name,
                key_bits,
                trunc_bits,
                key,
            } => f
                .debug_struct("AlgAuthTrunc")
                .field("name", name)
                .field("key_bits", key_bits)
                .field("trunc_bits", trunc_bits)
                .field("key", key)
                .finish(),
            Nla::Encap(e) => f.debug_tuple("Encap").field(e).finish(),
            Nla::ReplayEsn(r) => f.debug_tuple("ReplayEsn").field(r).finish(),
            Nla::Tmpl(t) => f.debug_tuple("Tmpl").field(t).finish(),
            Nla::SrcAddr(a) => f.debug_tuple("SrcAddr").field(a).finish(),
            Nla::Other { kind, value } => f
                .debug_struct("Other")
                .field("kind", kind)
                .field("len", &value.len())
                .finish(),
        }
    }
}

fn key_of(value: &[u8], at: usize, key_bits: u32) -> Result<Secret, XfrmError> {
    let n = (key_bits as usize).div_ceil(8);
    if n > MAX_KEY_LEN {
        return Err(XfrmError::Malformed);
    }
    let key = value.get(at..at + n).ok_or(XfrmError::Truncated)?;
    Ok(Secret::from_slice(key))
}

fn name_of(value: &[u8]) -> Result<AlgName, XfrmError> {
    let mut n = [0u8; 64];
    n.copy_from_slice(value.get(..64).ok_or(XfrmError::Truncated)?);
    Ok(AlgName(n))
}

impl Nla {
    /// Parses one attribute's value.
    pub fn parse(kind_: u16, value: &[u8]) -> Result<Nla, XfrmError> {
        let word = |at: usize| -> Result<u32, XfrmError> {
            if value.len() < at + 4 {
                Err(XfrmError::Truncated)
            } else {
                Ok(ne32(value, at))
            }
        };
        Ok(match kind_ & 0x3fff {
            kind::ALG_AEAD => {
                let key_bits = word(64)?;
                Nla::AlgAead {
                    name: name_of(value)?,
                    key_bits,
                    icv_bits: word(68)?,
                    key: key_of(value, 72, key_bits)?,
                }
            }
            kind::ALG_CRYPT => {
                let key_bits = word(64)?;
                Nla::AlgCrypt {
                    name: name_of(value)?,
                    key_bits,
                    key: key_of(value, 68, key_bits)?,
                }
            }
            kind::ALG_AUTH_TRUNC => {
                let key_bits = word(64)?;
                Nla::AlgAuthTrunc {
                    name: name_of(value)?,
                    key_bits,
                    trunc_bits: word(68)?,
                    key: key_of(value, 72, key_bits)?,
                }
            }
            kind::ENCAP => {
                if value.len() < EncapTmpl::LEN {
                    return Err(XfrmError::Truncated);
                }
                let mut oa = [0u8; 16];
                oa.copy_from_slice(&value[8..24]);
                Nla::Encap(EncapTmpl {
                    encap_type: ne16(value, 0),
                    sport: u16::from_be_bytes([value[2], value[3]]),
                    dport: u16::from_be_bytes([value[4], value[5]]),
                    oa: Address(oa),
                })
            }
            kind::REPLAY_ESN_VAL => {
                if value.len() < ReplayEsn::HEADER_LEN {
                    return Err(XfrmError::Truncated);
                }
                let words = (value.len() - ReplayEsn::HEADER_LEN) / 4;
                if words > MAX_BMP_WORDS {
                    return Err(XfrmError::Malformed);
                }
                Nla::ReplayEsn(ReplayEsn {
                    bmp_len: ne32(value, 0),
                    oseq: ne32(value, 4),
                    seq: ne32(value, 8),
                    oseq_hi: ne32(value, 12),
                    seq_hi: ne32(value, 16),
                    replay_window: ne32(value, 20),
                    bmp: (0..words).map(|i| ne32(value, 24 + 4 * i)).collect(),
                })
            }
            kind::TMPL => {
                if value.is_empty() || value.len() % UserTmpl::LEN != 0 {
                    return Err(XfrmError::Malformed);
                }
                if value.len() / UserTmpl::LEN > MAX_TMPLS {
                    return Err(XfrmError::Malformed);
                }
                Nla::Tmpl(
                    value
                        .chunks_exact(UserTmpl::LEN)
                        .map(UserTmpl::parse)
                        .collect::<Result<_, _>>()?,
                )
            }
            kind::SRCADDR => {
                let mut a = [0u8; 16];
                a.copy_from_slice(value.get(..16).ok_or(XfrmError::Truncated)?);
                Nla::SrcAddr(Address(a))
            }
            _ => Nla::Other {
                kind: kind_,
                value: value.to_vec(),
            },
        })
    }

    fn kind(&self) -> u16 {
        match self {
            Nla::AlgAead { .. } => kind::ALG_AEAD,
            Nla::AlgCrypt { .. } => kind::ALG_CRYPT,
            Nla::AlgAuthTrunc { .. } => kind::ALG_AUTH_TRUNC,
            Nla::Encap(_) => kind::ENCAP,
            Nla::ReplayEsn(_) => kind::REPLAY_ESN_VAL,
            Nla::Tmpl(_) => kind::TMPL,
            Nla::SrcAddr(_) => kind::SRCADDR,
            Nla::Other { kind, .. } => *kind,
        }
    }

    /// Length of the value (without header and padding).
    pub fn value_len(&self) -> usize {
        match self {
            Nla::AlgAead { key, .. } | Nla::AlgAuthTrunc { key, .. } => 72 + key.len(),
            Nla::AlgCrypt { key, .. } => 68 + key.len(),
            Nla::Encap(_) => EncapTmpl::LEN,
            Nla::ReplayEsn(r) => ReplayEsn::HEADER_LEN + 4 * r.bmp.len(),
            Nla::Tmpl(t) => UserTmpl::LEN * t.len(),
            Nla::SrcAddr(_) => 16,
            Nla::Other { value, .. } => value.len(),
        }
    }

    /// Bytes this attribute takes in a message, padding included.
    pub fn buffer_len(&self) -> usize {
        align4(NLA_HEADER_LEN + self.value_len())
    }

    /// Writes header, value and zero padding into `b` (at least
    /// [`Nla::buffer_len`] bytes).
    pub fn emit(&self, b: &mut [u8]) {
        let len = NLA_HEADER_LEN + self.value_len();
        b[..align4(len)].fill(0);
        put_ne16(b, 0, len as u16);
        put_ne16(b, 2, self.kind());
        let v = &mut b[NLA_HEADER_LEN..len];
        match self {
            Nla::AlgAead {
                name,
                key_bits,
                icv_bits,
                key,
            } => {
                v[..64].copy_from_slice(&name.0);
                put_ne32(v, 64, *key_bits);
                put_ne32(v, 68, *icv_bits);
                v[72..].copy_from_slice(key.as_bytes());
            }
            Nla::AlgCrypt {
                name,
                key_bits,
                key,
            } => {
                v[..64].copy_from_slice(&name.0);
                put_ne32(v, 64, *key_bits);
                v[68..].copy_from_slice(key.as_bytes());
            }
            Nla::AlgAuthTrunc {
                name,
                key_bits,
                trunc_bits,
                key,
            } => {
                v[..64].copy_from_slice(&name.0);
                put_ne32(v, 64, *key_bits);
                put_ne32(v, 68, *trunc_bits);
                v[72..].copy_from_slice(key.as_bytes());
            }
            Nla::Encap(e) => {
                put_ne16(v, 0, e.encap_type);
                v[2..4].copy_from_slice(&e.sport.to_be_bytes());
                v[4..6].copy_from_slice(&e.dport.to_be_bytes());
                v[8..24].copy_from_slice(&e.oa.0);
            }
            Nla::ReplayEsn(r) => {
                for (i, w) in [
                    r.bmp_len,
                    r.oseq,
                    r.seq,
                    r.oseq_hi,
                    r.seq_hi,
                    r.replay_window,
                ]
                .into_iter()
                .chain(r.bmp.iter().copied())
                .enumerate()
                {
                    put_ne32(v, 4 * i, w);
                }
            }
            Nla::Tmpl(t) => {
                for (i, t) in t.iter().enumerate() {
                    t.emit(&mut v[i * UserTmpl::LEN..(i + 1) * UserTmpl::LEN]);
                }
            }
            Nla::SrcAddr(a) => v.copy_from_slice(&a.0),
            Nla::Other { value, .. } => v.copy_from_slice(value),
        }
    }
}

/// Parses the attributes filling `b` (each length checked, at most
/// [`MAX_NLAS`]).
pub fn parse_all(mut b: &[u8]) -> Result<Vec<Nla>, XfrmError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if out.len() == MAX_NLAS {
            return Err(XfrmError::Malformed);
        }
        if b.len() < NLA_HEADER_LEN {
            return Err(XfrmError::Truncated);
        }
        let len = usize::from(ne16(b, 0));
        if len < NLA_HEADER_LEN {
            return Err(XfrmError::Malformed);
        }
        if len > b.len() {
            return Err(XfrmError::Truncated);
        }
        out.push(Nla::parse(ne16(b, 2), &b[NLA_HEADER_LEN..len])?);
        b = &b[align4(len).min(b.len())..];
    }
    Ok(out)
}
