//! The payloads of RFC 7296 §3.4–§3.16 (SA and TS live in their own files)
//! and the generic payload chain of §3.2.

use super::codec::{begin_len16, end_len16, MalformedError, Reader, What, Writer};
use super::limits::{
    MAX_CP_ATTRS, MAX_DELETE_SPIS, MAX_KE_DATA_LEN, MAX_NONCE_LEN, MAX_PAYLOADS, MAX_SPI_LEN,
    MIN_NONCE_LEN,
};
use super::registry::{
    AuthMethod, CertEncoding, CfgAttrType, CfgType, DhId, IdType, NotifyType, PayloadType,
    ProtocolId,
};
use super::sa::SaPayload;
use super::ts::Ts;

/// Length of the generic payload header, RFC 7296 §3.2.
pub(super) const GENERIC_HEADER_LEN: usize = 4;
/// The Critical bit in the generic payload header's second octet.
const CRITICAL: u8 = 0x80;

/// Key Exchange payload body, RFC 7296 §3.4.
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |   Diffie-Hellman Group Num    |           RESERVED            |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~                       Key Exchange Data                       ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// The data is at most [`MAX_KE_DATA_LEN`]; whether its length fits the
/// group is the key exchange's business.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ke {
    /// Diffie-Hellman Group Num.
    pub group: DhId,
    /// Key Exchange Data (the public value).
    pub data: Vec<u8>,
}

impl Ke {
    /// Parses a KE payload body.
    pub fn parse_body(body: &[u8]) -> Result<Ke, MalformedError> {
        let mut r = Reader::new(body);
        let group = DhId(r.u16().what("KE payload header")?);
        let _reserved = r.take(2).what("KE payload header")?;
        let data = r.rest();
        if data.len() > MAX_KE_DATA_LEN {
            return Err(MalformedError::new("KE data too long"));
        }
        Ok(Ke {
            group,
            data: data.to_vec(),
        })
    }

    /// Appends the KE payload body.
    pub fn emit_body(&self, out: &mut Vec<u8>) {
        out.put_u16(self.group.0);
        out.put_u16(0);
        out.put_bytes(&self.data);
    }
}

/// Identification payload body (IDi or IDr), RFC 7296 §3.5.
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |   ID Type     |                 RESERVED                      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~                   Identification Data                         ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Id {
    /// ID Type.
    pub ty: IdType,
    /// Identification Data, as sent.
    pub data: Vec<u8>,
}

impl Id {
    /// Parses an IDi/IDr payload body.
    pub fn parse_body(body: &[u8]) -> Result<Id, MalformedError> {
        let mut r = Reader::new(body);
        let ty = IdType(r.u8().what("ID payload header")?);
        let _reserved = r.take(3).what("ID payload header")?;
        Ok(Id {
            ty,
            data: r.rest().to_vec(),
        })
    }

    /// Appends the IDi/IDr payload body.
    pub fn emit_body(&self, out: &mut Vec<u8>) {
        out.put_u8(self.ty.0);
        out.put_bytes(&[0; 3]);
        out.put_bytes(&self.data);
    }

    /// The ID payload without its generic header, `IDType | RESERVED(3) |
    /// data`: what RFC 7296 §2.15 signs as RestOfInitIDPayload /
    /// RestOfRespIDPayload (`MACedIDForI = prf(SK_pi, RestOfInitIDPayload)`).
    ///
    /// The reserved octets are emitted as zero. A peer that sent non-zero
    /// reserved octets signed those instead, and its AUTH will not verify
    /// against this; §3.5 requires zero, so that peer is broken.
    pub fn rest_of_id_payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.data.len());
        self.emit_body(&mut out);
        out
    }
}

/// Certificate payload body, RFC 7296 §3.6.
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | Cert Encoding |                                               |
/// +-+-+-+-+-+-+-+-+                                               |
/// ~                       Certificate Data                        ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cert {
    /// Cert Encoding.
    pub encoding: CertEncoding,
    /// Certificate Data (e.g. one DER X.509 certificate).
    pub data: Vec<u8>,
}

impl Cert {
    /// Parses a CERT payload body.
    pub fn parse_body(body: &[u8]) -> Result<Cert, MalformedError> {
        let mut r = Reader::new(body);
        let encoding = CertEncoding(r.u8().what("CERT payload header")?);
        Ok(Cert {
            encoding,
            data: r.rest().to_vec(),
        })
    }

    /// Appends the CERT payload body.
    pub fn emit_body(&self, out: &mut Vec<u8>) {
        out.put_u8(self.encoding.0);
        out.put_bytes(&self.data);
    }
}

