//! Services: CreateService, UpdateService, DeleteService, DescribeServices, ListServices, and
//! [`Api::reconcile_services`], the scheduler's pass that keeps each service at its tasks (the
//! decisions are [`super::deploy::plan`]'s; this module reads the snapshot and applies them).
//!
//! A service has deployments, as on ECS: the PRIMARY one (its current task definition and
//! settings) and ACTIVE older ones whose tasks are being replaced; a deployment with no task
//! left is INACTIVE and no longer shown. A new deployment is made when the task definition
//! changes, on `forceNewDeployment`, and by a circuit-breaker rollback; a new desired count
//! alone changes the primary deployment's target. The service's tasks carry their deployment's
//! id in `startedBy` (`ecs-svc/...`) and `service:<name>` as their group.
//!
//! Deleting a service sets it DRAINING (with `force`, or once its desired count is 0, as ECS
//! requires); the scheduler stops its tasks and it becomes INACTIVE when none is left.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Row;

use super::deploy::{self, Deployment, Host, Rollout, Scheduling, Spec};
use super::placement::{Constraint, Strategy};
use super::tasks::{ConstraintIn, StrategyIn, Target, check_launch_type, request_stop};
use super::{Api, Tag, now, page};
use crate::error::ApiError;

/// ECS `DeploymentCircuitBreaker`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CircuitBreaker {
    enable: bool,
    rollback: bool,
}

/// ECS `DeploymentConfiguration` (alarms are not supported: apid has no CloudWatch).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeploymentConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deployment_circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    maximum_percent: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    minimum_healthy_percent: Option<i64>,
}

/// ECS `DeploymentController`: only `ECS` (rolling update) here.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeploymentController {
    #[serde(rename = "type")]
    kind: String,
}

