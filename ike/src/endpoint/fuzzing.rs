//! Hooks for the fuzz targets in `fuzz/` (cargo feature `fuzzing`, which
//! only `fuzz/` enables; never part of the normal API).
//!
//! The `established` target drives a pair of endpoints past IKE_AUTH and
//! then feeds them messages it builds itself. To reach the processing code
//! those messages must pass the integrity check, so the harness needs the
//! SA's keys: [`seal_from_peer`] encrypts a plaintext payload chain with
//! the keys of the peer's direction of one of the endpoint's IKE SAs, and
//! the keys never leave the crate. [`sas`] shows what the harness needs to
//! aim (message IDs, child SPIs, addresses), and [`check`] verifies the
//! endpoint's internal tables agree with each other.

use super::lifecycle::Pending;
use super::{Endpoint, Phase};
use crate::event::IkeSaHandle;
use crate::wire::{ExchangeType, Flags, Header, PayloadType};
use anyhub_crypto::SeededRng;
use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;

/// What the harness may know of one IKE SA: nothing secret.
#[derive(Clone, Debug)]
pub struct SaView {
    pub handle: IkeSaHandle,
    /// The original initiator (the I flag, RFC 7296 §3.1).
    pub initiator: bool,
    /// IKE_AUTH completed (established or deleting).
    pub established: bool,
    /// The SK keys exist (IKE_SA_INIT completed).
    pub has_keys: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The message ID the next request from the peer must carry.
    pub next_peer_request_id: u32,
    /// The message ID of our request in flight, if any.
    pub outstanding: Option<u32>,
    /// RFC 7383 fragmentation was agreed.
    pub fragmentation: bool,
    /// (spi_in, spi_out) of every child SA, live or not.
    pub children: Vec<(u32, u32)>,
}

/// Every IKE SA of `ep`, by handle.
pub fn sas(ep: &Endpoint) -> Vec<SaView> {
    let mut v: Vec<SaView> = ep
        .sas
        .values()
        .map(|sa| SaView {
            handle: sa.handle,
            initiator: sa.initiator,
            established: matches!(sa.phase, Phase::Established | Phase::Deleting),
            has_keys: sa.sk.is_some(),
            local: sa.local,
            remote: sa.remote,
            next_peer_request_id: sa.next_peer_request_id,
            outstanding: sa.outstanding.as_ref().map(|o| o.msg_id),
            fragmentation: sa.fragmentation,
            children: sa.children.iter().map(|c| (c.spi_in, c.spi_out)).collect(),
        })
        .collect();
    v.sort_by_key(|s| s.handle);
    v
}

/// A whole IKE message as `ep`'s peer on IKE SA `handle` would send it:
/// header with the peer's I flag and the R flag if `response`, and the
/// payload chain `plain` (first payload `first`) encrypted and
/// integrity-protected with the keys of the peer's direction (SK, or SKF
/// with `fragment` = (number, total), RFC 7383 §2.5). `None` if the SA has
/// no keys yet.
#[allow(clippy::too_many_arguments)]
pub fn seal_from_peer(
    ep: &mut Endpoint,
    handle: IkeSaHandle,
    exchange: ExchangeType,
    message_id: u32,
    response: bool,
    first: PayloadType,
    plain: &[u8],
    fragment: Option<(u16, u16)>,
) -> Option<Vec<u8>> {
    let sa = ep.sas.get_mut(&handle)?;
    let mut flags = 0;
    if !sa.initiator {
        flags |= Flags::INITIATOR.0;
    }
    if response {
        flags |= Flags::RESPONSE.0;
    }
    let header = Header {
        spi_i: sa.spi_i,
        spi_r: sa.spi_r,
        next_payload: PayloadType::NONE,
        major_version: 2,
        minor_version: 0,
        exchange,
        flags: Flags(flags),
        message_id,
        length: 0,
    };
    // A generator of its own (CBC IVs): the endpoint's stays untouched.
    let mut rng = SeededRng::new(u64::from(message_id));
    let sk = sa.sk.as_mut()?;
    Some(sk.seal_plain(
        !sa.initiator,
        &header,
        first,
        fragment,
        plain.to_vec(),
        &mut rng,
    ))
}