/// Certificate Request payload body, RFC 7296 §3.7: same layout as
/// [`Cert`], the data being the concatenated SHA-1 hashes of trusted CA
/// public keys for X509_SIGNATURE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertReq {
    /// Cert Encoding.
    pub encoding: CertEncoding,
    /// Certification Authority data.
    pub data: Vec<u8>,
}

impl CertReq {
    /// Parses a CERTREQ payload body.
    pub fn parse_body(body: &[u8]) -> Result<CertReq, MalformedError> {
        let mut r = Reader::new(body);
        let encoding = CertEncoding(r.u8().what("CERTREQ payload header")?);
        Ok(CertReq {
            encoding,
            data: r.rest().to_vec(),
        })
    }

    /// Appends the CERTREQ payload body.
    pub fn emit_body(&self, out: &mut Vec<u8>) {
        out.put_u8(self.encoding.0);
        out.put_bytes(&self.data);
    }
}

/// Authentication payload body, RFC 7296 §3.8.
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | Auth Method   |                RESERVED                       |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~                      Authentication Data                      ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    /// Auth Method.
    pub method: AuthMethod,
    /// Authentication Data (a MAC or a signature; for DIGITAL_SIGNATURE,
    /// RFC 7427's ASN.1 length + AlgorithmIdentifier + signature).
    pub data: Vec<u8>,
}

impl Auth {
    /// Parses an AUTH payload body.
    pub fn parse_body(body: &[u8]) -> Result<Auth, MalformedError> {
        let mut r = Reader::new(body);
        let method = AuthMethod(r.u8().what("AUTH payload header")?);
        let _reserved = r.take(3).what("AUTH payload header")?;
        Ok(Auth {
            method,
            data: r.rest().to_vec(),
        })
    }

    /// Appends the AUTH payload body.
    pub fn emit_body(&self, out: &mut Vec<u8>) {
        out.put_u8(self.method.0);
        out.put_bytes(&[0; 3]);
        out.put_bytes(&self.data);
    }
}

/// Nonce payload body, RFC 7296 §3.9: the Nonce Data alone, between
/// [`MIN_NONCE_LEN`] and [`MAX_NONCE_LEN`] bytes (enforced on parse).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nonce(pub Vec<u8>);

impl Nonce {
    /// Parses a Ni/Nr payload body.
    pub fn parse_body(body: &[u8]) -> Result<Nonce, MalformedError> {
        if body.len() < MIN_NONCE_LEN {
            return Err(MalformedError::new("nonce too short"));
        }
        if body.len() > MAX_NONCE_LEN {
            return Err(MalformedError::new("nonce too long"));
        }
        Ok(Nonce(body.to_vec()))
    }

    /// Appends the Ni/Nr payload body.
    pub fn emit_body(&self, out: &mut Vec<u8>) {
        out.put_bytes(&self.0);
    }
}

/// Notify payload body, RFC 7296 §3.10.
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  Protocol ID  |   SPI Size    |      Notify Message Type      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~                Security Parameter Index (SPI)                 ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~                       Notification Data                       ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// The SPI is at most [`MAX_SPI_LEN`] bytes; the data is opaque here (its
/// format depends on the type: NAT-D hashes, COOKIE, REKEY_SA's empty data…).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    /// Protocol ID: NONE (0) for notifies about the IKE SA, else ESP/AH.
    pub protocol: ProtocolId,
    /// SPI (empty for most notifies).
    pub spi: Vec<u8>,
    /// Notify Message Type.
    pub ty: NotifyType,
    /// Notification Data.
    pub data: Vec<u8>,
}

impl Notify {
    /// A notify about the IKE SA (protocol 0, no SPI) carrying `data`.
    pub fn new(ty: NotifyType, data: Vec<u8>) -> Notify {
        Notify {
            protocol: ProtocolId::NONE,
            spi: Vec::new(),
            ty,
            data,
        }
    }

    /// Parses an N payload body.
    pub fn parse_body(body: &[u8]) -> Result<Notify, MalformedError> {
        let mut r = Reader::new(body);
        let protocol = ProtocolId(r.u8().what("notify payload header")?);
        let spi_size = usize::from(r.u8().what("notify payload header")?);
        let ty = NotifyType(r.u16().what("notify payload header")?);
        if spi_size > MAX_SPI_LEN {
            return Err(MalformedError::new("notify SPI size"));
        }
        let spi = r.take(spi_size).what("notify SPI")?.to_vec();
        Ok(Notify {
            protocol,
            spi,
            ty,
            data: r.rest().to_vec(),
        })
    }

