//! ECS task definitions, exactly as `aws ecs register-task-definition` takes them (camelCase
//! JSON), and their validation.
//!
//! Every struct denies unknown fields: a field Skiff does not implement (`taskRoleArn`,
//! `proxyConfiguration`, ...) is an error naming the field and where it is, never a silent drop,
//! so a user never believes a setting is in force when it is not. Validation then checks what
//! ECS checks (names, ranges, references between containers and volumes) and reports the first
//! problem with its field path, e.g. `containerDefinitions[1].healthCheck.interval`.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// A task definition that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum TaskDefinitionError {
    /// The JSON is malformed, has an unknown field or a value of the wrong type.
    #[error("task definition: {path}: {message}")]
    Parse {
        /// Where, as a field path (`containerDefinitions[0].portMappings[1].protocol`).
        path: String,
        /// What the parser said.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("task definition: {field}: {reason}")]
    Invalid {
        /// The field path.
        field: String,
        /// Why.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> TaskDefinitionError {
    TaskDefinitionError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// `networkMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// No network but loopback.
    None,
    /// The node's network namespace.
    Host,
    /// A Skiff bridge with port mappings (the ECS default on external instances).
    #[default]
    Bridge,
    /// One namespace per task with its own address.
    Awsvpc,
}

impl NetworkMode {
    /// Its name in task definitions.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Host => "host",
            Self::Bridge => "bridge",
            Self::Awsvpc => "awsvpc",
        }
    }
}

/// `pidMode` and `ipcMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceMode {
    /// Share the host's namespace.
    Host,
    /// One namespace shared by the task's containers.
    Task,
    /// `ipcMode` only: a private namespace without shared memory.
    None,
}

/// `requiresCompatibilities`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Compatibility {
    /// Containers on the node (what ECS calls EC2 and EXTERNAL).
    Ec2,
    /// Containers on the node.
    External,
    /// MicroVM isolation per task.
    Fargate,
}

/// `runtimePlatform`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimePlatform {
    /// `X86_64` or `ARM64`.
    #[serde(default)]
    pub cpu_architecture: Option<CpuArchitecture>,
    /// `LINUX` only.
    #[serde(default)]
    pub operating_system_family: Option<OsFamily>,
}

/// `runtimePlatform.cpuArchitecture`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuArchitecture {
    /// amd64.
    #[serde(rename = "X86_64")]
    X86_64,
    /// arm64.
    #[serde(rename = "ARM64")]
    Arm64,
}

/// `runtimePlatform.operatingSystemFamily`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OsFamily {
    /// Linux.
    #[serde(rename = "LINUX")]
    Linux,
}

/// A `name`/`value` pair (`environment`, `dockerLabels` are maps instead).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyValue {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// `environmentFiles[]`: a file of `NAME=value` lines on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentFile {
    /// The file (a path on the node; ECS takes an S3 ARN here).
    pub value: String,
    /// `s3` in ECS; Skiff reads local files and takes `file`.
    #[serde(rename = "type")]
    pub kind: EnvironmentFileType,
}

/// `environmentFiles[].type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvironmentFileType {
    /// A file on the node.
    File,
}

/// `dependsOn[].condition`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DependencyCondition {
    /// The dependency has started.
    Start,
    /// The dependency has exited.
    Complete,
    /// The dependency has exited with code 0.
    Success,
    /// The dependency passed its health check.
    Healthy,
}

/// `dependsOn[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerDependency {
    /// The container depended on.
    pub container_name: String,
    /// What it must reach first.
    pub condition: DependencyCondition,
}

/// `healthCheck`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// `["CMD", exe, args...]` or `["CMD-SHELL", "shell command"]`.
    pub command: Vec<String>,
    /// Seconds between checks (5-300, default 30).
    #[serde(default)]
    pub interval: Option<u32>,
    /// Seconds a check may take (2-60, default 5).
    #[serde(default)]
    pub timeout: Option<u32>,
    /// Consecutive failures before UNHEALTHY (1-10, default 3).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Grace seconds during which failures do not count (0-300, default 0).
    #[serde(default)]
    pub start_period: Option<u32>,
}

