//! The Security Association payload and its substructures, RFC 7296 §3.3.

use super::codec::{begin_len16, end_len16, MalformedError, Reader, What, Writer};
use super::limits::{MAX_PROPOSALS, MAX_SPI_LEN, MAX_TRANSFORMS, MAX_TRANSFORM_ATTRS};
use super::registry::{ProtocolId, TransformAttrType, TransformType};

/// "Last Substruc" of a proposal that is the last one, RFC 7296 §3.3.1.
const LAST: u8 = 0;
/// "Last Substruc" of a proposal followed by another, RFC 7296 §3.3.1.
const MORE_PROPOSALS: u8 = 2;
/// "Last Substruc" of a transform followed by another, RFC 7296 §3.3.2.
const MORE_TRANSFORMS: u8 = 3;
/// The Attribute Format bit: set for TV (2-byte value), clear for TLV.
const AF_TV: u16 = 0x8000;

/// Security Association payload body, RFC 7296 §3.3: one or more proposals.
///
/// ```text
///                      1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | Next Payload  |C|  RESERVED   |         Payload Length        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~                          <Proposals>                          ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// Parsing requires at least one proposal and at most
/// [`MAX_PROPOSALS`]; proposal numbering (§3.3.1: first is 1, then same or
/// +1) is the negotiator's to check, since a response echoes the number of
/// the proposal it chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaPayload {
    /// The proposals, in the order sent (the sender's preference).
    pub proposals: Vec<Proposal>,
}

/// Proposal substructure, RFC 7296 §3.3.1.
///
/// ```text
///                      1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | Last Substruc |   RESERVED    |         Proposal Length       |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | Proposal Num  |  Protocol ID  |    SPI Size   |Num  Transforms|
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~                        SPI (variable)                         ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~                        <Transforms>                           ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// "Last Substruc" (0 last, 2 more) and the counts are computed on emit and
/// checked on parse: a proposal whose flag disagrees with its position, or
/// whose Num Transforms disagrees with the transforms inside it, is
/// malformed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Proposal Num.
    pub num: u8,
    /// Protocol ID: IKE, AH or ESP.
    pub protocol: ProtocolId,
    /// SPI: empty in IKE_SA_INIT, 8 bytes for an IKE SA rekey, 4 for ESP/AH.
    /// At most [`MAX_SPI_LEN`] bytes.
    pub spi: Vec<u8>,
    /// The transforms, at most [`MAX_TRANSFORMS`].
    pub transforms: Vec<Transform>,
}

/// Transform substructure, RFC 7296 §3.3.2.
///
/// ```text
///                      1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | Last Substruc |   RESERVED    |        Transform Length       |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |Transform Type |   RESERVED    |          Transform ID         |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~                      Transform Attributes                     ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// The Key Length attribute (§3.3.5, TV format) is lifted into
/// `key_length`; on emit it is written first, then `other_attrs` in order.
/// A Key Length in TLV format, or twice in one transform, is malformed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transform {
    /// Transform Type.
    pub ty: TransformType,
    /// Transform ID, to be read in the registry of `ty` (`EncrId`, `PrfId`,
    /// `IntegId`, `DhId`, `EsnId`).
    pub id: u16,
    /// The Key Length attribute, in bits.
    pub key_length: Option<u16>,
    /// Every other attribute, kept so unknown ones round-trip.
    pub other_attrs: Vec<TransformAttr>,
}

/// A transform attribute other than Key Length, RFC 7296 §3.3.5.
///
/// ```text
///                      1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |A|       Attribute Type        |    AF=0  Attribute Length     |
/// |F|                             |    AF=1  Attribute Value      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                   AF=0  Attribute Value                       |
/// |                   AF=1  Not Transmitted                       |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransformAttr {
    /// Attribute Type, without the AF bit (masked on emit).
    pub ty: u16,
    /// The value, whose variant is the AF bit.
    pub value: AttrValue,
}

/// A transform attribute's value: TV (AF=1) or TLV (AF=0), RFC 7296 §3.3.5.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrValue {
    /// Type/Value: a 2-byte value in place of the length.
    Tv(u16),
    /// Type/Length/Value.
    Tlv(Vec<u8>),
}

