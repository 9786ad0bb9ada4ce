//! The ECS task metadata endpoint, version 4, served by skiffd to the tasks it runs, as the ECS
//! agent serves it: applications, sidecars and SDKs find their container, task, limits, network
//! and Docker-shaped stats through `ECS_CONTAINER_METADATA_URI_V4` without knowing they run on
//! Skiff.
//!
//! | path (`/v3/...` the same)  | answer                                                       |
//! |----------------------------|--------------------------------------------------------------|
//! | `GET /v4/{token}`          | the container's document                                     |
//! | `GET /v4/{token}/task`     | the task's, with every container's                           |
//! | `GET /v4/{token}/stats`    | the container's Docker stats (`null` while it does not run)  |
//! | `GET /v4/{token}/task/stats` | each container's Docker stats by `DockerId`                |
//!
//! **Where.** On the node's metadata address (`169.254.170.2:80`, ECS's), which netd puts on the
//! node's bridge: bridge tasks reach it through their gateway, awsvpc routed tasks through their
//! on-link route to it, macvlan/ipvlan tasks through their `meta0` link, `host` tasks as a local
//! address. An nftables rule drops traffic to it that does not come from loopback, the bridge or
//! a task link, so other hosts cannot ask.
//!
//! **Identity.** The token in a container's URI is random (128 bits) and names the container;
//! an unknown one is a 404. A known one is also checked against the connection's source: a task
//! with a namespace of its own is served only from its own address (or its `meta0` address), so
//! a token leaked to another task, or to the node, reads nothing (403); a `host` task, which
//! shares the node's namespace, only from an address of the node. See `docs/design.md`.
//!
//! **Shapes.** The agent's field names and types (`DockerId`, `Limits.CPU` in units for a
//! container and vCPU for a task, RFC 3339 times with nanoseconds, error bodies as JSON strings).
//! What Skiff has no source for is left out rather than invented: `PullStartedAt` and
//! `PullStoppedAt`, `AvailabilityZone`, `ServiceName`, `VPCID`, `MACAddress`, tags. ARNs are
//! local ones until the control plane gives tasks theirs (issue 6): region `local`, account
//! `000000000000`, cluster `default`, a container's ARN made of its task id and name. `DockerId`
//! and `DockerName` are the runtime id libcontainer knows the container by. Stats come from the
//! cgroups (`crate::stats`); `precpu_stats` is the previous read of the same container by any
//! caller (zero on the first), as a Docker stats stream gives it; the interface counters are the
//! task namespace's, read through the container's `/proc/<pid>/net/dev`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::daemon::Daemon;
use crate::logs::rfc3339;
use crate::record::{ContainerRecord, TaskRecord};
use crate::stats::{self, CgroupStats, InterfaceStats, SystemCpu, TaskStats};
use crate::taskdef::{ContainerDefinition, NetworkMode, STANDALONE_REVISION};
use crate::tasknet::{self, EtcFiles};

/// Errors of the task metadata endpoint: serving it, and why a request is refused.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The endpoint's address could not be bound (not on this node, or its port taken).
    #[error("binding {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Serving stopped.
    #[error("serving the task metadata endpoint")]
    Serve(#[source] std::io::Error),
    /// No container has the token of the request.
    #[error("no container has this endpoint id")]
    UnknownToken,
    /// The token is a container's, but the request does not come from its task.
    #[error("the endpoint id of task {task} was presented by {peer}, outside the task")]
    WrongPeer {
        /// The token's task.
        task: String,
        /// Where the request came from.
        peer: IpAddr,
    },
    /// Reading the task's state failed half-way (a blocking read panicked).
    #[error("reading the task's state")]
    Blocking(#[source] tokio::task::JoinError),
}

impl IntoResponse for MetadataError {
    /// The agent's statuses, with its body: a JSON string. Which task a refused token belongs to
    /// is logged, never returned.
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            Self::UnknownToken => {
                tracing::debug!(error = %self, "task metadata request");
                (StatusCode::NOT_FOUND, self.to_string())
            }
            Self::WrongPeer { peer, .. } => {
                tracing::warn!(error = %self, "task metadata request refused");
                (
                    StatusCode::FORBIDDEN,
                    format!("this endpoint id is not served to {peer}"),
                )
            }
            Self::Bind { .. } | Self::Serve(_) | Self::Blocking(_) => {
                tracing::error!(error = %self, "task metadata request");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "failed to get metadata".to_owned(),
                )
            }
        };
        (status, axum::Json(body)).into_response()
    }
}

