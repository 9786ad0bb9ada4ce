//! Container instances (the nodes of a cluster): their record, and ListContainerInstances,
//! DescribeContainerInstances, DeregisterContainerInstance, UpdateContainerInstancesState, plus
//! attributes (PutAttributes, ListAttributes, DeleteAttributes). Nodes are recorded by
//! registration ([`Api::register_instance`]), with their resources and attributes
//! (`ecs.cpu-architecture`, `ecs.os-type`, custom ones).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::clusters::cluster_name;
use super::placement::{Candidate, Expr};
use super::tasks::PENDING_STATUSES;
use super::{Api, Failure, now, page};
use crate::error::ApiError;

/// A node's attribute (ECS `Attribute`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Attribute {
    /// The name (`ecs.cpu-architecture`, or custom).
    pub name: String,
    /// The value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `container-instance` (the only target type here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_type: Option<String>,
    /// The instance's ARN or id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
}

/// What a node reports when it registers.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// CPU units (1024 per core).
    pub cpu: i64,
    /// Memory in MiB available to tasks.
    pub memory: i64,
    /// Host ports in use by the node itself.
    pub reserved_ports: Vec<u16>,
    /// Attributes (`ecs.cpu-architecture` and `ecs.os-type` among them).
    pub attributes: Vec<Attribute>,
    /// The agent's version.
    pub agent_version: String,
    /// The node's hostname (`ec2InstanceId` on ECS Anywhere is `mi-...`; ours is `sk-<id>`).
    pub hostname: String,
}

/// The instance's columns, then its running and pending tasks' counts and what its tasks
/// reserve (cpu, memory, host ports as a JSON array), their groups (a JSON array), and its tags.
pub(super) type Row = (
    String,
    String,
    String,
    i64,
    f64,
    String,
    String,
    String,
    u32,
    u32,
    i64,
    i64,
    String,
    String,
    String,
);
const COLUMNS: &str =
    "id, cluster, status, agent_connected, registered_at, resources, attributes, version_info";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ListContainerInstances {
    cluster: Option<String>,
    filter: Option<String>,
    status: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DescribeContainerInstances {
    cluster: Option<String>,
    container_instances: Vec<String>,
    #[serde(default)]
    include: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DeregisterContainerInstance {
    cluster: Option<String>,
    container_instance: String,
    #[serde(default)]
    force: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct UpdateContainerInstancesState {
    cluster: Option<String>,
    container_instances: Vec<String>,
    status: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct PutAttributes {
    cluster: Option<String>,
    attributes: Vec<Attribute>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ListAttributes {
    cluster: Option<String>,
    target_type: String,
    attribute_name: Option<String>,
    attribute_value: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

/// The `ec2InstanceId` ECS Anywhere users see (`mi-...` there, `sk-...` here) for an instance id.
pub(super) fn ec2_instance_id(id: &str) -> String {
    format!("sk-{}", &id[..17.min(id.len())])
}

/// The instances of `cluster` (INACTIVE ones too) with what their tasks reserve, read on
/// `conn` (placement's transaction, or the pool's). The sums are made here rather than in SQL,
/// which keeps the query the same on SQLite and PostgreSQL (no JSON functions).
pub(super) async fn instance_rows_on(
    conn: &mut sqlx::AnyConnection,
    cluster: &str,
) -> Result<Vec<Row>, ApiError> {
    type Instance = (
        String,
        String,
        String,
        i64,
        f64,
        String,
        String,
        String,
        String,
    );
    let instances: Vec<Instance> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, tags FROM container_instances WHERE cluster = $1 ORDER BY registered_at, id"
    )))
    .bind(cluster)
    .fetch_all(&mut *conn)
    .await?;
    let tasks: Vec<(String, String, i64, i64, String, String)> = sqlx::query_as(
        "SELECT container_instance, last_status, cpu, memory, host_ports, task_group FROM tasks
         WHERE cluster = $1 AND last_status != 'STOPPED'",
    )
    .bind(cluster)
    .fetch_all(&mut *conn)
    .await?;
    /// What one instance's tasks hold.
    #[derive(Default)]
    struct Used<'a> {
        running: u32,
        pending: u32,
        cpu: i64,
        memory: i64,
        ports: Vec<u16>,
        groups: Vec<&'a str>,
    }
    let mut used: std::collections::HashMap<&str, Used<'_>> = std::collections::HashMap::new();
    for (instance, last, cpu, memory, ports, group) in &tasks {
        let u = used.entry(instance.as_str()).or_default();
        if last == "RUNNING" {
            u.running += 1;
        } else if PENDING_STATUSES.contains(&last.as_str()) {
            u.pending += 1;
        }
        u.cpu += cpu;
        u.memory += memory;
        u.ports
            .extend(serde_json::from_str::<Vec<u16>>(ports).unwrap_or_default());
        u.groups.push(group);
    }
    Ok(instances
        .into_iter()
        .map(
            |(id, cluster, status, connected, registered, res, attrs, version, tags)| {
                let u = used.remove(id.as_str()).unwrap_or_default();
                (
                    id,
                    cluster,
                    status,
                    connected,
                    registered,
                    res,
                    attrs,
                    version,
                    u.running,
                    u.pending,
                    u.cpu,
                    u.memory,
                    serde_json::to_string(&u.ports).expect("ports serialize"),
                    serde_json::to_string(&u.groups).expect("groups serialize"),
                    tags,
                )
            },
        )
        .collect())
}

/// A registered resource from `resources` JSON (`integerValue` or `stringSetValue` inside).
fn resource<'a>(resources: &'a Value, name: &str) -> Option<&'a Value> {
    resources.as_array()?.iter().find(|r| r["name"] == name)
}

