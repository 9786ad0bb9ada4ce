//! Skiff's own operator actions, for what the ECS API has no word for: activations, access keys,
//! the cluster CA and node certificates. They share the ECS API's endpoint, wire format (AWS
//! JSON 1.1) and SigV4 keys; only the target prefix differs:
//! `X-Amz-Target: SkiffControlV1.<Action>`. `skiff control ...` is their client, so an operator
//! needs no shell on the apid host.
//!
//! Actions (request fields camelCase as ECS's; responses likewise):
//!
//! - `CreateActivation {cluster, count?, expiresInSeconds?}` (count 1, 24 hours by default; at
//!   most 30 days, as SSM activations) -> `{activationId, activationCode}`: the code is shown
//!   only here;
//! - `ListActivations` -> `{activations: [{activationId, cluster, remaining, expiresAt, expired}]}`;
//! - `DeleteActivation {activationId}`;
//! - `CreateAccessKey` -> `{accessKey: {accessKeyId, secretAccessKey, status}}`: the secret is
//!   shown only here;
//! - `ListAccessKeys` -> `{accessKeys: [{accessKeyId, status}]}`;
//! - `RevokeAccessKey {accessKeyId}`: refused for the key that signs the request, so that an
//!   operator cannot lock themselves out by accident;
//! - `GetCaCertificate` -> `{certificate}` (PEM);
//! - `ListNodeCertificates {containerInstance?}` (an id or ARN) -> `{certificates: [{serial,
//!   containerInstance, issuedAt, notAfter, revokedAt}]}`;
//! - `RevokeNodeCertificate {serial}`: the node channel reads revoked serials at each handshake,
//!   so the node holding it is refused from its next connection on.
//!
//! - `GetTaskLogs {cluster?, task, container?, tail?}` -> `{lines: [{log, stream, time}]}`,
//!   `GetTaskStats {cluster?, task}` -> the node's stats of the task, and
//!   `ExecInTask {cluster?, task, container, command, timeoutSeconds?}` -> `{exitCode, stdout,
//!   stderr}`: asked of the node that runs the task, over its own connection
//!   ([`crate::nodes`]), since nodes sit behind NAT.
//!
//! This module is a thin adapter over [`crate::identity`] and [`crate::keys`]: it parses the
//! request, calls the domain function and names what was wrong in an [`ApiError`].

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::ecs::Api;
use crate::error::ApiError;
use crate::identity::activations::{self, ActivationError};
use crate::identity::ca::Ca;
use crate::keys;
use crate::nodes::Ask;

/// The target prefix of Skiff's control actions.
pub const TARGET_PREFIX: &str = "SkiffControlV1.";

/// The longest an activation may be valid, as SSM's (30 days).
pub const MAX_EXPIRES_SECONDS: u64 = 30 * 86_400;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateActivation {
    cluster: String,
    #[serde(default = "one")]
    count: i64,
    #[serde(default = "one_day")]
    expires_in_seconds: u64,
}

fn one() -> i64 {
    1
}

