//! IKE fragmentation (RFC 7383): reassembling the peer's fragments and
//! deciding how large our own messages may be.
//!
//! Both sides announce IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT (§2.3);
//! from then on an encrypted message too large for the path is sent as SKF
//! fragments ([`crate::sk::SkCrypto::seal_datagrams`]), each a whole IKE
//! message with its own IV and ICV.
//!
//! On receipt each fragment is authenticated on its own before it is kept
//! (§2.6), so an attacker without the keys cannot fill the buffer. State is
//! one [`Reassembly`] per IKE SA and direction of the message (request or
//! response): a message ID other than the one expected never gets here,
//! because the window check runs first.

use crate::wire::limits::{MAX_FRAGMENTS, MAX_MESSAGE_LEN};
use crate::wire::PayloadType;
use std::net::SocketAddr;

/// The fragments of one message collected so far.
#[derive(Debug)]
pub(super) struct Reassembly {
    msg_id: u32,
    response: bool,
    total: u16,
    /// Fragment 1's Next Payload: the first payload of the whole message.
    first_inner: Option<PayloadType>,
    parts: Vec<Option<Vec<u8>>>,
    received: u16,
    bytes: usize,
}

/// What one authenticated fragment did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Collected {
    /// The message is whole: its first payload type and plaintext chain.
    Complete(PayloadType, Vec<u8>),
    /// Kept; more to come.
    Pending,
    /// Not usable (RFC 7383 §2.6: fewer Total Fragments than an earlier
    /// fragment said, a duplicate, or the whole grew beyond our limit).
    Dropped,
}

impl Reassembly {
    /// Plaintext bytes held.
    #[cfg(feature = "fuzzing")]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds fragment `number` of `total` of message `msg_id` (already
    /// authenticated) to `slot`, starting over for a new message.
    pub(super) fn collect(
        slot: &mut Option<Reassembly>,
        msg_id: u32,
        response: bool,
        number: u16,
        total: u16,
        first_inner: PayloadType,
        plain: Vec<u8>,
    ) -> Collected {
        if number == 0 || number > total || total > MAX_FRAGMENTS {
            return Collected::Dropped;
        }
        let fresh = match slot {
            Some(r) if r.msg_id == msg_id && r.response == response => {
                // §2.6: a fragment announcing more fragments than before
                // starts the collection over (the sender re-fragmented for a
                // smaller path MTU); fewer is dropped.
                if total < r.total {
                    return Collected::Dropped;
                }
                total > r.total
            }
            _ => true,
        };
        if fresh {
            *slot = Some(Reassembly {
                msg_id,
                response,
                total,
                first_inner: None,
                parts: vec![None; usize::from(total)],
                received: 0,
                bytes: 0,
            });
        }
        let r = slot.as_mut().expect("just filled");
        let i = usize::from(number - 1);
        if r.parts[i].is_some() || r.bytes + plain.len() > MAX_MESSAGE_LEN {
            return Collected::Dropped;
        }
        if number == 1 {
            r.first_inner = Some(first_inner);
        }
        r.bytes += plain.len();
        r.parts[i] = Some(plain);
        r.received += 1;
        if r.received < r.total {
            return Collected::Pending;
        }
        let r = slot.take().expect("just used");
        let first = r.first_inner.expect("fragment 1 arrived");
        let mut whole = Vec::with_capacity(r.bytes);
        for p in r.parts.into_iter().flatten() {
            whole.extend_from_slice(&p);
        }
        Collected::Complete(first, whole)
    }
}

/// The largest IKE message (IKE header on) we send to `remote` when the IP
/// datagram may be `fragment_size` bytes: minus the IP header (20, or 40 for
/// IPv6), UDP (8) and, on the NAT-T port, the non-ESP marker (4). As
/// strongSwan's `fragment_size`, the limit is the whole IP datagram.
pub(super) fn max_message_len(fragment_size: u16, remote: SocketAddr, natt: bool) -> usize {
    let ip = if remote.is_ipv4() { 20 } else { 40 };
    let marker = if natt { 4 } else { 0 };
    usize::from(fragment_size).saturating_sub(ip + 8 + marker)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(slot: &mut Option<Reassembly>, id: u32, n: u16, total: u16, data: &[u8]) -> Collected {
        Reassembly::collect(slot, id, false, n, total, PayloadType(35), data.to_vec())
    }

    #[test]
    fn reassembles_in_any_order() {
        let mut slot = None;
        assert_eq!(frag(&mut slot, 1, 3, 3, b"ef"), Collected::Pending);
        assert_eq!(frag(&mut slot, 1, 1, 3, b"ab"), Collected::Pending);
        // A duplicate is dropped and changes nothing.
        assert_eq!(frag(&mut slot, 1, 1, 3, b"XX"), Collected::Dropped);
        assert_eq!(
            frag(&mut slot, 1, 2, 3, b"cd"),
            Collected::Complete(PayloadType(35), b"abcdef".to_vec())
        );
        assert!(slot.is_none(), "state is gone once the message is whole");
    }

    #[test]
    fn more_fragments_start_over_fewer_are_dropped() {
        let mut slot = None;
        assert_eq!(frag(&mut slot, 7, 1, 2, b"a"), Collected::Pending);
        // Re-fragmented smaller: start over.
        assert_eq!(frag(&mut slot, 7, 2, 4, b"b"), Collected::Pending);
        assert_eq!(frag(&mut slot, 7, 1, 3, b"c"), Collected::Dropped);
        assert_eq!(frag(&mut slot, 7, 1, 4, b"a"), Collected::Pending);
        assert_eq!(frag(&mut slot, 7, 3, 4, b"c"), Collected::Pending);
        assert_eq!(
            frag(&mut slot, 7, 4, 4, b"d"),
            Collected::Complete(PayloadType(35), b"abcd".to_vec())
        );
    }

    #[test]
    fn a_new_message_replaces_an_unfinished_one() {
        let mut slot = None;
        assert_eq!(frag(&mut slot, 1, 1, 2, b"old"), Collected::Pending);
        assert_eq!(frag(&mut slot, 2, 2, 2, b"new2"), Collected::Pending);
        assert_eq!(
            frag(&mut slot, 2, 1, 2, b"new1"),
            Collected::Complete(PayloadType(35), b"new1new2".to_vec())
        );
    }

    #[test]
    fn bounds_are_enforced() {
        let mut slot = None;
        assert_eq!(frag(&mut slot, 1, 0, 2, b"x"), Collected::Dropped);
        assert_eq!(frag(&mut slot, 1, 3, 2, b"x"), Collected::Dropped);
        assert_eq!(
            frag(&mut slot, 1, 1, MAX_FRAGMENTS + 1, b"x"),
            Collected::Dropped
        );
        let big = vec![0u8; MAX_MESSAGE_LEN / 2 + 1];
        assert_eq!(frag(&mut slot, 1, 1, 3, &big), Collected::Pending);
        assert_eq!(
            frag(&mut slot, 1, 2, 3, &big),
            Collected::Dropped,
            "the whole may not exceed the largest message"
        );
    }

    #[test]
    fn message_size_from_the_datagram_size() {
        let v4: SocketAddr = "192.0.2.1:4500".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:500".parse().unwrap();
        assert_eq!(max_message_len(1280, v4, true), 1280 - 20 - 8 - 4);
        assert_eq!(max_message_len(1280, v6, false), 1280 - 40 - 8);
        assert_eq!(max_message_len(10, v4, false), 0);
    }
}
