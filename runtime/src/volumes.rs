//! A task's `volumes`, `mountPoints` and `volumesFrom`, as ECS (through Docker) defines them,
//! turned into directories on the node and OCI bind mounts for [`crate::spec::SpecInputs`].
//!
//! Kinds of volume, and where each lives:
//! - `host.sourcePath`: that node directory, created when missing (as `docker run -v` does) and
//!   never removed by Skiff;
//! - `host` without `sourcePath`, a volume with neither `host` nor `dockerVolumeConfiguration`,
//!   and `dockerVolumeConfiguration` with scope `task`: a scratch directory
//!   `<task_dir>/volumes/<name>/_data`, shared by the task's containers and removed with the task
//!   ([`remove_task_volumes`]);
//! - `dockerVolumeConfiguration` with scope `shared`: a named node volume
//!   `<node_volumes>/<name>/_data` (Docker's local driver layout) that outlives tasks. When absent
//!   it is created if `autoprovision` is true and is an error otherwise. When present and
//!   `autoprovision` is true, its labels must equal the definition's, as the ECS agent checks, so
//!   two task definitions never silently share a volume they describe differently.
//!
//! Only the `local` driver exists here; any other is refused. `labels` are recorded in
//! `<name>/labels.json` next to `_data`. `driverOpts` is not modelled by
//! [`crate::taskdef::NamedVolume`], so a definition that sets it is refused when parsed, rather
//! than mounted without the options it asked for.
//!
//! A named volume is built under a temporary name and renamed into place, so a concurrent task
//! provisioning the same shared volume sees it either complete or absent (the loser of the race
//! uses the winner's). [`prepare`] is all or nothing: if one volume fails, every directory it
//! created for the earlier ones is removed again.
//!
//! Mounts follow Docker: a container's own `mountPoints` first, then each `volumesFrom` source's
//! mounts (its own and, transitively, those it takes from others) at destinations not taken yet.
//! A `volumesFrom` `readOnly` of true or false overrides every mount it brings (Docker's `:ro` and
//! `:rw`); absent keeps each mount's own mode. Every mount is a recursive, private bind
//! (`rbind`, `rprivate`), plus `ro` when read-only.
//!
//! ```no_run
//! use skiff_runtime::taskdef::TaskDefinition;
//! use skiff_runtime::volumes::{self, NODE_VOLUMES, VolumeDirs};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let def = TaskDefinition::from_json(&std::fs::read_to_string("task.json")?)?;
//! let dirs = VolumeDirs {
//!     task_dir: "/var/lib/skiff/tasks/t-1".into(),
//!     node_volumes: NODE_VOLUMES.into(),
//! };
//! let prepared = volumes::prepare(&def, &dirs)?;
//! for c in &def.container_definitions {
//!     let mounts = prepared.mounts_for(&def, c)?; // into SpecInputs::mounts
//! }
//! // ... once every container of the task has exited:
//! volumes::remove_task_volumes(&dirs)?;
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder};

use crate::taskdef::{ContainerDefinition, NamedVolume, TaskDefinition, Volume, VolumeScope};

/// Where shared named volumes live on a node by default.
pub const NODE_VOLUMES: &str = "/var/lib/skiff/volumes";

const LABELS_FILE: &str = "labels.json";

