//! Container root filesystems: an overlayfs mount of an image's snapshots with its own upper and
//! work directories, and a lease that keeps the image's content from garbage collection.
//!
//! The lease (`rootfs/<id>.json`) is written before anything is mounted and removed last, so
//! `prune` never deletes a snapshot a mount is about to use or is using.
//!
//! mount(2) takes its options in one page (4096 bytes), which a deep image's list of absolute
//! lower directories overflows (containerd and Docker hit the same wall and shorten the paths by
//! changing directory in a child process). We can't chdir in a multi-threaded daemon, so when the
//! absolute paths do not fit, each lower directory is opened (`O_PATH`) and named by its
//! `/proc/self/fd/N` link, about 17 bytes a layer, which overlayfs resolves at mount time: more
//! than 200 layers fit, beyond Docker's own limit of 125.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, UnmountFlags};
use serde::{Deserialize, Serialize};

use super::{ImageRecord, Store, StoreError, io_err, now_secs, remove_any, write_atomic};
use crate::digest::Digest;

const PAGE: usize = 4096;

/// What a root filesystem was made from; kept while it exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsLease {
    /// The rootfs id (a container id, usually).
    pub id: String,
    /// The image name.
    pub image: String,
    /// The image's manifest digest.
    pub manifest_digest: Digest,
    /// Snapshots it stacks, bottom first.
    pub chain_ids: Vec<Digest>,
    /// When it was made.
    pub created_at: u64,
}

/// A mounted root filesystem.
#[derive(Clone, Debug)]
pub struct RootfsMount {
    /// Its lease.
    pub lease: RootfsLease,
    /// The merged view: the container's `/`.
    pub path: PathBuf,
    /// The writable upper directory.
    pub upper: PathBuf,
}

impl Store {
    fn lease_path(&self, id: &str) -> PathBuf {
        self.rootfs_dir().join(format!("{id}.json"))
    }

    /// Mounts a root filesystem for `id` from `image`. On error nothing is left behind.
    pub fn create_rootfs(&self, id: &str, image: &ImageRecord) -> Result<RootfsMount, StoreError> {
        validate_id(id)?;
        let _lock = self.lock(false)?;
        let lease_path = self.lease_path(id);
        if lease_path.exists() {
            return Err(StoreError::RootfsExists { id: id.to_owned() });
        }
        let chain_ids: Vec<Digest> = image.chain_ids().cloned().collect();
        if let Some(missing) = chain_ids.iter().find(|c| !self.has_snapshot(c)) {
            return Err(StoreError::SnapshotMissing {
                name: image.name.clone(),
                chain_id: missing.clone(),
            });
        }
        let lease = RootfsLease {
            id: id.to_owned(),
            image: image.name.clone(),
            manifest_digest: image.manifest_digest.clone(),
            chain_ids,
            created_at: now_secs(),
        };
        write_atomic(
            &lease_path,
            &serde_json::to_vec_pretty(&lease).expect("leases serialize"),
        )?;
        let dir = self.rootfs_dir().join(id);
        match self.mount_overlay(&lease, &dir) {
            Ok(mount) => {
                self.touch_record(&image.name)?;
                Ok(mount)
            }
            Err(e) => {
                let _ = remove_any(&dir);
                let _ = fs::remove_file(&lease_path);
                Err(e)
            }
        }
    }

    fn mount_overlay(&self, lease: &RootfsLease, dir: &Path) -> Result<RootfsMount, StoreError> {
        let upper = dir.join("upper");
        let work = dir.join("work");
        let merged = dir.join("merged");
        for d in [&upper, &work, &merged] {
            fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        // Topmost layer first, as overlayfs wants.
        let lowers: Vec<PathBuf> = lease
            .chain_ids
            .iter()
            .rev()
            .map(|c| self.snapshot_fs(c))
            .collect();
        let layers = lowers.len();
        let tail = format!(",upperdir={},workdir={}", upper.display(), work.display());
        let join = |parts: Vec<String>| format!("lowerdir={}{tail}", parts.join(":"));
        let mut options = join(lowers.iter().map(|p| p.display().to_string()).collect());
        // Held open until mount(2) has resolved the /proc/self/fd links.
        let mut _fds: Vec<OwnedFd> = Vec::new();
        if options.len() >= PAGE {
            for p in &lowers {
                _fds.push(
                    rustix::fs::open(
                        p,
                        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| io_err("open", p)(e.into()))?,
                );
            }
            options = join(
                _fds.iter()
                    .map(|fd| format!("/proc/self/fd/{}", fd.as_raw_fd()))
                    .collect(),
            );
            if options.len() >= PAGE {
                return Err(StoreError::TooManyLayers { layers });
            }
        }
        let data = std::ffi::CString::new(options).expect("store paths contain no NUL");
        rustix::mount::mount(
            "overlay",
            &merged,
            "overlay",
            MountFlags::empty(),
            data.as_c_str(),
        )
        .map_err(|e| StoreError::Mount {
            id: lease.id.clone(),
            layers,
            target: merged.clone(),
            source: e.into(),
        })?;
        Ok(RootfsMount {
            lease: lease.clone(),
            path: merged,
            upper,
        })
    }

    /// Unmounts and deletes a root filesystem and its lease.
    pub fn remove_rootfs(&self, id: &str) -> Result<(), StoreError> {
        validate_id(id)?;
        let lease_path = self.lease_path(id);
        let dir = self.rootfs_dir().join(id);
        if !lease_path.exists() && !dir.exists() {
            return Err(StoreError::RootfsNotFound { id: id.to_owned() });
        }
        let merged = dir.join("merged");
        match rustix::mount::unmount(&merged, UnmountFlags::empty()) {
            // EINVAL: not a mount point (a create that died before mounting).
            Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(io_err("unmount", &merged)(e.into())),
        }
        remove_any(&dir)?;
        remove_any(&lease_path)
    }

    /// Every lease, i.e. every root filesystem in existence.
    pub fn list_rootfs(&self) -> Result<Vec<RootfsLease>, StoreError> {
        let dir = self.rootfs_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let path = entry.map_err(io_err("list", &dir))?.path();
            let is_lease = path.extension().is_some_and(|e| e == "json")
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !is_lease {
                continue;
            }
            let data = fs::read(&path).map_err(io_err("read", &path))?;
            out.push(
                serde_json::from_slice(&data).map_err(|e| StoreError::CorruptRecord {
                    path,
                    message: e.to_string(),
                })?,
            );
        }
        out.sort_by(|a: &RootfsLease, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

fn validate_id(id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidRootfsId { id: id.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids() {
        for good in ["c1", "task-1.web_2"] {
            super::validate_id(good).unwrap();
        }
        for bad in ["", "..", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(super::validate_id(bad).is_err(), "{bad}");
        }
    }
}
