//! What skiffd knows of a task, persisted so that a restarted skiffd carries on where it was.
//!
//! One JSON file per task (`<root>/tasks/<id>/task.json`), replaced atomically (write a temporary
//! file, fsync, rename, fsync the directory) at every change that matters: a state transition, a
//! container started (with its shim's pid and start time, to tell a live shim from a reused pid)
//! or exited. The record is also what the API reports, in ECS's shape (`DescribeTasks`), so there
//! is one truth for both.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::lifecycle::TaskStatus;
use crate::orchestration::Health;
use crate::taskdef::TaskDefinition;
use crate::tasknet::{NetworkBinding, NetworkInterface, TaskAttachment};

/// Errors of the task records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A record could not be read or written.
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
    /// A record is not valid JSON of a task.
    #[error("task record {path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
}

/// A container's `lastStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ContainerStatus {
    /// Not started (yet).
    Pending,
    /// Its process runs.
    Running,
    /// Exited, or never started because the task stopped.
    Stopped,
}

/// The shim that owns a running container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShimRef {
    /// Its pid.
    pub pid: i32,
    /// Its start time (clock ticks after boot, `/proc/<pid>/stat` field 22): a pid reused by
    /// another process after a crash does not match.
    pub start_time: u64,
}

/// A task's microVM: the shim that owns it, and its VMM process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmRecord {
    /// `skiff-shim vm`.
    pub shim: ShimRef,
    /// The VMM's pid (what runs the containers, as seen from the host).
    pub vmm_pid: i32,
}

/// One container of a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    /// Its name in the task definition.
    pub name: String,
    /// The image reference asked for.
    pub image: String,
    /// The manifest digest it runs, once pulled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// The id libcontainer and the image store know it by.
    pub runtime_id: String,
    /// ECS `lastStatus`.
    pub last_status: ContainerStatus,
    /// Exit code of its last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it stopped, when not a plain exit (OutOfMemoryError, CannotStartContainerError...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its health check's verdict.
    pub health_status: Health,
    /// Its shim while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shim: Option<ShimRef>,
    /// The container's init pid (host namespace) while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// When it last started (epoch seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    /// When its last run ended (epoch seconds): when its shim wrote the exit file, so an exit
    /// seen only by a restarted skiffd keeps its real time; never before `started_at`, which is
    /// recorded a moment after the process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<f64>,
    /// Restarts by its restartPolicy.
    pub restart_count: u32,
    /// Host ports mapped to it (ECS `networkBindings`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_bindings: Vec<NetworkBinding>,
    /// The task's address (ECS `networkInterfaces`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_interfaces: Vec<NetworkInterface>,
    /// The secret part of its task metadata endpoint URI (unguessable: it names the container
    /// to the endpoint).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata_token: String,
}

/// A task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    /// 32 hex digits, as ECS task ids.
    pub task_id: String,
    /// The definition it runs.
    pub task_definition: TaskDefinition,
    /// Its state (`lastStatus`, and `stopCode`/`stoppedReason` once stopping).
    #[serde(flatten)]
    pub status: TaskStatus,
    /// RUNNING until someone or something decides it stops.
    pub desired_status: String,
    /// Its containers, in definition order.
    pub containers: Vec<ContainerRecord>,
    /// HEALTHY when every essential container with a health check is, UNHEALTHY when one is not.
    pub health_status: Health,
    /// The shim of the task's PID namespace holder (`pidMode: task`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<ShimRef>,
    /// The task's microVM (`requiresCompatibilities` FARGATE), once booted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmRecord>,
    /// The task's cgroup (`cgroupsPath` of its parent, relative to the hierarchies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Epoch seconds.
    pub created_at: f64,
    /// When it reached RUNNING.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    /// When it began stopping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping_at: Option<f64>,
    /// When it was STOPPED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<f64>,
    /// Its network interface, as ECS reports an awsvpc task's (bridge tasks' too, here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<TaskAttachment>,
    /// What netd gave it (namespace, address, ports), while it has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<skiff_netd::TaskNetwork>,
    /// Where the control plane placed it from; None for a task run on the node itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// A task placed by the control plane: its identity there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Origin {
    /// The task's ARN.
    pub task_arn: String,
    /// Its task definition's ARN.
    pub task_definition_arn: String,
    /// Who started it (`ecs-svc/<deployment>` for a service's task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// The service task it replaces, when the node started it while offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// Seconds since the epoch, as ECS reports times.
pub fn now() -> f64 {
    epoch_seconds(SystemTime::now())
}

/// `t` in seconds since the epoch (0 before it).
pub fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl TaskRecord {
    /// The container called `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerRecord> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// The container called `name`, mutably.
    pub fn container_mut(&mut self, name: &str) -> Option<&mut ContainerRecord> {
        self.containers.iter_mut().find(|c| c.name == name)
    }
}

