//! From a container definition and its image to an OCI runtime spec: what the ECS agent asks of
//! Docker, expressed for libcontainer.
//!
//! The mapping follows Docker's, because that is what ECS task definitions mean:
//! - process: `entryPoint` replaces the image's Entrypoint and then also resets its Cmd (Docker's
//!   rule); `command` replaces Cmd; environment is the image's, then `environment` by name;
//!   `user` is resolved against the image's `/etc/passwd` and `/etc/group` (supplementary groups
//!   included), `HOME` from the passwd entry;
//! - isolation: a seccomp filter (`crate::seccomp`), Docker's default capability set with `linuxParameters.capabilities` add/drop
//!   (`ALL` understood), `noNewPrivileges`, Docker's masked and read-only `/proc` and `/sys` paths,
//!   every namespace but the network one per container (network: host shares the node's, none and
//!   the others get the path the caller gives or a fresh empty one);
//! - `privileged: true` is only honoured when the node allows it, and then grants every
//!   capability and drops the masks, as Docker does;
//! - resources: memory (hard) and memoryReservation (soft) in bytes, cpu units as shares (min 2),
//!   a pids limit; ulimits as rlimits, `systemControls` as sysctls, tmpfs and `/dev/shm` sizes;
//! - devices: Docker's device cgroup policy, deny everything (allow, when privileged) and then
//!   allow the standard nodes
//!   (libcgroups adds `/dev/null`, `/dev/zero`, ..., ptys and `mknod` of any) and each
//!   `linuxParameters.devices` entry with its permissions (default `rwm`), created in the
//!   container with the host node's type, numbers, mode and owner. Without the deny rule a
//!   cgroup v1 container could open every device of the node it can `mknod`;
//! - `initProcessEnabled`: Docker's `--init`. PID 1 of a container is the one process the
//!   kernel never gives default signal handlers to and the one that inherits orphans, so a
//!   program not written to be an init ignores SIGTERM and leaves zombies. The node's init
//!   (tini, Docker's docker-init; [`DEFAULT_INIT_BINARY`]) is bind-mounted read-only at
//!   [`INIT_PATH`] and runs the command as its child, forwarding signals and reaping orphans;
//!   the container exits with the command's status.
//!
//! Pure but for devices: the caller reads the image's passwd and group files and gives paths,
//! and nothing here touches the file system except stat'ing the host's device nodes, so every
//! rule is unit-tested.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDevice,
    LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::taskdef::{ContainerDefinition, DevicePermission, NamespaceMode, NetworkMode};

/// Where the init is mounted in a container with `initProcessEnabled`.
pub const INIT_PATH: &str = "/sbin/skiff-init";

/// The init a node uses by default: Debian's statically linked tini (`apt-get install tini`),
/// the program Docker ships as docker-init. Static, so it runs in any image.
pub const DEFAULT_INIT_BINARY: &str = "/usr/bin/tini-static";

/// Why a spec could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A setting this node cannot honour (yet).
    #[error("container {container}: {what} is not supported on this node")]
    Unsupported {
        /// The container.
        container: String,
        /// The setting.
        what: String,
    },
    /// Neither the image nor the definition says what to run.
    #[error(
        "container {container}: nothing to run (the image has no Entrypoint or Cmd, and no entryPoint or command is given)"
    )]
    NoCommand {
        /// The container.
        container: String,
    },
    /// `user` names a user or group the image does not have.
    #[error("container {container}: user {user:?}: {reason}")]
    User {
        /// The container.
        container: String,
        /// The user field.
        user: String,
        /// What is missing.
        reason: String,
    },
    /// A capability name is unknown.
    #[error("container {container}: unknown capability {name:?}")]
    Capability {
        /// The container.
        container: String,
        /// The name given.
        name: String,
    },
    /// `privileged` on a node that does not allow it.
    #[error("container {container}: privileged containers are not allowed on this node")]
    PrivilegedRefused {
        /// The container.
        container: String,
    },
    /// The seccomp profile could not be compiled.
    #[error("container {container}: {source}")]
    Seccomp {
        /// The container.
        container: String,
        /// Why.
        #[source]
        source: crate::seccomp::SeccompError,
    },
    /// `initProcessEnabled` on a node without an init binary.
    #[error("container {container}: initProcessEnabled is set but this node has no init binary")]
    NoInit {
        /// The container.
        container: String,
    },
    /// A device's host path could not be examined.
    #[error("container {container}: device {host_path}")]
    DeviceStat {
        /// The container.
        container: String,
        /// The device's `hostPath`.
        host_path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A device's host path is not a character or block device.
    #[error("container {container}: device {host_path} is not a character or block device")]
    NotADevice {
        /// The container.
        container: String,
        /// The device's `hostPath`.
        host_path: String,
    },
    /// oci-spec refused a value.
    #[error("container {container}: building the runtime spec: {message}")]
    Build {
        /// The container.
        container: String,
        /// What the builder said.
        message: String,
    },
}

