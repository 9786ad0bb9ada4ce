//! Snapshots: unpacked layers keyed by chain id, shared by every image with the same stack.
//!
//! A snapshot holds only its own layer's changes (files, and overlayfs whiteouts for deletions),
//! so a root filesystem is an overlay of the chain's snapshots. It is built in
//! `snapshots/tmp/<chain>` under the snapshot's lock, synced with `syncfs`, and renamed into
//! `snapshots/sha256/<chain>`: a snapshot directory that exists is complete.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Store, StoreError, io_err, remove_any, sync_dir};
use crate::digest::Digest;

impl Store {
    /// The directory holding a snapshot's files (it may not exist).
    pub fn snapshot_fs(&self, chain_id: &Digest) -> PathBuf {
        self.snapshots_dir().join(chain_id.hex()).join("fs")
    }

    /// Whether a complete snapshot exists.
    pub fn has_snapshot(&self, chain_id: &Digest) -> bool {
        self.snapshot_fs(chain_id).is_dir()
    }

    /// Ensures the snapshot `chain_id` exists, calling `build` with an empty directory to fill
    /// when it does not; `build` returns the bytes of file content it wrote. Returns whether it
    /// was built now, and its size. On error nothing is left behind.
    pub fn ensure_snapshot<E>(
        &self,
        chain_id: &Digest,
        build: impl FnOnce(&Path) -> Result<u64, E>,
    ) -> Result<(bool, u64), E>
    where
        E: From<StoreError>,
    {
        if self.has_snapshot(chain_id) {
            return Ok((false, self.snapshot_size(chain_id)));
        }
        let _lock = self.item_lock(&format!("snap-{}", chain_id.hex()))?;
        if self.has_snapshot(chain_id) {
            return Ok((false, self.snapshot_size(chain_id)));
        }
        let tmp = self.snapshots_tmp_dir().join(chain_id.hex());
        remove_any(&tmp)?; // left by a killed builder
        let tmp_fs = tmp.join("fs");
        fs::create_dir_all(&tmp_fs).map_err(io_err("create", &tmp_fs))?;
        let size = match build(&tmp_fs) {
            Ok(size) => size,
            Err(e) => {
                let _ = remove_any(&tmp);
                return Err(e);
            }
        };
        let finish = || -> Result<(), StoreError> {
            let size_file = tmp.join("size");
            fs::write(&size_file, size.to_string()).map_err(io_err("write", &size_file))?;
            let dir = fs::File::open(&tmp).map_err(io_err("open", &tmp))?;
            rustix::fs::syncfs(&dir).map_err(|e| io_err("syncfs", &tmp)(e.into()))?;
            let dest = self.snapshots_dir().join(chain_id.hex());
            fs::rename(&tmp, &dest).map_err(io_err("rename", &dest))?;
            sync_dir(&self.snapshots_dir())
        };
        if let Err(e) = finish() {
            let _ = remove_any(&tmp);
            return Err(e.into());
        }
        Ok((true, size))
    }

    /// Bytes of file content in a snapshot, as recorded when it was built.
    pub(crate) fn snapshot_size(&self, chain_id: &Digest) -> u64 {
        let path = self.snapshots_dir().join(chain_id.hex()).join("size");
        fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    pub(crate) fn remove_snapshot(&self, chain_id: &Digest) -> Result<(), StoreError> {
        // Rename out of sight first, so a kill mid-delete never leaves a partial snapshot
        // under its final name.
        let dir = self.snapshots_dir().join(chain_id.hex());
        let doomed = self
            .snapshots_tmp_dir()
            .join(format!("rm-{}", chain_id.hex()));
        remove_any(&doomed)?;
        match fs::rename(&dir, &doomed) {
            Ok(()) => remove_any(&doomed),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("rename", &dir)(e)),
        }
    }

    /// Chain ids of every complete snapshot.
    pub(crate) fn list_snapshots(&self) -> Result<Vec<Digest>, StoreError> {
        let dir = self.snapshots_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            if let Ok(d) = format!("sha256:{}", entry.file_name().to_string_lossy()).parse() {
                out.push(d);
            }
        }
        Ok(out)
    }
}
