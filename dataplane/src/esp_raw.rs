//! ESP straight over IP (protocol 50, RFC 4303), for SAs negotiated
//! without UDP encapsulation (no NAT between the peers, no `encap`): one
//! raw IPv4 socket ([`crate::sys::raw`]; the kernel here has no ESP, and a
//! host whose kernel has it would use the XFRM backend instead).
//!
//! ```text
//!  inbound   raw socket (IPv4 header + ESP) ─► EspTransform::inbound_esp
//!            (the same path as ESP-in-UDP after RFC 3948's demux)
//!            ─► the TUN, or out again (into another tunnel)
//!  outbound  EspTransform: the tunnel's SA has no UDP encapsulation
//!            ─► RawEsp::send: the kernel puts the IPv4 header in front
//! ```
//!
//! One receive thread; sends happen on the workers' threads (`sendto` on a
//! shared socket is thread-safe).

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::counters::DropCounters;
use crate::esp_transform::EspTransform;
use crate::io::Verdict;
use crate::sys::raw::{RawIpv4, IPPROTO_ESP};
use crate::sys::tun::Tun;
use crate::DropReason;

/// The node's raw ESP socket and its counters.
#[derive(Debug)]
pub struct RawEsp {
    sock: RawIpv4,
    /// ESP packets received / sent raw.
    pub rx_packets: AtomicU64,
    pub tx_packets: AtomicU64,
    /// Raw packets dropped before the SA lookup (malformed outer header,
    /// fragments, send errors).
    pub drops: DropCounters,
}

impl RawEsp {
    /// Opens the raw ESP socket on `local`. Needs CAP_NET_RAW.
    pub fn open(local: Ipv4Addr) -> std::io::Result<RawEsp> {
        Ok(RawEsp {
            sock: RawIpv4::open(IPPROTO_ESP, local, false)?,
            rx_packets: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            drops: DropCounters::new(),
        })
    }

    /// Sends one ESP packet (from the SPI on) to `to`.
    pub fn send(&self, esp: &[u8], to: IpAddr) -> bool {
        let IpAddr::V4(to) = to else {
            self.drops.add(DropReason::SendFailed);
            return false;
        };
        match self.sock.send(esp, to) {
            Ok(()) => {
                self.tx_packets.fetch_add(1, Relaxed);
                true
            }
            Err(_) => {
                self.drops.add(DropReason::SendFailed);
                false
            }
        }
    }

    /// The ESP payload of one received IPv4 packet, or why not.
    fn payload(pkt: &[u8]) -> Result<std::ops::Range<usize>, DropReason> {
        if pkt.len() < 20 || pkt[0] >> 4 != 4 {
            return Err(DropReason::EspBadLength);
        }
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
        if ihl < 20 || total < ihl || total > pkt.len() {
            return Err(DropReason::EspBadLength);
        }
        // MF or a fragment offset: we do not reassemble (the MTU machinery
        // keeps peers from sending fragments).
        if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
            return Err(DropReason::RawEspFragment);
        }
        Ok(ihl..total)
    }

    /// The receive loop, until `stop`: raw ESP through `xf` into `tun`
    /// (a zero vnet header first when the TUN has one); what `xf` sends
    /// on goes out of `udp` (ESP-in-UDP) — raw egress it sends itself.
    pub fn run_rx(&self, xf: &EspTransform, tun: &Tun, udp: &UdpSocket, stop: &AtomicBool) {
        let mut buf = vec![0u8; 65_535];
        while !stop.load(Relaxed) {
            match crate::sys::poll_readable(self.sock.as_raw_fd(), Duration::from_millis(100)) {
                Ok(true) => {}
                _ => continue,
            }
            let Ok(n) = self.sock.recv(&mut buf) else {
                continue;
            };
            // The SA, not the source address, decides (RFC 4303 §3.4.2).
            let esp = match RawEsp::payload(&buf[..n]) {
                Ok(p) => p,
                Err(r) => {
                    self.drops.add(r);
                    continue;
                }
            };
            self.rx_packets.fetch_add(1, Relaxed);
            let at = esp.start;
            match xf.inbound_esp(&mut buf[esp]) {
                Verdict::Tun(r) => {
                    if tun.write_ip(&buf[at + r.start..at + r.end]).is_err() {
                        self.drops.add(DropReason::TunWriteFailed);
                    }
                }
                Verdict::Network { range, to } => {
                    if udp
                        .send_to(&buf[at + range.start..at + range.end], to)
                        .is_err()
                    {
                        self.drops.add(DropReason::SendFailed);
                    }
                }
                Verdict::Done => {}
            }
        }
    }

    /// Starts [`RawEsp::run_rx`] in a thread.
    pub fn spawn_rx(
        self: &Arc<Self>,
        xf: EspTransform,
        tun: Tun,
        udp: UdpSocket,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("dp-esp-raw".into())
            .spawn(move || me.run_rx(&xf, &tun, &udp, &stop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(len: usize, flags_frag: u16) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6..8].copy_from_slice(&flags_frag.to_be_bytes());
        p[9] = 50;
        p
    }

    #[test]
    fn the_esp_payload_follows_the_ipv4_header() {
        assert_eq!(RawEsp::payload(&ipv4(60, 0x4000)), Ok(20..60), "DF is fine");
        // Options: IHL 6.
        let mut p = ipv4(60, 0);
        p[0] = 0x46;
        assert_eq!(RawEsp::payload(&p), Ok(24..60));
        // Trailing bytes beyond the total length are not ESP.
        let mut p = ipv4(60, 0);
        p.extend_from_slice(&[0; 8]);
        assert_eq!(RawEsp::payload(&p), Ok(20..60));
    }

    #[test]
    fn fragments_and_garbage_are_refused() {
        assert_eq!(
            RawEsp::payload(&ipv4(60, 0x2000)),
            Err(DropReason::RawEspFragment),
            "MF"
        );
        assert_eq!(
            RawEsp::payload(&ipv4(60, 0x0010)),
            Err(DropReason::RawEspFragment),
            "offset"
        );
        assert_eq!(RawEsp::payload(&[0x45; 10]), Err(DropReason::EspBadLength));
        let mut p = ipv4(60, 0);
        p[2..4].copy_from_slice(&100u16.to_be_bytes()); // longer than received
        assert_eq!(RawEsp::payload(&p), Err(DropReason::EspBadLength));
        let mut p = ipv4(60, 0);
        p[0] = 0x43; // IHL below 5
        assert_eq!(RawEsp::payload(&p), Err(DropReason::EspBadLength));
        let mut p = ipv4(60, 0);
        p[0] = 0x65; // not IPv4
        assert_eq!(RawEsp::payload(&p), Err(DropReason::EspBadLength));
    }
}
