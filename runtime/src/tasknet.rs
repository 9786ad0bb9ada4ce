//! A task's network as skiffd sees it: netd's request made from the task definition, the
//! result written into the task's record the way ECS reports it (`networkBindings`,
//! `networkInterfaces`, `attachments` of type ElasticNetworkInterface for awsvpc), the task's
//! /etc/hosts and /etc/resolv.conf, and each container's task metadata endpoint URI.
//!
//! Skiff gives all containers of a task one network namespace in bridge mode too (ECS gives
//! each container its own under Docker's bridge): they reach each other on localhost and by
//! name, and two containers of a task cannot map the same container port, which is refused when
//! the task is submitted.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use skiff_netd::{Attachment, Mode, NetConfig, PortRequest, Protocol, TaskNetwork, TaskRequest};

use crate::record::TaskRecord;
use crate::taskdef::{NetworkMode, TaskDefinition};

/// ECS `containers[].networkBindings[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkBinding {
    /// The node address the port is bound on.
    #[serde(rename = "bindIP")]
    pub bind_ip: String,
    /// The container's port.
    pub container_port: u16,
    /// The node's port.
    pub host_port: u16,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
}

/// ECS `containers[].networkInterfaces[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterface {
    /// The task attachment it belongs to.
    pub attachment_id: String,
    /// The task's address.
    pub private_ipv4_address: String,
}

/// ECS `attachments[].details[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub name: String,
    /// The value.
    pub value: String,
}

/// ECS `attachments[]`: the task's network interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAttachment {
    /// Its id.
    pub id: String,
    /// `ElasticNetworkInterface`, as ECS names an awsvpc task's interface.
    #[serde(rename = "type")]
    pub kind: String,
    /// `ATTACHED`.
    pub status: String,
    /// subnet, address, interface, gateway, attachment mode.
    pub details: Vec<KeyValue>,
}

/// A task-level refusal of its port mappings, naming the field.
pub fn check_ports(def: &TaskDefinition) -> Result<(), String> {
    let mut seen: HashMap<(u16, Protocol), &str> = HashMap::new();
    for (i, c) in def.container_definitions.iter().enumerate() {
        for (j, p) in c.port_mappings.iter().enumerate() {
            if let Some(other) = seen.insert((p.container_port, p.protocol), &c.name)
                && other != c.name
            {
                return Err(format!(
                    "containerDefinitions[{i}].portMappings[{j}].containerPort: {}/{} is also mapped by container {other}; a task's containers share one network namespace on Skiff",
                    p.container_port, p.protocol
                ));
            }
        }
    }
    Ok(())
}

/// The port mappings of a definition as netd takes them (hostPort 0 or absent: dynamic).
pub fn port_requests(def: &TaskDefinition) -> Vec<PortRequest> {
    def.container_definitions
        .iter()
        .flat_map(|c| {
            c.port_mappings.iter().map(|p| PortRequest {
                container_name: c.name.clone(),
                container_port: p.container_port,
                host_port: p.host_port.filter(|&h| h != 0),
                protocol: p.protocol,
            })
        })
        .collect()
}

/// netd's request for a task with a network of its own; None for `host` and `none`.
pub fn request(rec: &TaskRecord) -> Option<TaskRequest> {
    let def = &rec.task_definition;
    let mode = match def.network_mode() {
        NetworkMode::Bridge => Mode::Bridge,
        NetworkMode::Awsvpc => Mode::Awsvpc,
        NetworkMode::Host | NetworkMode::None => return None,
    };
    Some(TaskRequest {
        task_id: rec.task_id.clone(),
        mode,
        ports: port_requests(def),
    })
}

/// An attachment id in ECS's UUID shape, stable for the task.
fn attachment_id(task_id: &str) -> String {
    let t = task_id;
    format!(
        "{}-{}-{}-{}-{}",
        &t[..8],
        &t[8..12],
        &t[12..16],
        &t[16..20],
        &t[20..32]
    )
}

/// Writes what the task got into its record, as ECS describes it.
pub fn apply(rec: &mut TaskRecord, net: &TaskNetwork) {
    let att = attachment_id(&rec.task_id);
    let def = rec.task_definition.clone();
    for c in &mut rec.containers {
        c.network_interfaces = vec![NetworkInterface {
            attachment_id: att.clone(),
            private_ipv4_address: net.address.to_string(),
        }];
        c.network_bindings = match net.attachment {
            Attachment::Bridge => net
                .ports
                .iter()
                .filter(|p| p.container_name == c.name)
                .map(|p| NetworkBinding {
                    bind_ip: Ipv4Addr::UNSPECIFIED.to_string(),
                    container_port: p.container_port,
                    host_port: p.host_port,
                    protocol: p.protocol,
                })
                .collect(),
            // awsvpc: the container's ports at the task's own address.
            _ => def
                .container_definitions
                .iter()
                .filter(|d| d.name == c.name)
                .flat_map(|d| &d.port_mappings)
                .map(|p| NetworkBinding {
                    bind_ip: net.address.to_string(),
                    container_port: p.container_port,
                    host_port: p.container_port,
                    protocol: p.protocol,
                })
                .collect(),
        };
    }
    let mode = serde_json::to_value(net.attachment)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let detail = |name: &str, value: String| KeyValue {
        name: name.into(),
        value,
    };
    rec.attachments = vec![TaskAttachment {
        id: att,
        kind: if net.attachment == Attachment::Bridge {
            "bridge".into()
        } else {
            "ElasticNetworkInterface".into()
        },
        status: "ATTACHED".into(),
        details: vec![
            detail("subnetId", net.subnet.to_string()),
            detail("networkInterfaceId", net.host_link.clone()),
            detail("privateIPv4Address", net.address.to_string()),
            detail("privateDnsName", private_dns_name(net.address)),
            detail("gateway", net.gateway.to_string()),
            detail("attachmentMode", mode),
        ],
    }];
    rec.network = Some(net.clone());
}

