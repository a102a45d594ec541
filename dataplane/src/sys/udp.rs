//! Batched UDP: `sendmmsg(2)` with one `UDP_SEGMENT` control message per
//! message (UDP GSO, Linux 4.18: the kernel cuts one buffer into datagrams
//! of `gso_size` bytes, the last one may be shorter, all to the same
//! destination) and `recvmmsg(2)` with `UDP_GRO` (Linux 5.0: one message
//! may hold several datagrams of one flow, their size in a `UDP_GRO`
//! control message). See `udp(7)` and `net/ipv4/udp_offload.c`.
//!
//! [`SendBatch`] and [`RecvBatch`] own every `mmsghdr`, `iovec`, address
//! and control buffer they need, allocated once: sending and receiving a
//! batch allocates nothing.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

const SOL_UDP: i32 = 17;
const UDP_SEGMENT: i32 = 103;
const UDP_GRO: i32 = 104;

/// At most this many datagrams in one UDP GSO send (`UDP_MAX_SEGMENTS`).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// At most this many bytes of UDP payload in one UDP GSO send: the IPv4
/// total length field less the IPv4 and UDP headers.
pub const MAX_GSO_BYTES: usize = 65_535 - 20 - 8;

/// Control buffer for one cmsg with an int or u16 payload, 8-aligned.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Cmsg([u8; 32]);

/// Turns on `UDP_GRO`: the kernel may deliver several datagrams of one
/// flow as one message (and a UDP GSO super-datagram arriving over a veth
/// is delivered whole instead of being cut up first).
pub fn set_udp_gro(fd: RawFd, on: bool) -> io::Result<()> {
    super::setsockopt_int(fd, SOL_UDP, UDP_GRO, on as i32)
}

/// Whether this kernel knows `UDP_SEGMENT` (sets and clears the socket
/// default; per-message control messages are used for sending).
pub fn probe_udp_gso(fd: RawFd) -> bool {
    super::setsockopt_int(fd, SOL_UDP, UDP_SEGMENT, 1200).is_ok()
        && super::setsockopt_int(fd, SOL_UDP, UDP_SEGMENT, 0).is_ok()
}

/// `SO_REUSEPORT`, `SO_SNDBUF`/`SO_RCVBUF` (the `FORCE` variants, root).
pub fn set_reuseport(fd: RawFd) -> io::Result<()> {
    super::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
}

/// Socket buffer sizes; tries the privileged `*BUFFORCE` first.
pub fn set_buffers(fd: RawFd, bytes: i32) {
    for (force, plain) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
    ] {
        if super::setsockopt_int(fd, libc::SOL_SOCKET, force, bytes).is_err() {
            let _ = super::setsockopt_int(fd, libc::SOL_SOCKET, plain, bytes);
        }
    }
}

fn to_sockaddr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any
            // sockaddr; we write a sockaddr_in into it.
            let sin = unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn from_sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    off: usize,
    len: usize,
    /// Datagram size when `len` holds several (UDP GSO), else 0.
    seg: u16,
    dst: SocketAddr,
}

/// Up to `capacity` messages for one `sendmmsg`, each a byte range of one
/// caller buffer sent to one destination, optionally cut into datagrams
/// by UDP GSO.
pub struct SendBatch {
    entries: Vec<Entry>,
    msgs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<Cmsg>,
}

// SAFETY: the raw pointers inside the libc structs are scratch, rewritten
// from `entries` and the caller's buffer on every send, never dereferenced
// otherwise.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// Room for `capacity` messages.
    pub fn new(capacity: usize) -> SendBatch {
        SendBatch {
            entries: Vec::with_capacity(capacity),
            // SAFETY: all-zero is a valid value of these C structs.
            msgs: vec![unsafe { zeroed() }; capacity],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                capacity
            ],
            // SAFETY: as above.
            addrs: vec![unsafe { zeroed() }; capacity],
            cmsgs: vec![Cmsg([0; 32]); capacity],
        }
    }

    /// Messages queued.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// No room for another message.
    pub fn is_full(&self) -> bool {
        self.entries.len() == self.msgs.len()
    }

    /// Queues `buf[off..off + len]` for `dst`; with `seg > 0` and
    /// `len > seg` it leaves as `ceil(len / seg)` datagrams (UDP GSO).
    /// Returns `false` (and queues nothing) when full.
    pub fn push(&mut self, off: usize, len: usize, seg: usize, dst: SocketAddr) -> bool {
        if self.is_full() {
            return false;
        }
        let seg = if seg > 0 && len > seg { seg as u16 } else { 0 };
        self.entries.push(Entry { off, len, seg, dst });
        true
    }

    /// Forgets everything queued.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Sends everything queued from `buf` with as few `sendmmsg` calls as
    /// the kernel allows and clears the batch. Returns the number of
    /// messages sent; on an error, the messages from the failing one on are
    /// dropped and the error returned with how many went out before it.
    pub fn send(&mut self, fd: RawFd, buf: &[u8]) -> (usize, Option<io::Error>) {
        let n = self.entries.len();
        for (i, e) in self.entries.iter().enumerate() {
            assert!(
                e.off + e.len <= buf.len(),
                "send batch entry outside the buffer"
            );
            self.iovs[i] = libc::iovec {
                iov_base: buf[e.off..].as_ptr() as *mut libc::c_void,
                iov_len: e.len,
            };
            let addrlen = to_sockaddr(&e.dst, &mut self.addrs[i]);
            let hdr = &mut self.msgs[i].msg_hdr;
            hdr.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            hdr.msg_namelen = addrlen;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_flags = 0;
            if e.seg > 0 {
                let c = &mut self.cmsgs[i];
                hdr.msg_control = c.0.as_mut_ptr() as *mut libc::c_void;
                // SAFETY: CMSG_SPACE is a pure size computation.
                hdr.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
                // SAFETY: msg_control points at our 32-byte, 8-aligned
                // buffer, large enough for one cmsg with a u16.
                unsafe {
                    let cm = libc::CMSG_FIRSTHDR(hdr);
                    (*cm).cmsg_level = SOL_UDP;
                    (*cm).cmsg_type = UDP_SEGMENT;
                    (*cm).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cm) as *mut u16, e.seg);
                }
            } else {
                hdr.msg_control = std::ptr::null_mut();
                hdr.msg_controllen = 0;
            }
        }
        let mut sent = 0;
        let mut err = None;
        while sent < n {
            // SAFETY: msgs[sent..n] were filled above and point at live
            // buffers (ours and `buf`, borrowed for this call).
            let rc =
                unsafe { libc::sendmmsg(fd, self.msgs[sent..].as_mut_ptr(), (n - sent) as u32, 0) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if e.kind() == io::ErrorKind::WouldBlock {
                    // Socket buffer full: wait for room rather than drop.
                    let _ = poll_writable(fd);
                    continue;
                }
                err = Some(e);
                break;
            }
            sent += rc as usize;
        }
        self.entries.clear();
        (sent, err)
    }
}

