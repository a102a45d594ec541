//! NAT traversal (RFC 7296 §2.23, RFC 3948) against real strongSwan, in
//! the NAT lab ([`Lab::create_nat`]): an nftables masquerade between the
//! two namespaces, one side behind it on 10.99.0.2.
//!
//! Every case checks, besides the usual agreement of both sides
//! (`check_tunnel`), where each side sees the IKE SA's outer addresses,
//! strongSwan's NAT conditions, and UDP encapsulation of the child SAs.
//!
//! Note: strongSwan with kernel-libipsec can only do ESP in UDP, so it
//! fakes a NAT in every lab ("faking NAT situation to enforce UDP
//! encapsulation": a random NAT_DETECTION_SOURCE_IP). The evidence of a
//! *real* NAT is therefore strongSwan's own detection (`nat-local`, "local
//! host is behind NAT"), the mapped ports each side sees, and — for anyhubd
//! behind the NAT — strongSwan's "remote host is behind NAT", which the
//! fake never produces on its own side.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};

use super::{check, initiate_all, one_line, Case, Flow, Hub};
use crate::anyhub::{HubIkeSa, HubStatus};
use crate::lab::{
    self, Behind, Lab, HUB_ADDR, NAT_INSIDE, NAT_PORTS, NAT_REMAP_ADDR, NAT_REMAP_PORTS, SITE_ADDR,
};
use crate::strongswan::{Charon, SwanIkeSa};

/// One end of an IKE SA as a side reports it: an address and a port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    pub ip: &'static str,
    pub ports: (u16, u16),
}

impl At {
    pub const fn port(ip: &'static str, port: u16) -> At {
        At {
            ip,
            ports: (port, port),
        }
    }

    /// Anywhere in a NAT's port range.
    pub const fn mapped(ip: &'static str, ports: (u16, u16)) -> At {
        At { ip, ports }
    }

    fn matches(&self, a: Option<SocketAddr>) -> bool {
        a.is_some_and(|a| {
            a.ip().to_string() == self.ip && (self.ports.0..=self.ports.1).contains(&a.port())
        })
    }
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ports {
            (a, b) if a == b => write!(f, "{}:{a}", self.ip),
            (a, b) => write!(f, "{}:{a}-{b}", self.ip),
        }
    }
}

fn show(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "(none)".into(), |a| a.to_string())
}

/// What a NAT case must show, once its flow has run.
#[derive(Clone, Debug)]
pub struct NatExpect {
    /// Who sits behind the lab's NAT router (`None`: the plain lab).
    pub behind: Option<Behind>,
    /// The IKE SA's outer addresses as strongSwan lists them…
    pub site_local: At,
    pub site_remote: At,
    /// …and as the hub reports them.
    pub hub_local: At,
    pub hub_remote: At,
    /// strongSwan's `nat-local`: it found a NAT in front of itself.
    pub site_nat_local: bool,
    /// strongSwan's `nat-remote`; only checked against anyhubd, as the
    /// strongSwan stand-in hub fakes a NAT of its own.
    pub site_nat_remote: bool,
    /// Lines the site's charon log must not contain.
    pub site_log_absent: Vec<String>,
    /// anyhubd's counters that must reach these values (waited for)…
    pub counters_min: Vec<(&'static str, u64)>,
    /// …and those that must stay zero.
    pub counters_zero: Vec<&'static str>,
}

impl NatExpect {
    /// strongSwan behind the NAT, its IKE SA floated to 4500: the hub
    /// sees it at the router's public address on a mapped port.
    fn site_behind() -> NatExpect {
        NatExpect {
            behind: Some(Behind::Site),
            site_local: At::port(NAT_INSIDE, 4500),
            site_remote: At::port(HUB_ADDR, 4500),
            hub_local: At::port(HUB_ADDR, 4500),
            hub_remote: At::mapped(SITE_ADDR, NAT_PORTS),
            site_nat_local: true,
            site_nat_remote: false,
            site_log_absent: Vec::new(),
            counters_min: Vec::new(),
            counters_zero: vec!["rx_malformed"],
        }
    }

