//! Blobs by digest: verified on the way in, written durably, shared by every image.
//!
//! A download goes to `ingest/<hex>.partial` under the blob's lock; a later attempt (this
//! process or the next) finds the partial file, re-hashes what is there and continues from its
//! end, which is what lets the registry client resume with a `Range` request after a dropped
//! connection or a killed pull. Only a blob whose size and digest match its descriptor is renamed
//! into `blobs/`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use super::{Store, StoreError, StoreLock, io_err, sync_dir};
use crate::digest::{Digest, Hasher};

/// The start of an ingest: the blob is there already, or this caller must provide it.
#[derive(Debug)]
pub enum IngestStart {
    /// The blob is stored and verified.
    Present,
    /// The caller holds the blob's lock and writes it.
    Write(Box<Ingest>),
}

/// A blob being written; holds the blob's lock until committed or dropped.
#[derive(Debug)]
pub struct Ingest {
    digest: Digest,
    size: u64,
    partial: PathBuf,
    final_path: PathBuf,
    file: File,
    hasher: Hasher,
    written: u64,
    _lock: StoreLock,
}

impl Store {
    /// The path of a stored blob (it may not exist).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// Whether a verified blob is stored.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Reads a whole stored blob.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        fs::read(&path).map_err(io_err("read blob", &path))
    }

    /// Opens a stored blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, StoreError> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(io_err("open blob", &path))
    }

    /// Stores bytes already in memory (manifests, configs), verifying them against `expected`
    /// when the caller knows the digest. Returns the digest.
    pub fn put_blob(&self, data: &[u8], expected: Option<&Digest>) -> Result<Digest, StoreError> {
        let digest = expected.cloned().unwrap_or_else(|| Digest::of(data));
        match self.begin_ingest(&digest, data.len() as u64)? {
            IngestStart::Present => Ok(digest),
            IngestStart::Write(mut ingest) => {
                ingest.reset()?;
                ingest.write(data)?;
                ingest.commit()?;
                Ok(digest)
            }
        }
    }

    /// Starts writing a blob, or reports that it is present. Blocks while another writer (in
    /// any process) holds the blob; when it finishes, the blob is usually present.
    pub fn begin_ingest(&self, digest: &Digest, size: u64) -> Result<IngestStart, StoreError> {
        let final_path = self.blob_path(digest);
        if final_path.is_file() {
            return Ok(IngestStart::Present);
        }
        let lock = self.item_lock(&format!("blob-{}", digest.hex()))?;
        if final_path.is_file() {
            return Ok(IngestStart::Present);
        }
        let partial = self.ingest_dir().join(format!("{}.partial", digest.hex()));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&partial)
            .map_err(io_err("open", &partial))?;
        // Resume: re-hash what an earlier attempt left, unless it cannot be a prefix.
        let mut hasher = Hasher::default();
        let mut written = 0u64;
        let len = file.metadata().map_err(io_err("stat", &partial))?.len();
        if len > size {
            file.set_len(0).map_err(io_err("truncate", &partial))?;
        } else {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = file.read(&mut buf).map_err(io_err("read", &partial))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                written += n as u64;
            }
        }
        file.seek(SeekFrom::Start(written))
            .map_err(io_err("seek", &partial))?;
        Ok(IngestStart::Write(Box::new(Ingest {
            digest: digest.clone(),
            size,
            partial,
            final_path,
            file,
            hasher,
            written,
            _lock: lock,
        })))
    }
}

impl Ingest {
    /// The digest being written.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The expected size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes already written: where a resumed download starts.
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// Appends bytes; refuses to go past the descriptor's size.
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        if self.written + data.len() as u64 > self.size {
            return Err(StoreError::Oversize {
                digest: self.digest.clone(),
                expected_size: self.size,
            });
        }
        self.file
            .write_all(data)
            .map_err(io_err("write", &self.partial))?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Discards what was written (the source restarted from byte 0).
    pub fn reset(&mut self) -> Result<(), StoreError> {
        self.file
            .set_len(0)
            .and_then(|_| self.file.seek(SeekFrom::Start(0)).map(|_| ()))
            .map_err(io_err("truncate", &self.partial))?;
        self.hasher = Hasher::default();
        self.written = 0;
        Ok(())
    }

    /// Verifies size and digest, then makes the blob durable and visible. A blob that fails
    /// verification is deleted, so the next attempt starts from scratch.
    pub fn commit(self) -> Result<(), StoreError> {
        let actual = self.hasher.clone().finish();
        if actual != self.digest || self.written != self.size {
            let _ = fs::remove_file(&self.partial);
            return Err(StoreError::DigestMismatch {
                expected: self.digest,
                actual,
                size: self.written,
                expected_size: self.size,
            });
        }
        self.file
            .sync_all()
            .map_err(io_err("fsync", &self.partial))?;
        fs::rename(&self.partial, &self.final_path).map_err(io_err("rename", &self.final_path))?;
        sync_dir(self.final_path.parent().expect("blob path has a parent"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_resumes_verifies_and_dedups() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = b"hello, content store".to_vec();
        let digest = Digest::of(&data);

        // A first attempt writes half and dies.
        let IngestStart::Write(mut first) = store.begin_ingest(&digest, data.len() as u64).unwrap()
        else {
            panic!("blob cannot be present yet")
        };
        first.write(&data[..7]).unwrap();
        drop(first);

        // The next one resumes from byte 7.
        let IngestStart::Write(mut second) =
            store.begin_ingest(&digest, data.len() as u64).unwrap()
        else {
            panic!("blob cannot be present yet")
        };
        assert_eq!(second.offset(), 7);
        second.write(&data[7..]).unwrap();
        assert!(
            second.write(b"x").is_err(),
            "writes past the size are refused"
        );
        second.commit().unwrap();
        assert_eq!(store.read_blob(&digest).unwrap(), data);
        assert!(matches!(
            store.begin_ingest(&digest, data.len() as u64).unwrap(),
            IngestStart::Present
        ));
    }

    #[test]
    fn a_wrong_blob_is_never_visible() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = Digest::of(b"expected");
        let IngestStart::Write(mut ingest) = store.begin_ingest(&digest, 8).unwrap() else {
            panic!("blob cannot be present yet")
        };
        ingest.write(b"tampered").unwrap();
        assert!(matches!(
            ingest.commit(),
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(!store.has_blob(&digest));
        let IngestStart::Write(again) = store.begin_ingest(&digest, 8).unwrap() else {
            panic!("blob cannot be present")
        };
        assert_eq!(again.offset(), 0, "a failed blob is not resumed");
    }
}