/// `portMappings[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortMapping {
    /// Port inside the container.
    pub container_port: u16,
    /// Port on the node; 0 or absent asks for a dynamic port (bridge mode).
    #[serde(default)]
    pub host_port: Option<u16>,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: Protocol,
    /// A name for the mapping.
    #[serde(default)]
    pub name: Option<String>,
}

/// `portMappings[].protocol`: netd's, so that a mapping goes to the network as it is.
pub use skiff_netd::Protocol;

/// `mountPoints[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MountPoint {
    /// A volume of the task.
    pub source_volume: String,
    /// Where it appears in the container.
    pub container_path: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: Option<bool>,
}

/// `volumesFrom[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeFrom {
    /// The container whose mount points are reused.
    pub source_container: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: Option<bool>,
}

/// `ulimits[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ulimit {
    /// `nofile`, `nproc`, ...
    pub name: String,
    /// Soft limit.
    pub soft_limit: u64,
    /// Hard limit.
    pub hard_limit: u64,
}

/// `linuxParameters.capabilities`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Added to Docker's default set (`NET_ADMIN`, ...).
    #[serde(default)]
    pub add: Vec<String>,
    /// Removed from it (`ALL` drops every one).
    #[serde(default)]
    pub drop: Vec<String>,
}

/// `linuxParameters.tmpfs[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tmpfs {
    /// Mount point.
    pub container_path: String,
    /// Size in MiB.
    pub size: u32,
    /// Mount options (`noexec`, `mode=1777`, ...).
    #[serde(default)]
    pub mount_options: Vec<String>,
}

/// `linuxParameters.devices[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    /// Device on the node.
    pub host_path: String,
    /// Where it appears (default: the same path).
    #[serde(default)]
    pub container_path: Option<String>,
    /// `read`, `write`, `mknod` (default: all three).
    #[serde(default)]
    pub permissions: Vec<DevicePermission>,
}

/// `linuxParameters.devices[].permissions[]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DevicePermission {
    /// r.
    Read,
    /// w.
    Write,
    /// m.
    Mknod,
}

/// `linuxParameters`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinuxParameters {
    /// Capabilities added and dropped.
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    /// Run an init as PID 1 that reaps zombies and forwards signals.
    #[serde(default)]
    pub init_process_enabled: Option<bool>,
    /// Size of /dev/shm in MiB.
    #[serde(default)]
    pub shared_memory_size: Option<u32>,
    /// tmpfs mounts.
    #[serde(default)]
    pub tmpfs: Vec<Tmpfs>,
    /// Host devices.
    #[serde(default)]
    pub devices: Vec<Device>,
}

/// `restartPolicy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestartPolicy {
    /// Restart the container when it exits.
    pub enabled: bool,
    /// Exit codes that do not cause a restart (at most 50).
    #[serde(default)]
    pub ignored_exit_codes: Vec<i32>,
    /// A container must run this many seconds before it may be restarted (60-1800, default 300).
    #[serde(default)]
    pub restart_attempt_period: Option<u32>,
}

/// `logConfiguration`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogConfiguration {
    /// `json-file` (Skiff's own files) is the one driver supported.
    pub log_driver: LogDriver,
    /// `max-size`, `max-file`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// `logConfiguration.logDriver`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogDriver {
    /// Files on the node, rotated by size.
    #[serde(rename = "json-file")]
    JsonFile,
}

/// `systemControls[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemControl {
    /// The sysctl (`net.core.somaxconn`).
    pub namespace: String,
    /// Its value.
    pub value: String,
}

