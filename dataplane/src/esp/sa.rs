//! One direction of a child SA: [`OutboundSa`] encrypts, [`InboundSa`]
//! decrypts, both in place, both shareable by worker threads (`&self`).

use super::iv::{aead_iv, cbc_iv, COUNTER_LIMIT, MAX_NODE};
use super::replay::{AtomicReplayWindow, ReplayError};
use super::transform::{Algorithm, Keys, SaError};
use super::{EspError, EspHeader, IpVersion, HEADER_LEN, NEXT_HEADER_DUMMY, TRAILER_LEN};
use super::{NEXT_HEADER_IPV4, NEXT_HEADER_IPV6};
use crate::counters::SaCounters;
use anyhub_crypto::aead::{IV_LEN, TAG_LEN};
use anyhub_crypto::cipher::BLOCK_LEN;
use anyhub_ike::proposal::Selected;
use anyhub_ike::wire::TrafficSelector;
use anyhub_ike::{ChildSa, DirectionKeys, IkeSaHandle};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What status needs to know about a child SA; no keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaInfo {
    pub tunnel: Arc<str>,
    /// The IKE SA the child was negotiated under (at install time; the SAD
    /// tracks IKE SA rekeys).
    pub ike: IkeSaHandle,
    pub spi_in: u32,
    pub spi_out: u32,
    pub proposal: Selected,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// ESP-in-UDP (RFC 3948).
    pub encap: bool,
    pub lifetime: Duration,
    pub installed_at: Instant,
    /// The inbound SPI of the SA this one rekeyed.
    pub rekey_of: Option<u32>,
}

impl SaInfo {
    /// Everything of `child` but its keys.
    pub fn of_child(child: &ChildSa, installed_at: Instant) -> SaInfo {
        SaInfo {
            tunnel: child.tunnel.clone(),
            ike: child.ike,
            spi_in: child.spi_in,
            spi_out: child.spi_out,
            proposal: child.proposal.clone(),
            local_ts: child.local_ts.clone(),
            remote_ts: child.remote_ts.clone(),
            local: child.local,
            remote: child.remote,
            encap: child.encap,
            lifetime: child.lifetime,
            installed_at,
            rekey_of: child.rekey_of,
        }
    }
}

/// How many packets an outbound SA may number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqLimits {
    /// No packet is numbered at or past this count: the last sequence
    /// number sent is `hard` (numbers start at 1).
    pub hard: u64,
    /// From this count on, [`OutboundSa::rekey_due`] says so.
    pub soft: u64,
}

impl SeqLimits {
    /// The safe maximum. Without ESN the 32-bit Sequence Number must never
    /// cycle (RFC 4303 §3.3.3): at most 2^32 - 1 packets. With ESN the
    /// 64-bit number is not the limit; the 52-bit IV counter is
    /// ([`super::iv`]). The soft limit is at 7/8 of it, leaving IKE the
    /// last eighth (some minutes at line rate without ESN) to rekey.
    pub fn for_esn(esn: bool) -> SeqLimits {
        let hard = if esn {
            COUNTER_LIMIT
        } else {
            u64::from(u32::MAX)
        };
        SeqLimits {
            hard,
            soft: hard - hard / 8,
        }
    }
}

/// The ICV-covered "AAD" of combined-mode ESP (RFC 4106 §5, RFC 7634 §2.1):
/// SPI ‖ Sequence Number, or with ESN SPI ‖ Seq high ‖ Seq low.
#[inline]
fn esn_aad(spi: u32, seq: u64) -> [u8; 12] {
    let mut aad = [0u8; 12];
    aad[..4].copy_from_slice(&spi.to_be_bytes());
    aad[4..].copy_from_slice(&seq.to_be_bytes());
    aad
}

/// Padding such that payload + padding + 2 is a multiple of `align`
/// (RFC 4303 §2.4).
#[inline]
fn pad_len(payload: usize, align: usize) -> usize {
    (align - (payload + TRAILER_LEN) % align) % align
}

/// The outbound half of a child SA: numbers and encrypts packets to the
/// peer.
///
/// `Send + Sync`; workers call [`OutboundSa::encrypt`] concurrently. The
/// sequence number and the IV counter are one atomic: packet `n` (counting
/// from 0) carries Sequence Number `n + 1` and IV counter `n`.
#[derive(Debug)]
pub struct OutboundSa {
    spi: u32,
    alg: Algorithm,
    esn: bool,
    node: u16,
    keys: Keys,
    /// Packets numbered so far (including refused ones past `limits.hard`).
    next: AtomicU64,
    limits: SeqLimits,
    info: Arc<SaInfo>,
    counters: SaCounters,
}

impl OutboundSa {
    /// The outbound SA of `child` (SPI `spi_out`, keys `keys_out`) for this
    /// node, index `node` (1..=4095), whose IVs are its own (see
    /// [`super::iv`]).
    pub fn new(child: &ChildSa, node: u16, info: Arc<SaInfo>) -> Result<OutboundSa, SaError> {
        Self::from_parts(child.spi_out, &child.proposal, &child.keys_out, node, info)
    }

    pub(crate) fn from_parts(
        spi: u32,
        proposal: &Selected,
        keys: &DirectionKeys,
        node: u16,
        info: Arc<SaInfo>,
    ) -> Result<OutboundSa, SaError> {
        if !(1..=MAX_NODE).contains(&node) {
            return Err(SaError::BadNodeIndex);
        }
        let alg = Algorithm::from_selected(proposal)?;
        Ok(OutboundSa {
            spi,
            alg,
            esn: proposal.esn,
            node,
            keys: Keys::new(alg, keys)?,
            next: AtomicU64::new(0),
            limits: SeqLimits::for_esn(proposal.esn),
            info,
            counters: SaCounters::default(),
        })
    }

