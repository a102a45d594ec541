//! The XFRM backend at message level: the Linux netlink messages that
//! program a child SA into the kernel (`NETLINK_XFRM`, `linux/xfrm.h`),
//! built from an [`anyhub_ike::ChildSa`], and parsed back.
//!
//! - [`XfrmMessage`]: one netlink message — XFRM_MSG_NEWSA (`struct
//!   xfrm_usersa_info` + XFRMA_ALG_AEAD / XFRMA_ALG_CRYPT +
//!   XFRMA_ALG_AUTH_TRUNC, XFRMA_ENCAP for ESP-in-UDP, XFRMA_REPLAY_ESN_VAL),
//!   XFRM_MSG_DELSA, XFRM_MSG_NEWPOLICY (`struct xfrm_userpolicy_info` +
//!   XFRMA_TMPL), XFRM_MSG_DELPOLICY — with `parse` and `emit`, and an
//!   `Other` catch-all for message types and attributes we do not model so
//!   they round-trip (rust-netlink's `netlink-packet-xfrm` pattern).
//! - [`child`]: [`child::sa_messages`], [`child::policy_messages`],
//!   [`child::delete_messages`] from a `ChildSa`.
//!
//! Tested against the bytes iproute2 sends (`fixtures.rs`, captured with
//! strace in a network namespace): encode(expected) == capture and
//! parse(capture) == expected. No socket is opened here: the module builds
//! and parses; sending (`sendmsg` on a `NETLINK_XFRM` socket, reading the
//! ack) belongs to the I/O layer's `sys` module.
//!
//! Key material: the owned messages hold keys as `Secret` (redacted
//! `Debug`, zeroized on drop); [`XfrmMessage::emit`] returns a
//! `Zeroizing<Vec<u8>>`.

pub mod child;
pub mod nla;
pub mod structs;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

use zeroize::Zeroizing;

use nla::Nla;
use structs::{ne16, ne32, put_ne16, put_ne32, UserPolicyId, UserPolicyInfo, UserSaId, UserSaInfo};

/// Malformed netlink input. `Copy`, no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum XfrmError {
    #[error("truncated netlink message")]
    Truncated,
    #[error("malformed netlink message")]
    Malformed,
}

/// Message types (`XFRM_MSG_*`).
pub mod msg {
    pub const NEWSA: u16 = 16;
    pub const DELSA: u16 = 17;
    pub const NEWPOLICY: u16 = 19;
    pub const DELPOLICY: u16 = 20;
    pub const UPDPOLICY: u16 = 25;
    pub const UPDSA: u16 = 26;
}

/// Netlink header flags (`NLM_F_*`).
pub mod flags {
    pub const REQUEST: u16 = 0x001;
    pub const ACK: u16 = 0x004;
    pub const REPLACE: u16 = 0x100;
    pub const EXCL: u16 = 0x200;
    pub const CREATE: u16 = 0x400;
}

/// `struct nlmsghdr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetlinkHeader {
    pub len: u32,
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
}

impl NetlinkHeader {
    pub const LEN: usize = 16;
}

/// Longest message we parse: a NEWSA with every attribute is under 1 KiB.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024;

/// One XFRM netlink message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XfrmMessage {
    /// XFRM_MSG_NEWSA (`update`: XFRM_MSG_UPDSA, same body).
    NewSa {
        info: UserSaInfo,
        nlas: Vec<Nla>,
        update: bool,
    },
    DelSa {
        id: UserSaId,
        nlas: Vec<Nla>,
    },
    /// XFRM_MSG_NEWPOLICY (`update`: XFRM_MSG_UPDPOLICY).
    NewPolicy {
        info: UserPolicyInfo,
        nlas: Vec<Nla>,
        update: bool,
    },
    DelPolicy {
        id: UserPolicyId,
        nlas: Vec<Nla>,
    },
    /// Any other message type, body as received.
    Other {
        kind: u16,
        body: Vec<u8>,
    },
}

impl XfrmMessage {
    pub fn kind(&self) -> u16 {
        match self {
            XfrmMessage::NewSa { update: false, .. } => msg::NEWSA,
            XfrmMessage::NewSa { update: true, .. } => msg::UPDSA,
            XfrmMessage::DelSa { .. } => msg::DELSA,
            XfrmMessage::NewPolicy { update: false, .. } => msg::NEWPOLICY,
            XfrmMessage::NewPolicy { update: true, .. } => msg::UPDPOLICY,
            XfrmMessage::DelPolicy { .. } => msg::DELPOLICY,
            XfrmMessage::Other { kind, .. } => *kind,
        }
    }

