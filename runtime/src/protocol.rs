//! The node channel's wire types: what skiffd sends apid and what apid answers, over the mTLS
//! connection the node opens (`POST /register`, `POST /v1/sync`, `POST /v1/renew`). apid (the
//! server) and skiffd's agent (the client, [`crate::agent`]) both use these, so the two sides
//! cannot drift; apid's `nodes` module documents the protocol's meaning (versions, sequence
//! numbers, the long poll).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a node sends to `POST /register`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    /// The activation's id.
    pub activation_id: String,
    /// The activation's code.
    pub activation_code: String,
    /// The node's certificate request, PEM.
    pub csr: String,
    /// CPU units offered (1024 per core).
    pub cpu: i64,
    /// Memory offered, MiB.
    pub memory: i64,
    /// Host ports the node itself uses.
    #[serde(default)]
    pub reserved_ports: Vec<u16>,
    /// Attributes (`ecs.cpu-architecture`, `ecs.os-type`, custom).
    #[serde(default)]
    pub attributes: Vec<NodeAttribute>,
    /// The agent's version.
    pub agent_version: String,
    /// The node's hostname.
    pub hostname: String,
    /// The cluster the operator expects the activation to be for (name or ARN); apid
    /// refuses, recording nothing, when it is for another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// An attribute a node offers at registration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeAttribute {
    /// The name (`ecs.cpu-architecture`, or custom).
    pub name: String,
    /// The value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// What registration returns.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Registered {
    /// The container instance's ARN.
    pub container_instance_arn: String,
    /// Its id (the certificate's CN).
    pub container_instance_id: String,
    /// The node's certificate, PEM.
    pub certificate_pem: String,
    /// The cluster CA, PEM: what the node pins from now on.
    pub ca_pem: String,
}

/// What `POST /v1/renew` takes.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// A CSR for the node's key, PEM.
    pub csr: String,
}

/// What a renewal returns.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Renewed {
    /// The new certificate, PEM.
    pub certificate_pem: String,
    /// When it expires, epoch seconds: the node renews when a third of its life is left.
    pub not_after: f64,
}

/// What a node sends to `POST /v1/sync`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncRequest {
    /// The desired-state version the node holds (0 at first).
    pub version: i64,
    /// State changes not yet acknowledged, in the node's order.
    #[serde(default)]
    pub events: Vec<TaskEvent>,
    /// How long apid may hold the answer when nothing changed, in seconds (capped by
    /// apid's `heartbeat`); 0 answers at once.
    #[serde(default)]
    pub wait_seconds: u64,
    /// The node's own capabilities as they are now (attribute names starting with
    /// [`NODE_CAPABILITY_PREFIX`]), sent on its first sync after each start: apid replaces
    /// the ones it had recorded, since a node's VM support changes with its host and
    /// configuration after registration. None: unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
}

/// The attributes a node reports about itself at each start, as the ECS agent reports its
/// `ecs.capability.*` ones; the rest of its attributes are the operator's.
pub const NODE_CAPABILITY_PREFIX: &str = "ecs.capability.skiff.";

/// One state change of a task, as the node saw it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskEvent {
    /// The node's sequence number for this event (increasing, never reused).
    pub seq: i64,
    /// The task's id.
    pub task_id: String,
    /// Its last status (ECS's: PENDING, RUNNING, STOPPED, ...).
    pub last_status: String,
    /// `HEALTHY`, `UNHEALTHY` or `UNKNOWN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_status: Option<String>,
    /// Why it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
    /// ECS's stop code (`EssentialContainerExited`, `TaskFailedToStart`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_code: Option<String>,
    /// When the node saw the change (epoch seconds).
    pub at: f64,
    /// When the image pull started and ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_started_at: Option<f64>,
    /// See `pull_started_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_stopped_at: Option<f64>,
    /// The task's ENI-style attachments (awsvpc), as ECS's `attachments`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Value>,
    /// The containers' states.
    #[serde(default)]
    pub containers: Vec<ContainerReport>,
    /// The service task this one replaces: started by the node itself while apid was
    /// unreachable, to keep the service's count there; apid adopts it (see its `nodes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// A container's state in a [`TaskEvent`], in ECS `Container` field names.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerReport {
    /// The container's name in the task definition.
    pub name: String,
    /// Its last status.
    pub last_status: String,
    /// Its exit code, once it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Why it stopped (`OutOfMemoryError: ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_status: Option<String>,
    /// Its id on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_id: Option<String>,
    /// Host port bindings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_bindings: Option<Value>,
    /// Addresses (awsvpc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interfaces: Option<Value>,
}

/// What `POST /v1/sync` answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncResponse {
    /// The version of `tasks`.
    pub version: i64,
    /// The highest event sequence number applied: the node forgets events up to it.
    pub acked_seq: i64,
    /// `ACTIVE` or `DRAINING`.
    pub instance_status: String,
    /// How often the node must sync at least, in seconds.
    pub heartbeat_seconds: u64,
    /// Every task the node should hold: those to run and those to stop.
    pub tasks: Vec<DesiredTask>,
    /// Operators' requests about the node's tasks (logs, stats, exec), answered on
    /// `POST /v1/replies`: the node is behind NAT, so they ride its own connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<NodeRequest>,
}

/// An operator's request about a task, relayed by apid to the node that runs it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeRequest {
    /// apid's id for it (the reply names it).
    pub id: String,
    /// The task.
    pub task_id: String,
    /// What is asked.
    pub ask: Ask,
}

/// What an operator asks of a task.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum Ask {
    /// The container's log lines (json-file records): the last `tail`, or all.
    #[serde(rename_all = "camelCase")]
    Logs {
        /// The container (the first one when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<String>,
        /// How many of the last lines.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tail: Option<usize>,
    },
    /// The task's resource use (cpu, memory, pids of the task and its containers).
    Stats,
    /// Run `command` in the container, without a terminal; its output and exit code.
    #[serde(rename_all = "camelCase")]
    Exec {
        /// The container.
        container: String,
        /// The command and its arguments.
        command: Vec<String>,
        /// The longest it may run, in seconds.
        timeout_seconds: u64,
    },
}

/// The node's answer to a [`NodeRequest`] (`POST /v1/replies`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeReply {
    /// The request's id.
    pub id: String,
    /// The answer when it worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A task as the node is told it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DesiredTask {
    /// The task's id.
    pub task_id: String,
    /// Its ARN.
    pub task_arn: String,
    /// `RUNNING` or `STOPPED`.
    pub desired_status: String,
    /// Its task definition's ARN.
    pub task_definition_arn: String,
    /// The task definition as registered.
    pub task_definition: Value,
    /// RunTask's overrides.
    pub overrides: Value,
    /// Who started it (`ecs-svc/<deployment>` for a service's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// Why it is to stop, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
}
