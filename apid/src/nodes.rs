//! The node side of the control plane: what a registered node is told to run, what it reports
//! back, and whether it is connected. The node channel ([`crate::identity::channel`]) is the
//! HTTP adapter; this module is the protocol's meaning.
//!
//! **Sync.** A node calls [`Api::sync`] in a loop over its one mTLS connection (HTTP/1.1 keep-
//! alive; the node dials out, so it works behind NAT). Each call carries the desired-state
//! version the node holds and the node's state-change events not yet acknowledged; it returns
//! the acknowledged sequence number and, once the desired state differs from the node's version
//! (or after `heartbeat` seconds, whichever comes first: a long poll, as Nomad clients' blocking
//! queries), the node's whole desired state with its new version.
//!
//! **Resume without loss or duplicates.** Events carry a sequence number the node assigns and
//! keeps until acknowledged; apid applies, in one transaction, only those above the instance's
//! `acked_seq` and records the highest. A node that reconnects after a cut (or after apid was
//! killed) resends what was not acknowledged; what was applied is skipped. The desired state is
//! sent whole, never as a diff, so a node that missed any number of versions converges from the
//! next answer alone.
//!
//! **Heartbeats.** Every sync is one, recording `last_seen`. The scheduler marks an instance
//! disconnected (`agentConnected` false) once `heartbeat_timeout` passes without one, and
//! replaces its service tasks once `disconnect_grace` passes (see [`crate::scheduler`]).

use serde_json::{Map, Value};
pub use skiff_runtime::protocol::{
    Ask, ContainerReport, DesiredTask, NodeReply, NodeRequest, SyncRequest, SyncResponse, TaskEvent,
};
use sqlx::Row;

use skiff_runtime::protocol::NODE_CAPABILITY_PREFIX;

use crate::ecs::{Api, Attribute, now};

/// Errors of the node side.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The instance is deregistered (its certificate is revoked, too).
    #[error("container instance {instance} is deregistered")]
    Deregistered {
        /// The instance id.
        instance: String,
    },
    /// The request is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error("the store, for instance {instance}")]
    Store {
        /// The instance id.
        instance: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
}

/// The order of a task's last statuses: a report never moves a task backwards.
const STATUS_ORDER: [&str; 8] = [
    "PROVISIONING",
    "PENDING",
    "ACTIVATING",
    "RUNNING",
    "DEACTIVATING",
    "STOPPING",
    "DEPROVISIONING",
    "STOPPED",
];

fn rank(status: &str) -> Option<usize> {
    STATUS_ORDER.iter().position(|s| *s == status)
}

/// Merges a report into the stored containers (ECS `Container` objects) by name.
fn merge_containers(stored: &str, reports: &[ContainerReport]) -> String {
    let mut containers: Vec<Value> = serde_json::from_str(stored).unwrap_or_default();
    for r in reports {
        let Some(c) = containers
            .iter_mut()
            .find(|c| c["name"] == r.name.as_str())
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if let Value::Object(fields) = serde_json::to_value(r).expect("a report serializes") {
            let fields: Map<String, Value> = fields;
            for (k, v) in fields {
                c.insert(k, v);
            }
        }
    }
    Value::from(containers).to_string()
}

impl Api {
    /// Whether `instance` may sync: registered and not deregistered.
    async fn instance_status(&self, instance: &str) -> Result<String, NodeError> {
        let store = |source| NodeError::Store {
            instance: instance.to_owned(),
            source,
        };
        let row: Option<(String,)> =
            sqlx::query_as("SELECT status FROM container_instances WHERE id = $1")
                .bind(instance)
                .fetch_optional(self.pool())
                .await
                .map_err(store)?;
        match row {
            Some((s,)) if s != "INACTIVE" => Ok(s),
            _ => Err(NodeError::Deregistered {
                instance: instance.to_owned(),
            }),
        }
    }