/// Why a volume could not be provisioned, mounted or removed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A driver other than `local`.
    #[error("volume {volume}: driver {driver:?} is not supported (local only)")]
    UnsupportedDriver {
        /// The volume.
        volume: String,
        /// The driver asked for.
        driver: String,
    },
    /// A shared volume that does not exist, with `autoprovision` off.
    #[error("volume {volume}: shared volume {path} does not exist and autoprovision is off")]
    NotProvisioned {
        /// The volume.
        volume: String,
        /// Where it would be.
        path: PathBuf,
    },
    /// An existing shared volume whose labels differ from the definition's.
    #[error(
        "volume {volume}: existing shared volume {path} has labels {existing:?}, the task definition gives {wanted:?}"
    )]
    LabelsDiffer {
        /// The volume.
        volume: String,
        /// The volume's directory.
        path: PathBuf,
        /// Its recorded labels.
        existing: BTreeMap<String, String>,
        /// The definition's labels.
        wanted: BTreeMap<String, String>,
    },
    /// A volume's recorded labels could not be read.
    #[error("volume {volume}: {path} is not a JSON object of strings: {message}")]
    BadLabels {
        /// The volume.
        volume: String,
        /// The labels file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A file system operation failed.
    #[error("volume {volume}: {action} {path}")]
    Io {
        /// The volume.
        volume: String,
        /// What was being done (`creating`, `reading`, ...).
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Undoing a failed [`prepare`] failed too; the first error and the cleanup's, side by side.
    #[error("{primary}; and removing {path} again failed: {cleanup}")]
    Rollback {
        /// Why `prepare` failed.
        primary: Box<VolumeError>,
        /// What could not be removed.
        path: PathBuf,
        /// Why.
        cleanup: io::Error,
    },
    /// A mount point names a volume the task does not have.
    #[error("container {container}: mountPoints: no volume {volume:?} in the task")]
    UnknownVolume {
        /// The container.
        container: String,
        /// The volume named.
        volume: String,
    },
    /// `volumesFrom` names a container the task does not have.
    #[error("container {container}: volumesFrom: no container {source_container:?} in the task")]
    UnknownContainer {
        /// The container.
        container: String,
        /// The container named.
        source_container: String,
    },
    /// `volumesFrom` leads back to a container already on the path.
    #[error("container {container}: volumesFrom {source_container:?} closes a cycle")]
    VolumesFromCycle {
        /// The container whose `volumesFrom` closes the cycle.
        container: String,
        /// The container it names.
        source_container: String,
    },
    /// Two of a container's own mount points share a destination.
    #[error("container {container}: two mountPoints at {container_path}")]
    DuplicateMountPoint {
        /// The container.
        container: String,
        /// The destination.
        container_path: String,
    },
    /// oci-spec refused a mount.
    #[error("container {container}: mounting volume {volume} at {container_path}: {message}")]
    Mount {
        /// The container.
        container: String,
        /// The volume.
        volume: String,
        /// The destination.
        container_path: String,
        /// What the builder said.
        message: String,
    },
}

/// Where a task's volumes go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeDirs {
    /// The task's own directory; scratch and task-scoped volumes go under `volumes/` in it.
    pub task_dir: PathBuf,
    /// The root of shared named volumes ([`NODE_VOLUMES`] on a node).
    pub node_volumes: PathBuf,
}

impl VolumeDirs {
    fn task_volumes(&self) -> PathBuf {
        self.task_dir.join("volumes")
    }
}

/// A task's volumes, provisioned: each name's directory on the node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PreparedVolumes {
    paths: HashMap<String, PathBuf>,
}

/// Provisions every volume of `def`: creates missing host directories, the task's scratch and
/// task-scoped volumes, and autoprovisioned shared volumes. On error, removes whatever it created.
pub fn prepare(def: &TaskDefinition, dirs: &VolumeDirs) -> Result<PreparedVolumes, VolumeError> {
    let mut created = Vec::new();
    let mut paths = HashMap::new();
    for v in &def.volumes {
        match provision(v, dirs, &mut created) {
            Ok(path) => {
                paths.insert(v.name.clone(), path);
            }
            Err(primary) => return Err(undo(primary, created)),
        }
    }
    Ok(PreparedVolumes { paths })
}

/// Removes the task's scratch and task-scoped volumes (`<task_dir>/volumes`), leaving host
/// directories and shared volumes. Call it once no container of the task runs any more.
pub fn remove_task_volumes(dirs: &VolumeDirs) -> Result<(), VolumeError> {
    let path = dirs.task_volumes();
    match fs::remove_dir_all(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io_error("*", "removing task volumes", &path)(e))
        }
        _ => Ok(()),
    }
}

impl PreparedVolumes {
    /// Each volume's name and node directory, by name.
    pub fn all(&self) -> Vec<(String, PathBuf)> {
        let mut v: Vec<(String, PathBuf)> = self
            .paths
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        v.sort();
        v
    }

    /// The node directory of volume `name`.
    pub fn host_path(&self, name: &str) -> Option<&Path> {
        self.paths.get(name).map(PathBuf::as_path)
    }

    /// The bind mounts of `container` (one of `def`'s): its `mountPoints`, then its
    /// `volumesFrom`, as the module documentation describes.
    pub fn mounts_for(
        &self,
        def: &TaskDefinition,
        container: &ContainerDefinition,
    ) -> Result<Vec<Mount>, VolumeError> {
        wanted(def, container, &mut Vec::new())?
            .into_iter()
            .map(|w| self.mount(container, w))
            .collect()
    }