/// The container a token names, with its task.
#[derive(Clone, Debug)]
pub struct TokenOwner {
    /// The task's record.
    pub task: TaskRecord,
    /// The container's name.
    pub container: String,
    /// The task's directory (its resolv.conf is there).
    pub task_dir: PathBuf,
}

/// What the endpoint reads of the node: the seam between its documents and [`Daemon`], so the
/// router is tested on records alone.
pub trait Tasks: Clone + Send + Sync + 'static {
    /// The container whose metadata token is `token`, with its task.
    fn token_owner(&self, token: &str) -> Option<TokenOwner>;
    /// The cgroup stats of task `task_id` while it runs.
    fn stats(&self, task_id: &str) -> Option<TaskStats>;
}

impl Tasks for Daemon {
    fn token_owner(&self, token: &str) -> Option<TokenOwner> {
        Daemon::token_owner(self, token)
    }

    fn stats(&self, task_id: &str) -> Option<TaskStats> {
        Daemon::stats(self, task_id).ok()
    }
}

/// ARNs of tasks no control plane placed.
const LOCAL_ARN: &str = "arn:aws:ecs:local:000000000000";
/// The cluster of tasks no control plane placed (ECS's default).
const CLUSTER: &str = "default";

/// The task's cluster, ARN and revision: the control plane's when it placed the task, local
/// ones otherwise.
struct Names {
    cluster: String,
    task_arn: String,
    revision: String,
    arn_prefix: String,
}

fn names(rec: &TaskRecord) -> Names {
    match &rec.origin {
        Some(o) => {
            // arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/ID and ...:task-definition/FAMILY:REV
            let (prefix, resource) = o.task_arn.split_once(":task/").unwrap_or(("", ""));
            Names {
                cluster: resource.split('/').next().unwrap_or(CLUSTER).to_owned(),
                task_arn: o.task_arn.clone(),
                revision: o
                    .task_definition_arn
                    .rsplit(':')
                    .next()
                    .unwrap_or("0")
                    .to_owned(),
                arn_prefix: prefix.to_owned(),
            }
        }
        None => Names {
            cluster: CLUSTER.to_owned(),
            task_arn: format!("{LOCAL_ARN}:task/{CLUSTER}/{}", rec.task_id),
            revision: STANDALONE_REVISION.to_string(),
            arn_prefix: LOCAL_ARN.to_owned(),
        },
    }
}

/// The previous read of each container's cpu, for `precpu_stats`.
#[derive(Clone, Copy, Debug)]
struct CpuSample {
    read: SystemTime,
    cpu: CpuStatsDoc,
}

/// A previous read older than this is forgotten (its container is likely gone).
const SAMPLE_TTL: Duration = Duration::from_secs(600);

#[derive(Clone)]
struct Endpoint<T> {
    tasks: T,
    previous: Arc<Mutex<HashMap<String, CpuSample>>>,
}

/// The endpoint's routes over `tasks`; the peer address comes from axum's `ConnectInfo`.
pub fn router<T: Tasks>(tasks: T) -> Router {
    let mut r = Router::new();
    for v in ["v3", "v4"] {
        r = r
            .route(&format!("/{v}/{{token}}"), get(container::<T>))
            .route(&format!("/{v}/{{token}}/task"), get(task::<T>))
            .route(&format!("/{v}/{{token}}/stats"), get(container_stats::<T>))
            .route(&format!("/{v}/{{token}}/task/stats"), get(task_stats::<T>));
    }
    r.with_state(Endpoint {
        tasks,
        previous: Arc::default(),
    })
}

/// Serves the endpoint on `addr` (the node's metadata address, port 80) until an error.
///
/// ```no_run
/// # async fn f(daemon: skiff_runtime::daemon::Daemon) -> Result<(), skiff_runtime::metadata::MetadataError> {
/// let addr = std::net::SocketAddr::from(([169, 254, 170, 2], 80));
/// skiff_runtime::metadata::serve(daemon, addr).await
/// # }
/// ```
pub async fn serve<T: Tasks>(tasks: T, addr: SocketAddr) -> Result<(), MetadataError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetadataError::Bind { addr, source })?;
    axum::serve(
        listener,
        router(tasks).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .map_err(MetadataError::Serve)
}

