//! The only `unsafe` in the dataplane: thin, allocation-free wrappers over
//! the Linux calls the standard library does not offer.
//!
//! | module | what |
//! |---|---|
//! | [`tun`] | `/dev/net/tun`: `TUNSETIFF` (`IFF_TUN`, `IFF_NO_PI`, `IFF_VNET_HDR`, `IFF_MULTI_QUEUE`), `TUNSETOFFLOAD`, `TUNSETVNETHDRSZ`, `poll` |
//! | [`raw`] | a raw IPv4 socket for one protocol (GRE) with `IP_HDRINCL` |
//! | [`udp`] | batched UDP: `sendmmsg` with per-message `UDP_SEGMENT` (UDP GSO), `recvmmsg` with `UDP_GRO` segment sizes, the socket options |
//!
//! Everything here takes and returns plain Rust types (`&[u8]`,
//! [`std::net::SocketAddr`], [`std::io::Result`]); the packet logic that
//! uses them lives in [`crate::io`] and is safe code.

pub mod raw;
pub mod tun;
pub mod udp;

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Waits until `fd` is readable or `timeout` passes. `Ok(true)` when
/// readable (or in error/hang-up state, so that the next read reports it).
pub fn poll_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    match rc {
        -1 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// Waits until any of `fds` (at most 4) is readable or `timeout` passes.
pub fn poll_readable_any(fds: &[RawFd], timeout: Duration) -> io::Result<bool> {
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 4];
    let n = fds.len().min(4);
    for (p, &fd) in pfds.iter_mut().zip(&fds[..n]) {
        p.fd = fd;
    }
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: n initialised pollfds.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), n as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(rc > 0)
}

/// Sets or clears `O_NONBLOCK`.
pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl F_GETFL/F_SETFL on an fd the caller owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        if libc::fcntl(fd, libc::F_SETFL, flags) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: value lives across the call; its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