    fn fixed_len(&self) -> usize {
        match self {
            XfrmMessage::NewSa { .. } => UserSaInfo::LEN,
            XfrmMessage::DelSa { .. } => UserSaId::LEN,
            XfrmMessage::NewPolicy { .. } => UserPolicyInfo::LEN,
            XfrmMessage::DelPolicy { .. } => UserPolicyId::LEN,
            XfrmMessage::Other { body, .. } => body.len(),
        }
    }

    fn nlas(&self) -> &[Nla] {
        match self {
            XfrmMessage::NewSa { nlas, .. }
            | XfrmMessage::DelSa { nlas, .. }
            | XfrmMessage::NewPolicy { nlas, .. }
            | XfrmMessage::DelPolicy { nlas, .. } => nlas,
            XfrmMessage::Other { .. } => &[],
        }
    }

    /// Length of the whole message, header included.
    pub fn buffer_len(&self) -> usize {
        NetlinkHeader::LEN
            + self.fixed_len()
            + self.nlas().iter().map(Nla::buffer_len).sum::<usize>()
    }

    /// The flags iproute2 sends with this message: REQUEST | ACK.
    pub fn default_flags(&self) -> u16 {
        flags::REQUEST | flags::ACK
    }

    /// The whole message, with header `flags`, `seq` and `pid`.
    pub fn emit(&self, flags: u16, seq: u32, pid: u32) -> Zeroizing<Vec<u8>> {
        let len = self.buffer_len();
        let mut b = Zeroizing::new(vec![0u8; len]);
        put_ne32(&mut b, 0, len as u32);
        put_ne16(&mut b, 4, self.kind());
        put_ne16(&mut b, 6, flags);
        put_ne32(&mut b, 8, seq);
        put_ne32(&mut b, 12, pid);
        let body = &mut b[NetlinkHeader::LEN..];
        match self {
            XfrmMessage::NewSa { info, .. } => info.emit(body),
            XfrmMessage::DelSa { id, .. } => id.emit(body),
            XfrmMessage::NewPolicy { info, .. } => info.emit(body),
            XfrmMessage::DelPolicy { id, .. } => id.emit(body),
            XfrmMessage::Other { body: raw, .. } => body[..raw.len()].copy_from_slice(raw),
        }
        let mut at = NetlinkHeader::LEN + self.fixed_len();
        for n in self.nlas() {
            n.emit(&mut b[at..]);
            at += n.buffer_len();
        }
        b
    }

    /// Parses one message (the first in `b`); every length is checked.
    pub fn parse(b: &[u8]) -> Result<(NetlinkHeader, XfrmMessage), XfrmError> {
        if b.len() < NetlinkHeader::LEN {
            return Err(XfrmError::Truncated);
        }
        let h = NetlinkHeader {
            len: ne32(b, 0),
            kind: ne16(b, 4),
            flags: ne16(b, 6),
            seq: ne32(b, 8),
            pid: ne32(b, 12),
        };
        let len = h.len as usize;
        if !(NetlinkHeader::LEN..=MAX_MESSAGE_LEN).contains(&len) {
            return Err(XfrmError::Malformed);
        }
        if len > b.len() {
            return Err(XfrmError::Truncated);
        }
        let body = &b[NetlinkHeader::LEN..len];
        let split = |fixed: usize| -> Result<(&[u8], Vec<Nla>), XfrmError> {
            if body.len() < fixed {
                return Err(XfrmError::Truncated);
            }
            Ok((&body[..fixed], nla::parse_all(&body[fixed..])?))
        };
        let m = match h.kind {
            msg::NEWSA | msg::UPDSA => {
                let (f, nlas) = split(UserSaInfo::LEN)?;
                XfrmMessage::NewSa {
                    info: UserSaInfo::parse(f)?,
                    nlas,
                    update: h.kind == msg::UPDSA,
                }
            }
            msg::DELSA => {
                let (f, nlas) = split(UserSaId::LEN)?;
                XfrmMessage::DelSa {
                    id: UserSaId::parse(f)?,
                    nlas,
                }
            }
            msg::NEWPOLICY | msg::UPDPOLICY => {
                let (f, nlas) = split(UserPolicyInfo::LEN)?;
                XfrmMessage::NewPolicy {
                    info: UserPolicyInfo::parse(f)?,
                    nlas,
                    update: h.kind == msg::UPDPOLICY,
                }
            }
            msg::DELPOLICY => {
                let (f, nlas) = split(UserPolicyId::LEN)?;
                XfrmMessage::DelPolicy {
                    id: UserPolicyId::parse(f)?,
                    nlas,
                }
            }
            kind => XfrmMessage::Other {
                kind,
                body: body.to_vec(),
            },
        };
        Ok((h, m))
    }
}
