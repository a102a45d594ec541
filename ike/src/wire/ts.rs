//! Traffic Selector payloads, RFC 7296 §3.13.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::codec::{begin_len16, end_len16, MalformedError, Reader, What, Writer};
use super::limits::MAX_TRAFFIC_SELECTORS;
use super::registry::TsType;

/// Traffic Selector payload body (TSi or TSr), RFC 7296 §3.13.
///
/// ```text
///                      1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | Next Payload  |C|  RESERVED   |         Payload Length        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | Number of TSs |                 RESERVED                      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~                       <Traffic Selectors>                     ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// Number of TSs must match the selectors present, and be at most
/// [`MAX_TRAFFIC_SELECTORS`].
///
/// A selector of a type other than IPV4_ADDR_RANGE / IPV6_ADDR_RANGE (e.g.
/// RFC 9478's FC_ADDR_RANGE) makes the whole payload malformed: we could skip
/// it by its length, but a narrowed answer that silently dropped selectors
/// would be wrong, and the caller answers a parse failure of TSi/TSr with
/// TS_UNACCEPTABLE or INVALID_SYNTAX anyway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ts {
    /// The selectors, in order.
    pub selectors: Vec<TrafficSelector>,
}

/// One traffic selector, RFC 7296 §3.13.1.
///
/// ```text
///                      1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |   TS Type     |IP Protocol ID*|       Selector Length         |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |           Start Port*         |           End Port*           |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~                         Starting Address*                     ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~                         Ending Address*                       ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// Parsing guarantees `ty` and both addresses agree (IPv4: length 16, IPv6:
/// length 40). On emit the addresses are written as they are and the length
/// follows them; build selectors with [`TrafficSelector::new`] to keep `ty`
/// consistent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficSelector {
    /// TS Type.
    pub ty: TsType,
    /// IP protocol (0: any).
    pub ip_protocol: u8,
    /// First port of the range (0 with `end_port` 65535: any).
    pub start_port: u16,
    /// Last port of the range.
    pub end_port: u16,
    /// First address of the range.
    pub start_addr: IpAddr,
    /// Last address of the range.
    pub end_addr: IpAddr,
}

/// Selector Length of an IPv4 range: header 4, ports 4, two addresses of 4.
const TS_IPV4_LEN: usize = 16;
/// Selector Length of an IPv6 range: header 4, ports 4, two addresses of 16.
const TS_IPV6_LEN: usize = 40;

impl TrafficSelector {
    /// A selector for `start_addr..=end_addr`, protocol `ip_protocol` (0:
    /// any), ports `start_port..=end_port`; `ty` follows the address family.
    /// `None` if the two addresses are of different families.
    pub fn new(
        ip_protocol: u8,
        start_port: u16,
        end_port: u16,
        start_addr: IpAddr,
        end_addr: IpAddr,
    ) -> Option<TrafficSelector> {
        let ty = match (start_addr, end_addr) {
            (IpAddr::V4(_), IpAddr::V4(_)) => TsType::IPV4_ADDR_RANGE,
            (IpAddr::V6(_), IpAddr::V6(_)) => TsType::IPV6_ADDR_RANGE,
            _ => return None,
        };
        Some(TrafficSelector {
            ty,
            ip_protocol,
            start_port,
            end_port,
            start_addr,
            end_addr,
        })
    }

    fn parse(r: &mut Reader<'_>) -> Result<TrafficSelector, MalformedError> {
        let ty = TsType(r.u8().what("traffic selector")?);
        let ip_protocol = r.u8().what("traffic selector")?;
        let len = usize::from(r.u16().what("traffic selector")?);
        let expected = match ty {
            TsType::IPV4_ADDR_RANGE => TS_IPV4_LEN,
            TsType::IPV6_ADDR_RANGE => TS_IPV6_LEN,
            _ => return Err(MalformedError::new("unknown traffic selector type")),
        };
        if len != expected {
            return Err(MalformedError::new("traffic selector length"));
        }
        let mut s = r.sub(len - 4).what("traffic selector length")?;
        let start_port = s.u16()?;
        let end_port = s.u16()?;
        let (start_addr, end_addr) = if ty == TsType::IPV4_ADDR_RANGE {
            let a = Ipv4Addr::from(s.array::<4>()?);
            let b = Ipv4Addr::from(s.array::<4>()?);
            (IpAddr::V4(a), IpAddr::V4(b))
        } else {
            let a = Ipv6Addr::from(s.array::<16>()?);
            let b = Ipv6Addr::from(s.array::<16>()?);
            (IpAddr::V6(a), IpAddr::V6(b))
        };
        Ok(TrafficSelector {
            ty,
            ip_protocol,
            start_port,
            end_port,
            start_addr,
            end_addr,
        })
    }

