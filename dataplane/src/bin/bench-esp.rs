//! Micro-benchmark of the ESP core (issue 4, "Benchmark"): nanoseconds per
//! packet to encrypt and decrypt 64-, 512- and 1400-byte inner packets with
//! `OutboundSa::encrypt` / `InboundSa::decrypt`, beside the bare primitive
//! on the same buffers in the same run (`AeadKey::seal_in_place` /
//! `open_in_place`; for AES-CBC, `AesCbc` plus `IntegKey`).
//!
//! Also: the replay window behind its per-SA mutex (one thread, and two
//! threads on one SA), two threads encrypting on one SA (the shared
//! sequence counter), and the SA database's per-packet lookup.
//!
//! Run with `--release` (and the machine lock):
//!
//! ```text
//! flock /tmp/anyhub-heavy.lock cargo run --release -p anyhub-dataplane --bin bench-esp
//! ```
//!
//! Options: `--ms N` (time per measurement, default 40; each number is the
//! median of 7 measurements), `--alg NAME` (only one algorithm row set).
//! Prints a table, then one JSON line (the AES-256-GCM numbers):
//! `{"bench":"esp","encrypt_ns_1400":…,"aead_seal_ns_1400":…,"esp_overhead_vs_aead":…,…}`.

use anyhub_crypto::aead::AeadKey;
use anyhub_crypto::cipher::AesCbc;
use anyhub_crypto::integ::IntegKey;
use anyhub_crypto::{Rng, Secret, SystemRng};
use anyhub_dataplane::esp::replay::{AtomicReplayWindow, ReplayWindow};
use anyhub_dataplane::esp::{Algorithm, InboundSa, OutboundSa, SaInfo};
use anyhub_dataplane::{Sad, SadConfig};
use anyhub_ike::proposal::{EncrAlg, Selected};
use anyhub_ike::wire::registry::{EncrId, IntegId, ProtocolId};
use anyhub_ike::{ts, ChildSa, DirectionKeys, IkeSaHandle};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SIZES: [usize; 3] = [64, 512, 1400];
/// Buffers per batch: 64 × ~1.5 KiB stays in L2.
const BATCH: usize = 64;
const RUNS: usize = 7;

struct Suite {
    name: &'static str,
    id: EncrId,
    key_bits: u16,
    integ: Option<IntegId>,
}

const SUITES: &[Suite] = &[
    Suite {
        name: "aes256gcm16",
        id: EncrId::AES_GCM_16,
        key_bits: 256,
        integ: None,
    },
    Suite {
        name: "aes128gcm16",
        id: EncrId::AES_GCM_16,
        key_bits: 128,
        integ: None,
    },
    Suite {
        name: "chacha20poly1305",
        id: EncrId::CHACHA20_POLY1305,
        key_bits: 256,
        integ: None,
    },
    Suite {
        name: "aes128-sha256",
        id: EncrId::AES_CBC,
        key_bits: 128,
        integ: Some(IntegId::HMAC_SHA2_256_128),
    },
    Suite {
        name: "aes256-sha256",
        id: EncrId::AES_CBC,
        key_bits: 256,
        integ: Some(IntegId::HMAC_SHA2_256_128),
    },
    Suite {
        name: "aes256-sha384",
        id: EncrId::AES_CBC,
        key_bits: 256,
        integ: Some(IntegId::HMAC_SHA2_384_192),
    },
    Suite {
        name: "aes256-sha512",
        id: EncrId::AES_CBC,
        key_bits: 256,
        integ: Some(IntegId::HMAC_SHA2_512_256),
    },
    Suite {
        name: "aes128-sha1",
        id: EncrId::AES_CBC,
        key_bits: 128,
        integ: Some(IntegId::HMAC_SHA1_96),
    },
];

