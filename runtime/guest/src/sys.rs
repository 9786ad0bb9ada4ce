//! The agent's unsafe calls: confining a container process between fork and exec (its
//! capability sets among it: nix has no capset), and sizing a terminal (docs/conventions.md: unsafe code lives in `sys` modules).
#![allow(unsafe_code)]

use std::ffi::CString;

use crate::proto::Capabilities;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::mount::{MsFlags, mount};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::unistd::{Gid, Uid, chdir, chroot, mkdir, setgid, setgroups, setsid, setuid, symlinkat};

/// Where and as whom a container process runs.
#[derive(Debug)]
pub struct Confinement {
    /// Its root filesystem (a mounted disk).
    pub root: CString,
    /// `root/dev`, where a tmpfs with the standard devices is mounted.
    pub dev: CString,
    /// `root/dev/pts`, where the guest's devpts is bound.
    pub pts: CString,
    /// `root/dev/ptmx`, a symlink to `pts/ptmx`.
    pub ptmx: CString,
    /// `root/proc`, where its procfs is mounted.
    pub proc: CString,
    /// `root/sys`, where sysfs is mounted read-only.
    pub sys: CString,
    /// `root/dev/<name>` of each standard device, with its major and minor.
    pub devices: Vec<(CString, u64, u64)>,
    /// Working directory inside the root.
    pub cwd: CString,
    /// User.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Bind mounts into the root: source, target (inside `root`), read-only.
    pub binds: Vec<(CString, CString, bool)>,
    /// Its stdin is a terminal that becomes its controlling terminal.
    pub controlling_terminal: bool,
    /// Its capability sets (none: the agent's), and the highest capability number the guest
    /// kernel knows.
    pub capabilities: Option<(Capabilities, u32)>,
    /// PR_SET_NO_NEW_PRIVS.
    pub no_new_privileges: bool,
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`: one of the two 32-bit halves of the sets.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, in two `CapData`.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Drops from the bounding set every capability not in `bounding` (numbers up to `last`).
fn drop_bounding(bounding: u64, last: u32) -> nix::Result<()> {
    for cap in (0..=last.min(63)).filter(|c| bounding & (1 << c) == 0) {
        // SAFETY: PR_CAPBSET_DROP takes the capability number by value and no pointer.
        let rc = unsafe {
            nix::libc::prctl(
                nix::libc::PR_CAPBSET_DROP,
                nix::libc::c_ulong::from(cap),
                0,
                0,
                0,
            )
        };
        if rc < 0 {
            return Err(nix::Error::last());
        }
    }
    Ok(())
}

/// Sets the calling thread's effective and permitted sets (inheritable empty).
fn set_capabilities(c: &Capabilities) -> nix::Result<()> {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let half = |shift: u32| CapData {
        effective: (c.effective >> shift) as u32,
        permitted: (c.permitted >> shift) as u32,
        inheritable: 0,
    };
    let data = [half(0), half(32)];
    // SAFETY: capset reads a version-3 header and two data structs (the layouts of
    // linux/capability.h, `repr(C)`), both alive on this stack for the call.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_capset,
            &header as *const CapHeader,
            data.as_ptr(),
        )
    };
    if rc < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// The character devices a container gets in its /dev (as OCI runtimes create them).
pub const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Makes `cmd`'s child, before it execs: the leader of a new session (so that a signal reaches
/// its process group), in a mount namespace of its own where its root is `c.root` with a
/// private /dev and /proc, a read-only /sys and its volumes, in `c.cwd`, as `c.uid`/`c.gid`.
pub fn confine(cmd: &mut Command, c: Confinement) {
    let groups: Vec<Gid> = c.groups.iter().copied().map(Gid::from_raw).collect();
    let run = move || -> nix::Result<()> {
        setsid()?;
        if c.controlling_terminal {
            // SAFETY: TIOCSCTTY takes an int argument by value (0: do not steal); fd 0 is the
            // terminal's slave side, set up by the spawner, and this process leads a new
            // session without a controlling terminal.
            if unsafe { nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) } < 0 {
                return Err(nix::Error::last());
            }
        }
        crate::mounts::private_namespace()?;
        // An image without /dev or /proc has its process run without them, as a minimal
        // container can.
        if mount(
            Some("tmpfs"),
            c.dev.as_c_str(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=755"),
        )
        .is_ok()
        {
            for (path, major, minor) in &c.devices {
                mknod(
                    path.as_c_str(),
                    SFlag::S_IFCHR,
                    Mode::from_bits_truncate(0o666),
                    makedev(*major, *minor),
                )?;
            }
            // The guest's terminals (an `exec -t`'s among them), with /dev/ptmx to make more.
            mkdir(c.pts.as_c_str(), Mode::from_bits_truncate(0o755))?;
            crate::mounts::bind(c"/dev/pts", &c.pts, false)?;
            symlinkat("pts/ptmx", None, c.ptmx.as_c_str())?;
        }
        let _ = mount(
            Some("proc"),
            c.proc.as_c_str(),
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        );
        // Read-only, as OCI runtimes mount it: the guest's devices, its network's among them.
        let _ = mount(
            Some("sysfs"),
            c.sys.as_c_str(),
            Some("sysfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        );
        for (src, dst, ro) in &c.binds {
            crate::mounts::bind(src, dst, *ro)?;
        }
        chroot(c.root.as_c_str())?;
        chdir("/")?;
        chdir(c.cwd.as_c_str())?;
        // As runc: the bounding set first (CAP_SETPCAP is still held), the permitted set kept
        // across the change of user, then the sets of the spec.
        if let Some((caps, last)) = &c.capabilities {
            drop_bounding(caps.bounding, *last)?;
            nix::sys::prctl::set_keepcaps(true)?;
        }
        setgroups(&groups)?;
        setgid(Gid::from_raw(c.gid))?;
        setuid(Uid::from_raw(c.uid))?;
        if let Some((caps, _)) = &c.capabilities {
            set_capabilities(caps)?;
            nix::sys::prctl::set_keepcaps(false)?;
        }
        if c.no_new_privileges {
            nix::sys::prctl::set_no_new_privs()?;
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // work is sound: it makes system calls only, on values computed before the fork (the
    // CStrings and the group list are built by the parent; nix passes CStr paths without
    // allocating), and returns errors as values without panicking.
    unsafe {
        cmd.pre_exec(move || run().map_err(std::io::Error::from));
    }
}

/// Sets the window size of the terminal whose master side is `master`; the kernel signals the
/// terminal's foreground process group (SIGWINCH).
pub fn set_window_size(master: &std::fs::File, rows: u16, cols: u16) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let size = nix::libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `struct winsize` through the pointer, which points to a live,
    // initialised one for the duration of the call; the fd is an open terminal master.
    if unsafe { nix::libc::ioctl(master.as_raw_fd(), nix::libc::TIOCSWINSZ, &size) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
