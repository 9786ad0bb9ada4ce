//! skiffd's node configuration (`/etc/skiff/skiffd.toml`) and the places it keeps things.
//!
//! Everything has a default that works on a stock Debian box, so the file is optional; an unknown
//! key is an error (a misspelt setting silently ignored is worse than a refusal), and every error
//! names the file and the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use skiff_images::PullPolicy;

/// Where skiffd looks for its configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/skiff/skiffd.toml";

/// Errors of the node configuration.
#[derive(Debug, thiserror::Error)]
pub enum NodeConfigError {
    /// The file exists but could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// The node's settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Root of Skiff's persistent state: the image store, task records, named volumes.
    pub root: PathBuf,
    /// Runtime state that does not survive a reboot: the API socket, libcontainer's state.
    pub run_dir: PathBuf,
    /// The local API socket (root only). Default: `<run_dir>/skiffd.sock`.
    pub socket: Option<PathBuf>,
    /// Parent cgroup of task cgroups (`skiff`): one per node sharing a kernel.
    pub cgroup_parent: String,
    /// The image configuration (registries, mirrors, credentials).
    pub images_config: PathBuf,
    /// When to contact the registry for a task's images (ECS_IMAGE_PULL_BEHAVIOR).
    #[serde(deserialize_with = "pull_policy")]
    pub image_pull_behavior: PullPolicy,
    /// Honour `privileged: true` in task definitions (ECS_DISABLE_PRIVILEGED inverted).
    pub allow_privileged: bool,
    /// The seccomp profile containers get (Docker's default, as packaged by Debian).
    pub seccomp_profile: PathBuf,
    /// Most processes a container may have (ECS has no setting for it; podman's default): a
    /// fork bomb in one container must not take the node. 0: unlimited.
    pub container_pids_limit: i64,
    /// Most processes a whole task may have (its cgroup's pids.max). 0: unlimited.
    pub task_pids_limit: i64,
    /// A static binary with a `sleep` applet, run by the holder of a `pidMode: task` namespace
    /// (Debian's busybox-static).
    pub pause_binary: PathBuf,
    /// The init that `initProcessEnabled` runs as PID 1 (Docker's is tini).
    pub init_binary: PathBuf,
    /// The shim binary; default: `skiff-shim` next to skiffd.
    pub shim: Option<PathBuf>,
    /// How long stopped tasks stay listed (ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION).
    #[serde(with = "humantime_serde_compat")]
    pub stopped_task_retention: Duration,
    /// Prometheus text endpoint, off when absent; must be a loopback address.
    pub metrics_address: Option<SocketAddr>,
    /// Task networking (`[network]`): bridge, awsvpc, DNS, the metadata endpoint.
    pub network: skiff_netd::NetConfig,
    /// The node's credentials with the control plane (`skiffd register` writes them): its
    /// private key, which never leaves the box, its certificate and the cluster CA.
    pub credentials_dir: PathBuf,
    /// Memory (MiB) kept for the node itself: registration offers the rest to the control
    /// plane (ECS_RESERVED_MEMORY).
    pub reserved_memory: i64,
    /// Renew the node certificate when less than this is left of it; default: a third of its
    /// life (10 of apid's 30 days). Tests shorten the wait with a long lead.
    #[serde(with = "humantime_serde_compat::option")]
    pub renew_certificate_before: Option<Duration>,
    /// MicroVM isolation for tasks that ask for it (`requiresCompatibilities` FARGATE); off
    /// (such tasks refused) without the section.
    pub vm: Option<crate::vm::VmConfig>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from(skiff_images::store::DEFAULT_ROOT),
            run_dir: PathBuf::from("/run/skiff"),
            socket: None,
            cgroup_parent: crate::cgroups::SKIFF_PARENT.to_owned(),
            images_config: PathBuf::from(skiff_images::config::DEFAULT_CONFIG_PATH),
            image_pull_behavior: PullPolicy::Default,
            allow_privileged: false,
            seccomp_profile: PathBuf::from(crate::seccomp::DEFAULT_PROFILE),
            container_pids_limit: 2048,
            task_pids_limit: 8192,
            pause_binary: PathBuf::from("/bin/busybox"),
            init_binary: PathBuf::from(crate::spec::DEFAULT_INIT_BINARY),
            shim: None,
            stopped_task_retention: Duration::from_secs(3600),
            metrics_address: None,
            network: skiff_netd::NetConfig::default(),
            credentials_dir: PathBuf::from("/etc/skiff/node"),
            reserved_memory: 0,
            renew_certificate_before: None,
            vm: None,
        }
    }
}

