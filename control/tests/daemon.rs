//! The real `anyhubd` and `anyhubctl` binaries on loopback.
//!
//! Ports are 15000 + (pid % 2000) × 8 + slot, so parallel runs of this test
//! binary do not collide; each test uses its own slots. Status sockets live
//! in a per-test temporary directory.

use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const ANYHUBD: &str = env!("CARGO_BIN_EXE_anyhubd");
const ANYHUBCTL: &str = env!("CARGO_BIN_EXE_anyhubctl");

fn port(slot: u16) -> u16 {
    15_000 + (std::process::id() % 2000) as u16 * 8 + slot
}

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("anyhub-daemon-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running anyhubd, killed if the test fails before stopping it.
struct Daemon {
    name: String,
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Writes `config` to `dir/name.toml`, starts anyhubd on it and waits
    /// until its status socket answers.
    fn start(dir: &Path, name: &str, config: &str) -> Daemon {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(ANYHUBD)
            .arg("--config")
            .arg(&config_path)
            .args(["--log-level", "debug"])
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            name: name.into(),
            child,
            socket: dir.join(format!("{name}.sock")),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(exit) = d.child.try_wait().unwrap() {
                panic!("{name} exited early ({exit}):\n{}", d.log());
            }
            if d.ctl(&["status", "--json"]).status.success() {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "{name}'s status socket never answered:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(ANYHUBCTL)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    fn status(&self) -> Value {
        let out = self.ctl(&["status", "--json"]);
        assert!(
            out.status.success(),
            "anyhubctl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            text.lines().count(),
            1,
            "one JSON object on one line: {text}"
        );
        serde_json::from_str(&text).unwrap()
    }

    /// SIGTERM, then a clean exit that removes the status socket.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let exit = loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                break exit;
            }
            assert!(Instant::now() < deadline, "{} ignored SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            exit.success(),
            "{} exited with {exit}:\n{}",
            self.name,
            self.log()
        );
        assert!(
            !self.socket.exists(),
            "{} left its status socket behind",
            self.name
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, name: &str, index: u16, port: u16, tunnel: &str) -> String {
    format!(
        r#"
[node]
index = {index}
name = "{name}"

[ike]
listen = ["127.0.0.1"]
port = {port}
natt_port = {natt}
status_socket = "{socket}"
{tunnel}
"#,
        natt = port + 1,
        socket = dir.join(format!("{name}.sock")).display(),
    )
}

const RESPONDER_TUNNEL: &str = r#"
[[tunnel]]
id = "site-a"
local_id = "hub.example.net"
remote_id = "site-a.example.net"
psk = "a long secret"
local_ts = ["10.20.0.0/24"]
remote_ts = ["10.10.0.0/24"]
"#;

#[test]
fn status_over_the_socket() {
    let dir = TempDir::new("status");
    let d = Daemon::start(
        &dir.0,
        "edge7",
        &config(&dir.0, "edge7", 7, port(0), RESPONDER_TUNNEL),
    );

    let s = d.status();
    assert_eq!(s["node"], serde_json::json!({"index": 7, "name": "edge7"}));
    assert_eq!(s["ike_sas"], serde_json::json!([]));
    assert_eq!(s["child_sas"], serde_json::json!([]));
    for k in [
        "rx_datagrams",
        "rx_malformed",
        "rx_dropped",
        "auth_failed",
        "no_proposal_chosen",
        "ike_sa_established",
        "child_sa_established",
    ] {
        assert_eq!(s["counters"][k], 0, "counter {k}: {s}");
    }

    let human = d.ctl(&["status"]);
    assert!(human.status.success());
    let human = String::from_utf8(human.stdout).unwrap();
    assert!(
        human.starts_with("edge7 (node 7): 0 IKE SAs, 0 child SAs\n"),
        "{human}"
    );

    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&d.socket).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(!d.log().contains("a long secret"), "the PSK was logged");
    d.stop();
}

#[test]
fn anyhubctl_without_a_daemon() {
    let out = Command::new(ANYHUBCTL)
        .args(["--socket", "/nonexistent/anyhubd.sock", "status", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/nonexistent/anyhubd.sock") && err.contains("is anyhubd running?"),
        "{err}"
    );
}

#[test]
fn check_validates_the_config() {
    let dir = TempDir::new("check");
    let check = |text: &str| {
        let path = dir.0.join("anyhubd.toml");
        std::fs::write(&path, text).unwrap();
        Command::new(ANYHUBD)
            .arg("--config")
            .arg(&path)
            .arg("--check")
            .output()
            .unwrap()
    };
    let good = config(&dir.0, "edge1", 1, port(7), RESPONDER_TUNNEL);
    let out = check(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = good.replace(
        "remote_ts = [\"10.10.0.0/24\"]",
        "remote_ts = [\"10.10.0.0/24\"]\nesp_proposals = [\"aes999\"]",
    );
    let out = check(&bad);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("anyhubd.toml: tunnel[0] (site-a).esp_proposals[0]: unknown or unsupported algorithm 'aes999'"),
        "{err}"
    );
    assert!(!err.contains("a long secret"), "{err}");
    assert!(
        !dir.0.join("edge1.sock").exists(),
        "--check must not start anything"
    );

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/anyhubd.toml");
    let out = Command::new(ANYHUBD)
        .arg("--config")
        .arg(&example)
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two anyhubd on loopback, B initiating to A on A's (non-500) port.
#[test]
fn two_nodes_establish_a_tunnel() {
    let dir = TempDir::new("pair");
    let (port_a, port_b) = (port(2), port(4));
    let tunnel_a = r#"
[[tunnel]]
id = "to-b"
local_id = "a.example.net"
remote_id = "b.example.net"
psk = "shared pair secret"
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24"]
"#;
    let tunnel_b = format!(
        r#"
[[tunnel]]
id = "to-a"
local_id = "b.example.net"
remote_id = "a.example.net"
psk = "shared pair secret"
local_ts = ["10.2.0.0/24"]
remote_ts = ["10.1.0.0/24"]
remote_address = "127.0.0.1:{port_a}"
initiate = true
"#
    );
    let a = Daemon::start(&dir.0, "a", &config(&dir.0, "a", 1, port_a, tunnel_a));
    let b = Daemon::start(&dir.0, "b", &config(&dir.0, "b", 2, port_b, &tunnel_b));

    let up = |s: &Value| {
        s["ike_sas"]
            .as_array()
            .is_some_and(|v| v.len() == 1 && v[0]["state"] == "established")
            && s["child_sas"].as_array().is_some_and(|v| v.len() == 1)
    };
    // Well under the 4 s retransmission timeout: the very first
    // IKE_SA_INIT must get through.
    let deadline = Instant::now() + Duration::from_secs(3);
    let (sa, sb) = loop {
        let (sa, sb) = (a.status(), b.status());
        if up(&sa) && up(&sb) {
            break (sa, sb);
        }
        assert!(
            Instant::now() < deadline,
            "no tunnel:\nA: {sa}\nB: {sb}\nA log:\n{}\nB log:\n{}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    let (ia, ib) = (&sa["ike_sas"][0], &sb["ike_sas"][0]);
    assert_eq!(
        (ia["tunnel"].as_str(), ib["tunnel"].as_str()),
        (Some("to-b"), Some("to-a"))
    );
    assert_eq!(
        (ia["initiator"].as_bool(), ib["initiator"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(ia["spi_i"], ib["spi_i"]);
    assert_eq!(ia["spi_r"], ib["spi_r"]);
    // Each node's index is in the high 12 bits of the SPIs it allocated.
    let spi_i = ia["spi_i"].as_str().unwrap();
    let spi_r = ia["spi_r"].as_str().unwrap();
    assert!(spi_i.len() == 16 && spi_i.starts_with("002"), "{spi_i}");
    assert!(spi_r.len() == 16 && spi_r.starts_with("001"), "{spi_r}");
    assert_eq!(ia["remote_id"], "fqdn:b.example.net");
    assert_eq!(ib["remote_id"], "fqdn:a.example.net");
    assert_eq!(ia["local"], format!("127.0.0.1:{port_a}"));
    assert_eq!(ia["remote"], format!("127.0.0.1:{port_b}"));
    assert_eq!(ia["proposal"], ib["proposal"]);
    assert!(ia["established_secs"].is_u64());

    let (ca, cb) = (&sa["child_sas"][0], &sb["child_sas"][0]);
    assert_eq!(ca["spi_in"], cb["spi_out"]);
    assert_eq!(ca["spi_out"], cb["spi_in"]);
    assert!(ca["spi_in"].as_str().unwrap().starts_with("001"), "{ca}");
    assert!(cb["spi_in"].as_str().unwrap().starts_with("002"), "{cb}");
    assert_eq!(ca["local_ts"], serde_json::json!(["10.1.0.0/24"]));
    assert_eq!(ca["remote_ts"], serde_json::json!(["10.2.0.0/24"]));
    assert_eq!(ca["local_ts"], cb["remote_ts"]);
    assert_eq!(ca["proposal"], cb["proposal"]);
    assert_eq!(ca["encap"], false, "no NAT on loopback");
    assert_eq!(sa["counters"]["ike_sa_established"], 1);
    assert_eq!(sb["counters"]["child_sa_established"], 1);

    for (d, s) in [(&a, &sa), (&b, &sb)] {
        let log = d.log();
        assert!(!log.contains("shared pair secret"), "the PSK was logged");
        assert!(
            log.contains("IKE SA established") && log.contains("child SA established"),
            "{log}"
        );
        assert_eq!(s["counters"]["tx_errors"], 0, "{log}");
        assert_eq!(s["counters"]["tx_unroutable"], 0, "{log}");
    }
    let human = String::from_utf8(a.ctl(&["status"]).stdout).unwrap();
    assert!(
        human.contains("to-b") && human.contains("established"),
        "{human}"
    );
    b.stop();
    a.stop();
}

/// `[sync]`: B (a site, no sync) initiates to A; A and C replicate over
/// their QUIC bus, so C, which never speaks IKE with B, lists A's child SA
/// within seconds, and drops it when A deletes the IKE SA. Each node has a
/// loopback address of its own (127.0.0.2..4), so the ports of the other
/// tests do not matter.
#[test]
fn sync_replicates_a_child_sa() {
    let dir = TempDir::new("sync");
    let fleet = dir.0.join("fleet");
    anyhub_sa_sync::fleet::init(&fleet).unwrap();
    anyhub_sa_sync::fleet::add_node(&fleet, 1, "a").unwrap();
    anyhub_sa_sync::fleet::add_node(&fleet, 3, "c").unwrap();
    let (ike, bus) = (port(2), port(6));
    let on = |cfg: String, ip: &str| cfg.replace("\"127.0.0.1\"", &format!("\"{ip}\""));
    let responder =
        |name: &str| RESPONDER_TUNNEL.replace("hub.example.net", &format!("{name}.example.net"));
    // Only the lower index dials (docs/sa-sync.md): A listens on any port,
    // C on a known one; C's entry for A is never dialled.
    let sync = |listen: String, peer: u16, address: String, bootstrap: bool| {
        format!(
            "\n[sync]\nlisten = \"{listen}\"\nfleet_dir = \"fleet\"\nbootstrap = {bootstrap}\n\
             peers = [{{ index = {peer}, address = \"{address}\" }}]\n"
        )
    };
    let a_cfg = on(config(&dir.0, "a", 1, ike, &responder("a")), "127.0.0.2")
        + &sync("127.0.0.2:0".into(), 3, format!("127.0.0.4:{bus}"), true);
    let c_cfg = on(config(&dir.0, "c", 3, ike, &responder("a")), "127.0.0.4")
        + &sync(format!("127.0.0.4:{bus}"), 1, "127.0.0.2:9".into(), false);
    let b_tunnel = format!(
        r#"
[[tunnel]]
id = "to-hub"
local_id = "site-a.example.net"
remote_id = "a.example.net"
psk = "a long secret"
local_ts = ["10.10.0.0/24"]
remote_ts = ["10.20.0.0/24"]
remote_address = "127.0.0.2:{ike}"
"#
    );
    let a = Daemon::start(&dir.0, "a", &a_cfg);
    let c = Daemon::start(&dir.0, "c", &c_cfg);
    let wait = |what: &str, secs: u64, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "{what}:\nA: {}\nC: {}\nA log:\n{}\nC log:\n{}",
                a.status(),
                c.status(),
                a.log(),
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("the bus never came up", 10, &|| {
        [&a, &c].iter().all(|d| {
            let s = d.status();
            s["sync"]["peers_connected"] == 1 && s["sync"]["caught_up"] == true
        })
    });
    let b = Daemon::start(
        &dir.0,
        "b",
        &on(config(&dir.0, "b", 2, ike, &b_tunnel), "127.0.0.3"),
    );
    assert!(
        b.status().get("sync").is_none(),
        "no [sync], no sync object"
    );
    assert!(b.ctl(&["initiate", "to-hub"]).status.success());
    // The site learns of its child SA from A's IKE_AUTH response, which A
    // holds until C has installed the SA (barrier "all", the default): so
    // the moment B lists it, C must hold it already — no waiting here.
    wait("no tunnel between B and A", 5, &|| {
        b.status()["child_sas"]
            .as_array()
            .is_some_and(|v| v.len() == 1)
    });
    let sc = c.status();
    let child = a.status()["child_sas"][0].clone();
    assert!(
        sc["child_sas"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x["spi_in"] == child["spi_in"])),
        "B uses the child SA before C holds it: the barrier did not hold A's response\nC: {sc}"
    );
    let sa = a.status();
    assert_eq!(sa["sync"]["barrier"], "all", "{sa}");
    assert_eq!(sa["sync"]["counters"]["barrier_reached"], 1, "{sa}");
    assert_eq!(sa["sync"]["counters"]["barrier_timed_out"], 0, "{sa}");
    assert!(
        sa["sync"]["counters"]["held_messages"].as_u64() >= Some(1),
        "the IKE_AUTH response was not held: {sa}"
    );
    let copy = &sc["child_sas"][0];
    for k in [
        "tunnel",
        "spi_out",
        "proposal",
        "local_ts",
        "remote_ts",
        "encap",
    ] {
        assert_eq!(copy[k], child[k], "{k}");
    }
    assert_eq!(sc["ike_sas"], serde_json::json!([]), "C speaks no IKE");
    assert!(
        sc["sync"]["counters"]["sad_applied"].as_u64() >= Some(1),
        "{sc}"
    );
    assert_eq!(sc["sync"]["counters"]["install_refused"], 0, "{sc}");
    assert!(a.status()["sync"]["counters"]["queued"].as_u64() >= Some(1));
    assert!(!c.log().contains("a long secret"), "the PSK was logged");
    // A deletes the IKE SA: its child SAs' tombstones reach C.
    assert!(a.ctl(&["terminate", "site-a", "ike"]).status.success());
    wait("C kept the child SA after A deleted its IKE SA", 5, &|| {
        c.status()["child_sas"]
            .as_array()
            .is_some_and(|v| v.is_empty())
    });
    b.stop();
    c.stop();
    a.stop();
}

/// `[sync] barrier`: A's only peer (node 3) never comes up. With
/// `barrier = [3]` the barrier for B's child SA cannot be reached: A holds
/// its IKE_AUTH response for `barrier_timeout_ms`, then sends it anyway
/// (the tunnel comes up, the timeout is counted). `"all"` means every
/// *connected* peer: none, so nothing waits. With `"none"` nothing is held.
#[test]
fn sync_barrier_times_out_without_its_peer() {
    let dir = TempDir::new("barrier");
    let fleet = dir.0.join("fleet");
    anyhub_sa_sync::fleet::init(&fleet).unwrap();
    anyhub_sa_sync::fleet::add_node(&fleet, 1, "a").unwrap();
    let ike = port(3);
    let on = |cfg: String, ip: &str| cfg.replace("\"127.0.0.1\"", &format!("\"{ip}\""));
    let b_tunnel = format!(
        r#"
[[tunnel]]
id = "to-hub"
local_id = "site-a.example.net"
remote_id = "a.example.net"
psk = "a long secret"
local_ts = ["10.10.0.0/24"]
remote_ts = ["10.20.0.0/24"]
remote_address = "127.0.0.5:{ike}"
"#
    );
    for policy in ["[3]", "\"all\"", "\"none\""] {
        let a_cfg = on(
            config(
                &dir.0,
                "a",
                1,
                ike,
                &RESPONDER_TUNNEL.replace("hub.example.net", "a.example.net"),
            ),
            "127.0.0.5",
        ) + &format!(
            "\n[sync]\nlisten = \"127.0.0.5:0\"\nfleet_dir = \"fleet\"\nbootstrap = true\n\
             barrier = {policy}\nbarrier_timeout_ms = 300\n\
             peers = [{{ index = 3, address = \"127.0.0.7:9\" }}]\n"
        );
        let a = Daemon::start(&dir.0, "a", &a_cfg);
        // "all" counts the peers connected at the bus's last status poll.
        let deadline = Instant::now() + Duration::from_secs(5);
        while a.status()["sync"]["running"] != true {
            assert!(Instant::now() < deadline, "A's bus never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
        let b = Daemon::start(
            &dir.0,
            "b",
            &on(config(&dir.0, "b", 2, ike, &b_tunnel), "127.0.0.6"),
        );
        assert!(b.ctl(&["initiate", "to-hub"]).status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.status()["child_sas"]
            .as_array()
            .is_none_or(|v| v.is_empty())
        {
            assert!(
                Instant::now() < deadline,
                "{policy}: no tunnel\nA: {}\nA log:\n{}",
                a.status(),
                a.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let sa = a.status();
        let c = &sa["sync"]["counters"];
        match policy {
            "[3]" => {
                assert_eq!(sa["sync"]["barrier"], serde_json::json!([3]), "{sa}");
                assert_eq!(c["barrier_timed_out"], 1, "{sa}");
                assert_eq!(c["barrier_reached"], 0, "{sa}");
                assert!(c["barrier_max_ms"].as_u64() >= Some(300), "{sa}");
                assert!(c["held_messages"].as_u64() >= Some(1), "{sa}");
                assert!(a.log().contains("sync barrier"), "{}", a.log());
            }
            "\"all\"" => {
                assert_eq!(c["barrier_timed_out"], 0, "{sa}");
                assert_eq!(c["barrier_reached"], 1, "{sa}");
                assert!(c["barrier_max_ms"].as_u64() < Some(300), "{sa}");
            }
            _ => {
                assert_eq!(sa["sync"]["barrier"], "none", "{sa}");
                assert_eq!(c["barrier_timed_out"], 0, "{sa}");
                assert_eq!(c["held_messages"], 0, "{sa}");
            }
        }
        b.stop();
        a.stop();
    }
}

/// The fleet's certificates come from `anyhubctl fleet init / add-node`.
/// A (node 1) replicates to D (node 4, same fleet) but not to C (node 3),
/// whose certificate another fleet's CA signed: the bus never connects to
/// C, and C never holds the child SA that D received. `anyhubctl status`
/// shows the sync peers.
#[test]
fn sync_refuses_a_node_of_another_fleet() {
    let dir = TempDir::new("rogue");
    let ctl = |args: &[&str]| {
        let out = Command::new(ANYHUBCTL).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "anyhubctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let (fleet, rogue) = (dir.0.join("fleet"), dir.0.join("rogue"));
    let (fleet_s, rogue_s) = (fleet.to_str().unwrap(), rogue.to_str().unwrap());
    assert!(ctl(&["fleet", "init", "--dir", fleet_s]).contains("fleet CA written"));
    for (i, n) in [("1", "a"), ("4", "d")] {
        ctl(&[
            "fleet", "add-node", "--dir", fleet_s, "--index", i, "--name", n,
        ]);
    }
    ctl(&["fleet", "init", "--dir", rogue_s]);
    ctl(&[
        "fleet", "add-node", "--dir", rogue_s, "--index", "3", "--name", "c",
    ]);
    // A second init would replace the CA every node trusts: refused.
    let again = Command::new(ANYHUBCTL)
        .args(["fleet", "init", "--dir", fleet_s])
        .output()
        .unwrap();
    assert!(!again.status.success(), "fleet init overwrote a CA");

    let (ike, bus_c, bus_d) = (port(4), port(6), port(7));
    let on = |cfg: String, ip: &str| cfg.replace("\"127.0.0.1\"", &format!("\"{ip}\""));
    let responder = RESPONDER_TUNNEL.replace("hub.example.net", "a.example.net");
    let sync = |listen: String, fleet: &str, peers: &str, bootstrap: bool| {
        format!(
            "\n[sync]\nlisten = \"{listen}\"\nfleet_dir = \"{fleet}\"\nbootstrap = {bootstrap}\n\
             barrier_timeout_ms = 200\npeers = [{peers}]\n"
        )
    };
    let a_cfg = on(config(&dir.0, "a", 1, ike, &responder), "127.0.0.8")
        + &sync(
            "127.0.0.8:0".into(),
            "fleet",
            &format!(
                "{{ index = 3, address = \"127.0.0.9:{bus_c}\" }}, {{ index = 4, address = \"127.0.0.11:{bus_d}\" }}"
            ),
            true,
        );
    let c_cfg = on(config(&dir.0, "c", 3, ike, &responder), "127.0.0.9")
        + &sync(
            format!("127.0.0.9:{bus_c}"),
            "rogue",
            "{ index = 1, address = \"127.0.0.8:9\" }",
            false,
        );
    let d_cfg = on(config(&dir.0, "d", 4, ike, &responder), "127.0.0.11")
        + &sync(
            format!("127.0.0.11:{bus_d}"),
            "fleet",
            "{ index = 1, address = \"127.0.0.8:9\" }",
            false,
        );
    let a = Daemon::start(&dir.0, "a", &a_cfg);
    let c = Daemon::start(&dir.0, "c", &c_cfg);
    let d = Daemon::start(&dir.0, "d", &d_cfg);
    let b_tunnel = format!(
        r#"
[[tunnel]]
id = "to-hub"
local_id = "site-a.example.net"
remote_id = "a.example.net"
psk = "a long secret"
local_ts = ["10.10.0.0/24"]
remote_ts = ["10.20.0.0/24"]
remote_address = "127.0.0.8:{ike}"
"#
    );
    let b = Daemon::start(
        &dir.0,
        "b",
        &on(config(&dir.0, "b", 2, ike, &b_tunnel), "127.0.0.10"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while [&a, &d]
        .iter()
        .any(|n| n.status()["sync"]["peers_connected"] != 1)
    {
        assert!(Instant::now() < deadline, "D never connected:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(b.ctl(&["initiate", "to-hub"]).status.success());
    // B's tunnel is up only after A's barrier gave up on C (200 ms).
    let deadline = Instant::now() + Duration::from_secs(10);
    while [&b, &d].iter().any(|n| {
        n.status()["child_sas"]
            .as_array()
            .is_none_or(|v| v.is_empty())
    }) {
        assert!(
            Instant::now() < deadline,
            "D never received A's child SA:\nA: {}\nA log:\n{}",
            a.status(),
            a.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // D has the record; C, dialled by A as often as D, has nothing.
    let sc = c.status();
    assert_eq!(sc["child_sas"], serde_json::json!([]), "{sc}");
    assert_eq!(sc["sync"]["peers_connected"], 0, "{sc}");
    assert_eq!(sc["sync"]["live"], 0, "{sc}");
    let sa = a.status();
    let peer3 = sa["sync"]["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["peer"] == 3).cloned())
        .expect("A lists peer 3");
    assert_eq!(peer3["connected"], false, "{sa}");
    // Barrier "all" counts connected peers: D acknowledged, C never counted.
    assert_eq!(sa["sync"]["counters"]["barrier_timed_out"], 0, "{sa}");
    assert_eq!(sa["sync"]["counters"]["barrier_reached"], 1, "{sa}");
    assert!(!c.log().contains("a long secret"));
    let human = String::from_utf8(a.ctl(&["status"]).stdout).unwrap();
    assert!(
        human.contains("SYNC PEER") && human.contains("sync barrier \"all\""),
        "{human}"
    );
    b.stop();
    c.stop();
    d.stop();
    a.stop();
}