/// The owner of `token`, if `peer` may ask for it.
fn authorize<T: Tasks>(tasks: &T, token: &str, peer: IpAddr) -> Result<TokenOwner, MetadataError> {
    let owner = tasks
        .token_owner(token)
        .ok_or(MetadataError::UnknownToken)?;
    if !peer_allowed(&owner.task, peer) {
        return Err(MetadataError::WrongPeer {
            task: owner.task.task_id,
            peer,
        });
    }
    Ok(owner)
}

/// Whether a request from `peer` comes from inside task `rec`: its own address (or its `meta0`
/// address) when it has a namespace of its own; an address of the node (which a `host` task's
/// connection to a local address comes from) when it shares the node's.
fn peer_allowed(rec: &TaskRecord, peer: IpAddr) -> bool {
    match rec.task_definition.network_mode() {
        NetworkMode::Host => is_node_address(peer),
        NetworkMode::Bridge | NetworkMode::Awsvpc => rec.network.as_ref().is_some_and(|n| {
            peer == IpAddr::V4(n.address) || n.meta_address.is_some_and(|m| peer == IpAddr::V4(m))
        }),
        // No network, no way here: whoever asks is not the task.
        NetworkMode::None => false,
    }
}

/// Whether `ip` is an address of skiffd's namespace (the node's): one a socket can bind.
fn is_node_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Runs `f` (file reads) on the blocking pool.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, MetadataError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(MetadataError::Blocking)
}

type Doc<T> = Result<axum::Json<T>, MetadataError>;

async fn container<T: Tasks>(
    State(s): State<Endpoint<T>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(token): UrlPath<String>,
) -> Doc<ContainerDoc> {
    let owner = authorize(&s.tasks, &token, peer.ip())?;
    blocking(move || {
        let c = owner
            .task
            .container(&owner.container)
            .ok_or(MetadataError::UnknownToken)?;
        let servers = EtcFiles::of(&owner.task_dir).name_servers();
        let networks = networks(&owner.task, &servers);
        Ok(axum::Json(container_doc(&owner.task, c, &networks)))
    })
    .await?
}

async fn task<T: Tasks>(
    State(s): State<Endpoint<T>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(token): UrlPath<String>,
) -> Doc<TaskDoc> {
    let owner = authorize(&s.tasks, &token, peer.ip())?;
    let doc = blocking(move || {
        let servers = EtcFiles::of(&owner.task_dir).name_servers();
        task_doc(&owner.task, &servers)
    })
    .await?;
    Ok(axum::Json(doc))
}

async fn container_stats<T: Tasks>(
    State(s): State<Endpoint<T>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(token): UrlPath<String>,
) -> Doc<Option<DockerStats>> {
    let owner = authorize(&s.tasks, &token, peer.ip())?;
    let mut all = blocking(move || read_stats(&s, &owner.task, Some(&owner.container))).await?;
    Ok(axum::Json(all.pop().and_then(|(_, doc)| doc)))
}

async fn task_stats<T: Tasks>(
    State(s): State<Endpoint<T>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(token): UrlPath<String>,
) -> Doc<BTreeMap<String, Option<DockerStats>>> {
    let owner = authorize(&s.tasks, &token, peer.ip())?;
    let all = blocking(move || read_stats(&s, &owner.task, None)).await?;
    Ok(axum::Json(all.into_iter().collect()))
}