fn child(s: &Suite) -> ChildSa {
    let proposal = Selected {
        protocol: ProtocolId::ESP,
        num: 1,
        encr: EncrAlg {
            id: s.id,
            key_bits: s.key_bits,
        },
        prf: None,
        integ: s.integ,
        dh: None,
        esn: false,
        peer_spi: vec![0xc0, 0xff, 0xee, 0x01],
    };
    let alg = Algorithm::from_selected(&proposal).expect("supported suite");
    let (encr_len, integ_len) = match alg {
        Algorithm::Aead(a) => (a.keymat_len(), 0),
        Algorithm::CbcHmac { key_len, integ } => (key_len, integ.key_len()),
    };
    let keys = || {
        let mut e = vec![0; encr_len];
        SystemRng.fill(&mut e);
        let mut i = vec![0; integ_len];
        SystemRng.fill(&mut i);
        DirectionKeys {
            encr: Secret::new(e),
            integ: (integ_len > 0).then(|| Secret::new(i)),
        }
    };
    let k = keys();
    ChildSa {
        tunnel: Arc::from("bench"),
        ike: IkeSaHandle(1),
        // One SA, both directions: the same SPI and keys, so our outbound
        // packets open with our inbound SA.
        spi_in: 0x0010_0001,
        spi_out: 0x0010_0001,
        proposal,
        keys_in: k.clone(),
        keys_out: k,
        local_ts: vec![ts::parse("10.20.0.0/24").unwrap()],
        remote_ts: vec![ts::parse("10.10.0.0/24").unwrap()],
        lifetime: Duration::from_secs(3600),
        local: "198.51.100.1:4500".parse().unwrap(),
        remote: "198.51.100.2:4500".parse().unwrap(),
        encap: true,
        rekey_of: None,
    }
}

/// The bare primitive an SA's transform is built on, keyed the same way
/// (inline like the SA's own keys, so both pay the same memory layout).
#[allow(clippy::large_enum_variant)]
enum Raw {
    Aead(AeadKey),
    Cbc(AesCbc, IntegKey),
}

impl Raw {
    fn new(alg: Algorithm, keys: &DirectionKeys) -> Raw {
        match alg {
            Algorithm::Aead(a) => Raw::Aead(AeadKey::new(a, keys.encr.as_bytes()).unwrap()),
            Algorithm::CbcHmac { integ, .. } => Raw::Cbc(
                AesCbc::new(keys.encr.as_bytes()).unwrap(),
                IntegKey::new(integ, keys.integ.as_ref().unwrap().as_bytes()).unwrap(),
            ),
        }
    }

    /// Protects `buf[24..24 + len]` (rounded up to a block for CBC) with
    /// the tag/ICV after it, the AAD/covered header before it.
    fn seal(&self, buf: &mut [u8], len: usize, n: u64) {
        match self {
            Raw::Aead(k) => {
                let (head, rest) = buf.split_at_mut(24);
                let (ct, tag) = rest.split_at_mut(len);
                let tag: &mut [u8; 16] = (&mut tag[..16]).try_into().unwrap();
                k.seal_in_place(&n.to_be_bytes(), &head[..8], ct, tag)
                    .unwrap();
            }
            Raw::Cbc(c, i) => {
                let len = len.next_multiple_of(16);
                let iv = [n as u8; 16];
                c.encrypt_in_place(&iv, &mut buf[24..24 + len]).unwrap();
                let (covered, icv) = buf.split_at_mut(24 + len);
                let icv_len = i.alg().icv_len();
                i.compute(&[covered], &mut icv[..icv_len]);
            }
        }
    }

    fn open(&self, buf: &mut [u8], len: usize, n: u64) {
        match self {
            Raw::Aead(k) => {
                let (head, rest) = buf.split_at_mut(24);
                let (ct, tag) = rest.split_at_mut(len);
                let tag: &[u8; 16] = (&tag[..16]).try_into().unwrap();
                k.open_in_place(&n.to_be_bytes(), &head[..8], ct, tag)
                    .unwrap();
            }
            Raw::Cbc(c, i) => {
                let len = len.next_multiple_of(16);
                let (covered, icv) = buf.split_at_mut(24 + len);
                let icv_len = i.alg().icv_len();
                assert!(i.verify(&[covered], &icv[..icv_len]));
                let iv = [n as u8; 16];
                c.decrypt_in_place(&iv, &mut covered[24..]).unwrap();
            }
        }
    }
}

