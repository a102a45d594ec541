//! Whole IKE messages: header, outer payload chain, and the Encrypted (SK,
//! RFC 7296 §3.14) or Encrypted Fragment (SKF, RFC 7383 §2.5) payload that
//! ends it.

use std::ops::Range;

use super::codec::{MalformedError, Reader, What, Writer};
use super::header::Header;
use super::limits::{MAX_FRAGMENTS, MAX_MESSAGE_LEN};
use super::payload::{emit_payloads, parse_chain, ChainEnd, Payload, GENERIC_HEADER_LEN};
use super::registry::PayloadType;

/// Length of SKF's Fragment Number and Total Fragments fields.
const SKF_FIELDS_LEN: usize = 4;

/// An IKE message as parsed: the header, the payloads in the clear, and
/// where its encrypted payload (if any) sits in the buffer it was parsed
/// from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The IKE header.
    pub header: Header,
    /// Payloads outside SK/SKF: all of them in IKE_SA_INIT and unencrypted
    /// INFORMATIONAL errors; usually none in an encrypted message (any that
    /// precede SK are not integrity-protected).
    pub payloads: Vec<Payload>,
    /// The SK or SKF payload that ends the chain, if any.
    pub encrypted: Option<Encrypted>,
}

/// Where the encrypted payload of a parsed message is, as offsets into the
/// buffer given to [`Message::parse`]: the crypto works on those bytes in
/// place, and decrypted plaintext goes to [`parse_payloads`](super::parse_payloads)
/// with `first_inner`.
///
/// ```text
/// SK  (RFC 7296 §3.14):
/// | IKE header (28) | Next | C+RES | Length | IV | ciphertext | ICV |
/// |<--------------- aad_len -------------->|<------- body ------->|
///
/// SKF (RFC 7383 §2.5):
/// | IKE header (28) | Next | C+RES | Length | Frag Num | Total | IV | ciphertext | ICV |
/// |<------------------------ aad_len ------------------------->|<------- body ------->|
/// ```
///
/// For AEAD ciphers (RFC 5282 §5.1) the associated data is `buf[..aad_len]`.
/// For encrypt-then-MAC the ICV covers everything from the start of the IKE
/// header to the end of the ciphertext, i.e. `buf[..body.end - icv_len]`.
/// The body's split into IV, ciphertext and ICV depends on the negotiated
/// transforms; its minimum length is checked by the decryptor, not here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encrypted {
    /// Encrypted and Authenticated payload, RFC 7296 §3.14.
    Sk {
        /// The first payload inside (SK's Next Payload field).
        first_inner: PayloadType,
        /// Length of the associated data: IKE header through the SK
        /// generic header.
        aad_len: usize,
        /// IV || ciphertext || ICV; always ends at the end of the message.
        body: Range<usize>,
    },
    /// Encrypted Fragment payload, RFC 7383 §2.5. Parsing guarantees
    /// `1 <= fragment_number <= total_fragments <= MAX_FRAGMENTS`.
    Skf {
        /// The first payload of the reassembled message; RFC 7383 requires
        /// NONE in every fragment but number 1 (not checked here: only the
        /// first fragment's value is used on reassembly).
        first_inner: PayloadType,
        /// Fragment Number, from 1.
        fragment_number: u16,
        /// Total Fragments.
        total_fragments: u16,
        /// Length of the associated data: IKE header through Total
        /// Fragments.
        aad_len: usize,
        /// IV || ciphertext || ICV; always ends at the end of the message.
        body: Range<usize>,
    },
}

impl Encrypted {
    /// The first inner payload type.
    pub fn first_inner(&self) -> PayloadType {
        match self {
            Encrypted::Sk { first_inner, .. } | Encrypted::Skf { first_inner, .. } => *first_inner,
        }
    }

    /// Length of the associated data at the start of the message.
    pub fn aad_len(&self) -> usize {
        match self {
            Encrypted::Sk { aad_len, .. } | Encrypted::Skf { aad_len, .. } => *aad_len,
        }
    }

    /// The IV || ciphertext || ICV range.
    pub fn body(&self) -> Range<usize> {
        match self {
            Encrypted::Sk { body, .. } | Encrypted::Skf { body, .. } => body.clone(),
        }
    }
}