/// Reads the Docker stats of container `only` of `rec`, or of all of them: each container's
/// runtime id, with `None` for one that does not run.
fn read_stats<T: Tasks>(
    s: &Endpoint<T>,
    rec: &TaskRecord,
    only: Option<&str>,
) -> Vec<(String, Option<DockerStats>)> {
    let sample = s.tasks.stats(&rec.task_id);
    let system = stats::read_system_cpu().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reading the node's cpu time");
        SystemCpu::default()
    });
    let read = SystemTime::now();
    rec.containers
        .iter()
        .filter(|c| only.is_none_or(|name| c.name == name))
        .map(|c| {
            let cgroup = sample
                .as_ref()
                .and_then(|t| t.containers.iter().find(|(n, _)| *n == c.name))
                .map(|(_, cg)| cg);
            let doc = cgroup.map(|cg| {
                // A task with a namespace of its own: its interfaces, seen through the container.
                let interfaces = c
                    .pid
                    .filter(|_| rec.network.is_some())
                    .and_then(|pid| stats::read_interfaces(pid).ok());
                let task_limit = sample.as_ref().and_then(|t| t.task.memory.limit);
                let cur = Current {
                    read,
                    cgroup: cg,
                    task_memory_limit: task_limit,
                    system,
                    interfaces: interfaces.as_deref(),
                };
                let previous = s.remember(&c.runtime_id, read, cpu_stats_doc(cg, system));
                stats_doc(c, &cur, previous)
            });
            (c.runtime_id.clone(), doc)
        })
        .collect()
}

impl<T> Endpoint<T> {
    /// Records `cpu` as the latest read of container `id` and returns the one before, if it is
    /// of the same run (its counters not above the new ones).
    fn remember(&self, id: &str, read: SystemTime, cpu: CpuStatsDoc) -> Option<CpuSample> {
        let mut previous = self.previous.lock().unwrap_or_else(PoisonError::into_inner);
        previous.retain(|_, p| {
            read.duration_since(p.read)
                .is_ok_and(|age| age < SAMPLE_TTL)
        });
        previous
            .insert(id.to_owned(), CpuSample { read, cpu })
            .filter(|p| p.cpu.cpu_usage.total_usage <= cpu.cpu_usage.total_usage)
    }
}

// The documents, in the agent's field names.

/// `Limits` of a container (CPU units) or a task (vCPU).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Limits {
    #[serde(rename = "CPU", skip_serializing_if = "Option::is_none")]
    cpu: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<u32>,
}

/// `Ports[]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
struct PortDoc {
    container_port: u16,
    protocol: String,
    host_port: u16,
    host_ip: String,
}

/// `Networks[]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkDoc {
    network_mode: &'static str,
    #[serde(rename = "IPv4Addresses", skip_serializing_if = "Vec::is_empty")]
    ipv4_addresses: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attachment_index: Option<u32>,
    #[serde(
        rename = "IPv4SubnetCIDRBlock",
        skip_serializing_if = "Option::is_none"
    )]
    ipv4_subnet_cidr_block: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    domain_name_servers: Vec<String>,
    #[serde(rename = "PrivateDNSName", skip_serializing_if = "Option::is_none")]
    private_dns_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subnet_gateway_ipv4_address: Option<String>,
}

/// `Health` of a container with a health check.
#[derive(Clone, Debug, PartialEq, Serialize)]
struct HealthDoc {
    status: crate::orchestration::Health,
}

/// A container's document.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerDoc {
    docker_id: String,
    name: String,
    docker_name: String,
    image: String,
    #[serde(rename = "ImageID", skip_serializing_if = "Option::is_none")]
    image_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<PortDoc>,
    labels: BTreeMap<String, String>,
    desired_status: String,
    known_status: crate::record::ContainerStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    limits: Limits,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
    #[serde(rename = "Type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<HealthDoc>,
    log_driver: &'static str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    log_options: BTreeMap<String, String>,
    #[serde(rename = "ContainerARN")]
    container_arn: String,
    networks: Vec<NetworkDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart_count: Option<u32>,
}

/// A task's document.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
struct TaskDoc {
    cluster: String,
    #[serde(rename = "TaskARN")]
    task_arn: String,
    family: String,
    revision: String,
    desired_status: String,
    known_status: &'static str,
    containers: Vec<ContainerDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<Limits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    execution_stopped_at: Option<String>,
    launch_type: &'static str,
}

/// An epoch-seconds time of a record as ECS writes times.
fn time(epoch: Option<f64>) -> Option<String> {
    let d = Duration::try_from_secs_f64(epoch?).ok()?;
    Some(rfc3339(UNIX_EPOCH + d))
}

