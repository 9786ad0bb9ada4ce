//! Tasks: RunTask, StartTask, StopTask, DescribeTasks, ListTasks. RunTask places tasks with
//! [`super::placement`] on a snapshot of the cluster read, and the tasks recorded, in one
//! `BEGIN IMMEDIATE` transaction: SQLite then holds its write lock from the first read, so two
//! RunTasks never both see the same free memory and over-commit a node.
//!
//! A task is recorded PROVISIONING with desired status RUNNING; the node moves it on (PENDING,
//! RUNNING, STOPPED) once the node channel exists. StopTask only sets the desired status to
//! STOPPED, with the reason and `stopCode` UserInitiated, for the node to act on; a task keeps its
//! reservation until its last status is STOPPED.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use skiff_runtime::taskdef::{CpuArchitecture, NetworkMode, TaskDefinition};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::container_instances::{candidate, instance_rows_on};
use super::placement::{self, Candidate, Constraint, Needs, PlacementError, Strategy};
use super::{Api, Failure, Tag, now, page};
use crate::error::ApiError;

/// The last statuses of a task on its way to RUNNING: ECS's pending tasks.
pub(super) const PENDING_STATUSES: [&str; 3] = ["PROVISIONING", "PENDING", "ACTIVATING"];
/// [`PENDING_STATUSES`] as an SQL list.
pub(super) const PENDING: &str = "('PROVISIONING', 'PENDING', 'ACTIVATING')";

impl From<PlacementError> for ApiError {
    fn from(e: PlacementError) -> Self {
        Self::InvalidParameter(e.to_string())
    }
}

/// ECS `PlacementStrategy`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StrategyIn {
    #[serde(rename = "type")]
    pub(super) kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) field: Option<String>,
}

/// ECS `PlacementConstraint`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConstraintIn {
    #[serde(rename = "type")]
    pub(super) kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) expression: Option<String>,
}