/// Median over `RUNS` of ns/packet; `run(deadline)` processes packets until
/// the deadline and returns (packets, time spent in the measured part).
fn measure(ms: u64, mut run: impl FnMut(Instant) -> (u64, Duration)) -> f64 {
    run(Instant::now() + Duration::from_millis(ms / 4 + 1)); // warm up
    let mut v: Vec<f64> = (0..RUNS)
        .map(|_| {
            let (n, t) = run(Instant::now() + Duration::from_millis(ms));
            t.as_nanos() as f64 / n as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[RUNS / 2]
}

fn buffers(head: usize, size: usize, tail: usize) -> Vec<Vec<u8>> {
    (0..BATCH)
        .map(|i| {
            let mut b = vec![i as u8; head + size + tail];
            b[head] = 0x45;
            b
        })
        .collect()
}

struct Numbers {
    enc: f64,
    raw_enc: f64,
    dec: f64,
    raw_dec: f64,
}

fn bench_suite(s: &Suite, size: usize, ms: u64) -> Numbers {
    let c = child(s);
    let info = Arc::new(SaInfo::of_child(&c, Instant::now()));
    let out = OutboundSa::new(&c, 1, info.clone()).unwrap();
    let head = out.headroom();
    let tail = out.tailroom();
    let raw = Raw::new(out.algorithm(), &c.keys_out);
    let mut bufs = buffers(head.max(24), size, tail.max(32));
    let head = head.max(24);
    let esp_len = out.headroom() + size + out.trailer_len(size);
    let start = head - out.headroom();
    // The bare primitive protects exactly what ESP protects: the inner
    // packet, its padding and the two trailer bytes.
    let ct_len = esp_len - out.headroom() - out.algorithm().icv_len();

    let enc = measure(ms, |deadline| {
        let mut n = 0;
        let t0 = Instant::now();
        while Instant::now() < deadline {
            for b in &mut bufs {
                b[head] = 0x45;
                black_box(out.encrypt(b, head..head + size).unwrap());
            }
            n += BATCH as u64;
        }
        (n, t0.elapsed())
    });

    let mut ctr = 0u64;
    let raw_enc = measure(ms, |deadline| {
        let mut n = 0;
        let t0 = Instant::now();
        while Instant::now() < deadline {
            for b in &mut bufs {
                ctr += 1;
                raw.seal(b, ct_len, ctr);
            }
            n += BATCH as u64;
        }
        (n, t0.elapsed())
    });

    // Decrypt: each batch is freshly encrypted (untimed), then opened
    // (timed); fresh sequence numbers keep the replay window passing.
    let inb = InboundSa::new(&c, 1024, info).unwrap();
    let dec = measure(ms, |deadline| {
        let mut n = 0;
        let mut spent = Duration::ZERO;
        while Instant::now() < deadline {
            for b in &mut bufs {
                b[head] = 0x45;
                out.encrypt(b, head..head + size).unwrap();
            }
            let t0 = Instant::now();
            for b in &mut bufs {
                black_box(inb.decrypt(&mut b[start..start + esp_len]).unwrap());
            }
            spent += t0.elapsed();
            n += BATCH as u64;
        }
        (n, spent)
    });

    let raw_dec = measure(ms, |deadline| {
        let mut n = 0;
        let mut spent = Duration::ZERO;
        while Instant::now() < deadline {
            let first = ctr + 1;
            for b in &mut bufs {
                ctr += 1;
                raw.seal(b, ct_len, ctr);
            }
            let t0 = Instant::now();
            for (i, b) in bufs.iter_mut().enumerate() {
                raw.open(b, ct_len, first + i as u64);
            }
            spent += t0.elapsed();
            n += BATCH as u64;
        }
        (n, spent)
    });
    Numbers {
        enc,
        raw_enc,
        dec,
        raw_dec,
    }
}

/// The replay window as `InboundSa::decrypt` uses it (check, then check and
/// update), on `threads` threads sharing one SA and drawing consecutive
/// numbers: the lock-free [`AtomicReplayWindow`] (`atomic`) or the plain
/// window behind a mutex (the alternative it was measured against).
fn bench_replay(threads: usize, atomic: bool, ms: u64) -> f64 {
    let plain = Arc::new(Mutex::new(ReplayWindow::new(1024).unwrap()));
    let lockfree = Arc::new(AtomicReplayWindow::new(1024).unwrap());
    let seq = Arc::new(AtomicU64::new(0));
    measure(ms, |deadline| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let (plain, lockfree, seq) = (plain.clone(), lockfree.clone(), seq.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    let t0 = Instant::now();
                    while Instant::now() < deadline {
                        for _ in 0..BATCH {
                            let s = seq.fetch_add(1, Ordering::Relaxed) + 1;
                            let ok = if atomic {
                                lockfree.check(s).is_ok() && lockfree.check_and_update(s).is_ok()
                            } else {
                                plain.lock().unwrap().check(s).is_ok()
                                    && plain.lock().unwrap().check_and_update(s).is_ok()
                            };
                            black_box(ok);
                        }
                        n += BATCH as u64;
                    }
                    (n, t0.elapsed())
                })
            })
            .collect();
        // ns per packet per thread: each thread's own time over its packets.
        let r: Vec<(u64, Duration)> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        let n: u64 = r.iter().map(|x| x.0).sum();
        let t: Duration = r.iter().map(|x| x.1).sum();
        (n, t)
    })
}

