//! The crypto-bound limit of one responder handshake, and the cost of the
//! sans-IO core around it, both on one core.
//!
//! Crypto bound: what a responder cannot avoid computing per handshake
//! with IKE aes256gcm16-prfsha256-x25519, PSK and one child SA, done with
//! the same crate anyhubd uses (`anyhub_crypto`: x25519-dalek for X25519,
//! BoringSSL for HMAC-SHA-256), in the order the responder does it:
//!
//! - X25519 key generation (32 random bytes, X25519(k, 9)) and agreement;
//! - SKEYSEED = prf(Ni | Nr, g^ir) and prf+ for SK_d … SK_pr (RFC 7296
//!   §2.14: 32 + 2·36 + 2·32 = 168 octets with AES-GCM-256);
//! - child KEYMAT = prf+(SK_d, Ni | Nr), 2·36 octets (§2.17);
//! - AUTH (§2.15): the initiator's checked and our own made, each
//!   prf(prf(PSK, "Key Pad for IKEv2"), message | nonce | prf(SK_p, ID')),
//!   over IKE_SA_INIT messages of the sizes the generator really sends.
//!
//! Core: the responder `Endpoint` fed the initiator's datagrams in memory
//! (IKE_SA_INIT, IKE_AUTH, the INFORMATIONAL DELETE), timing only the
//! responder's calls — anyhubd's per-handshake work without sockets, tokio
//! or the SA database.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhub_crypto::dh::{DhGroup, KeyPair};
use anyhub_crypto::prf::Prf;
use anyhub_crypto::{Rng, SystemRng};
use anyhub_ike::{Endpoint, EndpointConfig, Event, TunnelConfig};

/// Per-handshake cost of each step, in microseconds.
#[derive(Clone, Debug)]
pub struct CryptoBound {
    pub keygen_us: f64,
    pub agree_us: f64,
    pub ike_keys_us: f64,
    pub child_keys_us: f64,
    pub auth_us: f64,
    /// All of the above in one loop (the bound), µs per handshake.
    pub total_us: f64,
}

impl CryptoBound {
    pub fn hs_per_s(&self) -> f64 {
        1e6 / self.total_us
    }
}

/// Runs `f` repeatedly for about `budget`; µs per call.
fn time_per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    // Warm caches and the CPU's clock first.
    for _ in 0..50 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// RestOfInitIDPayload for an FQDN (RFC 7296 §2.15, §3.5): type, three
/// reserved octets, the name.
fn rest_of_id(name: &str) -> Vec<u8> {
    let mut v = vec![2, 0, 0, 0];
    v.extend_from_slice(name.as_bytes());
    v
}

/// The responder's crypto for one handshake; returns something derived
/// from every result so nothing is optimised away.
struct ResponderCrypto {
    psk: Vec<u8>,
    peer_public: Vec<u8>,
    nonce_i: [u8; 32],
    init_request: Vec<u8>,
    init_response: Vec<u8>,
    id_i: Vec<u8>,
    id_r: Vec<u8>,
}

const PRF: Prf = Prf::HmacSha256;
/// SK_d + SK_ei + SK_er + SK_pi + SK_pr with AES-GCM-256 (no SK_a*).
const IKE_KEYMAT: usize = 32 + 36 + 36 + 32 + 32;
/// ESP AES-GCM-256 key + salt, both directions.
const CHILD_KEYMAT: usize = 2 * 36;

impl ResponderCrypto {
    fn new(init_request_len: usize, init_response_len: usize) -> ResponderCrypto {
        let mut rng = SystemRng;
        let peer = KeyPair::generate(DhGroup::Curve25519, &mut rng);
        let mut nonce_i = [0u8; 32];
        rng.fill(&mut nonce_i);
        let mut init_request = vec![0u8; init_request_len];
        rng.fill(&mut init_request);
        let mut init_response = vec![0u8; init_response_len];
        rng.fill(&mut init_response);
        ResponderCrypto {
            psk: super::PSK.as_bytes().to_vec(),
            peer_public: peer.public().to_vec(),
            nonce_i,
            init_request,
            init_response,
            id_i: rest_of_id(super::SITE_ID),
            id_r: rest_of_id(super::HUB_ID),
        }
    }

    fn keygen(&self, rng: &mut dyn Rng) -> KeyPair {
        KeyPair::generate(DhGroup::Curve25519, rng)
    }

    fn agree(&self, ours: &KeyPair) -> anyhub_crypto::Secret {
        ours.agree(&self.peer_public).expect("valid peer key")
    }

    /// SKEYSEED and the seven keys; returns (SK_d, SK_pi, SK_pr).
    fn ike_keys(
        &self,
        shared: &[u8],
        nonce_r: &[u8],
    ) -> (
        anyhub_crypto::Secret,
        anyhub_crypto::Secret,
        anyhub_crypto::Secret,
    ) {
        let nn = [&self.nonce_i[..], nonce_r].concat();
        let skeyseed = PRF.compute(&nn, &[shared]);
        let spi_i = 0x1122_3344_5566_7788u64.to_be_bytes();
        let spi_r = 0x8877_6655_4433_2211u64.to_be_bytes();
        let stream = PRF.prf_plus(
            skeyseed.as_bytes(),
            &[&self.nonce_i, nonce_r, &spi_i, &spi_r],
            IKE_KEYMAT,
        );
        let s = stream.as_bytes();
        (
            anyhub_crypto::Secret::from_slice(&s[..32]),
            anyhub_crypto::Secret::from_slice(&s[104..136]),
            anyhub_crypto::Secret::from_slice(&s[136..168]),
        )
    }