/// What a service keeps of its settings, as given (normalised), in `services.body`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Settings {
    scheduling_strategy: String,
    deployment_configuration: DeploymentConfiguration,
    #[serde(default)]
    placement_constraints: Vec<Value>,
    #[serde(default)]
    placement_strategy: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    health_check_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network_configuration: Option<Value>,
    #[serde(default)]
    enable_execute_command: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    propagate_tags: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CreateService {
    cluster: Option<String>,
    service_name: String,
    task_definition: Option<String>,
    #[serde(default)]
    load_balancers: Vec<Value>,
    #[serde(default)]
    service_registries: Vec<Value>,
    desired_count: Option<i64>,
    client_token: Option<String>,
    launch_type: Option<String>,
    #[serde(default)]
    capacity_provider_strategy: Vec<Value>,
    platform_version: Option<String>,
    role: Option<String>,
    deployment_configuration: Option<DeploymentConfiguration>,
    #[serde(default)]
    placement_constraints: Vec<ConstraintIn>,
    #[serde(default)]
    placement_strategy: Vec<StrategyIn>,
    network_configuration: Option<Value>,
    health_check_grace_period_seconds: Option<i64>,
    scheduling_strategy: Option<String>,
    deployment_controller: Option<DeploymentController>,
    #[serde(default)]
    tags: Vec<Tag>,
    enable_ecs_managed_tags: Option<bool>,
    propagate_tags: Option<String>,
    enable_execute_command: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct UpdateService {
    cluster: Option<String>,
    service: String,
    desired_count: Option<i64>,
    task_definition: Option<String>,
    deployment_configuration: Option<DeploymentConfiguration>,
    placement_constraints: Option<Vec<ConstraintIn>>,
    placement_strategy: Option<Vec<StrategyIn>>,
    network_configuration: Option<Value>,
    #[serde(default)]
    force_new_deployment: bool,
    health_check_grace_period_seconds: Option<i64>,
    enable_execute_command: Option<bool>,
    propagate_tags: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DeleteService {
    cluster: Option<String>,
    service: String,
    #[serde(default)]
    force: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DescribeServices {
    cluster: Option<String>,
    services: Vec<String>,
    #[serde(default)]
    include: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ListServices {
    cluster: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
    launch_type: Option<String>,
    scheduling_strategy: Option<String>,
}

/// A service's row.
struct ServiceRow {
    cluster: String,
    name: String,
    status: String,
    settings: Settings,
    desired_count: i64,
    created_at: f64,
    events: Vec<Value>,
    tags: String,
}

/// A deployment's row.
struct DeploymentRow {
    id: String,
    status: String,
    family: String,
    revision: i64,
    rollout_state: String,
    rollout_reason: String,
    failed_tasks: i64,
    created_at: f64,
    updated_at: f64,
}

/// How many events a service keeps (ECS shows the last 100).
const EVENTS_KEPT: usize = 100;

/// The service name from a name or ARN (`...:service/<cluster>/<name>`).
fn service_name(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidParameter(format!(
            "serviceName {name:?}: up to 255 letters, numbers, hyphens and underscores"
        )))
    }
}

/// Checks placement settings as RunTask does, returning them as given (for describe).
fn placement_settings(
    strategies: &[StrategyIn],
    constraints: &[ConstraintIn],
) -> Result<(Vec<Value>, Vec<Value>), ApiError> {
    if strategies.len() > super::placement::MAX_STRATEGIES || constraints.len() > 10 {
        return Err(ApiError::InvalidParameter(
            "at most 5 placementStrategy and 10 placementConstraints".into(),
        ));
    }
    let mut s = Vec::new();
    for x in strategies {
        Strategy::parse(&x.kind, x.field.as_deref())?;
        s.push(serde_json::to_value(x).expect("a strategy serializes"));
    }
    let mut c = Vec::new();
    for x in constraints {
        Constraint::parse(&x.kind, x.expression.as_deref())?;
        c.push(serde_json::to_value(x).expect("a constraint serializes"));
    }
    Ok((s, c))
}

/// Checks percentages as ECS does, filling its defaults for the scheduling strategy.
fn deployment_configuration(
    given: Option<DeploymentConfiguration>,
    daemon: bool,
) -> Result<DeploymentConfiguration, ApiError> {
    let mut c = given.unwrap_or_default();
    let max = *c
        .maximum_percent
        .get_or_insert(if daemon { 100 } else { 200 });
    let min = *c
        .minimum_healthy_percent
        .get_or_insert(if daemon { 0 } else { 100 });
    if !(0..=100).contains(&min) {
        return Err(ApiError::InvalidParameter(format!(
            "minimumHealthyPercent {min} must be between 0 and 100"
        )));
    }
    if !(100..=200).contains(&max) || (daemon && max != 100) {
        return Err(ApiError::InvalidParameter(format!(
            "maximumPercent {max} must be between 100 and 200 (100 for a DAEMON service)"
        )));
    }
    if c.deployment_circuit_breaker.is_none() {
        c.deployment_circuit_breaker = Some(CircuitBreaker::default());
    }
    Ok(c)
}

/// A service's stored placement settings (checked when given), parsed again for placement.
fn parsed<T: serde::de::DeserializeOwned, U>(
    given: &[Value],
    parse: impl Fn(T) -> Result<U, super::placement::PlacementError>,
) -> Result<Vec<U>, ApiError> {
    given
        .iter()
        .filter_map(|v| serde_json::from_value::<T>(v.clone()).ok())
        .map(|v| parse(v).map_err(ApiError::from))
        .collect()
}

fn refuse_unsupported(what: &str, given: bool) -> Result<(), ApiError> {
    if given {
        Err(ApiError::InvalidParameter(format!(
            "{what} is not supported by apid"
        )))
    } else {
        Ok(())
    }
}

impl Api {
    fn service_arn(&self, cluster: &str, name: &str) -> String {
        self.arn(&format!("service/{cluster}/{name}"))
    }

    async fn find_service(
        &self,
        cluster: &str,
        name: &str,
    ) -> Result<Option<ServiceRow>, ApiError> {
        let row = sqlx::query(
            "SELECT cluster, name, status, body, desired_count, created_at, events, tags
             FROM services WHERE cluster = $1 AND name = $2",
        )
        .bind(cluster)
        .bind(name)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            let body: String = r.get(3);
            let events: String = r.get(6);
            Ok(ServiceRow {
                cluster: r.get(0),
                name: r.get(1),
                status: r.get(2),
                settings: serde_json::from_str(&body)
                    .map_err(|e| ApiError::Server(format!("service {cluster}/{name}: {e}")))?,
                desired_count: r.get(4),
                created_at: r.get(5),
                events: serde_json::from_str(&events).unwrap_or_default(),
                tags: r.get(7),
            })
        })
        .transpose()
    }

    async fn deployments(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<Vec<DeploymentRow>, ApiError> {
        let rows = sqlx::query(
            "SELECT id, status, family, revision, rollout_state, rollout_reason, failed_tasks, created_at, updated_at
             FROM deployments WHERE cluster = $1 AND service = $2 AND status != 'INACTIVE'
             ORDER BY created_at DESC, id",
        )
        .bind(cluster)
        .bind(service)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| DeploymentRow {
                id: r.get(0),
                status: r.get(1),
                family: r.get(2),
                revision: r.get(3),
                rollout_state: r.get(4),
                rollout_reason: r.get(5),
                failed_tasks: r.get(6),
                created_at: r.get(7),
                updated_at: r.get(8),
            })
            .collect())
    }

    /// Makes `family:revision` the service's PRIMARY deployment, with its event; the previous
    /// primary becomes ACTIVE (its tasks are replaced).
    async fn new_deployment(
        &self,
        conn: &mut sqlx::AnyConnection,
        cluster: &str,
        service: &str,
        family: &str,
        revision: i64,
        reason: &str,
    ) -> Result<String, ApiError> {
        // ECS's deployment ids: `ecs-svc/` and 19 digits.
        let digits: String = super::random_id()
            .bytes()
            .take(19)
            .map(|b| char::from(b'0' + b % 10))
            .collect();
        let id = format!("ecs-svc/{digits}");
        let at = now();
        sqlx::query(
            "UPDATE deployments SET status = 'ACTIVE', updated_at = $1
             WHERE cluster = $2 AND service = $3 AND status = 'PRIMARY'",
        )
        .bind(at)
        .bind(cluster)
        .bind(service)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO deployments (id, cluster, service, status, family, revision, rollout_state,
               rollout_reason, created_at, updated_at)
             VALUES ($1, $2, $3, 'PRIMARY', $4, $5, 'IN_PROGRESS', $6, $7, $7)",
        )
        .bind(&id)
        .bind(cluster)
        .bind(service)
        .bind(family)
        .bind(revision)
        .bind(reason)
        .bind(at)
        .execute(&mut *conn)
        .await?;
        let started = format!("(service {service}) has started a deployment ({id}).");
        self.service_event(conn, cluster, service, started).await?;
        Ok(id)
    }

    /// Records an event on the service (newest first, the last [`EVENTS_KEPT`]), unless it
    /// repeats the newest one.
    async fn service_event(
        &self,
        conn: &mut sqlx::AnyConnection,
        cluster: &str,
        service: &str,
        message: String,
    ) -> Result<(), ApiError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT events FROM services WHERE cluster = $1 AND name = $2")
                .bind(cluster)
                .bind(service)
                .fetch_optional(&mut *conn)
                .await?;
        let Some((events,)) = row else {
            return Ok(());
        };
        let mut events: Vec<Value> = serde_json::from_str(&events).unwrap_or_default();
        if events
            .first()
            .is_some_and(|e| e["message"] == message.as_str())
        {
            return Ok(());
        }
        events.insert(
            0,
            json!({"id": super::random_id(), "createdAt": now(), "message": message}),
        );
        events.truncate(EVENTS_KEPT);
        sqlx::query("UPDATE services SET events = $1 WHERE cluster = $2 AND name = $3")
            .bind(Value::from(events).to_string())
            .bind(cluster)
            .bind(service)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// The live (desired RUNNING) and pending counts of a service's tasks, by deployment.
    async fn task_counts(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<BTreeMap<String, (i64, i64)>, ApiError> {
        let rows: Vec<(Option<String>, String)> = sqlx::query_as(
            "SELECT deployment, last_status FROM tasks
             WHERE cluster = $1 AND task_group = $2 AND desired_status = 'RUNNING'",
        )
        .bind(cluster)
        .bind(format!("service:{service}"))
        .fetch_all(self.pool())
        .await?;
        let mut counts: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for (d, last) in rows {
            let c = counts.entry(d.unwrap_or_default()).or_default();
            if last == "RUNNING" {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
        Ok(counts)
    }

    /// ECS's `Service`.
    async fn service(&self, s: &ServiceRow, with_tags: bool) -> Result<Value, ApiError> {
        let counts = self.task_counts(&s.cluster, &s.name).await?;
        let deployments = self.deployments(&s.cluster, &s.name).await?;
        let primary = deployments.iter().find(|d| d.status == "PRIMARY");
        let (running, pending) = counts
            .values()
            .fold((0, 0), |(r, p), (r2, p2)| (r + r2, p + p2));
        let desired = if s.status == "ACTIVE" {
            s.desired_count
        } else {
            0
        };
        let deployments: Vec<Value> = deployments
            .iter()
            .map(|d| {
                let (r, p) = counts.get(&d.id).copied().unwrap_or_default();
                json!({
                    "id": d.id,
                    "status": d.status,
                    "taskDefinition": self.task_definition_arn(&d.family, d.revision),
                    "desiredCount": if d.status == "PRIMARY" { desired } else { 0 },
                    "pendingCount": p,
                    "runningCount": r,
                    "failedTasks": d.failed_tasks,
                    "createdAt": d.created_at,
                    "updatedAt": d.updated_at,
                    "launchType": "EXTERNAL",
                    "rolloutState": d.rollout_state,
                    "rolloutStateReason": d.rollout_reason,
                })
            })
            .collect();
        let mut v = json!({
            "serviceArn": self.service_arn(&s.cluster, &s.name),
            "serviceName": s.name,
            "clusterArn": self.arn(&format!("cluster/{}", s.cluster)),
            "status": s.status,
            "desiredCount": desired,
            "runningCount": running,
            "pendingCount": pending,
            "launchType": "EXTERNAL",
            "deploymentConfiguration": s.settings.deployment_configuration,
            "deployments": deployments,
            "events": s.events,
            "createdAt": s.created_at,
            "placementConstraints": s.settings.placement_constraints,
            "placementStrategy": s.settings.placement_strategy,
            "schedulingStrategy": s.settings.scheduling_strategy,
            "deploymentController": {"type": "ECS"},
            "enableECSManagedTags": false,
            "propagateTags": s.settings.propagate_tags.as_deref().unwrap_or("NONE"),
            "enableExecuteCommand": s.settings.enable_execute_command,
        });
        if let Some(d) = primary {
            v["taskDefinition"] = self.task_definition_arn(&d.family, d.revision).into();
        }
        if let Some(g) = s.settings.health_check_grace_period_seconds {
            v["healthCheckGracePeriodSeconds"] = g.into();
        }
        if let Some(n) = &s.settings.network_configuration {
            v["networkConfiguration"] = n.clone();
        }
        if with_tags {
            v["tags"] = serde_json::from_str::<Value>(&s.tags).unwrap_or_default();
        }
        Ok(v)
    }

    /// The ACTIVE service `name`: ServiceNotFound, or ServiceNotActive when it is being
    /// deleted or deleted.
    async fn active_service(&self, cluster: &str, name: &str) -> Result<ServiceRow, ApiError> {
        let s = self
            .find_service(cluster, name)
            .await?
            .ok_or(ApiError::ServiceNotFound)?;
        if s.status != "ACTIVE" {
            return Err(ApiError::ServiceNotActive);
        }
        Ok(s)
    }

    /// `{"service": ...}`, the answer of Create, Update and DeleteService.
    async fn service_response(
        &self,
        cluster: &str,
        name: &str,
        with_tags: bool,
    ) -> Result<Value, ApiError> {
        let s = self
            .find_service(cluster, name)
            .await?
            .ok_or(ApiError::ServiceNotFound)?;
        Ok(json!({ "service": self.service(&s, with_tags).await? }))
    }

    pub(super) async fn create_service(&self, r: CreateService) -> Result<Value, ApiError> {
        let cluster = self.active_cluster(r.cluster.as_deref()).await?;
        check_name(&r.service_name)?;
        refuse_unsupported("loadBalancers", !r.load_balancers.is_empty())?;
        refuse_unsupported("serviceRegistries", !r.service_registries.is_empty())?;
        refuse_unsupported(
            "capacityProviderStrategy",
            !r.capacity_provider_strategy.is_empty(),
        )?;
        refuse_unsupported(
            "a deploymentController other than ECS",
            r.deployment_controller
                .as_ref()
                .is_some_and(|c| c.kind != "ECS"),
        )?;
        let _ = (
            &r.client_token,
            &r.platform_version,
            &r.role,
            r.enable_ecs_managed_tags,
        );
        check_launch_type(r.launch_type.as_deref())?;
        let scheduling = r.scheduling_strategy.as_deref().unwrap_or("REPLICA");
        let daemon = match scheduling {
            "REPLICA" => false,
            "DAEMON" => true,
            other => {
                return Err(ApiError::InvalidParameter(format!(
                    "schedulingStrategy {other} is not valid: REPLICA or DAEMON"
                )));
            }
        };
        let desired = match (daemon, r.desired_count) {
            (true, Some(_)) => {
                return Err(ApiError::InvalidParameter(
                    "The daemon scheduling strategy does not support a desired count for services."
                        .into(),
                ));
            }
            (true, None) => 0,
            (false, None) => {
                return Err(ApiError::InvalidParameter(
                    "desiredCount is required for a REPLICA service".into(),
                ));
            }
            (false, Some(n)) if n < 0 => {
                return Err(ApiError::InvalidParameter(
                    "desiredCount must be at least 0".into(),
                ));
            }
            (false, Some(n)) => n,
        };
        if daemon && !r.placement_strategy.is_empty() {
            return Err(ApiError::InvalidParameter(
                "Placement strategies are not supported with the DAEMON scheduling strategy."
                    .into(),
            ));
        }
        let Some(task_definition) = r.task_definition.as_deref() else {
            return Err(ApiError::InvalidParameter(
                "taskDefinition is required".into(),
            ));
        };
        let (family, revision, _) = self.runnable_task_definition(task_definition).await?;
        let (placement_strategy, placement_constraints) =
            placement_settings(&r.placement_strategy, &r.placement_constraints)?;
        let settings = Settings {
            scheduling_strategy: scheduling.into(),
            deployment_configuration: deployment_configuration(r.deployment_configuration, daemon)?,
            placement_constraints,
            placement_strategy,
            health_check_grace_period_seconds: r.health_check_grace_period_seconds,
            network_configuration: r.network_configuration,
            enable_execute_command: r.enable_execute_command.unwrap_or(false),
            propagate_tags: r.propagate_tags,
        };
        if r.tags.len() > 50 {
            return Err(ApiError::InvalidParameter("tags: at most 50".into()));
        }
        let mut tx = self.store().begin_write().await?;
        let existing: Option<(String,)> =
            sqlx::query_as("SELECT status FROM services WHERE cluster = $1 AND name = $2")
                .bind(&cluster)
                .bind(&r.service_name)
                .fetch_optional(&mut *tx)
                .await?;
        match existing.as_ref().map(|(s,)| s.as_str()) {
            None => {}
            Some("INACTIVE") => {
                sqlx::query("DELETE FROM services WHERE cluster = $1 AND name = $2")
                    .bind(&cluster)
                    .bind(&r.service_name)
                    .execute(&mut *tx)
                    .await?;
            }
            Some(_) => {
                return Err(ApiError::InvalidParameter(
                    "Creation of service was not idempotent.".into(),
                ));
            }
        }
        let at = now();
        sqlx::query(
            "INSERT INTO services (cluster, name, status, body, desired_count, created_at, updated_at, tags)
             VALUES ($1, $2, 'ACTIVE', $3, $4, $5, $5, $6)",
        )
        .bind(&cluster)
        .bind(&r.service_name)
        .bind(serde_json::to_string(&settings).expect("settings serialize"))
        .bind(desired)
        .bind(at)
        .bind(serde_json::to_string(&r.tags).expect("tags serialize"))
        .execute(&mut *tx)
        .await?;
        self.new_deployment(
            &mut tx,
            &cluster,
            &r.service_name,
            &family,
            revision,
            "ECS deployment created.",
        )
        .await?;
        tx.commit().await?;
        self.changed();
        self.service_response(&cluster, &r.service_name, true).await
    }

    pub(super) async fn update_service(&self, r: UpdateService) -> Result<Value, ApiError> {
        let cluster = self.active_cluster(r.cluster.as_deref()).await?;
        let name = service_name(&r.service);
        let mut s = self.active_service(&cluster, name).await?;
        let daemon = s.settings.scheduling_strategy == "DAEMON";
        let mut redeploy = r.force_new_deployment;
        if let Some(n) = r.desired_count {
            if daemon {
                return Err(ApiError::InvalidParameter(
                    "The daemon scheduling strategy does not support a desired count for services."
                        .into(),
                ));
            }
            if n < 0 {
                return Err(ApiError::InvalidParameter(
                    "desiredCount must be at least 0".into(),
                ));
            }
            s.desired_count = n;
        }
        if let Some(c) = r.deployment_configuration {
            s.settings.deployment_configuration = deployment_configuration(Some(c), daemon)?;
        }
        if r.placement_strategy.is_some() || r.placement_constraints.is_some() {
            let strategies = r.placement_strategy.unwrap_or_default();
            let constraints = r.placement_constraints.unwrap_or_default();
            let (ps, pc) = placement_settings(&strategies, &constraints)?;
            s.settings.placement_strategy = ps;
            s.settings.placement_constraints = pc;
            redeploy = true;
        }
        if let Some(n) = r.network_configuration {
            s.settings.network_configuration = Some(n);
            redeploy = true;
        }
        if let Some(g) = r.health_check_grace_period_seconds {
            s.settings.health_check_grace_period_seconds = Some(g);
        }
        if let Some(e) = r.enable_execute_command {
            s.settings.enable_execute_command = e;
        }
        if let Some(p) = r.propagate_tags {
            s.settings.propagate_tags = Some(p);
        }
        let current = self.deployments(&cluster, name).await?;
        let primary = current.iter().find(|d| d.status == "PRIMARY");
        let (family, revision) = match r.task_definition.as_deref() {
            Some(td) => {
                let (f, rev, _) = self.runnable_task_definition(td).await?;
                if primary.is_none_or(|p| p.family != f || p.revision != rev) {
                    redeploy = true;
                }
                (f, rev)
            }
            None => primary
                .map(|p| (p.family.clone(), p.revision))
                .ok_or_else(|| {
                    ApiError::Server(format!(
                        "service {cluster}/{name} has no primary deployment"
                    ))
                })?,
        };
        let mut tx = self.store().begin_write().await?;
        sqlx::query(
            "UPDATE services SET body = $1, desired_count = $2, updated_at = $3
             WHERE cluster = $4 AND name = $5 AND status = 'ACTIVE'",
        )
        .bind(serde_json::to_string(&s.settings).expect("settings serialize"))
        .bind(s.desired_count)
        .bind(now())
        .bind(&cluster)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        if redeploy {
            self.new_deployment(
                &mut tx,
                &cluster,
                name,
                &family,
                revision,
                "ECS deployment created.",
            )
            .await?;
        } else if let Some(p) = primary.filter(|p| p.rollout_state == "COMPLETED") {
            // A new count rolls the primary deployment out again, as ECS shows it.
            sqlx::query("UPDATE deployments SET rollout_state = 'IN_PROGRESS', updated_at = $1 WHERE id = $2")
                .bind(now())
                .bind(&p.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.changed();
        self.service_response(&cluster, name, false).await
    }

    pub(super) async fn delete_service(&self, r: DeleteService) -> Result<Value, ApiError> {
        let cluster = self.active_cluster(r.cluster.as_deref()).await?;
        let name = service_name(&r.service);
        let s = self.active_service(&cluster, name).await?;
        if s.settings.scheduling_strategy == "REPLICA" && s.desired_count > 0 && !r.force {
            return Err(ApiError::InvalidParameter(
                "The service cannot be stopped while it is scaled above 0.".into(),
            ));
        }
        sqlx::query(
            "UPDATE services SET status = 'DRAINING', desired_count = 0, updated_at = $1
             WHERE cluster = $2 AND name = $3 AND status = 'ACTIVE'",
        )
        .bind(now())
        .bind(&cluster)
        .bind(name)
        .execute(self.pool())
        .await?;
        self.changed();
        self.service_response(&cluster, name, false).await
    }

    pub(super) async fn describe_services(&self, r: DescribeServices) -> Result<Value, ApiError> {
        let cluster = self.active_cluster(r.cluster.as_deref()).await?;
        if r.services.is_empty() || r.services.len() > 10 {
            return Err(ApiError::InvalidParameter(
                "services: 1 to 10 entries".into(),
            ));
        }
        let with_tags = super::include_tags(&r.include)?;
        let mut results = Vec::new();
        for want in &r.services {
            let name = service_name(want);
            let described = match self.find_service(&cluster, name).await? {
                Some(s) => Some(self.service(&s, with_tags).await?),
                None => None,
            };
            results.push((name, described));
        }
        let (found, failures) =
            super::found_or_missing(results, |name| self.service_arn(&cluster, name));
        Ok(json!({ "services": found, "failures": failures }))
    }

    pub(super) async fn list_services(&self, r: ListServices) -> Result<Value, ApiError> {
        let cluster = self.active_cluster(r.cluster.as_deref()).await?;
        if let Some(t) = r
            .launch_type
            .as_deref()
            .filter(|t| !["EXTERNAL", "EC2"].contains(t))
        {
            return Err(ApiError::InvalidParameter(format!(
                "launchType {t} has no services here"
            )));
        }
        let rows = sqlx::query(
            "SELECT name, body FROM services WHERE cluster = $1 AND status != 'INACTIVE' ORDER BY created_at, name",
        )
        .bind(&cluster)
        .fetch_all(self.pool())
        .await?;
        let arns: Vec<String> = rows
            .iter()
            .filter(|row| {
                let body: String = row.get(1);
                r.scheduling_strategy.as_deref().is_none_or(|want| {
                    serde_json::from_str::<Settings>(&body)
                        .is_ok_and(|s| s.scheduling_strategy == want)
                })
            })
            .map(|row| self.service_arn(&cluster, row.get::<&str, _>(0)))
            .collect();
        let (arns, next) = page(arns, r.next_token.as_deref(), r.max_results, 100)?;
        let mut v = json!({ "serviceArns": arns });
        if let Some(n) = next {
            v["nextToken"] = n.into();
        }
        Ok(v)
    }

    /// One scheduling pass over every service not yet INACTIVE: replaces, starts and stops
    /// tasks as the service planner (`ecs::deploy`) decides. Errors of one service are logged and do not stop
    /// the others.
    pub async fn reconcile_services(&self, holder: &str) -> Result<(), ApiError> {
        let services: Vec<(String, String)> = sqlx::query_as(
            "SELECT cluster, name FROM services WHERE status != 'INACTIVE' ORDER BY cluster, name",
        )
        .fetch_all(self.pool())
        .await?;
        for (cluster, name) in services {
            if let Err(e) = self.reconcile_service(&cluster, &name, holder).await {
                tracing::warn!(%cluster, service = %name, error = %e, "scheduling the service");
            }
        }
        Ok(())
    }

    async fn reconcile_service(
        &self,
        cluster: &str,
        name: &str,
        holder: &str,
    ) -> Result<(), ApiError> {
        let Some(s) = self.find_service(cluster, name).await? else {
            return Ok(());
        };
        let deployments = self.deployments(cluster, name).await?;
        let cfg = self.config();
        let at = now();
        let grace = at - cfg.disconnect_grace_seconds as f64;
        // The service's live tasks with their instances' state, and each deployment's
        // failures (tasks that stopped without being asked to, or for failing health checks).
        let rows = sqlx::query(
            "SELECT t.id, t.deployment, t.container_instance, t.last_status, t.health_status,
                    i.status, i.agent_connected, i.last_seen
             FROM tasks t LEFT JOIN container_instances i ON i.id = t.container_instance
             WHERE t.cluster = $1 AND t.task_group = $2 AND t.desired_status = 'RUNNING'",
        )
        .bind(cluster)
        .bind(format!("service:{name}"))
        .fetch_all(self.pool())
        .await?;
        let tasks: Vec<deploy::Task> = rows
            .iter()
            .map(|r| {
                let status: Option<String> = r.get(5);
                let connected: Option<i64> = r.get(6);
                let last_seen: Option<f64> = r.get(7);
                let host = match status.as_deref() {
                    None | Some("INACTIVE") => Host::Lost,
                    _ if connected != Some(1) && last_seen.unwrap_or(0.0) < grace => Host::Lost,
                    _ if connected != Some(1) => Host::Away,
                    Some("DRAINING") => Host::Draining,
                    _ => Host::Active,
                };
                deploy::Task {
                    id: r.get(0),
                    deployment: r.get::<Option<String>, _>(1).unwrap_or_default(),
                    instance: r.get(2),
                    running: r.get::<String, _>(3) == "RUNNING",
                    unhealthy: r.get::<String, _>(4) == "UNHEALTHY",
                    host,
                }
            })
            .collect();
        let mut failed: BTreeMap<String, i64> = BTreeMap::new();
        for d in &deployments {
            let (n,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM tasks WHERE deployment = $1 AND last_status = 'STOPPED'
                   AND (stop_code IN ('TaskFailedToStart', 'EssentialContainerExited')
                        OR stopped_reason = $2)",
            )
            .bind(&d.id)
            .bind(deploy::UNHEALTHY)
            .fetch_one(self.pool())
            .await?;
            failed.insert(d.id.clone(), n);
        }
        let daemon = s.settings.scheduling_strategy == "DAEMON";
        let constraints = parsed(&s.settings.placement_constraints, |c: ConstraintIn| {
            Constraint::parse(&c.kind, c.expression.as_deref())
        })?;
        let strategies = parsed(&s.settings.placement_strategy, |c: StrategyIn| {
            Strategy::parse(&c.kind, c.field.as_deref())
        })?;
        let eligible = if daemon {
            self.daemon_instances(cluster, &constraints).await?
        } else {
            Vec::new()
        };
        if daemon && eligible.len() as i64 != s.desired_count {
            // A DAEMON service's desired count is its eligible instances', as ECS shows it.
            sqlx::query("UPDATE services SET desired_count = $1 WHERE cluster = $2 AND name = $3")
                .bind(eligible.len() as i64)
                .bind(cluster)
                .bind(name)
                .execute(self.pool())
                .await?;
        }
        let dc = &s.settings.deployment_configuration;
        let cb = dc.deployment_circuit_breaker.clone().unwrap_or_default();
        let spec = Spec {
            scheduling: if daemon {
                Scheduling::Daemon
            } else {
                Scheduling::Replica
            },
            desired: s.desired_count,
            maximum_percent: dc.maximum_percent.unwrap_or(200),
            minimum_healthy_percent: dc.minimum_healthy_percent.unwrap_or(100),
            circuit_breaker: (cb.enable, cb.rollback),
            deleting: s.status == "DRAINING",
        };
        let views: Vec<Deployment> = deployments
            .iter()
            .map(|d| Deployment {
                id: d.id.clone(),
                primary: d.status == "PRIMARY",
                rollout: Rollout::parse(&d.rollout_state),
                failed: failed.get(&d.id).copied().unwrap_or(0),
            })
            .collect();
        let plan = deploy::plan(&spec, &views, &tasks, &eligible);
        let placement = (strategies, constraints, holder);
        self.apply_plan(&s, &deployments, &failed, plan, placement)
            .await
    }

    /// The instances a DAEMON service runs on: ACTIVE, connected, meeting the constraints.
    async fn daemon_instances(
        &self,
        cluster: &str,
        constraints: &[Constraint],
    ) -> Result<Vec<String>, ApiError> {
        let mut conn = self.pool().acquire().await?;
        let rows = super::container_instances::instance_rows_on(&mut conn, cluster).await?;
        // The constraints decide eligibility; resources and architecture are placement's to
        // check (a misfit shows as a service event).
        Ok(rows
            .iter()
            .map(super::container_instances::candidate)
            .filter(|c| c.status == "ACTIVE" && c.agent_connected)
            .filter(|c| super::placement::member_of_all(c, constraints))
            .map(|c| c.id)
            .collect())
    }

    async fn apply_plan(
        &self,
        s: &ServiceRow,
        deployments: &[DeploymentRow],
        failed: &BTreeMap<String, i64>,
        plan: deploy::Plan,
        (strategies, constraints, holder): (Vec<Strategy>, Vec<Constraint>, &str),
    ) -> Result<(), ApiError> {
        let (cluster, name) = (s.cluster.as_str(), s.name.as_str());
        let mut conn = self.pool().acquire().await?;
        let mut changed = false;
        // Stops first: they free what the starts may need.
        for stop in &plan.stop {
            let n = request_stop(
                &mut conn,
                std::slice::from_ref(&stop.task),
                stop.reason,
                "ServiceSchedulerInitiated",
            )
            .await?;
            if n > 0 {
                changed = true;
                self.service_event(
                    &mut conn,
                    cluster,
                    name,
                    format!(
                        "(service {name}) has stopped 1 running tasks: (task {}).",
                        stop.task
                    ),
                )
                .await?;
            }
        }
        for d in deployments {
            let f = failed.get(&d.id).copied().unwrap_or(0);
            if f != d.failed_tasks {
                sqlx::query(
                    "UPDATE deployments SET failed_tasks = $1, updated_at = $2 WHERE id = $3",
                )
                .bind(f)
                .bind(now())
                .bind(&d.id)
                .execute(&mut *conn)
                .await?;
            }
        }
        for (id, state) in &plan.rollouts {
            let reason = match state {
                Rollout::Completed => "ECS deployment completed.".to_owned(),
                Rollout::Failed => format!(
                    "ECS deployment circuit breaker: tasks failed to start or stay healthy ({} failed tasks).",
                    failed.get(id).copied().unwrap_or(0)
                ),
                Rollout::InProgress => "ECS deployment in progress.".to_owned(),
            };
            sqlx::query("UPDATE deployments SET rollout_state = $1, rollout_reason = $2, updated_at = $3 WHERE id = $4")
                .bind(state.as_str())
                .bind(&reason)
                .bind(now())
                .bind(id)
                .execute(&mut *conn)
                .await?;
            let message = match state {
                Rollout::Failed => {
                    format!("(service {name}) (deployment {id}) deployment failed: {reason}")
                }
                _ => format!("(service {name}) (deployment {id}) deployment completed."),
            };
            self.service_event(&mut conn, cluster, name, message)
                .await?;
            changed = true;
        }
        for id in &plan.retire {
            sqlx::query(
                "UPDATE deployments SET status = 'INACTIVE', updated_at = $1 WHERE id = $2",
            )
            .bind(now())
            .bind(id)
            .execute(&mut *conn)
            .await?;
            changed = true;
        }
        if s.status == "DRAINING" {
            let (live,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM tasks WHERE cluster = $1 AND task_group = $2 AND last_status != 'STOPPED'",
            )
            .bind(cluster)
            .bind(format!("service:{name}"))
            .fetch_one(&mut *conn)
            .await?;
            if live == 0 {
                sqlx::query("UPDATE services SET status = 'INACTIVE', updated_at = $1 WHERE cluster = $2 AND name = $3")
                    .bind(now())
                    .bind(cluster)
                    .bind(name)
                    .execute(&mut *conn)
                    .await?;
                changed = true;
            }
        }
        let primary = deployments.iter().find(|d| d.status == "PRIMARY");
        if plan.roll_back
            && let Some(p) = primary
            && let Some((family, revision)) = self.last_completed(cluster, name, &p.id).await?
        {
            let d = self
                .new_deployment(&mut conn, cluster, name, &family, revision, "ECS deployment circuit breaker: rolling back to the last completed deployment.")
                .await?;
            self.service_event(
                &mut conn,
                cluster,
                name,
                format!("(service {name}) rolling back to deployment {d} ({family}:{revision})."),
            )
            .await?;
            changed = true;
        }
        if plan.steady {
            self.service_event(
                &mut conn,
                cluster,
                name,
                format!("(service {name}) has reached a steady state."),
            )
            .await?;
        }
        drop(conn);
        if let Some(p) = primary.filter(|_| plan.start > 0 || !plan.start_on.is_empty()) {
            let l = self
                .launch(
                    Some(cluster),
                    &format!("{}:{}", p.family, p.revision),
                    Some(p.id.clone()),
                    Some(format!("service:{name}")),
                    None,
                    Vec::new(),
                )
                .await?
                .for_deployment(p.id.clone(), holder.to_owned());
            let target = if plan.start_on.is_empty() {
                Target::Placed {
                    count: plan.start,
                    // ECS's default for services: spread over instances.
                    strategies: if strategies.is_empty() {
                        vec![Strategy::Spread(None)]
                    } else {
                        strategies
                    },
                    constraints,
                }
            } else {
                Target::On(plan.start_on)
            };
            let placed = self.place_and_record(l, target).await;
            let mut conn = self.pool().acquire().await?;
            match placed {
                Ok(v) => {
                    let started: Vec<&str> = v["tasks"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|t| t["taskArn"].as_str()?.rsplit('/').next())
                        .collect();
                    if !started.is_empty() {
                        changed = true;
                        self.service_event(
                            &mut conn,
                            cluster,
                            name,
                            format!(
                                "(service {name}) has started {} tasks: {}.",
                                started.len(),
                                started
                                    .iter()
                                    .map(|t| format!("(task {t})"))
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            ),
                        )
                        .await?;
                    }
                    let reasons: Vec<&str> = v["failures"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|f| f["reason"].as_str())
                        .collect();
                    if started.is_empty() && !reasons.is_empty() {
                        self.service_event(&mut conn, cluster, name, format!("(service {name}) was unable to place a task because no container instance met all of its requirements. Reasons: {}.", reasons.join(", ")))
                            .await?;
                    }
                }
                Err(e) => {
                    self.service_event(
                        &mut conn,
                        cluster,
                        name,
                        format!("(service {name}) was unable to place a task: {e}."),
                    )
                    .await?;
                }
            }
        }
        if changed {
            self.changed();
        }
        Ok(())
    }

    /// The task definition of the newest COMPLETED deployment of the service other than
    /// `failed`, to roll back to.
    async fn last_completed(
        &self,
        cluster: &str,
        service: &str,
        failed: &str,
    ) -> Result<Option<(String, i64)>, ApiError> {
        Ok(sqlx::query_as(
            "SELECT family, revision FROM deployments
             WHERE cluster = $1 AND service = $2 AND id != $3 AND rollout_state = 'COMPLETED'
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(cluster)
        .bind(service)
        .bind(failed)
        .fetch_optional(self.pool())
        .await?)
    }
}

#[cfg(test)]
#[path = "services_tests.rs"]
mod tests;
