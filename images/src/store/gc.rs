//! Removal: `rm` of one image and `prune` by rules like ECR lifecycle policies and the ECS
//! agent's image cleanup (keep the N most recently used per repository, drop what has not been
//! used for longer than an age), then a sweep of content no record references.
//!
//! Everything here runs under the exclusive store lock, so no pull or mount is half-way while
//! content is judged unreferenced. An image a root filesystem uses is never removed, and images
//! pulled with `prefer-cached` are exempt from the rules (not from an explicit `rm`).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::time::Duration;

use serde::Serialize;

use super::{ImageRecord, Store, StoreError, io_err, now_secs, remove_any};
use crate::digest::Digest;

/// Which images `prune` removes, besides unreferenced content.
#[derive(Clone, Debug, Default)]
pub struct PrunePolicy {
    /// Keep at most this many images per repository, most recently used first.
    pub keep_per_repository: Option<usize>,
    /// Remove images not used for longer than this.
    pub unused_for: Option<Duration>,
    /// Only report what would go.
    pub dry_run: bool,
}

/// What a prune removed (or, in a dry run, would remove).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    /// Image names, with the rule that took each.
    pub images: Vec<(String, String)>,
    /// Blobs no remaining image references.
    pub blobs: Vec<Digest>,
    /// Snapshots no remaining image or root filesystem uses.
    pub snapshots: Vec<Digest>,
    /// Bytes freed.
    pub bytes: u64,
    /// Whether anything was actually removed.
    pub dry_run: bool,
}

impl Store {
    /// Removes the image `name` and the content only it referenced.
    pub fn remove_image(&self, name: &str) -> Result<PruneReport, StoreError> {
        let _lock = self.lock(true)?;
        if self.get_record(name)?.is_none() {
            return Err(StoreError::ImageNotFound {
                name: name.to_owned(),
            });
        }
        if let Some(lease) = self.list_rootfs()?.into_iter().find(|l| l.image == name) {
            return Err(StoreError::ImageInUse {
                name: name.to_owned(),
                rootfs: lease.id,
            });
        }
        self.remove_record(name)?;
        let mut report = self.sweep(false)?;
        report.images.push((name.to_owned(), "removed".into()));
        Ok(report)
    }

    /// Applies `policy`, then removes unreferenced content and leftovers of killed writers.
    pub fn prune(&self, policy: &PrunePolicy) -> Result<PruneReport, StoreError> {
        let _lock = self.lock(true)?;
        let in_use: HashSet<String> = self.list_rootfs()?.into_iter().map(|l| l.image).collect();
        let records = self.list_records()?;
        let doomed = select(&records, &in_use, policy, now_secs());
        if !policy.dry_run {
            for (name, _) in &doomed {
                self.remove_record(name)?;
            }
        }
        let mut report = self.sweep_except(policy.dry_run, &doomed)?;
        report.images = doomed;
        Ok(report)
    }

    fn sweep(&self, dry_run: bool) -> Result<PruneReport, StoreError> {
        self.sweep_except(dry_run, &[])
    }