    /// Appends the N payload body.
    pub fn emit_body(&self, out: &mut Vec<u8>) {
        out.put_u8(self.protocol.0);
        out.put_u8(self.spi.len() as u8);
        out.put_u16(self.ty.0);
        out.put_bytes(&self.spi);
        out.put_bytes(&self.data);
    }
}

/// Delete payload body, RFC 7296 §3.11.
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// | Protocol ID   |   SPI Size    |          Num of SPIs          |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~               Security Parameter Index(es) (SPI)              ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// For the IKE SA: SPI size 0 and no SPIs; for ESP/AH: size 4. Parsing
/// requires the SPIs to fill the body exactly, at most [`MAX_DELETE_SPIS`] of
/// them, and no SPI count with an SPI size of 0. On emit, Num of SPIs is
/// `spis.len()` and each SPI is written as is (they should all be `spi_size`
/// long).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    /// Protocol ID.
    pub protocol: ProtocolId,
    /// SPI Size.
    pub spi_size: u8,
    /// The SPIs, each `spi_size` bytes.
    pub spis: Vec<Vec<u8>>,
}

impl Delete {
    /// Parses a D payload body.
    pub fn parse_body(body: &[u8]) -> Result<Delete, MalformedError> {
        let mut r = Reader::new(body);
        let protocol = ProtocolId(r.u8().what("delete payload header")?);
        let spi_size = r.u8().what("delete payload header")?;
        let count = usize::from(r.u16().what("delete payload header")?);
        if usize::from(spi_size) > MAX_SPI_LEN {
            return Err(MalformedError::new("delete SPI size"));
        }
        if count > MAX_DELETE_SPIS {
            return Err(MalformedError::new("too many delete SPIs"));
        }
        if spi_size == 0 && count != 0 {
            return Err(MalformedError::new("delete SPI count without SPI size"));
        }
        let mut spis = Vec::with_capacity(count);
        for _ in 0..count {
            spis.push(r.take(usize::from(spi_size)).what("delete SPIs")?.to_vec());
        }
        r.expect_empty("data after last delete SPI")?;
        Ok(Delete {
            protocol,
            spi_size,
            spis,
        })
    }

    /// Appends the D payload body.
    pub fn emit_body(&self, out: &mut Vec<u8>) {
        out.put_u8(self.protocol.0);
        out.put_u8(self.spi_size);
        out.put_u16(u16::try_from(self.spis.len()).unwrap_or(u16::MAX));
        for spi in &self.spis {
            out.put_bytes(spi);
        }
    }
}

/// Configuration payload body, RFC 7296 §3.15.
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |   CFG Type    |                    RESERVED                   |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~                   Configuration Attributes                    ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// At most [`MAX_CP_ATTRS`] attributes; they must fill the body exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cp {
    /// CFG Type.
    pub cfg_type: CfgType,
    /// The attributes, in order.
    pub attrs: Vec<CfgAttr>,
}

/// Configuration attribute, RFC 7296 §3.15.1.
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |R|         Attribute Type      |            Length             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~                             Value                             ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// The R bit is reserved: ignored on parse, emitted as 0. An empty value is
/// how a CFG_REQUEST asks for an attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CfgAttr {
    /// Attribute Type (15 bits).
    pub ty: CfgAttrType,
    /// Value.
    pub value: Vec<u8>,
}

impl Cp {
    /// Parses a CP payload body.
    pub fn parse_body(body: &[u8]) -> Result<Cp, MalformedError> {
        let mut r = Reader::new(body);
        let cfg_type = CfgType(r.u8().what("CP payload header")?);
        let _reserved = r.take(3).what("CP payload header")?;
        let mut attrs = Vec::new();
        while !r.is_empty() {
            if attrs.len() == MAX_CP_ATTRS {
                return Err(MalformedError::new("too many configuration attributes"));
            }
            let ty = CfgAttrType(r.u16().what("configuration attribute")? & 0x7fff);
            let len = usize::from(r.u16().what("configuration attribute")?);
            let value = r.take(len).what("configuration attribute length")?.to_vec();
            attrs.push(CfgAttr { ty, value });
        }
        Ok(Cp { cfg_type, attrs })
    }

