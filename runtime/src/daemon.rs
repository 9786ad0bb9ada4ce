//! The node's task service: what skiffd's API (and later the control plane's channel) calls.
//!
//! It keeps one [`Runner`] per task and a watch of each task's record, so readers never wait for
//! a busy task. At start it loads the task records, resumes every task that was not stopped (its
//! runner finds running containers again through their shims) and removes what belongs to no
//! task: containers, root filesystems and cgroups left by tasks whose record is gone or stopped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use skiff_images::{Images, ImagesConfig, Store};
use tokio::sync::{broadcast, mpsc, watch};

use crate::cgroups::{CGROUP_ROOT, Layout, TaskCgroup};
use crate::config::NodeConfig;
use crate::lifecycle::{Stop, StopCode, TaskStatus};
use crate::orchestration::Health;
use crate::provision::{ContainerFiles, Host, Networking};
use crate::record::{
    ContainerRecord, ContainerStatus, Origin, RecordError, Records, TaskRecord, now,
};
use crate::runner::{Event, Runner};
use crate::stats::{self, TaskStats};
use crate::taskdef::{CpuArchitecture, NetworkMode, TaskDefinition, TaskDefinitionError};
use crate::vm::VmSupport;

/// Errors of the task service.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The task definition was refused (its error says `task definition: <field>: <why>`).
    #[error("invalid {0}")]
    InvalidTaskDefinition(TaskDefinitionError),
    /// The definition asks for what this node cannot do (yet); ECS would not place it here.
    #[error("this node cannot run the task: {0}")]
    Unsupported(String),
    /// No task has this id (or unique id prefix).
    #[error("no task {0}")]
    NoSuchTask(String),
    /// A task with this id exists already (the control plane's ids are the node's).
    #[error("task {0} exists already")]
    Exists(String),
    /// The prefix matches several tasks.
    #[error("task id prefix {0} is ambiguous")]
    Ambiguous(String),
    /// The task has no such container.
    #[error("task {task} has no container {container}")]
    NoSuchContainer {
        /// The task.
        task: String,
        /// The name asked for.
        container: String,
    },
    /// The container does not run.
    #[error("container {container} of task {task} is not running")]
    NotRunning {
        /// The task.
        task: String,
        /// The container.
        container: String,
    },
    /// Only stopped tasks can be removed.
    #[error("task {0} is not stopped")]
    NotStopped(String),
    /// A task record could not be read or written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The image store could not be opened.
    #[error("image store: {0}")]
    Images(String),
    /// Another skiffd holds this state root: two would fight over its tasks.
    #[error("another skiffd is using {0} (its lock is held)")]
    Locked(PathBuf),
    /// The daemon's lock file could not be opened.
    #[error("opening {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The node's netlink socket could not be opened.
    #[error(transparent)]
    Network(#[from] skiff_netd::NetError),
    /// The seccomp profile could not be read.
    #[error("reading seccomp profile {path}")]
    Seccomp {
        /// The profile.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

struct TaskHandle {
    state: watch::Receiver<TaskRecord>,
    tx: mpsc::UnboundedSender<Event>,
}

pub use crate::provision::ExecTarget;

/// The node's task service.
#[derive(Clone)]
pub struct Daemon {
    /// Held (flock) while this daemon runs.
    _lock: Arc<std::fs::File>,
    host: Arc<Host>,
    records: Records,
    cfg: Arc<NodeConfig>,
    tasks: Arc<Mutex<HashMap<String, TaskHandle>>>,
    /// The id of every task whose record changed, for the control plane's agent.
    changes: broadcast::Sender<String>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("root", &self.cfg.root)
            .finish()
    }
}

/// A fresh task id: 32 hex digits, as ECS's.
pub fn new_task_id() -> String {
    let mut bytes = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    assert!(ok, "reading /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a task asks of the node that this node cannot give, as ECS's placement would refuse
/// it: a network mode the node's networking is not set up for, microVM isolation, another CPU
/// architecture.
fn node_supports(def: &TaskDefinition, net: &Networking, vm: &VmSupport) -> Result<(), String> {
    match (def.network_mode(), net) {
        (NetworkMode::None | NetworkMode::Host, _) => {}
        (mode, Networking::Unavailable(why)) => {
            return Err(format!(
                "networkMode {} needs the node's networking, which did not start: {why}",
                mode.as_str()
            ));
        }
        (NetworkMode::Awsvpc, Networking::Ready(n)) if n.config().awsvpc.is_none() => {
            return Err(
                "networkMode awsvpc needs [network.awsvpc] in skiffd.toml (mode routed, macvlan or ipvlan)"
                    .into(),
            );
        }
        (mode, Networking::Ready(n)) => {
            crate::tasknet::check_ports(def)?;
            // Host ports are placed now, as ECS's placement refuses a node without them.
            if mode == NetworkMode::Bridge {
                n.check_ports(&crate::tasknet::port_requests(def))
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    if def.wants_vm() {
        vm_supports(def, vm)?;
    }
    let node = match std::env::consts::ARCH {
        "x86_64" => Some(CpuArchitecture::X86_64),
        "aarch64" => Some(CpuArchitecture::Arm64),
        _ => None,
    };
    if let Some(want) = def
        .runtime_platform
        .as_ref()
        .and_then(|p| p.cpu_architecture)
        && Some(want) != node
    {
        return Err(format!(
            "runtimePlatform.cpuArchitecture {want:?} does not match this node ({})",
            std::env::consts::ARCH
        ));
    }
    Ok(())
}

impl Daemon {
    /// The node's own capabilities, as attribute names (the control plane places by them).
    pub fn capabilities(&self) -> Vec<String> {
        match self.host.vm {
            VmSupport::Ready(_) => vec![crate::vm::CAPABILITY_ATTRIBUTE.to_owned()],
            VmSupport::Unavailable(_) => Vec::new(),
        }
    }
}

/// What a microVM task needs beyond a container task: the node's VM support, and what the
/// VM can give (not the node's network namespace; volumes only through virtio-fs).
fn vm_supports(def: &TaskDefinition, vm: &VmSupport) -> Result<(), String> {
    vm.ready().map_err(|why| {
        format!("requiresCompatibilities FARGATE asks for microVM isolation, unavailable on this node: {why}")
    })?;
    if def.network_mode() == NetworkMode::Host {
        return Err(
            "networkMode host: a microVM task has a kernel and a network of its own; use awsvpc, bridge or none"
                .into(),
        );
    }
    if let (Some(v), Ok(h)) = (def.volumes.first(), vm.ready())
        && !h.config.virtiofsd.is_file()
    {
        return Err(format!(
            "volumes ({}): a microVM task's volumes are shared by virtio-fs, and vm.virtiofsd {} does not exist",
            v.name,
            h.config.virtiofsd.display()
        ));
    }
    let (_, memory) = crate::vm::size(def);
    if memory < crate::vm::MIN_MEMORY_MIB {
        return Err(format!(
            "memory {memory} MiB: a microVM task needs at least {} MiB",
            crate::vm::MIN_MEMORY_MIB
        ));
    }
    Ok(())
}

/// Takes `<root>/skiffd.lock`, or says who has it: one skiffd per state root.
fn lock(root: &Path) -> Result<std::fs::File, DaemonError> {
    let path = root.join("skiffd.lock");
    let err = |source| DaemonError::Lock {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(root).map_err(err)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(err)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(DaemonError::Locked(root.to_owned())),
        Err(e) => Err(err(e.into())),
    }
}

/// Whether two secrets are equal, in a time that does not depend on where they differ (a
/// token guessed byte by byte from response times is no guess at all).
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}

fn is_task_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Daemon {
    /// Opens the node's state under `cfg`, resumes its tasks and cleans what belongs to none.
    pub async fn start(cfg: NodeConfig) -> Result<Self, DaemonError> {
        let lock = lock(&cfg.root)?;
        let images_cfg = ImagesConfig::load(&cfg.images_config)
            .map_err(|e| DaemonError::Images(e.to_string()))?;
        let store = Store::open(&cfg.root).map_err(|e| DaemonError::Images(e.to_string()))?;
        let seccomp_profile = std::fs::read_to_string(&cfg.seccomp_profile).map_err(|source| {
            DaemonError::Seccomp {
                path: cfg.seccomp_profile.clone(),
                source,
            }
        })?;
        let shim = cfg.shim.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("skiff-shim")))
                .unwrap_or_else(|| PathBuf::from("skiff-shim"))
        });
        let net = match skiff_netd::NodeNetwork::init(
            cfg.network.clone(),
            skiff_netd::NetDirs {
                netns_dir: cfg.run_dir.join("netns"),
                leases: cfg.root.join("network").join("leases.json"),
            },
            skiff_netd::Netlink::open().map_err(skiff_netd::NetError::from)?,
            skiff_netd::Nft::new(),
        )
        .await
        {
            Ok(n) => Networking::Ready(Arc::new(n)),
            Err(e) => {
                tracing::error!(error = %e, "task networking did not start: only host and none network modes will run");
                Networking::Unavailable(e.to_string())
            }
        };
        let vm = VmSupport::probe(cfg.vm.as_ref())
            .canary(&shim, &cfg.run_dir.join("vm-canary"))
            .await;
        match &vm {
            VmSupport::Ready(h) => {
                tracing::info!(accel = ?h.accel, kernel = %h.config.kernel.display(), "microVM tasks available")
            }
            VmSupport::Unavailable(why) => {
                tracing::info!(reason = %why, "microVM tasks unavailable")
            }
        }
        let host = Arc::new(Host {
            images: Images::new(store, images_cfg),
            layout: Layout::detect(Path::new(CGROUP_ROOT)),
            cgroup_parent: cfg.cgroup_parent.clone(),
            pull_policy: cfg.image_pull_behavior,
            seccomp_profile,
            allow_privileged: cfg.allow_privileged,
            pids_limit: (cfg.container_pids_limit > 0).then_some(cfg.container_pids_limit),
            task_pids_limit: u64::try_from(cfg.task_pids_limit).ok().filter(|&p| p > 0),
            shim,
            state_root: cfg.containers_state(),
            node_volumes: cfg.volumes_dir(),
            ns_dir: cfg.run_dir.join("ns"),
            pause_binary: cfg.pause_binary.clone(),
            init_binary: cfg.init_binary.clone(),
            net,
            net_config: cfg.network.clone(),
            vm,
        });
        let records = Records::open(&cfg.tasks_dir())?;
        let daemon = Self {
            _lock: Arc::new(lock),
            host,
            records,
            cfg: Arc::new(cfg),
            tasks: Arc::default(),
            changes: broadcast::channel(1024).0,
        };
        let (recs, strays) = daemon.records.load_all()?;
        for dir in strays {
            let _ = std::fs::remove_dir_all(dir);
        }
        daemon.clean_orphans(&recs).await;
        for rec in recs {
            daemon.spawn(rec, true);
        }
        daemon.prune_stopped();
        Ok(daemon)
    }

    /// Removes containers, root filesystems and cgroups of tasks that are gone or stopped.
    async fn clean_orphans(&self, recs: &[TaskRecord]) {
        let live: std::collections::HashSet<&str> = recs
            .iter()
            .filter(|r| !matches!(r.status, TaskStatus::Stopped(_)))
            .map(|r| r.task_id.as_str())
            .collect();
        // Only what carries a task id (`<task>` or `<task>-<container>`) is ours to judge:
        // anything else on the host is left alone.
        let orphan = |task: &str| is_task_id(task) && !live.contains(task);
        let orphan_container = |id: &str| id.split_once('-').is_some_and(|(t, _)| orphan(t));
        // Containers: libcontainer state of a task-owned id.
        if let Ok(rd) = std::fs::read_dir(&self.host.state_root) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if orphan_container(&id) {
                    tracing::info!(container = %id, "removing a container of no live task");
                    crate::provision::delete_container(&self.host, &id).await;
                }
            }
        }
        // Root filesystems made for task containers.
        let store = self.host.images.store().clone();
        let leases = store.list_rootfs().unwrap_or_default();
        for lease in leases {
            if orphan_container(&lease.id) {
                tracing::info!(rootfs = %lease.id, "removing a root filesystem of no live task");
                if let Err(e) = store.remove_rootfs(&lease.id) {
                    tracing::warn!(rootfs = %lease.id, error = %e, "removing root filesystem");
                }
            }
        }
        // Task IPC namespaces.
        for e in std::fs::read_dir(&self.host.ns_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = e.file_name().to_string_lossy().into_owned();
            if orphan(&id) {
                crate::ipcns::remove(&e.path());
            }
        }
        // Task networks: leases, links, namespaces, port mappings.
        if let Networking::Ready(net) = &self.host.net {
            let live = live.iter().map(|s| (*s).to_owned()).collect();
            if let Err(e) = net.reconcile(&live).await {
                tracing::warn!(error = %e, "removing the networks of tasks that are gone");
            }
        }
        // Task cgroups.
        for id in TaskCgroup::list(&self.host.layout, &self.host.cgroup_parent) {
            if orphan(&id) {
                let cg =
                    TaskCgroup::existing(self.host.layout.clone(), &self.host.cgroup_parent, &id);
                if let Err(e) = cg.remove() {
                    tracing::warn!(task = %id, error = %e, "removing cgroup of no live task");
                }
            }
        }
    }

    fn spawn(&self, rec: TaskRecord, recovered: bool) {
        let (publish, state) = watch::channel(rec.clone());
        let (tx, events) = mpsc::unbounded_channel();
        let id = rec.task_id.clone();
        let runner = Runner::new(
            self.host.clone(),
            self.records.clone(),
            rec,
            (publish, self.changes.clone()),
            tx.clone(),
            events,
        );
        self.tasks
            .lock()
            .expect("task table")
            .insert(id, TaskHandle { state, tx });
        tokio::spawn(runner.run(recovered));
    }

    /// Starts a task from the JSON of a task definition (as `register-task-definition` takes
    /// it). Returns its record in PROVISIONING; the task proceeds in the background.
    pub fn run_task(&self, definition: &str) -> Result<TaskRecord, DaemonError> {
        let def =
            TaskDefinition::from_json(definition).map_err(DaemonError::InvalidTaskDefinition)?;
        self.start_task(new_task_id(), def, None)
    }

    /// Starts a task the control plane placed here, under the id it gave it (so the record,
    /// and every report of it, is found again by that id after any restart).
    pub fn run_placed(
        &self,
        task_id: &str,
        def: TaskDefinition,
        origin: Origin,
    ) -> Result<TaskRecord, DaemonError> {
        if !is_task_id(task_id) {
            return Err(DaemonError::Unsupported(format!(
                "task id {task_id:?} is not 32 hex digits"
            )));
        }
        if self.tasks.lock().expect("task table").contains_key(task_id) {
            return Err(DaemonError::Exists(task_id.to_owned()));
        }
        self.start_task(task_id.to_owned(), def, Some(origin))
    }

    fn start_task(
        &self,
        task_id: String,
        def: TaskDefinition,
        origin: Option<Origin>,
    ) -> Result<TaskRecord, DaemonError> {
        node_supports(&def, &self.host.net, &self.host.vm).map_err(DaemonError::Unsupported)?;
        let containers = def
            .container_definitions
            .iter()
            .map(|c| ContainerRecord {
                name: c.name.clone(),
                image: c.image.clone(),
                image_digest: None,
                runtime_id: format!("{task_id}-{}", c.name),
                last_status: ContainerStatus::Pending,
                exit_code: None,
                reason: None,
                health_status: Health::Unknown,
                shim: None,
                pid: None,
                started_at: None,
                finished_at: None,
                restart_count: 0,
                network_bindings: Vec::new(),
                network_interfaces: Vec::new(),
                metadata_token: new_task_id(),
            })
            .collect();
        let rec = TaskRecord {
            task_id,
            task_definition: def,
            status: TaskStatus::Provisioning,
            desired_status: "RUNNING".into(),
            containers,
            health_status: Health::Unknown,
            pause: None,
            vm: None,
            cgroup: None,
            created_at: now(),
            started_at: None,
            stopping_at: None,
            stopped_at: None,
            attachments: Vec::new(),
            network: None,
            origin,
        };
        self.records.save(&rec)?;
        self.spawn(rec.clone(), false);
        let _ = self.changes.send(rec.task_id.clone());
        Ok(rec)
    }

    /// The feed of changed tasks: the id of a task each time its record changes (a lagging
    /// receiver has missed some and must look at every task again).
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Resolves a task id or unique prefix.
    fn resolve(&self, id: &str) -> Result<String, DaemonError> {
        let tasks = self.tasks.lock().expect("task table");
        if tasks.contains_key(id) {
            return Ok(id.to_owned());
        }
        let mut matches = tasks.keys().filter(|k| !id.is_empty() && k.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some(k), None) => Ok(k.clone()),
            (Some(_), Some(_)) => Err(DaemonError::Ambiguous(id.to_owned())),
            (None, _) => Err(DaemonError::NoSuchTask(id.to_owned())),
        }
    }

    fn with_handle<T>(&self, id: &str, f: impl FnOnce(&TaskHandle) -> T) -> Result<T, DaemonError> {
        let id = self.resolve(id)?;
        let tasks = self.tasks.lock().expect("task table");
        let h = tasks
            .get(&id)
            .ok_or_else(|| DaemonError::NoSuchTask(id.clone()))?;
        Ok(f(h))
    }

    /// A task's record.
    pub fn describe(&self, id: &str) -> Result<TaskRecord, DaemonError> {
        self.with_handle(id, |h| h.state.borrow().clone())
    }

    /// Every task's record, oldest first.
    pub fn list(&self) -> Vec<TaskRecord> {
        let mut all: Vec<TaskRecord> = self
            .tasks
            .lock()
            .expect("task table")
            .values()
            .map(|h| h.state.borrow().clone())
            .collect();
        all.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
        all
    }

    /// Waits until `done` holds for task `id`'s record, and returns it.
    pub async fn wait(
        &self,
        id: &str,
        done: impl Fn(&TaskRecord) -> bool,
    ) -> Result<TaskRecord, DaemonError> {
        let mut state = self.with_handle(id, |h| h.state.clone())?;
        let rec = state
            .wait_for(|r| done(r) || matches!(r.status, TaskStatus::Stopped(_)))
            .await
            .map(|r| r.clone());
        match rec {
            Ok(r) => Ok(r),
            // The runner is gone: the last record is final.
            Err(_) => Ok(state.borrow().clone()),
        }
    }

    /// Asks task `id` to stop (`UserInitiated` unless `code` says otherwise).
    pub fn stop(&self, id: &str, code: StopCode, reason: &str) -> Result<TaskRecord, DaemonError> {
        self.with_handle(id, |h| {
            let _ = h.tx.send(Event::Stop(Stop {
                stop_code: code,
                stopped_reason: reason.to_owned(),
            }));
            h.state.borrow().clone()
        })
    }

    /// Forgets a stopped task: its record, logs and directory.
    pub fn remove(&self, id: &str) -> Result<(), DaemonError> {
        let rec = self.describe(id)?;
        let id = rec.task_id;
        if !matches!(rec.status, TaskStatus::Stopped(_)) {
            return Err(DaemonError::NotStopped(id));
        }
        self.tasks.lock().expect("task table").remove(&id);
        self.records.remove(&id)?;
        Ok(())
    }

    /// Removes stopped tasks older than the retention.
    pub fn prune_stopped(&self) {
        let horizon = now() - self.cfg.stopped_task_retention.as_secs_f64();
        for rec in self.list() {
            if matches!(rec.status, TaskStatus::Stopped(_))
                && rec.stopped_at.is_some_and(|t| t < horizon)
            {
                let _ = self.remove(&rec.task_id);
            }
        }
    }

    fn container(
        &self,
        id: &str,
        container: Option<&str>,
    ) -> Result<(TaskRecord, ContainerRecord), DaemonError> {
        let rec = self.describe(id)?;
        let c = match container {
            Some(name) => rec.container(name).cloned(),
            None => rec.containers.first().cloned(),
        };
        let c = c.ok_or_else(|| DaemonError::NoSuchContainer {
            task: rec.task_id.clone(),
            container: container.unwrap_or_default().to_owned(),
        })?;
        Ok((rec, c))
    }

    /// The log directory of a container (the first one when `container` is None), and whether
    /// it still runs.
    pub fn log_dir(
        &self,
        id: &str,
        container: Option<&str>,
    ) -> Result<(PathBuf, watch::Receiver<TaskRecord>, String), DaemonError> {
        let (rec, c) = self.container(id, container)?;
        let dir = ContainerFiles::new(&self.records.task_dir(&rec.task_id), &c.name).logs();
        let state = self.with_handle(&rec.task_id, |h| h.state.clone())?;
        Ok((dir, state, c.name))
    }

    /// Task `id`'s resource use: its cgroup's and each running container's.
    pub fn stats(&self, id: &str) -> Result<TaskStats, DaemonError> {
        self.sample(&self.describe(id)?)
    }

    /// The stats of the task whose record is `rec`.
    fn sample(&self, rec: &TaskRecord) -> Result<TaskStats, DaemonError> {
        let not_running = || DaemonError::NotRunning {
            task: rec.task_id.clone(),
            container: "(any)".into(),
        };
        let cgroup = rec
            .cgroup
            .as_deref()
            .filter(|_| !matches!(rec.status, TaskStatus::Stopped(_)))
            .ok_or_else(not_running)?;
        let layout = &self.host.layout;
        let task = stats::read(layout, Path::new(cgroup)).map_err(|_| not_running())?;
        let containers = rec
            .containers
            .iter()
            .filter(|c| c.last_status == ContainerStatus::Running)
            .filter_map(|c| {
                let rel = Path::new(cgroup).join(&c.name);
                stats::read(layout, &rel).ok().map(|s| (c.name.clone(), s))
            })
            .collect();
        Ok(TaskStats {
            task_id: rec.task_id.clone(),
            family: rec.task_definition.family.clone(),
            revision: crate::taskdef::STANDALONE_REVISION,
            task,
            containers,
        })
    }

    /// Stats of every task that is not stopped, in Prometheus' text format.
    pub fn metrics(&self) -> String {
        let samples: Vec<TaskStats> = self
            .list()
            .iter()
            .filter(|r| !matches!(r.status, TaskStatus::Stopped(_)))
            .filter_map(|r| self.sample(r).ok())
            .collect();
        stats::render(&samples)
    }

    /// The container whose task metadata endpoint token is `token`, with its task: the token
    /// is the container's identity at that endpoint ([`crate::metadata`]).
    pub fn token_owner(&self, token: &str) -> Option<crate::metadata::TokenOwner> {
        if token.is_empty() {
            return None;
        }
        let tasks = self.tasks.lock().expect("task table");
        tasks.values().find_map(|h| {
            let rec = h.state.borrow();
            let c = rec
                .containers
                .iter()
                .find(|c| same_secret(&c.metadata_token, token))?;
            Some(crate::metadata::TokenOwner {
                container: c.name.clone(),
                task_dir: self.records.task_dir(&rec.task_id),
                task: rec.clone(),
            })
        })
    }

    /// Where the task metadata endpoint listens: the node's metadata address once task
    /// networking is set up (which puts that address on the node's bridge); None without it.
    pub fn metadata_address(&self) -> Option<std::net::Ipv4Addr> {
        match &self.host.net {
            Networking::Ready(n) => Some(n.config().metadata_address),
            Networking::Unavailable(_) => None,
        }
    }

    /// Where to exec in a running container.
    pub fn exec_target(&self, id: &str, container: &str) -> Result<ExecTarget, DaemonError> {
        let (rec, c) = self.container(id, Some(container))?;
        if c.last_status != ContainerStatus::Running {
            return Err(DaemonError::NotRunning {
                task: rec.task_id,
                container: c.name,
            });
        }
        Ok(self
            .host
            .exec_target(&rec, &c.name, &self.records.task_dir(&rec.task_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_equal_only_whole() {
        assert!(same_secret("0123abcd", "0123abcd"));
        assert!(!same_secret("0123abcd", "0123abce"));
        assert!(!same_secret("0123abcd", "x123abcd"));
        assert!(!same_secret("0123abcd", "0123abc"));
        assert!(!same_secret("", "0"));
    }
}