fn poll_writable(fd: RawFd) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut pfd, 1, 100) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One received message: where it is in [`RecvBatch::buf`], its size, the
/// size of each datagram in it (`UDP_GRO`; equals `len` when there is one)
/// and the sender.
#[derive(Clone, Copy, Debug)]
pub struct RecvMsg {
    /// Offset in the batch buffer.
    pub off: usize,
    /// Bytes received.
    pub len: usize,
    /// Datagram size: every datagram in the message has it except the
    /// last, which may be shorter.
    pub seg: usize,
    /// The sender, if the kernel reported a known address family.
    pub from: Option<SocketAddr>,
}

/// `capacity` receive slots of `slot` bytes in one buffer, for one
/// `recvmmsg`.
pub struct RecvBatch {
    slot: usize,
    buf: Vec<u8>,
    msgs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<Cmsg>,
    got: Vec<RecvMsg>,
}

// SAFETY: as for SendBatch: pointers are rewritten before every call.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// `capacity` slots of `slot` bytes (65 535 holds any GRO message).
    pub fn new(capacity: usize, slot: usize) -> RecvBatch {
        RecvBatch {
            slot,
            buf: vec![0; capacity * slot],
            // SAFETY: all-zero is a valid value of these C structs.
            msgs: vec![unsafe { zeroed() }; capacity],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                capacity
            ],
            // SAFETY: as above.
            addrs: vec![unsafe { zeroed() }; capacity],
            cmsgs: vec![Cmsg([0; 32]); capacity],
            got: Vec::with_capacity(capacity),
        }
    }

    /// Receives what is queued, up to the capacity, without waiting
    /// (`MSG_DONTWAIT`). `Ok(0)` never happens: no data is `WouldBlock`.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.msgs.len();
        let base = self.buf.as_mut_ptr();
        for i in 0..n {
            self.iovs[i] = libc::iovec {
                // SAFETY: slot i lies inside buf (capacity * slot bytes).
                iov_base: unsafe { base.add(i * self.slot) } as *mut libc::c_void,
                iov_len: self.slot,
            };
            let hdr = &mut self.msgs[i].msg_hdr;
            hdr.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = self.cmsgs[i].0.as_mut_ptr() as *mut libc::c_void;
            hdr.msg_controllen = self.cmsgs[i].0.len() as _;
            hdr.msg_flags = 0;
            self.msgs[i].msg_len = 0;
        }
        self.got.clear();
        let rc = loop {
            // SAFETY: every mmsghdr points at live buffers we own.
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    self.msgs.as_mut_ptr(),
                    n as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            break rc as usize;
        };
        for i in 0..rc {
            let len = self.msgs[i].msg_len as usize;
            let mut seg = len;
            let hdr = &self.msgs[i].msg_hdr;
            // SAFETY: the kernel filled msg_control/msg_controllen; the
            // CMSG_* macros walk within them.
            unsafe {
                let mut cm = libc::CMSG_FIRSTHDR(hdr);
                while !cm.is_null() {
                    if (*cm).cmsg_level == SOL_UDP && (*cm).cmsg_type == UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(cm) as *const i32);
                        if v > 0 {
                            seg = v as usize;
                        }
                    }
                    cm = libc::CMSG_NXTHDR(hdr, cm);
                }
            }
            self.got.push(RecvMsg {
                off: i * self.slot,
                len,
                seg: seg.max(1),
                from: from_sockaddr(&self.addrs[i]),
            });
        }
        Ok(rc)
    }

    /// The messages of the last [`recv`](Self::recv).
    pub fn messages(&self) -> &[RecvMsg] {
        &self.got
    }

    /// The whole receive buffer (messages at their `off`).
    pub fn buf(&self) -> &[u8] {
        &self.buf
    }

    /// The whole receive buffer, for decrypting in place.
    pub fn buf_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Both at once: the messages and the buffer they live in.
    pub fn split_mut(&mut self) -> (&[RecvMsg], &mut [u8]) {
        (&self.got, &mut self.buf)
    }
}
