//! The case table and the runner.
//!
//! A case is data: the site's strongSwan connections, the hub's tunnels, who
//! initiates, and what both sides must show afterwards. Site connection `i`
//! belongs with hub tunnel `i`. Adding a case is a few lines in [`all`].
//!
//! The same table runs against anyhubd (`interop run`) and, for
//! `interop selfcheck`, against a strongSwan stand-in hub generated from the
//! same tunnels, which proves the harness and the expectations themselves.

use std::net::Ipv4Addr;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::anyhub::{Anyhubd, Binaries, HubChildSa, HubIkeSa, HubStatus, Tunnel, HUB_CA, HUB_CERT};
use crate::lab::{self, Lab, HUB_ADDR, HUB_INNER, SITE_ADDR, SITE_INNER};
use crate::pki::{self, KeyType, PkiSpec};
use crate::strongswan::{
    canonical_proposal, telling_log_line, Charon, IkeId, SwanConn, SwanIkeSa, SwanPubkey,
};
use crate::traffic::{Traffic, OUTSIDE_TS};

/// NAT traversal: the NAT lab's cases, their flow and checks.
mod nat;
pub use nat::NatExpect;

pub const DEFAULT_IKE: &str = "aes256gcm16-prfsha256-x25519";
pub const DEFAULT_ESP: &str = "aes256gcm16";
const SITE_TS: &str = "10.10.0.0/24";
const HUB_TS: &str = "10.20.0.0/24";
const SITE_ID: &str = "fqdn:site.example.net";
const HUB_ID: &str = "fqdn:hub.example.net";
const PSK: &str = "interop-psk-0123456789abcdef";

/// Who starts the tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// strongSwan initiates each site connection (`swanctl --initiate`).
    SiteInitiates,
    /// anyhubd initiates (`initiate = true`); strongSwan only responds.
    HubInitiates,
    /// strongSwan initiates; then its charon is killed with SIGKILL, a fresh
    /// one (which sends INITIAL_CONTACT) initiates again.
    SiteRestarts,
    /// strongSwan initiates; then the IKE SA (`ike`) or the child SA must be
    /// rekeyed within the given time — new SPIs on the site — and both
    /// sides agree on the result.
    Rekey { ike: bool, within: Duration },
    /// strongSwan initiates; the tunnel then idles this long (liveness
    /// checks only) and must still be up on both sides.
    Idle(Duration),
    /// strongSwan initiates, then deletes the IKE SA (`swanctl
    /// --terminate`): neither side may hold anything afterwards.
    SiteDeletes,
    /// strongSwan initiates, then its charon is killed and stays dead:
    /// anyhubd's liveness checks must clear every SA within the given time.
    SiteVanishes(Duration),
    /// strongSwan initiates; then the operator deletes the IKE SA (`ike`)
    /// or only the child SA with `anyhubctl terminate`.
    HubDeletes { ike: bool },
    /// strongSwan initiates, then deletes only the child SA.
    SiteDeletesChild,
    /// While a flood of spoofed IKE_SA_INIT requests (`count` at `rate`/s)
    /// hits anyhubd, strongSwan connects. anyhubd must answer the flood with
    /// cookies past its threshold, keep its half-open SAs and memory
    /// bounded, and let the real peer in.
    CookieFlood { count: u64, rate: u64 },
    /// strongSwan initiates; then both sides rekey the IKE SA (`ike`) or
    /// the child SA at the same moment: the hub→site path drops
    /// everything for a moment so the two requests cross. One SA must be
    /// left, the same on both sides, and both must have seen the collision.
    SimultaneousRekey { ike: bool },
    /// strongSwan behind the NAT lab's router initiates; the NAT then
    /// changes the mapping, strongSwan rekeys its child (the hub must
    /// follow it), and the hub rekeys the child through the new mapping
    /// (see `nat.rs`). `before`: the hub's view of the site until then.
    NatMappingChange { before: nat::At },
}

/// What must hold on both sides once the flow has run.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Site connection `i` is up with hub tunnel `i`, exactly these SAs exist.
    Up(Vec<Up>),
    /// The site's initiation is refused with `notify`; nothing is
    /// established anywhere; anyhubd's `counter` ends in `min..=max`.
    Refused {
        notify: &'static str,
        counter: &'static str,
        min: u64,
        max: u64,
    },
    /// The IKE SA is up, the child was negotiated but the site could not
    /// install it and deleted it: no child SA on either side.
    IkeUpChildDeleted(Up),
}

