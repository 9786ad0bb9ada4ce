//! Task cgroups: one per task under Skiff's parent (`skiff/<task>`), carrying the task-level
//! cpu, memory and pids limits; each container's own cgroup (`skiff/<task>/<container>`) is
//! created under it by libcontainer from the container's spec, so container limits nest inside
//! the task's, as ECS's task-level `cpu`/`memory` do.
//!
//! Both layouts are supported: cgroup v2 (unified: one tree, controllers enabled through
//! `cgroup.subtree_control` on the way down) and v1 (a tree per controller; the hybrid layout of
//! this CI machine, where the v2 mount carries no controller, counts as v1). The root is a
//! parameter so that unit tests run against a temporary directory, and the privileged tests
//! against the real `/sys/fs/cgroup`.

use std::fs;
use std::path::{Path, PathBuf};

/// Where cgroups are mounted on a normal host.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The parent of every task cgroup.
pub const SKIFF_PARENT: &str = "skiff";

/// CFS period used for task cpu quotas (100 ms, the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// Errors managing task cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file or directory could not be written.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A task id that cannot be a directory name.
    #[error("invalid task id {0:?} for a cgroup name")]
    InvalidId(String),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_owned();
    move |source| CgroupError::Io { op, path, source }
}

/// The cgroup layout of a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Unified hierarchy at `root`.
    V2 {
        /// Mount point.
        root: PathBuf,
    },
    /// One hierarchy per controller under `root` (`root/memory`, `root/cpu`, ...).
    V1 {
        /// Directory holding the controller mounts.
        root: PathBuf,
    },
}

impl Layout {
    /// v2 when `root/cgroup.controllers` exists (a unified mount), v1 otherwise.
    pub fn detect(root: &Path) -> Self {
        if root.join("cgroup.controllers").is_file() {
            Self::V2 {
                root: root.to_owned(),
            }
        } else {
            Self::V1 {
                root: root.to_owned(),
            }
        }
    }
}

/// Task-level limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskLimits {
    /// Hard memory limit, bytes.
    pub memory_bytes: Option<u64>,
    /// CPU units (1024 = one core): a CFS quota.
    pub cpu_units: Option<u32>,
    /// Maximum number of processes.
    pub pids: Option<u64>,
}

/// A task's cgroup.
#[derive(Clone, Debug)]
pub struct TaskCgroup {
    layout: Layout,
    /// `skiff/<task>`, relative to the hierarchy roots.
    rel: PathBuf,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io("write", path))
}

impl TaskCgroup {
    /// Creates (or adopts, after a restart) the cgroup of task `id` with `limits`.
    pub fn create(layout: Layout, id: &str, limits: TaskLimits) -> Result<Self, CgroupError> {
        Self::create_in(layout, SKIFF_PARENT, id, limits)
    }

    /// As [`TaskCgroup::create`], under `parent` instead of `skiff` (one node's tasks apart
    /// from another's: tests run several skiffd side by side).
    pub fn create_in(
        layout: Layout,
        parent: &str,
        id: &str,
        limits: TaskLimits,
    ) -> Result<Self, CgroupError> {
        let ok = !id.is_empty()
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(CgroupError::InvalidId(id.to_owned()));
        }
        let cg = Self {
            layout,
            rel: Path::new(parent).join(id),
        };
        match &cg.layout {
            Layout::V2 { root } => {
                // Controllers must be enabled in every ancestor's subtree_control.
                let enable = "+cpu +memory +pids";
                write(&root.join("cgroup.subtree_control"), enable)?;
                let parent = root.join(parent);
                fs::create_dir_all(&parent).map_err(io("create", &parent))?;
                write(&parent.join("cgroup.subtree_control"), enable)?;
                let dir = root.join(&cg.rel);
                fs::create_dir_all(&dir).map_err(io("create", &dir))?;
                write(&dir.join("cgroup.subtree_control"), enable)?;
                if let Some(m) = limits.memory_bytes {
                    write(&dir.join("memory.max"), &m.to_string())?;
                }
                if let Some(c) = limits.cpu_units {
                    let quota = u64::from(c) * CPU_PERIOD_US / 1024;
                    write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                    write(&dir.join("cpu.weight"), &shares_to_weight(c).to_string())?;
                }
                if let Some(p) = limits.pids {
                    write(&dir.join("pids.max"), &p.to_string())?;
                }
            }
            Layout::V1 { root } => {
                let dir = |ctrl: &str| -> Result<PathBuf, CgroupError> {
                    let d = root.join(ctrl).join(&cg.rel);
                    fs::create_dir_all(&d).map_err(io("create", &d))?;
                    Ok(d)
                };
                if let Some(m) = limits.memory_bytes {
                    write(
                        &dir("memory")?.join("memory.limit_in_bytes"),
                        &m.to_string(),
                    )?;
                }
                if let Some(c) = limits.cpu_units {
                    let d = dir("cpu")?;
                    write(&d.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(
                        &d.join("cpu.cfs_quota_us"),
                        &(u64::from(c) * CPU_PERIOD_US / 1024).to_string(),
                    )?;
                    write(&d.join("cpu.shares"), &c.max(2).to_string())?;
                }
                if let Some(p) = limits.pids {
                    write(&dir("pids")?.join("pids.max"), &p.to_string())?;
                }
            }
        }
        Ok(cg)
    }