    /// Removes blobs and snapshots that no record (other than `ignoring`) or lease references.
    fn sweep_except(
        &self,
        dry_run: bool,
        ignoring: &[(String, String)],
    ) -> Result<PruneReport, StoreError> {
        let ignored: HashSet<&str> = ignoring.iter().map(|(n, _)| n.as_str()).collect();
        let mut blobs = HashSet::new();
        let mut snaps = HashSet::new();
        for rec in self.list_records()? {
            if ignored.contains(rec.name.as_str()) {
                continue;
            }
            blobs.extend(rec.blobs().cloned());
            snaps.extend(rec.chain_ids().cloned());
        }
        for lease in self.list_rootfs()? {
            snaps.extend(lease.chain_ids);
        }
        let mut report = PruneReport {
            dry_run,
            ..Default::default()
        };
        let blob_dir = self.blobs_dir();
        for entry in fs::read_dir(&blob_dir).map_err(io_err("list", &blob_dir))? {
            let entry = entry.map_err(io_err("list", &blob_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match format!("sha256:{name}").parse::<Digest>() {
                Ok(d) if blobs.contains(&d) => continue,
                Ok(d) => report.blobs.push(d),
                Err(_) => {} // stray temp files are handled below
            }
            report.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            if !dry_run {
                remove_any(&entry.path())?;
            }
        }
        for chain in self.list_snapshots()? {
            if snaps.contains(&chain) {
                continue;
            }
            report.bytes += self.snapshot_size(&chain);
            if !dry_run {
                self.remove_snapshot(&chain)?;
            }
            report.snapshots.push(chain);
        }
        if !dry_run {
            // Leftovers of killed writers. Nobody writes while we hold the exclusive lock; partial
            // downloads are kept for a day so that a pull interrupted earlier can resume.
            for dir in [self.snapshots_tmp_dir(), self.locks_dir()] {
                clear_dir(&dir, |_| true)?;
            }
            let day_ago = now_secs().saturating_sub(86_400);
            clear_dir(&self.ingest_dir(), |m| {
                m.modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .is_none_or(|t| t.as_secs() < day_ago)
            })?;
        }
        report.blobs.sort();
        report.snapshots.sort();
        Ok(report)
    }
}

fn clear_dir(
    dir: &std::path::Path,
    doomed: impl Fn(&fs::Metadata) -> bool,
) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        if entry.metadata().is_ok_and(|m| doomed(&m)) {
            remove_any(&entry.path())?;
        }
    }
    Ok(())
}

/// The images `policy` removes, with the rule that took each; never one in `in_use` or kept.
fn select(
    records: &[ImageRecord],
    in_use: &HashSet<String>,
    policy: &PrunePolicy,
    now: u64,
) -> Vec<(String, String)> {
    let mut by_repo: BTreeMap<&str, Vec<&ImageRecord>> = BTreeMap::new();
    for r in records {
        by_repo.entry(&r.repository).or_default().push(r);
    }
    let mut out = Vec::new();
    for (_, mut imgs) in by_repo {
        imgs.sort_by_key(|r| std::cmp::Reverse(r.last_touched()));
        for (rank, r) in imgs.into_iter().enumerate() {
            if in_use.contains(&r.name) || r.keep {
                continue;
            }
            if let Some(keep) = policy.keep_per_repository.filter(|k| rank >= *k) {
                out.push((
                    r.name.clone(),
                    format!("beyond the {keep} most recent of its repository"),
                ));
            } else if let Some(age) = policy
                .unused_for
                .filter(|a| now.saturating_sub(r.last_touched()) > a.as_secs())
            {
                out.push((
                    r.name.clone(),
                    format!("unused for more than {}", humantime::format_duration(age)),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::Platform;

    fn rec(name: &str, repo: &str, touched: u64) -> ImageRecord {
        ImageRecord {
            name: name.into(),
            repository: repo.into(),
            index_digest: None,
            manifest_digest: Digest::of(name.as_bytes()),
            manifest_media_type: String::new(),
            config_digest: Digest::of(b"c"),
            platform: Platform::host(),
            layers: vec![],
            unpacked_bytes: 0,
            source: "registry".into(),
            pulled_at: touched,
            last_used_at: None,
            keep: false,
        }
    }

    #[test]
    fn keeps_n_most_recent_and_spares_in_use_and_kept() {
        let mut kept = rec("r/a:old-kept", "r/a", 1);
        kept.keep = true;
        let records = vec![
            rec("r/a:1", "r/a", 10),
            rec("r/a:2", "r/a", 30),
            rec("r/a:3", "r/a", 20),
            rec("r/a:busy", "r/a", 5),
            kept,
            rec("r/b:1", "r/b", 1),
        ];
        let in_use = HashSet::from(["r/a:busy".to_string()]);
        let policy = PrunePolicy {
            keep_per_repository: Some(2),
            ..Default::default()
        };
        let names: Vec<String> = select(&records, &in_use, &policy, 100)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, vec!["r/a:1".to_string()]);
    }

    #[test]
    fn removes_by_age() {
        let records = vec![rec("r/a:1", "r/a", 10), rec("r/a:2", "r/a", 95)];
        let policy = PrunePolicy {
            unused_for: Some(Duration::from_secs(50)),
            ..Default::default()
        };
        let got = select(&records, &HashSet::new(), &policy, 100);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "r/a:1");
        assert!(
            got[0].1.contains("unused for more than 50s"),
            "{}",
            got[0].1
        );
    }
}