/// The negotiated result of one tunnel, from the site's point of view.
#[derive(Clone, Debug)]
pub struct Up {
    /// Negotiated IKE proposal, strongSwan keywords.
    pub ike: String,
    /// Negotiated ESP proposal of the child, strongSwan keywords.
    pub esp: String,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub site: Vec<SwanConn>,
    pub hub: Vec<Tunnel>,
    pub flow: Flow,
    pub expect: Expect,
    /// Lines the site's charon log must contain: evidence that the case
    /// exercised what its name says (e.g. the INVALID_KE_PAYLOAD retry).
    pub site_log: Vec<String>,
    /// Why the strongSwan stand-in hub of `interop selfcheck` cannot play
    /// this case, if it cannot.
    pub anyhub_only: Option<&'static str>,
    /// Extra `charon { … }` settings for the site's strongswan.conf.
    pub site_charon: Vec<String>,
    /// Extra `[ike]` lines for anyhubd's config.
    pub hub_ike: Vec<String>,
    /// Counters anyhubd must end with at least these values.
    pub hub_counters_min: Vec<(&'static str, u64)>,
    /// Certificates to make with `pki` at set-up (the `cert-*` cases; the
    /// site's connections and hub's tunnels then use `pubkey`).
    pub pki: Option<PkiSpec>,
    /// The NAT cases: the lab's NAT router and what both sides must show
    /// of it (`nat.rs`).
    pub nat: Option<NatExpect>,
    /// Traffic through the tunnel once it is up (anyhubd then runs its
    /// `[dataplane]`).
    pub traffic: Option<Traffic>,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub(crate) fn site_conn(name: &str) -> SwanConn {
    SwanConn {
        name: name.into(),
        child: name.into(),
        local_addrs: SITE_ADDR.into(),
        remote_addrs: HUB_ADDR.into(),
        proposals: strings(&[DEFAULT_IKE]),
        esp_proposals: strings(&[DEFAULT_ESP]),
        local_id: SITE_ID.into(),
        remote_id: HUB_ID.into(),
        psk: PSK.into(),
        local_ts: strings(&[SITE_TS]),
        remote_ts: strings(&[HUB_TS]),
        start: false,
        conn_extra: Vec::new(),
        child_extra: Vec::new(),
        pubkey: None,
    }
}

pub(crate) fn hub_tunnel(id: &str) -> Tunnel {
    Tunnel {
        id: id.into(),
        local_id: HUB_ID.into(),
        remote_id: SITE_ID.into(),
        psk: PSK.into(),
        ike_proposals: strings(&[DEFAULT_IKE]),
        esp_proposals: strings(&[DEFAULT_ESP]),
        local_ts: strings(&[HUB_TS]),
        remote_ts: strings(&[SITE_TS]),
        remote_address: None,
        initiate: false,
        extra: Vec::new(),
        pubkey: false,
    }
}

impl Up {
    fn new(ike: &str, esp: &str) -> Up {
        Up {
            ike: ike.into(),
            esp: esp.into(),
            local_ts: strings(&[SITE_TS]),
            remote_ts: strings(&[HUB_TS]),
        }
    }
}

impl Case {
    /// One strongSwan connection "site" and one anyhubd tunnel "site-a"
    /// with matching IDs, PSK, selectors and default proposals; strongSwan
    /// initiates; expected up.
    fn basic(name: &str) -> Case {
        Case {
            name: name.into(),
            site: vec![site_conn("site")],
            hub: vec![hub_tunnel("site-a")],
            flow: Flow::SiteInitiates,
            expect: Expect::Up(vec![Up::new(DEFAULT_IKE, DEFAULT_ESP)]),
            site_log: Vec::new(),
            anyhub_only: None,
            site_charon: Vec::new(),
            hub_ike: Vec::new(),
            hub_counters_min: Vec::new(),
            pki: None,
            nat: None,
            traffic: None,
        }
    }

    /// `basic` with anyhubd's dataplane on and `traffic` sent once up.
    fn traffic(name: &str, traffic: Traffic) -> Case {
        let mut c = Case::basic(name);
        c.traffic = Some(traffic);
        c.hub_ike.extend(crate::traffic::hub_dataplane_lines());
        c.anyhub_only = Some("sends traffic through anyhubd's [dataplane]");
        c
    }

    /// `basic`, authenticated with certificates `pki` makes: the site's
    /// for its ID, the hub's for its ID, both from one CA both trust.
    fn cert(name: &str, site_key: KeyType, hub_key: KeyType) -> Case {
        let mut c = Case::basic(name);
        c.pki = Some(PkiSpec {
            site_key,
            hub_key,
            site_untrusted: false,
        });
        c.site[0].pubkey = Some(SwanPubkey {
            cert: "site.pem".into(),
            cacert: "ca.pem".into(),
            local_auth: "pubkey".into(),
        });
        c.hub[0].pubkey = true;
        c
    }

    fn up_mut(&mut self) -> &mut Up {
        match &mut self.expect {
            Expect::Up(ups) => &mut ups[0],
            Expect::IkeUpChildDeleted(up) => up,
            Expect::Refused { .. } => panic!("case {}: no Up expectation", self.name),
        }
    }

    /// IKE proposals offered by the site, accepted by the hub, and the one
    /// that must be negotiated.
    fn ike(mut self, site: &str, hub: &str, negotiated: &str) -> Case {
        self.site[0].proposals = strings(&[site]);
        self.hub[0].ike_proposals = strings(&[hub]);
        self.up_mut().ike = negotiated.into();
        self
    }

    fn esp(mut self, site: &str, hub: &str, negotiated: &str) -> Case {
        self.site[0].esp_proposals = strings(&[site]);
        self.hub[0].esp_proposals = strings(&[hub]);
        self.up_mut().esp = negotiated.into();
        self
    }

    /// Local IDs of the site and the hub (each side's remote ID follows).
    fn ids(mut self, site: &str, hub: &str) -> Case {
        self.site[0].local_id = site.into();
        self.site[0].remote_id = hub.into();
        self.hub[0].local_id = hub.into();
        self.hub[0].remote_id = site.into();
        self
    }

    fn hub_initiates(mut self) -> Case {
        self.flow = Flow::HubInitiates;
        self.hub[0].initiate = true;
        self.hub[0].remote_address = Some(SITE_ADDR.into());
        self
    }

    fn site_log(mut self, evidence: &str) -> Case {
        self.site_log.push(evidence.into());
        self
    }
}

/// Every case, in run order.
pub fn all() -> Vec<Case> {
    let mut cases = Vec::new();

    // IKE proposal matrix, strongSwan initiating.
    for encr in ["aes128gcm16", "aes256gcm16"] {
        for prf in ["prfsha256", "prfsha384"] {
            for dh in ["x25519", "ecp256", "ecp384", "modp2048"] {
                let p = format!("{encr}-{prf}-{dh}");
                cases.push(Case::basic(&format!("ike-{p}")).ike(&p, &p, &p));
            }
        }
    }
    for p in [
        "aes256-sha256-modp2048",
        "chacha20poly1305-prfsha256-x25519",
    ] {
        cases.push(Case::basic(&format!("ike-{p}")).ike(p, p, p));
    }

    // ESP. A DH group in esp_proposals is PFS: it only applies to rekeys,
    // the first child (created in IKE_AUTH) has none.
    cases.push(Case::basic("esp-aes256gcm16-pfs-x25519").esp(
        "aes256gcm16-x25519",
        "aes256gcm16-x25519",
        "aes256gcm16",
    ));
    for p in ["aes256-sha256", "chacha20poly1305"] {
        cases.push(Case::basic(&format!("esp-{p}")).esp(p, p, p));
    }
    // kernel-libipsec cannot install ESN SAs ("IPsec SA: ESN not supported")
    // and this kernel has no ESP for kernel-netlink. So: ESN must be
    // negotiated (the site's log shows EXT_SEQ selected), and when the site
    // deletes the child it cannot install, anyhubd must drop it too.
    let mut esn = Case::basic("esp-aes128gcm16-esn")
        .esp("aes128gcm16-esn", "aes128gcm16-esn", "aes128gcm16-esn")
        .site_log("selected proposal: ESP:AES_GCM_16_128/EXT_SEQ");
    esn.expect = Expect::IkeUpChildDeleted(Up::new(DEFAULT_IKE, "aes128gcm16-esn"));
    esn.anyhub_only =
        Some("a libipsec responder cannot install ESN SAs and answers NO_PROPOSAL_CHOSEN");
    cases.push(esn);

    // anyhubd initiating; KE retries in both directions.
    cases.push(Case::basic("anyhub-initiates").hub_initiates());
    cases.push(
        Case::basic("anyhub-initiates-invalid-ke")
            .hub_initiates()
            .ike(
                "aes256gcm16-prfsha256-ecp256",
                "aes256gcm16-prfsha256-x25519-ecp256",
                "aes256gcm16-prfsha256-ecp256",
            )
            .site_log("DH group CURVE_25519 unacceptable, requesting ECP_256"),
    );
    cases.push(
        Case::basic("strongswan-invalid-ke-retry")
            .ike(
                "aes256gcm16-prfsha256-ecp256-x25519",
                "aes256gcm16-prfsha256-x25519",
                "aes256gcm16-prfsha256-x25519",
            )
            .site_log("peer didn't accept DH group ECP_256, it requested CURVE_25519"),
    );

    // Identity types.
    cases.push(Case::basic("id-fqdn").ids("fqdn:branch-7.example.org", "fqdn:edge.example.org"));
    cases.push(Case::basic("id-email").ids("email:branch-7@example.org", "email:edge@example.org"));
    cases.push(Case::basic("id-keyid").ids("keyid:branch-7-key", "keyid:#a1b2c3d4e5"));
    cases.push(
        Case::basic("id-ipv4").ids(&format!("ipv4:{SITE_ADDR}"), &format!("ipv4:{HUB_ADDR}")),
    );

    // Two connections from one charon, one address: told apart by ID.
    let mut two = Case::basic("two-tunnels-same-address");
    two.site.clear();
    two.hub.clear();
    let mut ups = Vec::new();
    for n in 1..=2 {
        let (site_ts, hub_ts) = (format!("10.10.{n}.0/24"), format!("10.20.{n}.0/24"));
        let site_id = format!("fqdn:site{n}.example.net");
        let psk = format!("{PSK}-tunnel-{n}");
        let mut c = site_conn(&format!("site{n}"));
        c.local_id.clone_from(&site_id);
        c.psk.clone_from(&psk);
        c.local_ts = vec![site_ts.clone()];
        c.remote_ts = vec![hub_ts.clone()];
        let mut t = hub_tunnel(&format!("site-{n}"));
        t.remote_id = site_id;
        t.psk = psk;
        t.local_ts = vec![hub_ts.clone()];
        t.remote_ts = vec![site_ts.clone()];
        two.site.push(c);
        two.hub.push(t);
        ups.push(Up {
            local_ts: vec![site_ts],
            remote_ts: vec![hub_ts],
            ..Up::new(DEFAULT_IKE, DEFAULT_ESP)
        });
    }
    two.expect = Expect::Up(ups);
    cases.push(two);

    // Refusals.
    let mut wrong = Case::basic("wrong-psk");
    wrong.site[0].psk = "not-the-hub's-secret".into();
    wrong.expect = Expect::Refused {
        notify: "AUTHENTICATION_FAILED",
        counter: "auth_failed",
        min: 1,
        max: 1,
    };
    cases.push(wrong);

    let mut nopro = Case::basic("no-common-proposal");
    nopro.site[0].proposals = strings(&["aes128-sha1-modp2048"]);
    nopro.expect = Expect::Refused {
        notify: "NO_PROPOSAL_CHOSEN",
        counter: "no_proposal_chosen",
        min: 1,
        max: u64::MAX,
    };
    cases.push(nopro);

    // Traffic selector narrowing by the hub.
    let mut ts = Case::basic("ts-narrowed");
    ts.site[0].local_ts = strings(&["10.10.0.0/16"]);
    ts.site[0].remote_ts = strings(&["10.20.0.0/16"]);
    ts.hub[0].local_ts = strings(&["10.20.1.0/24"]);
    ts.hub[0].remote_ts = strings(&["10.10.1.0/24"]);
    ts.up_mut().local_ts = strings(&["10.10.1.0/24"]);
    ts.up_mut().remote_ts = strings(&["10.20.1.0/24"]);
    cases.push(ts);

    // A tunnel's life: rekeys started by either side, with and without PFS.
    let stand_in = Some("the lifecycle cases exercise anyhubd's timers and options");
    let secs = Duration::from_secs;
    for (name, ike, by_site, pfs) in [
        ("rekey-child-by-strongswan", false, true, false),
        ("rekey-child-by-anyhub", false, false, false),
        ("rekey-child-pfs-by-strongswan", false, true, true),
        ("rekey-child-pfs-by-anyhub", false, false, true),
        ("rekey-ike-by-strongswan", true, true, false),
        ("rekey-ike-by-anyhub", true, false, false),
    ] {
        let mut c = Case::basic(name);
        c.flow = Flow::Rekey {
            ike,
            within: secs(25),
        };
        c.anyhub_only = stand_in;
        if pfs {
            c = c.esp("aes256gcm16-x25519", "aes256gcm16-x25519", "aes256gcm16");
            c.up_mut().esp = "aes256gcm16-x25519".into();
        }
        match (ike, by_site) {
            // strongSwan derives the hard lifetime as rekey_time × 110 %
            // in whole seconds, which for 6 s is 6 s: the SA would expire
            // the instant it rekeys. Give it explicit room.
            (false, true) => c.site[0]
                .child_extra
                .extend(["rekey_time = 6s", "life_time = 30s", "rand_time = 1s"].map(String::from)),
            (true, true) => c.site[0]
                .conn_extra
                .extend(["rekey_time = 6s", "over_time = 30s", "rand_time = 1s"].map(String::from)),
            (false, false) => c.hub[0].extra.push("child_lifetime = \"6s\"".into()),
            (true, false) => c.hub[0].extra.push("ike_lifetime = \"6s\"".into()),
        }
        cases.push(c);
    }

    // Reauthentication (RFC 7296 §2.8.3): strongSwan's own policy, and
    // anyhubd as responder asking for it with AUTH_LIFETIME (RFC 4478).
    let mut c = Case::basic("reauth-by-strongswan");
    c.flow = Flow::Rekey {
        ike: true,
        within: secs(25),
    };
    c.anyhub_only = stand_in;
    c.site[0]
        .conn_extra
        .extend(["reauth_time = 6s", "over_time = 30s", "rand_time = 1s"].map(String::from));
    c.site_charon = vec!["make_before_break = yes".into()];
    cases.push(c.site_log("reauthenticating IKE_SA"));
    let mut c = Case::basic("reauth-requested-by-anyhub");
    c.flow = Flow::Rekey {
        ike: true,
        within: secs(25),
    };
    c.anyhub_only = stand_in;
    c.hub[0].extra.push("reauth_time = \"8s\"".into());
    // strongSwan reauthenticates at AUTH_LIFETIME minus its over_time
    // (default a tenth of 4 h, which would mean "at once").
    c.site[0].conn_extra.push("over_time = 3s".into());
    c.site_charon = vec!["make_before_break = yes".into()];
    cases.push(c.site_log("received AUTH_LIFETIME"));

    // Liveness checks both ways, deletes, a peer that vanishes.
    let mut dpd = Case::basic("dpd-by-strongswan");
    dpd.flow = Flow::Idle(secs(7));
    dpd.site[0].conn_extra.push("dpd_delay = 2s".into());
    dpd.anyhub_only = stand_in;
    cases.push(dpd.site_log("sending DPD request"));
    let mut dpd = Case::basic("dpd-by-anyhub");
    dpd.flow = Flow::Idle(secs(7));
    dpd.hub[0].extra.push("dpd_delay = \"2s\"".into());
    dpd.anyhub_only = stand_in;
    cases.push(dpd.site_log("parsed INFORMATIONAL request 0 [ ]"));
    let mut del = Case::basic("delete-by-strongswan");
    del.flow = Flow::SiteDeletes;
    del.anyhub_only = stand_in;
    cases.push(del);
    let mut gone = Case::basic("dpd-peer-vanishes");
    gone.flow = Flow::SiteVanishes(secs(30));
    gone.hub[0].extra.push("dpd_delay = \"2s\"".into());
    gone.anyhub_only = stand_in;
    cases.push(gone);

    // IKE fragmentation (RFC 7383) both ways: 24 selectors a side make an
    // IKE_AUTH of about 1 KiB; both sides send at most 576-byte datagrams.
    let site_nets: Vec<String> = (0..24).map(|i| format!("10.10.{i}.0/24")).collect();
    let hub_nets: Vec<String> = (0..24).map(|i| format!("10.20.{i}.0/24")).collect();
    let mut frag = Case::basic("frag-ike-auth");
    frag.site[0].local_ts = site_nets.clone();
    frag.site[0].remote_ts = hub_nets.clone();
    frag.hub[0].local_ts = hub_nets.clone();
    frag.hub[0].remote_ts = site_nets.clone();
    frag.up_mut().local_ts = site_nets;
    frag.up_mut().remote_ts = hub_nets;
    frag.site_charon = vec!["fragment_size = 576".into()];
    frag.hub_ike = vec!["fragment_size = 576".into()];
    frag.hub_counters_min = vec![("rx_fragments", 2), ("tx_fragmented", 1)];
    frag.anyhub_only = stand_in;
    cases.push(
        frag.site_log("splitting IKE message")
            .site_log("reassembled fragmented IKE message"),
    );

    // A flood of spoofed IKE_SA_INIT (RFC 7296 §2.6): cookies past the
    // threshold, bounded state, and a real peer still gets in.
    let mut flood = Case::basic("cookie-flood");
    flood.flow = Flow::CookieFlood {
        count: 20_000,
        rate: 4_000,
    };
    flood.hub_ike = vec!["cookie_threshold = 32".into()];
    flood.anyhub_only = Some("the flood checks anyhubd's own counters and memory");
    cases.push(flood.site_log("received COOKIE notify"));

    // Deletes by the operator, child-only deletes, colliding rekeys.
    for (name, ike) in [
        ("delete-by-anyhub", true),
        ("delete-child-by-anyhub", false),
    ] {
        let mut c = Case::basic(name);
        c.flow = Flow::HubDeletes { ike };
        c.anyhub_only = stand_in;
        cases.push(c);
    }
    let mut c = Case::basic("delete-child-by-strongswan");
    c.flow = Flow::SiteDeletesChild;
    c.anyhub_only = stand_in;
    cases.push(c);
    for (name, ike, evidence) in [
        (
            "rekey-simultaneous-child",
            false,
            "detected CHILD_REKEY collision with CHILD_REKEY",
        ),
        (
            "rekey-simultaneous-ike",
            true,
            "detected IKE_REKEY collision with IKE_REKEY",
        ),
    ] {
        let mut c = Case::basic(name);
        c.flow = Flow::SimultaneousRekey { ike };
        c.anyhub_only = stand_in;
        cases.push(c.site_log(evidence));
    }

    // Certificates (RFC 7427 signatures, CERT/CERTREQ), made with `pki`.
    // strongSwan signs RSA with PKCS#1 v1.5 / SHA-256 and ECDSA with the
    // curve's hash once we announce SIGNATURE_HASH_ALGORITHMS; its log
    // says which scheme it used and that our signature verified.
    let rsa = KeyType::Rsa(2048);
    let (p256, p384) = (KeyType::Ecdsa(256), KeyType::Ecdsa(384));
    cases.push(
        Case::cert("cert-rsa", rsa, rsa)
            .site_log("authentication of 'site.example.net' (myself) with RSA_EMSA_PKCS1_SHA2_256 successful")
            .site_log("authentication of 'hub.example.net' with RSA_EMSA_PKCS1_SHA2_256 successful"),
    );
    cases.push(
        Case::cert("cert-ecdsa", p256, p384)
            .site_log("authentication of 'site.example.net' (myself) with ECDSA_WITH_SHA256_DER successful")
            .site_log("authentication of 'hub.example.net' with ECDSA_WITH_SHA384_DER successful"),
    );
    cases.push(
        Case::cert("cert-anyhub-initiates", rsa, p256)
            .hub_initiates()
            .site_log("authentication of 'hub.example.net' with ECDSA_WITH_SHA256_DER successful"),
    );
    // Distinguished names as IDs (ID_DER_ASN1_DN, strongSwan's syntax):
    // the certificate's subject itself.
    cases.push(Case::cert("cert-dn-ids", p256, rsa).ids(
        "C=CH, O=anyhub interop, CN=site",
        "C=CH, O=anyhub interop, CN=hub",
    ));
    // RSASSA-PSS from strongSwan (not its default: `auth = rsa/pss`).
    let mut pss = Case::cert("cert-rsa-pss", rsa, rsa)
        .site_log("(myself) with RSA_EMSA_PSS_SHA2_256_SALT_32 successful");
    pss.site[0].pubkey.as_mut().unwrap().local_auth = "rsa/pss-sha256".into();
    cases.push(pss);
    // The site's certificate comes from a CA the hub does not trust.
    let mut untrusted = Case::cert("cert-untrusted-ca", rsa, rsa);
    untrusted.pki.as_mut().unwrap().site_untrusted = true;
    untrusted.expect = Expect::Refused {
        notify: "AUTHENTICATION_FAILED",
        counter: "auth_failed",
        min: 1,
        max: 1,
    };
    cases.push(untrusted.clone());
    // The same refused by anyhubd as initiator: it tells strongSwan with
    // an INFORMATIONAL AUTHENTICATION_FAILED (RFC 7296 §2.21.2), after
    // which strongSwan must hold nothing either.
    let mut by_hub = untrusted.hub_initiates();
    by_hub.name = "cert-untrusted-ca-anyhub-initiates".into();
    by_hub.anyhub_only = Some("the stand-in hub has no counters to wait for");
    if let Expect::Refused { notify, .. } = &mut by_hub.expect {
        // How charon logs the notify it parsed in our INFORMATIONAL.
        *notify = "INFORMATIONAL request 2 [ N(AUTH_FAILED) ]";
    }
    cases.push(by_hub.site_log("deleting IKE_SA site[1]"));
    // Peers without RFC 7427 (strongSwan with signature_authentication =
    // no): the classic methods both ways, RSA (1) and ECDSA (9, 10).
    for (name, site, hub, evidence) in [
        (
            "cert-classic-rsa",
            rsa,
            rsa,
            ["RSA signature", "RSA signature"],
        ),
        (
            "cert-classic-ecdsa",
            p256,
            p384,
            ["ECDSA-256 signature", "ECDSA-384 signature"],
        ),
    ] {
        let mut c = Case::cert(name, site, hub)
            .site_log(&format!(
                "authentication of 'site.example.net' (myself) with {} successful",
                evidence[0]
            ))
            .site_log(&format!(
                "authentication of 'hub.example.net' with {} successful",
                evidence[1]
            ));
        c.site_charon.push("signature_authentication = no".into());
        cases.push(c);
    }

    // A restarted peer's INITIAL_CONTACT replaces its old SAs.
    let mut ic = Case::basic("initial-contact-replaces");
    ic.flow = Flow::SiteRestarts;
    cases.push(ic);

    cases.extend(nat::cases());
    // Traffic through anyhubd's dataplane (userspace ESP-in-UDP over its
    // TUN). kernel-libipsec refuses ESN SAs (see esp-aes128gcm16-esn), so
    // no strongSwan site can carry ESN traffic here.
    cases.push(Case::traffic("traffic-ping", Traffic::Ping));
    cases.push(Case::traffic("traffic-ping-hub-initiates", Traffic::Ping).hub_initiates());
    for p in [
        "aes128gcm16",
        "aes256gcm16",
        "chacha20poly1305",
        "aes128-sha256",
        "aes256-sha256",
        "aes256-sha512",
    ] {
        cases.push(
            Case::traffic(&format!("traffic-iperf-{p}"), Traffic::Iperf { secs: 2 }).esp(p, p, p),
        );
    }
    cases.push(Case::traffic("traffic-ts-enforced", Traffic::TsEnforced));
    let mut pmtu = Case::traffic("traffic-pmtu-too-big-mss-clamped", Traffic::PathMtu);
    pmtu.hub_ike.push(crate::traffic::WIDE_TUN.into());
    cases.push(pmtu);
    // GRE (RFC 2784/2890) from a scapy peer beside the IPsec tunnel.
    for (name, key) in [("gre-scapy", None), ("gre-scapy-key", Some(4242))] {
        let mut c = Case::traffic(name, Traffic::Gre { key });
        c.hub_ike.extend(crate::traffic::hub_gre_lines(key));
        cases.push(c);
    }
    cases.push(Case::traffic(
        "traffic-rekey-during-transfer",
        Traffic::RekeyDuringTransfer { secs: 9 },
    ));

    cases
}

/// The hub under test.
#[derive(Clone, Copy)]
pub enum HubKind<'a> {
    Anyhub(&'a Binaries),
    /// strongSwan stand-in, for `interop selfcheck`.
    StrongSwan,
}

enum Hub {
    Anyhub(Anyhubd),
    Swan(Charon),
}

impl Hub {
    fn start(kind: HubKind, lab: &Lab, tunnels: &[Tunnel], ike_extra: &[String]) -> Result<Hub> {
        Ok(match kind {
            HubKind::Anyhub(bins) => Hub::Anyhub(Anyhubd::start(
                lab.hub_addr(),
                &lab.hub_ns,
                &lab.hub_dir(),
                bins,
                tunnels,
                ike_extra,
            )?),
            HubKind::StrongSwan => {
                let charon = Charon::start(&lab.hub_ns, &lab.hub_dir())
                    .context("starting the stand-in hub's charon")?;
                charon.load(&stand_in_conns(tunnels))?;
                Hub::Swan(charon)
            }
        })
    }

    fn status(&mut self) -> Result<HubStatus> {
        match self {
            Hub::Anyhub(a) => a.status(),
            Hub::Swan(c) => {
                c.alive()?;
                Ok(stand_in_status(&c.list_sas()?))
            }
        }
    }

    fn status_text(&mut self) -> Result<String> {
        match self {
            Hub::Anyhub(a) => a.status_text(),
            Hub::Swan(c) => c.list_sas_text(),
        }
    }

    fn typed_ids(&self) -> bool {
        matches!(self, Hub::Anyhub(_))
    }

    /// An operator action on tunnel `tunnel`: `verb` is "rekey" or
    /// "terminate", `ike` picks the IKE SA or the child SA.
    fn act(&mut self, verb: &str, tunnel: &str, ike: bool) -> Result<()> {
        match self {
            Hub::Anyhub(a) => {
                a.act(&[verb, tunnel, if ike { "ike" } else { "child" }])?;
            }
            Hub::Swan(c) => {
                let flag = if ike { "--ike" } else { "--child" };
                let out = c.swanctl(
                    &[&format!("--{verb}"), flag, tunnel],
                    Duration::from_secs(10),
                )?;
                ensure!(
                    out.success(),
                    "swanctl --{verb} failed: {}",
                    one_line(&out.text)
                );
            }
        }
        Ok(())
    }
}

/// The strongSwan stand-in's connections: one per tunnel, same settings.
fn stand_in_conns(tunnels: &[Tunnel]) -> Vec<SwanConn> {
    tunnels
        .iter()
        .map(|t| SwanConn {
            name: t.id.clone(),
            child: t.id.clone(),
            local_addrs: HUB_ADDR.into(),
            remote_addrs: t.remote_address.clone().unwrap_or_else(|| "%any".into()),
            proposals: t.ike_proposals.clone(),
            esp_proposals: t.esp_proposals.clone(),
            local_id: t.local_id.clone(),
            remote_id: t.remote_id.clone(),
            psk: t.psk.clone(),
            local_ts: t.local_ts.clone(),
            remote_ts: t.remote_ts.clone(),
            start: t.initiate,
            conn_extra: Vec::new(),
            child_extra: Vec::new(),
            pubkey: t.pubkey.then(|| SwanPubkey {
                cert: HUB_CERT.into(),
                cacert: HUB_CA.into(),
                local_auth: "pubkey".into(),
            }),
        })
        .collect()
}

/// The stand-in's swanctl view shaped like anyhubd's status (no counters).
fn stand_in_status(sas: &[SwanIkeSa]) -> HubStatus {
    let mut st = HubStatus::default();
    for sa in sas {
        st.ike_sas.push(HubIkeSa {
            tunnel: sa.conn.clone(),
            spi_i: sa.spi_i,
            spi_r: sa.spi_r,
            initiator: sa.initiator,
            state: sa.state.to_ascii_lowercase(),
            remote_id: sa.remote_id.clone(),
            proposal: sa.proposal.clone(),
            local: sa.local,
            remote: sa.remote,
        });
        for c in sa.children.iter().filter(|c| c.state == "INSTALLED") {
            st.child_sas.push(HubChildSa {
                tunnel: sa.conn.clone(),
                spi_in: c.spi_in,
                spi_out: c.spi_out,
                proposal: c.proposal.clone(),
                local_ts: c.local_ts.clone(),
                remote_ts: c.remote_ts.clone(),
                encap: Some(c.encap),
                in_packets: 0,
                out_packets: 0,
            });
        }
    }
    st
}

/// How a case went; `logs` are (label, tail) pairs, filled on failure.
pub struct Outcome {
    pub failure: Option<String>,
    pub logs: Vec<(String, String)>,
}

const TAIL_LINES: usize = 40;

/// Runs one case in a fresh lab (`show`: print what both sides say at the
/// end, for the demo). Never panics: a panic inside the case is
/// caught here, while the lab still exists, so logs can be read; the lab is
/// then torn down by its Drop.
pub fn run_case(case: &Case, kind: HubKind, keep: Option<&Path>, show: bool) -> Outcome {
    // Both sides' local selectors (as configured and as narrowed by the peer).
    let site_ts = (case.site.iter().flat_map(|c| &c.local_ts))
        .chain(case.hub.iter().flat_map(|t| &t.remote_ts));
    let hub_ts = (case.hub.iter().flat_map(|t| &t.local_ts))
        .chain(case.site.iter().flat_map(|c| &c.remote_ts));
    let site_inner = inner_addrs(SITE_INNER, site_ts);
    let mut hub_inner = inner_addrs(HUB_INNER, hub_ts);
    if case.traffic == Some(Traffic::TsEnforced) {
        hub_inner.push(OUTSIDE_TS);
    }
    let keep = keep.map(|k| k.join(&case.name));
    let lab = match case.nat.as_ref().and_then(|n| n.behind) {
        None => Lab::create(&site_inner, &hub_inner, keep),
        Some(behind) => Lab::create_nat(&site_inner, &hub_inner, keep, behind),
    };
    let lab = match lab {
        Ok(lab) => lab,
        Err(e) => {
            return Outcome {
                failure: Some(one_line(&format!("building the lab: {e:#}"))),
                logs: Vec::new(),
            }
        }
    };
    let result = panic::catch_unwind(AssertUnwindSafe(|| drive(case, kind, &lab, show)));
    let failure = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(one_line(&format!("{e:#}"))),
        Err(payload) => Some(format!("panicked: {}", crate::panic_message(&payload))),
    };
    let logs = if failure.is_some() {
        log_tails(&lab, kind)
    } else {
        Vec::new()
    };
    drop(lab);
    Outcome { failure, logs }
}

fn log_tails(lab: &Lab, kind: HubKind) -> Vec<(String, String)> {
    let charon =
        |side: &Path| lab::tail_where(&side.join("charon.log"), TAIL_LINES, telling_log_line);
    let hub = match kind {
        HubKind::Anyhub(_) => (
            "hub anyhubd log".to_string(),
            lab::tail(&lab.hub_dir().join("anyhubd.log"), TAIL_LINES),
        ),
        HubKind::StrongSwan => ("hub charon log".to_string(), charon(&lab.hub_dir())),
    };
    vec![
        ("site charon log".to_string(), charon(&lab.site_dir())),
        hub,
    ]
}

fn one_line(s: &str) -> String {
    s.trim().replace('\n', " | ")
}

/// Extra inner addresses so that every local traffic selector contains one
/// (libipsec installs its route with a source address from the local TS).
fn inner_addrs<'a>(base: Ipv4Addr, ts: impl Iterator<Item = &'a String>) -> Vec<Ipv4Addr> {
    let mut extra: Vec<Ipv4Addr> = Vec::new();
    for t in ts {
        let covered =
            lab::cidr_contains(t, base) || extra.iter().any(|a| lab::cidr_contains(t, *a));
        if !covered {
            if let Some((host, _, _)) = lab::cidr_first_host(t) {
                extra.push(host);
            }
        }
    }
    extra
}

