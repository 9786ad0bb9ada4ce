//! Image records: what a name points to. A record is written only after every blob and snapshot
//! it references is durable, so a record that exists is always a complete, usable image.

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, io_err, now_secs, write_atomic};
use crate::digest::Digest;
use crate::platform::Platform;

/// One layer of a stored image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the (possibly compressed) blob.
    pub digest: Digest,
    /// Blob size in bytes.
    pub size: u64,
    /// The blob's media type.
    pub media_type: String,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Chain id of the stack up to and including this layer: the snapshot's key.
    pub chain_id: Digest,
}

/// A stored image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The canonical reference (`docker.io/library/busybox:latest`, `host/repo@sha256:...`).
    pub name: String,
    /// Registry and repository (`docker.io/library/busybox`).
    pub repository: String,
    /// The digest of the index or manifest list the name resolved to, if it was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    /// The digest of the platform's image manifest.
    pub manifest_digest: Digest,
    /// The manifest's media type.
    pub manifest_media_type: String,
    /// The digest of the image config.
    pub config_digest: Digest,
    /// The image's platform.
    pub platform: Platform,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// Bytes of file content once unpacked.
    pub unpacked_bytes: u64,
    /// Where it came from: `registry`, `oci-layout:<path>`, `docker-archive:<path>`.
    pub source: String,
    /// When it was pulled or loaded (seconds since the epoch).
    pub pulled_at: u64,
    /// When a root filesystem was last made from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<u64>,
    /// Exempt from age and count cleanup (pulled with `prefer-cached`, as the ECS agent does).
    #[serde(default)]
    pub keep: bool,
}

impl ImageRecord {
    /// Every blob this image references.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        self.index_digest
            .iter()
            .chain([&self.manifest_digest, &self.config_digest])
            .chain(self.layers.iter().map(|l| &l.digest))
    }

    /// Chain ids of the image's snapshots, bottom first.
    pub fn chain_ids(&self) -> impl Iterator<Item = &Digest> {
        self.layers.iter().map(|l| &l.chain_id)
    }

    /// The last time the image was pulled or used.
    pub fn last_touched(&self) -> u64 {
        self.last_used_at.unwrap_or(0).max(self.pulled_at)
    }

    /// Whether `digest` names this image (its manifest, or the index it was chosen from).
    pub fn has_digest(&self, digest: &Digest) -> bool {
        &self.manifest_digest == digest || self.index_digest.as_ref() == Some(digest)
    }
}

impl Store {
    fn record_path(&self, name: &str) -> PathBuf {
        self.images_dir()
            .join(format!("{}.json", Digest::of(name.as_bytes()).hex()))
    }

    /// Registers (or re-points) an image. Call only once its content is all stored.
    fn put_record(&self, record: &ImageRecord) -> Result<(), StoreError> {
        let data = serde_json::to_vec_pretty(record).expect("records serialize");
        write_atomic(&self.record_path(&record.name), &data)
    }

    /// The record named exactly `name`.
    pub fn get_record(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        let path = self.record_path(name);
        match fs::read(&path) {
            Ok(data) => {
                serde_json::from_slice(&data)
                    .map(Some)
                    .map_err(|e| StoreError::CorruptRecord {
                        path,
                        message: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Every record, sorted by name.
    pub fn list_records(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let dir = self.images_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let path = entry.map_err(io_err("list", &dir))?.path();
            if path.extension().is_none_or(|e| e != "json")
                || path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
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
        out.sort_by(|a: &ImageRecord, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes the record named `name` (content stays until garbage collection).
    pub(crate) fn remove_record(&self, name: &str) -> Result<(), StoreError> {
        let path = self.record_path(name);
        fs::remove_file(&path).map_err(io_err("remove", &path))
    }

    /// Read-modify-write of the record `name` under its lock, so that two writers (a pull
    /// re-pointing a tag and a mount noting its use) never lose each other's update.
    pub fn update_record(
        &self,
        name: &str,
        f: impl FnOnce(Option<ImageRecord>) -> Option<ImageRecord>,
    ) -> Result<(), StoreError> {
        let _lock = self.item_lock(&format!("rec-{}", Digest::of(name.as_bytes()).hex()))?;
        match f(self.get_record(name)?) {
            Some(rec) => self.put_record(&rec),
            None => Ok(()),
        }
    }

    /// Notes that the image was just used.
    pub(crate) fn touch_record(&self, name: &str) -> Result<(), StoreError> {
        self.update_record(name, |rec| {
            rec.map(|rec| ImageRecord {
                last_used_at: Some(now_secs()),
                ..rec
            })
        })
    }
}