/// ECS `TaskOverride`, limited to what the node applies: containers' command and environment.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Overrides {
    #[serde(default)]
    container_overrides: Vec<ContainerOverride>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ContainerOverride {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    environment: Option<Vec<skiff_runtime::taskdef::KeyValue>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RunTask {
    cluster: Option<String>,
    task_definition: String,
    count: Option<i64>,
    started_by: Option<String>,
    group: Option<String>,
    launch_type: Option<String>,
    #[serde(default)]
    placement_strategy: Vec<StrategyIn>,
    #[serde(default)]
    placement_constraints: Vec<ConstraintIn>,
    overrides: Option<Overrides>,
    #[serde(default)]
    tags: Vec<Tag>,
    /// ECS's idempotency token (newer SDKs fill it in): a RunTask repeated with the same token
    /// in the same cluster returns the first call's answer instead of starting more tasks.
    client_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct StartTask {
    cluster: Option<String>,
    task_definition: String,
    container_instances: Vec<String>,
    started_by: Option<String>,
    group: Option<String>,
    overrides: Option<Overrides>,
    #[serde(default)]
    tags: Vec<Tag>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct StopTask {
    cluster: Option<String>,
    task: String,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DescribeTasks {
    cluster: Option<String>,
    tasks: Vec<String>,
    #[serde(default)]
    include: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ListTasks {
    cluster: Option<String>,
    container_instance: Option<String>,
    family: Option<String>,
    started_by: Option<String>,
    service_name: Option<String>,
    desired_status: Option<String>,
    launch_type: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

/// What RunTask, StartTask and the service scheduler share once the request is checked.
pub(super) struct Launch {
    cluster: String,
    family: String,
    revision: i64,
    def: TaskDefinition,
    needs: Needs,
    started_by: Option<String>,
    overrides: Overrides,
    tags: Vec<Tag>,
    /// The service deployment that starts them, and the scheduler lease holder that must
    /// still hold the lease when they are recorded (a fence: a scheduler that lost its lease
    /// mid-pass places nothing).
    deployment: Option<(String, String)>,
}

impl Launch {
    /// The launch as `deployment`'s, by the scheduler holding the lease as `holder`.
    pub(super) fn for_deployment(mut self, deployment: String, holder: String) -> Self {
        self.deployment = Some((deployment, holder));
        self
    }
}

/// Where a launch's tasks go.
pub(super) enum Target {
    /// `count` tasks placed by strategies and constraints.
    Placed {
        count: usize,
        strategies: Vec<Strategy>,
        constraints: Vec<Constraint>,
    },
    /// One task on each of these instance ids (StartTask).
    On(Vec<String>),
}

/// A task's row.
struct TaskRow {
    id: String,
    cluster: String,
    container_instance: String,
    family: String,
    revision: i64,
    desired_status: String,
    last_status: String,
    cpu: i64,
    memory: i64,
    started_by: Option<String>,
    group: String,
    created_at: f64,
    stopping_at: Option<f64>,
    stopped_reason: Option<String>,
    stop_code: Option<String>,
    version: i64,
    containers: String,
    overrides: String,
    tags: String,
    health_status: String,
    started_at: Option<f64>,
    stopped_at: Option<f64>,
    pull_started_at: Option<f64>,
    pull_stopped_at: Option<f64>,
    attachments: String,
}

const TASK_COLUMNS: &str = "id, cluster, container_instance, family, revision, desired_status, last_status, cpu, memory, started_by, task_group, created_at, stopping_at, stopped_reason, stop_code, version, containers, overrides, tags, health_status, started_at, stopped_at, pull_started_at, pull_stopped_at, attachments";

impl TaskRow {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: r.try_get(0)?,
            cluster: r.try_get(1)?,
            container_instance: r.try_get(2)?,
            family: r.try_get(3)?,
            revision: r.try_get(4)?,
            desired_status: r.try_get(5)?,
            last_status: r.try_get(6)?,
            cpu: r.try_get(7)?,
            memory: r.try_get(8)?,
            started_by: r.try_get(9)?,
            group: r.try_get(10)?,
            created_at: r.try_get(11)?,
            stopping_at: r.try_get(12)?,
            stopped_reason: r.try_get(13)?,
            stop_code: r.try_get(14)?,
            version: r.try_get(15)?,
            containers: r.try_get(16)?,
            overrides: r.try_get(17)?,
            tags: r.try_get(18)?,
            health_status: r.try_get(19)?,
            started_at: r.try_get(20)?,
            stopped_at: r.try_get(21)?,
            pull_started_at: r.try_get(22)?,
            pull_stopped_at: r.try_get(23)?,
            attachments: r.try_get(24)?,
        })
    }
}

/// Sets the desired status of tasks `ids` to STOPPED, saying why, and bumps their instances'
/// desired state so their nodes stop them; tasks already desired STOPPED are left as they are.
/// How many changed.
pub(crate) async fn request_stop(
    conn: &mut sqlx::AnyConnection,
    ids: &[String],
    reason: &str,
    stop_code: &str,
) -> Result<usize, sqlx::Error> {
    let mut n = 0;
    for id in ids {
        let row: Option<(String,)> = sqlx::query_as(
            "UPDATE tasks SET desired_status = 'STOPPED', stopping_at = $1, stopped_reason = $2,
               stop_code = $3, version = version + 1
             WHERE id = $4 AND desired_status != 'STOPPED'
             RETURNING container_instance",
        )
        .bind(now())
        .bind(reason)
        .bind(stop_code)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((instance,)) = row {
            super::bump_desired(conn, [instance.as_str()]).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// The cluster's placement generation (see [`super::Api::keep_snapshot`]).
async fn generation(conn: &mut sqlx::AnyConnection, cluster: &str) -> Result<(i64,), sqlx::Error> {
    sqlx::query_as("SELECT generation FROM clusters WHERE name = $1")
        .bind(cluster)
        .fetch_one(conn)
        .await
}

/// The id from a task id or ARN (`...:task/<cluster>/<id>`).
fn task_id(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// What one task of `def` reserves: task-level cpu and memory, else the containers' sums
/// (`memoryReservation` where given, as ECS places by the soft limit), the fixed host ports
/// of bridge and host mode, and the CPU architecture as `ecs.cpu-architecture` spells it.
fn needs(def: &TaskDefinition, group: String) -> Needs {
    let task = def.resources();
    let containers = &def.container_definitions;
    let cpu = task
        .cpu
        .unwrap_or_else(|| containers.iter().filter_map(|c| c.cpu).sum());
    let memory = task.memory.unwrap_or_else(|| {
        containers
            .iter()
            .filter_map(|c| c.memory_reservation.or(c.memory))
            .sum()
    });
    let mode = def.network_mode();
    let ports = containers
        .iter()
        .flat_map(|c| &c.port_mappings)
        .filter_map(|m| match mode {
            NetworkMode::Bridge => m.host_port.filter(|&p| p != 0),
            NetworkMode::Host => Some(m.host_port.unwrap_or(m.container_port)),
            NetworkMode::None | NetworkMode::Awsvpc => None,
        })
        .collect();
    let arch = def
        .runtime_platform
        .as_ref()
        .and_then(|p| p.cpu_architecture)
        .map(|a| match a {
            CpuArchitecture::X86_64 => "x86_64".to_owned(),
            CpuArchitecture::Arm64 => "arm64".to_owned(),
        });
    Needs {
        cpu: cpu.into(),
        memory: memory.into(),
        ports,
        arch,
        requires: def
            .wants_vm()
            .then(|| skiff_runtime::vm::CAPABILITY_ATTRIBUTE.to_owned())
            .into_iter()
            .collect(),
        group,
    }
}

/// Refuses a launch type other than EXTERNAL (EC2 is accepted as its synonym: nodes are
/// container instances either way).
pub(super) fn check_launch_type(t: Option<&str>) -> Result<(), ApiError> {
    match t {
        Some(t) if !["EXTERNAL", "EC2"].contains(&t) => Err(ApiError::InvalidParameter(format!(
            "launchType {t} is not supported: EXTERNAL"
        ))),
        _ => Ok(()),
    }
}

/// Refuses an optional string longer than ECS allows for the field.
fn check_length(s: &Option<String>, what: &str, max: usize) -> Result<(), ApiError> {
    match s {
        Some(v) if v.len() > max => Err(ApiError::InvalidParameter(format!(
            "{what} can have at most {max} characters"
        ))),
        _ => Ok(()),
    }
}

impl Api {
    pub(crate) fn task_arn(&self, cluster: &str, id: &str) -> String {
        self.arn(&format!("task/{cluster}/{id}"))
    }

    /// Resolves and checks what RunTask and StartTask share.
    pub(super) async fn launch(
        &self,
        cluster: Option<&str>,
        task_definition: &str,
        started_by: Option<String>,
        group: Option<String>,
        overrides: Option<Overrides>,
        tags: Vec<Tag>,
    ) -> Result<Launch, ApiError> {
        let cluster = self.active_cluster(cluster).await?;
        check_length(&started_by, "startedBy", 128)?;
        check_length(&group, "group", 255)?;
        if tags.len() > 50 {
            return Err(ApiError::InvalidParameter("tags: at most 50".into()));
        }
        let (family, revision, def) = self.runnable_task_definition(task_definition).await?;
        let overrides = overrides.unwrap_or_default();
        for o in &overrides.container_overrides {
            if !def.container_definitions.iter().any(|c| c.name == o.name) {
                return Err(ApiError::InvalidParameter(format!(
                    "Override for container named {} is not a container in the TaskDefinition.",
                    o.name
                )));
            }
        }
        let group = group.unwrap_or_else(|| format!("family:{family}"));
        Ok(Launch {
            cluster,
            needs: needs(&def, group),
            family,
            revision,
            def,
            started_by,
            overrides,
            tags,
            deployment: None,
        })
    }

    /// Places and records `l`'s tasks in one immediate transaction; the response of RunTask
    /// and StartTask.
    pub(super) async fn place_and_record(
        &self,
        l: Launch,
        target: Target,
    ) -> Result<Value, ApiError> {
        let mut tx = self.store().begin_write().await?;
        if let Some((_, holder)) = &l.deployment
            && !crate::scheduler::holds_lease(&mut tx, holder).await?
        {
            return Err(ApiError::Server(format!(
                "the scheduler {holder} lost its lease; placing nothing"
            )));
        }
        let (seen,) = generation(&mut tx, &l.cluster).await?;
        let cached = self.snapshot(&l.cluster).filter(|(g, _)| *g == seen);
        let mut all: Vec<Candidate> = match cached {
            Some((_, all)) => all,
            None => instance_rows_on(&mut tx, &l.cluster)
                .await?
                .iter()
                .filter(|r| r.2 != "INACTIVE")
                .map(candidate)
                .collect(),
        };
        let seed = u64::from_str_radix(&super::random_id()[..16], 16).unwrap_or(1);
        let mut failures = Vec::new();
        let placed: Vec<usize> = match target {
            Target::Placed {
                count,
                strategies,
                constraints,
            } => {
                if !all.iter().any(|c| c.status == "ACTIVE") {
                    return Err(ApiError::InvalidParameter(
                        "No Container Instances were found in your cluster.".into(),
                    ));
                }
                let p =
                    placement::place(&mut all, &l.needs, count, &strategies, &constraints, seed);
                failures.extend(p.failures.into_iter().map(|(id, r)| Failure {
                    arn: self.instance_arn(&l.cluster, &id),
                    reason: r.as_str().into(),
                }));
                p.placed
            }
            Target::On(ids) => {
                let mut placed = Vec::new();
                for id in ids {
                    let Some(i) = all.iter().position(|c| c.id == id) else {
                        failures.push(Failure {
                            arn: self.instance_arn(&l.cluster, &id),
                            reason: "MISSING".into(),
                        });
                        continue;
                    };
                    let p = placement::place(&mut all[i..=i], &l.needs, 1, &[], &[], seed);
                    placed.extend(p.placed.iter().map(|_| i));
                    let reason = match p.failures.first() {
                        Some((_, r)) => r.as_str(),
                        None if p.placed.is_empty() => all[i].status.as_str(),
                        None => continue,
                    };
                    failures.push(Failure {
                        arn: self.instance_arn(&l.cluster, &id),
                        reason: reason.into(),
                    });
                }
                placed
            }
        };
        // One INSERT for all the launch's tasks and one UPDATE for their instances: few round
        // trips while the write lock is held (PostgreSQL pays one per statement).
        const COLUMNS_IN: usize = 15;
        let mut values = Vec::new();
        for n in 0..placed.len() {
            let p: Vec<String> = (1..=COLUMNS_IN)
                .map(|k| format!("${}", n * COLUMNS_IN + k))
                .collect();
            values.push(format!(
                "({}, {}, {}, {}, {}, 'RUNNING', 'PROVISIONING', {})",
                p[0],
                p[1],
                p[2],
                p[3],
                p[4],
                p[5..].join(", ")
            ));
        }
        let mut tasks = Vec::new();
        if !placed.is_empty() {
            let sql = format!(
                "INSERT INTO tasks (id, cluster, container_instance, family, revision, desired_status, last_status,
                   cpu, memory, host_ports, started_by, task_group, created_at, containers, overrides, tags, deployment)
                 VALUES {} RETURNING {TASK_COLUMNS}",
                values.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            let (ports, overrides, tags) = (
                serde_json::to_string(&l.needs.ports).expect("ports serialize"),
                serde_json::to_string(&l.overrides).expect("overrides serialize"),
                serde_json::to_string(&l.tags).expect("tags serialize"),
            );
            for &i in &placed {
                let id = super::random_id();
                q = q
                    .bind(id.clone())
                    .bind(l.cluster.clone())
                    .bind(all[i].id.clone())
                    .bind(l.family.clone())
                    .bind(l.revision)
                    .bind(l.needs.cpu)
                    .bind(l.needs.memory)
                    .bind(ports.clone())
                    .bind(l.started_by.clone())
                    .bind(l.needs.group.clone())
                    .bind(now())
                    .bind(self.containers_of(&l, &id))
                    .bind(overrides.clone())
                    .bind(tags.clone())
                    .bind(l.deployment.as_ref().map(|(d, _)| d.clone()));
            }
            for row in q.fetch_all(&mut *tx).await? {
                tasks.push(self.task(&TaskRow::from_row(&row)?, true));
            }
            let instances: std::collections::BTreeSet<&str> =
                placed.iter().map(|&i| all[i].id.as_str()).collect();
            super::bump_desired(&mut tx, instances).await?;
        }
        // The snapshot now includes these tasks: kept as of the generation their insert made,
        // unless the generation moved by more than that insert's own bumps. On PostgreSQL a
        // write outside the write lock (a drain, a node's report) can commit while this
        // transaction runs; its bump then shows here, and the snapshot, which may not include
        // it, is dropped rather than trusted.
        let (now_at,) = generation(&mut tx, &l.cluster).await?;
        tx.commit().await?;
        if now_at == seen + self.store().generation_bumps(tasks.len()) {
            self.keep_snapshot(&l.cluster, now_at, all);
        }
        self.changed();
        Ok(json!({ "tasks": tasks, "failures": failures }))
    }

    /// A new task's containers (ECS `Container` objects as recorded before any report).
    fn containers_of(&self, l: &Launch, id: &str) -> String {
        let containers: Vec<Value> = l
            .def
            .container_definitions
            .iter()
            .map(|c| {
                let mut v = json!({
                    "containerArn": self.arn(&format!("container/{}/{id}/{}", l.cluster, super::random_id())),
                    "name": c.name,
                    "image": c.image,
                });
                for (k, x) in [
                    ("cpu", c.cpu),
                    ("memory", c.memory),
                    ("memoryReservation", c.memory_reservation),
                ] {
                    if let Some(x) = x {
                        v[k] = x.to_string().into();
                    }
                }
                v
            })
            .collect();
        Value::from(containers).to_string()
    }

    /// ECS's `Task`.
    fn task(&self, t: &TaskRow, with_tags: bool) -> Value {
        let arn = self.task_arn(&t.cluster, &t.id);
        let containers: Vec<Value> = serde_json::from_str::<Vec<Value>>(&t.containers)
            .unwrap_or_default()
            .into_iter()
            .map(|mut c| {
                // What the node reported of the container, else the task's state.
                c["taskArn"] = arn.clone().into();
                if c.get("lastStatus").is_none() {
                    c["lastStatus"] = t.last_status.clone().into();
                }
                if c.get("networkBindings").is_none() {
                    c["networkBindings"] = json!([]);
                }
                c
            })
            .collect();
        let mut v = json!({
            "taskArn": arn,
            "clusterArn": self.arn(&format!("cluster/{}", t.cluster)),
            "containerInstanceArn": self.instance_arn(&t.cluster, &t.container_instance),
            "taskDefinitionArn": self.task_definition_arn(&t.family, t.revision),
            "lastStatus": t.last_status,
            "desiredStatus": t.desired_status,
            "cpu": t.cpu.to_string(),
            "memory": t.memory.to_string(),
            "containers": containers,
            "createdAt": t.created_at,
            "group": t.group,
            "launchType": "EXTERNAL",
            "version": t.version,
            "overrides": serde_json::from_str::<Value>(&t.overrides).unwrap_or_default(),
            "attachments": serde_json::from_str::<Value>(&t.attachments).unwrap_or_default(),
            "healthStatus": t.health_status,
        });
        let opt = [
            ("startedBy", t.started_by.clone().map(Value::from)),
            ("stoppingAt", t.stopping_at.map(Value::from)),
            ("stoppedReason", t.stopped_reason.clone().map(Value::from)),
            ("stopCode", t.stop_code.clone().map(Value::from)),
            ("startedAt", t.started_at.map(Value::from)),
            ("stoppedAt", t.stopped_at.map(Value::from)),
            ("executionStoppedAt", t.stopped_at.map(Value::from)),
            ("pullStartedAt", t.pull_started_at.map(Value::from)),
            ("pullStoppedAt", t.pull_stopped_at.map(Value::from)),
        ];
        for (k, x) in opt {
            if let Some(x) = x {
                v[k] = x;
            }
        }
        if with_tags {
            v["tags"] = serde_json::from_str::<Value>(&t.tags).unwrap_or_default();
        }
        v
    }

    async fn find_task(&self, cluster: &str, id: &str) -> Result<Option<TaskRow>, ApiError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE cluster = $1 AND id = $2"
        )))
        .bind(cluster)
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(TaskRow::from_row).transpose()?)
    }

    pub(super) async fn run_task(&self, r: RunTask) -> Result<Value, ApiError> {
        let count = r.count.unwrap_or(1);
        if !(1..=10).contains(&count) {
            return Err(ApiError::InvalidParameter(
                "count must be between 1 and 10".into(),
            ));
        }
        check_launch_type(r.launch_type.as_deref())?;
        if r.placement_strategy.len() > placement::MAX_STRATEGIES
            || r.placement_constraints.len() > 10
        {
            return Err(ApiError::InvalidParameter(
                "at most 5 placementStrategy and 10 placementConstraints".into(),
            ));
        }
        let mut strategies = r
            .placement_strategy
            .iter()
            .map(|s| Strategy::parse(&s.kind, s.field.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        // Without a strategy, any instance that fits (ECS's default for RunTask is random).
        if strategies.is_empty() {
            strategies.push(Strategy::Random);
        }
        let constraints = r
            .placement_constraints
            .iter()
            .map(|c| Constraint::parse(&c.kind, c.expression.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        let l = self
            .launch(
                r.cluster.as_deref(),
                &r.task_definition,
                r.started_by,
                r.group,
                r.overrides,
                r.tags,
            )
            .await?;
        if let Some(t) = &r.client_token
            && (t.is_empty() || t.len() > 64)
        {
            return Err(ApiError::InvalidParameter(
                "clientToken: 1 to 64 characters".into(),
            ));
        }
        let cluster = l.cluster.clone();
        if let Some(token) = &r.client_token {
            let seen: Option<(String,)> = sqlx::query_as(
                "SELECT response FROM run_task_tokens WHERE cluster = $1 AND token = $2",
            )
            .bind(&cluster)
            .bind(token)
            .fetch_optional(self.pool())
            .await?;
            if let Some((response,)) = seen {
                return serde_json::from_str(&response)
                    .map_err(|e| ApiError::Server(format!("a stored RunTask answer: {e}")));
            }
        }
        let target = Target::Placed {
            count: count as usize,
            strategies,
            constraints,
        };
        let answer = self.place_and_record(l, target).await?;
        if let Some(token) = &r.client_token {
            sqlx::query(
                "INSERT INTO run_task_tokens (cluster, token, response, created_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(&cluster)
            .bind(token)
            .bind(answer.to_string())
            .bind(now())
            .execute(self.pool())
            .await?;
        }
        Ok(answer)
    }

    pub(super) async fn start_task(&self, r: StartTask) -> Result<Value, ApiError> {
        if r.container_instances.is_empty() || r.container_instances.len() > 10 {
            return Err(ApiError::InvalidParameter(
                "containerInstances: 1 to 10 entries".into(),
            ));
        }
        let ids = r
            .container_instances
            .iter()
            .map(|c| task_id(c).to_owned())
            .collect();
        let l = self
            .launch(
                r.cluster.as_deref(),
                &r.task_definition,
                r.started_by,
                r.group,
                r.overrides,
                r.tags,
            )
            .await?;
        self.place_and_record(l, Target::On(ids)).await
    }

    pub(super) async fn stop_task(&self, r: StopTask) -> Result<Value, ApiError> {
        let cluster = self.active_cluster(r.cluster.as_deref()).await?;
        check_length(&r.reason, "reason", 255)?;
        let id = task_id(&r.task);
        let reason = r.reason.as_deref().unwrap_or("Task stopped by user");
        let mut conn = self.pool().acquire().await?;
        if self.find_task(&cluster, id).await?.is_some() {
            request_stop(&mut conn, &[id.to_owned()], reason, "UserInitiated").await?;
            self.changed();
        }
        let t = self.find_task(&cluster, id).await?.ok_or_else(|| {
            ApiError::InvalidParameter("The referenced task was not found.".into())
        })?;
        Ok(json!({ "task": self.task(&t, true) }))
    }

    pub(super) async fn describe_tasks(&self, r: DescribeTasks) -> Result<Value, ApiError> {
        let cluster = self.active_cluster(r.cluster.as_deref()).await?;
        if r.tasks.is_empty() || r.tasks.len() > 100 {
            return Err(ApiError::InvalidParameter("tasks: 1 to 100 entries".into()));
        }
        let with_tags = super::include_tags(&r.include)?;
        let mut results = Vec::new();
        for want in &r.tasks {
            let id = task_id(want);
            let t = self.find_task(&cluster, id).await?;
            results.push((id, t.map(|t| self.task(&t, with_tags))));
        }
        let (tasks, failures) = super::found_or_missing(results, |id| self.task_arn(&cluster, id));
        Ok(json!({ "tasks": tasks, "failures": failures }))
    }

    pub(super) async fn list_tasks(&self, r: ListTasks) -> Result<Value, ApiError> {
        let cluster = self.active_cluster(r.cluster.as_deref()).await?;
        let desired = r.desired_status.as_deref().unwrap_or("RUNNING");
        if !["RUNNING", "PENDING", "STOPPED"].contains(&desired) {
            return Err(ApiError::InvalidParameter(format!(
                "desiredStatus {desired} is not valid: RUNNING, PENDING or STOPPED"
            )));
        }
        if let Some(t) = r
            .launch_type
            .as_deref()
            .filter(|t| !["EXTERNAL", "EC2"].contains(t))
        {
            return Err(ApiError::InvalidParameter(format!(
                "launchType {t} has no tasks here"
            )));
        }
        if r.family.is_some() && r.service_name.is_some() {
            return Err(ApiError::InvalidParameter(
                "family and serviceName cannot be used together".into(),
            ));
        }
        let group = r.service_name.map(|s| format!("service:{s}"));
        let instance = r.container_instance.as_deref().map(task_id);
        // PENDING lists tasks meant to run that do not yet (desired RUNNING, not yet RUNNING).
        let rows: Vec<(String, String, String, String, Option<String>, String)> = sqlx::query_as(
            "SELECT id, container_instance, family, last_status, started_by, task_group FROM tasks
             WHERE cluster = $1 AND desired_status = $2 ORDER BY created_at, id",
        )
        .bind(&cluster)
        .bind(if desired == "STOPPED" {
            "STOPPED"
        } else {
            "RUNNING"
        })
        .fetch_all(self.pool())
        .await?;
        let arns: Vec<String> = rows
            .into_iter()
            .filter(|(_, inst, family, last, started_by, g)| {
                instance.is_none_or(|x| x == inst)
                    && r.family.as_deref().is_none_or(|x| x == family)
                    && r.started_by
                        .as_deref()
                        .is_none_or(|x| Some(x) == started_by.as_deref())
                    && group.as_deref().is_none_or(|x| x == g)
                    && (desired != "PENDING" || last != "RUNNING")
            })
            .map(|(id, ..)| self.task_arn(&cluster, &id))
            .collect();
        let (arns, next) = page(arns, r.next_token.as_deref(), r.max_results, 100)?;
        let mut v = json!({ "taskArns": arns });
        if let Some(n) = next {
            v["nextToken"] = n.into();
        }
        Ok(v)
    }
}
