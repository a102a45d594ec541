//! Counters of the dataplane: packets, bytes and drops by reason, per SA,
//! per tunnel and per node.
//!
//! Bad input is counted and dropped, never logged per packet (STYLE.md): a
//! peer that floods garbage moves a counter, not a log file. Every drop in
//! the crate names one [`DropReason`], and every place that drops a packet
//! increments exactly one [`DropCounters`] slot.
//!
//! All counters are relaxed atomics: workers on several cores add to the
//! same SA's counters without a lock. Relaxed is enough because a counter
//! orders nothing; a status reader sees each value eventually and
//! monotonically. Workers that process batches should add once per batch
//! ([`Traffic::add`] takes a count) to keep the shared cache line cold.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Declares [`DropReason`] with its stable names, its count and the list of
/// all reasons, from one table, so adding a reason is one line here.
macro_rules! drop_reasons {
    ($( $(#[$doc:meta])* $name:ident = $text:literal, )+) => {
        /// Why the dataplane dropped a packet. Feeds counters, never logs.
        ///
        /// The discriminants index [`DropCounters`]; [`DropReason::name`] is
        /// the stable snake-case name status and metrics print.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum DropReason {
            $( $(#[$doc])* $name, )+
        }

        impl DropReason {
            /// Every reason, in discriminant order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)+];
            /// How many reasons there are.
            pub const COUNT: usize = DropReason::ALL.len();

            /// The stable name, e.g. `esp_replay`.
            pub fn name(self) -> &'static str {
                match self {
                    $( DropReason::$name => $text, )+
                }
            }
        }
    };
}

drop_reasons! {
    // --- ESP-in-UDP demultiplexing (RFC 3948) and ESP framing ---
    /// A NAT-keepalive (RFC 3948 §2.3): expected, not an error, but counted
    /// with the drops because nothing is delivered.
    NatKeepalive = "nat_keepalive",
    /// Shorter than the smallest ESP packet (RFC 4303 §2: SPI, sequence
    /// number, IV, trailer, ICV), or an SPI in the reserved range 1..=255.
    EspMalformed = "esp_malformed",
    /// No inbound SA has the packet's SPI (RFC 4303 §3.4.2).
    EspUnknownSpi = "esp_unknown_spi",
    /// A sequence number already received (RFC 4303 §3.4.3).
    EspReplay = "esp_replay",
    /// A sequence number left of the anti-replay window (RFC 4303 §3.4.3).
    EspTooOld = "esp_too_old",
    /// The ICV did not verify (RFC 4303 §3.4.4).
    EspAuthFailed = "esp_auth_failed",
    /// The ciphertext is not a whole number of cipher blocks (RFC 4303
    /// §2.4).
    EspBadLength = "esp_bad_length",
    /// Pad Length beyond the payload, or Padding bytes not the default
    /// 1, 2, 3, … (RFC 4303 §2.4).
    EspBadPadding = "esp_bad_padding",
    /// Next Header is neither IPv4 (4) nor IPv6 (41), or the inner packet's
    /// version disagrees with it (tunnel mode, RFC 4303 §2.6).
    EspBadNextHeader = "esp_bad_next_header",
    /// A dummy packet (Next Header 59, RFC 4303 §2.6): authentic, discarded
    /// by design.
    EspDummy = "esp_dummy",
    /// Outbound: the SA's sequence number or IV counter is used up; the SA
    /// must be rekeyed (RFC 4303 §3.3.3).
    EspSeqExhausted = "esp_seq_exhausted",
    /// Outbound: the tunnel has no outbound SA (not established, or deleted).
    EspNoSa = "esp_no_sa",
    /// Outbound: the inner packet is not IPv4 or IPv6, so ESP tunnel mode
    /// cannot name its Next Header.
    EspBadInner = "esp_bad_inner",
    /// The caller's buffer lacks the headroom or tailroom ESP needs (a bug
    /// in the caller, counted rather than panicking).
    NoBufferRoom = "no_buffer_room",
    /// BoringSSL refused to seal or open (only for inputs far beyond any
    /// packet size; counted, never seen).
    CryptoBackend = "crypto_backend",
    // --- the packet path around ESP (path.rs, esp_transform.rs) ---
    /// The inner packet is not a valid IPv4/IPv6 packet.
    InnerMalformed = "inner_malformed",
    /// Outside the traffic selectors of the SA or tunnel (RFC 4301 §5.2).
    SelectorMismatch = "selector_mismatch",
    /// The tenant's table has no route for the destination.
    NoRoute = "no_route",
    /// The ingress names a tenant that does not exist.
    UnknownTenant = "unknown_tenant",
    /// The route names a tunnel that is not up.
    TunnelDown = "tunnel_down",
    /// TTL / hop limit expired.
    TtlExpired = "ttl_expired",
    /// Larger than the tunnel's MTU with DF / IPv6 (an ICMP error may have
    /// been sent back).
    TooBig = "too_big",
    /// GRE: the outer packet is not valid IP or not GRE.
    GreMalformed = "gre_malformed",
    /// GRE: an outer fragment.
    GreFragment = "gre_fragment",
    /// GRE: no tunnel for (outer source, outer destination, key).
    GreUnknownTunnel = "gre_unknown_tunnel",
    /// GRE: a version, flag or protocol type we do not carry.
    GreUnsupported = "gre_unsupported",
    /// A packet read from the local side (TUN) routed back to it.
    LocalLoop = "local_loop",
    /// Outbound on a child SA without UDP encapsulation: raw ESP (IP
    /// protocol 50) is not sent by the userspace dataplane, and ESP-in-UDP
    /// would reach a peer that does not expect it.
    EspNotEncapsulated = "esp_not_encapsulated",
    /// An IKE message on the shared NAT-T socket found the queue to the
    /// IKE driver full (bounded: a flood cannot grow memory).
    IkeQueueFull = "ike_queue_full",
    /// The outer packet could not be sent (raw GRE socket error).
    SendFailed = "send_failed",
    /// The inner packet could not be written into the TUN.
    TunWriteFailed = "tun_write_failed",
    /// Raw ESP (IP protocol 50) arrived as an IP fragment (no reassembly).
    RawEspFragment = "raw_esp_fragment",
}

impl From<crate::path::PathDrop> for DropReason {
    fn from(d: crate::path::PathDrop) -> DropReason {
        use crate::path::PathDrop as P;
        match d {
            P::InnerMalformed => DropReason::InnerMalformed,
            P::SelectorMismatch => DropReason::SelectorMismatch,
            P::NoRoute => DropReason::NoRoute,
            P::UnknownTenant => DropReason::UnknownTenant,
            P::TunnelDown => DropReason::TunnelDown,
            P::TtlExpired => DropReason::TtlExpired,
            P::TooBig => DropReason::TooBig,
            P::GreMalformed => DropReason::GreMalformed,
            P::GreFragment => DropReason::GreFragment,
            P::GreUnknownTunnel => DropReason::GreUnknownTunnel,
            P::GreUnsupported => DropReason::GreUnsupported,
        }
    }
}

/// One relaxed counter per [`DropReason`].
pub struct DropCounters([AtomicU64; DropReason::COUNT]);

impl DropCounters {
    /// All zero.
    pub fn new() -> DropCounters {
        DropCounters(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    /// Counts one drop for `reason`.
    #[inline]
    pub fn add(&self, reason: DropReason) {
        self.add_n(reason, 1);
    }

    /// Counts `n` drops for `reason`.
    #[inline]
    pub fn add_n(&self, reason: DropReason, n: u64) {
        self.0[reason as usize].fetch_add(n, Relaxed);
    }

    /// The count for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize].load(Relaxed)
    }

    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// The non-zero counts, in reason order.
    pub fn nonzero(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL
            .iter()
            .map(|&r| (r, self.get(r)))
            .filter(|&(_, n)| n != 0)
            .collect()
    }
}

impl Default for DropCounters {
    fn default() -> Self {
        DropCounters::new()
    }
}

impl fmt::Debug for DropCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.nonzero().into_iter().map(|(r, n)| (r.name(), n)))
            .finish()
    }
}