impl Message {
    /// Parses a whole IKE message.
    ///
    /// Checks, beyond each payload's own: the message is at most
    /// [`MAX_MESSAGE_LEN`]; the header's Length equals `buf.len()`; the
    /// chain fills the message exactly; SK/SKF, if present, is the last
    /// payload. The major version is not checked: look at
    /// [`Header::parse`] first and answer INVALID_MAJOR_VERSION there.
    pub fn parse(buf: &[u8]) -> Result<Message, MalformedError> {
        if buf.len() > MAX_MESSAGE_LEN {
            return Err(MalformedError::new("message too long"));
        }
        let header = Header::parse(buf)?;
        if usize::try_from(header.length).ok() != Some(buf.len()) {
            return Err(MalformedError::new("message length"));
        }
        let chain = buf.get(Header::LEN..).unwrap_or_default();
        let (payloads, end) = parse_chain(header.next_payload, chain, true)?;
        let encrypted = match end {
            ChainEnd::Plain => None,
            ChainEnd::Encrypted {
                ty,
                first_inner,
                header_offset,
            } => {
                let aad_len = Header::LEN + header_offset + GENERIC_HEADER_LEN;
                if ty == PayloadType::SKF {
                    let mut r = Reader::new(buf.get(aad_len..).unwrap_or_default());
                    let fragment_number = r.u16().what("fragment header")?;
                    let total_fragments = r.u16().what("fragment header")?;
                    // RFC 7383 §2.5: neither may be zero, and the number is
                    // at most the total.
                    if fragment_number == 0 || fragment_number > total_fragments {
                        return Err(MalformedError::new("fragment number"));
                    }
                    if total_fragments > MAX_FRAGMENTS {
                        return Err(MalformedError::new("too many fragments"));
                    }
                    let aad_len = aad_len + SKF_FIELDS_LEN;
                    Some(Encrypted::Skf {
                        first_inner,
                        fragment_number,
                        total_fragments,
                        aad_len,
                        body: aad_len..buf.len(),
                    })
                } else {
                    Some(Encrypted::Sk {
                        first_inner,
                        aad_len,
                        body: aad_len..buf.len(),
                    })
                }
            }
        };
        Ok(Message {
            header,
            payloads,
            encrypted,
        })
    }

    /// Emits an unencrypted message (IKE_SA_INIT, or an unprotected error
    /// notification): the header with `next_payload` and `length` computed
    /// from the payloads, then the chain.
    ///
    /// `encrypted` is ignored — its ranges point into a received buffer;
    /// encrypted messages are built with [`emit_sk_prefix`] /
    /// [`emit_skf_prefix`].
    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut header = self.header;
        header.next_payload = self.payloads.first().map_or(PayloadType::NONE, Payload::ty);
        header.length = 0;
        header.emit(&mut out);
        emit_payloads(&self.payloads, &mut out);
        let length = u32::try_from(out.len()).unwrap_or(u32::MAX);
        if let Some(field) = out.get_mut(Header::LEN - 4..Header::LEN) {
            field.copy_from_slice(&length.to_be_bytes());
        }
        out
    }
}

/// Appends the IKE header and the SK generic header of a message whose SK
/// body (IV || ciphertext || ICV) will be `body_len` bytes; the caller
/// appends exactly that. Sets `next_payload` = SK and `length` = 28 + 4 +
/// `body_len` in the header; SK's Next Payload is `first_inner`.
///
/// Returns the AAD length (32): the associated data is the `aad_len` bytes
/// this call appended (RFC 5282 §5.1), starting where `out` ended on entry.
/// Lengths saturate rather than wrap if `body_len` is absurd; keep messages
/// within [`MAX_MESSAGE_LEN`](super::limits::MAX_MESSAGE_LEN).
pub fn emit_sk_prefix(
    header: &Header,
    first_inner: PayloadType,
    body_len: usize,
    out: &mut Vec<u8>,
) -> usize {
    emit_encrypted_prefix(header, PayloadType::SK, first_inner, None, body_len, out)
}