/// The demo's case: one tunnel, strongSwan initiating, then pings through
/// it both ways (anyhubd's dataplane forwarding).
pub fn demo_case() -> Case {
    Case::traffic("demo", Traffic::Ping)
}

/// Starts both sides, runs the flow, checks the expectation. With `show`,
/// prints `swanctl --list-sas` and the hub's status at the end.
fn drive(case: &Case, kind: HubKind, lab: &Lab, show: bool) -> Result<()> {
    if let Some(spec) = &case.pki {
        pki::make(
            spec,
            &lab.site_dir(),
            &lab.hub_dir(),
            &case.site[0].local_id,
            &case.hub[0].local_id,
        )
        .context("making the case's certificates with pki")?;
    }
    let mut site = Charon::start_with(&lab.site_ns, &lab.site_dir(), &case.site_charon)
        .context("starting the site's charon")?;
    site.load(&case.site).context("site")?;
    let mut hub = Hub::start(kind, lab, &case.hub, &case.hub_ike)?;

    let mut said = String::new();
    match case.flow {
        Flow::SiteInitiates => initiate_all(case, &site, &mut said)?,
        Flow::HubInitiates if matches!(case.expect, Expect::Refused { .. }) => {
            // No `swanctl --initiate` to read the refusal from: wait for the
            // hub to count it, then take the site's log as what it was told.
            let Expect::Refused {
                counter: name, min, ..
            } = &case.expect
            else {
                unreachable!()
            };
            lab::eventually(Duration::from_secs(20), || {
                let st = hub.status()?;
                let counters = st
                    .counters
                    .as_ref()
                    .ok_or_else(|| anyhow!("the hub has no counters"))?;
                let n = counter(counters, name)?;
                ensure!(
                    n >= *min,
                    "hub counter {name} = {n} after 20 s, expected >= {min}"
                );
                Ok(())
            })?;
            said = std::fs::read_to_string(site.log()).unwrap_or_default();
        }
        Flow::HubInitiates => {
            lab::eventually(Duration::from_secs(20), || {
                let sas = site.list_sas()?;
                for c in &case.site {
                    let up = sas.iter().any(|sa| {
                        sa.conn == c.name
                            && sa.state == "ESTABLISHED"
                            && sa.children.iter().any(|ch| ch.state == "INSTALLED")
                    });
                    ensure!(up, "the hub never brought up `{}` (site has no established IKE SA with an installed child after 20 s)", c.name);
                }
                Ok(())
            })?;
        }
        Flow::Rekey { ike, within } => {
            initiate_all(case, &site, &mut said)?;
            // Only "up" before the rekey: with PFS the first child has no
            // group yet, so the expectation describes the rekeyed one.
            let first = lab::eventually(Duration::from_secs(8), || {
                let sas = site.list_sas()?;
                ensure!(
                    sas.iter().any(|s| s.state == "ESTABLISHED"
                        && s.children.iter().any(|c| c.state == "INSTALLED")),
                    "the tunnel did not come up"
                );
                Ok(sas)
            })
            .context("before the rekey")?;
            let before = first.first().cloned().context("no IKE SA on the site")?;
            lab::eventually(within, || {
                let now = site.list_sas()?;
                let sa = now
                    .iter()
                    .find(|s| s.conn == before.conn)
                    .ok_or_else(|| anyhow!("the site lost its IKE SA"))?;
                if ike {
                    ensure!(
                        sa.spi_i != before.spi_i,
                        "the IKE SA was not rekeyed (same SPIs)"
                    );
                } else {
                    ensure!(
                        !sa.children.is_empty()
                            && sa
                                .children
                                .iter()
                                .all(|c| before.children.iter().all(|b| b.spi_in != c.spi_in)),
                        "the child SA was not rekeyed (same SPIs)"
                    );
                }
                check(case, &now, &hub.status()?, hub.typed_ids(), &said)
            })
            .context("after the rekey")?;
        }
        Flow::Idle(idle) => {
            initiate_all(case, &site, &mut said)?;
            wait_up(case, &site, &mut hub, &said)?;
            std::thread::sleep(idle);
        }
        Flow::SiteDeletes => {
            initiate_all(case, &site, &mut said)?;
            wait_up(case, &site, &mut hub, &said)?;
            let name = &case.site[0].name;
            let out = site.swanctl(&["--terminate", "--ike", name], Duration::from_secs(10))?;
            ensure!(
                out.success(),
                "swanctl --terminate failed: {}",
                one_line(&out.text)
            );
            return lab::eventually(Duration::from_secs(8), || {
                ensure!(site.list_sas()?.is_empty(), "the site still lists SAs");
                hub_empty(&hub.status()?)
            })
            .context("after the site deleted the IKE SA");
        }
        Flow::HubDeletes { ike } => {
            initiate_all(case, &site, &mut said)?;
            wait_up(case, &site, &mut hub, &said)?;
            hub.act("terminate", &case.hub[0].id, ike)?;
            return lab::eventually(Duration::from_secs(8), || {
                let sas = site.list_sas()?;
                let st = hub.status()?;
                if ike {
                    ensure!(sas.is_empty(), "the site still lists SAs");
                    hub_empty(&st)
                } else {
                    only_ike_left(&sas, &st)
                }
            })
            .context("after anyhubctl terminate");
        }
        Flow::SiteDeletesChild => {
            initiate_all(case, &site, &mut said)?;
            wait_up(case, &site, &mut hub, &said)?;
            let name = &case.site[0].child;
            let out = site.swanctl(&["--terminate", "--child", name], Duration::from_secs(10))?;
            ensure!(
                out.success(),
                "swanctl --terminate --child failed: {}",
                one_line(&out.text)
            );
            return lab::eventually(Duration::from_secs(8), || {
                only_ike_left(&site.list_sas()?, &hub.status()?)
            })
            .context("after the site deleted the child SA");
        }
        Flow::CookieFlood { count, rate } => {
            let pid = match &hub {
                Hub::Anyhub(a) => a.pid(),
                Hub::Swan(_) => bail!("the stand-in hub cannot play the flood case"),
            };
            // Replies to the spoofed sources go back towards the site (which
            // drops them), as they would into the Internet.
            lab::default_route(&lab.hub_ns, SITE_ADDR)?;
            let rss_before = lab::rss_kib(pid)?;
            let ns = lab.site_ns.clone();
            let target: std::net::SocketAddr = format!("{HUB_ADDR}:500").parse()?;
            let flooder = std::thread::spawn(move || {
                crate::flood::flood(&ns, target, count, rate, Duration::from_secs(30))
            });
            // Let the flood fill the half-open table first.
            std::thread::sleep(Duration::from_secs(1));
            initiate_all(case, &site, &mut said)?;
            let mut max_half_open = 0;
            while !flooder.is_finished() {
                if let Some(c) = hub.status()?.counters {
                    max_half_open = max_half_open.max(counter(&c, "half_open")?);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let sent = flooder
                .join()
                .map_err(|_| anyhow!("the flood thread panicked"))??;
            let rss_after = lab::rss_kib(pid)?;
            let st = hub.status()?;
            let c = st.counters.clone().unwrap_or_default();
            let threshold = 32;
            ensure!(
                sent.packets >= count * 9 / 10,
                "the flood sent only {} of {count} ({} errors)",
                sent.packets,
                sent.errors
            );
            ensure!(
                max_half_open <= threshold + 1,
                "half-open SAs reached {max_half_open} during the flood (cookie threshold {threshold})"
            );
            let cookies = counter(&c, "cookies_sent")?;
            ensure!(
                cookies >= sent.packets / 2,
                "only {cookies} cookies for {} spoofed requests",
                sent.packets
            );
            let grown = rss_after.saturating_sub(rss_before);
            ensure!(
                grown < 32 * 1024,
                "anyhubd grew by {grown} KiB during the flood"
            );
            eprintln!(
                "    flood: {} spoofed IKE_SA_INIT, {cookies} cookies, max {max_half_open} half-open, RSS {rss_before} -> {rss_after} KiB",
                sent.packets
            );
        }
        Flow::SimultaneousRekey { ike } => {
            initiate_all(case, &site, &mut said)?;
            let before = wait_up(case, &site, &mut hub, &said)?;
            let before = before.first().cloned().context("no IKE SA on the site")?;
            // The hub's request is lost on the way and retransmitted: it
            // reaches the site while the site's own request is in flight,
            // and the site's reaches the hub while the hub's is.
            lab::block_from(&lab.site_ns, HUB_ADDR)?;
            let acted = (|| {
                hub.act("rekey", &case.hub[0].id, ike)?;
                let (flag, name) = if ike {
                    ("--ike", &case.site[0].name)
                } else {
                    ("--child", &case.site[0].child)
                };
                let out = site.swanctl(&["--rekey", flag, name], Duration::from_secs(10))?;
                ensure!(
                    out.success(),
                    "swanctl --rekey failed: {}",
                    one_line(&out.text)
                );
                std::thread::sleep(Duration::from_millis(300));
                Ok(())
            })();
            lab::unblock(&lab.site_ns)?;
            acted?;
            // Long enough for a redundant IKE SA the site never completed to
            // be deleted by the hub (5 s grace, then its DELETE times out).
            lab::eventually(Duration::from_secs(30), || {
                let now = site.list_sas()?;
                let sa = now
                    .iter()
                    .find(|s| s.conn == before.conn)
                    .ok_or_else(|| anyhow!("the site lost its IKE SA"))?;
                if ike {
                    ensure!(
                        sa.spi_i != before.spi_i || sa.spi_r != before.spi_r,
                        "the IKE SA was not rekeyed"
                    );
                } else {
                    ensure!(
                        sa.children
                            .iter()
                            .all(|c| before.children.iter().all(|b| b.spi_in != c.spi_in)),
                        "the child SA was not rekeyed"
                    );
                }
                let st = hub.status()?;
                check(case, &now, &st, hub.typed_ids(), &said)?;
                if let Some(counters) = &st.counters {
                    let n = counter(counters, "rekey_collisions")?;
                    ensure!(
                        n >= 1,
                        "the hub saw no rekey collision (rekey_collisions = {n})"
                    );
                }
                Ok(())
            })
            .context("after the colliding rekeys")?;
        }
        Flow::SiteVanishes(within) => {
            initiate_all(case, &site, &mut said)?;
            wait_up(case, &site, &mut hub, &said)?;
            site.kill_hard();
            return lab::eventually(within, || hub_empty(&hub.status()?))
                .context("after the site vanished");
        }
        Flow::NatMappingChange { before } => {
            nat::mapping_change(case, before, lab, &site, &mut hub, &mut said)?
        }
        Flow::SiteRestarts => {
            initiate_all(case, &site, &mut said)?;
            let first = lab::eventually(Duration::from_secs(8), || {
                check(
                    case,
                    &site.list_sas()?,
                    &hub.status()?,
                    hub.typed_ids(),
                    &said,
                )?;
                site.list_sas()
            })
            .context("before the restart")?;
            site.restart_hard()
                .context("restarting the site's charon")?;
            site.load(&case.site).context("site after restart")?;
            said.clear();
            initiate_all(case, &site, &mut said).context("after the restart")?;
            ensure!(
                said.contains("N(INIT_CONTACT)"),
                "the restarted charon sent no INITIAL_CONTACT (swanctl --initiate shows no N(INIT_CONTACT)); the case proves nothing"
            );
            let now = site.list_sas()?;
            for sa in &first {
                ensure!(
                    !now.iter().any(|n| n.spi_i == sa.spi_i),
                    "the restarted charon still lists the old IKE SA {:016x}",
                    sa.spi_i
                );
            }
        }
    }

    let verdict =
        verify(case, &mut site, &mut hub, &said).and_then(|()| match (case.traffic, &mut hub) {
            (Some(t), Hub::Anyhub(a)) => {
                crate::traffic::run(t, lab, &site, a).with_context(|| format!("traffic ({t:?})"))
            }
            (Some(_), Hub::Swan(_)) => bail!("the stand-in hub has no [dataplane]"),
            (None, _) => Ok(()),
        });
    if show && verdict.is_ok() && case.traffic.is_some() {
        let (src, dst) = (SITE_INNER.to_string(), HUB_INNER.to_string());
        println!("== site (strongSwan): ping -I {src} {dst}, through the tunnel to anyhubd ==");
        let mut ping = std::process::Command::new("ip");
        ping.args([
            "netns",
            "exec",
            &lab.site_ns,
            "ping",
            "-n",
            "-c",
            "3",
            "-i",
            "0.3",
        ])
        .args(["-I", &src, &dst]);
        match lab::run(&mut ping, Duration::from_secs(10)) {
            Ok(o) => println!("{}", o.text.trim_end()),
            Err(e) => println!("({e:#})"),
        }
    }
    if show {
        println!("== site (strongSwan): swanctl --list-sas ==");
        match site.list_sas_text() {
            Ok(t) => println!("{}", t.trim_end()),
            Err(e) => println!("({e:#})"),
        }
        println!("== hub (anyhubd): anyhubctl status ==");
        match hub.status_text() {
            Ok(t) => println!("{}", t.trim_end()),
            Err(e) => println!("({e:#})"),
        }
    }
    verdict
}

/// Waits until both sides agree the case is up; returns the site's SAs.
fn wait_up(case: &Case, site: &Charon, hub: &mut Hub, said: &str) -> Result<Vec<SwanIkeSa>> {
    lab::eventually(Duration::from_secs(8), || {
        let sas = site.list_sas()?;
        check(case, &sas, &hub.status()?, hub.typed_ids(), said)?;
        Ok(sas)
    })
}

/// Both sides still hold the IKE SA, and neither holds a child SA.
fn only_ike_left(site: &[SwanIkeSa], hub: &HubStatus) -> Result<()> {
    ensure!(
        site.len() == 1 && site[0].state == "ESTABLISHED",
        "the site should keep its IKE SA, it lists {}",
        site.len()
    );
    ensure!(
        site[0].children.iter().all(|c| c.state != "INSTALLED"),
        "the site still has an installed child SA"
    );
    ensure!(
        hub.ike_sas.len() == 1 && hub.child_sas.is_empty(),
        "the hub should hold 1 IKE SA and no child SA: {}",
        describe_hub(hub)
    );
    Ok(())
}

/// The hub holds no SA at all.
fn hub_empty(hub: &HubStatus) -> Result<()> {
    ensure!(
        hub.ike_sas.is_empty() && hub.child_sas.is_empty(),
        "anyhubd still holds {} IKE SA(s) and {} child SA(s)",
        hub.ike_sas.len(),
        hub.child_sas.len()
    );
    Ok(())
}

/// `swanctl --initiate` every site connection. For an `Up` case an initiate
/// failure is the verdict; otherwise the output is kept for the checks.
fn initiate_all(case: &Case, site: &Charon, said: &mut String) -> Result<()> {
    for c in &case.site {
        let out = site.initiate(&c.name, &c.child)?;
        said.push_str(&out.text);
        if matches!(case.expect, Expect::Up(_)) && !out.success() {
            bail!(
                "swanctl --initiate {} failed: {}",
                c.name,
                initiate_reason(&out.text)
            );
        }
    }
    Ok(())
}

/// The telling lines of a failed `swanctl --initiate`.
fn initiate_reason(text: &str) -> String {
    const TELLING: [&str; 6] = [
        "notify error",
        "notify, no CHILD_SA built",
        "giving up after",
        "unable to",
        "failed to",
        "not found",
    ];
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| TELLING.iter().any(|t| l.contains(t)))
        .collect();
    if lines.is_empty() {
        text.lines()
            .last()
            .unwrap_or("(no output)")
            .trim()
            .to_string()
    } else {
        lines.join("; ")
    }
}

fn verify(case: &Case, site: &mut Charon, hub: &mut Hub, said: &str) -> Result<()> {
    let typed = hub.typed_ids();
    let window = match case.expect {
        Expect::Refused { .. } => Duration::from_secs(5),
        _ => Duration::from_secs(8),
    };
    lab::eventually(window, || {
        site.alive()?;
        check(case, &site.list_sas()?, &hub.status()?, typed, said)
    })?;
    if let Some(counters) = hub.status()?.counters {
        for (name, min) in &case.hub_counters_min {
            let n = counter(&counters, name)?;
            ensure!(
                n >= *min,
                "hub counter {name} = {n}, expected at least {min}"
            );
        }
    }
    if !case.site_log.is_empty() {
        let log = std::fs::read_to_string(site.log()).unwrap_or_default();
        for evidence in &case.site_log {
            ensure!(
                log.contains(evidence.as_str()),
                "site log lacks {evidence:?}: the case did not exercise what it is named for"
            );
        }
    }
    nat::absent_in_site_log(case, site)?;
    Ok(())
}

/// One check of both sides against the expectation.
fn check(
    case: &Case,
    site: &[SwanIkeSa],
    hub: &HubStatus,
    typed_ids: bool,
    said: &str,
) -> Result<()> {
    match &case.expect {
        Expect::Up(ups) => {
            for (i, up) in ups.iter().enumerate() {
                check_tunnel(case, i, up, site, hub, typed_ids, true)?;
            }
            if let Some(expect) = &case.nat {
                nat::check_nat(case, expect, site, hub, typed_ids)?;
            }
            ensure!(
                hub.ike_sas.len() == ups.len(),
                "hub lists {} IKE SAs, expected {}: {}",
                hub.ike_sas.len(),
                ups.len(),
                describe_hub(hub)
            );
            ensure!(
                hub.child_sas.len() == ups.len(),
                "hub lists {} child SAs, expected {}: {}",
                hub.child_sas.len(),
                ups.len(),
                describe_hub(hub)
            );
            Ok(())
        }
        Expect::IkeUpChildDeleted(up) => {
            check_tunnel(case, 0, up, site, hub, typed_ids, false)?;
            if let Some(counters) = &hub.counters {
                let n = counter(counters, "child_sa_established")?;
                ensure!(n >= 1, "hub counter child_sa_established = {n}, expected >= 1 (the child was negotiated)");
            }
            Ok(())
        }
        Expect::Refused {
            notify,
            counter: name,
            min,
            max,
        } => {
            ensure!(
                said.contains(notify),
                "expected strongSwan to receive {notify}; swanctl --initiate said: {}",
                initiate_reason(said)
            );
            if let Some(sa) = site.iter().find(|sa| sa.state == "ESTABLISHED") {
                bail!(
                    "site has an established IKE SA `{}` although {notify} was expected",
                    sa.conn
                );
            }
            if let Some(sa) = site.iter().find(|sa| !sa.children.is_empty()) {
                bail!(
                    "site has a child SA under `{}` although {notify} was expected",
                    sa.conn
                );
            }
            if let Some(sa) = hub
                .ike_sas
                .iter()
                .find(|sa| sa.state.eq_ignore_ascii_case("established"))
            {
                bail!(
                    "hub has an established IKE SA on tunnel `{}` although {notify} was expected",
                    sa.tunnel
                );
            }
            if let Some(c) = hub.child_sas.first() {
                bail!(
                    "hub has a child SA on tunnel `{}` although {notify} was expected",
                    c.tunnel
                );
            }
            if let Some(counters) = &hub.counters {
                let n = counter(counters, name)?;
                ensure!(
                    (*min..=*max).contains(&n),
                    "hub counter {name} = {n}, expected {}",
                    if min == max {
                        format!("{min}")
                    } else {
                        format!(">= {min}")
                    }
                );
            }
            Ok(())
        }
    }
}

fn counter(counters: &std::collections::BTreeMap<String, u64>, name: &str) -> Result<u64> {
    counters
        .get(name)
        .copied()
        .ok_or_else(|| anyhow!("hub status has no counter `{name}`"))
}

/// Site connection `i` ↔ hub tunnel `i`: one established IKE SA on each
/// side with equal SPIs and the expected proposal, roles and IDs; with
/// `child`, exactly one child on each side with crossed SPIs, the expected
/// proposal and selectors; without, no child on either side.
fn check_tunnel(
    case: &Case,
    i: usize,
    up: &Up,
    site: &[SwanIkeSa],
    hub: &HubStatus,
    typed_ids: bool,
    child: bool,
) -> Result<()> {
    let conn = &case.site[i];
    let tunnel = &case.hub[i];
    let ike = canonical_proposal(&up.ike, true)?;
    let esp = canonical_proposal(&up.esp, false)?;
    let hub_initiates = case.flow == Flow::HubInitiates;

    // Site side.
    let mine: Vec<&SwanIkeSa> = site.iter().filter(|sa| sa.conn == conn.name).collect();
    let [sa] = mine.as_slice() else {
        bail!(
            "site: {} IKE SAs for `{}` ({}), expected exactly one",
            mine.len(),
            conn.name,
            mine.iter()
                .map(|s| s.state.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    ensure!(
        sa.state == "ESTABLISHED",
        "site: IKE SA `{}` is {}",
        conn.name,
        sa.state
    );
    ensure!(
        sa.proposal == ike,
        "site: IKE proposal {} != expected {ike}",
        sa.proposal
    );
    // After an IKE SA rekey, whoever rekeyed is the new SA's original
    // initiator (RFC 7296 §2.18): roles may have swapped; both sides must
    // still agree on them.
    let roles_may_swap = matches!(
        case.flow,
        Flow::Rekey { ike: true, .. } | Flow::SimultaneousRekey { ike: true }
    );
    let hub_initiates = if roles_may_swap {
        !sa.initiator
    } else {
        hub_initiates
    };
    ensure!(
        sa.initiator != hub_initiates,
        "site: IKE SA `{}` has strongSwan as {}",
        conn.name,
        if sa.initiator {
            "initiator"
        } else {
            "responder"
        }
    );
    let site_id = IkeId::parse(&conn.local_id)?;
    ensure!(
        sa.local_id == site_id.strongswan_display(),
        "site: local id {:?} != configured {:?}",
        sa.local_id,
        conn.local_id
    );
    let hub_id = IkeId::parse(&tunnel.local_id)?.strongswan_display();
    ensure!(
        sa.remote_id == hub_id,
        "site: remote id {:?} != hub's local id {hub_id:?}",
        sa.remote_id
    );
    let children: Vec<_> = sa
        .children
        .iter()
        .filter(|c| c.state == "INSTALLED")
        .collect();

    // Hub side.
    let theirs: Vec<&HubIkeSa> = hub
        .ike_sas
        .iter()
        .filter(|s| s.tunnel == tunnel.id)
        .collect();
    let [hsa] = theirs.as_slice() else {
        bail!(
            "hub: {} IKE SAs on tunnel `{}`, expected exactly one: {}",
            theirs.len(),
            tunnel.id,
            describe_hub(hub)
        );
    };
    ensure!(
        hsa.state.eq_ignore_ascii_case("established"),
        "hub: IKE SA on `{}` is {:?}",
        tunnel.id,
        hsa.state
    );
    ensure!(
        (hsa.spi_i, hsa.spi_r) == (sa.spi_i, sa.spi_r),
        "hub: IKE SPIs {:016x}/{:016x} != site's {:016x}/{:016x}",
        hsa.spi_i,
        hsa.spi_r,
        sa.spi_i,
        sa.spi_r
    );
    ensure!(
        hsa.proposal == ike,
        "hub: IKE proposal {} != expected {ike}",
        hsa.proposal
    );
    ensure!(
        hsa.initiator == hub_initiates,
        "hub: initiator = {} on `{}`, expected {hub_initiates}",
        hsa.initiator,
        tunnel.id
    );
    let id_ok = if typed_ids {
        IkeId::parse(&hsa.remote_id).ok() == Some(site_id.clone())
    } else {
        hsa.remote_id == site_id.strongswan_display()
    };
    ensure!(
        id_ok,
        "hub: remote_id {:?} does not match the site's id {:?}",
        hsa.remote_id,
        conn.local_id
    );
    let hub_children: Vec<&HubChildSa> = hub
        .child_sas
        .iter()
        .filter(|c| c.tunnel == tunnel.id)
        .collect();

    if !child {
        ensure!(
            children.is_empty(),
            "site: child SA {:08x} installed, expected none",
            children[0].spi_in
        );
        ensure!(
            hub_children.is_empty(),
            "hub: child SA {:08x} on `{}` still listed after the site deleted it",
            hub_children[0].spi_in,
            tunnel.id
        );
        return Ok(());
    }
    let [c] = children.as_slice() else {
        bail!(
            "site: {} installed child SAs under `{}`, expected one",
            children.len(),
            conn.name
        );
    };
    ensure!(
        c.name == conn.child,
        "site: child is `{}`, expected `{}`",
        c.name,
        conn.child
    );
    ensure!(
        c.proposal == esp,
        "site: ESP proposal {} != expected {esp}",
        c.proposal
    );
    ensure!(
        c.local_ts == up.local_ts,
        "site: child local_ts {:?} != expected {:?}",
        c.local_ts,
        up.local_ts
    );
    ensure!(
        c.remote_ts == up.remote_ts,
        "site: child remote_ts {:?} != expected {:?}",
        c.remote_ts,
        up.remote_ts
    );
    let [hc] = hub_children.as_slice() else {
        bail!(
            "hub: {} child SAs on tunnel `{}`, expected one: {}",
            hub_children.len(),
            tunnel.id,
            describe_hub(hub)
        );
    };
    ensure!(
        (hc.spi_in, hc.spi_out) == (c.spi_out, c.spi_in),
        "hub: child spi_in/spi_out {:08x}/{:08x} != site's out/in {:08x}/{:08x}",
        hc.spi_in,
        hc.spi_out,
        c.spi_out,
        c.spi_in
    );
    ensure!(
        hc.proposal == esp,
        "hub: ESP proposal {} != expected {esp}",
        hc.proposal
    );
    ensure!(
        hc.local_ts == up.remote_ts,
        "hub: child local_ts {:?} != expected {:?}",
        hc.local_ts,
        up.remote_ts
    );
    ensure!(
        hc.remote_ts == up.local_ts,
        "hub: child remote_ts {:?} != expected {:?}",
        hc.remote_ts,
        up.local_ts
    );
    Ok(())
}

fn describe_hub(hub: &HubStatus) -> String {
    let ike: Vec<String> = hub
        .ike_sas
        .iter()
        .map(|s| {
            format!(
                "{}:{:016x}_i/{:016x}_r:{}",
                s.tunnel, s.spi_i, s.spi_r, s.state
            )
        })
        .collect();
    let child: Vec<String> = hub
        .child_sas
        .iter()
        .map(|c| format!("{}:{:08x}_in/{:08x}_out", c.tunnel, c.spi_in, c.spi_out))
        .collect();
    format!(
        "ike_sas [{}] child_sas [{}]",
        ike.join(", "),
        child.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        let cases = all();
        let mut names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate case names");
        assert!(n >= 33, "{n} cases");
        for c in &cases {
            if let Expect::Up(ups) = &c.expect {
                assert_eq!(ups.len(), c.site.len(), "{}", c.name);
                assert_eq!(c.hub.len(), c.site.len(), "{}", c.name);
                for up in ups {
                    canonical_proposal(&up.ike, true).unwrap();
                    canonical_proposal(&up.esp, false).unwrap();
                }
            }
            for conn in &c.site {
                IkeId::parse(&conn.local_id).unwrap();
                IkeId::parse(&conn.remote_id).unwrap();
            }
        }
    }

    use crate::strongswan::SwanChildSa;

    fn case(name: &str) -> Case {
        all().into_iter().find(|c| c.name == name).unwrap()
    }

    /// A consistent picture of `ike-aes256gcm16-prfsha256-x25519` once up.
    fn up_state() -> (Vec<SwanIkeSa>, serde_json::Value) {
        let site = vec![SwanIkeSa {
            conn: "site".into(),
            state: "ESTABLISHED".into(),
            initiator: true,
            spi_i: 0x1111,
            spi_r: 0x2222,
            local_id: "site.example.net".into(),
            remote_id: "hub.example.net".into(),
            proposal: "AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519".into(),
            children: vec![SwanChildSa {
                name: "site".into(),
                state: "INSTALLED".into(),
                spi_in: 0xc1,
                spi_out: 0xc2,
                proposal: "AES_GCM_16-256".into(),
                local_ts: strings(&[SITE_TS]),
                remote_ts: strings(&[HUB_TS]),
                encap: true,
            }],
            local: None,
            remote: None,
            nat_local: false,
            nat_remote: false,
        }];
        let hub = serde_json::json!({
            "ike_sas": [{"tunnel": "site-a", "spi_i": "0000000000001111", "spi_r": "0000000000002222",
                "initiator": false, "state": "established", "remote_id": "fqdn:site.example.net",
                "proposal": "aes256gcm16-prfsha256-x25519"}],
            "child_sas": [{"tunnel": "site-a", "spi_in": "000000c2", "spi_out": "000000c1",
                "proposal": "aes256gcm16", "local_ts": [HUB_TS], "remote_ts": [SITE_TS]}],
            "counters": {"auth_failed": 0, "no_proposal_chosen": 0, "child_sa_established": 1}
        });
        (site, hub)
    }

    fn check_json(c: &Case, site: &[SwanIkeSa], hub: &serde_json::Value, said: &str) -> Result<()> {
        check(c, site, &HubStatus::from_json(hub).unwrap(), true, said)
    }

    #[test]
    fn up_check_passes_on_a_consistent_picture() {
        let (site, hub) = up_state();
        check_json(&case("ike-aes256gcm16-prfsha256-x25519"), &site, &hub, "").unwrap();
    }

    /// Every kind of disagreement between the sides must fail the case.
    #[test]
    fn up_check_fails_on_each_disagreement() {
        let c = case("ike-aes256gcm16-prfsha256-x25519");
        type Mutation = fn(&mut Vec<SwanIkeSa>, &mut serde_json::Value);
        let mutations: [(&str, Mutation); 11] = [
            ("spi_in/spi_out", |_, h| {
                h["child_sas"][0]["spi_in"] = "000000c1".into()
            }),
            ("IKE SPIs", |_, h| {
                h["ike_sas"][0]["spi_r"] = "0000000000003333".into()
            }),
            ("hub: IKE proposal", |_, h| {
                h["ike_sas"][0]["proposal"] = "aes128gcm16-prfsha256-x25519".into()
            }),
            ("hub: ESP proposal", |_, h| {
                h["child_sas"][0]["proposal"] = "aes128gcm16".into()
            }),
            ("remote_id", |_, h| {
                h["ike_sas"][0]["remote_id"] = "fqdn:other.example.net".into()
            }),
            ("initiator", |_, h| {
                h["ike_sas"][0]["initiator"] = true.into()
            }),
            ("\"connecting\"", |_, h| {
                h["ike_sas"][0]["state"] = "connecting".into()
            }),
            ("0 child SAs", |_, h| h["child_sas"] = serde_json::json!([])),
            ("child local_ts", |_, h| {
                h["child_sas"][0]["local_ts"] = serde_json::json!(["10.20.0.0/16"])
            }),
            ("2 IKE SAs", |_, h| {
                let dup = h["ike_sas"][0].clone();
                h["ike_sas"].as_array_mut().unwrap().push(dup);
            }),
            ("site: ESP proposal", |s, _| {
                s[0].children[0].proposal = "AES_CBC-256".into()
            }),
        ];
        for (expect, mutate) in mutations {
            let (mut site, mut hub) = up_state();
            mutate(&mut site, &mut hub);
            let err = check_json(&c, &site, &hub, "")
                .expect_err(expect)
                .to_string();
            assert!(err.contains(expect), "{expect:?} not in {err:?}");
        }
    }

    #[test]
    fn refusal_check() {
        let c = case("wrong-psk");
        let said = "[IKE] received AUTHENTICATION_FAILED notify error";
        let none = serde_json::json!({"ike_sas": [], "child_sas": [],
            "counters": {"auth_failed": 1, "no_proposal_chosen": 0}});
        check_json(&c, &[], &none, said).unwrap();
        let err = check_json(&c, &[], &none, "initiate completed successfully").unwrap_err();
        assert!(err
            .to_string()
            .contains("expected strongSwan to receive AUTHENTICATION_FAILED"));
        let mut zero = none.clone();
        zero["counters"]["auth_failed"] = 0.into();
        let err = check_json(&c, &[], &zero, said).unwrap_err();
        assert!(err.to_string().contains("auth_failed = 0"), "{err}");
        let (site, hub) = up_state();
        assert!(check_json(&c, &site, &none, said).is_err());
        let mut hub = hub;
        hub["counters"]["auth_failed"] = 1.into();
        assert!(check_json(&c, &[], &hub, said).is_err());
    }

    #[test]
    fn narrowed_selectors_get_an_inner_address() {
        let ts = strings(&["10.10.0.0/16", "10.10.1.0/24"]);
        assert_eq!(
            inner_addrs(SITE_INNER, ts.iter()),
            [Ipv4Addr::new(10, 10, 1, 1)]
        );
    }
}