    fn child_keys(&self, sk_d: &[u8], nonce_r: &[u8]) -> anyhub_crypto::Secret {
        PRF.prf_plus(sk_d, &[&self.nonce_i, nonce_r], CHILD_KEYMAT)
    }

    /// AUTH = prf(prf(PSK, "Key Pad for IKEv2"), message | nonce | prf(SK_p, ID')).
    fn psk_auth(&self, sk_p: &[u8], message: &[u8], nonce: &[u8], id: &[u8]) -> [u8; 32] {
        let key = PRF.compute(&self.psk, &[b"Key Pad for IKEv2"]);
        let maced_id = PRF.compute(sk_p, &[id]);
        let auth = PRF.compute(key.as_bytes(), &[message, nonce, maced_id.as_bytes()]);
        auth.as_bytes().try_into().expect("32 octets")
    }

    /// The initiator's AUTH checked (recomputed) and ours made.
    fn auth(&self, sk_pi: &[u8], sk_pr: &[u8], nonce_r: &[u8]) -> [u8; 32] {
        let theirs = self.psk_auth(sk_pi, &self.init_request, nonce_r, &self.id_i);
        let ours = self.psk_auth(sk_pr, &self.init_response, &self.nonce_i, &self.id_r);
        let mut x = theirs;
        for (a, b) in x.iter_mut().zip(ours) {
            *a ^= b;
        }
        x
    }

    fn handshake(&self, rng: &mut dyn Rng) -> u8 {
        let ours = self.keygen(rng);
        let shared = self.agree(&ours);
        let mut nonce_r = [0u8; 32];
        rng.fill(&mut nonce_r);
        let (sk_d, sk_pi, sk_pr) = self.ike_keys(shared.as_bytes(), &nonce_r);
        let child = self.child_keys(sk_d.as_bytes(), &nonce_r);
        let auth = self.auth(sk_pi.as_bytes(), sk_pr.as_bytes(), &nonce_r);
        child.as_bytes()[0] ^ auth[0]
    }
}

/// Measures the bound with IKE_SA_INIT messages of the given sizes.
pub fn measure(init_request_len: usize, init_response_len: usize, budget: Duration) -> CryptoBound {
    let c = ResponderCrypto::new(init_request_len, init_response_len);
    let mut rng = SystemRng;
    let part = budget / 8;
    let keygen_us = time_per_call(part, || {
        black_box(c.keygen(&mut rng));
    });
    let pair = c.keygen(&mut rng);
    let agree_us = time_per_call(part, || {
        black_box(c.agree(black_box(&pair)));
    });
    let shared = c.agree(&pair);
    let nonce_r = [7u8; 32];
    let ike_keys_us = time_per_call(part, || {
        black_box(c.ike_keys(black_box(shared.as_bytes()), &nonce_r));
    });
    let (sk_d, sk_pi, sk_pr) = c.ike_keys(shared.as_bytes(), &nonce_r);
    let child_keys_us = time_per_call(part, || {
        black_box(c.child_keys(black_box(sk_d.as_bytes()), &nonce_r));
    });
    let auth_us = time_per_call(part, || {
        black_box(c.auth(black_box(sk_pi.as_bytes()), sk_pr.as_bytes(), &nonce_r));
    });
    let total_us = time_per_call(budget - 5 * part, || {
        black_box(c.handshake(&mut rng));
    });
    CryptoBound {
        keygen_us,
        agree_us,
        ike_keys_us,
        child_keys_us,
        auth_us,
        total_us,
    }
}

/// The combined loop of [`measure`] alone: µs per handshake.
pub fn measure_total(init_request_len: usize, init_response_len: usize, budget: Duration) -> f64 {
    let c = ResponderCrypto::new(init_request_len, init_response_len);
    let mut rng = SystemRng;
    time_per_call(budget, || {
        black_box(c.handshake(&mut rng));
    })
}

/// What the in-memory run found.
#[derive(Clone, Debug)]
pub struct CoreCost {
    /// Responder time per handshake (IKE_SA_INIT + IKE_AUTH + DELETE), µs.
    pub per_handshake_us: f64,
    pub handshakes: u64,
    /// Sizes of the IKE_SA_INIT request and response as sent.
    pub init_request_len: usize,
    pub init_response_len: usize,
}

