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

/// Makes `cmd`'s child a virtio-fs daemon's: `listener` (a listening socket the caller keeps
/// open until the spawn) becomes its fd 3, and, when `read_only` is given, it runs in a mount
/// namespace of its own where that directory is a read-only bind of itself (with nosuid and
/// nodev), so a guest cannot write a volume no container may write, whatever it mounts.
pub fn share_daemon(
    cmd: &mut std::process::Command,
    listener: std::os::fd::RawFd,
    read_only: Option<std::ffi::CString>,
) {
    use std::os::unix::process::CommandExt;
    let run = move || -> nix::Result<()> {
        if listener == 3 {
            // dup2 onto itself would leave close-on-exec set.
            nix::fcntl::fcntl(
                3,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )?;
        } else {
            nix::unistd::dup2(listener, 3)?;
        }
        if let Some(dir) = &read_only {
            skiff_guest::mounts::private_namespace()?;
            skiff_guest::mounts::bind(dir, dir, true)?;
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // work is sound: it makes system calls only (fcntl, dup2, and unshare and mount through
    // `skiff_guest::mounts`, which allocates nothing) on values computed before the fork (the
    // CString; nix passes CStr paths without allocating), and returns errors as values without
    // panicking.
    unsafe {
        cmd.pre_exec(move || run().map_err(std::io::Error::from));
    }
}
