//! IKE events ⇄ records: what the node publishes when its IKE endpoint
//! negotiates a child SA, and what a receiving node hands its SA database.
//!
//! IKE SA handles are per node, so a record names the IKE SA by its SPIs;
//! the receiver maps them to a handle of its own ([`remote_handle`]).

use crate::key::Key;
use crate::pb;
use anyhub_crypto::Secret;
use anyhub_ike::takeover::{
    CachedResponse, ChildRef, IkeSaKeys, IkeSaState, OutstandingRequest, RequestKind,
};
use anyhub_ike::wire::{DhId, EncrId, IdType, IntegId, PrfId, ProtocolId, TrafficSelector, TsType};
use anyhub_ike::{ChildSa, DirectionKeys, Identity, IkeSaHandle, Selected};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("field {0} out of range")]
    Range(&'static str),
}

fn addr_pb(a: SocketAddr) -> pb::Address {
    let ip = match a.ip() {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    };
    pb::Address {
        ip,
        port: u32::from(a.port()),
    }
}

fn ip_from(b: &[u8], field: &'static str) -> Result<IpAddr, ConvertError> {
    match b.len() {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(b).expect("4"))),
        16 => Ok(IpAddr::from(<[u8; 16]>::try_from(b).expect("16"))),
        _ => Err(ConvertError::Range(field)),
    }
}

