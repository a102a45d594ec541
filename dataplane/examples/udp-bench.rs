//! `udp-bench`: what each way of sending and receiving UDP buys, with
//! 1436-byte datagrams (an ESP-in-UDP packet carrying a 1400-byte inner
//! packet) over a veth between two namespaces. `scripts/bench-io.sh udp`
//! runs every combination.
//!
//! ```text
//! udp-bench send --to ADDR --mode plain|mmsg|gso [--secs 3] [--size 1436]
//! udp-bench recv --bind ADDR --gro on|off [--secs 4]
//! ```
//! Each prints one line: `datagrams/s Mbit/s calls`.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhub_dataplane::sys::udp::{self, RecvBatch, SendBatch, MAX_GSO_SEGMENTS};

fn main() {
    let mut args = std::env::args().skip(1);
    let role = args.next().expect("send|recv");
    let (mut addr, mut mode, mut gro, mut secs, mut size) = (
        String::new(),
        "gso".to_string(),
        "on".to_string(),
        3.0f64,
        1436usize,
    );
    while let Some(f) = args.next() {
        let v = args.next().expect("flag needs a value");
        match f.as_str() {
            "--to" | "--bind" => addr = v,
            "--mode" => mode = v,
            "--gro" => gro = v,
            "--secs" => secs = v.parse().unwrap(),
            "--size" => size = v.parse().unwrap(),
            _ => panic!("unknown flag {f}"),
        }
    }
    let addr: SocketAddr = addr.parse().expect("address");
    let dur = Duration::from_secs_f64(secs);
    if role == "send" {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        udp::set_buffers(sock.as_raw_fd(), 4 << 20);
        // 64 datagrams per GSO message, 8 messages per sendmmsg.
        let per = if mode == "gso" {
            MAX_GSO_SEGMENTS.min(65_507 / size)
        } else {
            1
        };
        let msgs = if mode == "plain" { 1 } else { 8 };
        let buf = vec![0x5au8; per * size * msgs];
        let mut batch = SendBatch::new(msgs);
        let (mut dgrams, mut calls) = (0u64, 0u64);
        let start = Instant::now();
        while start.elapsed() < dur {
            if mode == "plain" {
                if sock.send_to(&buf[..size], addr).is_ok() {
                    dgrams += 1;
                }
            } else {
                for m in 0..msgs {
                    batch.push(
                        m * per * size,
                        per * size,
                        if per > 1 { size } else { 0 },
                        addr,
                    );
                }
                let (sent, err) = batch.send(sock.as_raw_fd(), &buf);
                if let Some(e) = err {
                    panic!("sendmmsg: {e}");
                }
                dgrams += (sent * per) as u64;
            }
            calls += 1;
        }
        let t = start.elapsed().as_secs_f64();
        println!(
            "{:.0} {:.1} {}",
            dgrams as f64 / t,
            dgrams as f64 * size as f64 * 8.0 / t / 1e6,
            calls
        );
    } else {
        let sock = UdpSocket::bind(addr).unwrap();
        udp::set_buffers(sock.as_raw_fd(), 8 << 20);
        if gro == "on" {
            udp::set_udp_gro(sock.as_raw_fd(), true).unwrap();
        }
        let mut rb = RecvBatch::new(8, 65_536);
        let (mut dgrams, mut bytes, mut calls) = (0u64, 0u64, 0u64);
        let mut first: Option<Instant> = None;
        let mut last = Instant::now();
        let start = Instant::now();
        while start.elapsed() < dur {
            match rb.recv(sock.as_raw_fd()) {
                Ok(_) => {
                    last = Instant::now();
                    first.get_or_insert(last);
                    calls += 1;
                    for m in rb.messages() {
                        dgrams += m.len.div_ceil(m.seg) as u64;
                        bytes += m.len as u64;
                    }
                }
                Err(_) => {
                    let _ = anyhub_dataplane::sys::poll_readable(
                        sock.as_raw_fd(),
                        Duration::from_millis(50),
                    );
                }
            }
        }
        let t = first
            .map(|f| (last - f).as_secs_f64())
            .unwrap_or(1.0)
            .max(1e-3);
        println!(
            "{:.0} {:.1} {}",
            dgrams as f64 / t,
            bytes as f64 * 8.0 / t / 1e6,
            calls
        );
    }
}