/// One container of a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerDefinition {
    /// Unique within the task.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Arguments (replace the image's Cmd).
    #[serde(default)]
    pub command: Vec<String>,
    /// Entry point (replaces the image's Entrypoint).
    #[serde(default)]
    pub entry_point: Vec<String>,
    /// Environment, merged over the image's.
    #[serde(default)]
    pub environment: Vec<KeyValue>,
    /// Files of variables, applied before `environment`.
    #[serde(default)]
    pub environment_files: Vec<EnvironmentFile>,
    /// Working directory.
    #[serde(default)]
    pub working_directory: Option<String>,
    /// `user`, `uid`, `user:group`, `uid:gid`.
    #[serde(default)]
    pub user: Option<String>,
    /// CPU units (1024 = one core), as relative shares.
    #[serde(default)]
    pub cpu: Option<u32>,
    /// Hard memory limit, MiB.
    #[serde(default)]
    pub memory: Option<u32>,
    /// Soft memory limit, MiB.
    #[serde(default)]
    pub memory_reservation: Option<u32>,
    /// Its exit stops the task (default true).
    #[serde(default)]
    pub essential: Option<bool>,
    /// Start order.
    #[serde(default)]
    pub depends_on: Vec<ContainerDependency>,
    /// Health check.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Seconds between SIGTERM and SIGKILL (2-120, default 30).
    #[serde(default)]
    pub stop_timeout: Option<u32>,
    /// Port mappings.
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// Volume mounts.
    #[serde(default)]
    pub mount_points: Vec<MountPoint>,
    /// Mount points reused from other containers.
    #[serde(default)]
    pub volumes_from: Vec<VolumeFrom>,
    /// Resource limits.
    #[serde(default)]
    pub ulimits: Vec<Ulimit>,
    /// Root filesystem mounted read-only.
    #[serde(default)]
    pub readonly_root_filesystem: Option<bool>,
    /// Linux-specific settings.
    #[serde(default)]
    pub linux_parameters: Option<LinuxParameters>,
    /// All capabilities and devices (only where the node allows it).
    #[serde(default)]
    pub privileged: Option<bool>,
    /// Restarts in place.
    #[serde(default)]
    pub restart_policy: Option<RestartPolicy>,
    /// Logging.
    #[serde(default)]
    pub log_configuration: Option<LogConfiguration>,
    /// Labels.
    #[serde(default)]
    pub docker_labels: BTreeMap<String, String>,
    /// Namespaced sysctls.
    #[serde(default)]
    pub system_controls: Vec<SystemControl>,
    /// Hostname (not with awsvpc, where the task has one).
    #[serde(default)]
    pub hostname: Option<String>,
}

impl ContainerDefinition {
    /// `essential`, defaulting to true as in ECS.
    pub fn is_essential(&self) -> bool {
        self.essential.unwrap_or(true)
    }
}

/// `volumes[].host`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostVolume {
    /// Directory on the node; absent makes a task-scoped scratch volume.
    #[serde(default)]
    pub source_path: Option<String>,
}

/// `volumes[].dockerVolumeConfiguration`: named volumes on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedVolume {
    /// `task` (removed with the task) or `shared` (outlives it).
    pub scope: VolumeScope,
    /// Create a shared volume when it does not exist.
    #[serde(default)]
    pub autoprovision: Option<bool>,
    /// `local` only.
    #[serde(default)]
    pub driver: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `volumes[].dockerVolumeConfiguration.scope`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeScope {
    /// Lives and dies with the task.
    Task,
    /// Outlives tasks; shared by name.
    Shared,
}

/// `volumes[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    /// Name referenced by mount points.
    pub name: String,
    /// A host directory or scratch volume.
    #[serde(default)]
    pub host: Option<HostVolume>,
    /// A named node volume.
    #[serde(default)]
    pub docker_volume_configuration: Option<NamedVolume>,
}

/// `tags[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tag {
    /// Key.
    pub key: String,
    /// Value.
    #[serde(default)]
    pub value: String,
}