fn one_day() -> u64 {
    86_400
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ActivationId {
    activation_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AccessKeyId {
    access_key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListNodeCertificates {
    container_instance: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Serial {
    serial: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TaskAsk {
    cluster: Option<String>,
    task: String,
    container: Option<String>,
    tail: Option<usize>,
    #[serde(default)]
    command: Vec<String>,
    timeout_seconds: Option<u64>,
}

/// How long an operator's request waits for the node, beyond the exec's own time.
const ASK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The action's request from its body (an empty body is `{}`).
fn parse<T: DeserializeOwned>(action: &str, body: &[u8]) -> Result<T, ApiError> {
    let body = if body.is_empty() {
        b"{}" as &[u8]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| ApiError::Serialization(format!("{action}: {e}")))
}

fn activation_error(e: ActivationError) -> ApiError {
    match e {
        ActivationError::Store(e) => ApiError::from(e),
        e @ ActivationError::ClusterNotFound { .. } => ApiError::NotFound(e.to_string()),
        e => ApiError::InvalidParameter(e.to_string()),
    }
}

/// `{}` if the action found what it names, else [`ApiError::NotFound`] saying what is missing.
fn done(found: bool, missing: impl FnOnce() -> String) -> Result<Value, ApiError> {
    if found {
        Ok(json!({}))
    } else {
        Err(ApiError::NotFound(missing()))
    }
}

/// Runs control `action` (without the prefix) with `body`, for the request signed by access key
/// `caller`.
pub async fn call(api: &Api, caller: &str, action: &str, body: &[u8]) -> Result<Value, ApiError> {
    let pool = api.pool();
    match action {
        "CreateActivation" => {
            let r: CreateActivation = parse(action, body)?;
            if !(1..=MAX_EXPIRES_SECONDS).contains(&r.expires_in_seconds) {
                return Err(ApiError::InvalidParameter(format!(
                    "expiresInSeconds {}: 1 to {MAX_EXPIRES_SECONDS} (30 days)",
                    r.expires_in_seconds
                )));
            }
            let valid_for = std::time::Duration::from_secs(r.expires_in_seconds);
            let a = activations::create(pool, &r.cluster, r.count, valid_for)
                .await
                .map_err(activation_error)?;
            Ok(json!({"activationId": a.activation_id, "activationCode": a.activation_code}))
        }
        "ListActivations" => {
            let Empty {} = parse(action, body)?;
            let list = activations::list(pool).await.map_err(activation_error)?;
            let list: Vec<_> = list
                .into_iter()
                .map(|a| {
                    json!({
                        "activationId": a.activation_id,
                        "cluster": a.cluster,
                        "remaining": a.remaining,
                        "expiresAt": a.expires_at,
                        "expired": a.expired,
                    })
                })
                .collect();
            Ok(json!({ "activations": list }))
        }
        "DeleteActivation" => {
            let r: ActivationId = parse(action, body)?;
            let deleted = activations::delete(pool, &r.activation_id)
                .await
                .map_err(activation_error)?;
            done(deleted, || {
                format!("activation {} not found", r.activation_id)
            })
        }
        "CreateAccessKey" => {
            let Empty {} = parse(action, body)?;
            let k = keys::create(pool).await?;
            Ok(json!({"accessKey": {
                "accessKeyId": k.access_key_id,
                "secretAccessKey": k.secret_access_key,
                "status": k.status,
            }}))
        }
        "ListAccessKeys" => {
            let Empty {} = parse(action, body)?;
            let list: Vec<_> = keys::list(pool)
                .await?
                .into_iter()
                .map(|k| json!({"accessKeyId": k.access_key_id, "status": k.status}))
                .collect();
            Ok(json!({ "accessKeys": list }))
        }
        "RevokeAccessKey" => {
            let r: AccessKeyId = parse(action, body)?;
            if r.access_key_id == caller {
                return Err(ApiError::InvalidParameter(format!(
                    "access key {caller} signs this request and cannot revoke itself: revoke it \
                     with another key"
                )));
            }
            let revoked = keys::revoke(pool, &r.access_key_id).await?;
            done(revoked, || {
                format!("no active access key {}", r.access_key_id)
            })
        }
        "GetCaCertificate" => {
            let Empty {} = parse(action, body)?;
            let ca = Ca::load_or_create(pool)
                .await
                .map_err(|e| ApiError::Server(format!("the cluster CA: {e:#}")))?;
            Ok(json!({ "certificate": ca.cert_pem() }))
        }
        "ListNodeCertificates" => {
            let r: ListNodeCertificates = parse(action, body)?;
            let instance = r
                .container_instance
                .as_deref()
                .map(|s| s.rsplit('/').next().unwrap_or(s));
            type Row = (String, String, f64, f64, Option<f64>);
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT serial, instance, issued_at, not_after, revoked_at FROM node_certs
                 WHERE $1 IS NULL OR instance = $1 ORDER BY issued_at, serial",
            )
            .bind(instance)
            .fetch_all(pool)
            .await?;
            let list: Vec<_> = rows
                .into_iter()
                .map(|(serial, instance, issued_at, not_after, revoked_at)| {
                    json!({
                        "serial": serial,
                        "containerInstance": instance,
                        "issuedAt": issued_at,
                        "notAfter": not_after,
                        "revokedAt": revoked_at,
                    })
                })
                .collect();
            Ok(json!({ "certificates": list }))
        }
        "RevokeNodeCertificate" => {
            let r: Serial = parse(action, body)?;
            let serial = r.serial.to_ascii_lowercase();
            let done = sqlx::query(
                "UPDATE node_certs SET revoked_at = $1 WHERE serial = $2 AND revoked_at IS NULL",
            )
            .bind(crate::ecs::now())
            .bind(&serial)
            .execute(pool)
            .await?;
            if done.rows_affected() == 1 {
                return Ok(json!({}));
            }
            let known: Option<(String,)> =
                sqlx::query_as("SELECT serial FROM node_certs WHERE serial = $1")
                    .bind(&serial)
                    .fetch_optional(pool)
                    .await?;
            Err(match known {
                Some(_) => ApiError::InvalidParameter(format!(
                    "node certificate {serial} is already revoked"
                )),
                None => ApiError::NotFound(format!("no node certificate with serial {serial}")),
            })
        }
        "GetTaskLogs" | "GetTaskStats" | "ExecInTask" => {
            let r: TaskAsk = parse(action, body)?;
            let cluster =
                crate::ecs::clusters::cluster_name(r.cluster.as_deref().unwrap_or("default"))?;
            let mut wait = ASK_WAIT;
            let ask = match action {
                "GetTaskLogs" => Ask::Logs {
                    container: r.container,
                    tail: r.tail,
                },
                "GetTaskStats" => Ask::Stats,
                _ => {
                    let container = r.container.ok_or_else(|| {
                        ApiError::InvalidParameter("ExecInTask: container is required".into())
                    })?;
                    if r.command.is_empty() {
                        return Err(ApiError::InvalidParameter(
                            "ExecInTask: command is required".into(),
                        ));
                    }
                    let timeout_seconds = r.timeout_seconds.unwrap_or(60).clamp(1, 600);
                    wait += std::time::Duration::from_secs(timeout_seconds);
                    Ask::Exec {
                        container,
                        command: r.command,
                        timeout_seconds,
                    }
                }
            };
            api.ask_node(&cluster, &r.task, ask, wait).await
        }
        other => Err(ApiError::UnknownOperation(format!(
            "{TARGET_PREFIX}{other} is not an action"
        ))),
    }
}

#[cfg(test)]
#[path = "control_tests.rs"]
mod tests;