/// What the image's config says about running it (`config` of the OCI image config).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageRunConfig {
    /// Entrypoint.
    pub entrypoint: Vec<String>,
    /// Cmd.
    pub cmd: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// WorkingDir.
    pub working_dir: Option<String>,
    /// User.
    pub user: Option<String>,
}

/// Everything besides the definition that decides a container's spec.
#[derive(Clone, Debug)]
pub struct SpecInputs<'a> {
    /// The container.
    pub def: &'a ContainerDefinition,
    /// The image's run config.
    pub image: &'a ImageRunConfig,
    /// The task's network mode.
    pub network_mode: NetworkMode,
    /// The task's network namespace, to join (bridge, awsvpc); None for a fresh one.
    pub netns_path: Option<PathBuf>,
    /// The task's `pidMode`: `host` shares the node's PID namespace; `task` joins
    /// [`SpecInputs::task_pid`].
    pub pid_mode: Option<NamespaceMode>,
    /// With `pidMode: task`: the PID namespace the task's containers share (its holder's).
    pub task_pid: Option<PathBuf>,
    /// The task's `ipcMode`: `host` shares the node's IPC namespace and /dev/shm; `task` joins
    /// [`SpecInputs::task_ipc`]; `none` is a private namespace without /dev/shm.
    pub ipc_mode: Option<NamespaceMode>,
    /// With `ipcMode: task`: the task's IPC namespace (a bind-mounted nsfs file) and its shared
    /// /dev/shm.
    pub task_ipc: Option<(PathBuf, PathBuf)>,
    /// The mounted root filesystem.
    pub rootfs: PathBuf,
    /// The container's cgroup, relative to the hierarchy roots.
    pub cgroups_path: PathBuf,
    /// Hostname (the container's `hostname`, or the task's).
    pub hostname: Option<String>,
    /// The image's /etc/passwd content (empty if it has none).
    pub passwd: &'a str,
    /// The image's /etc/group content.
    pub group: &'a str,
    /// Variables from `environmentFiles`, in order.
    pub env_files: &'a [(String, String)],
    /// Extra mounts (volumes, /etc/hosts, resolv.conf), already resolved to host paths.
    pub mounts: Vec<Mount>,
    /// Task-level pids limit.
    pub pids_limit: Option<i64>,
    /// Whether this node honours `privileged`.
    pub allow_privileged: bool,
    /// The seccomp profile (Docker's JSON format) for unprivileged containers; None runs them
    /// unconfined, which the node must choose explicitly.
    pub seccomp_profile: Option<&'a str>,
    /// The init run as PID 1 of containers with `initProcessEnabled` (usually
    /// [`DEFAULT_INIT_BINARY`]); None refuses them.
    pub init_binary: Option<&'a Path>,
}

/// Docker's default capabilities.
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Docker's masked paths.
const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The arguments to run: Docker's override rules.
pub fn process_args(def: &ContainerDefinition, image: &ImageRunConfig) -> Vec<String> {
    let (entry, cmd) = if !def.entry_point.is_empty() {
        // Overriding the entrypoint resets the image's Cmd, as `docker run --entrypoint` does.
        (&def.entry_point, &def.command)
    } else if !def.command.is_empty() {
        (&image.entrypoint, &def.command)
    } else {
        (&image.entrypoint, &image.cmd)
    };
    entry.iter().chain(cmd).cloned().collect()
}