    fn emit(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.put_u8(self.ty.0);
        out.put_u8(self.ip_protocol);
        let len = begin_len16(out, start);
        out.put_u16(self.start_port);
        out.put_u16(self.end_port);
        for addr in [self.start_addr, self.end_addr] {
            match addr {
                IpAddr::V4(a) => out.put_bytes(&a.octets()),
                IpAddr::V6(a) => out.put_bytes(&a.octets()),
            }
        }
        end_len16(out, len);
    }
}

impl Ts {
    /// Parses a TSi/TSr payload body (after the generic payload header).
    pub fn parse_body(body: &[u8]) -> Result<Ts, MalformedError> {
        let mut r = Reader::new(body);
        let count = usize::from(r.u8().what("TS payload header")?);
        let _reserved = r.take(3).what("TS payload header")?;
        if count > MAX_TRAFFIC_SELECTORS {
            return Err(MalformedError::new("too many traffic selectors"));
        }
        let mut selectors = Vec::with_capacity(count);
        for _ in 0..count {
            selectors.push(TrafficSelector::parse(&mut r)?);
        }
        r.expect_empty("data after last traffic selector")?;
        Ok(Ts { selectors })
    }

    /// Appends the TSi/TSr payload body.
    pub fn emit_body(&self, out: &mut Vec<u8>) {
        out.put_u8(self.selectors.len() as u8);
        out.put_bytes(&[0; 3]);
        for ts in &self.selectors {
            ts.emit(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = concat!(
        "02 000000",                              // 2 selectors
        "07 06 0010 0000 ffff c0000200 c00002ff", // TCP 192.0.2.0-192.0.2.255, all ports
        "08 00 0028 01f4 01f4",                   // any protocol, port 500
        "20010db8000000000000000000000000",
        "20010db8ffffffffffffffffffffffff",
    );

    fn bytes(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    fn repr() -> Ts {
        Ts {
            selectors: vec![
                TrafficSelector::new(
                    6,
                    0,
                    65535,
                    "192.0.2.0".parse().unwrap(),
                    "192.0.2.255".parse().unwrap(),
                )
                .unwrap(),
                TrafficSelector::new(
                    0,
                    500,
                    500,
                    "2001:db8::".parse().unwrap(),
                    "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
                )
                .unwrap(),
            ],
        }
    }

    fn emit(ts: &Ts) -> Vec<u8> {
        let mut out = Vec::new();
        ts.emit_body(&mut out);
        out
    }

    #[test]
    fn parse() {
        assert_eq!(Ts::parse_body(&bytes(BODY)), Ok(repr()));
    }

    #[test]
    fn emit_matches() {
        assert_eq!(emit(&repr()), bytes(BODY));
    }

    #[test]
    fn check_len() {
        let wire = bytes(BODY);
        for n in 0..wire.len() {
            assert!(Ts::parse_body(&wire[..n]).is_err(), "prefix {n}");
        }
        let mut longer = wire.clone();
        longer.push(0);
        assert_eq!(
            Ts::parse_body(&longer).unwrap_err().what,
            "data after last traffic selector"
        );
    }

    #[test]
    fn new_rejects_mixed_families() {
        assert_eq!(
            TrafficSelector::new(
                0,
                0,
                0,
                "192.0.2.1".parse().unwrap(),
                "::1".parse().unwrap()
            ),
            None
        );
    }

    #[test]
    fn rejects_unknown_type_and_bad_length() {
        let mut wire = bytes(BODY);
        wire[4] = 9; // FC_ADDR_RANGE (RFC 9478)
        assert_eq!(
            Ts::parse_body(&wire).unwrap_err().what,
            "unknown traffic selector type"
        );
        let mut wire = bytes(BODY);
        wire[7] = 40; // IPv4 selector claiming IPv6 length
        assert_eq!(
            Ts::parse_body(&wire).unwrap_err().what,
            "traffic selector length"
        );
    }

    #[test]
    fn rejects_too_many() {
        let one = repr().selectors[0].clone();
        let ts = |n| Ts {
            selectors: vec![one.clone(); n],
        };
        assert_eq!(
            Ts::parse_body(&emit(&ts(MAX_TRAFFIC_SELECTORS))),
            Ok(ts(MAX_TRAFFIC_SELECTORS))
        );
        assert_eq!(
            Ts::parse_body(&emit(&ts(MAX_TRAFFIC_SELECTORS + 1)))
                .unwrap_err()
                .what,
            "too many traffic selectors"
        );
        // Count says fewer than present.
        let mut wire = bytes(BODY);
        wire[0] = 1;
        assert!(Ts::parse_body(&wire).is_err());
    }
}
