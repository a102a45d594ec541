//! The SA database: the child SAs this node holds, fed by IKE events.
//!
//! Events, not installs (STYLE.md): the IKE endpoint emits
//! [`Event::ChildSaEstablished`] / [`Event::ChildSaDeleted`] /
//! [`Event::IkeSaDeleted`], the node hands each one to
//! [`SaTable::handle_event`], and this table is the one place that decides
//! what is installed.
//!
//! Child SAs are keyed by their inbound SPI: it is what an ESP packet
//! carries (RFC 4303 §2.1), and this node allocated it, so it is unique
//! here. This is a minimal in-memory table; the userspace ESP dataplane
//! replaces the internals, not the interface.
//!
//! Keys never leave the table: [`SaTable::list`] returns [`SaSummary`],
//! which carries everything status needs and no key material.

use anyhub_ike::wire::TrafficSelector;
use anyhub_ike::{ChildSa, Event, IkeSaHandle};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One installed child SA and when it was installed.
#[derive(Debug)]
struct Installed {
    child: ChildSa,
    installed_at: Instant,
}

/// What [`SaTable::handle_event`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A child SA was installed (`replaced`: one with the same inbound SPI
    /// was there before, which would be an SPI allocation bug upstream).
    Installed { spi_in: u32, replaced: bool },
    /// This many child SAs were removed.
    Removed(usize),
    /// This many child SAs now belong to a rekeyed IKE SA.
    Moved(usize),
    /// The event does not concern the table.
    None,
}

/// A key-less view of one installed child SA, for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaSummary {
    pub tunnel: Arc<str>,
    pub ike: IkeSaHandle,
    pub spi_in: u32,
    pub spi_out: u32,
    /// The agreed ESP algorithms, in strongSwan notation.
    pub proposal: String,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub encap: bool,
    pub lifetime: Duration,
    pub installed_at: Instant,
}

/// Every child SA of the node, by inbound SPI.
#[derive(Debug, Default)]
pub struct SaTable {
    /// A BTreeMap keeps [`SaTable::list`] in a stable order without sorting.
    by_spi_in: BTreeMap<u32, Installed>,
}

impl SaTable {
    pub fn new() -> SaTable {
        SaTable::default()
    }

    pub fn len(&self) -> usize {
        self.by_spi_in.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_spi_in.is_empty()
    }

    /// Applies one IKE event at `now`: installs established child SAs,
    /// removes deleted ones and every child of a deleted or failed IKE SA.
    pub fn handle_event(&mut self, now: Instant, event: Event) -> Change {
        match event {
            Event::ChildSaEstablished(child) => {
                let spi_in = child.spi_in;
                let replaced = self.install(now, *child);
                Change::Installed { spi_in, replaced }
            }
            Event::ChildSaDeleted { spi_in, .. } => {
                Change::Removed(usize::from(self.remove(spi_in)))
            }
            Event::IkeSaDeleted { info, .. } | Event::IkeSaFailed { info, .. } => {
                Change::Removed(self.remove_ike_sa(info.handle))
            }
            // The children live on under the new IKE SA (RFC 7296 §2.18);
            // the old one's IkeSaDeleted then finds none left to remove.
            Event::IkeSaRekeyed { old, new } => Change::Moved(self.move_ike_sa(old, new.handle)),
            // The peer's NAT mapping changed: its ESP goes to the new address.
            Event::IkeSaMoved {
                handle,
                local,
                remote,
            } => Change::Moved(self.readdress(handle, local, remote)),
            Event::IkeSaEstablished(_) | Event::ChildSaFailed { .. } => Change::None,
        }
    }

    /// Installs `child`; returns whether it replaced one with the same
    /// inbound SPI.
    pub fn install(&mut self, now: Instant, child: ChildSa) -> bool {
        let spi_in = child.spi_in;
        self.by_spi_in
            .insert(
                spi_in,
                Installed {
                    child,
                    installed_at: now,
                },
            )
            .is_some()
    }