    /// Lowers the limits (tests, operators who want earlier rekeys). Limits
    /// above [`SeqLimits::for_esn`] are clamped to it.
    pub fn with_limits(mut self, limits: SeqLimits) -> OutboundSa {
        let max = SeqLimits::for_esn(self.esn);
        self.limits = SeqLimits {
            hard: limits.hard.min(max.hard),
            soft: limits.soft.min(max.hard),
        };
        self
    }

    pub fn spi(&self) -> u32 {
        self.spi
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub fn esn(&self) -> bool {
        self.esn
    }

    /// The node index in this SA's IVs.
    pub fn node(&self) -> u16 {
        self.node
    }

    pub fn info(&self) -> &SaInfo {
        &self.info
    }

    pub fn counters(&self) -> &SaCounters {
        &self.counters
    }

    /// Bytes needed in front of the inner packet: SPI, Sequence Number, IV.
    pub fn headroom(&self) -> usize {
        HEADER_LEN + self.alg.iv_len()
    }

    /// The most bytes needed after the inner packet: padding, trailer, ICV.
    pub fn tailroom(&self) -> usize {
        self.alg.align() - 1 + TRAILER_LEN + self.alg.icv_len()
    }

    /// Bytes the ESP packet of an `inner_len`-byte packet adds after it.
    pub fn trailer_len(&self, inner_len: usize) -> usize {
        pad_len(inner_len, self.alg.align()) + TRAILER_LEN + self.alg.icv_len()
    }

    /// Packets numbered so far: the last sequence number used.
    pub fn sent(&self) -> u64 {
        self.next.load(Relaxed).min(self.limits.hard)
    }

    /// Whether the SA is past its soft limit and IKE should rekey it.
    pub fn rekey_due(&self) -> bool {
        self.next.load(Relaxed) >= self.limits.soft
    }

    /// Whether the SA can number no more packets.
    pub fn exhausted(&self) -> bool {
        self.next.load(Relaxed) >= self.limits.hard
    }

    /// Moves the counter forward to at least `n` packets (never backwards):
    /// for an SA re-installed on this node, or a takeover that jumps past
    /// what another writer used (DESIGN.md). Clamped to the hard limit, so
    /// the counter cannot be pushed near `u64::MAX` and wrap.
    pub fn advance_to(&self, n: u64) {
        self.next.fetch_max(n.min(self.limits.hard), Relaxed);
    }

    /// Encrypts the inner IPv4/IPv6 packet at `buf[inner]` into an ESP
    /// packet around it (RFC 4303 §3.3): the header and IV go into the
    /// [`headroom`](Self::headroom) before `inner.start`, padding, trailer
    /// and ICV after `inner.end`. Returns the ESP packet's range in `buf`.
    ///
    /// Errors, nothing numbered: [`EspError::NoRoom`], [`EspError::BadInner`].
    /// [`EspError::SeqExhausted`] once the SA is used up (rekey).
    pub fn encrypt(&self, buf: &mut [u8], inner: Range<usize>) -> Result<Range<usize>, EspError> {
        let Some(packet) = buf.get(inner.clone()) else {
            return Err(EspError::NoRoom);
        };
        let version = IpVersion::of_packet(packet).ok_or(EspError::BadInner)?;
        let head = self.headroom();
        let align = self.alg.align();
        let len = inner.len();
        let pad = pad_len(len, align);
        let ct_len = len + pad + TRAILER_LEN;
        let Some(start) = inner.start.checked_sub(head) else {
            return Err(EspError::NoRoom);
        };
        let end = inner.end + pad + TRAILER_LEN + self.alg.icv_len();
        if end > buf.len() {
            return Err(EspError::NoRoom);
        }
        let esp = &mut buf[start..end];
        // RFC 4303 §2.4: default padding 1, 2, 3, …; §2.5, §2.6: the trailer.
        let trailer = &mut esp[head + len..head + ct_len];
        for (i, b) in trailer[..pad].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        trailer[pad] = pad as u8;
        trailer[pad + 1] = version.next_header();

        let n = self.number()?;
        self.seal_numbered(esp, ct_len, n)?;
        Ok(start..end)
    }

    /// Hands out the next packet number, or refuses past the hard limit.
    #[inline]
    fn number(&self) -> Result<u64, EspError> {
        // fetch_add keeps counting when refused; from the hard limit (at most
        // 2^52) it would take 2^64 - 2^52 calls to wrap: centuries.
        let n = self.next.fetch_add(1, Relaxed);
        if n >= self.limits.hard {
            return Err(EspError::SeqExhausted);
        }
        Ok(n)
    }

    /// Writes header and IV of packet number `n` into `esp` and protects
    /// `esp[headroom..headroom + ct_len]` (payload, padding and trailer
    /// already in place), writing the ICV after it. `esp` is exactly the
    /// packet.
    pub(crate) fn seal_numbered(
        &self,
        esp: &mut [u8],
        ct_len: usize,
        n: u64,
    ) -> Result<(), EspError> {
        let seq = n + 1;
        let head = self.headroom();
        esp[..4].copy_from_slice(&self.spi.to_be_bytes());
        // RFC 4303 §2.2: only the low 32 bits travel; with ESN the high ones
        // enter the ICV (§2.2.1).
        esp[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        match &self.keys {
            Keys::Aead(key) => {
                let iv = aead_iv(self.node, n);
                esp[HEADER_LEN..head].copy_from_slice(&iv);
                let (hdr, rest) = esp.split_at_mut(head);
                let (ct, tag) = rest.split_at_mut(ct_len);
                let tag: &mut [u8; TAG_LEN] = tag.try_into().map_err(|_| EspError::NoRoom)?;
                let aad_esn;
                let aad: &[u8] = if self.esn {
                    aad_esn = esn_aad(self.spi, seq);
                    &aad_esn
                } else {
                    &hdr[..HEADER_LEN]
                };
                key.seal_in_place(&iv, aad, ct, tag)
                    .map_err(|_| EspError::Backend)?;
            }
            Keys::CbcHmac { cbc, integ } => {
                let iv = cbc_iv(cbc, self.node, n);
                esp[HEADER_LEN..head].copy_from_slice(&iv);
                cbc.encrypt_in_place(&iv, &mut esp[head..head + ct_len])
                    .map_err(|_| EspError::BadLength)?;
                let (covered, icv) = esp.split_at_mut(head + ct_len);
                let seq_hi = ((seq >> 32) as u32).to_be_bytes();
                // RFC 4303 §3.3.2.1 (ESN): Seq high is appended, for the ICV
                // only, after the Next Header field.
                let parts: &[&[u8]] = if self.esn {
                    &[covered, &seq_hi]
                } else {
                    &[covered]
                };
                if icv.len() != integ.alg().icv_len() {
                    return Err(EspError::NoRoom);
                }
                integ.compute(parts, icv);
            }
        }
        Ok(())
    }
}

/// A packet [`InboundSa::decrypt`] accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decrypted {
    /// Where the inner packet is, in the buffer passed in. It may end in TFC
    /// padding (RFC 4303 §2.7); the inner IP header's length is
    /// authoritative.
    pub inner: Range<usize>,
    pub version: IpVersion,
    /// The full (with ESN: inferred 64-bit) sequence number.
    pub seq: u64,
}

/// The inbound half of a child SA: verifies, replay-checks and decrypts
/// packets from the peer.
///
/// `Send + Sync`. The replay window is an [`AtomicReplayWindow`]: workers
/// check and record numbers without a lock, except once per 64 in-order
/// packets when the window moves into a new block (`bench-esp` measures it
/// against a mutex-guarded window).
#[derive(Debug)]
pub struct InboundSa {
    spi: u32,
    alg: Algorithm,
    esn: bool,
    keys: Keys,
    window: AtomicReplayWindow,
    info: Arc<SaInfo>,
    counters: SaCounters,
}

impl InboundSa {
    /// The inbound SA of `child` (SPI `spi_in`, keys `keys_in`) with a
    /// replay window of `window` packets (a power of two, 64..=65536).
    pub fn new(child: &ChildSa, window: u32, info: Arc<SaInfo>) -> Result<InboundSa, SaError> {
        Self::from_parts(child.spi_in, &child.proposal, &child.keys_in, window, info)
    }