/// The task's network as each of its containers' documents shows it.
fn networks(rec: &TaskRecord, name_servers: &[String]) -> Vec<NetworkDoc> {
    let mode = rec.task_definition.network_mode();
    let bare = NetworkDoc {
        network_mode: mode.as_str(),
        ipv4_addresses: Vec::new(),
        attachment_index: None,
        ipv4_subnet_cidr_block: None,
        domain_name_servers: Vec::new(),
        private_dns_name: None,
        subnet_gateway_ipv4_address: None,
    };
    let Some(n) = rec.network.as_ref() else {
        return vec![bare];
    };
    vec![NetworkDoc {
        ipv4_addresses: vec![n.address.to_string()],
        attachment_index: Some(0),
        ipv4_subnet_cidr_block: Some(n.subnet.trunc().to_string()),
        domain_name_servers: name_servers.to_vec(),
        private_dns_name: Some(tasknet::private_dns_name(n.address)),
        // ECS writes the gateway with the subnet's prefix.
        subnet_gateway_ipv4_address: Some(format!("{}/{}", n.gateway, n.subnet.prefix_len())),
        ..bare
    }]
}

fn definition<'a>(rec: &'a TaskRecord, name: &str) -> Option<&'a ContainerDefinition> {
    rec.task_definition
        .container_definitions
        .iter()
        .find(|d| d.name == name)
}

fn container_doc(rec: &TaskRecord, c: &ContainerRecord, networks: &[NetworkDoc]) -> ContainerDoc {
    let def = definition(rec, &c.name);
    let n = names(rec);
    // The definition's labels, then the agent's own over them.
    let mut labels = def.map(|d| d.docker_labels.clone()).unwrap_or_default();
    for (k, v) in [
        ("com.amazonaws.ecs.cluster", n.cluster.clone()),
        ("com.amazonaws.ecs.container-name", c.name.clone()),
        ("com.amazonaws.ecs.task-arn", n.task_arn.clone()),
        (
            "com.amazonaws.ecs.task-definition-family",
            rec.task_definition.family.clone(),
        ),
        (
            "com.amazonaws.ecs.task-definition-version",
            n.revision.clone(),
        ),
    ] {
        labels.insert(k.to_owned(), v);
    }
    ContainerDoc {
        docker_id: c.runtime_id.clone(),
        name: c.name.clone(),
        docker_name: c.runtime_id.clone(),
        image: c.image.clone(),
        image_id: c.image_digest.clone(),
        ports: c
            .network_bindings
            .iter()
            .map(|b| PortDoc {
                container_port: b.container_port,
                protocol: b.protocol.to_string(),
                host_port: b.host_port,
                host_ip: b.bind_ip.clone(),
            })
            .collect(),
        labels,
        desired_status: rec.desired_status.clone(),
        known_status: c.last_status,
        exit_code: c.exit_code,
        limits: Limits {
            // As the agent: both always there, 0 when the definition sets none.
            cpu: Some(f64::from(def.and_then(|d| d.cpu).unwrap_or(0))),
            memory: Some(def.and_then(|d| d.memory).unwrap_or(0)),
        },
        // The container's record is made with its task.
        created_at: time(Some(rec.created_at)),
        started_at: time(c.started_at),
        finished_at: time(c.finished_at),
        kind: "NORMAL",
        health: def
            .and_then(|d| d.health_check.as_ref())
            .map(|_| HealthDoc {
                status: c.health_status,
            }),
        log_driver: "json-file",
        log_options: def
            .and_then(|d| d.log_configuration.as_ref())
            .map(|l| l.options.clone())
            .unwrap_or_default(),
        container_arn: format!(
            "{}:container/{}/{}/{}",
            n.arn_prefix, n.cluster, rec.task_id, c.name
        ),
        networks: networks.to_vec(),
        restart_count: def
            .and_then(|d| d.restart_policy.as_ref())
            .filter(|p| p.enabled)
            .map(|_| c.restart_count),
    }
}

fn task_doc(rec: &TaskRecord, name_servers: &[String]) -> TaskDoc {
    let networks = networks(rec, name_servers);
    let res = rec.task_definition.resources();
    let n = names(rec);
    TaskDoc {
        cluster: n.cluster,
        task_arn: n.task_arn,
        family: rec.task_definition.family.clone(),
        revision: n.revision,
        desired_status: rec.desired_status.clone(),
        known_status: rec.status.name(),
        containers: rec
            .containers
            .iter()
            .map(|c| container_doc(rec, c, &networks))
            .collect(),
        limits: (res.cpu.is_some() || res.memory.is_some()).then(|| Limits {
            cpu: res.cpu.map(|u| f64::from(u) / 1024.0),
            memory: res.memory,
        }),
        execution_stopped_at: time(rec.stopped_at),
        launch_type: "EXTERNAL",
    }
}

