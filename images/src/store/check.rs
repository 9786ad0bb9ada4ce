//! A consistency check of the whole store: what `skiff image verify` runs, and what the crash
//! tests assert after killing pulls at random points.

use std::fs;
use std::io::Read;

use super::{Store, StoreError, io_err};
use crate::digest::{Digest, Hasher};

impl Store {
    /// Re-hashes every blob and checks that every record and lease points at content that is
    /// present. Returns one line per problem; empty means consistent.
    pub fn verify(&self) -> Result<Vec<String>, StoreError> {
        let _lock = self.lock(false)?;
        let mut problems = Vec::new();
        let dir = self.blobs_dir();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else {
                problems.push(format!("stray file in blobs: {name}"));
                continue;
            };
            let path = entry.path();
            let mut f = fs::File::open(&path).map_err(io_err("open", &path))?;
            let mut hasher = Hasher::default();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(io_err("read", &path))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            let actual = hasher.finish();
            if actual != digest {
                problems.push(format!("blob {digest} hashes to {actual}"));
            }
        }
        for rec in self.list_records()? {
            for b in rec.blobs() {
                if !self.has_blob(b) {
                    problems.push(format!("image {} references missing blob {b}", rec.name));
                }
            }
            for c in rec.chain_ids() {
                if !self.has_snapshot(c) {
                    problems.push(format!(
                        "image {} references missing snapshot {c}",
                        rec.name
                    ));
                }
            }
        }
        for lease in self.list_rootfs()? {
            for c in &lease.chain_ids {
                if !self.has_snapshot(c) {
                    problems.push(format!(
                        "root filesystem {} uses missing snapshot {c}",
                        lease.id
                    ));
                }
            }
        }
        Ok(problems)
    }
}
