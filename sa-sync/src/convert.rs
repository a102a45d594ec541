//! IKE events ⇄ records: what the node publishes when its IKE endpoint
//! negotiates a child SA, and what a receiving node hands its SA database.
//!
//! IKE SA handles are per node, so a record names the IKE SA by its SPIs;
//! the receiver maps them to a handle of its own ([`remote_handle`]).

use crate::key::Key;
use crate::pb;
use anyhub_crypto::Secret;
use anyhub_ike::wire::{DhId, EncrId, IntegId, PrfId, ProtocolId, TrafficSelector, TsType};
use anyhub_ike::{ChildSa, DirectionKeys, IkeSaHandle, Selected};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

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
        algorithms: Some(pb::Algorithms {
            protocol: u32::from(p.protocol.0),
            num: u32::from(p.num),
            encr: u32::from(p.encr.id.0),
            key_bits: u32::from(p.encr.key_bits),
            prf: p.prf.map_or(0, |x| u32::from(x.0)),
            integ: p.integ.map_or(0, |x| u32::from(x.0)),
            dh: p.dh.map_or(0, |x| u32::from(x.0)),
            esn: p.esn,
            peer_spi: p.peer_spi.clone(),
        }),
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
    let a = p
        .algorithms
        .as_ref()
        .ok_or(ConvertError::Missing("algorithms"))?;
    let r = |f| move |_| ConvertError::Range(f);
    let opt16 = |v: u32, f| -> Result<Option<u16>, ConvertError> {
        if v == 0 {
            Ok(None)
        } else {
            u16::try_from(v).map(Some).map_err(r(f))
        }
    };
    let proposal = Selected {
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
    };
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
    /// Tombstone every child SA of this IKE SA ([`crate::Node::delete_children_of`]).
    DeleteChildrenOf { spi_i: u64, spi_r: u64 },
}

/// Maps an event of our IKE endpoint to bus writes. `ike_spis` gives an IKE
/// SA handle's (initiator, responder) SPIs; `owner` is our node index.
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
        E::IkeSaDeleted { info, .. } | E::IkeSaFailed { info, .. } => {
            let (spi_i, spi_r) = ike_spis(info.handle)?;
            Some(Publish::DeleteChildrenOf { spi_i, spi_r })
        }
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