    /// Points every child SA of IKE SA `ike` at new outer addresses; returns
    /// how many.
    pub fn readdress(&mut self, ike: IkeSaHandle, local: SocketAddr, remote: SocketAddr) -> usize {
        let mut n = 0;
        for i in self.by_spi_in.values_mut().filter(|i| i.child.ike == ike) {
            i.child.local = local;
            i.child.remote = remote;
            n += 1;
        }
        n
    }

    /// Re-parents every child SA of IKE SA `old` to `new`; returns how many.
    pub fn move_ike_sa(&mut self, old: IkeSaHandle, new: IkeSaHandle) -> usize {
        let mut n = 0;
        for i in self.by_spi_in.values_mut().filter(|i| i.child.ike == old) {
            i.child.ike = new;
            n += 1;
        }
        n
    }

    /// Removes the child SA with inbound SPI `spi_in`; returns whether there
    /// was one.
    pub fn remove(&mut self, spi_in: u32) -> bool {
        self.by_spi_in.remove(&spi_in).is_some()
    }

    /// Removes every child SA negotiated under the IKE SA `ike` (RFC 7296
    /// §1.4.1: deleting an IKE SA closes its child SAs); returns how many.
    pub fn remove_ike_sa(&mut self, ike: IkeSaHandle) -> usize {
        let before = self.by_spi_in.len();
        self.by_spi_in.retain(|_, sa| sa.child.ike != ike);
        before - self.by_spi_in.len()
    }

    /// Whether a child SA with inbound SPI `spi_in` is installed.
    pub fn contains(&self, spi_in: u32) -> bool {
        self.by_spi_in.contains_key(&spi_in)
    }