/// Runs handshakes between an initiator and a responder `Endpoint` in
/// memory for about `budget`, `BATCH` at a time in lockstep (as a window
/// of N in flight delivers them to anyhubd), each IKE SA deleted after it
/// is up (as the benchmark does), and times the responder's calls only.
pub fn measure_core(
    initiator: Arc<TunnelConfig>,
    responder: Arc<TunnelConfig>,
    budget: Duration,
) -> CoreCost {
    const BATCH: usize = 16;
    let ra: SocketAddr = "192.0.2.1:4500".parse().expect("address");
    let sources: Vec<SocketAddr> = (0..BATCH)
        .map(|i| SocketAddr::new([192, 0, 2, 10 + i as u8].into(), 4500))
        .collect();
    let mut icfg = EndpointConfig::new(2, vec![initiator]);
    icfg.natt_port = 4500;
    let mut rcfg = EndpointConfig::new(1, vec![responder]);
    rcfg.natt_port = 4500;
    let mut init = Endpoint::new(icfg, Box::new(SystemRng));
    let mut resp = Endpoint::new(rcfg, Box::new(SystemRng));
    let mut spent = Duration::ZERO;
    let mut sizes = (0, 0);
    let mut up = 0u64;
    // An anchor IKE SA that stays up, as in the benchmark: later IKE_AUTHs
    // then carry no INITIAL_CONTACT.
    init.initiate(Instant::now(), super::TUNNEL, sources[0], ra)
        .expect("tunnel exists");
    let anchor = loop {
        let t = init.poll_transmit().expect("a request");
        if sizes.0 == 0 {
            sizes.0 = t.payload.len();
        }
        resp.handle(Instant::now(), t.remote, t.local, &t.payload);
        let mut established = None;
        while let Some(a) = resp.poll_transmit() {
            if sizes.1 == 0 {
                sizes.1 = a.payload.len();
            }
            init.handle(Instant::now(), a.remote, a.local, &a.payload);
        }
        while let Some(e) = init.poll_event() {
            if let Event::ChildSaEstablished(c) = e {
                established = Some(c.ike);
            }
        }
        if let Some(h) = established {
            break h;
        }
    };
    // One round: every datagram the initiator has queued goes to the
    // responder (timed), every answer back; handshakes that came up are
    // deleted. Repeats until both sides are quiet.
    let pump = |init: &mut Endpoint, resp: &mut Endpoint, spent: &mut Duration| {
        let mut done = 0;
        loop {
            let requests: Vec<_> = std::iter::from_fn(|| init.poll_transmit()).collect();
            if requests.is_empty() {
                return done;
            }
            let at = Instant::now();
            for t in &requests {
                resp.handle(at, t.remote, t.local, &t.payload);
                while resp.poll_event().is_some() {}
            }
            let answers: Vec<_> = std::iter::from_fn(|| resp.poll_transmit()).collect();
            *spent += at.elapsed();
            let now = Instant::now();
            for t in answers {
                init.handle(now, t.remote, t.local, &t.payload);
            }
            while let Some(e) = init.poll_event() {
                if let Event::ChildSaEstablished(c) = e {
                    done += 1;
                    init.delete_ike_sa(now, c.ike);
                }
            }
        }
    };
    let start = Instant::now();
    while start.elapsed() < budget {
        for &local in &sources {
            init.initiate(Instant::now(), super::TUNNEL, local, ra)
                .expect("tunnel exists");
        }
        up += pump(&mut init, &mut resp, &mut spent);
    }
    assert!(
        resp.ike_sas().len() == 1 && init.ike_sas().iter().all(|s| s.handle == anchor),
        "the in-memory run left {} responder IKE SAs",
        resp.ike_sas().len()
    );
    CoreCost {
        per_handshake_us: spent.as_secs_f64() * 1e6 / up.max(1) as f64,
        handshakes: up,
        init_request_len: sizes.0,
        init_response_len: sizes.1,
    }
}

/// BoringSSL's own X25519 (EVP, through `boring`'s safe API, DER-wrapped
/// keys), for comparison with x25519-dalek on this machine: µs for a key
/// generation (with its public value) and for an agreement (with parsing
/// the peer's public value).
pub fn measure_boring_x25519(budget: Duration) -> (f64, f64) {
    use boring::derive::Deriver;
    use boring::pkey::{Id, PKey};
    // SubjectPublicKeyInfo for id-X25519 (RFC 8410 §4), then the 32 octets.
    const SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
    ];
    let keygen_us = time_per_call(budget / 2, || {
        let k = PKey::generate(Id::X25519).expect("keygen");
        let mut public = [0u8; 32];
        black_box(k.raw_public_key(&mut public).expect("public").len());
    });
    let ours = PKey::generate(Id::X25519).expect("keygen");
    let peer = PKey::generate(Id::X25519).expect("keygen");
    let mut public = [0u8; 32];
    peer.raw_public_key(&mut public).expect("public");
    let spki = [&SPKI_PREFIX[..], &public].concat();
    let agree_us = time_per_call(budget / 2, || {
        let peer = PKey::public_key_from_der(black_box(&spki)).expect("peer key");
        let mut d = Deriver::new(&ours).expect("deriver");
        d.set_peer(&peer).expect("peer");
        let mut shared = [0u8; 32];
        black_box(d.derive(&mut shared).expect("derive"));
    });
    (keygen_us, agree_us)
}