fn addr_from(a: Option<&pb::Address>, field: &'static str) -> Result<SocketAddr, ConvertError> {
    let a = a.ok_or(ConvertError::Missing(field))?;
    let port = u16::try_from(a.port).map_err(|_| ConvertError::Range(field))?;
    Ok(SocketAddr::new(ip_from(&a.ip, field)?, port))
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn ts_pb(t: &TrafficSelector) -> pb::Selector {
    pb::Selector {
        ts_type: u32::from(t.ty.0),
        ip_protocol: u32::from(t.ip_protocol),
        start_port: u32::from(t.start_port),
        end_port: u32::from(t.end_port),
        start_addr: ip_bytes(t.start_addr),
        end_addr: ip_bytes(t.end_addr),
    }
}

fn ts_from(s: &pb::Selector) -> Result<TrafficSelector, ConvertError> {
    let r = |_| ConvertError::Range("selector");
    Ok(TrafficSelector {
        ty: TsType(u8::try_from(s.ts_type).map_err(r)?),
        ip_protocol: u8::try_from(s.ip_protocol).map_err(r)?,
        start_port: u16::try_from(s.start_port).map_err(r)?,
        end_port: u16::try_from(s.end_port).map_err(r)?,
        start_addr: ip_from(&s.start_addr, "selector")?,
        end_addr: ip_from(&s.end_addr, "selector")?,
    })
}

fn keys_pb(k: &DirectionKeys) -> pb::DirectionKeys {
    pb::DirectionKeys {
        encr: k.encr.as_bytes().to_vec(),
        integ: k
            .integ
            .as_ref()
            .map(|i| i.as_bytes().to_vec())
            .unwrap_or_default(),
        has_integ: k.integ.is_some(),
    }
}

fn keys_from(k: Option<&pb::DirectionKeys>) -> Result<DirectionKeys, ConvertError> {
    let k = k.ok_or(ConvertError::Missing("keys"))?;
    Ok(DirectionKeys {
        encr: Secret::from_slice(&k.encr),
        integ: k.has_integ.then(|| Secret::from_slice(&k.integ)),
    })
}

/// The record body for a child SA our endpoint negotiated. `ike_spis`:
/// its IKE SA's (initiator, responder) SPIs; `owner`: our node index.
pub fn child_to_pb(c: &ChildSa, ike_spis: (u64, u64), owner: u16) -> pb::ChildSa {
    let p = &c.proposal;
    pb::ChildSa {
        tunnel: c.tunnel.to_string(),
        ike_spi_i: ike_spis.0,
        ike_spi_r: ike_spis.1,
        spi_in: c.spi_in,
        spi_out: c.spi_out,
        algorithms: Some(algorithms_pb(p)),
        keys_in: Some(keys_pb(&c.keys_in)),
        keys_out: Some(keys_pb(&c.keys_out)),
        local_ts: c.local_ts.iter().map(ts_pb).collect(),
        remote_ts: c.remote_ts.iter().map(ts_pb).collect(),
        lifetime_ms: c.lifetime.as_millis() as u64,
        local: Some(addr_pb(c.local)),
        remote: Some(addr_pb(c.remote)),
        encap: c.encap,
        rekey_of: c.rekey_of.unwrap_or(0),
        owner: u32::from(owner),
    }
}

fn algorithms_pb(p: &Selected) -> pb::Algorithms {
    pb::Algorithms {
        protocol: u32::from(p.protocol.0),
        num: u32::from(p.num),
        encr: u32::from(p.encr.id.0),
        key_bits: u32::from(p.encr.key_bits),
        prf: p.prf.map_or(0, |x| u32::from(x.0)),
        integ: p.integ.map_or(0, |x| u32::from(x.0)),
        dh: p.dh.map_or(0, |x| u32::from(x.0)),
        esn: p.esn,
        peer_spi: p.peer_spi.clone(),
    }
}

fn algorithms_from(a: Option<&pb::Algorithms>) -> Result<Selected, ConvertError> {
    let a = a.ok_or(ConvertError::Missing("algorithms"))?;
    let r = |f| move |_| ConvertError::Range(f);
    let opt16 = |v: u32, f| -> Result<Option<u16>, ConvertError> {
        if v == 0 {
            Ok(None)
        } else {
            u16::try_from(v).map(Some).map_err(r(f))
        }
    };
    Ok(Selected {
        protocol: ProtocolId(u8::try_from(a.protocol).map_err(r("protocol"))?),
        num: u8::try_from(a.num).map_err(r("num"))?,
        encr: anyhub_ike::proposal::EncrAlg {
            id: EncrId(u16::try_from(a.encr).map_err(r("encr"))?),
            key_bits: u16::try_from(a.key_bits).map_err(r("key_bits"))?,
        },
        prf: opt16(a.prf, "prf")?.map(PrfId),
        integ: opt16(a.integ, "integ")?.map(IntegId),
        dh: opt16(a.dh, "dh")?.map(DhId),
        esn: a.esn,
        peer_spi: a.peer_spi.clone(),
    })
}

/// Milliseconds since the Unix epoch (0 for times before it).
fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn opt_ms(t: Option<SystemTime>) -> u64 {
    t.map_or(0, |t| ms_of(t).max(1))
}

fn opt_time(ms: u64) -> Option<SystemTime> {
    (ms != 0).then(|| time_of(ms))
}

/// The record body for the takeover state of an IKE SA we own
/// ([`anyhub_ike::Endpoint::export_ike_sa`]); `owner` is our node index.
/// The body carries the SA's keys: it travels only inside the bus's
/// mutual-TLS connections, and `pb::IkeKeys` wipes them on drop.
pub fn ike_state_to_pb(s: &IkeSaState, owner: u16) -> pb::IkeSa {
    let k = &s.keys;
    let p = &s.proposal;
    pb::IkeSa {
        owner: u32::from(owner),
        tunnel: s.tunnel.to_string(),
        initiator: s.initiator,
        local: Some(addr_pb(s.local)),
        remote: Some(addr_pb(s.remote)),
        proposal: p.to_string(),
        keys: Some(pb::IkeKeys {
            sk_d: k.sk_d.as_bytes().to_vec(),
            sk_ai: k.sk_ai.as_bytes().to_vec(),
            sk_ar: k.sk_ar.as_bytes().to_vec(),
            sk_ei: k.sk_ei.as_bytes().to_vec(),
            sk_er: k.sk_er.as_bytes().to_vec(),
            sk_pi: k.sk_pi.as_bytes().to_vec(),
            sk_pr: k.sk_pr.as_bytes().to_vec(),
            prf: p.prf.map_or(0, |x| u32::from(x.0)),
            encr: u32::from(p.encr.id.0),
            key_bits: u32::from(p.encr.key_bits),
            integ: p.integ.map_or(0, |x| u32::from(x.0)),
        }),
        next_msgid_send: s.next_request_id,
        next_msgid_recv: s.next_peer_request_id,
        spi_i: s.spi_i,
        spi_r: s.spi_r,
        remote_id: Some(pb::Identity {
            id_type: u32::from(s.remote_id.ty.0),
            data: s.remote_id.data.clone(),
        }),
        algorithms: Some(algorithms_pb(p)),
        nat_local: s.nat_local,
        nat_remote: s.nat_remote,
        fragmentation: s.fragmentation,
        next_iv: s.next_iv,
        last_response: s.last_response.as_ref().map(|r| pb::IkeCachedResponse {
            msg_id: r.msg_id,
            request_hash: r.request_hash.to_vec(),
            datagrams: r.datagrams.clone(),
        }),
        outstanding: s.outstanding.as_ref().map(|o| {
            let (kind, spi_in) = match o.kind {
                RequestKind::Dpd => (pb::IkeRequestKind::IkeRequestDpd, 0),
                RequestKind::DeleteChild(spi) => (pb::IkeRequestKind::IkeRequestDeleteChild, spi),
                RequestKind::Other => (pb::IkeRequestKind::IkeRequestOther, 0),
            };
            pb::IkeOutstandingRequest {
                msg_id: o.msg_id,
                datagrams: o.datagrams.clone(),
                kind: kind as i32,
                spi_in,
            }
        }),
        children: s
            .children
            .iter()
            .map(|c| pb::IkeChild {
                spi_in: c.spi_in,
                spi_out: c.spi_out,
                local_ts: c.local_ts.iter().map(ts_pb).collect(),
                remote_ts: c.remote_ts.iter().map(ts_pb).collect(),
                rekey_at_ms: opt_ms(c.rekey_at),
                expire_at_ms: ms_of(c.expire_at),
                deleting: c.deleting,
                replaced: c.replaced,
            })
            .collect(),
        established_at_ms: ms_of(s.established_at),
        rekey_at_ms: opt_ms(s.rekey_at),
        reauth_at_ms: opt_ms(s.reauth_at),
        expire_at_ms: opt_ms(s.expire_at),
    }
}

/// A replicated IKE SA record as [`anyhub_ike::Endpoint::adopt_ike_sa`]
/// takes it. Checks shapes only; the endpoint checks the rest (tunnel,
/// identity, algorithms, key lengths, message IDs) when adopting.
pub fn ike_state_from_pb(p: &pb::IkeSa) -> Result<IkeSaState, ConvertError> {
    let k = p.keys.as_ref().ok_or(ConvertError::Missing("keys"))?;
    let id = p
        .remote_id
        .as_ref()
        .ok_or(ConvertError::Missing("remote_id"))?;
    let proposal = algorithms_from(p.algorithms.as_ref())?;
    if p.tunnel.is_empty() {
        return Err(ConvertError::Missing("tunnel"));
    }
    let datagrams = |d: &[Vec<u8>], f| {
        if d.is_empty() || d.len() > MAX_DATAGRAMS {
            Err(ConvertError::Range(f))
        } else {
            Ok(d.to_vec())
        }
    };
    let last_response = match &p.last_response {
        None => None,
        Some(r) => Some(CachedResponse {
            msg_id: r.msg_id,
            request_hash: <[u8; 20]>::try_from(r.request_hash.as_slice())
                .map_err(|_| ConvertError::Range("last_response.request_hash"))?,
            datagrams: datagrams(&r.datagrams, "last_response.datagrams")?,
        }),
    };
    let outstanding = match &p.outstanding {
        None => None,
        Some(o) => Some(OutstandingRequest {
            msg_id: o.msg_id,
            datagrams: datagrams(&o.datagrams, "outstanding.datagrams")?,
            kind: match pb::IkeRequestKind::try_from(o.kind) {
                Ok(pb::IkeRequestKind::IkeRequestDpd) => RequestKind::Dpd,
                Ok(pb::IkeRequestKind::IkeRequestDeleteChild) => RequestKind::DeleteChild(o.spi_in),
                Ok(pb::IkeRequestKind::IkeRequestOther) => RequestKind::Other,
                Err(_) => return Err(ConvertError::Range("outstanding.kind")),
            },
        }),
    };
    let children = p
        .children
        .iter()
        .map(|c| {
            Ok(ChildRef {
                spi_in: c.spi_in,
                spi_out: c.spi_out,
                local_ts: c.local_ts.iter().map(ts_from).collect::<Result<_, _>>()?,
                remote_ts: c.remote_ts.iter().map(ts_from).collect::<Result<_, _>>()?,
                rekey_at: opt_time(c.rekey_at_ms),
                expire_at: time_of(c.expire_at_ms),
                deleting: c.deleting,
                replaced: c.replaced,
            })
        })
        .collect::<Result<Vec<_>, ConvertError>>()?;
    Ok(IkeSaState {
        spi_i: p.spi_i,
        spi_r: p.spi_r,
        initiator: p.initiator,
        local: addr_from(p.local.as_ref(), "local")?,
        remote: addr_from(p.remote.as_ref(), "remote")?,
        tunnel: Arc::from(p.tunnel.as_str()),
        remote_id: Identity {
            ty: IdType(u8::try_from(id.id_type).map_err(|_| ConvertError::Range("remote_id"))?),
            data: id.data.clone(),
        },
        proposal,
        keys: IkeSaKeys {
            sk_d: Secret::from_slice(&k.sk_d),
            sk_ai: Secret::from_slice(&k.sk_ai),
            sk_ar: Secret::from_slice(&k.sk_ar),
            sk_ei: Secret::from_slice(&k.sk_ei),
            sk_er: Secret::from_slice(&k.sk_er),
            sk_pi: Secret::from_slice(&k.sk_pi),
            sk_pr: Secret::from_slice(&k.sk_pr),
        },
        nat_local: p.nat_local,
        nat_remote: p.nat_remote,
        fragmentation: p.fragmentation,
        next_request_id: p.next_msgid_send,
        next_peer_request_id: p.next_msgid_recv,
        next_iv: p.next_iv,
        last_response,
        outstanding,
        children,
        established_at: time_of(p.established_at_ms),
        rekey_at: opt_time(p.rekey_at_ms),
        reauth_at: opt_time(p.reauth_at_ms),
        expire_at: opt_time(p.expire_at_ms),
    })
}

/// At most this many datagrams (RFC 7383 fragments) in a cached message
/// of a record: a bound on what a bad record can make us keep.
const MAX_DATAGRAMS: usize = 64;

/// The write that publishes our IKE SA's takeover state (on
/// [`anyhub_ike::Event::IkeSaUpdated`], with the state from
/// [`anyhub_ike::Endpoint::export_ike_sa`]). `expires_ms`: when the record
/// may go (normally [`ike_state_expiry_ms`]); the IKE SA's delete
/// tombstones it ([`Publish::DeleteChildrenOf`]).
pub fn publish_ike_state(state: &IkeSaState, owner: u16, expires_ms: u64) -> Publish {
    Publish::Write {
        key: Key::IkeSa {
            spi_i: state.spi_i,
            spi_r: state.spi_r,
        },
        body: Box::new(pb::record::Body::IkeSa(ike_state_to_pb(state, owner))),
        expires_ms,
    }
}

/// The natural expiry of an IKE SA record: its hard lifetime, or
/// `now_ms + fallback_ms` if it has none.
pub fn ike_state_expiry_ms(state: &IkeSaState, now_ms: u64, fallback_ms: u64) -> u64 {
    match state.expire_at {
        Some(t) => ms_of(t).max(now_ms),
        None => now_ms.saturating_add(fallback_ms),
    }
}

/// A node-local handle for a remote IKE SA, from its SPIs (stable on every
/// node, so `IkeSaDeleted` for it finds the same children).
pub fn remote_handle(spi_i: u64, spi_r: u64) -> IkeSaHandle {
    let mut h = crate::key::Fnv::new();
    h.bytes(&spi_i.to_be_bytes());
    h.bytes(&spi_r.to_be_bytes());
    // The top bit marks it remote, so it never equals a local handle
    // (local handles count up from 1).
    IkeSaHandle(h.finish() | 1 << 63)
}

/// A replicated child SA as the SA database takes it.
pub fn child_from_pb(p: &pb::ChildSa) -> Result<ChildSa, ConvertError> {
    let proposal = algorithms_from(p.algorithms.as_ref())?;
    Ok(ChildSa {
        tunnel: Arc::from(p.tunnel.as_str()),
        ike: remote_handle(p.ike_spi_i, p.ike_spi_r),
        spi_in: p.spi_in,
        spi_out: p.spi_out,
        proposal,
        keys_in: keys_from(p.keys_in.as_ref())?,
        keys_out: keys_from(p.keys_out.as_ref())?,
        local_ts: p.local_ts.iter().map(ts_from).collect::<Result<_, _>>()?,
        remote_ts: p.remote_ts.iter().map(ts_from).collect::<Result<_, _>>()?,
        lifetime: Duration::from_millis(p.lifetime_ms),
        local: addr_from(p.local.as_ref(), "local")?,
        remote: addr_from(p.remote.as_ref(), "remote")?,
        encap: p.encap,
        rekey_of: (p.rekey_of != 0).then_some(p.rekey_of),
    })
}

/// What our IKE endpoint's event means for the bus.
#[derive(Debug)]
pub enum Publish {
    /// Publish (or publish with a barrier) this child SA.
    Write {
        key: Key,
        body: Box<pb::record::Body>,
        expires_ms: u64,
    },
    /// Tombstone this child SA.
    Delete(Key),
    /// Tombstone every child SA of this IKE SA and its takeover record
    /// (`Key::IkeSa`) ([`crate::Node::delete_children_of`]).
    DeleteChildrenOf { spi_i: u64, spi_r: u64 },
    /// An IKE SA rekey: its children move to the new IKE SA's SPIs
    /// ([`crate::Node::reparent_children`]), before the old one's delete
    /// (which would otherwise tombstone them fleet-wide).
    ReparentChildren { old: (u64, u64), new: (u64, u64) },
}

/// Maps an event of our IKE endpoint to bus writes. `ike_spis` gives an IKE
/// SA handle's (initiator, responder) SPIs; `owner` is our node index.
///
/// [`anyhub_ike::Event::IkeSaUpdated`] needs the state itself, which the
/// event does not carry: it maps to `None` here; the caller exports the
/// state and publishes [`publish_ike_state`].
pub fn publish_for(
    ev: &anyhub_ike::Event,
    ike_spis: impl Fn(IkeSaHandle) -> Option<(u64, u64)>,
    owner: u16,
    now_ms: u64,
) -> Option<Publish> {
    use anyhub_ike::Event as E;
    match ev {
        E::ChildSaEstablished(c) => {
            let spis = ike_spis(c.ike)?;
            Some(Publish::Write {
                key: Key::ChildSa(c.spi_in),
                body: Box::new(pb::record::Body::ChildSa(child_to_pb(c, spis, owner))),
                expires_ms: now_ms + c.lifetime.as_millis() as u64,
            })
        }
        E::ChildSaDeleted { spi_in, .. } => Some(Publish::Delete(Key::ChildSa(*spi_in))),
        // The event names the SPIs itself: the endpoint has forgotten the
        // handle by the time the driver sees it. Only established SAs end
        // with IkeSaDeleted, so unauthenticated garbage cannot make us
        // scan the table.
        E::IkeSaDeleted { info, .. } => Some(Publish::DeleteChildrenOf {
            spi_i: info.spi_i,
            spi_r: info.spi_r,
        }),
        E::IkeSaFailed { info, .. } => {
            let (spi_i, spi_r) = ike_spis(info.handle)?;
            Some(Publish::DeleteChildrenOf { spi_i, spi_r })
        }
        E::IkeSaRekeyed { old, new } => Some(Publish::ReparentChildren {
            old: ike_spis(*old)?,
            new: (new.spi_i, new.spi_r),
        }),
        _ => None,
    }
}

/// What a bus event means for the SA database: the `anyhub_ike::Event`
/// that `anyhub_dataplane::Sad::handle_event` takes (install on a new or
/// updated child SA, delete on its tombstone or expiry).
pub fn dataplane_event(ev: &crate::Event) -> Option<Result<anyhub_ike::Event, ConvertError>> {
    use pb::record::Body as B;
    let deleted = |r: &pb::Record| match &r.body {
        Some(B::ChildSa(c)) => Some(Ok(anyhub_ike::Event::ChildSaDeleted {
            tunnel: Arc::from(c.tunnel.as_str()),
            ike: remote_handle(c.ike_spi_i, c.ike_spi_r),
            spi_in: c.spi_in,
            spi_out: c.spi_out,
        })),
        _ => None,
    };
    match ev {
        crate::Event::Applied { record, old, .. } => match &record.body {
            Some(B::ChildSa(c)) => {
                Some(child_from_pb(c).map(|c| anyhub_ike::Event::ChildSaEstablished(Box::new(c))))
            }
            Some(B::Tombstone(_)) => old.as_deref().and_then(deleted),
            _ => None,
        },
        crate::Event::Expired { record, .. } => deleted(record),
        crate::Event::Barrier(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_sa_round_trips() {
        let c = ChildSa {
            tunnel: Arc::from("site-a"),
            ike: IkeSaHandle(5),
            spi_in: 0x0010_0001,
            spi_out: 0xc0de_0001,
            proposal: Selected {
                protocol: ProtocolId(3),
                num: 1,
                encr: anyhub_ike::proposal::EncrAlg {
                    id: EncrId(20),
                    key_bits: 256,
                },
                prf: None,
                integ: None,
                dh: Some(DhId(31)),
                esn: true,
                peer_spi: vec![1, 2, 3, 4],
            },
            keys_in: DirectionKeys {
                encr: Secret::from_slice(&[1; 36]),
                integ: None,
            },
            keys_out: DirectionKeys {
                encr: Secret::from_slice(&[2; 32]),
                integ: Some(Secret::from_slice(&[3; 32])),
            },
            local_ts: vec![TrafficSelector {
                ty: TsType(7),
                ip_protocol: 6,
                start_port: 0,
                end_port: 65535,
                start_addr: "10.0.0.0".parse().unwrap(),
                end_addr: "10.0.255.255".parse().unwrap(),
            }],
            remote_ts: vec![],
            lifetime: Duration::from_secs(3600),
            local: "192.0.2.1:4500".parse().unwrap(),
            remote: "[2001:db8::7]:4500".parse().unwrap(),
            encap: true,
            rekey_of: Some(0x0010_0000),
        };
        let p = child_to_pb(&c, (11, 22), 1);
        let back = child_from_pb(&p).unwrap();
        assert_eq!(back.ike, remote_handle(11, 22));
        assert_eq!(back.spi_in, c.spi_in);
        assert_eq!(back.spi_out, c.spi_out);
        assert_eq!(back.proposal, c.proposal);
        assert_eq!(back.keys_in.encr.as_bytes(), c.keys_in.encr.as_bytes());
        assert!(back.keys_in.integ.is_none());
        assert_eq!(
            back.keys_out.integ.as_ref().unwrap().as_bytes(),
            c.keys_out.integ.as_ref().unwrap().as_bytes()
        );
        assert_eq!(back.local_ts, c.local_ts);
        assert_eq!(back.local, c.local);
        assert_eq!(back.remote, c.remote);
        assert_eq!(back.rekey_of, c.rekey_of);
        assert_eq!(back.lifetime, c.lifetime);
        // Keys never print.
        assert!(!format!("{p:?}").contains("[1, 1"));
    }
}

#[cfg(test)]
mod ike_state_tests {
    use super::*;
    use prost::Message as _;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    pub(super) fn state() -> IkeSaState {
        let sel = TrafficSelector {
            ty: TsType(7),
            ip_protocol: 0,
            start_port: 0,
            end_port: 65535,
            start_addr: "10.10.0.0".parse().unwrap(),
            end_addr: "10.10.0.255".parse().unwrap(),
        };
        IkeSaState {
            spi_i: 0x1111_2222_3333_4444,
            spi_r: 0x0010_0000_0000_0042,
            initiator: false,
            local: "192.0.2.2:4500".parse().unwrap(),
            remote: "[2001:db8::9]:31337".parse().unwrap(),
            tunnel: Arc::from("site-a"),
            remote_id: Identity::parse("site-a.example.net").unwrap(),
            proposal: Selected {
                protocol: ProtocolId(1),
                num: 2,
                encr: anyhub_ike::proposal::EncrAlg {
                    id: EncrId(20),
                    key_bits: 256,
                },
                prf: Some(PrfId(5)),
                integ: None,
                dh: Some(DhId(31)),
                esn: false,
                peer_spi: vec![],
            },
            keys: IkeSaKeys {
                sk_d: Secret::from_slice(&[0xd0; 32]),
                sk_ai: Secret::from_slice(&[]),
                sk_ar: Secret::from_slice(&[]),
                sk_ei: Secret::from_slice(&[0xe1; 36]),
                sk_er: Secret::from_slice(&[0xe2; 36]),
                sk_pi: Secret::from_slice(&[0xf1; 32]),
                sk_pr: Secret::from_slice(&[0xf2; 32]),
            },
            nat_local: false,
            nat_remote: true,
            fragmentation: true,
            next_request_id: 4,
            next_peer_request_id: 7,
            next_iv: 9,
            last_response: Some(CachedResponse {
                msg_id: 6,
                request_hash: [0x5a; 20],
                datagrams: vec![vec![1, 2, 3], vec![4, 5]],
            }),
            outstanding: Some(OutstandingRequest {
                msg_id: 3,
                datagrams: vec![vec![9; 80]],
                kind: RequestKind::DeleteChild(0x0010_0007),
            }),
            children: vec![
                ChildRef {
                    spi_in: 0x0010_0007,
                    spi_out: 0xc0de_0001,
                    local_ts: vec![sel.clone()],
                    remote_ts: vec![sel.clone(), sel],
                    rekey_at: None,
                    expire_at: at(1_800_000_123_456),
                    deleting: true,
                    replaced: false,
                },
                ChildRef {
                    spi_in: 0x0010_0008,
                    spi_out: 0xc0de_0002,
                    local_ts: vec![],
                    remote_ts: vec![],
                    rekey_at: Some(at(1_800_000_000_001)),
                    expire_at: at(1_800_000_100_000),
                    deleting: false,
                    replaced: true,
                },
            ],
            established_at: at(1_799_999_000_000),
            rekey_at: Some(at(1_800_010_000_000)),
            reauth_at: None,
            expire_at: Some(at(1_800_020_000_000)),
        }
    }

    #[test]
    fn ike_state_round_trips_through_the_wire() {
        let s = state();
        let body = pb::record::Body::IkeSa(ike_state_to_pb(&s, 3));
        let rec = pb::Record {
            body: Some(body),
            ..Default::default()
        };
        let bytes = rec.encode_to_vec();
        let back = pb::Record::decode(bytes.as_slice()).unwrap();
        let Some(pb::record::Body::IkeSa(p)) = &back.body else {
            panic!("an IKE SA body");
        };
        assert_eq!(p.owner, 3);
        assert_eq!(p.proposal, "aes256gcm16-prfsha256-x25519");
        assert_eq!(ike_state_from_pb(p).unwrap(), s);
        // Keys never print.
        let text = format!("{back:?}");
        assert!(!text.contains("208, 208"), "{text}");
        assert!(!text.contains("225, 225"));
    }

    #[test]
    fn bad_ike_records_are_errors() {
        let good = ike_state_to_pb(&state(), 3);
        let mut p = good.clone();
        p.keys = None;
        assert_eq!(ike_state_from_pb(&p), Err(ConvertError::Missing("keys")));
        let mut p = good.clone();
        p.remote_id.as_mut().unwrap().id_type = 300;
        assert!(ike_state_from_pb(&p).is_err());
        let mut p = good.clone();
        p.outstanding.as_mut().unwrap().kind = 17;
        assert!(ike_state_from_pb(&p).is_err());
        let mut p = good.clone();
        p.last_response.as_mut().unwrap().request_hash.pop();
        assert!(ike_state_from_pb(&p).is_err());
        let mut p = good.clone();
        p.last_response.as_mut().unwrap().datagrams = vec![vec![0]; 65];
        assert!(ike_state_from_pb(&p).is_err());
        let mut p = good.clone();
        p.local.as_mut().unwrap().ip = vec![1, 2, 3];
        assert!(ike_state_from_pb(&p).is_err());
        let mut p = good;
        p.algorithms = None;
        assert_eq!(
            ike_state_from_pb(&p),
            Err(ConvertError::Missing("algorithms"))
        );
        // Garbage bytes: decode errors or shape errors, never a panic.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for n in 0..2000 {
            let mut b = vec![0u8; n % 200];
            for v in &mut b {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *v = x as u8;
            }
            if let Ok(p) = pb::IkeSa::decode(b.as_slice()) {
                let _ = ike_state_from_pb(&p);
            }
        }
    }

    #[test]
    fn publish_ike_state_writes_the_ike_sa_key() {
        let s = state();
        let expires = ike_state_expiry_ms(&s, 1_000, 5);
        assert_eq!(expires, 1_800_020_000_000);
        let Publish::Write {
            key,
            body,
            expires_ms,
        } = publish_ike_state(&s, 2, expires)
        else {
            panic!("a write");
        };
        assert_eq!(
            key,
            Key::IkeSa {
                spi_i: s.spi_i,
                spi_r: s.spi_r
            }
        );
        assert!(key.fits(&body));
        assert_eq!(expires_ms, expires);
        let pb::record::Body::IkeSa(p) = *body else {
            panic!("an IKE SA body");
        };
        assert_eq!(p.owner, 2);
    }
}
