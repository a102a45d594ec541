//! TUN devices (Documentation/networking/tuntap.rst, `include/uapi/linux/if_tun.h`).
//!
//! A [`Tun`] is one queue of a TUN interface: an fd on `/dev/net/tun`
//! attached with `TUNSETIFF`. With [`TunOptions::vnet_hdr`] every packet
//! read or written is preceded by a `struct virtio_net_hdr` (10 bytes,
//! see [`crate::io::vnet`]); with offloads accepted by `TUNSETOFFLOAD` the
//! kernel hands us TCP (and, from 6.2, UDP) super-packets of up to 64 KiB
//! that still need segmenting, and accepts coalesced ones back.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

// include/uapi/linux/if_tun.h
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TUN: i16 = 0x0001;
const IFF_NO_PI: i16 = 0x1000;
const IFF_MULTI_QUEUE: i16 = 0x0100;
const IFF_VNET_HDR: i16 = 0x4000;

/// `TUNSETOFFLOAD` bits (if_tun.h).
pub mod offload {
    /// The kernel may hand us packets with a partial checksum
    /// (`VIRTIO_NET_HDR_F_NEEDS_CSUM`), and we may hand it such packets.
    pub const CSUM: u32 = 0x01;
    /// TCP segmentation offload for IPv4 (needs `CSUM`).
    pub const TSO4: u32 = 0x02;
    /// TCP segmentation offload for IPv6 (needs `CSUM`).
    pub const TSO6: u32 = 0x04;
    /// TSO with the ECN bit (CWR on the first segment only).
    pub const TSO_ECN: u32 = 0x08;
    /// UDP segmentation offload for IPv4 (Linux 6.2+).
    pub const USO4: u32 = 0x20;
    /// UDP segmentation offload for IPv6 (Linux 6.2+).
    pub const USO6: u32 = 0x40;
}

/// `struct ifreq` as `TUNSETIFF` reads it: the name and `ifr_flags`.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

/// How to open a TUN queue.
#[derive(Clone, Copy, Debug, Default)]
pub struct TunOptions {
    /// `IFF_VNET_HDR`: a `virtio_net_hdr` before every packet.
    pub vnet_hdr: bool,
    /// `IFF_MULTI_QUEUE`: open the same name again for more queues.
    pub multi_queue: bool,
    /// `O_NONBLOCK` on the fd.
    pub nonblocking: bool,
}

/// One queue of a TUN interface. Reads and writes take `&self`: one thread
/// may read while another writes.
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
    vnet_hdr: bool,
}

impl Tun {
    /// Opens `/dev/net/tun` and attaches to (or creates) interface `name`
    /// with `IFF_TUN | IFF_NO_PI` and the chosen options. The interface is
    /// left down and unaddressed (`ip link`/`ip addr` do that).
    pub fn open(name: &str, opts: TunOptions) -> io::Result<Tun> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TUN name must be 1..15 bytes",
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(
                libc::O_CLOEXEC
                    | if opts.nonblocking {
                        libc::O_NONBLOCK
                    } else {
                        0
                    },
            )
            .open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        if opts.vnet_hdr {
            req.flags |= IFF_VNET_HDR;
        }
        if opts.multi_queue {
            req.flags |= IFF_MULTI_QUEUE;
        }
        // SAFETY: TUNSETIFF reads (and writes back the name of) an ifreq
        // that lives across the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let len = req
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(req.name.len());
        let name = String::from_utf8_lossy(&req.name[..len]).into_owned();
        let tun = Tun {
            file,
            name,
            vnet_hdr: opts.vnet_hdr,
        };
        if opts.vnet_hdr {
            // The 10-byte header without num_buffers (we never use
            // VIRTIO_NET_F_MRG_RXBUF).
            let size: i32 = crate::io::vnet::VNET_HDR_LEN as i32;
            // SAFETY: TUNSETVNETHDRSZ reads an int.
            if unsafe { libc::ioctl(tun.fd(), TUNSETVNETHDRSZ, &size as *const i32) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(tun)
    }

    /// The kernel's name for the interface (as asked, or assigned).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A second handle on the same queue (a duplicated descriptor): for a
    /// thread that only writes into the TUN, such as the GRE receiver.
    pub fn try_clone(&self) -> io::Result<Tun> {
        Ok(Tun {
            file: self.file.try_clone()?,
            name: self.name.clone(),
            vnet_hdr: self.vnet_hdr,
        })
    }

    /// Whether packets carry a `virtio_net_hdr`.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Raw fd, for polling.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// `TUNSETOFFLOAD` with exactly these [`offload`] bits.
    pub fn set_offload(&self, bits: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe { libc::ioctl(self.fd(), TUNSETOFFLOAD, bits as libc::c_ulong) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Tries `wanted`, then without USO (kernels before 6.2), then without
    /// TSO, and returns what the kernel accepted (0: none).
    pub fn negotiate_offload(&self, wanted: u32) -> u32 {
        let uso = offload::USO4 | offload::USO6;
        let tso = offload::TSO4 | offload::TSO6 | offload::TSO_ECN;
        for bits in [wanted, wanted & !uso, wanted & !(uso | tso)] {
            if self.set_offload(bits).is_ok() {
                return bits;
            }
        }
        let _ = self.set_offload(0);
        0
    }

    /// Reads one packet (with its vnet header if enabled).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one packet.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }

    /// Writes one plain IP packet from a thread outside the forwarding
    /// loop: behind a zero `virtio_net_hdr` (no offload asked) when the
    /// device has one.
    pub fn write_ip(&self, pkt: &[u8]) -> io::Result<usize> {
        if self.vnet_hdr {
            let vnet = [0u8; crate::io::vnet::VNET_HDR_LEN];
            self.write_vectored(&[IoSlice::new(&vnet), IoSlice::new(pkt)])
        } else {
            self.write(pkt)
        }
    }

    /// Writes one packet gathered from several slices (the TUN driver
    /// treats one `writev` as one packet).
    pub fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(bufs)
    }

    /// Waits until a packet can be read, at most `timeout`.
    pub fn poll_readable(&self, timeout: Duration) -> io::Result<bool> {
        super::poll_readable(self.fd(), timeout)
    }

    /// Sets or clears `O_NONBLOCK`.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        super::set_nonblocking(self.fd(), on)
    }
}