/// A task definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskDefinition {
    /// Family name.
    pub family: String,
    /// Containers.
    pub container_definitions: Vec<ContainerDefinition>,
    /// Network mode (default bridge).
    #[serde(default)]
    pub network_mode: Option<NetworkMode>,
    /// Task CPU units: `"256"` or `"0.25 vCPU"`.
    #[serde(default)]
    pub cpu: Option<String>,
    /// Task memory: `"512"` (MiB) or `"1 GB"`.
    #[serde(default)]
    pub memory: Option<String>,
    /// PID namespace.
    #[serde(default)]
    pub pid_mode: Option<NamespaceMode>,
    /// IPC namespace.
    #[serde(default)]
    pub ipc_mode: Option<NamespaceMode>,
    /// Volumes.
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// `EXTERNAL`/`EC2` (containers) or `FARGATE` (microVM).
    #[serde(default)]
    pub requires_compatibilities: Vec<Compatibility>,
    /// Architecture and OS.
    #[serde(default)]
    pub runtime_platform: Option<RuntimePlatform>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// The revision of a task definition run without registering it (standalone tasks); the
/// control plane's tasks carry their registered one (issue 6).
pub const STANDALONE_REVISION: u32 = 0;

/// The task-level resources, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TaskResources {
    /// CPU units (1024 per core).
    pub cpu: Option<u32>,
    /// MiB.
    pub memory: Option<u32>,
}

/// The ulimit names Docker and ECS accept.
const ULIMITS: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn in_range(field: String, v: Option<u32>, lo: u32, hi: u32) -> Result<(), TaskDefinitionError> {
    match v {
        Some(x) if x < lo || x > hi => Err(invalid(field, format!("{x} is outside {lo}-{hi}"))),
        _ => Ok(()),
    }
}

/// Parses `"256"`, `"1 vCPU"`, `"0.5 vcpu"` into CPU units.
fn parse_cpu(s: &str) -> Option<u32> {
    let t = s.trim().to_ascii_lowercase();
    match t.strip_suffix("vcpu") {
        Some(n) => n
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| *v > 0.0)
            .map(|v| (v * 1024.0).round() as u32),
        None => t.parse().ok().filter(|v| *v > 0),
    }
}

/// Parses `"512"` (MiB), `"1 GB"`, `"1.5gb"` into MiB.
fn parse_memory(s: &str) -> Option<u32> {
    let t = s.trim().to_ascii_lowercase();
    match t.strip_suffix("gb") {
        Some(n) => n
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| *v > 0.0)
            .map(|v| (v * 1024.0).round() as u32),
        None => t
            .strip_suffix("mb")
            .unwrap_or(&t)
            .trim()
            .parse()
            .ok()
            .filter(|v| *v > 0),
    }
}