/// The environment: image, then environment files, then `environment`, later wins by name;
/// `PATH` defaulted, `HOSTNAME` and `HOME` set.
pub fn environment(inputs: &SpecInputs<'_>, home: &str) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    let mut set = |k: &str, v: &str, only_if_absent: bool| {
        if only_if_absent && values.contains_key(k) {
            return;
        }
        if values.insert(k.to_owned(), v.to_owned()).is_none() {
            order.push(k.to_owned());
        }
    };
    for e in &inputs.image.env {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        set(k, v, false);
    }
    for (k, v) in inputs.env_files {
        set(k, v, false);
    }
    for kv in &inputs.def.environment {
        set(&kv.name, &kv.value, false);
    }
    let (k, v) = DEFAULT_PATH.split_once('=').expect("constant has '='");
    set(k, v, true);
    if let Some(h) = &inputs.hostname {
        set("HOSTNAME", h, false);
    }
    set("HOME", home, true);
    order
        .into_iter()
        .map(|k| format!("{k}={}", values[&k]))
        .collect()
}

/// A resolved user: uid, gid, supplementary gids and home directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups the user is a member of.
    pub additional_gids: Vec<u32>,
    /// Home directory (`/` when unknown).
    pub home: String,
}

/// Resolves `user` (`name`, `uid`, `name:group`, `uid:gid`, or none for root) against passwd
/// and group file contents, as Docker does: names must exist; numeric ids need not.
pub fn resolve_user(user: Option<&str>, passwd: &str, group: &str) -> Result<ResolvedUser, String> {
    let users: Vec<Vec<&str>> = passwd
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let groups: Vec<Vec<&str>> = group
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let spec = user.filter(|u| !u.is_empty()).unwrap_or("0");
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = users
        .iter()
        .find(|f| f[0] == u || (u.parse::<u32>().is_ok() && f[2] == u));
    let (uid, mut gid, name, home) = match (u.parse::<u32>(), entry) {
        (_, Some(f)) => (
            f[2].parse()
                .map_err(|_| format!("bad uid in /etc/passwd for {}", f[0]))?,
            f[3].parse()
                .map_err(|_| format!("bad gid in /etc/passwd for {}", f[0]))?,
            Some(f[0]),
            f[5].to_owned(),
        ),
        (Ok(uid), None) => (uid, 0, None, "/".to_owned()),
        (Err(_), None) => return Err(format!("no user {u:?} in the image's /etc/passwd")),
    };
    if let Some(g) = g {
        gid = match (g.parse::<u32>(), groups.iter().find(|f| f[0] == g)) {
            (_, Some(f)) => f[2]
                .parse()
                .map_err(|_| format!("bad gid in /etc/group for {g}"))?,
            (Ok(n), None) => n,
            (Err(_), None) => return Err(format!("no group {g:?} in the image's /etc/group")),
        };
    }
    let mut additional_gids: Vec<u32> = match (name, g) {
        // An explicit group replaces the supplementary list, as in Docker.
        (Some(name), None) => groups
            .iter()
            .filter(|f| f[3].split(',').any(|m| m == name))
            .filter_map(|f| f[2].parse().ok())
            .filter(|g| *g != gid)
            .collect(),
        _ => Vec::new(),
    };
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

fn capability(name: &str) -> Option<Capability> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    serde_json::from_value(serde_json::Value::String(full)).ok()
}

/// Docker's default set with `add` and `drop` applied (`ALL` in either understood).
pub fn capabilities(def: &ContainerDefinition) -> Result<Vec<Capability>, SpecError> {
    let caps = def
        .linux_parameters
        .as_ref()
        .and_then(|l| l.capabilities.clone())
        .unwrap_or_default();
    let parse = |names: &[String]| -> Result<Vec<Capability>, SpecError> {
        names
            .iter()
            .filter(|n| !n.eq_ignore_ascii_case("ALL"))
            .map(|n| {
                capability(n).ok_or_else(|| SpecError::Capability {
                    container: def.name.clone(),
                    name: n.clone(),
                })
            })
            .collect()
    };
    let all = |names: &[String]| names.iter().any(|n| n.eq_ignore_ascii_case("ALL"));
    let mut set: Vec<Capability> = if all(&caps.add) {
        all_capabilities()
    } else {
        DEFAULT_CAPABILITIES.to_vec()
    };
    let added = parse(&caps.add)?;
    let dropped = parse(&caps.drop)?;
    if all(&caps.drop) {
        set.clear();
        set.extend(added);
    } else {
        set.extend(added);
        set.retain(|c| !dropped.contains(c));
    }
    set.sort_by_key(|c| c.to_string());
    set.dedup();
    Ok(set)
}

