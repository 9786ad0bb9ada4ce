//! Making a task's resources and releasing them: images, the task cgroup, root filesystems and
//! OCI bundles on the way in; containers, root filesystems, cgroups and scratch volumes on the
//! way out. And starting a container's shim.
//!
//! Release is one idempotent function that tolerates anything missing, used both after a normal
//! stop and after a start that failed half-way (or a skiffd that died half-way): whatever was
//! made is found from the task's id alone and removed, so a failed start leaves nothing behind.
//!
//! skiffd is multi-threaded, so it never calls libcontainer itself (STACK.md: its clone runs Rust
//! code in the child); containers are created by `skiff-shim run` and force-deleted by
//! `skiff-shim delete`, single-threaded processes.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use skiff_images::{Images, PullOptions, PullPolicy};
use tokio::io::AsyncBufReadExt;

use crate::cgroups::{CgroupError, Layout, TaskCgroup, TaskLimits};
use crate::ipcns;
use crate::logs::Rotation;
use crate::record::{ShimRef, TaskRecord, VmRecord};
use crate::spec::{ImageRunConfig, SpecError, SpecInputs, build_spec};
use crate::taskdef::{ContainerDefinition, NamespaceMode};
use crate::tasknet;
use crate::vm::{self, VmDir, VmSupport};
use crate::volumes::{self, VolumeDirs, VolumeError};

fn volume_dirs(host: &Host, task_dir: &Path) -> VolumeDirs {
    VolumeDirs {
        task_dir: task_dir.to_owned(),
        node_volumes: host.node_volumes.clone(),
    }
}