    /// No NAT, both sides on 4500 from the first message on.
    fn direct_4500() -> NatExpect {
        NatExpect {
            behind: None,
            site_local: At::port(SITE_ADDR, 4500),
            site_remote: At::port(HUB_ADDR, 4500),
            hub_local: At::port(HUB_ADDR, 4500),
            hub_remote: At::port(SITE_ADDR, 4500),
            site_nat_local: false,
            site_nat_remote: false,
            // Not one datagram on 500, either way.
            site_log_absent: vec![
                format!("sending packet: from {SITE_ADDR}[500]"),
                format!("received packet: from {HUB_ADDR}[500]"),
            ],
            counters_min: Vec::new(),
            counters_zero: vec!["rx_malformed"],
        }
    }
}

/// The NAT cases, in run order.
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let secs = Duration::from_secs;

    // strongSwan behind a masquerading router initiates: both sides detect
    // the NAT, IKE floats to 4500, the child SA is ESP in UDP, and the hub
    // knows the site by its public mapping.
    let mut c = behind_site("nat-t-float")
        .site_log("local host is behind NAT, sending keep alives")
        .site_log(&format!(
            "sending packet: from {NAT_INSIDE}[4500] to {HUB_ADDR}[4500]"
        ));
    // Floating to 4500 in IKE_AUTH is not a peer that moved.
    c.nat.as_mut().unwrap().counters_zero.push("peer_moved");
    cases.push(c);

    // Behind the NAT, strongSwan keeps its mapping with NAT keepalives
    // every 2 s; anyhubd counts and drops them, and nothing else.
    let mut c =
        behind_site("nat-t-keepalive").site_log(&format!("sending keep alive to {HUB_ADDR}[4500]"));
    c.flow = Flow::Idle(secs(7));
    c.site_charon.push("keep_alive = 2s".into());
    let n = c.nat.as_mut().unwrap();
    n.counters_min.push(("rx_keepalives", 2));
    n.counters_zero.extend(["rx_dropped", "rx_esp"]);
    cases.push(c);

    // The NAT's mapping changes under a tunnel that is up: a new public
    // address and port range, conntrack flushed. strongSwan's next
    // authenticated request comes from the new mapping; anyhubd follows it
    // (IkeSaMoved, peer_moved) and its own request then reaches strongSwan
    // there.
    let mut c = behind_site("nat-mapping-change");
    c.flow = Flow::NatMappingChange {
        before: At::mapped(SITE_ADDR, NAT_PORTS),
    };
    let n = c.nat.as_mut().unwrap();
    n.hub_remote = At::mapped(NAT_REMAP_ADDR, NAT_REMAP_PORTS);
    n.counters_min.push(("peer_moved", 1));
    cases.push(c);

    // No NAT, strongSwan starts on 4500 (RFC 7296 §2.23 allows it): anyhubd
    // answers IKE_SA_INIT with the non-ESP marker on 4500 and the SA stays
    // there.
    let mut c = Case::basic("nat-t-start-4500").site_log(&format!(
        "sending packet: from {SITE_ADDR}[4500] to {HUB_ADDR}[4500]"
    ));
    // Both ports: with `remote_port` alone, strongSwan 5.9.8 sends from
    // 500 to 4500 without the marker, which is ESP by RFC 3948 §2.2.
    c.site[0]
        .conn_extra
        .extend(["local_port = 4500", "remote_port = 4500"].map(String::from));
    c.nat = Some(NatExpect::direct_4500());
    cases.push(c);

    // anyhubd initiates to the site's NAT-T port: from its own, with the
    // marker (strongSwan would take the datagram for ESP otherwise).
    let mut c = Case::basic("anyhub-initiates-4500")
        .hub_initiates()
        .site_log(&format!(
            "received packet: from {HUB_ADDR}[4500] to {SITE_ADDR}[4500]"
        ))
        .site_log("parsed IKE_SA_INIT request 0");
    c.hub[0].remote_address = Some(format!("{SITE_ADDR}:4500"));
    c.nat = Some(NatExpect::direct_4500());
    c.anyhub_only = Some("swanctl's remote_addrs takes no port");
    cases.push(c);