/// Two threads encrypting on one outbound SA (the shared atomic counter).
fn bench_encrypt_threads(threads: usize, size: usize, ms: u64) -> f64 {
    let c = child(&SUITES[0]);
    let info = Arc::new(SaInfo::of_child(&c, Instant::now()));
    let out = Arc::new(OutboundSa::new(&c, 1, info).unwrap());
    measure(ms, |deadline| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let out = out.clone();
                std::thread::spawn(move || {
                    let head = out.headroom();
                    let mut bufs = buffers(head, size, out.tailroom());
                    let mut n = 0u64;
                    let t0 = Instant::now();
                    while Instant::now() < deadline {
                        for b in &mut bufs {
                            b[head] = 0x45;
                            black_box(out.encrypt(b, head..head + size).unwrap());
                        }
                        n += BATCH as u64;
                    }
                    (n, t0.elapsed())
                })
            })
            .collect();
        let r: Vec<(u64, Duration)> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        (r.iter().map(|x| x.0).sum(), r.iter().map(|x| x.1).sum())
    })
}

/// The SA database path per packet: snapshot guard, SPI lookup, decrypt,
/// counters; and the lookup alone, among 10 000 installed SAs.
fn bench_sad(size: usize, ms: u64) -> (f64, f64, Duration) {
    let sad = Sad::new(SadConfig::new(1));
    let mut c = child(&SUITES[0]);
    let now = Instant::now();
    for i in 0..10_000u32 {
        let mut o = c.clone();
        o.spi_in = 0x0020_0000 + i * 7;
        o.spi_out = o.spi_in;
        o.tunnel = Arc::from(format!("t{i}"));
        sad.install(now, &o).unwrap();
    }
    c.tunnel = Arc::from("bench");
    // The writer's cost: one install copies the snapshot's maps.
    let t0 = Instant::now();
    sad.install(now, &c).unwrap();
    let install = t0.elapsed();
    let snap = sad.snapshot();
    let out = snap.outbound("bench").unwrap().clone();
    let head = out.headroom();
    let esp_len = head + size + out.trailer_len(size);
    let mut bufs = buffers(head, size, out.tailroom());
    let path = measure(ms, |deadline| {
        let mut n = 0;
        let mut spent = Duration::ZERO;
        while Instant::now() < deadline {
            for b in &mut bufs {
                b[head] = 0x45;
                out.encrypt(b, head..head + size).unwrap();
            }
            let t0 = Instant::now();
            for b in &mut bufs {
                sad.read(|s| {
                    black_box(s.decrypt(&mut b[..esp_len]).unwrap().decrypted.seq);
                });
            }
            spent += t0.elapsed();
            n += BATCH as u64;
        }
        (n, spent)
    });
    let spis: Vec<u32> = (0..BATCH as u32)
        .map(|i| 0x0020_0000 + i * 7 * 97)
        .collect();
    let lookup = measure(ms, |deadline| {
        let mut n = 0;
        let t0 = Instant::now();
        while Instant::now() < deadline {
            for &spi in &spis {
                sad.read(|s| black_box(s.inbound(spi).is_some()));
            }
            n += BATCH as u64;
        }
        (n, t0.elapsed())
    });
    (path, lookup, install)
}