/// Packets and bytes in one direction.
#[derive(Debug, Default)]
pub struct Traffic {
    packets: AtomicU64,
    bytes: AtomicU64,
}

impl Traffic {
    /// Counts `packets` packets of `bytes` bytes in total.
    #[inline]
    pub fn add(&self, packets: u64, bytes: u64) {
        self.packets.fetch_add(packets, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }

    /// Packets counted so far.
    pub fn packets(&self) -> u64 {
        self.packets.load(Relaxed)
    }

    /// Bytes counted so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }
}

/// One SA's counters. An inbound SA counts what it decrypted (inner bytes)
/// and its drops; an outbound SA what it encrypted and its drops.
#[derive(Debug, Default)]
pub struct SaCounters {
    /// Packets and inner-packet bytes that passed.
    pub traffic: Traffic,
    /// Packets dropped, by reason.
    pub drops: DropCounters,
}

/// One tunnel's counters, shared by all its SAs and kept across rekeys.
#[derive(Debug, Default)]
pub struct TunnelCounters {
    /// Inner packets that arrived through the tunnel (decrypted).
    pub rx: Traffic,
    /// Inner packets sent into the tunnel (encrypted).
    pub tx: Traffic,
    /// Drops attributed to the tunnel, by reason (its SAs' drops included).
    pub drops: DropCounters,
}

/// A plain copy of a set of counters, for status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub packets: u64,
    pub bytes: u64,
    /// Non-zero drop counts, in reason order.
    pub drops: Vec<(DropReason, u64)>,
}

impl SaCounters {
    /// A plain copy.
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            packets: self.traffic.packets(),
            bytes: self.traffic.bytes(),
            drops: self.drops.nonzero(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn reasons_index_their_own_slot_and_have_unique_names() {
        for (i, &r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r as usize, i, "{r:?}");
        }
        let names: HashSet<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), DropReason::COUNT);
        for n in names {
            assert!(
                n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{n} is not snake case"
            );
        }
    }

    #[test]
    fn counts_per_reason() {
        let c = DropCounters::new();
        c.add(DropReason::EspReplay);
        c.add(DropReason::EspReplay);
        c.add_n(DropReason::EspAuthFailed, 5);
        assert_eq!(c.get(DropReason::EspReplay), 2);
        assert_eq!(c.get(DropReason::EspAuthFailed), 5);
        assert_eq!(c.get(DropReason::EspDummy), 0);
        assert_eq!(c.total(), 7);
        assert_eq!(
            c.nonzero(),
            [(DropReason::EspReplay, 2), (DropReason::EspAuthFailed, 5)]
        );
        assert_eq!(
            format!("{c:?}"),
            r#"{"esp_replay": 2, "esp_auth_failed": 5}"#
        );
    }

    #[test]
    fn traffic_adds_from_threads() {
        let t = std::sync::Arc::new(Traffic::default());
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        t.add(1, 100);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!((t.packets(), t.bytes()), (4000, 400_000));
    }
}
