//! Namespaces that outlive every process: a fresh namespace bind-mounted on a file, as
//! `ip netns add` keeps network namespaces. Used for a task's network namespace (and by skiffd
//! for a task's IPC namespace).
//!
//! `unshare` changes the calling thread only, so the namespace is made on a throw-away thread:
//! no thread of the caller (a tokio worker) ever changes namespace. Unmounting the file lets the
//! namespace go once no process is in it.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

/// Makes a namespace of kind `flag` (`CLONE_NEWNET`, `CLONE_NEWIPC`) held by a bind mount on
/// `path` (created). On error nothing is left.
pub fn bind_new(flag: CloneFlags, path: &Path) -> std::io::Result<()> {
    let proc_file = if flag == CloneFlags::CLONE_NEWNET {
        "/proc/thread-self/ns/net"
    } else if flag == CloneFlags::CLONE_NEWIPC {
        "/proc/thread-self/ns/ipc"
    } else {
        return Err(std::io::Error::other(format!(
            "namespace kind {flag:?} is not held by a file here"
        )));
    };
    std::fs::File::create(path)?;
    let target = path.to_owned();
    let made = std::thread::spawn(move || -> nix::Result<()> {
        unshare(flag)?;
        mount(
            Some(proc_file),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    })
    .join()
    .expect("namespace thread");
    made.map_err(|e| {
        let _ = std::fs::remove_file(path);
        e.into()
    })
}

/// Unmounts and removes a namespace file; whatever is missing is skipped.
pub fn unbind(path: &Path) {
    let _ = umount2(path, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_outlives_its_thread_and_goes_with_unbind() {
        if !rustix::process::geteuid().is_root() {
            assert!(
                std::env::var("SKIFF_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
                "needs root, and SKIFF_REQUIRE_PRIVILEGED=1 forbids skipping"
            );
            eprintln!("SKIP: needs root (unshare, mount)");
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        for (flag, mine) in [
            (CloneFlags::CLONE_NEWNET, "/proc/self/ns/net"),
            (CloneFlags::CLONE_NEWIPC, "/proc/self/ns/ipc"),
        ] {
            let f = tmp.path().join("ns");
            bind_new(flag, &f).unwrap();
            let (a, b) = (
                std::fs::metadata(mine).unwrap(),
                std::fs::metadata(&f).unwrap(),
            );
            assert_ne!(a.ino(), b.ino(), "a namespace of its own");
            unbind(&f);
            assert!(!f.exists());
        }
        assert!(bind_new(CloneFlags::CLONE_NEWUTS, &tmp.path().join("x")).is_err());
        assert!(!tmp.path().join("x").exists());
    }
}
