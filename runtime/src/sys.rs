//! The runtime's one unsafe call, isolated here (docs/conventions.md).
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