/// ECS's hostname of an address (`ip-10-0-0-5`).
pub fn private_dns_name(a: Ipv4Addr) -> String {
    format!("ip-{}", a.to_string().replace('.', "-"))
}

/// The task's hosts and resolv.conf, written under `task_dir/network/`.
#[derive(Clone, Debug)]
pub struct EtcFiles {
    /// /etc/hosts.
    pub hosts: PathBuf,
    /// /etc/resolv.conf.
    pub resolv_conf: PathBuf,
}

impl EtcFiles {
    /// The files of the task whose directory is `task_dir`.
    pub fn of(task_dir: &Path) -> Self {
        let dir = task_dir.join("network");
        Self {
            hosts: dir.join("hosts"),
            resolv_conf: dir.join("resolv.conf"),
        }
    }

    /// The name servers the task's resolv.conf lists (none when it has none, or no file).
    pub fn name_servers(&self) -> Vec<String> {
        std::fs::read_to_string(&self.resolv_conf)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("nameserver")).then(|| w.next()).flatten()
            })
            .map(str::to_owned)
            .collect()
    }
}

/// Writes the task's /etc/hosts and /etc/resolv.conf. `host` tasks get the node's files as
/// they are (the node's loopback resolver is theirs too).
pub fn write_etc(task_dir: &Path, rec: &TaskRecord, cfg: &NetConfig) -> std::io::Result<EtcFiles> {
    let files = EtcFiles::of(task_dir);
    if let Some(dir) = files.hosts.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let node_resolv = skiff_netd::etc::node_resolv_conf();
    let (hosts, resolv) = if rec.task_definition.network_mode() == NetworkMode::Host {
        (
            std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
            std::fs::read_to_string("/etc/resolv.conf").unwrap_or(node_resolv),
        )
    } else {
        let address = rec.network.as_ref().map(|n| n.address);
        let mut names: Vec<String> = rec
            .task_definition
            .container_definitions
            .iter()
            .flat_map(|c| c.hostname.iter().chain(std::iter::once(&c.name)).cloned())
            .collect();
        names.extend(address.map(private_dns_name));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        (
            skiff_netd::etc::hosts(address, &names),
            skiff_netd::etc::resolv_conf(&node_resolv, &cfg.dns_servers, &cfg.dns_search),
        )
    };
    std::fs::write(&files.hosts, hosts)?;
    std::fs::write(&files.resolv_conf, resolv)?;
    Ok(files)
}

/// The bind mounts of a task's /etc files into a container.
pub fn etc_mounts(files: &EtcFiles) -> Vec<oci_spec::runtime::Mount> {
    [
        (&files.hosts, "/etc/hosts"),
        (&files.resolv_conf, "/etc/resolv.conf"),
    ]
    .into_iter()
    .map(|(src, dst)| {
        oci_spec::runtime::MountBuilder::default()
            .destination(dst)
            .typ("bind")
            .source(src)
            .options(["rbind", "rprivate"].map(String::from).to_vec())
            .build()
            .expect("a complete bind mount")
    })
    .collect()
}

/// `ECS_CONTAINER_METADATA_URI_V4` (and v3's variable, which ECS also sets) of a container:
/// None for tasks without a network.
pub fn metadata_env(rec: &TaskRecord, cfg: &NetConfig, token: &str) -> Vec<(String, String)> {
    if rec.task_definition.network_mode() == NetworkMode::None {
        return Vec::new();
    }
    let base = format!("http://{}", cfg.metadata_address);
    vec![
        (
            "ECS_CONTAINER_METADATA_URI_V4".into(),
            format!("{base}/v4/{token}"),
        ),
        (
            "ECS_CONTAINER_METADATA_URI".into(),
            format!("{base}/v3/{token}"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(json: &str) -> TaskDefinition {
        TaskDefinition::from_json(json).unwrap()
    }

    #[test]
    fn two_containers_cannot_map_one_port_of_the_shared_namespace() {
        let d = def(r#"{"family":"f","containerDefinitions":[
              {"name":"a","image":"i","memory":8,"portMappings":[{"containerPort":80}]},
              {"name":"b","image":"i","memory":8,"portMappings":[{"containerPort":81},{"containerPort":80}]}]}"#);
        assert_eq!(
            check_ports(&d).unwrap_err(),
            "containerDefinitions[1].portMappings[1].containerPort: 80/tcp is also mapped by container a; a task's containers share one network namespace on Skiff"
        );
        let ok = def(r#"{"family":"f","containerDefinitions":[
              {"name":"a","image":"i","memory":8,"portMappings":[{"containerPort":80},{"containerPort":80,"protocol":"udp"}]}]}"#);
        check_ports(&ok).unwrap();
    }

    #[test]
    fn name_servers_are_read_from_the_task_s_resolv_conf() {
        let dir = tempfile::tempdir().unwrap();
        let files = EtcFiles::of(dir.path());
        assert!(files.name_servers().is_empty(), "no file yet");
        std::fs::create_dir_all(files.resolv_conf.parent().unwrap()).unwrap();
        std::fs::write(
            &files.resolv_conf,
            "search lan\nnameserver 192.0.2.53\n# nameserver 10.0.0.1\nnameserver 192.0.2.54\noptions ndots:2\n",
        )
        .unwrap();
        assert_eq!(files.name_servers(), ["192.0.2.53", "192.0.2.54"]);
    }

    #[test]
    fn attachment_ids_look_like_ecs_ones() {
        assert_eq!(
            attachment_id("0123456789abcdef0123456789abcdef"),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
    }
}