impl TaskDefinition {
    /// Parses JSON as `register-task-definition` takes it, then validates it.
    pub fn from_json(text: &str) -> Result<Self, TaskDefinitionError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let def: Self =
            serde_path_to_error::deserialize(de).map_err(|e| TaskDefinitionError::Parse {
                path: match e.path().to_string() {
                    p if p == "." => "(document)".into(),
                    p => p,
                },
                message: e.inner().to_string(),
            })?;
        def.validate()?;
        Ok(def)
    }

    /// `networkMode`, defaulting to bridge.
    pub fn network_mode(&self) -> NetworkMode {
        self.network_mode.unwrap_or_default()
    }

    /// The task-level cpu and memory, parsed (validated by `from_json`).
    pub fn resources(&self) -> TaskResources {
        TaskResources {
            cpu: self.cpu.as_deref().and_then(parse_cpu),
            memory: self.memory.as_deref().and_then(parse_memory),
        }
    }

    /// Whether the task asks for microVM isolation.
    pub fn wants_vm(&self) -> bool {
        self.requires_compatibilities
            .contains(&Compatibility::Fargate)
    }

    /// Checks what ECS checks, and what Skiff needs, naming the first bad field.
    pub fn validate(&self) -> Result<(), TaskDefinitionError> {
        if !valid_name(&self.family) {
            return Err(invalid(
                "family",
                "must be 1-255 letters, digits, hyphens or underscores",
            ));
        }
        if let Some(cpu) = &self.cpu {
            parse_cpu(cpu)
                .ok_or_else(|| invalid("cpu", format!("{cpu:?} is not CPU units or \"N vCPU\"")))?;
        }
        if let Some(mem) = &self.memory {
            parse_memory(mem)
                .ok_or_else(|| invalid("memory", format!("{mem:?} is not MiB or \"N GB\"")))?;
        }
        if self.container_definitions.is_empty() {
            return Err(invalid(
                "containerDefinitions",
                "at least one container is required",
            ));
        }
        if matches!(self.pid_mode, Some(NamespaceMode::None)) {
            return Err(invalid("pidMode", "must be host or task"));
        }
        let volumes: HashMap<&str, &Volume> =
            self.volumes.iter().map(|v| (v.name.as_str(), v)).collect();
        for (i, v) in self.volumes.iter().enumerate() {
            let f = format!("volumes[{i}]");
            if !valid_name(&v.name) {
                return Err(invalid(
                    format!("{f}.name"),
                    "must be 1-255 letters, digits, hyphens or underscores",
                ));
            }
            if self.volumes[..i].iter().any(|o| o.name == v.name) {
                return Err(invalid(
                    format!("{f}.name"),
                    format!("duplicate volume {:?}", v.name),
                ));
            }
            if v.host.is_some() && v.docker_volume_configuration.is_some() {
                return Err(invalid(
                    f,
                    "give host or dockerVolumeConfiguration, not both",
                ));
            }
            if let Some(p) = v.host.as_ref().and_then(|h| h.source_path.as_deref())
                && !p.starts_with('/')
            {
                return Err(invalid(
                    format!("{f}.host.sourcePath"),
                    "must be an absolute path",
                ));
            }
            if let Some(d) = v
                .docker_volume_configuration
                .as_ref()
                .and_then(|d| d.driver.as_deref())
                && d != "local"
            {
                return Err(invalid(
                    format!("{f}.dockerVolumeConfiguration.driver"),
                    format!("{d:?} is not supported (local only)"),
                ));
            }
        }
        // Names first: every later check refers to containers by name.
        for (i, c) in self.container_definitions.iter().enumerate() {
            let f = format!("containerDefinitions[{i}].name");
            if !valid_name(&c.name) {
                return Err(invalid(
                    f,
                    "must be 1-255 letters, digits, hyphens or underscores",
                ));
            }
            if self.container_definitions[..i]
                .iter()
                .any(|o| o.name == c.name)
            {
                return Err(invalid(f, format!("duplicate container name {:?}", c.name)));
            }
        }
        let names: HashSet<&str> = self
            .container_definitions
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        for (i, c) in self.container_definitions.iter().enumerate() {
            self.validate_container(i, c, &names, &volumes)?;
        }
        if !self
            .container_definitions
            .iter()
            .any(ContainerDefinition::is_essential)
        {
            return Err(invalid(
                "containerDefinitions",
                "at least one container must be essential",
            ));
        }
        self.check_dependency_cycles()?;
        let task_mem = self.resources().memory;
        for (i, c) in self.container_definitions.iter().enumerate() {
            if task_mem.is_none() && c.memory.is_none() && c.memory_reservation.is_none() {
                return Err(invalid(
                    format!("containerDefinitions[{i}].memory"),
                    "memory or memoryReservation is required when the task has no memory",
                ));
            }
            if let (Some(tm), Some(cm)) = (task_mem, c.memory)
                && cm > tm
            {
                return Err(invalid(
                    format!("containerDefinitions[{i}].memory"),
                    format!("{cm} MiB exceeds the task's {tm} MiB"),
                ));
            }
        }
        Ok(())
    }

    fn validate_container(
        &self,
        i: usize,
        c: &ContainerDefinition,
        names: &HashSet<&str>,
        volumes: &HashMap<&str, &Volume>,
    ) -> Result<(), TaskDefinitionError> {
        let f = format!("containerDefinitions[{i}]");
        if c.image.trim().is_empty() {
            return Err(invalid(format!("{f}.image"), "is required"));
        }
        if c.memory.is_some_and(|m| m < 6) {
            return Err(invalid(format!("{f}.memory"), "must be at least 6 MiB"));
        }
        if let (Some(m), Some(r)) = (c.memory, c.memory_reservation)
            && r > m
        {
            return Err(invalid(
                format!("{f}.memoryReservation"),
                format!("{r} MiB exceeds memory {m} MiB"),
            ));
        }
        for (j, d) in c.depends_on.iter().enumerate() {
            let g = format!("{f}.dependsOn[{j}].containerName");
            if d.container_name == c.name {
                return Err(invalid(g, "a container cannot depend on itself"));
            }
            if !names.contains(d.container_name.as_str()) {
                return Err(invalid(
                    g,
                    format!("no container {:?} in the task", d.container_name),
                ));
            }
            if d.condition == DependencyCondition::Healthy {
                let dep = self
                    .container_definitions
                    .iter()
                    .find(|o| o.name == d.container_name);
                if dep.is_some_and(|o| o.health_check.is_none()) {
                    return Err(invalid(
                        format!("{f}.dependsOn[{j}].condition"),
                        format!("HEALTHY needs a healthCheck on {:?}", d.container_name),
                    ));
                }
            }
        }
        if let Some(h) = &c.health_check {
            let g = format!("{f}.healthCheck");
            match h.command.first().map(String::as_str) {
                Some("CMD") if h.command.len() >= 2 => {}
                Some("CMD-SHELL") if h.command.len() == 2 => {}
                _ => {
                    return Err(invalid(
                        format!("{g}.command"),
                        "must be [\"CMD\", exe, args...] or [\"CMD-SHELL\", \"command\"]",
                    ));
                }
            }
            in_range(format!("{g}.interval"), h.interval, 5, 300)?;
            in_range(format!("{g}.timeout"), h.timeout, 2, 60)?;
            in_range(format!("{g}.retries"), h.retries, 1, 10)?;
            in_range(format!("{g}.startPeriod"), h.start_period, 0, 300)?;
        }
        in_range(format!("{f}.stopTimeout"), c.stop_timeout, 2, 120)?;
        let mut ports = HashSet::new();
        for (j, p) in c.port_mappings.iter().enumerate() {
            let g = format!("{f}.portMappings[{j}]");
            if p.container_port == 0 {
                return Err(invalid(format!("{g}.containerPort"), "must be 1-65535"));
            }
            if !ports.insert((p.container_port, p.protocol)) {
                return Err(invalid(
                    format!("{g}.containerPort"),
                    format!("{} is mapped twice", p.container_port),
                ));
            }
            match self.network_mode() {
                NetworkMode::Awsvpc | NetworkMode::Host => {
                    if p.host_port.is_some_and(|h| h != 0 && h != p.container_port) {
                        return Err(invalid(
                            format!("{g}.hostPort"),
                            "must equal containerPort in awsvpc and host network modes",
                        ));
                    }
                }
                NetworkMode::None => {
                    return Err(invalid(
                        g,
                        "port mappings need a network (networkMode is none)",
                    ));
                }
                NetworkMode::Bridge => {}
            }
        }
        for (j, m) in c.mount_points.iter().enumerate() {
            let g = format!("{f}.mountPoints[{j}]");
            if !volumes.contains_key(m.source_volume.as_str()) {
                return Err(invalid(
                    format!("{g}.sourceVolume"),
                    format!("no volume {:?} in the task", m.source_volume),
                ));
            }
            if !m.container_path.starts_with('/') {
                return Err(invalid(
                    format!("{g}.containerPath"),
                    "must be an absolute path",
                ));
            }
        }
        for (j, v) in c.volumes_from.iter().enumerate() {
            let g = format!("{f}.volumesFrom[{j}].sourceContainer");
            if v.source_container == c.name || !names.contains(v.source_container.as_str()) {
                return Err(invalid(
                    g,
                    format!("no other container {:?} in the task", v.source_container),
                ));
            }
        }
        for (j, u) in c.ulimits.iter().enumerate() {
            let g = format!("{f}.ulimits[{j}]");
            if !ULIMITS.contains(&u.name.as_str()) {
                return Err(invalid(
                    format!("{g}.name"),
                    format!("unknown ulimit {:?}", u.name),
                ));
            }
            if u.soft_limit > u.hard_limit {
                return Err(invalid(format!("{g}.softLimit"), "exceeds hardLimit"));
            }
        }
        if let Some(lp) = &c.linux_parameters {
            let g = format!("{f}.linuxParameters");
            if lp.shared_memory_size == Some(0) {
                return Err(invalid(
                    format!("{g}.sharedMemorySize"),
                    "must be at least 1 MiB",
                ));
            }
            for (j, t) in lp.tmpfs.iter().enumerate() {
                if t.size == 0 {
                    return Err(invalid(
                        format!("{g}.tmpfs[{j}].size"),
                        "must be at least 1 MiB",
                    ));
                }
                if !t.container_path.starts_with('/') {
                    return Err(invalid(
                        format!("{g}.tmpfs[{j}].containerPath"),
                        "must be an absolute path",
                    ));
                }
            }
            for (j, d) in lp.devices.iter().enumerate() {
                if !d.host_path.starts_with("/dev/") {
                    return Err(invalid(
                        format!("{g}.devices[{j}].hostPath"),
                        "must be a device under /dev",
                    ));
                }
            }
        }
        if let Some(r) = &c.restart_policy {
            let g = format!("{f}.restartPolicy");
            if r.ignored_exit_codes.len() > 50 {
                return Err(invalid(
                    format!("{g}.ignoredExitCodes"),
                    "at most 50 exit codes",
                ));
            }
            in_range(
                format!("{g}.restartAttemptPeriod"),
                r.restart_attempt_period,
                60,
                1800,
            )?;
        }
        if c.hostname.is_some() && self.network_mode() == NetworkMode::Awsvpc {
            return Err(invalid(
                format!("{f}.hostname"),
                "not supported in awsvpc network mode",
            ));
        }
        for (j, s) in c.system_controls.iter().enumerate() {
            let ok = s.namespace.starts_with("net.")
                || s.namespace.starts_with("kernel.msg")
                || s.namespace.starts_with("kernel.sem")
                || s.namespace.starts_with("kernel.shm")
                || s.namespace.starts_with("fs.mqueue.");
            if !ok {
                return Err(invalid(
                    format!("{f}.systemControls[{j}].namespace"),
                    format!("{:?} is not a namespaced sysctl", s.namespace),
                ));
            }
        }
        Ok(())
    }

    /// dependsOn must form no cycle (ECS refuses them at registration).
    fn check_dependency_cycles(&self) -> Result<(), TaskDefinitionError> {
        let deps: HashMap<&str, Vec<&str>> = self
            .container_definitions
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.depends_on
                        .iter()
                        .map(|d| d.container_name.as_str())
                        .collect(),
                )
            })
            .collect();
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Visiting,
            Done,
        }
        fn visit<'a>(
            n: &'a str,
            deps: &HashMap<&'a str, Vec<&'a str>>,
            marks: &mut HashMap<&'a str, Mark>,
            path: &mut Vec<&'a str>,
        ) -> Option<Vec<&'a str>> {
            match marks.get(n) {
                Some(Mark::Done) => return None,
                Some(Mark::Visiting) => {
                    let start = path.iter().position(|p| *p == n).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(n);
                    return Some(cycle);
                }
                None => {}
            }
            marks.insert(n, Mark::Visiting);
            path.push(n);
            for d in deps.get(n).into_iter().flatten() {
                if let Some(c) = visit(d, deps, marks, path) {
                    return Some(c);
                }
            }
            path.pop();
            marks.insert(n, Mark::Done);
            None
        }
        let mut marks = HashMap::new();
        for c in &self.container_definitions {
            if let Some(cycle) = visit(&c.name, &deps, &mut marks, &mut Vec::new()) {
                return Err(invalid(
                    "containerDefinitions.dependsOn",
                    format!("dependency cycle {}", cycle.join(" -> ")),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "taskdef_tests.rs"]
mod tests;