/// The instance as placement sees it: what it has left after its tasks' reservations.
pub(super) fn candidate(r: &Row) -> Candidate {
    let resources: Value = serde_json::from_str(&r.5).unwrap_or_default();
    let int = |n| {
        resource(&resources, n)
            .and_then(|x| x["integerValue"].as_i64())
            .unwrap_or(0)
    };
    let registered_ports = resource(&resources, "PORTS")
        .and_then(|x| x["stringSetValue"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str()?.parse().ok());
    let task_ports = serde_json::from_str::<Vec<u16>>(&r.12).unwrap_or_default();
    let attributes: Vec<Attribute> = serde_json::from_str(&r.6).unwrap_or_default();
    let version: Value = serde_json::from_str(&r.7).unwrap_or_default();
    Candidate {
        id: r.0.clone(),
        ec2_instance_id: ec2_instance_id(&r.0),
        status: r.2.clone(),
        agent_connected: r.3 != 0,
        agent_version: version["agentVersion"].as_str().unwrap_or("").to_owned(),
        attributes: attributes.into_iter().map(|a| (a.name, a.value)).collect(),
        cpu: int("CPU") - r.10,
        memory: int("MEMORY") - r.11,
        ports: registered_ports.chain(task_ports).collect(),
        groups: serde_json::from_str::<Vec<String>>(&r.13)
            .unwrap_or_default()
            .into_iter()
            .fold(BTreeMap::new(), |mut m, g| {
                *m.entry(g).or_default() += 1;
                m
            }),
    }
}

/// The instance id from an id or ARN (`...:container-instance/<cluster>/<id>`).
fn instance_id(s: &str) -> String {
    s.rsplit('/').next().unwrap_or(s).to_owned()
}

impl Api {
    pub(super) fn instance_arn(&self, cluster: &str, id: &str) -> String {
        self.arn(&format!("container-instance/{cluster}/{id}"))
    }

    /// The cluster a request names (`default` when none), which must exist.
    pub(super) async fn active_cluster(&self, c: Option<&str>) -> Result<String, ApiError> {
        let name = cluster_name(c.unwrap_or("default"))?;
        let found: Option<(String,)> =
            sqlx::query_as("SELECT name FROM clusters WHERE name = $1 AND status = 'ACTIVE'")
                .bind(&name)
                .fetch_optional(self.pool())
                .await?;
        found.map(|(n,)| n).ok_or(ApiError::ClusterNotFound)
    }

    /// Records a node of `cluster`; returns its id.
    pub async fn register_instance(
        &self,
        cluster: &str,
        node: &NodeInfo,
    ) -> Result<String, ApiError> {
        let cluster = self.active_cluster(Some(cluster)).await?;
        let id = super::random_id();
        let ports: Vec<String> = node.reserved_ports.iter().map(u16::to_string).collect();
        let resources = json!([
            {"name": "CPU", "type": "INTEGER", "integerValue": node.cpu},
            {"name": "MEMORY", "type": "INTEGER", "integerValue": node.memory},
            {"name": "PORTS", "type": "STRINGSET", "stringSetValue": ports},
            {"name": "PORTS_UDP", "type": "STRINGSET", "stringSetValue": []},
        ]);
        let version =
            json!({"agentVersion": node.agent_version, "agentHash": "", "dockerVersion": "skiff"});
        let mut attributes = node.attributes.clone();
        attributes.push(Attribute {
            name: "ecs.instance-hostname".into(),
            value: Some(node.hostname.clone()),
            target_type: None,
            target_id: None,
        });
        sqlx::query(
            // Connected: the node is talking to apid right now; it stays so while it syncs.
            "INSERT INTO container_instances (id, cluster, status, agent_connected, registered_at, resources, attributes, version_info, last_seen)
             VALUES ($1, $2, 'ACTIVE', 1, $3, $4, $5, $6, $3)",
        )
        .bind(&id)
        .bind(&cluster)
        .bind(now())
        .bind(resources.to_string())
        .bind(serde_json::to_string(&attributes).expect("attributes serialize"))
        .bind(version.to_string())
        .execute(self.pool())
        .await?;
        Ok(id)
    }

    fn instance(&self, r: &Row) -> Value {
        let (id, cluster, status, connected, registered_at, resources, attributes, version) =
            (&r.0, &r.1, &r.2, r.3, r.4, &r.5, &r.6, &r.7);
        let attrs: Vec<Attribute> = serde_json::from_str(attributes).unwrap_or_default();
        let resources: Value = serde_json::from_str(resources).unwrap_or_default();
        // What is left is what placement sees.
        let left = candidate(r);
        let mut remaining = resources.clone();
        for x in remaining.as_array_mut().into_iter().flatten() {
            match x["name"].as_str() {
                Some("CPU") => x["integerValue"] = left.cpu.into(),
                Some("MEMORY") => x["integerValue"] = left.memory.into(),
                Some("PORTS") => {
                    x["stringSetValue"] = left.ports.iter().map(u16::to_string).collect();
                }
                _ => {}
            }
        }
        json!({
            "containerInstanceArn": self.instance_arn(cluster, id),
            "ec2InstanceId": ec2_instance_id(id),
            "status": status,
            "agentConnected": connected != 0,
            "registeredAt": registered_at,
            "registeredResources": resources,
            "remainingResources": remaining,
            "runningTasksCount": r.8,
            "pendingTasksCount": r.9,
            "attributes": attrs,
            "versionInfo": serde_json::from_str::<Value>(version).unwrap_or_default(),
            "tags": serde_json::from_str::<Value>(&r.14).unwrap_or_default(),
        })
    }

    async fn instance_rows(&self, cluster: &str) -> Result<Vec<Row>, ApiError> {
        instance_rows_on(&mut *self.pool().acquire().await?, cluster).await
    }

    pub(super) async fn list_container_instances(
        &self,
        r: ListContainerInstances,
    ) -> Result<Value, ApiError> {
        let cluster = self.active_cluster(r.cluster.as_deref()).await?;
        // The same cluster query language as memberOf placement constraints.
        let filter = r.filter.as_deref().map(Expr::parse).transpose()?;
        let status = r.status.as_deref();
        let arns: Vec<String> = self
            .instance_rows(&cluster)
            .await?
            .iter()
            .filter(|row| match status {
                Some(s) => row.2 == s,
                None => row.2 != "INACTIVE",
            })
            .filter(|row| filter.as_ref().is_none_or(|e| e.eval(&candidate(row))))
            .map(|row| self.instance_arn(&cluster, &row.0))
            .collect();
        let (arns, next) = page(arns, r.next_token.as_deref(), r.max_results, 100)?;
        let mut v = json!({ "containerInstanceArns": arns });
        if let Some(n) = next {
            v["nextToken"] = n.into();
        }
        Ok(v)
    }

    pub(super) async fn describe_container_instances(
        &self,
        r: DescribeContainerInstances,
    ) -> Result<Value, ApiError> {
        let cluster = self.active_cluster(r.cluster.as_deref()).await?;
        if r.container_instances.is_empty() || r.container_instances.len() > 100 {
            return Err(ApiError::InvalidParameter(
                "containerInstances: 1 to 100 entries".into(),
            ));
        }
        let _ = r.include;
        let rows = self.instance_rows(&cluster).await?;
        let (mut found, mut failures) = (Vec::new(), Vec::new());
        for want in &r.container_instances {
            let id = instance_id(want);
            match rows.iter().find(|row| row.0 == id) {
                Some(row) => found.push(self.instance(row)),
                None => failures.push(Failure {
                    arn: self.instance_arn(&cluster, &id),
                    reason: "MISSING".into(),
                }),
            }
        }
        Ok(json!({ "containerInstances": found, "failures": failures }))
    }

    pub(super) async fn deregister_container_instance(
        &self,
        r: DeregisterContainerInstance,
    ) -> Result<Value, ApiError> {
        let cluster = self.active_cluster(r.cluster.as_deref()).await?;
        let _ = r.force;
        let id = instance_id(&r.container_instance);
        // The instance, its certificates and its tasks go together: the node can no longer
        // connect (its certificates are revoked), so its tasks are recorded stopped here; the
        // node keeps running them, as ECS's forced deregistration leaves them orphaned.
        let mut tx = self.store().begin_write().await?;
        let done = sqlx::query(
            "UPDATE container_instances SET status = 'INACTIVE', agent_connected = 0 WHERE id = $1 AND cluster = $2 AND status != 'INACTIVE'",
        )
        .bind(&id)
        .bind(&cluster)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::InvalidParameter(format!(
                "Container instance {id} not found in cluster {cluster}."
            )));
        }
        let at = now();
        sqlx::query(
            "UPDATE node_certs SET revoked_at = $1 WHERE instance = $2 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE tasks SET desired_status = 'STOPPED', last_status = 'STOPPED',
               stopping_at = COALESCE(stopping_at, $1), stopped_at = $1,
               stopped_reason = COALESCE(stopped_reason, 'Container instance deregistered'),
               stop_code = COALESCE(stop_code, 'TaskFailedToStart'), version = version + 1
             WHERE container_instance = $2 AND last_status != 'STOPPED'",
        )
        .bind(at)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        super::bump_desired(&mut tx, [id.as_str()]).await?;
        tx.commit().await?;
        self.changed();
        let row = self
            .instance_rows(&cluster)
            .await?
            .into_iter()
            .find(|row| row.0 == id)
            .ok_or(ApiError::ClusterNotFound)?;
        Ok(json!({ "containerInstance": self.instance(&row) }))
    }

    pub(super) async fn update_container_instances_state(
        &self,
        r: UpdateContainerInstancesState,
    ) -> Result<Value, ApiError> {
        let cluster = self.active_cluster(r.cluster.as_deref()).await?;
        if !["ACTIVE", "DRAINING"].contains(&r.status.as_str()) {
            return Err(ApiError::InvalidParameter(format!(
                "status {} is not valid: ACTIVE or DRAINING",
                r.status
            )));
        }
        let (mut found, mut failures) = (Vec::new(), Vec::new());
        for want in &r.container_instances {
            let id = instance_id(want);
            let done = sqlx::query(
                "UPDATE container_instances SET status = $1 WHERE id = $2 AND cluster = $3 AND status != 'INACTIVE'",
            )
            .bind(&r.status)
            .bind(&id)
            .bind(&cluster)
            .execute(self.pool())
            .await?;
            let mut conn = self.pool().acquire().await?;
            super::bump_desired(&mut conn, [id.as_str()]).await?;
            self.changed();
            if done.rows_affected() == 0 {
                failures.push(Failure {
                    arn: self.instance_arn(&cluster, &id),
                    reason: "MISSING".into(),
                });
            } else if let Some(row) = self
                .instance_rows(&cluster)
                .await?
                .iter()
                .find(|row| row.0 == id)
            {
                found.push(self.instance(row));
            }
        }
        Ok(json!({ "containerInstances": found, "failures": failures }))
    }

    pub(super) async fn put_attributes(&self, r: PutAttributes) -> Result<Value, ApiError> {
        self.change_attributes(r.cluster.as_deref(), &r.attributes, true)
            .await
    }

    pub(super) async fn delete_attributes(&self, r: PutAttributes) -> Result<Value, ApiError> {
        self.change_attributes(r.cluster.as_deref(), &r.attributes, false)
            .await
    }

    /// Puts (or deletes) attributes on their target instances, all or none.
    async fn change_attributes(
        &self,
        cluster: Option<&str>,
        attributes: &[Attribute],
        put: bool,
    ) -> Result<Value, ApiError> {
        let cluster = self.active_cluster(cluster).await?;
        if attributes.is_empty() || attributes.len() > 10 {
            return Err(ApiError::InvalidParameter(
                "attributes: 1 to 10 entries".into(),
            ));
        }
        let mut tx = self.pool().begin().await?;
        for a in attributes {
            if a.target_type
                .as_deref()
                .is_some_and(|t| t != "container-instance")
            {
                return Err(ApiError::InvalidParameter(
                    "targetType must be container-instance".into(),
                ));
            }
            if a.name.is_empty() || a.name.len() > 128 {
                return Err(ApiError::InvalidParameter(
                    "attribute names have 1 to 128 characters".into(),
                ));
            }
            let id = a.target_id.as_deref().map(instance_id).ok_or_else(|| {
                ApiError::InvalidParameter(format!("attribute {}: targetId is required", a.name))
            })?;
            let row: Option<(String,)> = sqlx::query_as(
                "SELECT attributes FROM container_instances WHERE id = $1 AND cluster = $2 AND status != 'INACTIVE'",
            )
            .bind(&id)
            .bind(&cluster)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((attrs,)) = row else {
                return Err(ApiError::InvalidParameter(format!(
                    "target {id} not found in cluster {cluster}"
                )));
            };
            let mut attrs: Vec<Attribute> = serde_json::from_str(&attrs).unwrap_or_default();
            attrs.retain(|x| x.name != a.name);
            if put {
                attrs.push(Attribute {
                    name: a.name.clone(),
                    value: a.value.clone(),
                    target_type: None,
                    target_id: None,
                });
            }
            sqlx::query("UPDATE container_instances SET attributes = $1 WHERE id = $2")
                .bind(serde_json::to_string(&attrs).expect("attributes serialize"))
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(json!({ "attributes": attributes }))
    }

    pub(super) async fn list_attributes(&self, r: ListAttributes) -> Result<Value, ApiError> {
        let cluster = self.active_cluster(r.cluster.as_deref()).await?;
        if r.target_type != "container-instance" {
            return Err(ApiError::InvalidParameter(
                "targetType must be container-instance".into(),
            ));
        }
        let mut out = Vec::new();
        for row in self.instance_rows(&cluster).await? {
            let attrs: Vec<Attribute> = serde_json::from_str(&row.6).unwrap_or_default();
            for a in attrs {
                if r.attribute_name.as_ref().is_some_and(|n| *n != a.name)
                    || r.attribute_value
                        .as_ref()
                        .is_some_and(|v| Some(v) != a.value.as_ref())
                {
                    continue;
                }
                out.push(Attribute {
                    target_type: Some("container-instance".into()),
                    target_id: Some(self.instance_arn(&cluster, &row.0)),
                    ..a
                });
            }
        }
        let (attributes, next) = page(out, r.next_token.as_deref(), r.max_results, 100)?;
        let mut v = json!({ "attributes": attributes });
        if let Some(n) = next {
            v["nextToken"] = n.into();
        }
        Ok(v)
    }
}