/// Why provisioning or a container start failed; the text becomes the task's or container's
/// `stoppedReason`, so it names what failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// An image could not be pulled or mounted.
    #[error("CannotPullContainerError: {image}: {source}")]
    Image {
        /// The image reference.
        image: String,
        /// Why.
        #[source]
        source: Box<skiff_images::ImageError>,
    },
    /// The task cgroup could not be made.
    #[error("ResourceInitializationError: task cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    /// A container's spec could not be built.
    #[error("CannotCreateContainerError: {0}")]
    Spec(#[from] SpecError),
    /// The task's IPC namespace could not be made.
    #[error("ResourceInitializationError: {0}")]
    Ipc(#[from] ipcns::IpcNsError),
    /// The task's volumes could not be prepared.
    #[error("ResourceInitializationError: {0}")]
    Volume(#[from] VolumeError),
    /// A file of the task could not be prepared.
    #[error("ResourceInitializationError: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The task's network could not be set up.
    #[error("ResourceInitializationError: network: {0}")]
    Network(#[from] skiff_netd::NetError),
    /// The task's microVM could not be made or booted.
    #[error("ResourceInitializationError: microVM: {0}")]
    Vm(#[from] vm::VmError),
    /// The shim could not start the container.
    #[error("CannotStartContainerError: container {container}: {message}")]
    Start {
        /// The container.
        container: String,
        /// What the shim said.
        message: String,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError + use<> {
    let path = path.to_owned();
    move |source| ProvisionError::Io { op, path, source }
}

/// What provisioning and starting need from the node.
#[derive(Clone, Debug)]
pub struct Host {
    /// The image service.
    pub images: Images,
    /// The cgroup layout.
    pub layout: Layout,
    /// Parent of task cgroups.
    pub cgroup_parent: String,
    /// Pull behaviour.
    pub pull_policy: PullPolicy,
    /// Docker's seccomp profile text.
    pub seccomp_profile: String,
    /// Whether `privileged` is honoured.
    pub allow_privileged: bool,
    /// Per-container process limit, if any.
    pub pids_limit: Option<i64>,
    /// Per-task process limit, if any.
    pub task_pids_limit: Option<u64>,
    /// The shim binary.
    pub shim: PathBuf,
    /// libcontainer's state root.
    pub state_root: PathBuf,
    /// Named volumes that outlive tasks.
    pub node_volumes: PathBuf,
    /// Task-wide namespaces (`ipcMode: task`), one directory per task.
    pub ns_dir: PathBuf,
    /// A static binary that the PID namespace holder of `pidMode: task` runs (`busybox`).
    pub pause_binary: PathBuf,
    /// The init run by `initProcessEnabled`.
    pub init_binary: PathBuf,
    /// Task networking.
    pub net: Networking,
    /// Its settings (DNS, metadata address), whether or not it started.
    pub net_config: skiff_netd::NetConfig,
    /// MicroVM isolation, or why not.
    pub vm: VmSupport,
}

/// The node's task networking, or why it did not start (then only `host` and `none` tasks run).
#[derive(Clone, Debug)]
pub enum Networking {
    /// Set up.
    Ready(std::sync::Arc<skiff_netd::NodeNetwork>),
    /// Why not.
    Unavailable(String),
}

impl Host {
    /// `skiff-shim <subcommand> --id <runtime_id>` on this node's libcontainer state, stdin on
    /// /dev/null: how skiffd reaches libcontainer (never in-process).
    pub fn shim_command(&self, subcommand: &str, runtime_id: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.shim);
        c.arg("--state-root")
            .arg(&self.state_root)
            .args([subcommand, "--id", runtime_id])
            .stdin(Stdio::null());
        c
    }
}

/// Where `skiff exec` (and a health check) runs a command: a container's shim invocation.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecTarget {
    /// libcontainer's state root.
    pub state_root: PathBuf,
    /// The container's runtime id.
    pub runtime_id: String,
    /// The shim binary.
    pub shim: PathBuf,
    /// When the container runs in its task's microVM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmExec>,
}

/// Where a command of a microVM task's container runs.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmExec {
    /// The VM's directory.
    pub dir: PathBuf,
    /// The serial of the container's disk.
    pub disk: String,
    /// The container's bundle, whose process settings (user, environment, directory) the
    /// command runs with.
    pub bundle: PathBuf,
}

impl ExecTarget {
    /// The shim's exec of `command` in the container, with a terminal when `tty`.
    pub fn command(&self, tty: bool, command: &[String]) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.shim);
        cmd.arg("--state-root").arg(&self.state_root);
        match &self.vm {
            None => cmd.args(["exec", "--id", &self.runtime_id]),
            Some(v) => cmd
                .args(["vm-exec", "--id", &self.runtime_id, "--disk", &v.disk])
                .arg("--vm-dir")
                .arg(&v.dir)
                .arg("--bundle")
                .arg(&v.bundle),
        };
        if tty {
            cmd.arg("--tty");
        }
        cmd.arg("--").args(command);
        cmd
    }
}

impl Host {
    /// How to exec in container `name` of task `rec`, whose directory is `task_dir`.
    pub fn exec_target(&self, rec: &TaskRecord, name: &str, task_dir: &Path) -> ExecTarget {
        ExecTarget {
            state_root: self.state_root.clone(),
            runtime_id: rec
                .container(name)
                .map(|c| c.runtime_id.clone())
                .unwrap_or_default(),
            shim: self.shim.clone(),
            vm: in_vm(rec, name, task_dir).map(|v| VmExec {
                dir: v.dir.0,
                disk: v.disk,
                bundle: ContainerFiles::new(task_dir, name).bundle,
            }),
        }
    }
}

/// Where container `name` of a microVM task runs, once its VM is up.
pub fn in_vm(rec: &TaskRecord, name: &str, task_dir: &Path) -> Option<InVm> {
    let v = rec.vm?;
    let index = rec.containers.iter().position(|c| c.name == name)?;
    Some(InVm {
        dir: VmDir::of(task_dir),
        vmm_pid: v.vmm_pid,
        disk: vm::disk_serial(index),
    })
}

/// Where a container's files live in its task's directory.
#[derive(Clone, Debug)]
pub struct ContainerFiles {
    /// The OCI bundle (its `config.json`), and the parent of the rest.
    pub bundle: PathBuf,
}

impl ContainerFiles {
    /// The files of container `name` of the task whose directory is `task_dir`.
    pub fn new(task_dir: &Path, name: &str) -> Self {
        Self {
            bundle: task_dir.join("containers").join(name),
        }
    }
    /// The json-file log directory.
    pub fn logs(&self) -> PathBuf {
        self.bundle.join("logs")
    }
    /// Where the shim records the exit.
    pub fn exit_file(&self) -> PathBuf {
        self.bundle.join("exit.json")
    }
    /// The shim's own diagnostics.
    pub fn shim_log(&self) -> PathBuf {
        self.bundle.join("shim.log")
    }
}

/// The task cgroup's limits: the task-level `cpu` and `memory`, the node's task pids limit. A
/// microVM task's memory is the VM's plus the VMM's own overhead (the guest's memory is the
/// VMM process's, charged to the cgroup it runs in).
fn limits(host: &Host, rec: &TaskRecord) -> TaskLimits {
    let def = &rec.task_definition;
    let res = def.resources();
    let memory_mib = match (&host.vm, def.wants_vm()) {
        (VmSupport::Ready(vm), true) => Some(vm::size(def).1 + vm.config.overhead_mib),
        _ => res.memory.map(u64::from),
    };
    TaskLimits {
        memory_bytes: memory_mib.map(|m| m << 20),
        cpu_units: res.cpu,
        pids: host.task_pids_limit,
    }
}

/// Pulls images, makes the task cgroup, mounts root filesystems and writes bundles. On error,
/// the caller runs [`release`].
pub async fn provision(
    host: &Host,
    rec: &mut TaskRecord,
    task_dir: &Path,
) -> Result<(), ProvisionError> {
    let opts = PullOptions {
        policy: host.pull_policy,
        ..Default::default()
    };
    // Each distinct image once: its record and run config, whatever number of containers use it.
    let mut pulled: HashMap<String, (skiff_images::store::ImageRecord, ImageRunConfig)> =
        HashMap::new();
    for c in &mut rec.containers {
        if !pulled.contains_key(&c.image) {
            let failed = |source| ProvisionError::Image {
                image: c.image.clone(),
                source: Box::new(source),
            };
            let image = host.images.pull(&c.image, &opts).await.map_err(failed)?;
            // A small blob read, off the async workers like every other file access here.
            let config =
                tokio::task::block_in_place(|| host.images.config_of(&image)).map_err(failed)?;
            pulled.insert(c.image.clone(), (image, run_config(&config)));
        }
        c.image_digest = Some(pulled[&c.image].0.manifest_digest.to_string());
    }
    let cgroup = TaskCgroup::create_in(
        host.layout.clone(),
        &host.cgroup_parent,
        &rec.task_id,
        limits(host, rec),
    )?;
    rec.cgroup = Some(cgroup.rel().display().to_string());
    let def = rec.task_definition.clone();
    if let (Some(req), Networking::Ready(net)) = (tasknet::request(rec), &host.net) {
        let got = net.setup(&req).await?;
        tasknet::apply(rec, &got);
    }
    let netns = rec.network.as_ref().map(|n| n.netns.clone());
    let etc = tasknet::write_etc(task_dir, rec, &host.net_config)
        .map_err(io("write hosts and resolv.conf in", task_dir))?;
    let volumes = volumes::prepare(&def, &volume_dirs(host, task_dir))?;
    let in_vm = def.wants_vm();
    let task_ipc = match def.ipc_mode {
        // A VM's containers share its kernel's namespaces: nothing to hold.
        _ if in_vm => None,
        Some(NamespaceMode::Task) => {
            let shm = def
                .container_definitions
                .iter()
                .filter_map(|c| c.linux_parameters.as_ref()?.shared_memory_size)
                .max()
                .unwrap_or(64);
            let ipc = ipcns::create(&host.ns_dir.join(&rec.task_id), shm)?;
            Some((ipc.ns, ipc.shm))
        }
        _ => None,
    };
    let task_pid = match def.pid_mode {
        _ if in_vm => None,
        Some(NamespaceMode::Task) => {
            let (shim, pid) = start_pause(host, rec, task_dir, &cgroup).await?;
            rec.pause = Some(shim);
            Some(PathBuf::from(format!("/proc/{pid}/ns/pid")))
        }
        _ => None,
    };
    let mut disks = Vec::new();
    // The volume directories some container writes (a VM shares the others read-only).
    let mut writable = std::collections::HashSet::new();
    for (index, c) in def.container_definitions.iter().enumerate() {
        let runtime_id = rec
            .container(&c.name)
            .map(|r| r.runtime_id.clone())
            .expect("a record per container");
        let (image, run) = pulled[&c.image].clone();
        let files = ContainerFiles::new(task_dir, &c.name);
        let (images, id) = (host.images.clone(), runtime_id.clone());
        let rootfs = tokio::task::spawn_blocking(move || images.store().create_rootfs(&id, &image))
            .await
            .expect("rootfs task")
            .map_err(|source| ProvisionError::Image {
                image: c.image.clone(),
                source: Box::new(source.into()),
            })?;
        let passwd = read_in_root(&rootfs.path, "etc/passwd");
        let group = read_in_root(&rootfs.path, "etc/group");
        let mut env_files = env_files(c)?;
        let token = rec
            .container(&c.name)
            .map(|r| r.metadata_token.clone())
            .unwrap_or_default();
        env_files.extend(tasknet::metadata_env(rec, &host.net_config, &token));
        let mut mounts = tasknet::etc_mounts(&etc);
        let vols = volumes.mounts_for(&def, c)?;
        writable.extend(
            vols.iter()
                .filter(|m| !m.options().iter().flatten().any(|o| o == "ro"))
                .filter_map(|m| m.source().clone()),
        );
        mounts.extend(vols);
        let spec = build_spec(&SpecInputs {
            def: c,
            image: &run,
            network_mode: def.network_mode(),
            netns_path: netns.clone(),
            pid_mode: def.pid_mode,
            task_pid: task_pid.clone(),
            ipc_mode: def.ipc_mode,
            task_ipc: task_ipc.clone(),
            rootfs: rootfs.path.clone(),
            cgroups_path: cgroup.container_path(&c.name),
            hostname: c.hostname.clone(),
            passwd: &passwd,
            group: &group,
            env_files: &env_files,
            mounts,
            // In a VM the agent is init, and the node's tini is not in the guest.
            init_binary: (!in_vm).then_some(host.init_binary.as_path()),
            pids_limit: host.pids_limit,
            allow_privileged: host.allow_privileged,
            seccomp_profile: Some(&host.seccomp_profile),
        })?;
        write_bundle(&files, &spec)?;
        if in_vm {
            // No bind mounts into a guest: the files are copied into the disk's tree instead.
            for (src, name) in [(&etc.hosts, "hosts"), (&etc.resolv_conf, "resolv.conf")] {
                let text = std::fs::read(src).map_err(io("read", src))?;
                write_in_root(&rootfs.path, "etc", name, &text).map_err(io(
                    "write /etc file into",
                    &rootfs.path.join("etc").join(name),
                ))?;
            }
            disks.push((vm::disk_serial(index), rootfs.path.clone(), c.name.clone()));
        }
    }
    if in_vm {
        let shares = vm::shares(&volumes.all(), &writable)?;
        let network = match (&rec.network, &host.net) {
            (Some(n), Networking::Ready(net)) => {
                Some(vm::VmNetwork::of(&n.netns, &net.attach_vm(n).await?))
            }
            _ => None,
        };
        rec.vm = Some(boot_vm(host, rec, task_dir, &cgroup, disks, network, shares).await?);
    }
    Ok(())
}

/// Copies each container's root filesystem into its disk image and boots the task's VM through
/// `skiff-shim vm` (in the task's cgroup), waiting until its agent answers.
async fn boot_vm(
    host: &Host,
    rec: &TaskRecord,
    task_dir: &Path,
    cgroup: &TaskCgroup,
    rootfs: Vec<(String, PathBuf, String)>,
    network: Option<vm::VmNetwork>,
    shares: Vec<vm::Share>,
) -> Result<VmRecord, ProvisionError> {
    let vmh = host
        .vm
        .ready()
        .map_err(|why| vm::VmError::Boot(why.to_owned()))?;
    let dir = VmDir::of(task_dir);
    std::fs::create_dir_all(&dir.0).map_err(io("create", &dir.0))?;
    let mut disks = Vec::new();
    for (serial, root, name) in rootfs {
        let image = dir.disk(&name);
        vm::disk::make(&root, &image).await?;
        disks.push((serial, image));
    }
    let (cpus, memory_mib) = vm::size(&rec.task_definition);
    let spec = vm::VmSpec {
        vmm: vmh.config.qemu.clone(),
        kernel: vmh.config.kernel.clone(),
        initrd: vmh.config.initrd.clone(),
        accel: vmh.accel,
        cpus,
        memory_mib,
        disks,
        boot_timeout_ms: vmh.config.boot_timeout.as_millis() as u64,
        network,
        shares,
        virtiofsd: vmh.config.virtiofsd.clone(),
    };
    let spec_path = dir.spec();
    std::fs::write(
        &spec_path,
        serde_json::to_vec(&spec).expect("a spec serializes"),
    )
    .map_err(io("write", &spec_path))?;
    let log = dir.0.join("shim.log");
    let shim_log = std::fs::File::create(&log).map_err(io("create", &log))?;
    let mut cmd = tokio::process::Command::new(&host.shim);
    cmd.arg("vm").arg("--dir").arg(&dir.0);
    for p in cgroup.procs_files(vm::VMM_CGROUP)? {
        cmd.arg("--cgroup-procs").arg(p);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(shim_log)
        .process_group(0)
        .spawn()
        .map_err(|e| vm::VmError::Boot(format!("spawning {}: {e}", host.shim.display())))?;
    let (pid, line) = first_line(&mut child).await;
    let Some((vmm_pid, shim_pid)) = line
        .strip_prefix("ready ")
        .and_then(|p| p.parse::<i32>().ok())
        .zip(pid)
    else {
        let _ = child.wait().await;
        return Err(
            vm::VmError::Boot(last_error(&log, "skiff-shim vm exited without a VM")).into(),
        );
    };
    Ok(VmRecord {
        shim: reap_later(child, shim_pid),
        vmm_pid,
    })
}

fn write_bundle(
    files: &ContainerFiles,
    spec: &oci_spec::runtime::Spec,
) -> Result<(), ProvisionError> {
    std::fs::create_dir_all(&files.bundle).map_err(io("create", &files.bundle))?;
    let config_json = files.bundle.join("config.json");
    spec.save(&config_json).map_err(|e| ProvisionError::Io {
        op: "write",
        path: config_json.clone(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// The container name of a task's PID namespace holder (no ECS container name starts with a dot).
const PAUSE: &str = ".pause";

/// The runtime id of task `task_id`'s PID namespace holder.
pub fn pause_id(task_id: &str) -> String {
    format!("{task_id}-{PAUSE}")
}

/// Starts the holder of the task's shared PID namespace (`pidMode: task`), as the ECS agent's
/// pause container holds a task's namespaces: a container of its own (same isolation as the
/// task's, in the task's cgroup) whose only process, PID 1 of the namespace, sleeps. Its root
/// filesystem is an empty directory with the node's static busybox bound in read-only. The
/// containers join its namespace; it lives until the task is released.
async fn start_pause(
    host: &Host,
    rec: &TaskRecord,
    task_dir: &Path,
    cgroup: &TaskCgroup,
) -> Result<(ShimRef, i32), ProvisionError> {
    let def: ContainerDefinition = serde_json::from_value(serde_json::json!({
        "name": PAUSE,
        "image": "(pause)",
        "command": ["/busybox", "sleep", "2147483647"],
        // PID 1 of its namespace ignores SIGTERM: straight to SIGKILL.
        "stopTimeout": 0,
    }))
    .expect("a valid pause definition");
    let files = ContainerFiles::new(task_dir, PAUSE);
    let rootfs = files.bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(io("create", &rootfs))?;
    let bind = oci_spec::runtime::MountBuilder::default()
        .destination("/busybox")
        .typ("bind")
        .source(&host.pause_binary)
        .options(["rbind", "ro"].map(String::from).to_vec())
        .build()
        .map_err(|e| ProvisionError::Io {
            op: "bind",
            path: host.pause_binary.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let spec = build_spec(&SpecInputs {
        def: &def,
        image: &ImageRunConfig::default(),
        network_mode: rec.task_definition.network_mode(),
        netns_path: rec.network.as_ref().map(|n| n.netns.clone()),
        pid_mode: None,
        task_pid: None,
        ipc_mode: None,
        task_ipc: None,
        rootfs,
        cgroups_path: cgroup.container_path(PAUSE),
        hostname: None,
        passwd: "",
        group: "",
        env_files: &[],
        mounts: vec![bind],
        init_binary: None,
        // Its sleep, and libcontainer's processes while it starts.
        pids_limit: Some(4),
        allow_privileged: false,
        seccomp_profile: Some(&host.seccomp_profile),
    })?;
    write_bundle(&files, &spec)?;
    start(host, &def, &pause_id(&rec.task_id), &files, None).await
}

/// The image config's `config` section as the spec builder wants it.
fn run_config(config: &serde_json::Value) -> ImageRunConfig {
    let c = &config["config"];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let opt = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    ImageRunConfig {
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"]),
        working_dir: opt(&c["WorkingDir"]),
        user: opt(&c["User"]),
    }
}

/// Reads `rel` inside a container root filesystem, resolving symlinks within it (an image's
/// `/etc/passwd -> /host/secret` must not read the host's file). Missing is empty.
fn read_in_root(root: &Path, rel: &str) -> String {
    let read = || -> std::io::Result<String> {
        let dir = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let fd = rustix::fs::openat2(
            dir.as_fd(),
            rel,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )?;
        std::io::read_to_string(std::fs::File::from(fd))
    };
    read().unwrap_or_default()
}

/// Writes `dir/name` inside a container root filesystem, resolving `dir` within it (an image's
/// `/etc -> /host/etc` must not lead out) and replacing whatever `name` was (a symlink too).
fn write_in_root(root: &Path, dir: &str, name: &str, content: &[u8]) -> std::io::Result<()> {
    let rootfd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let open_dir = || {
        rustix::fs::openat2(
            rootfd.as_fd(),
            dir,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            resolve,
        )
    };
    let dirfd = match open_dir() {
        Err(rustix::io::Errno::NOENT) => {
            rustix::fs::mkdirat(rootfd.as_fd(), dir, Mode::from_raw_mode(0o755))?;
            open_dir()?
        }
        other => other?,
    };
    match rustix::fs::unlinkat(dirfd.as_fd(), name, rustix::fs::AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = rustix::fs::openat(
        dirfd.as_fd(),
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    std::io::Write::write_all(&mut std::fs::File::from(fd), content)
}

/// `environmentFiles`, read from the node.
fn env_files(c: &ContainerDefinition) -> Result<Vec<(String, String)>, ProvisionError> {
    let mut vars = Vec::new();
    for f in &c.environment_files {
        // `type` can only be `file` (validated): S3 is ECS's and not reachable from a node.
        let path = Path::new(f.value.strip_prefix("file://").unwrap_or(&f.value));
        let text = std::fs::read_to_string(path).map_err(io("read environment file", path))?;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                vars.push((k.to_owned(), v.to_owned()));
            }
        }
    }
    Ok(vars)
}

/// The container's log rotation from its `logConfiguration` (`json-file` is the one driver, so
/// only its options matter), else defaults.
fn rotation(c: &ContainerDefinition) -> Rotation {
    c.log_configuration
        .as_ref()
        .and_then(|l| {
            Rotation::from_options(
                l.options.get("max-size").map(String::as_str),
                l.options.get("max-file").map(String::as_str),
            )
        })
        .unwrap_or_default()
}

/// Where a container of a microVM task runs: the task's VM and the disk with its root.
#[derive(Clone, Debug)]
pub struct InVm {
    /// The VM's directory.
    pub dir: VmDir,
    /// Its VMM's pid.
    pub vmm_pid: i32,
    /// The serial of the container's disk.
    pub disk: String,
}

/// Starts container `c` (runtime id `runtime_id`) through a new shim (`skiff-shim run`, or
/// `vm-run` for a container of a microVM task) and waits until its process runs. Returns the
/// shim and the container's init pid.
pub async fn start(
    host: &Host,
    c: &ContainerDefinition,
    runtime_id: &str,
    files: &ContainerFiles,
    vm: Option<&InVm>,
) -> Result<(ShimRef, i32), ProvisionError> {
    let fail = |message: String| ProvisionError::Start {
        container: c.name.clone(),
        message,
    };
    match std::fs::remove_file(files.exit_file()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("remove", &files.exit_file())(e));
        }
        _ => {}
    }
    let shim_log =
        std::fs::File::create(files.shim_log()).map_err(io("create", &files.shim_log()))?;
    let rot = rotation(c);
    let mut cmd = match vm {
        None => host.shim_command("run", runtime_id),
        Some(vm) => {
            let mut cmd = host.shim_command("vm-run", runtime_id);
            cmd.arg("--vm-dir")
                .arg(&vm.dir.0)
                .args(["--disk", &vm.disk])
                .args(["--host-pid", &vm.vmm_pid.to_string()]);
            cmd
        }
    };
    let mut child = cmd
        .arg("--bundle")
        .arg(&files.bundle)
        .arg("--exit-file")
        .arg(files.exit_file())
        .arg("--log-dir")
        .arg(files.logs())
        .arg("--log-max-size")
        .arg(rot.max_size.to_string())
        .arg("--log-max-file")
        .arg(rot.max_files.to_string())
        .arg("--stop-timeout")
        .arg(c.stop_timeout.unwrap_or(30).to_string())
        .stdout(Stdio::piped())
        .stderr(shim_log)
        // Its own process group: a Ctrl-C meant for a foreground skiffd must not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| fail(format!("spawning {}: {e}", host.shim.display())))?;
    let (shim_pid, line) = first_line(&mut child).await;
    let started = line
        .strip_prefix("started ")
        .and_then(|p| p.parse::<i32>().ok());
    let Some((pid, shim_pid)) = started.zip(shim_pid) else {
        let _ = child.wait().await;
        return Err(fail(last_error(
            &files.shim_log(),
            "skiff-shim exited without starting the container",
        )));
    };
    Ok((reap_later(child, shim_pid), pid))
}

/// A shim's pid and the first line it prints (what it announces once its work runs).
async fn first_line(child: &mut tokio::process::Child) -> (Option<i32>, String) {
    let pid = child.id().map(|p| p as i32);
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = tokio::io::BufReader::new(out).read_line(&mut line).await;
    }
    (pid, line.trim().to_owned())
}

/// The last line a failed shim wrote in its log, its `error:` prefix dropped, else `otherwise`.
fn last_error(log: &Path, otherwise: &str) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(otherwise)
        .trim_start_matches("skiff-shim: error: ")
        .to_owned()
}

/// The shim's reference (watched through a pidfd); reaped when it exits while this skiffd lives.
fn reap_later(mut child: tokio::process::Child, pid: i32) -> ShimRef {
    let start_time = crate::process::start_time(pid).unwrap_or(0);
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    ShimRef { pid, start_time }
}

/// Force-deletes container `runtime_id` (processes, libcontainer state and cgroup) if it exists.
pub async fn delete_container(host: &Host, runtime_id: &str) {
    if !host.state_root.join(runtime_id).exists() {
        return;
    }
    let out = host.shim_command("delete", runtime_id).output().await;
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            tracing::warn!(container = runtime_id, error = %String::from_utf8_lossy(&o.stderr).trim(), "deleting container")
        }
        Err(e) => tracing::warn!(container = runtime_id, error = %e, "running skiff-shim delete"),
    }
}

/// Releases everything the task holds on the node but its record and logs: containers still
/// there, root filesystems, the task cgroup, task-scoped volumes, its IPC namespace, its network
/// (namespace, links, port mappings, address). Idempotent; errors are logged and the rest goes
/// on.
pub async fn release(host: &Host, rec: &TaskRecord, task_dir: &Path) {
    let cg = TaskCgroup::existing(host.layout.clone(), &host.cgroup_parent, &rec.task_id);
    // First, a VMM still running (its shim killed, or a skiffd that died while booting it) and
    // its virtio-fs daemons: they use the task's volumes, disks and address.
    cg.kill_child(vm::VMM_CGROUP).await;
    if let Err(e) = volumes::remove_task_volumes(&volume_dirs(host, task_dir)) {
        tracing::warn!(task = %rec.task_id, error = %e, "removing task volumes");
    }
    delete_container(host, &pause_id(&rec.task_id)).await;
    for c in &rec.containers {
        delete_container(host, &c.runtime_id).await;
        let (images, id) = (host.images.clone(), c.runtime_id.clone());
        let removed = tokio::task::spawn_blocking(move || images.store().remove_rootfs(&id))
            .await
            .expect("rootfs task");
        if let Err(e) = removed
            && !matches!(e, skiff_images::store::StoreError::RootfsNotFound { .. })
        {
            tracing::warn!(container = %c.runtime_id, error = %e, "removing root filesystem");
        }
    }
    ipcns::remove(&host.ns_dir.join(&rec.task_id));
    if let Networking::Ready(net) = &host.net
        && let Err(e) = net.teardown(&rec.task_id).await
    {
        tracing::warn!(task = %rec.task_id, error = %e, "releasing the task's network");
    }
    vm::remove_disks(&VmDir::of(task_dir));
    if let Err(e) = cg.remove() {
        tracing::warn!(task = %rec.task_id, error = %e, "removing task cgroup");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_inside_the_root_whatever_its_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let (root, outside) = (t.path().join("root"), t.path().join("outside"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // /etc missing: made.
        write_in_root(&root, "etc", "hosts", b"127.0.0.1 localhost\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hosts")).unwrap(),
            "127.0.0.1 localhost\n"
        );
        assert_eq!(read_in_root(&root, "etc/hosts"), "127.0.0.1 localhost\n");
        // /etc/resolv.conf a symlink out of the root: replaced, the target untouched.
        std::fs::write(outside.join("resolv.conf"), "keep").unwrap();
        std::os::unix::fs::symlink(outside.join("resolv.conf"), root.join("etc/resolv.conf"))
            .unwrap();
        write_in_root(&root, "etc", "resolv.conf", b"nameserver 10.0.0.2\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.join("resolv.conf")).unwrap(),
            "keep"
        );
        assert!(!root.join("etc/resolv.conf").is_symlink());
        // /etc itself an absolute symlink: resolved inside the root.
        std::fs::remove_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc")).unwrap();
        let inner = root.join(outside.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inner).unwrap();
        write_in_root(&root, "etc", "hosts", b"x").unwrap();
        assert_eq!(std::fs::read_to_string(inner.join("hosts")).unwrap(), "x");
        assert!(!outside.join("hosts").exists());
    }
}