    pub(crate) fn from_parts(
        spi: u32,
        proposal: &Selected,
        keys: &DirectionKeys,
        window: u32,
        info: Arc<SaInfo>,
    ) -> Result<InboundSa, SaError> {
        let alg = Algorithm::from_selected(proposal)?;
        Ok(InboundSa {
            spi,
            alg,
            esn: proposal.esn,
            keys: Keys::new(alg, keys)?,
            window: AtomicReplayWindow::new(window).map_err(|_| SaError::BadReplayWindow)?,
            info,
            counters: SaCounters::default(),
        })
    }

    pub fn spi(&self) -> u32 {
        self.spi
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub fn esn(&self) -> bool {
        self.esn
    }

    pub fn info(&self) -> &SaInfo {
        &self.info
    }

    pub fn counters(&self) -> &SaCounters {
        &self.counters
    }

    /// The highest sequence number accepted so far.
    pub fn highest_seq(&self) -> u64 {
        self.window.top()
    }

    /// Verifies and decrypts the ESP packet `packet` (from the SPI to the
    /// ICV) in place (RFC 4303 §3.4) and returns where the inner packet is.
    ///
    /// Order: length checks; anti-replay check (§3.4.3, before spending a
    /// decryption on a replay); ICV and decryption (§3.4.4); window update;
    /// padding (§2.4) and Next Header (§2.6) checks. On any error the
    /// contents of `packet` are unspecified. An AEAD ciphertext need not be
    /// 4-byte aligned: §2.4 binds the sender, and refusing costs interop.
    pub fn decrypt(&self, packet: &mut [u8]) -> Result<Decrypted, EspError> {
        let hdr = EspHeader::parse(packet)?;
        if hdr.spi != self.spi {
            return Err(EspError::Malformed);
        }
        let head = self.headroom();
        let icv_len = self.alg.icv_len();
        let Some(ct_len) = packet.len().checked_sub(head + icv_len) else {
            return Err(EspError::Malformed);
        };
        if ct_len < TRAILER_LEN {
            return Err(EspError::Malformed);
        }
        if matches!(self.keys, Keys::CbcHmac { .. }) && ct_len % BLOCK_LEN != 0 {
            return Err(EspError::BadLength);
        }

        let seq = if self.esn {
            self.window.infer_esn(hdr.seq_lo).ok_or(EspError::TooOld)?
        } else {
            u64::from(hdr.seq_lo)
        };
        self.window.check(seq).map_err(replay_error)?;

        match &self.keys {
            Keys::Aead(key) => {
                let (hdr_iv, rest) = packet.split_at_mut(head);
                let iv: &[u8; IV_LEN] = hdr_iv[HEADER_LEN..]
                    .try_into()
                    .map_err(|_| EspError::Malformed)?;
                let (ct, tag) = rest.split_at_mut(ct_len);
                let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| EspError::Malformed)?;
                let aad_esn;
                let aad: &[u8] = if self.esn {
                    aad_esn = esn_aad(self.spi, seq);
                    &aad_esn
                } else {
                    &hdr_iv[..HEADER_LEN]
                };
                key.open_in_place(iv, aad, ct, tag)
                    .map_err(|_| EspError::AuthFailed)?;
            }
            Keys::CbcHmac { cbc, integ } => {
                let (covered, icv) = packet.split_at_mut(head + ct_len);
                let seq_hi = ((seq >> 32) as u32).to_be_bytes();
                let parts: &[&[u8]] = if self.esn {
                    &[covered, &seq_hi]
                } else {
                    &[covered]
                };
                if !integ.verify(parts, icv) {
                    return Err(EspError::AuthFailed);
                }
                let (hdr_iv, ct) = covered.split_at_mut(head);
                let iv: &[u8; BLOCK_LEN] = hdr_iv[HEADER_LEN..]
                    .try_into()
                    .map_err(|_| EspError::Malformed)?;
                cbc.decrypt_in_place(iv, ct)
                    .map_err(|_| EspError::BadLength)?;
            }
        }

        // Authentic: record it, unless another worker just did.
        self.window.check_and_update(seq).map_err(replay_error)?;

        let ct = &packet[head..head + ct_len];
        let next_header = ct[ct_len - 1];
        let pad = usize::from(ct[ct_len - 2]);
        if next_header == NEXT_HEADER_DUMMY {
            return Err(EspError::Dummy);
        }
        let Some(payload_len) = ct_len.checked_sub(TRAILER_LEN + pad) else {
            return Err(EspError::BadPadding);
        };
        let padding = &ct[payload_len..payload_len + pad];
        if padding.iter().zip(1u8..).any(|(&b, want)| b != want) {
            return Err(EspError::BadPadding);
        }
        let version = match next_header {
            NEXT_HEADER_IPV4 => IpVersion::V4,
            NEXT_HEADER_IPV6 => IpVersion::V6,
            _ => return Err(EspError::BadNextHeader),
        };
        if IpVersion::of_packet(&ct[..payload_len]) != Some(version) {
            return Err(EspError::BadNextHeader);
        }
        Ok(Decrypted {
            inner: head..head + payload_len,
            version,
            seq,
        })
    }

