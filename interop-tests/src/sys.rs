//! The only `unsafe` in the harness: a few libc calls for process liveness,
//! signals and privilege checks.

use std::io;

/// `true` when running with effective uid 0 (network namespaces need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `true` if a process with this pid exists (even if owned by someone else).
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only performs the existence/permission check.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Sends `sig` to `pid`; `false` if the process is already gone.
pub fn send_signal(pid: i32, sig: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: plain kill(2) on a positive pid (never a process group).
    unsafe { libc::kill(pid, sig) == 0 }
}

pub const SIGTERM: i32 = libc::SIGTERM;
pub const SIGKILL: i32 = libc::SIGKILL;

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGINT/SIGTERM/SIGHUP in the calling thread and every thread it
/// spawns afterwards, so that only [`wait_termination_signal`] receives them.
/// Must run before any other thread exists. The mask is inherited across
/// fork and exec: every child must go through [`unblock_in_child`].
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: set is a valid, initialised sigset_t.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Makes `cmd`'s process start with the termination signals unblocked
/// again (otherwise the daemons we SIGTERM would never see it).
pub fn unblock_in_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let set = termination_set();
    // SAFETY: runs between fork and exec; pthread_sigmask only touches the
    // calling thread's mask and does not allocate or lock.
    unsafe {
        cmd.pre_exec(move || {
            let rc = libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(rc))
            }
        });
    }
}

/// Waits for one of the blocked termination signals and returns its number.
pub fn wait_termination_signal() -> i32 {
    let set = termination_set();
    let mut sig: libc::c_int = 0;
    loop {
        // SAFETY: set is initialised, sig is a valid out-pointer.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc == 0 {
            return sig;
        }
    }
}