fn all_capabilities() -> Vec<Capability> {
    // oci-spec's enum lists every capability the kernel knows; its serde names are CAP_*.
    (0..64)
        .filter_map(|i| serde_json::from_value(serde_json::json!(cap_name(i))).ok())
        .collect()
}

fn cap_name(i: u32) -> String {
    const NAMES: &[&str] = &[
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    NAMES
        .get(i as usize)
        .map(|n| format!("CAP_{n}"))
        .unwrap_or_default()
}

/// The kernel's number of `c` (its bit in a capability set).
pub fn capability_number(c: &Capability) -> Option<u32> {
    let name = serde_json::to_value(c).ok()?;
    (0..64).find(|&i| name == serde_json::Value::String(cap_name(i)))
}

/// The capability set `caps` as the kernel's bit mask.
pub fn capability_mask<'a>(caps: impl IntoIterator<Item = &'a Capability>) -> u64 {
    caps.into_iter()
        .filter_map(capability_number)
        .fold(0, |m, n| m | 1 << n)
}

fn rlimit(name: &str) -> Option<PosixRlimitType> {
    serde_json::from_value(serde_json::json!(format!(
        "RLIMIT_{}",
        name.to_ascii_uppercase()
    )))
    .ok()
}

/// Builds the runtime spec of one container.
pub fn build_spec(inputs: &SpecInputs<'_>) -> Result<Spec, SpecError> {
    let def = inputs.def;
    let container = def.name.clone();
    let build = |e: oci_spec::OciSpecError| SpecError::Build {
        container: container.clone(),
        message: e.to_string(),
    };
    let privileged = def.privileged.unwrap_or(false);
    if privileged && !inputs.allow_privileged {
        return Err(SpecError::PrivilegedRefused { container });
    }
    let mut args = process_args(def, inputs.image);
    if args.is_empty() {
        return Err(SpecError::NoCommand { container });
    }
    let init = def
        .linux_parameters
        .as_ref()
        .and_then(|l| l.init_process_enabled)
        .unwrap_or(false);
    let init_mount = if init {
        let binary = inputs.init_binary.ok_or_else(|| SpecError::NoInit {
            container: container.clone(),
        })?;
        args.splice(0..0, [INIT_PATH.to_owned(), "--".to_owned()]);
        Some(
            MountBuilder::default()
                .destination(INIT_PATH)
                .typ("bind")
                .source(binary)
                .options(["rbind", "rprivate", "ro"].map(String::from).to_vec())
                .build()
                .map_err(build)?,
        )
    } else {
        None
    };
    let user_field = def.user.as_deref().or(inputs.image.user.as_deref());
    let user = resolve_user(user_field, inputs.passwd, inputs.group).map_err(|reason| {
        SpecError::User {
            container: container.clone(),
            user: user_field.unwrap_or("").to_owned(),
            reason,
        }
    })?;
    let caps = if privileged {
        all_capabilities()
    } else {
        capabilities(def)?
    };
    let seccomp = match inputs.seccomp_profile.filter(|_| !privileged) {
        Some(profile) => Some(
            crate::seccomp::compile(profile, crate::seccomp::host_arch(), &caps).map_err(
                |source| SpecError::Seccomp {
                    container: container.clone(),
                    source,
                },
            )?,
        ),
        None => None,
    };
    let caps_set: std::collections::HashSet<Capability> = caps.into_iter().collect();
    let rlimits = def
        .ulimits
        .iter()
        .filter_map(|u| {
            rlimit(&u.name).map(|t| {
                PosixRlimitBuilder::default()
                    .typ(t)
                    .soft(u.soft_limit)
                    .hard(u.hard_limit)
                    .build()
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(build)?;
    let process = ProcessBuilder::default()
        .args(args)
        .env(environment(inputs, &user.home))
        .cwd(
            def.working_directory
                .clone()
                .or_else(|| inputs.image.working_dir.clone())
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
        )
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids.clone())
                .build()
                .map_err(build)?,
        )
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps_set.clone())
                .effective(caps_set.clone())
                .permitted(caps_set.clone())
                .inheritable(std::collections::HashSet::new())
                .ambient(std::collections::HashSet::new())
                .build()
                .map_err(build)?,
        )
        .rlimits(rlimits)
        .no_new_privileges(!privileged)
        .build()
        .map_err(build)?;

    let mut namespaces: Vec<LinuxNamespace> = [
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
    .collect::<Result<_, _>>()
    .map_err(build)?;
    let pid = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Pid);
    match (inputs.pid_mode, &inputs.task_pid) {
        (Some(NamespaceMode::Host), _) => {}
        (None, _) => namespaces.push(pid.build().map_err(build)?),
        (Some(NamespaceMode::Task), Some(path)) => {
            namespaces.push(pid.path(path.clone()).build().map_err(build)?);
        }
        (Some(mode), _) => {
            return Err(SpecError::Unsupported {
                container,
                what: format!("pidMode {mode:?} without the task's PID namespace"),
            });
        }
    }
    let mut ipc = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Ipc);
    let shm_mount = match (inputs.ipc_mode, &inputs.task_ipc) {
        (Some(NamespaceMode::Host), _) => Some(bind_shm(Path::new("/dev/shm")).map_err(build)?),
        (Some(NamespaceMode::Task), Some((ns, shm))) => {
            ipc = ipc.path(ns.clone());
            Some(bind_shm(shm).map_err(build)?)
        }
        (Some(NamespaceMode::Task), None) => {
            return Err(SpecError::Unsupported {
                container,
                what: "ipcMode task without the task's IPC namespace".into(),
            });
        }
        (Some(NamespaceMode::None) | None, _) => None,
    };
    if inputs.ipc_mode != Some(NamespaceMode::Host) {
        namespaces.push(ipc.build().map_err(build)?);
    }
    if inputs.network_mode != NetworkMode::Host {
        let mut ns = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
        if let Some(p) = &inputs.netns_path {
            ns = ns.path(p.clone());
        }
        namespaces.push(ns.build().map_err(build)?);
    }

    let mib = |m: u32| i64::from(m) * 1024 * 1024;
    let mut memory = LinuxMemoryBuilder::default();
    if let Some(m) = def.memory {
        memory = memory.limit(mib(m));
    }
    if let Some(r) = def.memory_reservation {
        memory = memory.reservation(mib(r));
    }
    let (device_nodes, device_rules) = devices(def, privileged)?;
    let mut resources = LinuxResourcesBuilder::default()
        .memory(memory.build().map_err(build)?)
        .devices(device_rules);
    if let Some(cpu) = def.cpu {
        let cpu = LinuxCpuBuilder::default().shares(u64::from(cpu.max(2)));
        resources = resources.cpu(cpu.build().map_err(build)?);
    }
    if let Some(p) = inputs.pids_limit {
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(p)
                .build()
                .map_err(build)?,
        );
    }
    let sysctls: HashMap<String, String> = def
        .system_controls
        .iter()
        .map(|s| (s.namespace.clone(), s.value.clone()))
        .collect();
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build().map_err(build)?)
        .cgroups_path(inputs.cgroups_path.clone())
        .devices(device_nodes)
        .sysctl(sysctls);
    if let Some(filter) = seccomp {
        linux = linux.seccomp(filter);
    }
    // Privileged containers see /proc and /sys unmasked, as with Docker; the builder's own
    // defaults would mask them, so both lists are always set.
    let (masked, readonly): (&[&str], &[&str]) = if privileged {
        (&[], &[])
    } else {
        (MASKED, READONLY)
    };
    linux = linux
        .masked_paths(masked.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .readonly_paths(readonly.iter().map(|s| s.to_string()).collect::<Vec<_>>());

    let mut mounts = base_mounts(def).map_err(build)?;
    // /dev/shm: the container's own tmpfs unless shared (host, task) or absent (ipcMode none).
    if inputs.ipc_mode.is_some() {
        mounts.retain(|m| m.destination() != Path::new("/dev/shm"));
    }
    mounts.extend(shm_mount);
    mounts.extend(inputs.mounts.iter().cloned());
    mounts.extend(init_mount);
    let root = RootBuilder::default()
        .path(inputs.rootfs.clone())
        .readonly(def.readonly_root_filesystem.unwrap_or(false))
        .build()
        .map_err(build)?;
    let mut spec = SpecBuilder::default()
        .process(process)
        .root(root)
        .mounts(mounts)
        .linux(linux.build().map_err(build)?);
    if let Some(h) = &inputs.hostname {
        spec = spec.hostname(h.clone());
    }
    spec.build().map_err(build)
}