    /// Applies `events` above the instance's acknowledged sequence number and records the
    /// heartbeat, in one transaction; the new acknowledged number.
    async fn apply_events(&self, instance: &str, events: &[TaskEvent]) -> Result<i64, NodeError> {
        let store = |source| NodeError::Store {
            instance: instance.to_owned(),
            source,
        };
        let mut tx = self.store().begin_write().await.map_err(store)?;
        let (mut acked,): (i64,) =
            sqlx::query_as("SELECT acked_seq FROM container_instances WHERE id = $1")
                .bind(instance)
                .fetch_one(&mut *tx)
                .await
                .map_err(store)?;
        let mut changed = false;
        let from = acked;
        for ev in events.iter().filter(|e| e.seq > from) {
            acked = ev.seq;
            let Some(new_rank) = rank(&ev.last_status) else {
                tracing::warn!(instance, task = %ev.task_id, status = %ev.last_status, "unknown task status reported; ignored");
                continue;
            };
            let row = sqlx::query(
                "SELECT last_status, containers FROM tasks WHERE id = $1 AND container_instance = $2",
            )
            .bind(&ev.task_id)
            .bind(instance)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store)?;
            let row = match (row, &ev.replaces) {
                (Some(row), _) => row,
                (None, Some(old)) => {
                    match self
                        .adopt(&mut tx, instance, &ev.task_id, old)
                        .await
                        .map_err(store)?
                    {
                        Some(row) => row,
                        None => {
                            tracing::warn!(instance, task = %ev.task_id, replaces = %old, "a replacement for a task that is not a service task of this node; ignored");
                            continue;
                        }
                    }
                }
                (None, None) => {
                    tracing::warn!(instance, task = %ev.task_id, "a report for a task this node does not hold; ignored");
                    continue;
                }
            };
            let (last, containers): (String, String) = (row.get(0), row.get(1));
            if rank(&last).is_some_and(|r| r > new_rank) {
                continue;
            }
            let stopped = ev.last_status == "STOPPED";
            sqlx::query(
                "UPDATE tasks SET last_status = $1,
                   desired_status = CASE WHEN $2 = 1 THEN 'STOPPED' ELSE desired_status END,
                   health_status = COALESCE($3, health_status),
                   started_at = CASE WHEN $1 = 'RUNNING' THEN COALESCE(started_at, $4) ELSE started_at END,
                   stopped_at = CASE WHEN $2 = 1 THEN COALESCE(stopped_at, $4) ELSE stopped_at END,
                   stopping_at = CASE WHEN $2 = 1 THEN COALESCE(stopping_at, $4) ELSE stopping_at END,
                   stopped_reason = COALESCE(stopped_reason, $5),
                   stop_code = COALESCE(stop_code, $6),
                   pull_started_at = COALESCE($7, pull_started_at),
                   pull_stopped_at = COALESCE($8, pull_stopped_at),
                   attachments = COALESCE($9, attachments),
                   containers = $10,
                   version = version + 1
                 WHERE id = $11",
            )
            .bind(&ev.last_status)
            .bind(i64::from(stopped))
            .bind(&ev.health_status)
            .bind(ev.at)
            .bind(&ev.stopped_reason)
            .bind(&ev.stop_code)
            .bind(ev.pull_started_at)
            .bind(ev.pull_stopped_at)
            .bind(ev.attachments.as_ref().map(Value::to_string))
            .bind(merge_containers(&containers, &ev.containers))
            .bind(&ev.task_id)
            .execute(&mut *tx)
            .await
            .map_err(store)?;
            changed = true;
        }
        sqlx::query(
            "UPDATE container_instances SET acked_seq = $1, last_seen = $2, agent_connected = 1
             WHERE id = $3",
        )
        .bind(acked)
        .bind(now())
        .bind(instance)
        .execute(&mut *tx)
        .await
        .map_err(store)?;
        tx.commit().await.map_err(store)?;
        if changed {
            self.changed();
        }
        Ok(acked)
    }

    /// Records `task`, which the node started while offline to replace service task `old` of
    /// the same node, as a task of `old`'s service (same definition, deployment, group).
    /// It is to run when `old` stopped on its own (failed to start, essential container
    /// exited) and to stop when apid had asked `old` to stop (replaced elsewhere past the grace
    /// period, scaled in, stopped by a user): the node then stops it. Its row (`last_status`,
    /// `containers`) for the report to be applied to; None when `old` is not such a task.
    async fn adopt(
        &self,
        tx: &mut sqlx::AnyConnection,
        instance: &str,
        task: &str,
        old: &str,
    ) -> Result<Option<sqlx::any::AnyRow>, sqlx::Error> {
        let row: Option<(String, String, Option<String>, String)> = sqlx::query_as(
            "SELECT cluster, containers, stop_code, desired_status FROM tasks
             WHERE id = $1 AND container_instance = $2 AND started_by LIKE 'ecs-svc/%'",
        )
        .bind(old)
        .bind(instance)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((cluster, containers, stop_code, desired)) = row else {
            return Ok(None);
        };
        let on_its_own = desired == "RUNNING"
            || stop_code
                .as_deref()
                .is_none_or(|c| c == "TaskFailedToStart" || c == "EssentialContainerExited");
        let containers: Vec<Value> = serde_json::from_str::<Vec<Value>>(&containers)
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                let mut fresh = serde_json::json!({
                    "containerArn": self.arn(&format!("container/{cluster}/{task}/{}", crate::ecs::random_id())),
                });
                for k in ["name", "image", "cpu", "memory", "memoryReservation"] {
                    if let Some(v) = c.get(k) {
                        fresh[k] = v.clone();
                    }
                }
                fresh
            })
            .collect();
        let (desired, reason) = if on_its_own {
            ("RUNNING", None)
        } else {
            (
                "STOPPED",
                Some("Started by the node while offline; the service no longer needs it there"),
            )
        };
        sqlx::query(
            "INSERT INTO tasks (id, cluster, container_instance, family, revision, desired_status,
                last_status, cpu, memory, host_ports, started_by, task_group, created_at,
                stopped_reason, stop_code, containers, overrides, tags, deployment)
             SELECT $1, cluster, container_instance, family, revision, $2, 'PROVISIONING', cpu,
                memory, host_ports, started_by, task_group, $3, $4, $5, $6, overrides, tags,
                deployment
             FROM tasks WHERE id = $7",
        )
        .bind(task)
        .bind(desired)
        .bind(now())
        .bind(reason)
        .bind(reason.map(|_| "ServiceSchedulerInitiated"))
        .bind(Value::from(containers).to_string())
        .bind(old)
        .execute(&mut *tx)
        .await?;
        crate::ecs::bump_desired(tx, [instance]).await?;
        tracing::info!(
            instance,
            task,
            replaces = old,
            desired,
            "adopted a task the node started while offline"
        );
        sqlx::query("SELECT last_status, containers FROM tasks WHERE id = $1")
            .bind(task)
            .fetch_optional(&mut *tx)
            .await
    }

    /// The instance's desired-state version.
    async fn desired_version(&self, instance: &str) -> Result<i64, NodeError> {
        let (v,): (i64,) =
            sqlx::query_as("SELECT desired_version FROM container_instances WHERE id = $1")
                .bind(instance)
                .fetch_one(self.pool())
                .await
                .map_err(|source| NodeError::Store {
                    instance: instance.to_owned(),
                    source,
                })?;
        Ok(v)
    }

    /// The tasks `instance` should hold: every one not yet both desired and last STOPPED.
    async fn desired_tasks(&self, instance: &str) -> Result<Vec<DesiredTask>, NodeError> {
        let rows = sqlx::query(
            "SELECT t.id, t.cluster, t.desired_status, t.family, t.revision, d.body, t.overrides,
                    t.started_by, t.stopped_reason
             FROM tasks t LEFT JOIN task_definitions d ON d.family = t.family AND d.revision = t.revision
             WHERE t.container_instance = $1
               AND NOT (t.desired_status = 'STOPPED' AND t.last_status = 'STOPPED')
             ORDER BY t.created_at, t.id",
        )
        .bind(instance)
        .fetch_all(self.pool())
        .await
        .map_err(|source| NodeError::Store {
            instance: instance.to_owned(),
            source,
        })?;
        Ok(rows
            .iter()
            .map(|r| {
                let (id, cluster): (String, String) = (r.get(0), r.get(1));
                let (family, revision): (String, i64) = (r.get(3), r.get(4));
                let body: Option<String> = r.get(5);
                let overrides: String = r.get(6);
                let desired: String = r.get(2);
                DesiredTask {
                    task_arn: self.task_arn(&cluster, &id),
                    task_id: id,
                    stopped_reason: (desired == "STOPPED").then(|| r.get(8)).flatten(),
                    desired_status: desired,
                    task_definition_arn: self.task_definition_arn(&family, revision),
                    task_definition: body
                        .and_then(|b| serde_json::from_str(&b).ok())
                        .unwrap_or(Value::Null),
                    overrides: serde_json::from_str(&overrides).unwrap_or_default(),
                    started_by: r.get(7),
                }
            })
            .collect())
    }

    /// Replaces the capabilities `instance` reported before with `caps` (see
    /// `SyncRequest::capabilities`); the operator's attributes stay. Written only when they
    /// changed, so that a node's restart does not disturb placement caches.
    async fn refresh_capabilities(&self, instance: &str, caps: &[String]) -> Result<(), NodeError> {
        if let Some(c) = caps.iter().find(|c| !c.starts_with(NODE_CAPABILITY_PREFIX)) {
            return Err(NodeError::Invalid(format!(
                "capabilities: {c} does not start with {NODE_CAPABILITY_PREFIX}"
            )));
        }
        let store = |source| NodeError::Store {
            instance: instance.to_owned(),
            source,
        };
        // Read, then written only if unchanged meanwhile (an operator's PutAttributes, another
        // replica): no attribute is lost to a race, on either store, without a lock.
        loop {
            let row: Option<(String,)> =
                sqlx::query_as("SELECT attributes FROM container_instances WHERE id = $1")
                    .bind(instance)
                    .fetch_optional(self.pool())
                    .await
                    .map_err(store)?;
            let Some((text,)) = row else {
                return Ok(());
            };
            let before: Vec<Attribute> = serde_json::from_str(&text).map_err(|e| {
                NodeError::Invalid(format!("the stored attributes of {instance}: {e}"))
            })?;
            let mut after: Vec<Attribute> = before
                .iter()
                .filter(|a| !a.name.starts_with(NODE_CAPABILITY_PREFIX))
                .cloned()
                .collect();
            after.extend(caps.iter().map(|c| Attribute {
                name: c.clone(),
                value: None,
                target_type: None,
                target_id: None,
            }));
            let set = |v: &[Attribute]| -> std::collections::BTreeSet<(String, Option<String>)> {
                v.iter()
                    .map(|a| (a.name.clone(), a.value.clone()))
                    .collect()
            };
            if set(&before) == set(&after) {
                return Ok(());
            }
            let written = sqlx::query(
                "UPDATE container_instances SET attributes = $1 WHERE id = $2 AND attributes = $3",
            )
            .bind(serde_json::to_string(&after).expect("attributes serialize"))
            .bind(instance)
            .bind(&text)
            .execute(self.pool())
            .await
            .map_err(store)?;
            if written.rows_affected() == 1 {
                tracing::info!(instance, ?caps, "the node's capabilities changed");
                return Ok(());
            }
        }
    }

    /// One sync of `instance` (see the module documentation).
    pub async fn sync(&self, instance: &str, r: SyncRequest) -> Result<SyncResponse, NodeError> {
        if r.events.windows(2).any(|w| w[0].seq >= w[1].seq) {
            return Err(NodeError::Invalid(
                "events: sequence numbers must increase".into(),
            ));
        }
        self.instance_status(instance).await?;
        if let Some(caps) = &r.capabilities {
            self.refresh_capabilities(instance, caps).await?;
        }
        let mut wake = self.subscribe();
        let acked_seq = self.apply_events(instance, &r.events).await?;
        let heartbeat = self.config().heartbeat_seconds;
        let deadline = tokio::time::Instant::now()
            + std::time::Duration::from_secs(r.wait_seconds.min(heartbeat));
        // Changes made by this apid wake the wait at once; other replicas' are seen by
        // re-reading the version every second.
        let mut version = self.desired_version(instance).await?;
        let mut requests = self.take_requests(instance).await?;
        while version == r.version && requests.is_empty() && tokio::time::Instant::now() < deadline
        {
            let tick = std::time::Duration::from_secs(1);
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + tick),
                wake.changed(),
            )
            .await;
            version = self.desired_version(instance).await?;
            requests = self.take_requests(instance).await?;
        }
        let instance_status = self.instance_status(instance).await?;
        Ok(SyncResponse {
            version,
            acked_seq,
            instance_status,
            heartbeat_seconds: heartbeat,
            tasks: self.desired_tasks(instance).await?,
            requests,
        })
    }

    /// The requests for `instance` not delivered yet, marked delivered (a request whose answer
    /// is lost is not delivered again: the operator's call times out and can be retried).
    async fn take_requests(&self, instance: &str) -> Result<Vec<NodeRequest>, NodeError> {
        let store = |source| NodeError::Store {
            instance: instance.to_owned(),
            source,
        };
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, body FROM node_requests WHERE instance = $1 AND sent_at IS NULL ORDER BY created_at",
        )
        .bind(instance)
        .fetch_all(self.pool())
        .await
        .map_err(store)?;
        let mut out = Vec::new();
        for (id, body) in rows {
            let taken = sqlx::query(
                "UPDATE node_requests SET sent_at = $1 WHERE id = $2 AND sent_at IS NULL",
            )
            .bind(now())
            .bind(&id)
            .execute(self.pool())
            .await
            .map_err(store)?;
            if taken.rows_affected() == 1
                && let Ok(req) = serde_json::from_str(&body)
            {
                out.push(req);
            }
        }
        Ok(out)
    }

    /// Records `instance`'s answer to one of its requests.
    pub async fn reply(&self, instance: &str, reply: &NodeReply) -> Result<(), NodeError> {
        let done = sqlx::query(
            "UPDATE node_requests SET reply = $1 WHERE id = $2 AND instance = $3 AND reply IS NULL",
        )
        .bind(serde_json::to_string(reply).expect("replies serialize"))
        .bind(&reply.id)
        .bind(instance)
        .execute(self.pool())
        .await
        .map_err(|source| NodeError::Store {
            instance: instance.to_owned(),
            source,
        })?;
        if done.rows_affected() == 0 {
            return Err(NodeError::Invalid(format!(
                "no open request {} for this node",
                reply.id
            )));
        }
        Ok(())
    }

    /// Asks the node that runs task `task` (id or ARN) of `cluster` and waits for its answer:
    /// the relay behind `skiff control logs/stats/exec`.
    pub async fn ask_node(
        &self,
        cluster: &str,
        task: &str,
        ask: Ask,
        wait: std::time::Duration,
    ) -> Result<Value, crate::error::ApiError> {
        use crate::error::ApiError;
        let task_id = task.rsplit('/').next().unwrap_or(task);
        let row: Option<(Option<String>, i64)> = sqlx::query_as(
            "SELECT t.container_instance, COALESCE(i.agent_connected, 0)
             FROM tasks t LEFT JOIN container_instances i ON i.id = t.container_instance
             WHERE t.id = $1 AND t.cluster = $2",
        )
        .bind(task_id)
        .bind(cluster)
        .fetch_optional(self.pool())
        .await?;
        let Some((Some(instance), connected)) = row else {
            return Err(ApiError::InvalidParameter(format!(
                "task {task} is not in cluster {cluster}, or was never placed"
            )));
        };
        if connected == 0 {
            return Err(ApiError::Client(format!(
                "container instance {instance} of task {task} is not connected: its node cannot be asked now"
            )));
        }
        let id = crate::ecs::random_id();
        let req = NodeRequest {
            id: id.clone(),
            task_id: task_id.to_owned(),
            ask,
        };
        sqlx::query(
            "INSERT INTO node_requests (id, instance, body, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(&instance)
        .bind(serde_json::to_string(&req).expect("requests serialize"))
        .bind(now())
        .execute(self.pool())
        .await?;
        self.changed();
        let deadline = tokio::time::Instant::now() + wait;
        let reply = loop {
            let r: Option<(Option<String>,)> =
                sqlx::query_as("SELECT reply FROM node_requests WHERE id = $1")
                    .bind(&id)
                    .fetch_optional(self.pool())
                    .await?;
            if let Some((Some(reply),)) = r {
                break Some(reply);
            }
            if tokio::time::Instant::now() >= deadline {
                break None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        sqlx::query("DELETE FROM node_requests WHERE id = $1")
            .bind(&id)
            .execute(self.pool())
            .await?;
        let Some(reply) = reply else {
            return Err(ApiError::Client(format!(
                "container instance {instance} did not answer within {wait:?}"
            )));
        };
        let reply: NodeReply = serde_json::from_str(&reply)
            .map_err(|e| ApiError::Server(format!("a stored reply: {e}")))?;
        match (reply.result, reply.error) {
            (Some(v), _) => Ok(v),
            (None, e) => Err(ApiError::InvalidParameter(format!(
                "container instance {instance}: {}",
                e.unwrap_or_default()
            ))),
        }
    }
}

#[cfg(test)]
#[path = "nodes_tests.rs"]
mod tests;
