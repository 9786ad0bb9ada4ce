//! The runtime's unsafe calls, isolated here (docs/conventions.md).
#![allow(unsafe_code)]

use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;

/// Registers an owned file descriptor with tokio's reactor, to await its readiness.
pub fn async_fd(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `register` requires the descriptor to stay open and refer to the same file
    // description while the AsyncFd lives. The AsyncFd owns the OwnedFd, which closes it only
    // on drop, and OwnedFd::as_raw_fd always returns that same descriptor.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Makes `cmd`'s child get SIGKILL when the thread that spawns it dies: a VMM must not outlive
/// its VM shim (the task's cgroup could not be removed, and nobody would stop it).
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are sound: it makes one prctl system call and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}