/// `linuxParameters.devices` as device nodes to create in the container and device cgroup
/// rules: deny all first (Docker's policy; libcgroups then allows its standard nodes), or allow
/// all for a `privileged` container as Docker does, then allow each device with its
/// permissions. Host paths are stat'ed: each must be a character or block device.
pub fn devices(
    def: &ContainerDefinition,
    privileged: bool,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    let build = |e: oci_spec::OciSpecError| SpecError::Build {
        container: def.name.clone(),
        message: e.to_string(),
    };
    let mut nodes = Vec::new();
    let mut rules = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(privileged)
            .typ(LinuxDeviceType::A)
            .access("rwm")
            .build()
            .map_err(build)?,
    ];
    for d in def.linux_parameters.iter().flat_map(|l| &l.devices) {
        let meta = std::fs::metadata(&d.host_path).map_err(|source| SpecError::DeviceStat {
            container: def.name.clone(),
            host_path: d.host_path.clone(),
            source,
        })?;
        let typ = if meta.file_type().is_char_device() {
            LinuxDeviceType::C
        } else if meta.file_type().is_block_device() {
            LinuxDeviceType::B
        } else {
            return Err(SpecError::NotADevice {
                container: def.name.clone(),
                host_path: d.host_path.clone(),
            });
        };
        // Device numbers fit in i64: major is 12 bits, minor 20 (32 in the kernel's dev_t).
        let major = nix::sys::stat::major(meta.rdev()) as i64;
        let minor = nix::sys::stat::minor(meta.rdev()) as i64;
        nodes.push(
            LinuxDeviceBuilder::default()
                .path(d.container_path.as_deref().unwrap_or(&d.host_path))
                .typ(typ)
                .major(major)
                .minor(minor)
                .file_mode(meta.mode() & 0o777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build()
                .map_err(build)?,
        );
        let access: String = if d.permissions.is_empty() {
            "rwm".into()
        } else {
            [
                (DevicePermission::Read, 'r'),
                (DevicePermission::Write, 'w'),
                (DevicePermission::Mknod, 'm'),
            ]
            .into_iter()
            .filter(|(p, _)| d.permissions.contains(p))
            .map(|(_, c)| c)
            .collect()
        };
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(typ)
                .major(major)
                .minor(minor)
                .access(access)
                .build()
                .map_err(build)?,
        );
    }
    Ok((nodes, rules))
}