    /// Task `id`'s cgroup under `parent`, as it is (to remove it, after a restart).
    pub fn existing(layout: Layout, parent: &str, id: &str) -> Self {
        Self {
            layout,
            rel: Path::new(parent).join(id),
        }
    }

    /// The task cgroups under `parent` in any hierarchy, by task id.
    pub fn list(layout: &Layout, parent: &str) -> Vec<String> {
        let mut ids: Vec<String> = in_hierarchies(layout, Path::new(parent))
            .iter()
            .filter_map(|p| fs::read_dir(p).ok())
            .flat_map(|rd| rd.flatten())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Relative path of the task's cgroup (`<parent>/<id>`).
    pub fn rel(&self) -> &Path {
        &self.rel
    }

    /// The `cgroupsPath` of a container of this task (absolute, as the OCI spec wants).
    pub fn container_path(&self, container: &str) -> PathBuf {
        Path::new("/").join(&self.rel).join(container)
    }

    /// Creates child cgroup `name` of the task's (in every hierarchy the task's exists in) and
    /// returns its `cgroup.procs` files: a process written there is in the task's limits. For
    /// processes that are not containers (libcontainer places those), such as a task's VMM.
    pub fn procs_files(&self, name: &str) -> Result<Vec<PathBuf>, CgroupError> {
        self.dirs()
            .into_iter()
            .map(|d| {
                let child = d.join(name);
                fs::create_dir_all(&child).map_err(io("create", &child))?;
                Ok(child.join("cgroup.procs"))
            })
            .collect()
    }

    /// SIGKILLs the processes of child cgroup `name` and waits (a few seconds at most) until it
    /// is empty, so that the task's cgroup can be removed.
    pub async fn kill_child(&self, name: &str) {
        let procs: Vec<PathBuf> = self
            .dirs()
            .into_iter()
            .map(|d| d.join(name).join("cgroup.procs"))
            .filter(|p| p.exists())
            .collect();
        for _ in 0..300 {
            let pids: Vec<i32> = procs
                .iter()
                .filter_map(|p| fs::read_to_string(p).ok())
                .flat_map(|t| {
                    t.lines()
                        .filter_map(|l| l.trim().parse().ok())
                        .collect::<Vec<_>>()
                })
                .collect();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tracing::warn!(cgroup = %self.rel.join(name).display(), "processes left after SIGKILL");
    }

    /// Every directory of this task's cgroup, in every hierarchy where it exists.
    fn dirs(&self) -> Vec<PathBuf> {
        in_hierarchies(&self.layout, &self.rel)
    }

    /// Removes the task's cgroup (children first) in every hierarchy. Its processes must be gone.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            remove_tree(&dir)?;
        }
        Ok(())
    }
}