fn pull_policy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PullPolicy, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// `"90s"`, `"1h"` as durations.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::Deserialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use std::time::Duration;

        pub fn deserialize<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

impl NodeConfig {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Self, NodeConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(NodeConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses the text of `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, NodeConfigError> {
        let invalid = |message: String| NodeConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let cfg: Self = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if let Some(addr) = cfg.metrics_address
            && !addr.ip().is_loopback()
        {
            return Err(invalid(format!(
                "metrics_address {addr}: the metrics endpoint listens on loopback only"
            )));
        }
        cfg.network.validate().map_err(|e| invalid(e.to_string()))?;
        if let Some(vm) = &cfg.vm {
            vm.validate().map_err(invalid)?;
        }
        Ok(cfg)
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.run_dir.join("skiffd.sock"))
    }

    /// Task records and per-task directories.
    pub fn tasks_dir(&self) -> PathBuf {
        self.root.join("tasks")
    }

    /// Named volumes that outlive tasks.
    pub fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }

    /// The node's registration with the control plane (`skiffd register` writes it).
    pub fn identity_file(&self) -> PathBuf {
        self.root.join("node.json")
    }

    /// What the control-plane agent keeps across restarts: events not yet acknowledged, what it
    /// last reported of each task, the desired state's version.
    pub fn agent_state(&self) -> PathBuf {
        self.root.join("agent.json")
    }

    /// libcontainer's state root.
    pub fn containers_state(&self) -> PathBuf {
        self.run_dir.join("containers")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let p = Path::new("/etc/skiff/skiffd.toml");
        let c = NodeConfig::parse("", p).unwrap();
        assert_eq!(c.socket(), Path::new("/run/skiff/skiffd.sock"));
        assert_eq!(c.stopped_task_retention, Duration::from_secs(3600));
        let c = NodeConfig::parse(
            "root = \"/srv/skiff\"\nstopped_task_retention = \"5m\"\nimage_pull_behavior = \"once\"\nmetrics_address = \"127.0.0.1:9464\"\n",
            p,
        )
        .unwrap();
        assert_eq!(c.tasks_dir(), Path::new("/srv/skiff/tasks"));
        assert_eq!(c.stopped_task_retention, Duration::from_secs(300));
        assert_eq!(c.image_pull_behavior, PullPolicy::Once);
    }

    /// packaging/skiffd.toml documents every key commented out with its default: uncommented,
    /// it must parse (a key renamed here and not there fails).
    #[test]
    fn the_packaged_file_documents_real_keys() {
        let text = include_str!("../../packaging/skiffd.toml");
        let active: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with('[') || rest.contains(" = ") => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(active.contains("renew_certificate_before"), "{active}");
        NodeConfig::parse(&active, Path::new("packaging/skiffd.toml")).unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let p = Path::new("/etc/skiff/skiffd.toml");
        let e = NodeConfig::parse("alow_privileged = true\n", p).unwrap_err();
        assert!(e.to_string().contains("alow_privileged"), "{e}");
        let e = NodeConfig::parse("metrics_address = \"0.0.0.0:9464\"\n", p).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        let e = NodeConfig::parse("image_pull_behavior = \"sometimes\"\n", p).unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
        let e = NodeConfig::parse("[network]\ndynamic_ports = \"x\"\n", p).unwrap_err();
        assert!(e.to_string().contains("network.dynamic_ports"), "{e}");
    }
}