/// Appends the IKE header, the SKF generic header, Fragment Number and Total
/// Fragments of one fragment whose body (IV || ciphertext || ICV) will be
/// `body_len` bytes, RFC 7383 §2.5. `first_inner` is the first inner payload
/// type in fragment 1 and NONE in every other fragment.
///
/// Returns the AAD length (36): per RFC 7383 §2.5 the associated data covers
/// the Fragment Number and Total Fragments fields too.
pub fn emit_skf_prefix(
    header: &Header,
    first_inner: PayloadType,
    fragment_number: u16,
    total_fragments: u16,
    body_len: usize,
    out: &mut Vec<u8>,
) -> usize {
    emit_encrypted_prefix(
        header,
        PayloadType::SKF,
        first_inner,
        Some((fragment_number, total_fragments)),
        body_len,
        out,
    )
}

fn emit_encrypted_prefix(
    header: &Header,
    ty: PayloadType,
    first_inner: PayloadType,
    fragment: Option<(u16, u16)>,
    body_len: usize,
    out: &mut Vec<u8>,
) -> usize {
    let start = out.len();
    let fields_len = if fragment.is_some() {
        SKF_FIELDS_LEN
    } else {
        0
    };
    let payload_len = body_len.saturating_add(GENERIC_HEADER_LEN + fields_len);
    let mut header = *header;
    header.next_payload = ty;
    header.length = u32::try_from(payload_len.saturating_add(Header::LEN)).unwrap_or(u32::MAX);
    header.emit(out);
    out.put_u8(first_inner.0);
    out.put_u8(0);
    out.put_u16(u16::try_from(payload_len).unwrap_or(u16::MAX));
    if let Some((number, total)) = fragment {
        out.put_u16(number);
        out.put_u16(total);
    }
    out.len() - start
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::header::Flags;
    use crate::wire::parse_payloads;
    use crate::wire::payload::{Ke, Nonce, Notify};
    use crate::wire::registry::{
        DhId, EncrId, ExchangeType, IntegId, NotifyType, PrfId, ProtocolId, TransformType,
    };
    use crate::wire::sa::{Proposal, SaPayload, Transform};

    /// A hand-built IKE_SA_INIT request, annotated field by field. (A
    /// strongSwan capture will join it as a fixture.)
    const IKE_SA_INIT: &str = concat!(
        // IKE header: SPIi, SPIr 0, next SA, v2.0, IKE_SA_INIT, flags I,
        // message ID 0, length 208.
        "0102030405060708 0000000000000000 21 20 22 08 00000000 000000d0",
        // SA: next KE, length 48.
        "22 00 0030",
        // Proposal 1 (last), length 44, IKE, no SPI, 4 transforms.
        "00 00 002c 01 01 00 04",
        "03 00 000c 01 00 000c 800e 0100", // ENCR AES_CBC, KEY_LENGTH 256
        "03 00 0008 02 00 0005",           // PRF HMAC_SHA2_256
        "03 00 0008 03 00 000c",           // INTEG HMAC_SHA2_256_128
        "00 00 0008 04 00 001f",           // DH Curve25519
        // KE: next Nonce, length 40, group 31, reserved; RFC 7748 §6.1
        // Alice's public key.
        "28 00 0028 001f 0000",
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
        // Nonce: next N, length 36.
        "29 00 0024",
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        // N(NAT_DETECTION_SOURCE_IP): next N, length 28, no SPI.
        "29 00 001c 00 00 4004",
        "1111111111111111111111111111111111111111",
        // N(NAT_DETECTION_DESTINATION_IP): last, length 28.
        "00 00 001c 00 00 4005",
        "2222222222222222222222222222222222222222",
    );

    fn bytes(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    fn header(exchange: ExchangeType, message_id: u32) -> Header {
        Header {
            spi_i: 0x0102_0304_0506_0708,
            spi_r: 0,
            next_payload: PayloadType::NONE,
            major_version: 2,
            minor_version: 0,
            exchange,
            flags: Flags::INITIATOR,
            message_id,
            length: 0,
        }
    }

    fn ike_sa_init() -> Message {
        Message {
            header: Header {
                next_payload: PayloadType::SA,
                length: 208,
                ..header(ExchangeType::IKE_SA_INIT, 0)
            },
            payloads: vec![
                Payload::Sa(SaPayload {
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
                }),
                Payload::Ke(Ke {
                    group: DhId::CURVE25519,
                    data: bytes("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"),
                }),
                Payload::Nonce(Nonce((0..32).collect())),
                Payload::Notify(Notify::new(
                    NotifyType::NAT_DETECTION_SOURCE_IP,
                    vec![0x11; 20],
                )),
                Payload::Notify(Notify::new(
                    NotifyType::NAT_DETECTION_DESTINATION_IP,
                    vec![0x22; 20],
                )),
            ],
            encrypted: None,
        }
    }

    #[test]
    fn ike_sa_init_parse() {
        assert_eq!(Message::parse(&bytes(IKE_SA_INIT)), Ok(ike_sa_init()));
    }

    #[test]
    fn ike_sa_init_emit() {
        assert_eq!(ike_sa_init().emit(), bytes(IKE_SA_INIT));
        // next_payload and length are computed, whatever the header said.
        let mut m = ike_sa_init();
        m.header.next_payload = PayloadType::NONE;
        m.header.length = 1;
        assert_eq!(m.emit(), bytes(IKE_SA_INIT));
    }

    #[test]
    fn ike_sa_init_round_trip() {
        let wire = bytes(IKE_SA_INIT);
        let m = Message::parse(&wire).unwrap();
        assert_eq!(m.emit(), wire);
        assert_eq!(Message::parse(&m.emit()), Ok(m));
    }

    #[test]
    fn every_truncation_fails() {
        let wire = bytes(IKE_SA_INIT);
        for n in 0..wire.len() {
            // As cut (the header's length disagrees)…
            assert!(Message::parse(&wire[..n]).is_err(), "prefix {n}");
            // …and with the header's length fixed up to match, so the cut
            // reaches the payload parser.
            if n >= Header::LEN {
                let mut cut = wire[..n].to_vec();
                cut[24..28].copy_from_slice(&(n as u32).to_be_bytes());
                assert!(Message::parse(&cut).is_err(), "fixed-up prefix {n}");
            }
        }
    }

    #[test]
    fn length_checks() {
        let mut wire = bytes(IKE_SA_INIT);
        wire.push(0);
        assert_eq!(Message::parse(&wire).unwrap_err().what, "message length");
        wire[27] += 1;
        assert_eq!(
            Message::parse(&wire).unwrap_err().what,
            "data after last payload"
        );
        // Header length far beyond the buffer.
        let mut wire = bytes(IKE_SA_INIT);
        wire[24] = 0xff;
        assert_eq!(Message::parse(&wire).unwrap_err().what, "message length");
        // A payload length pointing past the end of the message (SA: 0x0030
        // -> 0x0130).
        let mut wire = bytes(IKE_SA_INIT);
        wire[30] = 0x01;
        assert_eq!(Message::parse(&wire).unwrap_err().what, "payload length");
        // A zero-length payload.
        let mut wire = bytes(IKE_SA_INIT);
        wire[31] = 0;
        assert_eq!(Message::parse(&wire).unwrap_err().what, "payload length");
        // Over MAX_MESSAGE_LEN.
        let mut m = ike_sa_init();
        m.payloads
            .push(Payload::VendorId(vec![0; MAX_MESSAGE_LEN - 208]));
        let wire = m.emit();
        assert_eq!(wire.len(), MAX_MESSAGE_LEN + 4);
        assert_eq!(Message::parse(&wire).unwrap_err().what, "message too long");
    }

    #[test]
    fn other_major_version_is_callers_business() {
        let mut wire = bytes(IKE_SA_INIT);
        wire[17] = 0x30;
        let m = Message::parse(&wire).unwrap();
        assert_eq!(m.header.major_version, 3);
    }

    #[test]
    fn unknown_payloads_in_message() {
        for critical in [false, true] {
            let mut m = ike_sa_init();
            m.payloads.insert(
                1,
                Payload::Unknown {
                    ty: PayloadType(222),
                    critical,
                    body: vec![1, 2, 3, 4],
                },
            );
            let wire = m.emit();
            let parsed = Message::parse(&wire).unwrap();
            m.header.length = wire.len() as u32;
            assert_eq!(parsed, m);
            assert_eq!(parsed.emit(), wire);
        }
    }

    /// An IKE_AUTH request: header, SK (first inner IDi) with a 16-byte IV,
    /// 32 bytes of ciphertext, 16-byte ICV.
    fn sk_message(body_len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let aad_len = emit_sk_prefix(
            &header(ExchangeType::IKE_AUTH, 1),
            PayloadType::IDI,
            body_len,
            &mut out,
        );
        assert_eq!(aad_len, 32);
        out.extend((0..body_len).map(|i| i as u8));
        out
    }

    #[test]
    fn sk_prefix_bytes() {
        let wire = sk_message(64);
        assert_eq!(
            wire[..32],
            bytes(concat!(
                "0102030405060708 0000000000000000 2e 20 23 08 00000001 00000060",
                "23 00 0044",
            ))
        );
    }

    #[test]
    fn sk_parse() {
        let wire = sk_message(64);
        let m = Message::parse(&wire).unwrap();
        assert_eq!(m.header.next_payload, PayloadType::SK);
        assert_eq!(m.header.exchange, ExchangeType::IKE_AUTH);
        assert!(m.payloads.is_empty());
        assert_eq!(
            m.encrypted,
            Some(Encrypted::Sk {
                first_inner: PayloadType::IDI,
                aad_len: 32,
                body: 32..96,
            })
        );
        let e = m.encrypted.unwrap();
        assert_eq!(
            (e.first_inner(), e.aad_len(), e.body()),
            (PayloadType::IDI, 32, 32..96)
        );
        // An empty SK body parses; the decryptor rejects it.
        let m = Message::parse(&sk_message(0)).unwrap();
        assert_eq!(m.encrypted.unwrap().body(), 32..32);
        for n in 0..wire.len() {
            assert!(Message::parse(&wire[..n]).is_err());
        }
    }

    #[test]
    fn sk_after_clear_payloads() {
        let mut out = Vec::new();
        let mut h = header(ExchangeType::INFORMATIONAL, 2);
        h.next_payload = PayloadType::VENDOR_ID;
        h.length = 28 + 7 + 4 + 16;
        h.emit(&mut out);
        out.extend_from_slice(&bytes("2e 00 0007 616263")); // V "abc", next SK
        out.extend_from_slice(&bytes("00 00 0014")); // SK, first inner NONE
        out.extend_from_slice(&[0xee; 16]);
        let m = Message::parse(&out).unwrap();
        assert_eq!(m.payloads, [Payload::VendorId(b"abc".to_vec())]);
        assert_eq!(
            m.encrypted,
            Some(Encrypted::Sk {
                first_inner: PayloadType::NONE,
                aad_len: 39,
                body: 39..55,
            })
        );
    }

    #[test]
    fn sk_must_be_last() {
        let mut wire = sk_message(64);
        // Shrink SK by 4 bytes: 4 bytes of something follow it.
        wire[31] -= 4;
        assert_eq!(
            Message::parse(&wire).unwrap_err().what,
            "encrypted payload not last"
        );
    }

    #[test]
    fn skf_prefix_and_parse() {
        let mut wire = Vec::new();
        let aad_len = emit_skf_prefix(
            &header(ExchangeType::IKE_AUTH, 1),
            PayloadType::IDI,
            1,
            3,
            40,
            &mut wire,
        );
        assert_eq!(aad_len, 36);
        assert_eq!(
            wire,
            bytes(concat!(
                "0102030405060708 0000000000000000 35 20 23 08 00000001 0000004c",
                "23 00 0030 0001 0003",
            ))
        );
        wire.extend_from_slice(&[0x5a; 40]);
        let m = Message::parse(&wire).unwrap();
        assert_eq!(
            m.encrypted,
            Some(Encrypted::Skf {
                first_inner: PayloadType::IDI,
                fragment_number: 1,
                total_fragments: 3,
                aad_len: 36,
                body: 36..76,
            })
        );
        for n in 0..wire.len() {
            assert!(Message::parse(&wire[..n]).is_err());
        }
    }

    fn skf(number: u16, total: u16) -> Vec<u8> {
        let mut wire = Vec::new();
        emit_skf_prefix(
            &header(ExchangeType::IKE_AUTH, 1),
            PayloadType::NONE,
            number,
            total,
            8,
            &mut wire,
        );
        wire.extend_from_slice(&[0; 8]);
        wire
    }

    #[test]
    fn skf_fragment_numbers() {
        let m = Message::parse(&skf(3, 3)).unwrap();
        assert!(matches!(
            m.encrypted,
            Some(Encrypted::Skf {
                first_inner: PayloadType::NONE,
                fragment_number: 3,
                total_fragments: 3,
                ..
            })
        ));
        for (n, t, what) in [
            (0, 3, "fragment number"),
            (0, 0, "fragment number"),
            (4, 3, "fragment number"),
            (1, MAX_FRAGMENTS + 1, "too many fragments"),
        ] {
            assert_eq!(Message::parse(&skf(n, t)).unwrap_err().what, what);
        }
        // SKF too short for its own fields.
        let mut wire = skf(1, 1);
        wire.truncate(28);
        wire.extend_from_slice(&bytes("00 00 0006 0001"));
        wire[24..28].copy_from_slice(&34u32.to_be_bytes());
        assert_eq!(Message::parse(&wire).unwrap_err().what, "fragment header");
    }

    #[test]
    fn sk_plaintext_chain() {
        // What the state machine does after decrypting: parse the inner chain.
        let inner = vec![
            Payload::Notify(Notify::new(NotifyType::INITIAL_CONTACT, vec![])),
            Payload::Nonce(Nonce(vec![3; 16])),
        ];
        let mut plain = Vec::new();
        let first = emit_payloads(&inner, &mut plain);
        assert_eq!(parse_payloads(first, &plain), Ok(inner));
        // An SK nested in the plaintext is malformed.
        let nested = sk_message(16);
        assert!(parse_payloads(PayloadType::SK, &nested[28..]).is_err());
    }

    /// xorshift64*: a fixed-seed generator, so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Mutates valid messages at random and parses them: nothing may panic,
    /// a successful parse must stay in bounds, and whatever parses must
    /// survive emit → parse unchanged.
    #[test]
    fn mutations_never_panic() {
        let seeds = [bytes(IKE_SA_INIT), sk_message(64), skf(2, 5), {
            let mut m = ike_sa_init();
            m.payloads.push(Payload::Unknown {
                ty: PayloadType(99),
                critical: true,
                body: vec![0; 3],
            });
            m.emit()
        }];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut parsed_ok = 0;
        for i in 0..40_000 {
            let mut wire = seeds[i % seeds.len()].clone();
            for _ in 0..=rng.below(4) {
                match rng.below(4) {
                    0 => {
                        let at = rng.below(wire.len());
                        wire[at] = rng.next() as u8;
                    }
                    1 => {
                        let at = rng.below(wire.len());
                        wire[at] ^= 1 << rng.below(8);
                    }
                    2 => wire.truncate(rng.below(wire.len() + 1)),
                    _ => {
                        let at = rng.below(wire.len() + 1);
                        wire.insert(at, rng.next() as u8);
                    }
                }
                if wire.is_empty() {
                    break;
                }
            }
            // Usually keep the header's length honest so mutations reach the
            // payload parsers.
            if wire.len() >= Header::LEN && rng.below(8) != 0 {
                let len = wire.len() as u32;
                wire[24..28].copy_from_slice(&len.to_be_bytes());
            }
            let Ok(m) = Message::parse(&wire) else {
                continue;
            };
            parsed_ok += 1;
            match &m.encrypted {
                Some(e) => {
                    assert!(e.aad_len() <= e.body().start);
                    assert_eq!(e.body().end, wire.len());
                    let _ = parse_payloads(e.first_inner(), &wire[e.body()]);
                }
                None => assert_eq!(Message::parse(&m.emit()), Ok(m), "case {i}"),
            }
        }
        assert!(parsed_ok > 1000, "only {parsed_ok} mutants parsed");
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(42);
        for _ in 0..20_000 {
            let len = rng.below(120);
            let mut wire: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if len >= Header::LEN {
                wire[24..28].copy_from_slice(&(len as u32).to_be_bytes());
            }
            let _ = Message::parse(&wire);
            let first = PayloadType(rng.next() as u8);
            let _ = parse_payloads(first, &wire);
        }
    }
}