/// Reads a substructure header (Last Substruc, RESERVED, Length) and returns
/// the flag and a reader over the rest of the substructure.
fn substructure<'a>(
    r: &mut Reader<'a>,
    what: &'static str,
    min_len: usize,
) -> Result<(u8, Reader<'a>), MalformedError> {
    let last = r.u8().what(what)?;
    let _reserved = r.u8().what(what)?;
    let len = usize::from(r.u16().what(what)?);
    if len < min_len {
        return Err(MalformedError::new(what));
    }
    let body = r.sub(len - 4).what(what)?;
    Ok((last, body))
}

impl SaPayload {
    /// Parses an SA payload body (after the generic payload header).
    pub fn parse_body(body: &[u8]) -> Result<SaPayload, MalformedError> {
        let mut r = Reader::new(body);
        let mut proposals = Vec::new();
        loop {
            if proposals.len() == MAX_PROPOSALS {
                return Err(MalformedError::new("too many proposals"));
            }
            let (last, mut p) = substructure(&mut r, "proposal length", 8)?;
            proposals.push(Proposal::parse_body(&mut p)?);
            match last {
                LAST => break,
                MORE_PROPOSALS if !r.is_empty() => continue,
                _ => return Err(MalformedError::new("proposal last substruc")),
            }
        }
        r.expect_empty("data after last proposal")?;
        Ok(SaPayload { proposals })
    }

    /// Appends the SA payload body.
    pub fn emit_body(&self, out: &mut Vec<u8>) {
        let n = self.proposals.len();
        for (i, p) in self.proposals.iter().enumerate() {
            p.emit(i + 1 == n, out);
        }
    }
}

impl Proposal {
    /// Parses the proposal after its Last Substruc/Length header.
    fn parse_body(r: &mut Reader<'_>) -> Result<Proposal, MalformedError> {
        let num = r.u8()?;
        let protocol = ProtocolId(r.u8()?);
        let spi_size = usize::from(r.u8()?);
        let num_transforms = usize::from(r.u8()?);
        if spi_size > MAX_SPI_LEN {
            return Err(MalformedError::new("proposal SPI size"));
        }
        if num_transforms > MAX_TRANSFORMS {
            return Err(MalformedError::new("too many transforms"));
        }
        let spi = r.take(spi_size).what("proposal SPI")?.to_vec();
        let mut transforms = Vec::with_capacity(num_transforms);
        for i in 0..num_transforms {
            let (last, mut t) = substructure(r, "transform length", 8)?;
            let expected = if i + 1 == num_transforms {
                LAST
            } else {
                MORE_TRANSFORMS
            };
            if last != expected {
                return Err(MalformedError::new("transform last substruc"));
            }
            transforms.push(Transform::parse_body(&mut t)?);
        }
        r.expect_empty("data after last transform")?;
        Ok(Proposal {
            num,
            protocol,
            spi,
            transforms,
        })
    }

    fn emit(&self, last: bool, out: &mut Vec<u8>) {
        let start = out.len();
        out.put_u8(if last { LAST } else { MORE_PROPOSALS });
        out.put_u8(0);
        let len = begin_len16(out, start);
        out.put_u8(self.num);
        out.put_u8(self.protocol.0);
        out.put_u8(self.spi.len() as u8);
        out.put_u8(self.transforms.len() as u8);
        out.put_bytes(&self.spi);
        let n = self.transforms.len();
        for (i, t) in self.transforms.iter().enumerate() {
            t.emit(i + 1 == n, out);
        }
        end_len16(out, len);
    }
}

impl Transform {
    /// A transform without attributes.
    pub fn new(ty: TransformType, id: u16) -> Transform {
        Transform {
            ty,
            id,
            key_length: None,
            other_attrs: Vec::new(),
        }
    }

    /// A transform with a Key Length attribute (in bits), e.g. AES-CBC-256.
    pub fn with_key_length(ty: TransformType, id: u16, key_length: u16) -> Transform {
        Transform {
            key_length: Some(key_length),
            ..Transform::new(ty, id)
        }
    }