    /// Appends the CP payload body.
    pub fn emit_body(&self, out: &mut Vec<u8>) {
        out.put_u8(self.cfg_type.0);
        out.put_bytes(&[0; 3]);
        for attr in &self.attrs {
            out.put_u16(attr.ty.0 & 0x7fff);
            out.put_u16(u16::try_from(attr.value.len()).unwrap_or(u16::MAX));
            out.put_bytes(&attr.value);
        }
    }
}

/// One payload of a chain, RFC 7296 §3.2–§3.16.
///
/// SK and SKF are not payloads of this enum: they end the outer chain and
/// are described by [`Encrypted`](super::Encrypted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// SA, §3.3.
    Sa(SaPayload),
    /// KE, §3.4.
    Ke(Ke),
    /// IDi, §3.5.
    IdI(Id),
    /// IDr, §3.5.
    IdR(Id),
    /// CERT, §3.6.
    Cert(Cert),
    /// CERTREQ, §3.7.
    CertReq(CertReq),
    /// AUTH, §3.8.
    Auth(Auth),
    /// Ni/Nr, §3.9.
    Nonce(Nonce),
    /// N, §3.10.
    Notify(Notify),
    /// D, §3.11.
    Delete(Delete),
    /// V, §3.12: the Vendor ID, opaque.
    VendorId(Vec<u8>),
    /// TSi, §3.13.
    TsI(Ts),
    /// TSr, §3.13.
    TsR(Ts),
    /// CP, §3.15.
    Cp(Cp),
    /// EAP, §3.16: the whole EAP message, opaque here.
    Eap(Vec<u8>),
    /// A payload type we do not know, kept whole. RFC 7296 §2.5: if
    /// `critical`, the caller rejects the message with
    /// UNSUPPORTED_CRITICAL_PAYLOAD; otherwise it skips the payload.
    Unknown {
        /// Payload type.
        ty: PayloadType,
        /// The Critical bit as received (and re-emitted).
        critical: bool,
        /// Payload body, after the generic header.
        body: Vec<u8>,
    },
}

impl Payload {
    /// The payload type this payload is sent as.
    pub fn ty(&self) -> PayloadType {
        match self {
            Payload::Sa(_) => PayloadType::SA,
            Payload::Ke(_) => PayloadType::KE,
            Payload::IdI(_) => PayloadType::IDI,
            Payload::IdR(_) => PayloadType::IDR,
            Payload::Cert(_) => PayloadType::CERT,
            Payload::CertReq(_) => PayloadType::CERTREQ,
            Payload::Auth(_) => PayloadType::AUTH,
            Payload::Nonce(_) => PayloadType::NONCE,
            Payload::Notify(_) => PayloadType::NOTIFY,
            Payload::Delete(_) => PayloadType::DELETE,
            Payload::VendorId(_) => PayloadType::VENDOR_ID,
            Payload::TsI(_) => PayloadType::TSI,
            Payload::TsR(_) => PayloadType::TSR,
            Payload::Cp(_) => PayloadType::CP,
            Payload::Eap(_) => PayloadType::EAP,
            Payload::Unknown { ty, .. } => *ty,
        }
    }

    /// Parses the body of a payload of type `ty` (not SK/SKF). The Critical
    /// bit only matters for types we do not know (§2.5).
    fn parse_body(ty: PayloadType, critical: bool, body: &[u8]) -> Result<Payload, MalformedError> {
        Ok(match ty {
            PayloadType::SA => Payload::Sa(SaPayload::parse_body(body)?),
            PayloadType::KE => Payload::Ke(Ke::parse_body(body)?),
            PayloadType::IDI => Payload::IdI(Id::parse_body(body)?),
            PayloadType::IDR => Payload::IdR(Id::parse_body(body)?),
            PayloadType::CERT => Payload::Cert(Cert::parse_body(body)?),
            PayloadType::CERTREQ => Payload::CertReq(CertReq::parse_body(body)?),
            PayloadType::AUTH => Payload::Auth(Auth::parse_body(body)?),
            PayloadType::NONCE => Payload::Nonce(Nonce::parse_body(body)?),
            PayloadType::NOTIFY => Payload::Notify(Notify::parse_body(body)?),
            PayloadType::DELETE => Payload::Delete(Delete::parse_body(body)?),
            PayloadType::VENDOR_ID => Payload::VendorId(body.to_vec()),
            PayloadType::TSI => Payload::TsI(Ts::parse_body(body)?),
            PayloadType::TSR => Payload::TsR(Ts::parse_body(body)?),
            PayloadType::CP => Payload::Cp(Cp::parse_body(body)?),
            PayloadType::EAP => Payload::Eap(body.to_vec()),
            PayloadType::SK | PayloadType::SKF => {
                return Err(MalformedError::new("encrypted payload inside a chain"))
            }
            _ => Payload::Unknown {
                ty,
                critical,
                body: body.to_vec(),
            },
        })
    }

