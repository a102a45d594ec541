//! `struct virtio_net_hdr` (virtio 1.x §5.1.6, `include/uapi/linux/virtio_net.h`):
//! the 10 bytes a TUN opened with `IFF_VNET_HDR` puts before every packet.
//!
//! ```text
//!  0        1        2                 4                 6                 8                10
//! +--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+
//! | flags  |gso_type|     hdr_len     |    gso_size     |   csum_start    |   csum_offset   |
//! +--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+
//! ```
//!
//! Multi-byte fields are little-endian: TUN uses the host's byte order
//! unless `TUNSETVNETBE`/`TUNSETVNETLE` say otherwise, and every host we
//! run on is little-endian.

/// Length of the header as we configure it (`TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start +
/// csum_offset` holds only the pseudo-header sum; sum from `csum_start` to
/// the end and store the complement there.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: checksum already verified.
pub const F_DATA_VALID: u8 = 2;

/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP` (UFO, never enabled by us).
pub const GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO, Linux 6.2+).
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`, or'ed into `gso_type`.
pub const GSO_ECN: u8 = 0x80;

/// A decoded `virtio_net_hdr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_*` bits.
    pub flags: u8,
    /// `GSO_*` value, possibly with [`GSO_ECN`].
    pub gso_type: u8,
    /// Length of the headers (IP + L4) of a GSO packet; a hint only.
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS for TCP).
    pub gso_size: u16,
    /// Where checksumming starts (the L4 header), from the IP header.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum field is (16 TCP, 6 UDP).
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Decodes the first [`VNET_HDR_LEN`] bytes; `None` if shorter.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    /// Encodes into the first [`VNET_HDR_LEN`] bytes of `out`.
    pub fn emit(&self, out: &mut [u8; VNET_HDR_LEN]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }

    /// The GSO type without the ECN bit.
    pub fn gso(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        // A TCPv4 super-packet header as Linux 6.18 hands it out: NEEDS_CSUM,
        // TCPV4, hdr_len 52 (20 + 32), gso_size 1348, csum at 20 + 16.
        let raw = [1u8, 1, 52, 0, 0x44, 0x05, 20, 0, 16, 0];
        let h = VnetHdr::parse(&raw).unwrap();
        assert_eq!(h.flags, F_NEEDS_CSUM);
        assert_eq!(h.gso(), GSO_TCPV4);
        assert_eq!(h.hdr_len, 52);
        assert_eq!(h.gso_size, 1348);
        assert_eq!((h.csum_start, h.csum_offset), (20, 16));
        let mut out = [0u8; VNET_HDR_LEN];
        h.emit(&mut out);
        assert_eq!(out, raw);
        assert_eq!(VnetHdr::parse(&raw[..9]), None);
    }
}