    fn mount(&self, container: &ContainerDefinition, w: Wanted<'_>) -> Result<Mount, VolumeError> {
        let source = self
            .paths
            .get(w.volume)
            .ok_or_else(|| VolumeError::UnknownVolume {
                container: w.owner.to_owned(),
                volume: w.volume.to_owned(),
            })?;
        let mut options = vec!["rbind".to_owned(), "rprivate".to_owned()];
        if w.read_only {
            options.push("ro".to_owned());
        }
        MountBuilder::default()
            .destination(w.container_path)
            .typ("bind")
            .source(source)
            .options(options)
            .build()
            .map_err(|e| VolumeError::Mount {
                container: container.name.clone(),
                volume: w.volume.to_owned(),
                container_path: w.container_path.to_owned(),
                message: e.to_string(),
            })
    }
}

/// One mount a container gets, before it is resolved to a host path.
#[derive(Clone, Copy, Debug)]
struct Wanted<'a> {
    /// The container whose mount point this is.
    owner: &'a str,
    volume: &'a str,
    container_path: &'a str,
    read_only: bool,
}

/// `c`'s own mount points, then those of its `volumesFrom` sources at free destinations;
/// `path` holds the containers being expanded, to refuse cycles.
fn wanted<'a>(
    def: &'a TaskDefinition,
    c: &'a ContainerDefinition,
    path: &mut Vec<&'a str>,
) -> Result<Vec<Wanted<'a>>, VolumeError> {
    let mut out: Vec<Wanted<'a>> = Vec::new();
    let taken = |out: &[Wanted<'_>], dest: &str| out.iter().any(|w| w.container_path == dest);
    for m in &c.mount_points {
        if taken(&out, &m.container_path) {
            return Err(VolumeError::DuplicateMountPoint {
                container: c.name.clone(),
                container_path: m.container_path.clone(),
            });
        }
        out.push(Wanted {
            owner: &c.name,
            volume: &m.source_volume,
            container_path: &m.container_path,
            read_only: m.read_only.unwrap_or(false),
        });
    }
    path.push(&c.name);
    for from in &c.volumes_from {
        let name = from.source_container.as_str();
        if path.contains(&name) {
            return Err(VolumeError::VolumesFromCycle {
                container: c.name.clone(),
                source_container: name.to_owned(),
            });
        }
        let source = def
            .container_definitions
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| VolumeError::UnknownContainer {
                container: c.name.clone(),
                source_container: name.to_owned(),
            })?;
        for w in wanted(def, source, path)? {
            if !taken(&out, w.container_path) {
                out.push(Wanted {
                    read_only: from.read_only.unwrap_or(w.read_only),
                    ..w
                });
            }
        }
    }
    path.pop();
    Ok(out)
}

/// Provisions one volume and returns its node directory; records what it creates in `created`.
fn provision(
    v: &Volume,
    dirs: &VolumeDirs,
    created: &mut Vec<PathBuf>,
) -> Result<PathBuf, VolumeError> {
    if let Some(source) = v.host.as_ref().and_then(|h| h.source_path.as_deref()) {
        let path = PathBuf::from(source);
        create_missing(&v.name, &path, created)?;
        return Ok(path);
    }
    match &v.docker_volume_configuration {
        Some(named) => {
            if let Some(driver) = named.driver.as_deref().filter(|d| *d != "local") {
                return Err(VolumeError::UnsupportedDriver {
                    volume: v.name.clone(),
                    driver: driver.to_owned(),
                });
            }
            let (root, autoprovision) = match named.scope {
                VolumeScope::Task => (dirs.task_volumes(), true),
                VolumeScope::Shared => (
                    dirs.node_volumes.clone(),
                    named.autoprovision.unwrap_or(false),
                ),
            };
            provision_named(&v.name, named, &root, autoprovision, created)
        }
        None => {
            let path = dirs.task_volumes().join(&v.name).join("_data");
            create_missing(&v.name, &path, created)?;
            Ok(path)
        }
    }
}