/// The directories of cgroup `rel` that exist: in the unified hierarchy, or in each v1
/// hierarchy (co-mount symlinks such as `cpu,cpuacct` aliases skipped).
fn in_hierarchies(layout: &Layout, rel: &Path) -> Vec<PathBuf> {
    match layout {
        Layout::V2 { root } => vec![root.join(rel)],
        Layout::V1 { root } => fs::read_dir(root)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| !p.is_symlink())
                    .map(|p| p.join(rel))
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The kernel's OOM-kill count of one cgroup (`cgroupsPath` relative to the hierarchy roots).
/// v1 counts a kill only in the victim's own memcg, whichever ancestor's limit was hit, so this
/// is read for the container's cgroup before it is deleted (the shim does).
pub fn oom_kills(layout: &Layout, rel: &Path) -> u64 {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    let file = match layout {
        Layout::V2 { root } => root.join(rel).join("memory.events"),
        Layout::V1 { root } => root.join("memory").join(rel).join("memory.oom_control"),
    };
    fs::read_to_string(file)
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// cgroupfs directories hold only pseudo-files: removal is rmdir, deepest first.
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path())?;
            }
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", dir)(e)),
    }
}

/// cpu.shares (2-262144) to cpu.weight (1-10000), the conversion runc and the kernel docs use.
fn shares_to_weight(shares: u32) -> u64 {
    let s = u64::from(shares.clamp(2, 262_144));
    1 + ((s - 2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: PathBuf) -> String {
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn v1_limits_land_in_their_controllers() {
        let root = tempfile::tempdir().unwrap();
        for c in ["memory", "cpu", "pids", "cpuset"] {
            fs::create_dir(root.path().join(c)).unwrap();
        }
        let layout = Layout::detect(root.path());
        assert!(matches!(layout, Layout::V1 { .. }));
        let limits = TaskLimits {
            memory_bytes: Some(64 << 20),
            cpu_units: Some(512),
            pids: Some(100),
        };
        let cg = TaskCgroup::create(layout, "task-1", limits).unwrap();
        let t = |c: &str, f: &str| read(root.path().join(c).join("skiff/task-1").join(f));
        assert_eq!(
            t("memory", "memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(t("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(t("cpu", "cpu.shares"), "512");
        assert_eq!(t("pids", "pids.max"), "100");
        assert_eq!(cg.container_path("web"), PathBuf::from("/skiff/task-1/web"));
        let web = root.path().join("memory/skiff/task-1/web");
        fs::create_dir(&web).unwrap();
        fs::write(
            web.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2",
        )
        .unwrap();
        let layout = Layout::detect(root.path());
        assert_eq!(oom_kills(&layout, &cg.container_path("web")), 2);
        fs::remove_file(web.join("memory.oom_control")).unwrap();
        // libcontainer's child dirs, and a controller it created on its own, go too.
        fs::create_dir_all(root.path().join("cpuset/skiff/task-1/web")).unwrap();
        fs::remove_file(
            root.path()
                .join("memory/skiff/task-1/memory.limit_in_bytes"),
        )
        .unwrap();
        for f in ["cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares"] {
            fs::remove_file(root.path().join("cpu/skiff/task-1").join(f)).unwrap();
        }
        fs::remove_file(root.path().join("pids/skiff/task-1/pids.max")).unwrap();
        cg.remove().unwrap();
        for c in ["memory", "cpu", "pids", "cpuset"] {
            assert!(!root.path().join(c).join("skiff/task-1").exists(), "{c}");
        }
    }

    #[test]
    fn v2_enables_controllers_on_the_way_down() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        let layout = Layout::detect(root.path());
        assert!(matches!(layout, Layout::V2 { .. }));
        let limits = TaskLimits {
            memory_bytes: Some(1 << 30),
            cpu_units: Some(2048),
            pids: None,
        };
        TaskCgroup::create(layout, "t2", limits).unwrap();
        assert_eq!(
            read(root.path().join("cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        assert_eq!(
            read(root.path().join("skiff/cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        assert_eq!(
            read(root.path().join("skiff/t2/memory.max")),
            (1u64 << 30).to_string()
        );
        assert_eq!(read(root.path().join("skiff/t2/cpu.max")), "200000 100000");
        assert!(!root.path().join("skiff/t2/pids.max").exists());
    }

    #[test]
    fn ids_and_weights() {
        let l = Layout::V1 {
            root: "/nonexistent".into(),
        };
        for bad in ["", "..", "a/b", ".x"] {
            assert!(
                TaskCgroup::create(l.clone(), bad, TaskLimits::default()).is_err(),
                "{bad}"
            );
        }
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}
