//! The task-wide IPC namespace of `ipcMode: task`: one namespace and one /dev/shm shared by the
//! task's containers, as Docker's `--ipc shareable` gives them through the ECS agent.
//!
//! No process holds them: the namespace is kept alive by a bind mount of its nsfs file
//! ([`skiff_netd::nsfs`], as for network namespaces), and /dev/shm is a tmpfs mounted next to it;
//! containers join the one and bind the other. Both mounts live
//! under skiffd's run directory (`<run_dir>/ns/<task id>/`), so they go with a reboot, and
//! [`remove`] takes them down with the task.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;

/// Errors of the task IPC namespace.
#[derive(Debug, thiserror::Error)]
pub enum IpcNsError {
    /// A step failed.
    #[error("task IPC namespace at {path}: {op}")]
    Sys {
        /// The directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A task's IPC namespace and shared /dev/shm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskIpc {
    /// The bind-mounted nsfs file to join.
    pub ns: PathBuf,
    /// The tmpfs to bind at /dev/shm.
    pub shm: PathBuf,
}

/// Makes the IPC namespace and a `shm_mib` MiB /dev/shm under `dir`. On error nothing is left.
pub fn create(dir: &Path, shm_mib: u32) -> Result<TaskIpc, IpcNsError> {
    let ipc = TaskIpc {
        ns: dir.join("ipc"),
        shm: dir.join("shm"),
    };
    let err = |op: &'static str| {
        let path = dir.to_owned();
        move |source: std::io::Error| IpcNsError::Sys { path, op, source }
    };
    std::fs::create_dir_all(&ipc.shm).map_err(err("create"))?;
    let made = (|| {
        let size = format!("mode=1777,size={}k", u64::from(shm_mib) * 1024);
        mount(
            Some("shm"),
            &ipc.shm,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(size.as_str()),
        )
        .map_err(|e| err("mount /dev/shm tmpfs")(e.into()))?;
        skiff_netd::nsfs::bind_new(CloneFlags::CLONE_NEWIPC, &ipc.ns)
            .map_err(err("unshare and bind the IPC namespace"))
    })();
    if let Err(e) = made {
        remove(dir);
        return Err(e);
    }
    Ok(ipc)
}

/// Unmounts and removes what [`create`] made under `dir`; whatever is missing is skipped.
pub fn remove(dir: &Path) {
    for m in ["ipc", "shm"] {
        let _ = umount2(&dir.join(m), MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        if rustix::process::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var("SKIFF_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "needs root, and SKIFF_REQUIRE_PRIVILEGED=1 forbids skipping"
        );
        eprintln!("SKIP: needs root (mounts, unshare)");
        false
    }

    #[test]
    fn a_namespace_outlives_its_thread_and_goes_with_remove() {
        if !root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t");
        let ipc = create(&dir, 1).unwrap();
        let mine = std::fs::metadata("/proc/self/ns/ipc").unwrap();
        let task = std::fs::metadata(&ipc.ns).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(mine.ino(), task.ino(), "a namespace of its own");
        remove(&dir);
        assert!(!dir.exists());
    }
}