    /// Parses the transform after its Last Substruc/Length header.
    fn parse_body(r: &mut Reader<'_>) -> Result<Transform, MalformedError> {
        let ty = TransformType(r.u8()?);
        let _reserved = r.u8()?;
        let id = r.u16()?;
        let mut key_length = None;
        let mut other_attrs = Vec::new();
        let mut count = 0;
        while !r.is_empty() {
            count += 1;
            if count > MAX_TRANSFORM_ATTRS {
                return Err(MalformedError::new("too many transform attributes"));
            }
            let word = r.u16().what("transform attribute")?;
            let attr_ty = word & !AF_TV;
            let value = if word & AF_TV != 0 {
                AttrValue::Tv(r.u16().what("transform attribute")?)
            } else {
                let len = usize::from(r.u16().what("transform attribute")?);
                AttrValue::Tlv(r.take(len).what("transform attribute length")?.to_vec())
            };
            match (TransformAttrType(attr_ty), value) {
                (TransformAttrType::KEY_LENGTH, AttrValue::Tv(bits)) => {
                    if key_length.replace(bits).is_some() {
                        return Err(MalformedError::new("duplicate key length"));
                    }
                }
                (TransformAttrType::KEY_LENGTH, AttrValue::Tlv(_)) => {
                    return Err(MalformedError::new("key length not in TV format"));
                }
                (_, value) => other_attrs.push(TransformAttr { ty: attr_ty, value }),
            }
        }
        Ok(Transform {
            ty,
            id,
            key_length,
            other_attrs,
        })
    }

