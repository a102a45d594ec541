//! The bus over real QUIC on loopback: two fleet nodes replicate and reach a
//! barrier; a node without a valid fleet certificate, or whose certificate
//! names another node, is refused and receives not one byte.

use anyhub_sa_sync::fleet;
use anyhub_sa_sync::pb::{self, record::Body};
use anyhub_sa_sync::quic::{self, Bus, BusConfig, Identity};
use anyhub_sa_sync::{BarrierOutcome, Config, Event, Key, WaitFor};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn identity(ca: &fleet::CaPem, index: u16, name: &str) -> (Identity, fleet::NodePem) {
    let n = fleet::new_node(&ca.key, index, name).unwrap();
    (Identity::from_pem(&ca.cert, &n.cert, &n.key).unwrap(), n)
}

fn child(spi: u32) -> Body {
    Body::ChildSa(pb::ChildSa {
        spi_in: spi,
        keys_in: Some(pb::DirectionKeys {
            encr: vec![7; 36],
            integ: Vec::new(),
            has_integ: false,
        }),
        ..Default::default()
    })
}

fn start(
    ca: &fleet::CaPem,
    index: u16,
    peers: Vec<(u16, SocketAddr)>,
) -> (Bus, Arc<Mutex<Vec<Key>>>) {
    let (id, _) = identity(ca, index, &format!("edge{index}"));
    let applied = Arc::new(Mutex::new(Vec::new()));
    let a = applied.clone();
    let bus = Bus::start(
        BusConfig {
            core: Config::new(index, 1000 + u64::from(index)),
            name: format!("edge{index}"),
            listen: "127.0.0.1:0".parse().unwrap(),
            peers,
            identity: id,
            idle_timeout: Duration::from_secs(3),
        },
        move |e| {
            if let Event::Applied { key, .. } = e {
                a.lock().unwrap().push(key.clone());
            }
        },
    )
    .unwrap();
    (bus, applied)
}

/// Plays a foreign node: dials `to`, sends a Hello claiming `claim`, and
/// returns how many bytes it could read back.
async fn intrude(ep: &quinn::Endpoint, to: SocketAddr, claim: u16) -> usize {
    let Ok(connecting) = ep.connect(to, &fleet::node_dns_name(1)) else {
        return 0;
    };
    let Ok(conn) = connecting.await else {
        return 0;
    };
    let Ok((mut send, mut recv)) = conn.open_bi().await else {
        return 0;
    };
    let hello = pb::Frame {
        body: Some(pb::frame::Body::Hello(pb::Hello {
            protocol: pb::PROTOCOL,
            node: u32::from(claim),
            ..Default::default()
        })),
    };
    let _ = quic::write_frame(&mut send, &prost::Message::encode_to_vec(&hello)).await;
    let _ = send.write_all(&[0; 64]).await;
    let mut got = 0;
    let mut buf = [0u8; 4096];
    while let Ok(Ok(Some(n))) =
        tokio::time::timeout(Duration::from_secs(3), recv.read(&mut buf)).await
    {
        got += n;
        if got > 0 {
            break;
        }
    }
    got
}

#[tokio::test]
async fn replicates_with_barrier_and_refuses_strangers() {
    let ca = fleet::new_ca().unwrap();
    // Node 2 never dials node 1 (the lower index dials), so it can start
    // before node 1's address is known.
    let (bus2, applied2) = start(&ca, 2, vec![(1, "127.0.0.1:9".parse().unwrap())]);
    let (bus1, _) = start(&ca, 1, vec![(2, bus2.local_addr())]);
    bus1.set_bootstrapped();
    let expires = quic::now_ms() + 3_600_000;
    let b = bus1
        .publish_with_barrier(
            Key::ChildSa(0x0010_0001),
            child(0x0010_0001),
            expires,
            WaitFor::All,
            10_000,
        )
        .await
        .unwrap();
    assert_eq!(b.outcome, BarrierOutcome::Reached, "{b:?}");
    assert_eq!(b.acked, vec![2]);
    assert!(applied2
        .lock()
        .unwrap()
        .contains(&Key::ChildSa(0x0010_0001)));
    let s = bus1.status().await.unwrap();
    let s2 = bus2.status().await.unwrap();
    assert_eq!(s.live, 1);
    assert_eq!(s.table_hash, s2.table_hash);
    // Keys never show in status.
    assert!(!serde_json::to_string(&s).unwrap().contains("encr"));

    // 1. A certificate from another CA (trusting ours, to get that far).
    let other = fleet::new_ca().unwrap();
    let rogue = fleet::new_node(&other.key, 3, "edge3").unwrap();
    let rid = Identity::from_pem(&ca.cert, &rogue.cert, &rogue.key).unwrap();
    let ep = quic::endpoint(&rid, "127.0.0.1:0".parse().unwrap(), Duration::from_secs(3)).unwrap();
    assert_eq!(intrude(&ep, bus1.local_addr(), 3).await, 0, "foreign CA");

    // 2. A fleet certificate for node 3 claiming to be node 2.
    let (id3, _) = identity(&ca, 3, "edge3");
    let ep = quic::endpoint(&id3, "127.0.0.1:0".parse().unwrap(), Duration::from_secs(3)).unwrap();
    assert_eq!(intrude(&ep, bus1.local_addr(), 2).await, 0, "wrong node");

    // 3. No client certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::pem::PemObject::from_pem_slice(ca.cert.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    )));
    assert_eq!(
        intrude(&ep, bus1.local_addr(), 3).await,
        0,
        "no certificate"
    );

    // The fleet still works, and no stranger ever became a peer.
    let v = bus1
        .publish(Key::ChildSa(0x0010_0002), child(0x0010_0002), expires)
        .await
        .unwrap();
    assert!(v.hlc > 0);
    let s = bus1.status().await.unwrap();
    assert!(s.peers.iter().all(|p| p.peer == 2), "{:?}", s.peers);
    for _ in 0..100 {
        if applied2.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(applied2.lock().unwrap().len(), 2);
    // A control: the same intrusion with a valid identity does get bytes.
    let ep = quic::endpoint(&id3, "127.0.0.1:0".parse().unwrap(), Duration::from_secs(3)).unwrap();
    assert!(
        intrude(&ep, bus1.local_addr(), 3).await > 0,
        "control: node 3 is served"
    );
    bus1.close();
    bus2.close();
}