/// Replaces `path` with `data` so that a crash leaves the old file or the new one, never a
/// mix: a temporary file (created with `mode`), fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    File::open(dir.unwrap_or(Path::new("."))).and_then(|d| d.sync_all())
}

/// The directory of task records.
#[derive(Clone, Debug)]
pub struct Records {
    dir: PathBuf,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RecordError + use<> {
    let path = path.to_owned();
    move |source| RecordError::Io { op, path, source }
}

impl Records {
    /// Records under `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Self, RecordError> {
        fs::create_dir_all(dir).map_err(io("create", dir))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The directory of task `id`: its record, bundles, logs, exit files, scratch volumes.
    pub fn task_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Writes `rec` atomically.
    pub fn save(&self, rec: &TaskRecord) -> Result<(), RecordError> {
        let dir = self.task_dir(&rec.task_id);
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let path = dir.join("task.json");
        let data = serde_json::to_vec(rec).expect("task records serialize");
        write_atomic(&path, &data, 0o644).map_err(io("write", &path))
    }

    /// Every task record; directories without one (a crash before the first save) are returned
    /// apart so that they can be removed.
    pub fn load_all(&self) -> Result<(Vec<TaskRecord>, Vec<PathBuf>), RecordError> {
        let (mut recs, mut strays) = (Vec::new(), Vec::new());
        for entry in fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let entry = entry.map_err(io("list", &self.dir))?;
            let path = entry.path().join("task.json");
            match fs::read(&path) {
                Ok(data) => {
                    recs.push(
                        serde_json::from_slice(&data).map_err(|e| RecordError::Corrupt {
                            path: path.clone(),
                            message: e.to_string(),
                        })?,
                    )
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => strays.push(entry.path()),
                Err(e) => return Err(io("read", &path)(e)),
            }
        }
        Ok((recs, strays))
    }

    /// Deletes task `id`'s directory and record.
    pub fn remove(&self, id: &str) -> Result<(), RecordError> {
        let dir = self.task_dir(id);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &dir)(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{Stop, StopCode};

    fn record() -> TaskRecord {
        let def = TaskDefinition::from_json(
            r#"{"family":"f","containerDefinitions":[{"name":"a","image":"busybox","memory":64}]}"#,
        )
        .unwrap();
        TaskRecord {
            task_id: "0123456789abcdef0123456789abcdef".into(),
            task_definition: def,
            status: TaskStatus::Stopped(Stop {
                stop_code: StopCode::UserInitiated,
                stopped_reason: "stopped by user".into(),
            }),
            desired_status: "STOPPED".into(),
            containers: vec![ContainerRecord {
                name: "a".into(),
                image: "busybox".into(),
                image_digest: None,
                runtime_id: "0123-a".into(),
                last_status: ContainerStatus::Stopped,
                exit_code: Some(143),
                reason: None,
                health_status: Health::Unknown,
                shim: None,
                pid: None,
                started_at: Some(1.5),
                finished_at: Some(2.4),
                restart_count: 0,
                network_bindings: vec![],
                network_interfaces: vec![],
                metadata_token: String::new(),
            }],
            health_status: Health::Unknown,
            pause: None,
            vm: None,
            cgroup: None,
            created_at: 1.0,
            started_at: Some(1.5),
            stopping_at: Some(2.0),
            stopped_at: Some(2.5),
            attachments: vec![],
            network: None,
            origin: None,
        }
    }

    #[test]
    fn round_trip_in_ecs_shape() {
        let dir = tempfile::tempdir().unwrap();
        let recs = Records::open(dir.path()).unwrap();
        let rec = record();
        recs.save(&rec).unwrap();
        std::fs::create_dir(dir.path().join("stray")).unwrap();
        let (all, strays) = recs.load_all().unwrap();
        assert_eq!(all, vec![rec.clone()]);
        assert_eq!(strays, vec![dir.path().join("stray")]);
        let json = serde_json::to_value(&rec).unwrap();
        assert_eq!(json["lastStatus"], "STOPPED");
        assert_eq!(json["stopCode"], "UserInitiated");
        assert_eq!(json["containers"][0]["lastStatus"], "STOPPED");
        assert_eq!(json["containers"][0]["exitCode"], 143);
        recs.remove(&rec.task_id).unwrap();
        assert!(recs.load_all().unwrap().0.is_empty());
    }

    #[test]
    fn corrupt_record_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let recs = Records::open(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("x")).unwrap();
        std::fs::write(dir.path().join("x/task.json"), b"{").unwrap();
        let e = recs.load_all().unwrap_err();
        assert!(e.to_string().contains("x/task.json"), "{e}");
    }
}
