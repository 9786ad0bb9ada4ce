//! The mount calls that both sides of a microVM make between fork and exec: the agent for a
//! container's process (its root, its volumes), the host's VM shim for a virtio-fs daemon (a
//! read-only view of a volume). Safe wrappers over mount(2) that allocate nothing (nix passes
//! `CStr` paths as they are), so they are sound in a forked child of a threaded process.

use std::ffi::CStr;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

/// Moves the calling process into a mount namespace of its own, whose mounts propagate
/// nowhere (so nothing it mounts reaches the namespace it came from).
pub fn private_namespace() -> nix::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
}

/// Binds `src` (recursively) at `dst`; read-only, nosuid and nodev when `read_only` (a bind's
/// remount replaces all its flags, so those two are given again).
pub fn bind(src: &CStr, dst: &CStr, read_only: bool) -> nix::Result<()> {
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    if read_only {
        mount(
            None::<&str>,
            dst,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            None::<&str>,
        )?;
    }
    Ok(())
}