/// A bind of a shared /dev/shm.
fn bind_shm(source: &Path) -> Result<Mount, oci_spec::OciSpecError> {
    MountBuilder::default()
        .destination("/dev/shm")
        .typ("bind")
        .source(source)
        .options(
            ["rbind", "rprivate", "nosuid", "noexec", "nodev"]
                .map(String::from)
                .to_vec(),
        )
        .build()
}

/// /proc, /dev, /dev/pts, /dev/shm (sized), /dev/mqueue, /sys (read-only), the cgroup
/// filesystem (read-only), and the definition's tmpfs mounts.
fn base_mounts(def: &ContainerDefinition) -> Result<Vec<Mount>, oci_spec::OciSpecError> {
    let m = |dest: &str, typ: &str, src: &str, opts: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(src)
            .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
    };
    let shm = def
        .linux_parameters
        .as_ref()
        .and_then(|l| l.shared_memory_size)
        .unwrap_or(64);
    let shm_size = format!("size={}k", u64::from(shm) * 1024);
    let mut out = vec![
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        m(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        m(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", &shm_size],
        )?,
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        m(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        m(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
    ];
    for t in def.linux_parameters.iter().flat_map(|l| &l.tmpfs) {
        let size = format!("size={}k", u64::from(t.size) * 1024);
        let mut opts: Vec<&str> = vec!["nosuid", "nodev", &size];
        opts.extend(t.mount_options.iter().map(String::as_str));
        out.push(m(&t.container_path, "tmpfs", "tmpfs", &opts)?);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