    /// Every installed child SA, by inbound SPI, without keys.
    pub fn list(&self) -> Vec<SaSummary> {
        self.by_spi_in
            .values()
            .map(|sa| {
                let c = &sa.child;
                SaSummary {
                    tunnel: c.tunnel.clone(),
                    ike: c.ike,
                    spi_in: c.spi_in,
                    spi_out: c.spi_out,
                    proposal: c.proposal.to_string(),
                    local_ts: c.local_ts.clone(),
                    remote_ts: c.remote_ts.clone(),
                    local: c.local,
                    remote: c.remote,
                    encap: c.encap,
                    lifetime: c.lifetime,
                    installed_at: sa.installed_at,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhub_crypto::Secret;
    use anyhub_ike::proposal::{EncrAlg, Selected};
    use anyhub_ike::wire::registry::{EncrId, ProtocolId};
    use anyhub_ike::{ts, DirectionKeys, IkeSaInfo, IkeState, SaEndReason};

    /// A recognisable key byte, to prove it never shows up in any output.
    const KEY_BYTE: u8 = 0xa7;

    fn child(ike: u64, spi_in: u32, spi_out: u32) -> ChildSa {
        let keys = || DirectionKeys {
            encr: Secret::new(vec![KEY_BYTE; 36]),
            integ: None,
        };
        ChildSa {
            tunnel: Arc::from("site-a"),
            ike: IkeSaHandle(ike),
            spi_in,
            spi_out,
            proposal: Selected {
                protocol: ProtocolId::ESP,
                num: 1,
                encr: EncrAlg {
                    id: EncrId::AES_GCM_16,
                    key_bits: 256,
                },
                prf: None,
                integ: None,
                dh: None,
                esn: false,
                peer_spi: spi_out.to_be_bytes().to_vec(),
            },
            keys_in: keys(),
            keys_out: keys(),
            local_ts: vec![ts::parse("10.20.0.0/24").unwrap()],
            remote_ts: vec![ts::parse("10.10.0.0/24").unwrap()],
            lifetime: Duration::from_secs(3600),
            local: "198.51.100.1:4500".parse().unwrap(),
            remote: "203.0.113.7:4500".parse().unwrap(),
            encap: true,
            rekey_of: None,
        }
    }

    fn ike_info(handle: u64) -> IkeSaInfo {
        IkeSaInfo {
            handle: IkeSaHandle(handle),
            tunnel: Some(Arc::from("site-a")),
            spi_i: 1,
            spi_r: 2,
            initiator: false,
            state: IkeState::Established,
            local: "198.51.100.1:4500".parse().unwrap(),
            remote: "203.0.113.7:4500".parse().unwrap(),
            remote_id: None,
            proposal: None,
            established_at: None,
        }
    }

    #[test]
    fn install_list_and_delete_by_spi() {
        let now = Instant::now();
        let mut t = SaTable::new();
        assert!(t.is_empty());
        let c = Event::ChildSaEstablished(Box::new(child(1, 0x0010_0002, 0xc6f2_a1b0)));
        assert_eq!(
            t.handle_event(now, c),
            Change::Installed {
                spi_in: 0x0010_0002,
                replaced: false
            }
        );
        let c = Event::ChildSaEstablished(Box::new(child(1, 0x0010_0001, 0xc6f2_a1b1)));
        t.handle_event(now, c);
        assert_eq!(t.len(), 2);

        let list = t.list();
        assert_eq!(
            list.iter().map(|s| s.spi_in).collect::<Vec<_>>(),
            [0x0010_0001, 0x0010_0002]
        );
        assert_eq!(list[0].spi_out, 0xc6f2_a1b1);
        assert_eq!(list[0].proposal, "aes256gcm16");
        assert_eq!(&*list[0].tunnel, "site-a");
        assert_eq!(list[0].installed_at, now);
        assert_eq!(ts::display(&list[0].remote_ts[0]), "10.10.0.0/24");

        let del = Event::ChildSaDeleted {
            tunnel: Arc::from("site-a"),
            ike: IkeSaHandle(1),
            spi_in: 0x0010_0001,
            spi_out: 0xc6f2_a1b1,
        };
        assert_eq!(t.handle_event(now, del.clone()), Change::Removed(1));
        assert!(!t.contains(0x0010_0001));
        assert!(t.contains(0x0010_0002));
        // A second DELETE for the same SA (retransmission) is harmless.
        assert_eq!(t.handle_event(now, del), Change::Removed(0));
    }

    #[test]
    fn ike_sa_end_removes_its_children_only() {
        let now = Instant::now();
        let mut t = SaTable::new();
        t.install(now, child(1, 0x0010_0001, 0xa1));
        t.install(now, child(1, 0x0010_0002, 0xa2));
        t.install(now, child(2, 0x0010_0003, 0xa3));

        let ev = Event::IkeSaDeleted {
            info: ike_info(1),
            reason: SaEndReason::DeletedByPeer,
        };
        assert_eq!(t.handle_event(now, ev), Change::Removed(2));
        assert_eq!(
            t.list().iter().map(|s| s.spi_in).collect::<Vec<_>>(),
            [0x0010_0003]
        );

        let ev = Event::IkeSaFailed {
            info: ike_info(2),
            reason: SaEndReason::Timeout,
        };
        assert_eq!(t.handle_event(now, ev), Change::Removed(1));
        assert!(t.is_empty());
    }

    #[test]
    fn same_spi_replaces() {
        let now = Instant::now();
        let mut t = SaTable::new();
        assert!(!t.install(now, child(1, 0x0010_0001, 0xa1)));
        assert!(t.install(now, child(2, 0x0010_0001, 0xa2)));
        assert_eq!(t.len(), 1);
        assert_eq!(t.list()[0].ike, IkeSaHandle(2));
    }

    #[test]
    fn other_events_change_nothing() {
        let mut t = SaTable::new();
        t.install(Instant::now(), child(1, 0x0010_0001, 0xa1));
        assert_eq!(
            t.handle_event(Instant::now(), Event::IkeSaEstablished(ike_info(1))),
            Change::None
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn keys_never_show() {
        let mut t = SaTable::new();
        t.install(Instant::now(), child(1, 0x0010_0001, 0xa1));
        // The key is 36 × 0xa7: any rendering of it repeats the byte.
        let leaks = [
            format!("{KEY_BYTE}, {KEY_BYTE}"),
            format!("{KEY_BYTE:02x}{KEY_BYTE:02x}"),
        ];
        let table = format!("{t:?}");
        assert!(table.contains("redacted"), "{table}");
        for out in [table, format!("{t:#?}"), format!("{:?}", t.list())] {
            assert!(!leaks.iter().any(|l| out.contains(l)), "key leaked: {out}");
        }
    }
}