fn main() {
    let mut ms = 40u64;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ms" => ms = args.next().and_then(|v| v.parse().ok()).expect("--ms N"),
            "--alg" => only = args.next(),
            "--bench" => {} // cargo bench passes it
            other => {
                eprintln!("usage: bench-esp [--ms N] [--alg NAME]; unknown {other}");
                std::process::exit(2);
            }
        }
    }
    if cfg!(debug_assertions) {
        eprintln!("bench-esp: built without --release; numbers are meaningless");
    }
    println!("ESP micro-benchmark: ns per packet, median of {RUNS} × {ms} ms, one thread");
    println!(
        "raw = the bare primitive over the same bytes ESP protects (inner + padding + trailer)"
    );
    println!(
        "{:<18} {:>5} | {:>8} {:>8} {:>6} | {:>8} {:>8} {:>6}",
        "algorithm", "bytes", "esp_enc", "raw_enc", "ratio", "esp_dec", "raw_dec", "ratio"
    );
    let mut json = vec![("bench".to_owned(), "\"esp\"".to_owned())];
    for s in SUITES {
        if only.as_deref().is_some_and(|o| o != s.name) {
            continue;
        }
        for size in SIZES {
            let r = bench_suite(s, size, ms);
            println!(
                "{:<18} {:>5} | {:>8.1} {:>8.1} {:>6.3} | {:>8.1} {:>8.1} {:>6.3}",
                s.name,
                size,
                r.enc,
                r.raw_enc,
                r.enc / r.raw_enc,
                r.dec,
                r.raw_dec,
                r.dec / r.raw_dec
            );
            if s.name == "aes256gcm16" {
                let mut put =
                    |k: &str, v: f64| json.push((format!("{k}_{size}"), format!("{v:.1}")));
                put("encrypt_ns", r.enc);
                put("decrypt_ns", r.dec);
                put("aead_seal_ns", r.raw_enc);
                put("aead_open_ns", r.raw_dec);
                if size == 1400 {
                    json.push((
                        "esp_overhead_vs_aead".into(),
                        format!("{:.3}", r.enc / r.raw_enc),
                    ));
                    json.push((
                        "esp_decrypt_overhead_vs_aead".into(),
                        format!("{:.3}", r.dec / r.raw_dec),
                    ));
                    json.push((
                        "encrypt_gbps_1400".into(),
                        format!("{:.2}", 1400.0 * 8.0 / r.enc),
                    ));
                }
            }
        }
    }
    println!();
    let line = |what: &str, v: f64, unit: &str| println!("{what:<58} {v:>8.1} {unit}");
    let r1 = bench_replay(1, true, ms);
    let r2 = bench_replay(2, true, ms);
    let m1 = bench_replay(1, false, ms);
    let m2 = bench_replay(2, false, ms);
    line("replay window, lock-free (used), 1 thread", r1, "ns/packet");
    line(
        "replay window, lock-free (used), 2 threads on one SA",
        r2,
        "ns/packet/thread",
    );
    line(
        "replay window, std Mutex (rejected), 1 thread",
        m1,
        "ns/packet",
    );
    line(
        "replay window, std Mutex (rejected), 2 threads on one SA",
        m2,
        "ns/packet/thread",
    );
    let e1 = bench_encrypt_threads(1, 64, ms);
    let e2 = bench_encrypt_threads(2, 64, ms);
    line("aes256gcm16 encrypt 64 B, 1 thread", e1, "ns/packet");
    line(
        "aes256gcm16 encrypt 64 B, 2 threads on one SA",
        e2,
        "ns/packet/thread",
    );
    let (path, lookup, install) = bench_sad(1400, ms);
    let install_us = install.as_secs_f64() * 1e6;
    line("SAD read + SPI lookup (10 001 SAs)", lookup, "ns/packet");
    line(
        "SAD decrypt path 1400 B (lookup, decrypt, counters)",
        path,
        "ns/packet",
    );
    line(
        "SAD install of one SA beside 10 000 (writer copies maps)",
        install_us,
        "µs",
    );
    for (k, v) in [
        ("replay_ns_1t", r1),
        ("replay_ns_2t", r2),
        ("replay_mutex_ns_1t", m1),
        ("replay_mutex_ns_2t", m2),
        ("encrypt_ns_64_2t", e2),
        ("sad_lookup_ns", lookup),
        ("sad_decrypt_ns_1400", path),
        ("sad_install_us_10k", install_us),
    ] {
        json.push((k.into(), format!("{v:.1}")));
    }
    let body: Vec<String> = json.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    println!("{{{}}}", body.join(","));
}