    // anyhubd behind the NAT initiates to strongSwan: it finds the NAT in
    // front of itself (strongSwan's NAT_DETECTION_DESTINATION_IP does not
    // hash to its private address), floats, and keeps the mapping with
    // keepalives of its own.
    let mut c = Case::basic("anyhub-behind-nat")
        .hub_initiates()
        .site_log("remote host is behind NAT");
    c.hub_ike.push("nat_keepalive = \"1s\"".into());
    c.nat = Some(NatExpect {
        behind: Some(Behind::Hub),
        site_local: At::port(SITE_ADDR, 4500),
        site_remote: At::mapped(HUB_ADDR, NAT_PORTS),
        hub_local: At::port(NAT_INSIDE, 4500),
        hub_remote: At::port(SITE_ADDR, 4500),
        site_nat_local: false,
        site_nat_remote: true,
        site_log_absent: Vec::new(),
        counters_min: vec![("tx_keepalives", 2)],
        counters_zero: vec!["rx_malformed"],
    });
    c.anyhub_only = Some("the stand-in hub listens on the public address only");
    cases.push(c);

    cases
}

/// `Case::basic` with strongSwan behind the NAT router.
fn behind_site(name: &str) -> Case {
    let mut c = Case::basic(name);
    c.site[0].local_addrs = NAT_INSIDE.into();
    // anyhubd has no MOBIKE (RFC 4555), so strongSwan never uses it with
    // anyhubd; the strongSwan stand-in hub of `selfcheck` would, and would
    // roam back to the first mapping on the lab's own address events.
    c.site[0].conn_extra.push("mobike = no".into());
    c.nat = Some(NatExpect::site_behind());
    c
}

/// Both sides' view of the NAT, against `expect` (part of [`check`] for a
/// case with a [`NatExpect`]). `anyhub`: the hub is anyhubd.
pub fn check_nat(
    case: &Case,
    expect: &NatExpect,
    site: &[SwanIkeSa],
    hub: &HubStatus,
    anyhub: bool,
) -> Result<()> {
    let conn = &case.site[0];
    let sa = site
        .iter()
        .find(|s| s.conn == conn.name)
        .ok_or_else(|| anyhow!("site: no IKE SA for `{}`", conn.name))?;
    ensure!(
        expect.site_local.matches(sa.local) && expect.site_remote.matches(sa.remote),
        "site: IKE SA {} === {}, expected {} === {}",
        show(sa.local),
        show(sa.remote),
        expect.site_local,
        expect.site_remote
    );
    ensure!(
        sa.nat_local == expect.site_nat_local,
        "site: nat-local = {}, expected {} (strongSwan {} a NAT in front of itself)",
        sa.nat_local,
        expect.site_nat_local,
        if sa.nat_local {
            "found"
        } else {
            "did not find"
        }
    );
    if anyhub {
        ensure!(
            sa.nat_remote == expect.site_nat_remote,
            "site: nat-remote = {}, expected {}",
            sa.nat_remote,
            expect.site_nat_remote
        );
    }
    for c in &sa.children {
        ensure!(
            c.encap,
            "site: child SA {:08x} is not UDP-encapsulated",
            c.spi_in
        );
    }

    let tunnel = &case.hub[0].id;
    let hsa: &HubIkeSa = hub
        .ike_sas
        .iter()
        .find(|s| &s.tunnel == tunnel)
        .ok_or_else(|| anyhow!("hub: no IKE SA on `{tunnel}`"))?;
    ensure!(
        expect.hub_local.matches(hsa.local) && expect.hub_remote.matches(hsa.remote),
        "hub: IKE SA {} === {}, expected {} === {}",
        show(hsa.local),
        show(hsa.remote),
        expect.hub_local,
        expect.hub_remote
    );
    for c in hub.child_sas.iter().filter(|c| &c.tunnel == tunnel) {
        ensure!(
            c.encap == Some(true),
            "hub: child SA {:08x} has encap = {:?}, expected true",
            c.spi_in,
            c.encap
        );
    }
    if let Some(counters) = &hub.counters {
        for (name, min) in &expect.counters_min {
            let n = super::counter(counters, name)?;
            ensure!(
                n >= *min,
                "hub counter {name} = {n}, expected at least {min}"
            );
        }
        for name in &expect.counters_zero {
            let n = super::counter(counters, name)?;
            ensure!(n == 0, "hub counter {name} = {n}, expected 0");
        }
    }
    Ok(())
}