    fn headroom(&self) -> usize {
        HEADER_LEN + self.alg.iv_len()
    }
}

fn replay_error(e: ReplayError) -> EspError {
    match e {
        ReplayError::Duplicate => EspError::Replay,
        ReplayError::TooOld => EspError::TooOld,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use anyhub_crypto::{Rng, Secret, SeededRng};
    use anyhub_ike::proposal::EncrAlg;
    use anyhub_ike::ts;
    use anyhub_ike::wire::registry::{EncrId, IntegId, ProtocolId};
    use std::collections::HashSet;

    /// Every transform we support, as IKE would select it.
    pub(crate) const SUITES: &[(EncrId, u16, Option<IntegId>)] = &[
        (EncrId::AES_GCM_16, 128, None),
        (EncrId::AES_GCM_16, 256, None),
        (EncrId::CHACHA20_POLY1305, 256, None),
        (EncrId::AES_CBC, 128, Some(IntegId::HMAC_SHA2_256_128)),
        (EncrId::AES_CBC, 256, Some(IntegId::HMAC_SHA2_256_128)),
        (EncrId::AES_CBC, 256, Some(IntegId::HMAC_SHA2_384_192)),
        (EncrId::AES_CBC, 256, Some(IntegId::HMAC_SHA2_512_256)),
        (EncrId::AES_CBC, 192, Some(IntegId::HMAC_SHA2_256_128)),
        (EncrId::AES_CBC, 128, Some(IntegId::HMAC_SHA1_96)),
    ];

    /// A child SA for `suite` with keys from `seed`; `keys_in` of one side is
    /// `keys_out` of the other, as IKE hands them out.
    pub(crate) fn child(
        suite: (EncrId, u16, Option<IntegId>),
        esn: bool,
        spi_in: u32,
        spi_out: u32,
        seed: u64,
    ) -> ChildSa {
        let (id, key_bits, integ) = suite;
        let proposal = Selected {
            protocol: ProtocolId::ESP,
            num: 1,
            encr: EncrAlg { id, key_bits },
            prf: None,
            integ,
            dh: None,
            esn,
            peer_spi: spi_out.to_be_bytes().to_vec(),
        };
        let alg = Algorithm::from_selected(&proposal).unwrap();
        let (encr_len, integ_len) = match alg {
            Algorithm::Aead(a) => (a.keymat_len(), 0),
            Algorithm::CbcHmac { key_len, integ } => (key_len, integ.key_len()),
        };
        let mut rng = SeededRng::new(seed);
        let mut keys = || {
            let mut e = vec![0; encr_len];
            rng.fill(&mut e);
            let mut i = vec![0; integ_len];
            rng.fill(&mut i);
            DirectionKeys {
                encr: Secret::new(e),
                integ: (integ_len > 0).then(|| Secret::new(i)),
            }
        };
        let keys_in = keys();
        let keys_out = keys();
        ChildSa {
            tunnel: Arc::from("site-a"),
            ike: IkeSaHandle(1),
            spi_in,
            spi_out,
            proposal,
            keys_in,
            keys_out,
            local_ts: vec![ts::parse("10.20.0.0/24").unwrap()],
            remote_ts: vec![ts::parse("10.10.0.0/24").unwrap()],
            lifetime: Duration::from_secs(3600),
            local: "198.51.100.1:4500".parse().unwrap(),
            remote: "203.0.113.7:4500".parse().unwrap(),
            encap: true,
            rekey_of: None,
        }
    }

    /// The peer's view of `c`: directions swapped.
    pub(crate) fn mirror(c: &ChildSa) -> ChildSa {
        let mut m = c.clone();
        m.spi_in = c.spi_out;
        m.spi_out = c.spi_in;
        m.keys_in = c.keys_out.clone();
        m.keys_out = c.keys_in.clone();
        m
    }

    /// (our outbound, the peer's inbound) for `suite`.
    pub(crate) fn pair(
        suite: (EncrId, u16, Option<IntegId>),
        esn: bool,
        node: u16,
    ) -> (OutboundSa, InboundSa) {
        let c = child(suite, esn, 0x0010_0001, 0xc0ff_ee01, 42);
        let info = Arc::new(SaInfo::of_child(&c, Instant::now()));
        let out = OutboundSa::new(&c, node, info.clone()).unwrap();
        let peer = mirror(&c);
        let inb = InboundSa::new(&peer, 1024, info).unwrap();
        (out, inb)
    }

    /// An IPv4 packet of `len` bytes (header only loosely valid: the ESP
    /// layer looks at the version nibble).
    pub(crate) fn ipv4(len: usize, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; len];
        p[0] = 0x45;
        p
    }

    /// Places `inner` in a buffer with `out`'s headroom and tailroom,
    /// encrypts, returns the ESP packet.
    pub(crate) fn seal(out: &OutboundSa, inner: &[u8]) -> Vec<u8> {
        let head = out.headroom();
        let mut buf = vec![0u8; head + inner.len() + out.tailroom()];
        buf[head..head + inner.len()].copy_from_slice(inner);
        let r = out.encrypt(&mut buf, head..head + inner.len()).unwrap();
        assert_eq!(r.start, 0);
        assert_eq!(r.len(), head + inner.len() + out.trailer_len(inner.len()));
        buf.truncate(r.end);
        buf
    }

    #[test]
    fn round_trip_every_suite_esn_on_and_off() {
        for &suite in SUITES {
            for esn in [false, true] {
                let (out, inb) = pair(suite, esn, 7);
                for len in [1, 20, 63, 64, 65, 100, 1400, 1500] {
                    let mut inner = ipv4(len, len as u8);
                    if len == 100 {
                        inner[0] = 0x60; // and an IPv6 one
                    }
                    let mut pkt = seal(&out, &inner);
                    let alg = out.algorithm();
                    let ct_len = pkt.len() - out.headroom() - alg.icv_len();
                    assert_eq!(ct_len % alg.align(), 0, "{suite:?}");
                    assert_eq!(&pkt[..4], &0xc0ff_ee01u32.to_be_bytes());
                    assert_ne!(&pkt[out.headroom()..][..len], &inner[..], "encrypted");
                    let d = inb
                        .decrypt(&mut pkt)
                        .unwrap_or_else(|e| panic!("{suite:?} esn={esn} len={len}: {e}"));
                    assert_eq!(&pkt[d.inner.clone()], &inner[..]);
                    assert_eq!(d.version, IpVersion::of_packet(&inner).unwrap());
                    assert_eq!(d.seq, out.sent());
                }
            }
        }
    }

    #[test]
    fn wire_format_aead() {
        let (out, _) = pair(SUITES[1], false, 3);
        let inner = ipv4(21, 0xaa);
        let pkt = seal(&out, &inner);
        // 8 header + 8 IV + 21 payload + 1 pad + 2 trailer + 16 ICV.
        assert_eq!(pkt.len(), 8 + 8 + 24 + 16);
        assert_eq!(
            &pkt[4..8],
            &1u32.to_be_bytes(),
            "first sequence number is 1"
        );
        // IV = node 3 in the top 12 bits, counter 0.
        assert_eq!(&pkt[8..16], &(3u64 << 52).to_be_bytes());
        let pkt = seal(&out, &inner);
        assert_eq!(&pkt[4..8], &2u32.to_be_bytes());
        assert_eq!(&pkt[8..16], &(3u64 << 52 | 1).to_be_bytes());
    }

    /// The trailer inside the ciphertext is exactly RFC 4303 §2.4's: read
    /// it back by decrypting with the raw primitive.
    #[test]
    fn padding_is_monotonic() {
        let (out, inb) = pair(
            (EncrId::AES_CBC, 128, Some(IntegId::HMAC_SHA2_256_128)),
            false,
            1,
        );
        let inner = ipv4(17, 0x11);
        let mut pkt = seal(&out, &inner);
        // 17 + 13 pad + 2 = 32.
        assert_eq!(pkt.len(), 8 + 16 + 32 + 16);
        let Keys::CbcHmac { cbc, .. } = &inb.keys else {
            unreachable!()
        };
        let iv: [u8; 16] = pkt[8..24].try_into().unwrap();
        cbc.decrypt_in_place(&iv, &mut pkt[24..56]).unwrap();
        assert_eq!(&pkt[24..41], &inner[..]);
        assert_eq!(&pkt[41..54], &(1..=13).collect::<Vec<u8>>()[..]);
        assert_eq!(pkt[54], 13);
        assert_eq!(pkt[55], 4);
    }

    #[test]
    fn tampering_fails_authentication() {
        for &suite in SUITES {
            for esn in [false, true] {
                let (out, inb) = pair(suite, esn, 1);
                let good = seal(&out, &ipv4(80, 3));
                for i in [4, 9, 20, good.len() / 2, good.len() - 1] {
                    let mut bad = good.clone();
                    bad[i] ^= 0x20;
                    let e = inb.decrypt(&mut bad).unwrap_err();
                    // A changed sequence number may also land elsewhere in
                    // the window; everything else is an ICV failure.
                    assert!(
                        e == EspError::AuthFailed || (i < 8 && e == EspError::TooOld),
                        "{suite:?} byte {i}: {e:?}"
                    );
                }
                // The untouched packet still opens: failures left no trace in
                // the window.
                let mut ok = good.clone();
                inb.decrypt(&mut ok).unwrap();
            }
        }
    }

    #[test]
    fn replays_are_refused_after_authentication_only() {
        let (out, inb) = pair(SUITES[0], false, 1);
        let p1 = seal(&out, &ipv4(40, 1));
        let p2 = seal(&out, &ipv4(40, 2));
        let mut a = p2.clone();
        inb.decrypt(&mut a).unwrap();
        let mut a = p2.clone();
        assert_eq!(inb.decrypt(&mut a), Err(EspError::Replay));
        // Out of order inside the window.
        let mut b = p1.clone();
        assert_eq!(inb.decrypt(&mut b).unwrap().seq, 1);
        // A forged packet with a fresh number does not move the window.
        let mut forged = seal(&out, &ipv4(40, 3));
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(inb.decrypt(&mut forged), Err(EspError::AuthFailed));
        assert_eq!(inb.highest_seq(), 2);
    }

    #[test]
    fn too_old_after_the_window_slides() {
        let (out, inb) = pair(SUITES[0], false, 1);
        let first = seal(&out, &ipv4(40, 0));
        out.advance_to(5000);
        let mut late = seal(&out, &ipv4(40, 0));
        assert_eq!(inb.decrypt(&mut late).unwrap().seq, 5001);
        let mut f = first;
        assert_eq!(inb.decrypt(&mut f), Err(EspError::TooOld));
    }

    /// ESN: a sender past 2^32 packets; the receiver infers the high bits,
    /// and the wire carries only the low ones.
    #[test]
    fn esn_across_the_32_bit_boundary() {
        for &suite in &SUITES[..4] {
            let (out, inb) = pair(suite, true, 1);
            out.advance_to((1 << 32) - 3);
            let mut seqs = vec![];
            for i in 0..6 {
                let mut p = seal(&out, &ipv4(60, i));
                let lo = u32::from_be_bytes(p[4..8].try_into().unwrap());
                seqs.push(inb.decrypt(&mut p).unwrap().seq);
                assert_eq!(lo, *seqs.last().unwrap() as u32);
            }
            let base = (1u64 << 32) - 2;
            assert_eq!(seqs, (base..base + 6).collect::<Vec<_>>(), "{suite:?}");
        }
    }

    /// ESN must be agreed: a receiver that assumes it computes a different
    /// AAD (12 bytes instead of 8, RFC 4106 §5) or ICV input, so even at
    /// Seq high = 0 the packet fails.
    #[test]
    fn esn_mismatch_fails() {
        for suite in [SUITES[1], SUITES[3]] {
            let c = child(suite, false, 0x0010_0001, 0xc0ff_ee01, 1);
            let info = Arc::new(SaInfo::of_child(&c, Instant::now()));
            let out = OutboundSa::new(&c, 1, info.clone()).unwrap();
            let mut peer = mirror(&c);
            peer.proposal.esn = true;
            let inb = InboundSa::new(&peer, 1024, info).unwrap();
            let mut p = seal(&out, &ipv4(60, 0));
            assert_eq!(inb.decrypt(&mut p), Err(EspError::AuthFailed), "{suite:?}");
        }
    }

    #[test]
    fn non_esn_refuses_before_the_sequence_number_cycles() {
        let (out, inb) = pair(SUITES[1], false, 1);
        out.advance_to(u64::from(u32::MAX) - 2);
        assert!(out.rekey_due());
        assert!(!out.exhausted());
        let mut last = seal(&out, &ipv4(40, 0));
        seal(&out, &ipv4(40, 0));
        assert_eq!(out.sent(), u64::from(u32::MAX));
        assert!(out.exhausted());
        let mut buf = vec![0u8; 200];
        buf[24] = 0x45;
        assert_eq!(out.encrypt(&mut buf, 24..64), Err(EspError::SeqExhausted));
        assert_eq!(out.encrypt(&mut buf, 24..64), Err(EspError::SeqExhausted));
        assert_eq!(out.sent(), u64::from(u32::MAX));
        // What it did send is fine.
        assert_eq!(inb.decrypt(&mut last).unwrap().seq, u64::from(u32::MAX) - 1);
        // And advance_to cannot push the counter past the limit.
        out.advance_to(u64::MAX);
        assert_eq!(out.sent(), u64::from(u32::MAX));
    }

    #[test]
    fn esn_refuses_before_the_iv_counter_wraps() {
        let (out, _) = pair(SUITES[0], true, 4095);
        assert_eq!(SeqLimits::for_esn(true).hard, COUNTER_LIMIT);
        out.advance_to(COUNTER_LIMIT - 1);
        let p = seal(&out, &ipv4(40, 0));
        // The last IV: node 4095, counter 2^52 - 1: all ones.
        assert_eq!(&p[8..16], &u64::MAX.to_be_bytes());
        let mut buf = vec![0u8; 200];
        buf[24] = 0x45;
        assert_eq!(out.encrypt(&mut buf, 24..64), Err(EspError::SeqExhausted));
    }

    #[test]
    fn soft_limit_signals_a_rekey() {
        let (out, _) = pair(SUITES[0], false, 1);
        let out = out.with_limits(SeqLimits { hard: 10, soft: 8 });
        for _ in 0..8 {
            assert!(!out.rekey_due());
            seal(&out, &ipv4(40, 0));
        }
        assert!(out.rekey_due());
        seal(&out, &ipv4(40, 0));
        seal(&out, &ipv4(40, 0));
        let mut buf = vec![0u8; 200];
        buf[24] = 0x45;
        assert_eq!(out.encrypt(&mut buf, 24..64), Err(EspError::SeqExhausted));
    }

    /// One node never repeats an IV, even with many threads encrypting on
    /// one SA; sequence numbers are exactly 1..=N.
    #[test]
    fn one_node_never_repeats_an_iv_across_threads() {
        for suite in [SUITES[1], SUITES[4]] {
            let (out, _) = pair(suite, false, 9);
            let out = Arc::new(out);
            let iv_len = out.algorithm().iv_len();
            let per_thread = 5000;
            let results: Vec<Vec<(u32, Vec<u8>)>> = (0..4u8)
                .map(|t| {
                    let out = out.clone();
                    std::thread::spawn(move || {
                        (0..per_thread)
                            .map(|_| {
                                let p = seal(&out, &ipv4(40, t));
                                let seq = u32::from_be_bytes(p[4..8].try_into().unwrap());
                                (seq, p[8..8 + iv_len].to_vec())
                            })
                            .collect()
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect();
            let all: Vec<_> = results.into_iter().flatten().collect();
            let ivs: HashSet<_> = all.iter().map(|(_, iv)| iv.clone()).collect();
            assert_eq!(ivs.len(), all.len(), "{suite:?}: an IV repeated");
            let mut seqs: Vec<u32> = all.iter().map(|(s, _)| *s).collect();
            seqs.sort_unstable();
            assert_eq!(seqs, (1..=4 * per_thread).collect::<Vec<_>>());
        }
    }

    /// Two nodes holding the same outbound SA (same key, same SPI, each its
    /// own counter from 0): their packets never share an IV, and the peer
    /// opens both.
    #[test]
    fn two_nodes_on_one_sa_emit_disjoint_ivs() {
        let c = child(SUITES[1], true, 0x0010_0001, 0xc0ff_ee01, 5);
        let info = Arc::new(SaInfo::of_child(&c, Instant::now()));
        let mut nodes = HashSet::new();
        let mut seen = HashSet::new();
        let peer = InboundSa::new(&mirror(&c), 65536, info.clone()).unwrap();
        for node in [1u16, 2, 3, 1000, 4094, 4095] {
            let out = OutboundSa::new(&c, node, info.clone()).unwrap();
            nodes.insert(node);
            for i in 0..2000 {
                let mut p = seal(&out, &ipv4(40, i as u8));
                let iv: [u8; 8] = p[8..16].try_into().unwrap();
                assert!(seen.insert(iv), "node {node} packet {i} reused an IV");
                // Same sequence numbers from every node: only the first
                // sender's pass the peer's window (the anti-replay hazard
                // of DESIGN.md); IVs stay distinct regardless.
                let r = peer.decrypt(&mut p);
                if node == 1 {
                    r.unwrap();
                } else {
                    assert_eq!(r, Err(EspError::Replay));
                }
            }
        }
        assert_eq!(seen.len(), nodes.len() * 2000);
    }

    /// Packets with a crafted (authentic) trailer: padding, next header and
    /// dummy checks.
    #[test]
    fn trailer_checks() {
        for &suite in &[SUITES[0], SUITES[3]] {
            let (out, inb) = pair(suite, false, 1);
            let head = out.headroom();
            let icv = out.algorithm().icv_len();
            let align = out.algorithm().align();
            // ct = payload ‖ padding ‖ pad_len ‖ next_header, sized to `align`.
            let craft = |payload: &[u8], padding: &[u8], pad_len: u8, nh: u8| {
                // Filler after the payload (TFC-padding-like) to align.
                let fill = (align - (payload.len() + padding.len() + 2) % align) % align;
                let ct = [payload, &vec![0; fill], padding, &[pad_len, nh]].concat();
                let mut pkt = vec![0u8; head + ct.len() + icv];
                pkt[head..head + ct.len()].copy_from_slice(&ct);
                let n = out.number().unwrap();
                out.seal_numbered(&mut pkt, ct.len(), n).unwrap();
                inb.decrypt(&mut pkt)
            };
            let v4 = ipv4(30, 0);
            let v6 = {
                let mut p = ipv4(30, 0);
                p[0] = 0x60;
                p
            };
            assert!(craft(&v4, &[], 0, 4).is_ok());
            assert!(craft(&v4, &[1, 2, 3], 3, 4).is_ok());
            assert_eq!(craft(&v4, &[1, 2, 4], 3, 4), Err(EspError::BadPadding));
            assert_eq!(craft(&v4, &[0, 0, 0], 3, 4), Err(EspError::BadPadding));
            // Pad Length beyond the ciphertext.
            assert_eq!(craft(&[], &[], 255, 4), Err(EspError::BadPadding));
            assert_eq!(craft(&v4, &[], 0, 41), Err(EspError::BadNextHeader));
            assert!(craft(&v6, &[], 0, 41).is_ok());
            assert_eq!(craft(&v6, &[], 0, 4), Err(EspError::BadNextHeader));
            assert_eq!(craft(&v4, &[], 0, 17), Err(EspError::BadNextHeader));
            assert_eq!(craft(&[0x45], &[], 0, 59), Err(EspError::Dummy));
            assert_eq!(craft(&[], &[], 0, 59), Err(EspError::Dummy));
            // An authentic dummy still occupies its sequence number.
            let seq = inb.highest_seq();
            assert_eq!(seq, out.sent());
        }
    }

    #[test]
    fn buffer_room_is_checked_before_numbering() {
        let (out, _) = pair(SUITES[0], false, 1);
        let head = out.headroom();
        let mut buf = vec![0u8; 100];
        buf[10] = 0x45;
        // Too little headroom.
        assert_eq!(out.encrypt(&mut buf, 10..50), Err(EspError::NoRoom));
        // Too little tailroom.
        buf[head] = 0x45;
        assert_eq!(out.encrypt(&mut buf, head..95), Err(EspError::NoRoom));
        // Range outside the buffer.
        assert_eq!(out.encrypt(&mut buf, head..200), Err(EspError::NoRoom));
        // Not IP.
        buf[head] = 0x00;
        assert_eq!(out.encrypt(&mut buf, head..50), Err(EspError::BadInner));
        assert_eq!(out.encrypt(&mut buf, head..head), Err(EspError::BadInner));
        assert_eq!(out.sent(), 0);
        assert!(out.tailroom() >= out.trailer_len(45));
        buf[head] = 0x45;
        assert!(out.encrypt(&mut buf, head..50).is_ok());
        assert_eq!(out.sent(), 1);
    }

    #[test]
    fn construction_errors() {
        let mut c = child(SUITES[0], false, 0x0010_0001, 0xc0ff_ee01, 1);
        let info = Arc::new(SaInfo::of_child(&c, Instant::now()));
        assert_eq!(
            OutboundSa::new(&c, 0, info.clone()).unwrap_err(),
            SaError::BadNodeIndex
        );
        assert_eq!(
            OutboundSa::new(&c, 4096, info.clone()).unwrap_err(),
            SaError::BadNodeIndex
        );
        assert_eq!(
            InboundSa::new(&c, 1000, info.clone()).unwrap_err(),
            SaError::BadReplayWindow
        );
        c.keys_in.encr = Secret::new(vec![0; 16]);
        assert_eq!(
            InboundSa::new(&c, 1024, info.clone()).unwrap_err(),
            SaError::BadKeyLength
        );
        let mut cbc = child(SUITES[3], false, 0x0010_0001, 0xc0ff_ee01, 1);
        cbc.keys_out.integ = None;
        assert_eq!(
            OutboundSa::new(&cbc, 1, info.clone()).unwrap_err(),
            SaError::MissingIntegrityKey
        );
        let mut des = c.clone();
        des.proposal.encr = EncrAlg {
            id: EncrId(3),
            key_bits: 192,
        };
        assert_eq!(
            OutboundSa::new(&des, 1, info).unwrap_err(),
            SaError::UnsupportedAlgorithm
        );
    }

    #[test]
    fn keys_never_in_debug() {
        let c = child(SUITES[6], false, 0x0010_0001, 0xc0ff_ee01, 1);
        let info = Arc::new(SaInfo::of_child(&c, Instant::now()));
        let out = OutboundSa::new(&c, 1, info.clone()).unwrap();
        let inb = InboundSa::new(&c, 1024, info).unwrap();
        for dbg in [format!("{out:?}"), format!("{inb:#?}")] {
            for k in [
                &c.keys_out.encr,
                c.keys_out.integ.as_ref().unwrap(),
                &c.keys_in.encr,
            ] {
                let hex: String = k.as_bytes()[..6]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let dec = format!("{}, {}", k.as_bytes()[0], k.as_bytes()[1]);
                assert!(!dbg.contains(&hex) && !dbg.contains(&dec), "key in {dbg}");
            }
        }
    }

    /// Garbage and mutated packets never panic, and only the untouched
    /// packet decrypts.
    #[test]
    fn mutations_never_panic() {
        let mut rng = SeededRng::new(77);
        let mut rand = |m: usize| {
            let mut b = [0u8; 8];
            rng.fill(&mut b);
            (u64::from_le_bytes(b) % m as u64) as usize
        };
        for &suite in SUITES {
            for esn in [false, true] {
                let (out, inb) = pair(suite, esn, 1);
                for round in 0..300 {
                    let good = seal(&out, &ipv4(1 + rand(200), round as u8));
                    let mut p = good.clone();
                    match rand(5) {
                        0 => p.truncate(rand(p.len())),
                        1 => {
                            let extra = rand(40);
                            p.extend((0..extra).map(|i| i as u8));
                        }
                        2 => {
                            for _ in 0..1 + rand(4) {
                                let i = rand(p.len());
                                p[i] ^= 1 << rand(8);
                            }
                        }
                        3 => {
                            // Random bytes behind a valid header.
                            for b in &mut p[8..] {
                                *b = rand(256) as u8;
                            }
                        }
                        _ => {
                            let n = rand(100);
                            p = (0..n).map(|_| rand(256) as u8).collect();
                        }
                    }
                    let mutated = p.clone();
                    if inb.decrypt(&mut p).is_ok() {
                        // Only when the mutation changed nothing (extending
                        // by zero bytes).
                        assert_eq!(mutated, good, "{suite:?}: a mutated packet decrypted");
                    }
                }
            }
        }
    }
}