    /// Appends this payload, generic header first, linking to `next`.
    ///
    /// ```text
    ///                      1                   2                   3
    ///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    /// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    /// | Next Payload  |C|  RESERVED   |         Payload Length        |
    /// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    /// ```
    pub fn emit(&self, next: PayloadType, out: &mut Vec<u8>) {
        let start = out.len();
        out.put_u8(next.0);
        out.put_u8(match self {
            Payload::Unknown { critical: true, .. } => CRITICAL,
            _ => 0,
        });
        let len = begin_len16(out, start);
        match self {
            Payload::Sa(p) => p.emit_body(out),
            Payload::Ke(p) => p.emit_body(out),
            Payload::IdI(p) | Payload::IdR(p) => p.emit_body(out),
            Payload::Cert(p) => p.emit_body(out),
            Payload::CertReq(p) => p.emit_body(out),
            Payload::Auth(p) => p.emit_body(out),
            Payload::Nonce(p) => p.emit_body(out),
            Payload::Notify(p) => p.emit_body(out),
            Payload::Delete(p) => p.emit_body(out),
            Payload::VendorId(b) | Payload::Eap(b) | Payload::Unknown { body: b, .. } => {
                out.put_bytes(b)
            }
            Payload::TsI(p) | Payload::TsR(p) => p.emit_body(out),
            Payload::Cp(p) => p.emit_body(out),
        }
        end_len16(out, len);
    }
}

/// The end of a payload chain: either `Next Payload` NONE, or an SK/SKF
/// payload (only allowed in the outer chain, where it must come last).
pub(super) enum ChainEnd {
    /// The chain ended with NONE and filled the buffer exactly.
    Plain,
    /// The chain ended with an SK or SKF payload.
    Encrypted {
        /// SK or SKF.
        ty: PayloadType,
        /// The encrypted payload's Next Payload: the first inner payload.
        first_inner: PayloadType,
        /// Offset of its generic header in the buffer parsed; its body runs
        /// from after that header to the end of the buffer.
        header_offset: usize,
    },
}

/// Walks a payload chain starting with type `first` over all of `buf`.
/// `allow_encrypted` says whether an SK/SKF payload may end it (outer chain)
/// or is malformed (inner chain).
pub(super) fn parse_chain(
    first: PayloadType,
    buf: &[u8],
    allow_encrypted: bool,
) -> Result<(Vec<Payload>, ChainEnd), MalformedError> {
    let mut r = Reader::new(buf);
    let mut payloads = Vec::new();
    let mut next = first;
    while next != PayloadType::NONE {
        if payloads.len() == MAX_PAYLOADS {
            return Err(MalformedError::new("too many payloads"));
        }
        let ty = next;
        let header_offset = r.offset();
        next = PayloadType(r.u8().what("payload header")?);
        let critical = r.u8().what("payload header")? & CRITICAL != 0;
        let len = usize::from(r.u16().what("payload header")?);
        if len < GENERIC_HEADER_LEN {
            return Err(MalformedError::new("payload length"));
        }
        let mut body = r.sub(len - GENERIC_HEADER_LEN).what("payload length")?;
        if allow_encrypted && (ty == PayloadType::SK || ty == PayloadType::SKF) {
            // RFC 7296 §3.14: "the Encrypted payload, if present in a message,
            // MUST be the last payload in the message"; its Next Payload
            // names the first payload inside it.
            r.expect_empty("encrypted payload not last")?;
            return Ok((
                payloads,
                ChainEnd::Encrypted {
                    ty,
                    first_inner: next,
                    header_offset,
                },
            ));
        }
        payloads.push(Payload::parse_body(ty, critical, body.rest())?);
    }
    r.expect_empty("data after last payload")?;
    Ok((payloads, ChainEnd::Plain))
}

/// Parses a plain payload chain that starts with a payload of type `first`
/// and fills `buf` exactly — the plaintext of an SK payload, or the outer
/// chain of an unencrypted message. An SK/SKF payload inside it is
/// malformed, as are more than [`MAX_PAYLOADS`] payloads and bytes after the
/// payload whose Next Payload is NONE.
pub fn parse_payloads(first: PayloadType, buf: &[u8]) -> Result<Vec<Payload>, MalformedError> {
    parse_chain(first, buf, false).map(|(payloads, _)| payloads)
}

