//! The content store under Skiff's root (default `/var/lib/skiff`).
//!
//! ```text
//! <root>/store.lock                    shared by pulls/mounts, exclusive by rm/prune
//! <root>/content/blobs/sha256/<hex>    verified blobs (layers, configs, manifests)
//! <root>/content/ingest/<hex>.partial  downloads in progress (resumable)
//! <root>/locks/{blob,snap}-<hex>.lock  one writer per blob / snapshot, across processes
//! <root>/snapshots/sha256/<chain>/fs   an unpacked layer, keyed by its chain id
//! <root>/snapshots/tmp/<chain>         a snapshot being built (never visible as a snapshot)
//! <root>/images/<sha256(name)>.json    image records, written last
//! <root>/rootfs/<id>.json, <id>/       leases and overlayfs mounts of container root filesystems
//! ```
//!
//! Crash safety comes from one rule: nothing becomes visible under its final name before all of
//! its content is durable. Blobs, snapshots and records are built under a temporary name, synced
//! and renamed into place, and the parent directory is synced. A kill at any moment leaves at most
//! a temporary file or directory behind, which the next writer of the same item (holding its lock)
//! or `prune` removes. Concurrency across processes rests on `flock`: one lock per blob and per
//! snapshot, so two pulls of the same image download and unpack each item once; and the store
//! lock, shared by everything that adds or uses content and exclusive for removal, so garbage
//! collection never deletes what a running pull or mount is about to reference.

mod blobs;
mod check;
mod gc;
mod records;
mod rootfs;
mod snapshots;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub use blobs::{Ingest, IngestStart};
pub use gc::{PrunePolicy, PruneReport};
pub use records::{ImageRecord, LayerRecord};
pub use rootfs::{RootfsLease, RootfsMount};

use crate::digest::Digest;

/// Default root of Skiff's state.
pub const DEFAULT_ROOT: &str = "/var/lib/skiff";

/// Errors of the content store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Downloaded or loaded content does not match its descriptor.
    #[error(
        "blob {expected} failed verification: got {actual} ({size} bytes, expected {expected_size})"
    )]
    DigestMismatch {
        /// The digest the descriptor promised.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
        /// Bytes received.
        size: u64,
        /// Bytes the descriptor promised.
        expected_size: u64,
    },
    /// More bytes arrived than the descriptor's size.
    #[error("blob {digest} is larger than its descriptor's {expected_size} bytes")]
    Oversize {
        /// The blob.
        digest: Digest,
        /// The declared size.
        expected_size: u64,
    },
    /// A stored record is unreadable.
    #[error("corrupt record {path}: {message}")]
    CorruptRecord {
        /// The record file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// No image has that name.
    #[error("no image {name} in the store")]
    ImageNotFound {
        /// The name asked for.
        name: String,
    },
    /// The image is used by a container root filesystem.
    #[error("image {name} is in use by root filesystem {rootfs}")]
    ImageInUse {
        /// The image.
        name: String,
        /// The rootfs id using it.
        rootfs: String,
    },
    /// A snapshot an image needs is missing.
    #[error("snapshot {chain_id} of image {name} is missing; pull the image again")]
    SnapshotMissing {
        /// The image.
        name: String,
        /// The missing chain id.
        chain_id: Digest,
    },
    /// A rootfs id with characters other than `[A-Za-z0-9_.-]`.
    #[error("invalid root filesystem id {id:?}: use 1-128 characters of [A-Za-z0-9_.-]")]
    InvalidRootfsId {
        /// The id.
        id: String,
    },
    /// A rootfs with that id exists already.
    #[error("root filesystem {id} exists already")]
    RootfsExists {
        /// The id.
        id: String,
    },
    /// No rootfs with that id.
    #[error("no root filesystem {id}")]
    RootfsNotFound {
        /// The id.
        id: String,
    },
    /// The overlay mount failed.
    #[error("cannot mount overlay root filesystem {id} ({layers} layers) at {target}")]
    Mount {
        /// The rootfs id.
        id: String,
        /// Layer count.
        layers: usize,
        /// The mount point.
        target: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Even with short paths the overlay options exceed what mount(2) takes.
    #[error("image has too many layers ({layers}) for one overlay mount")]
    TooManyLayers {
        /// Layer count.
        layers: usize,
    },
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { op, path, source }
}

/// A handle on a content store directory. Cheap to clone; all state is on disk.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// A held store lock; released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let store = Self { root: root.into() };
        for dir in [
            store.blobs_dir(),
            store.ingest_dir(),
            store.locks_dir(),
            store.snapshots_dir(),
            store.snapshots_tmp_dir(),
            store.images_dir(),
            store.rootfs_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        Ok(store)
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("content/blobs/sha256")
    }
    fn ingest_dir(&self) -> PathBuf {
        self.root.join("content/ingest")
    }
    fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }
    fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots/sha256")
    }
    fn snapshots_tmp_dir(&self) -> PathBuf {
        self.root.join("snapshots/tmp")
    }
    fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    fn rootfs_dir(&self) -> PathBuf {
        self.root.join("rootfs")
    }

    /// Takes the store lock shared (adding or using content) or exclusive (removing content).
    /// Blocks until it is granted.
    pub fn lock(&self, exclusive: bool) -> Result<StoreLock, StoreError> {
        let path = self.root.join("store.lock");
        let file = open_lock_file(&path)?;
        if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        }
        .map_err(io_err("lock", &path))?;
        Ok(StoreLock { _file: file })
    }

    /// Takes the exclusive lock of one item (`blob-<hex>`, `snap-<hex>`). Blocks.
    fn item_lock(&self, name: &str) -> Result<StoreLock, StoreError> {
        let path = self.locks_dir().join(format!("{name}.lock"));
        let file = open_lock_file(&path)?;
        file.lock().map_err(io_err("lock", &path))?;
        Ok(StoreLock { _file: file })
    }
}

fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("open lock", path))
}

/// Seconds since the epoch, now.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `data` to `path` atomically and durably: temp file, fsync, rename, fsync of the
/// directory. Readers see the old content or the new, never a part.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().expect("store paths have a parent");
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(data).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", path))?;
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

/// Removes a file or a whole tree; missing is fine.
pub(crate) fn remove_any(path: &Path) -> Result<(), StoreError> {
    let res = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match res {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}
