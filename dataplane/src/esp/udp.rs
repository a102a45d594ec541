//! ESP-in-UDP on the NAT-T port (RFC 3948): one socket carries IKE and ESP.
//!
//! ```text
//! UDP payload on port 4500:
//!   0xFF                          NAT-keepalive (§2.3): ignore
//!   00 00 00 00 | IKE message     non-ESP marker (§2.2): to the IKE endpoint
//!   SPI (≠ 0)   | Seq | …         ESP (§2.1): to the SA database
//! ```
//!
//! Raw ESP (IP protocol 50) carries the same ESP bytes without the UDP
//! header; both paths end in [`super::InboundSa::decrypt`].

use super::{EspError, MIN_LEN};
use std::ops::Range;

/// The NAT-T port (RFC 3948 §2.1 via RFC 7296 §2.23).
pub const NATT_PORT: u16 = 4500;
/// RFC 3948 §2.2: four zero octets in front of an IKE message. An ESP SPI
/// is never zero, so the two cannot be confused.
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];
/// RFC 3948 §2.3: a NAT-keepalive is the single octet 0xFF.
pub const NAT_KEEPALIVE: u8 = 0xff;
/// The UDP header (RFC 768).
pub const UDP_HEADER_LEN: usize = 8;

/// What a datagram on the NAT-T port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Natt {
    /// An IKE message at `datagram[NON_ESP_MARKER.len()..]`.
    Ike,
    /// A NAT-keepalive: nothing to do.
    Keepalive,
    /// An ESP packet: the whole datagram, from the SPI.
    Esp,
}

/// Classifies a UDP payload received on the NAT-T port. A datagram that is
/// neither a marker-prefixed IKE message nor a keepalive must be ESP of at
/// least [`MIN_LEN`] bytes, else [`EspError::Malformed`].
pub fn classify(datagram: &[u8]) -> Result<Natt, EspError> {
    match datagram {
        [NAT_KEEPALIVE] => Ok(Natt::Keepalive),
        [0, 0, 0, 0, ..] => Ok(Natt::Ike),
        d if d.len() >= MIN_LEN => Ok(Natt::Esp),
        _ => Err(EspError::Malformed),
    }
}

/// Frames an IKE message for the NAT-T port: the marker, then the message.
pub fn frame_ike(message: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&NON_ESP_MARKER);
    out.extend_from_slice(message);
}

/// Writes a UDP header (RFC 768) in the [`UDP_HEADER_LEN`] bytes before the
/// ESP packet at `buf[esp]` and returns the datagram's range, for paths
/// that build whole IP packets (raw sockets, AF_XDP). A UDP socket needs
/// none of this: outbound ESP goes into `send_to` as it is, without marker.
///
/// The checksum is left zero, as RFC 3948 §2.1 recommends for IPv4 (ESP
/// has its own integrity). Over IPv6 a zero UDP checksum is not allowed
/// (RFC 8200 §8.1); the caller fills it in (or lets the kernel do it).
pub fn write_udp_header(
    buf: &mut [u8],
    esp: Range<usize>,
    src_port: u16,
    dst_port: u16,
) -> Result<Range<usize>, EspError> {
    let start = esp
        .start
        .checked_sub(UDP_HEADER_LEN)
        .ok_or(EspError::NoRoom)?;
    if esp.end > buf.len() || esp.start > esp.end {
        return Err(EspError::NoRoom);
    }
    let len = u16::try_from(esp.len() + UDP_HEADER_LEN).map_err(|_| EspError::NoRoom)?;
    let h = &mut buf[start..esp.start];
    h[0..2].copy_from_slice(&src_port.to_be_bytes());
    h[2..4].copy_from_slice(&dst_port.to_be_bytes());
    h[4..6].copy_from_slice(&len.to_be_bytes());
    h[6..8].copy_from_slice(&[0, 0]);
    Ok(start..esp.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demultiplexing() {
        assert_eq!(classify(&[0xff]), Ok(Natt::Keepalive));
        assert_eq!(classify(&[0, 0, 0, 0, 0x01, 0x02]), Ok(Natt::Ike));
        assert_eq!(classify(&[0, 0, 0, 0]), Ok(Natt::Ike));
        let mut esp = vec![0u8; MIN_LEN];
        esp[..4].copy_from_slice(&0x0010_0001u32.to_be_bytes());
        assert_eq!(classify(&esp), Ok(Natt::Esp));
        assert_eq!(classify(&esp[..MIN_LEN - 1]), Err(EspError::Malformed));
        // Short or odd datagrams: not a keepalive, not IKE, too short for ESP.
        for bad in [&[][..], &[0xff, 0xff], &[0], &[0, 0, 0], &[1, 2, 3, 4, 5]] {
            assert_eq!(classify(bad), Err(EspError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn ike_framing() {
        let mut out = vec![9; 3];
        frame_ike(&[1, 2, 3], &mut out);
        assert_eq!(out, [0, 0, 0, 0, 1, 2, 3]);
        assert_eq!(classify(&out), Ok(Natt::Ike));
    }

    #[test]
    fn udp_header() {
        let mut buf = vec![0xee; 8 + 40];
        let r = write_udp_header(&mut buf, 8..48, 4500, 61000).unwrap();
        assert_eq!(r, 0..48);
        assert_eq!(&buf[..8], &[0x11, 0x94, 0xee, 0x48, 0, 48, 0, 0]);
        assert_eq!(
            write_udp_header(&mut buf, 7..48, 1, 2),
            Err(EspError::NoRoom)
        );
        assert_eq!(
            write_udp_header(&mut buf, 8..49, 1, 2),
            Err(EspError::NoRoom)
        );
    }
}