/// Appends `payloads` as a chain, each linking to the next and the last to
/// NONE. Returns the type of the first payload (NONE if there is none), for
/// the header or SK payload that points at the chain.
pub fn emit_payloads(payloads: &[Payload], out: &mut Vec<u8>) -> PayloadType {
    let mut iter = payloads.iter().peekable();
    while let Some(p) = iter.next() {
        let next = iter.peek().map_or(PayloadType::NONE, |n| n.ty());
        p.emit(next, out);
    }
    payloads.first().map_or(PayloadType::NONE, Payload::ty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::registry::TransformType;
    use crate::wire::registry::TsType;
    use crate::wire::sa::{Proposal, Transform};
    use crate::wire::ts::TrafficSelector;

    fn bytes(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    fn chain(payloads: &[Payload]) -> (PayloadType, Vec<u8>) {
        let mut out = Vec::new();
        let first = emit_payloads(payloads, &mut out);
        (first, out)
    }

    /// One of every payload kind.
    fn every_payload() -> Vec<Payload> {
        vec![
            Payload::Sa(SaPayload {
                proposals: vec![Proposal {
                    num: 1,
                    protocol: ProtocolId::ESP,
                    spi: vec![1, 2, 3, 4],
                    transforms: vec![
                        Transform::with_key_length(TransformType::ENCR, 20, 256),
                        Transform::new(TransformType::ESN, 0),
                    ],
                }],
            }),
            Payload::Ke(Ke {
                group: DhId::CURVE25519,
                data: vec![0x55; 32],
            }),
            Payload::IdI(Id {
                ty: IdType::FQDN,
                data: b"client.example".to_vec(),
            }),
            Payload::IdR(Id {
                ty: IdType::IPV4_ADDR,
                data: vec![192, 0, 2, 1],
            }),
            Payload::Cert(Cert {
                encoding: CertEncoding::X509_SIGNATURE,
                data: vec![0x30, 0x82, 0x01, 0x00],
            }),
            Payload::CertReq(CertReq {
                encoding: CertEncoding::X509_SIGNATURE,
                data: vec![0xaa; 20],
            }),
            Payload::Auth(Auth {
                method: AuthMethod::SHARED_KEY_MIC,
                data: vec![0x42; 32],
            }),
            Payload::Nonce(Nonce(vec![0x11; 32])),
            Payload::Notify(Notify {
                protocol: ProtocolId::ESP,
                spi: vec![9, 9, 9, 9],
                ty: NotifyType::REKEY_SA,
                data: vec![],
            }),
            Payload::Notify(Notify::new(NotifyType::COOKIE, vec![7; 16])),
            Payload::Delete(Delete {
                protocol: ProtocolId::ESP,
                spi_size: 4,
                spis: vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]],
            }),
            Payload::Delete(Delete {
                protocol: ProtocolId::IKE,
                spi_size: 0,
                spis: vec![],
            }),
            Payload::VendorId(b"anyhub".to_vec()),
            Payload::TsI(Ts {
                selectors: vec![TrafficSelector {
                    ty: TsType::IPV4_ADDR_RANGE,
                    ip_protocol: 0,
                    start_port: 0,
                    end_port: 65535,
                    start_addr: "0.0.0.0".parse().unwrap(),
                    end_addr: "255.255.255.255".parse().unwrap(),
                }],
            }),
            Payload::TsR(Ts { selectors: vec![] }),
            Payload::Cp(Cp {
                cfg_type: CfgType::REQUEST,
                attrs: vec![
                    CfgAttr {
                        ty: CfgAttrType::INTERNAL_IP4_ADDRESS,
                        value: vec![],
                    },
                    CfgAttr {
                        ty: CfgAttrType::INTERNAL_IP4_DNS,
                        value: vec![192, 0, 2, 53],
                    },
                ],
            }),
            Payload::Eap(vec![2, 1, 0, 5, 1]),
            Payload::Unknown {
                ty: PayloadType(200),
                critical: false,
                body: vec![1, 2, 3],
            },
            Payload::Unknown {
                ty: PayloadType(201),
                critical: true,
                body: vec![],
            },
        ]
    }

    #[test]
    fn every_payload_round_trips() {
        for p in every_payload() {
            let (first, wire) = chain(std::slice::from_ref(&p));
            assert_eq!(first, p.ty());
            let parsed = parse_payloads(first, &wire).unwrap();
            assert_eq!(parsed, std::slice::from_ref(&p), "{p:?}");
            assert_eq!(chain(&parsed).1, wire, "{p:?}");
        }
    }

    #[test]
    fn every_payload_truncation_fails() {
        for p in every_payload() {
            let (first, wire) = chain(std::slice::from_ref(&p));
            for n in 0..wire.len() {
                assert!(
                    parse_payloads(first, &wire[..n]).is_err(),
                    "{p:?} prefix {n}"
                );
            }
        }
    }

    #[test]
    fn whole_chain_round_trips() {
        let all = every_payload();
        let (first, wire) = chain(&all);
        assert_eq!(first, PayloadType::SA);
        let parsed = parse_payloads(first, &wire).unwrap();
        assert_eq!(parsed, all);
        assert_eq!(chain(&parsed).1, wire);
        for n in 0..wire.len() {
            assert!(parse_payloads(first, &wire[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn empty_chain() {
        assert_eq!(chain(&[]), (PayloadType::NONE, vec![]));
        assert_eq!(parse_payloads(PayloadType::NONE, &[]), Ok(vec![]));
        assert_eq!(
            parse_payloads(PayloadType::NONE, &[0]).unwrap_err().what,
            "data after last payload"
        );
    }

    #[test]
    fn ke_parse_emit() {
        let wire = bytes("0013 0000 0102030405");
        let ke = Ke::parse_body(&wire).unwrap();
        assert_eq!(ke.group, DhId::ECP256);
        assert_eq!(ke.data, [1, 2, 3, 4, 5]);
        let mut out = Vec::new();
        ke.emit_body(&mut out);
        assert_eq!(out, wire);
        assert!(Ke::parse_body(&wire[..3]).is_err());
        let mut long = bytes("001f 0000");
        long.resize(4 + MAX_KE_DATA_LEN, 0);
        assert!(Ke::parse_body(&long).is_ok());
        long.push(0);
        assert_eq!(Ke::parse_body(&long).unwrap_err().what, "KE data too long");
    }

    #[test]
    fn id_rest_of_payload() {
        let id = Id {
            ty: IdType::FQDN,
            data: b"vpn.example".to_vec(),
        };
        let mut expected = bytes("02 000000");
        expected.extend_from_slice(b"vpn.example");
        assert_eq!(id.rest_of_id_payload(), expected);
        assert_eq!(Id::parse_body(&expected), Ok(id));
        assert!(Id::parse_body(&expected[..3]).is_err());
    }

    #[test]
    fn nonce_limits() {
        assert_eq!(
            Nonce::parse_body(&[0; MIN_NONCE_LEN - 1]).unwrap_err().what,
            "nonce too short"
        );
        assert!(Nonce::parse_body(&[0; MIN_NONCE_LEN]).is_ok());
        assert!(Nonce::parse_body(&[0; MAX_NONCE_LEN]).is_ok());
        assert_eq!(
            Nonce::parse_body(&[0; MAX_NONCE_LEN + 1]).unwrap_err().what,
            "nonce too long"
        );
        // Through the chain too.
        let (first, wire) = chain(&[Payload::Nonce(Nonce(vec![0; 8]))]);
        assert!(parse_payloads(first, &wire).is_err());
    }

    #[test]
    fn notify_parse() {
        // NAT_DETECTION_SOURCE_IP, no SPI, 20 bytes of hash.
        let mut wire = bytes("00 00 4004");
        wire.extend_from_slice(&[0xab; 20]);
        let n = Notify::parse_body(&wire).unwrap();
        assert_eq!(
            n,
            Notify::new(NotifyType::NAT_DETECTION_SOURCE_IP, vec![0xab; 20])
        );
        // SPI size past the end / over the limit.
        assert_eq!(
            Notify::parse_body(&bytes("03 04 4009 0102"))
                .unwrap_err()
                .what,
            "notify SPI"
        );
        assert_eq!(
            Notify::parse_body(&bytes("03 09 4009 010203040506070809"))
                .unwrap_err()
                .what,
            "notify SPI size"
        );
        assert!(Notify::parse_body(&bytes("03 04 40")).is_err());
    }

    #[test]
    fn delete_rules() {
        assert_eq!(
            Delete::parse_body(&bytes("03 04 0002 01020304 050607"))
                .unwrap_err()
                .what,
            "delete SPIs"
        );
        assert_eq!(
            Delete::parse_body(&bytes("03 04 0001 01020304 05"))
                .unwrap_err()
                .what,
            "data after last delete SPI"
        );
        assert_eq!(
            Delete::parse_body(&bytes("01 00 0001")).unwrap_err().what,
            "delete SPI count without SPI size"
        );
        assert_eq!(
            Delete::parse_body(&bytes("03 10 0000")).unwrap_err().what,
            "delete SPI size"
        );
        let many = Delete {
            protocol: ProtocolId::ESP,
            spi_size: 4,
            spis: vec![vec![0; 4]; MAX_DELETE_SPIS + 1],
        };
        let mut wire = Vec::new();
        many.emit_body(&mut wire);
        assert_eq!(
            Delete::parse_body(&wire).unwrap_err().what,
            "too many delete SPIs"
        );
    }

    #[test]
    fn cp_rules() {
        // R bit ignored; attribute length past the end rejected.
        let cp = Cp::parse_body(&bytes("02 000000 8001 0004 c0000202")).unwrap();
        assert_eq!(cp.attrs[0].ty, CfgAttrType::INTERNAL_IP4_ADDRESS);
        assert_eq!(
            Cp::parse_body(&bytes("02 000000 0001 0005 c0000202"))
                .unwrap_err()
                .what,
            "configuration attribute length"
        );
        assert!(Cp::parse_body(&bytes("02 000000 00")).is_err());
        let many = Cp {
            cfg_type: CfgType::REQUEST,
            attrs: vec![
                CfgAttr {
                    ty: CfgAttrType::INTERNAL_IP4_DNS,
                    value: vec![]
                };
                MAX_CP_ATTRS + 1
            ],
        };
        let mut wire = Vec::new();
        many.emit_body(&mut wire);
        assert_eq!(
            Cp::parse_body(&wire).unwrap_err().what,
            "too many configuration attributes"
        );
    }

    #[test]
    fn generic_header_lengths() {
        // Payload length below the generic header.
        for len in 0..4u8 {
            let wire = [0, 0, 0, len];
            assert_eq!(
                parse_payloads(PayloadType::VENDOR_ID, &wire)
                    .unwrap_err()
                    .what,
                "payload length"
            );
        }
        // Payload length past the end of the buffer.
        assert_eq!(
            parse_payloads(PayloadType::VENDOR_ID, &bytes("00 00 0008 0102"))
                .unwrap_err()
                .what,
            "payload length"
        );
        // Next Payload points at a payload that is not there.
        assert_eq!(
            parse_payloads(PayloadType::VENDOR_ID, &bytes("2b 00 0004"))
                .unwrap_err()
                .what,
            "payload header"
        );
        // Bytes after the last payload.
        assert_eq!(
            parse_payloads(PayloadType::VENDOR_ID, &bytes("00 00 0004 00"))
                .unwrap_err()
                .what,
            "data after last payload"
        );
    }

    #[test]
    fn critical_bit() {
        // Known payload with the critical bit: bit ignored, emitted as 0.
        let wire = bytes("00 80 0006 abcd");
        let parsed = parse_payloads(PayloadType::VENDOR_ID, &wire).unwrap();
        assert_eq!(parsed, [Payload::VendorId(vec![0xab, 0xcd])]);
        assert_eq!(chain(&parsed).1, bytes("00 00 0006 abcd"));
        // Unknown payloads keep theirs, reserved bits aside.
        for (c, critical) in [(0x00, false), (0x80, true), (0xff, true), (0x7f, false)] {
            let wire = [0, c, 0, 5, 0xee];
            let parsed = parse_payloads(PayloadType(99), &wire).unwrap();
            assert_eq!(
                parsed,
                [Payload::Unknown {
                    ty: PayloadType(99),
                    critical,
                    body: vec![0xee]
                }]
            );
            assert_eq!(chain(&parsed).1, [0, c & 0x80, 0, 5, 0xee]);
        }
    }

    #[test]
    fn encrypted_inside_chain_rejected() {
        for ty in [PayloadType::SK, PayloadType::SKF] {
            assert_eq!(
                parse_payloads(ty, &bytes("00 00 0008 01020304"))
                    .unwrap_err()
                    .what,
                "encrypted payload inside a chain"
            );
        }
    }

    #[test]
    fn too_many_payloads() {
        let v = |n| vec![Payload::VendorId(vec![]); n];
        let (first, wire) = chain(&v(MAX_PAYLOADS));
        assert_eq!(parse_payloads(first, &wire), Ok(v(MAX_PAYLOADS)));
        let (first, wire) = chain(&v(MAX_PAYLOADS + 1));
        assert_eq!(
            parse_payloads(first, &wire).unwrap_err().what,
            "too many payloads"
        );
    }
}