/// The site's charon log has none of the lines the case rules out (part
/// of `verify`).
pub fn absent_in_site_log(case: &Case, site: &Charon) -> Result<()> {
    let Some(expect) = &case.nat else {
        return Ok(());
    };
    let log = std::fs::read_to_string(site.log()).unwrap_or_default();
    for line in &expect.site_log_absent {
        ensure!(
            !log.contains(line.as_str()),
            "site log contains {line:?}, which this case rules out"
        );
    }
    Ok(())
}

/// The site's installed child SPIs (inbound), to tell a rekey happened.
fn child_spis(site: &Charon, conn: &str) -> Result<Vec<u32>> {
    let sas = site.list_sas()?;
    let sa = sas
        .iter()
        .find(|s| s.conn == conn)
        .ok_or_else(|| anyhow!("the site lost its IKE SA"))?;
    Ok(sa
        .children
        .iter()
        .filter(|c| c.state == "INSTALLED")
        .map(|c| c.spi_in)
        .collect())
}

/// [`Flow::NatMappingChange`].
pub fn mapping_change(
    case: &Case,
    before: At,
    lab: &Lab,
    site: &Charon,
    hub: &mut Hub,
    said: &mut String,
) -> Result<()> {
    initiate_all(case, site, said)?;
    // Up, and the hub knows the site by the first mapping.
    let mut first = case.clone();
    if let Some(n) = first.nat.as_mut() {
        n.hub_remote = before;
        n.counters_min.clear();
    }
    let typed = hub.typed_ids();
    lab::eventually(Duration::from_secs(8), || {
        check(&first, &site.list_sas()?, &hub.status()?, typed, said)
    })
    .context("before the NAT changed its mapping")?;

    lab.nat_remap().context("changing the NAT's mapping")?;
    let conn = &case.site[0];
    let old = child_spis(site, &conn.name)?;
    let out = site.swanctl(
        &["--rekey", "--child", &conn.child],
        Duration::from_secs(10),
    )?;
    ensure!(
        out.success(),
        "swanctl --rekey --child failed: {}",
        one_line(&out.text)
    );
    // strongSwan's CREATE_CHILD_SA came through the new mapping: the hub
    // follows the peer there (and its answer finds the way back).
    lab::eventually(Duration::from_secs(15), || {
        let now = child_spis(site, &conn.name)?;
        ensure!(
            !now.is_empty() && now.iter().all(|s| !old.contains(s)),
            "strongSwan's child rekey did not complete through the new mapping"
        );
        check(case, &site.list_sas()?, &hub.status()?, typed, said)
    })
    .context("after the NAT changed its mapping and strongSwan rekeyed")?;

    // The hub's own request, to where it now knows the site is.
    let old = child_spis(site, &conn.name)?;
    hub.act("rekey", &case.hub[0].id, false)?;
    lab::eventually(Duration::from_secs(15), || {
        let now = child_spis(site, &conn.name)?;
        ensure!(
            !now.is_empty() && now.iter().all(|s| !old.contains(s)),
            "the hub's child rekey did not reach strongSwan through the new mapping"
        );
        check(case, &site.list_sas()?, &hub.status()?, typed, said)
    })
    .context("after the hub rekeyed through the new mapping")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strongswan::SwanChildSa;

    fn case(name: &str) -> Case {
        cases().into_iter().find(|c| c.name == name).unwrap()
    }

    /// `nat-mapping-change` once done: the site behind the NAT, the hub
    /// seeing it at the second mapping.
    fn picture() -> (Vec<SwanIkeSa>, serde_json::Value) {
        let site = vec![SwanIkeSa {
            conn: "site".into(),
            state: "ESTABLISHED".into(),
            initiator: true,
            spi_i: 1,
            spi_r: 2,
            local_id: "site.example.net".into(),
            remote_id: "hub.example.net".into(),
            proposal: String::new(),
            children: vec![SwanChildSa {
                name: "site".into(),
                state: "INSTALLED".into(),
                spi_in: 0xc1,
                spi_out: 0xc2,
                proposal: String::new(),
                local_ts: vec![],
                remote_ts: vec![],
                encap: true,
            }],
            local: Some("10.99.0.2:4500".parse().unwrap()),
            remote: Some("198.51.100.1:4500".parse().unwrap()),
            nat_local: true,
            nat_remote: false,
        }];
        let hub = serde_json::json!({
            "ike_sas": [{"tunnel": "site-a", "spi_i": "0000000000000001", "spi_r": "0000000000000002",
                "initiator": false, "state": "established", "remote_id": "fqdn:site.example.net",
                "proposal": "aes256gcm16-prfsha256-x25519",
                "local": "198.51.100.1:4500", "remote": "198.51.100.3:30123"}],
            "child_sas": [{"tunnel": "site-a", "spi_in": "000000c2", "spi_out": "000000c1",
                "proposal": "aes256gcm16", "local_ts": [], "remote_ts": [], "encap": true}],
            "counters": {"peer_moved": 1, "rx_malformed": 0}
        });
        (site, hub)
    }

    fn run(site: &[SwanIkeSa], hub: &serde_json::Value) -> Result<()> {
        let c = case("nat-mapping-change");
        check_nat(
            &c,
            c.nat.as_ref().unwrap(),
            site,
            &HubStatus::from_json(hub).unwrap(),
            true,
        )
    }

    #[test]
    fn passes_on_a_consistent_picture() {
        let (site, hub) = picture();
        run(&site, &hub).unwrap();
    }

    #[test]
    fn fails_on_each_disagreement() {
        type Mutation = fn(&mut Vec<SwanIkeSa>, &mut serde_json::Value);
        let mutations: [(&str, Mutation); 8] = [
            // The hub did not follow the new mapping.
            ("hub: IKE SA", |_, h| {
                h["ike_sas"][0]["remote"] = "198.51.100.2:20123".into()
            }),
            ("hub: IKE SA", |_, h| {
                h["ike_sas"][0]["local"] = "198.51.100.1:500".into()
            }),
            ("site: IKE SA", |s, _| {
                s[0].local = Some("10.99.0.2:500".parse().unwrap())
            }),
            ("nat-local", |s, _| s[0].nat_local = false),
            ("nat-remote", |s, _| s[0].nat_remote = true),
            ("not UDP-encapsulated", |s, _| {
                s[0].children[0].encap = false
            }),
            ("encap", |_, h| h["child_sas"][0]["encap"] = false.into()),
            ("peer_moved = 0", |_, h| {
                h["counters"]["peer_moved"] = 0.into()
            }),
        ];
        for (expect, mutate) in mutations {
            let (mut site, mut hub) = picture();
            mutate(&mut site, &mut hub);
            let err = run(&site, &hub).expect_err(expect).to_string();
            assert!(err.contains(expect), "{expect:?} not in {err:?}");
        }
    }

    #[test]
    fn ranges() {
        let at = At::mapped(SITE_ADDR, NAT_PORTS);
        assert!(at.matches(Some("198.51.100.2:20000".parse().unwrap())));
        assert!(!at.matches(Some("198.51.100.2:4500".parse().unwrap())));
        assert!(!at.matches(Some("198.51.100.3:20000".parse().unwrap())));
        assert!(!at.matches(None));
        assert_eq!(At::port(HUB_ADDR, 4500).to_string(), "198.51.100.1:4500");
        assert_eq!(at.to_string(), "198.51.100.2:20000-20999");
    }
}