/// Sizes of an endpoint's tables, for bounds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sizes {
    pub ike_sas: usize,
    pub child_sas: usize,
    pub half_open: usize,
    pub timers: usize,
    /// Queued tasks over all SAs.
    pub tasks: usize,
    /// Fragment bytes held for reassembly over all SAs.
    pub reassembly_bytes: usize,
    pub transmits: usize,
    pub events: usize,
}

/// Checks that `ep`'s tables agree with each other and returns their sizes:
/// every SPI index entry names a live SA (its own SPI, or the SPI reserved
/// for its IKE SA rekey in flight) and every SA is indexed by its SPI; the
/// timer set holds exactly each SA's next deadline (an SA missing from it
/// would never expire); half-open entries name responder SAs awaiting
/// IKE_AUTH; inbound child SPIs are unique; established SAs have keys.
pub fn check(ep: &Endpoint) -> Result<Sizes, String> {
    for (&spi, h) in &ep.by_spi {
        let sa = ep
            .sas
            .get(h)
            .ok_or_else(|| format!("SPI {spi:016x} indexes a forgotten SA {h:?}"))?;
        let reserved = matches!(
            &sa.outstanding,
            Some(super::Outstanding { pending: Pending::RekeyIke { new_spi_i, .. }, .. })
                if *new_spi_i == spi
        );
        if sa.our_spi() != spi && !reserved {
            return Err(format!("SPI {spi:016x} indexes SA {h:?}, not its SPI"));
        }
    }
    let mut timers = BTreeSet::new();
    let mut spis_in = HashSet::new();
    let mut sizes = Sizes {
        ike_sas: ep.sas.len(),
        half_open: ep.half_open.len(),
        timers: ep.timers.len(),
        transmits: ep.transmits.len(),
        events: ep.events.len(),
        ..Sizes::default()
    };
    for (h, sa) in &ep.sas {
        if sa.handle != *h {
            return Err(format!("SA {:?} filed under {h:?}", sa.handle));
        }
        if ep.by_spi.get(&sa.our_spi()) != Some(h) {
            return Err(format!("SA {h:?} not indexed by its SPI"));
        }
        let next = sa.next_timer(ep.dpd_due(sa), ep.keepalive_due(sa));
        if sa.scheduled != next {
            return Err(format!(
                "SA {h:?} scheduled at {:?}, next deadline {next:?}",
                sa.scheduled
            ));
        }
        if let Some(t) = sa.scheduled {
            timers.insert((t, *h));
        }
        if matches!(sa.phase, Phase::Established | Phase::Deleting)
            && (sa.sk.is_none() || sa.keys.is_none())
        {
            return Err(format!("established SA {h:?} without keys"));
        }
        if let Some((spi, from)) = sa.half_open_key {
            if ep.half_open.get(spi, from) != Some(*h) {
                return Err(format!("SA {h:?} lost its half-open entry"));
            }
        }
        for c in &sa.children {
            if !spis_in.insert(c.spi_in) {
                return Err(format!("inbound SPI {:08x} held twice", c.spi_in));
            }
        }
        sizes.child_sas += sa.children.len();
        sizes.tasks += sa.tasks.len();
        sizes.reassembly_bytes += sa.reassembly.as_ref().map_or(0, |r| r.bytes());
    }
    if timers != ep.timers {
        return Err("timer set differs from the SAs' deadlines".into());
    }
    let awaiting = ep
        .sas
        .values()
        .filter(|sa| sa.half_open_key.is_some())
        .count();
    if awaiting != ep.half_open.len() {
        return Err(format!(
            "{} half-open entries for {awaiting} SAs awaiting IKE_AUTH",
            ep.half_open.len()
        ));
    }
    Ok(sizes)
}