/// `<root>/<name>/_data`, built under a temporary name and renamed into place when absent and
/// `autoprovision`; when present, its labels checked against the definition's if `autoprovision`.
fn provision_named(
    name: &str,
    named: &NamedVolume,
    root: &Path,
    autoprovision: bool,
    created: &mut Vec<PathBuf>,
) -> Result<PathBuf, VolumeError> {
    let dir = root.join(name);
    if dir
        .try_exists()
        .map_err(io_error(name, "looking for", &dir))?
    {
        if autoprovision {
            check_labels(name, &dir, &named.labels)?;
        }
        return Ok(dir.join("_data"));
    }
    if !autoprovision {
        return Err(VolumeError::NotProvisioned {
            volume: name.to_owned(),
            path: dir,
        });
    }
    create_missing(name, root, created)?;
    // Volume names have no dots, so this never collides with a volume.
    let tmp = root.join(format!(".{name}.{}.tmp", std::process::id()));
    let built = build_named(name, &tmp, &named.labels).and_then(|()| {
        match fs::rename(&tmp, &dir) {
            Ok(()) => {
                created.push(dir.clone());
                fs::File::open(root)
                    .and_then(|d| d.sync_all())
                    .map_err(io_error(name, "syncing", root))
            }
            // Another task provisioned it first: use theirs, as if it had been there.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::AlreadyExists | io::ErrorKind::DirectoryNotEmpty
                ) =>
            {
                check_labels(name, &dir, &named.labels)
            }
            Err(e) => Err(io_error(name, "renaming into place", &dir)(e)),
        }
    });
    // The rename consumed it on success; otherwise it must not stay behind.
    let cleanup = match fs::remove_dir_all(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Some(e),
        _ => None,
    };
    match (built, cleanup) {
        (Ok(()), None) => Ok(dir.join("_data")),
        (Ok(()), Some(e)) => Err(io_error(name, "removing", &tmp)(e)),
        (Err(primary), Some(cleanup)) => Err(VolumeError::Rollback {
            primary: Box::new(primary),
            path: tmp,
            cleanup,
        }),
        (Err(primary), None) => Err(primary),
    }
}

/// A complete named volume in `tmp`: `_data`, and `labels.json` when there are labels.
fn build_named(
    name: &str,
    tmp: &Path,
    labels: &BTreeMap<String, String>,
) -> Result<(), VolumeError> {
    fs::create_dir(tmp).map_err(io_error(name, "creating", tmp))?;
    let data = tmp.join("_data");
    fs::create_dir(&data).map_err(io_error(name, "creating", &data))?;
    if !labels.is_empty() {
        let path = tmp.join(LABELS_FILE);
        let json = serde_json::to_vec_pretty(labels).expect("string map serialises");
        fs::write(&path, json)
            .and_then(|()| fs::File::open(&path)?.sync_all())
            .map_err(io_error(name, "writing", &path))?;
    }
    Ok(())
}

/// The labels recorded in `dir` must be `wanted` (no file means none).
fn check_labels(
    name: &str,
    dir: &Path,
    wanted: &BTreeMap<String, String>,
) -> Result<(), VolumeError> {
    let path = dir.join(LABELS_FILE);
    let existing: BTreeMap<String, String> = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| VolumeError::BadLabels {
            volume: name.to_owned(),
            path: path.clone(),
            message: e.to_string(),
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(io_error(name, "reading", &path)(e)),
    };
    if &existing != wanted {
        return Err(VolumeError::LabelsDiffer {
            volume: name.to_owned(),
            path: dir.to_owned(),
            existing,
            wanted: wanted.clone(),
        });
    }
    Ok(())
}

/// Creates directory `path` with its missing parents, recording the top-most one it creates.
fn create_missing(
    volume: &str,
    path: &Path,
    created: &mut Vec<PathBuf>,
) -> Result<(), VolumeError> {
    if let Some(top) = path.ancestors().take_while(|a| !a.exists()).last() {
        // Recorded first, so a half-made chain is removed too.
        created.push(top.to_owned());
        fs::create_dir_all(path).map_err(io_error(volume, "creating", path))?;
    }
    Ok(())
}

/// Makes a [`VolumeError::Io`] for `map_err`.
fn io_error(
    volume: &str,
    action: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> VolumeError + use<> {
    let (volume, path) = (volume.to_owned(), path.to_owned());
    move |source| VolumeError::Io {
        volume,
        action,
        path,
        source,
    }
}

/// Removes, newest first, what a failed [`prepare`] created; keeps the first cleanup failure
/// next to `primary`.
fn undo(primary: VolumeError, created: Vec<PathBuf>) -> VolumeError {
    let mut failed = None;
    for path in created.into_iter().rev() {
        match fs::remove_dir_all(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound && failed.is_none() => {
                failed = Some((path, e));
            }
            _ => {}
        }
    }
    match failed {
        Some((path, cleanup)) => VolumeError::Rollback {
            primary: Box::new(primary),
            path,
            cleanup,
        },
        None => primary,
    }
}

#[cfg(test)]
#[path = "volumes_tests.rs"]
mod tests;