    fn emit(&self, last: bool, out: &mut Vec<u8>) {
        let start = out.len();
        out.put_u8(if last { LAST } else { MORE_TRANSFORMS });
        out.put_u8(0);
        let len = begin_len16(out, start);
        out.put_u8(self.ty.0);
        out.put_u8(0);
        out.put_u16(self.id);
        if let Some(bits) = self.key_length {
            out.put_u16(AF_TV | TransformAttrType::KEY_LENGTH.0);
            out.put_u16(bits);
        }
        for attr in &self.other_attrs {
            let ty = attr.ty & !AF_TV;
            match &attr.value {
                AttrValue::Tv(v) => {
                    out.put_u16(AF_TV | ty);
                    out.put_u16(*v);
                }
                AttrValue::Tlv(v) => {
                    out.put_u16(ty);
                    out.put_u16(u16::try_from(v.len()).unwrap_or(u16::MAX));
                    out.put_bytes(v);
                }
            }
        }
        end_len16(out, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::registry::{DhId, EncrId, IntegId, PrfId};

    // One IKE proposal: ENCR AES_CBC 256, PRF HMAC_SHA2_256,
    // INTEG HMAC_SHA2_256_128, DH Curve25519.
    const BODY: &str = concat!(
        "00 00 002c",                      // last proposal, length 44
        "01 01 00 04",                     // num 1, IKE, SPI size 0, 4 transforms
        "03 00 000c 01 00 000c 800e 0100", // ENCR AES_CBC, KEY_LENGTH 256
        "03 00 0008 02 00 0005",           // PRF HMAC_SHA2_256
        "03 00 0008 03 00 000c",           // INTEG HMAC_SHA2_256_128
        "00 00 0008 04 00 001f",           // DH Curve25519 (last)
    );

    fn bytes(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    fn repr() -> SaPayload {
        SaPayload {
            proposals: vec![Proposal {
                num: 1,
                protocol: ProtocolId::IKE,
                spi: vec![],
                transforms: vec![
                    Transform::with_key_length(TransformType::ENCR, EncrId::AES_CBC.0, 256),
                    Transform::new(TransformType::PRF, PrfId::HMAC_SHA2_256.0),
                    Transform::new(TransformType::INTEG, IntegId::HMAC_SHA2_256_128.0),
                    Transform::new(TransformType::DH, DhId::CURVE25519.0),
                ],
            }],
        }
    }

    fn emit(sa: &SaPayload) -> Vec<u8> {
        let mut out = Vec::new();
        sa.emit_body(&mut out);
        out
    }

    #[test]
    fn parse() {
        assert_eq!(SaPayload::parse_body(&bytes(BODY)), Ok(repr()));
    }

    #[test]
    fn emit_matches() {
        assert_eq!(emit(&repr()), bytes(BODY));
    }

    #[test]
    fn round_trip_rich() {
        let sa = SaPayload {
            proposals: vec![
                Proposal {
                    num: 1,
                    protocol: ProtocolId::ESP,
                    spi: vec![0xc0, 0xff, 0xee, 0x01],
                    transforms: vec![
                        Transform {
                            ty: TransformType::ENCR,
                            id: EncrId::AES_GCM_16.0,
                            key_length: Some(128),
                            other_attrs: vec![
                                TransformAttr {
                                    ty: 0x1234,
                                    value: AttrValue::Tlv(vec![1, 2, 3]),
                                },
                                TransformAttr {
                                    ty: 99,
                                    value: AttrValue::Tv(7),
                                },
                            ],
                        },
                        Transform::new(TransformType::ESN, 0),
                    ],
                },
                Proposal {
                    num: 2,
                    protocol: ProtocolId::IKE,
                    spi: vec![1, 2, 3, 4, 5, 6, 7, 8],
                    transforms: vec![],
                },
            ],
        };
        let wire = emit(&sa);
        assert_eq!(SaPayload::parse_body(&wire), Ok(sa));
        assert_eq!(emit(&SaPayload::parse_body(&wire).unwrap()), wire);
    }

    #[test]
    fn check_len() {
        // Every truncation breaks a length: none parses.
        let wire = bytes(BODY);
        for n in 0..wire.len() {
            assert!(SaPayload::parse_body(&wire[..n]).is_err(), "prefix {n}");
        }
        // Empty SA: at least one proposal is required.
        assert!(SaPayload::parse_body(&[]).is_err());
    }

    #[test]
    fn rejects_bad_flags() {
        // Proposal says "more" but none follows.
        let mut wire = bytes(BODY);
        wire[0] = MORE_PROPOSALS;
        let err = SaPayload::parse_body(&wire).unwrap_err();
        assert_eq!(err.what, "proposal last substruc");
        // Proposal flag 3 (the transform value) is not a proposal flag.
        wire[0] = 3;
        assert!(SaPayload::parse_body(&wire).is_err());
        // Two proposals, the first saying "last".
        let mut two = bytes(BODY);
        two.extend_from_slice(&bytes(BODY));
        assert_eq!(
            SaPayload::parse_body(&two).unwrap_err().what,
            "data after last proposal"
        );
        two[0] = MORE_PROPOSALS;
        assert_eq!(SaPayload::parse_body(&two).unwrap().proposals.len(), 2);
        // A middle transform saying "last".
        let mut wire = bytes(BODY);
        wire[8] = LAST;
        assert_eq!(
            SaPayload::parse_body(&wire).unwrap_err().what,
            "transform last substruc"
        );
        // The final transform saying "more".
        let mut wire = bytes(BODY);
        wire[44 - 8] = MORE_TRANSFORMS;
        assert_eq!(
            SaPayload::parse_body(&wire).unwrap_err().what,
            "transform last substruc"
        );
    }

    #[test]
    fn rejects_count_mismatch() {
        let mut wire = bytes(BODY);
        wire[7] = 3; // says 3 transforms, carries 4
        assert!(SaPayload::parse_body(&wire).is_err());
        wire[7] = 5; // says 5, carries 4
        assert!(SaPayload::parse_body(&wire).is_err());
    }

    #[test]
    fn rejects_bad_lengths() {
        // Proposal length shorter than its header.
        let mut wire = bytes(BODY);
        wire[3] = 7;
        assert_eq!(
            SaPayload::parse_body(&wire).unwrap_err().what,
            "proposal length"
        );
        // Transform length past the proposal's end.
        let mut wire = bytes(BODY);
        wire[44 - 8 + 3] = 0x0c;
        assert!(SaPayload::parse_body(&wire).is_err());
        // Transform length below 8.
        let mut wire = bytes(BODY);
        wire[44 - 8 + 3] = 4;
        assert_eq!(
            SaPayload::parse_body(&wire).unwrap_err().what,
            "transform length"
        );
        // TLV attribute whose length runs past the transform.
        let t = bytes("00 00 000c 01 00 000c 1234 0005");
        let mut wire = bytes("00 00 0000 01 01 00 01");
        wire.extend_from_slice(&t);
        wire[3] = wire.len() as u8;
        assert_eq!(
            SaPayload::parse_body(&wire).unwrap_err().what,
            "transform attribute length"
        );
    }

    fn one_transform(t: &str) -> Vec<u8> {
        let t = bytes(t);
        let mut wire = bytes("00 00 0000 01 01 00 01");
        wire.extend_from_slice(&t);
        wire[3] = wire.len() as u8;
        wire
    }

    #[test]
    fn key_length_rules() {
        let tlv = one_transform("00 00 000e 01 00 000c 000e 0002 0100");
        assert_eq!(
            SaPayload::parse_body(&tlv).unwrap_err().what,
            "key length not in TV format"
        );
        let dup = one_transform("00 00 0010 01 00 000c 800e 0100 800e 0080");
        assert_eq!(
            SaPayload::parse_body(&dup).unwrap_err().what,
            "duplicate key length"
        );
        // Unknown attribute before Key Length: accepted; emitted Key Length first.
        let late = one_transform("00 00 0010 01 00 000c 8001 0005 800e 0080");
        let sa = SaPayload::parse_body(&late).unwrap();
        let t = &sa.proposals[0].transforms[0];
        assert_eq!(t.key_length, Some(128));
        assert_eq!(
            t.other_attrs,
            [TransformAttr {
                ty: 1,
                value: AttrValue::Tv(5)
            }]
        );
        assert_eq!(
            emit(&sa),
            one_transform("00 00 0010 01 00 000c 800e 0080 8001 0005")
        );
    }

    #[test]
    fn limits() {
        // MAX_TRANSFORM_ATTRS + 1 TV attributes.
        let mut t = String::from("00 00 0000 01 00 000c");
        for i in 0..=MAX_TRANSFORM_ATTRS {
            t.push_str(&format!(" 80{i:02x} 0000"));
        }
        let mut wire = one_transform(&t);
        wire[8 + 3] = (8 + 4 * (MAX_TRANSFORM_ATTRS + 1)) as u8;
        assert_eq!(
            SaPayload::parse_body(&wire).unwrap_err().what,
            "too many transform attributes"
        );

        // MAX_TRANSFORMS + 1 transforms in one proposal.
        let too_many = |n: usize| Proposal {
            num: 1,
            protocol: ProtocolId::ESP,
            spi: vec![0; 4],
            transforms: vec![Transform::new(TransformType::ESN, 0); n],
        };
        let ok = emit(&SaPayload {
            proposals: vec![too_many(MAX_TRANSFORMS)],
        });
        assert!(SaPayload::parse_body(&ok).is_ok());
        let wire = emit(&SaPayload {
            proposals: vec![too_many(MAX_TRANSFORMS + 1)],
        });
        assert_eq!(
            SaPayload::parse_body(&wire).unwrap_err().what,
            "too many transforms"
        );

        // MAX_PROPOSALS + 1 proposals.
        let sa = |n: usize| SaPayload {
            proposals: (0..n)
                .map(|i| Proposal {
                    num: i as u8 + 1,
                    ..too_many(1)
                })
                .collect(),
        };
        assert!(SaPayload::parse_body(&emit(&sa(MAX_PROPOSALS))).is_ok());
        assert_eq!(
            SaPayload::parse_body(&emit(&sa(MAX_PROPOSALS + 1)))
                .unwrap_err()
                .what,
            "too many proposals"
        );

        // SPI longer than MAX_SPI_LEN.
        let long_spi = SaPayload {
            proposals: vec![Proposal {
                spi: vec![0; MAX_SPI_LEN + 1],
                ..too_many(1)
            }],
        };
        assert_eq!(
            SaPayload::parse_body(&emit(&long_spi)).unwrap_err().what,
            "proposal SPI size"
        );
    }
}