// Docker's stats (the Engine API's `ContainerStats`), as the agent returns them.

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
struct CpuUsageDoc {
    total_usage: u64,
    usage_in_kernelmode: u64,
    usage_in_usermode: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
struct ThrottlingDoc {
    periods: u64,
    throttled_periods: u64,
    throttled_time: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
struct CpuStatsDoc {
    cpu_usage: CpuUsageDoc,
    system_cpu_usage: u64,
    online_cpus: u32,
    throttling_data: ThrottlingDoc,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
struct MemoryStatsDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_usage: Option<u64>,
    /// What the docker CLI subtracts from usage (`inactive_file`, on v1 and v2 alike).
    stats: BTreeMap<&'static str, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
struct PidsStatsDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    current: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u64>,
}

/// Docker's empty objects for what Skiff does not read (block I/O, storage).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
struct Empty {}

#[derive(Clone, Debug, PartialEq, Serialize)]
struct DockerStats {
    read: String,
    preread: String,
    pids_stats: PidsStatsDoc,
    blkio_stats: Empty,
    num_procs: u32,
    storage_stats: Empty,
    cpu_stats: CpuStatsDoc,
    precpu_stats: CpuStatsDoc,
    memory_stats: MemoryStatsDoc,
    name: String,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    networks: Option<BTreeMap<String, InterfaceStats>>,
}

fn cpu_stats_doc(cg: &CgroupStats, system: SystemCpu) -> CpuStatsDoc {
    let n = |v: Option<u64>| v.unwrap_or(0);
    CpuStatsDoc {
        cpu_usage: CpuUsageDoc {
            total_usage: n(cg.cpu.usage_ns),
            usage_in_kernelmode: n(cg.cpu.system_ns),
            usage_in_usermode: n(cg.cpu.user_ns),
        },
        system_cpu_usage: system.usage_ns,
        online_cpus: system.online_cpus,
        throttling_data: ThrottlingDoc {
            periods: n(cg.cpu.periods),
            throttled_periods: n(cg.cpu.throttled_periods),
            throttled_time: n(cg.cpu.throttled_ns),
        },
    }
}

/// What one read of a running container gives.
struct Current<'a> {
    read: SystemTime,
    cgroup: &'a CgroupStats,
    /// The task cgroup's limit: the container's when it has none of its own.
    task_memory_limit: Option<u64>,
    system: SystemCpu,
    /// The task namespace's interfaces, when it has one.
    interfaces: Option<&'a [(String, InterfaceStats)]>,
}

fn stats_doc(c: &ContainerRecord, cur: &Current<'_>, previous: Option<CpuSample>) -> DockerStats {
    let cg = cur.cgroup;
    let (preread, precpu) = match previous {
        Some(p) => (rfc3339(p.read), p.cpu),
        // Docker's "no previous read".
        None => (rfc3339(UNIX_EPOCH), CpuStatsDoc::default()),
    };
    DockerStats {
        read: rfc3339(cur.read),
        preread,
        pids_stats: PidsStatsDoc {
            current: cg.pids.current,
            limit: cg.pids.limit,
        },
        blkio_stats: Empty {},
        num_procs: 0,
        storage_stats: Empty {},
        cpu_stats: cpu_stats_doc(cg, cur.system),
        precpu_stats: precpu,
        memory_stats: MemoryStatsDoc {
            usage: cg.memory.usage,
            max_usage: cg.memory.max_usage,
            stats: cg
                .memory
                .inactive_file
                .map(|v| ("inactive_file", v))
                .into_iter()
                .collect(),
            limit: cg.memory.limit.or(cur.task_memory_limit),
        },
        name: format!("/{}", c.runtime_id),
        id: c.runtime_id.clone(),
        networks: cur.interfaces.map(|ifs| ifs.iter().cloned().collect()),
    }
}

#[cfg(test)]
#[path = "metadata_tests.rs"]
mod tests;
