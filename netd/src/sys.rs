//! netd's unsafe seam: libnftables, the library behind the `nft` command, loaded at run time;
//! and the tun driver's ioctls, which have no netlink equivalent, for a microVM's tap.
//!
//! Running `nft` per change costs a process start and library loading (~3 ms), and its netlink
//! socket's close waits for an RCU grace period after deletions (~10 ms); one context kept open
//! for skiffd's life applies a change in a fraction of a millisecond. The library is loaded with
//! dlopen rather than linked so that a node without it (or a build host without its -dev
//! package, such as a cross build) still works, falling back to the `nft` command.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::os::fd::AsRawFd;

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxBufferError = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxGetErrorBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmdFromBuffer = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// A libnftables context (`struct nft_ctx`).
#[derive(Debug)]
pub struct Libnftables {
    ctx: *mut c_void,
    free: CtxFree,
    error_buffer: CtxGetErrorBuffer,
    run: RunCmdFromBuffer,
    // Declared last: dropped after `Drop::drop` has freed the context with `free`.
    _lib: libloading::Library,
}

// SAFETY: a `struct nft_ctx` has no affinity to the thread that made it (libnftables keeps no
// thread-local state); it is not safe for concurrent use, which `&mut self` on every use rules out.
unsafe impl Send for Libnftables {}

impl Libnftables {
    /// Loads `libnftables.so.1` and makes a context whose errors are buffered.
    pub fn open() -> Result<Self, String> {
        // SAFETY: loading libnftables runs its ELF initialisers, which set up the library's own
        // state only (and those of libnftnl, libmnl, jansson it depends on).
        let lib =
            unsafe { libloading::Library::new("libnftables.so.1") }.map_err(|e| e.to_string())?;
        // SAFETY: the function types are those of libnftables.h for the LIBNFTABLES_1 symbol
        // version that soname 1 exports: nft_ctx_new(uint32_t) -> struct nft_ctx *,
        // nft_ctx_free(struct nft_ctx *), nft_ctx_buffer_error(struct nft_ctx *) -> int,
        // nft_ctx_get_error_buffer(struct nft_ctx *) -> const char *,
        // nft_run_cmd_from_buffer(struct nft_ctx *, const char *) -> int. The copied pointers
        // stay valid while `_lib` is loaded, which the struct keeps until after the last use.
        let (new, free, buffer_error, error_buffer, run) = unsafe {
            (
                *lib.get::<CtxNew>(b"nft_ctx_new\0")
                    .map_err(|e| e.to_string())?,
                *lib.get::<CtxFree>(b"nft_ctx_free\0")
                    .map_err(|e| e.to_string())?,
                *lib.get::<CtxBufferError>(b"nft_ctx_buffer_error\0")
                    .map_err(|e| e.to_string())?,
                *lib.get::<CtxGetErrorBuffer>(b"nft_ctx_get_error_buffer\0")
                    .map_err(|e| e.to_string())?,
                *lib.get::<RunCmdFromBuffer>(b"nft_run_cmd_from_buffer\0")
                    .map_err(|e| e.to_string())?,
            )
        };
        // SAFETY: nft_ctx_new takes flags by value (0 is NFT_CTX_DEFAULT) and returns a new
        // context or NULL, checked before any use.
        let ctx = unsafe { new(0) };
        if ctx.is_null() {
            return Err("nft_ctx_new returned no context".into());
        }
        // SAFETY: `ctx` is the live context just made, used by this thread only.
        unsafe { buffer_error(ctx) };
        Ok(Self {
            ctx,
            free,
            error_buffer,
            run,
            _lib: lib,
        })
    }

    /// Runs an nft script as one transaction; the error is what nft would have printed.
    pub fn run(&mut self, script: &str) -> Result<(), String> {
        let text = CString::new(script).map_err(|_| "the script has a NUL byte".to_owned())?;
        // SAFETY: `self.ctx` is a live context (freed only in drop) used by one caller at a time
        // (`&mut self`); `text` is NUL-terminated and outlives the call, which does not keep it.
        let rc = unsafe { (self.run)(self.ctx, text.as_ptr()) };
        // SAFETY: errors are buffered (set in `open`); the buffer belongs to the context and
        // stays valid until the next call on it; NULL is checked; the text is copied out at once.
        let err = unsafe {
            let p = (self.error_buffer)(self.ctx);
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().trim().to_owned()
            }
        };
        if rc == 0 { Ok(()) } else { Err(err) }
    }
}

impl Drop for Libnftables {
    fn drop(&mut self) {
        // SAFETY: the context was made by nft_ctx_new, is freed exactly once, here, and the
        // library that `free` points into is still loaded (`_lib` is dropped after this).
        unsafe { (self.free)(self.ctx) };
    }
}

/// Makes a persistent tap device `name` in the calling thread's network namespace: it outlives
/// this call (and any VMM that attaches to it by name later) until it is deleted or its
/// namespace goes. Without packet information, so a VMM may add its virtio-net header.
pub fn make_persistent_tap(name: &str) -> std::io::Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not an interface name"),
        ));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: `ifreq` is plain old data, valid all zeros.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads (and writes back the name into) the `ifreq` it points to, which
    // lives across the call; the name is NUL-terminated (shorter than IFNAMSIZ, zeroed).
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: TUNSETPERSIST takes its argument by value; the fd is the tun file attached above.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
