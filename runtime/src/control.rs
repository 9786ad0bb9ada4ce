//! A client of apid's operator API, for `skiff control`: what the ECS API has no word for
//! (activations, access keys, the cluster CA, node certificates: apid's `SkiffControlV1.<Action>`
//! targets) and readable views of clusters, nodes, services and tasks built from the ECS actions.
//!
//! Every call is `POST` to the endpoint with AWS JSON 1.1, signed with SigV4 ([`crate::sigv4`])
//! by an access key apid issued, one HTTP/1.1 connection per call, each bounded by
//! [`CALL_TIMEOUT`]. The views follow `nextToken` to the end and describe in batches of ECS's
//! limits (100 clusters, instances or tasks, 10 services per call), then render [`Table`]s.
//!
//! Limitations: plain HTTP only (apid's operator API does not serve TLS yet, so keep it on
//! loopback or a trusted network); long-term keys from the environment only (no profiles, no
//! session tokens).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper::http::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::sigv4::{Credentials, SignError, Signer};

/// Where `skiff control` finds apid when neither `--endpoint-url` nor `SKIFF_ENDPOINT_URL` says.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8460";
/// The ECS API's target prefix.
pub const ECS_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";
/// The target prefix of apid's own admin actions.
pub const CONTROL_PREFIX: &str = "SkiffControlV1.";
/// The service in SigV4 scopes (apid serves both prefixes as `ecs`).
pub const SERVICE: &str = "ecs";
/// The longest one call may take, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// The flags that create an activation, shared by `skiff-apid activations create` (on the apid host)
/// and `skiff control activations create` (remote).
#[derive(Clone, Debug, clap::Args)]
pub struct ActivationArgs {
    /// The cluster its nodes join.
    #[arg(long)]
    pub cluster: String,
    /// How many nodes may register with it.
    #[arg(long, default_value_t = 1)]
    pub count: i64,
    /// How long it is valid (`24h`, `30m`, `7days`; through the operator API at most 30 days).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub expires: Duration,
}

/// Errors of calls to apid.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The endpoint is not a URL this client can use.
    #[error("endpoint {url:?}: {reason}")]
    Endpoint {
        /// What was given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A credential is not in the environment.
    #[error(
        "{variable} is not set: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (a key from \
         `skiff-apid keys create` or `skiff control keys create`)"
    )]
    Credentials {
        /// The variable.
        variable: &'static str,
    },
    /// apid is not listening there.
    #[error("connecting to apid at {authority} (is apid serving there?)")]
    Connect {
        /// `host:port`.
        authority: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("{target}: talking to apid at {authority}")]
    Http {
        /// The action.
        target: String,
        /// `host:port`.
        authority: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// No answer within [`CALL_TIMEOUT`].
    #[error("{target}: no answer from apid at {authority} within {CALL_TIMEOUT:?}")]
    Timeout {
        /// The action.
        target: String,
        /// `host:port`.
        authority: String,
    },
    /// apid refused the call; its error type and message.
    #[error("{action}: {kind}: {message}")]
    Refused {
        /// The action.
        action: String,
        /// The `__type` (`ClusterNotFoundException`).
        kind: String,
        /// The HTTP status.
        status: u16,
        /// apid's message.
        message: String,
    },
    /// The answer is not what the API defines.
    #[error("{action}: unexpected answer from apid: {detail}")]
    Decode {
        /// The action.
        action: String,
        /// What was wrong.
        detail: String,
    },
    /// The request could not be signed.
    #[error("signing the request")]
    Sign(#[from] SignError),
}

impl Credentials {
    /// The key in `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub fn from_env() -> Result<Self, ControlError> {
        let var = |variable: &'static str| {
            std::env::var(variable)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or(ControlError::Credentials { variable })
        };
        Ok(Self {
            access_key_id: var("AWS_ACCESS_KEY_ID")?,
            secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
        })
    }
}

/// apid's operator API at one endpoint, signed by one key.
#[derive(Clone, Debug)]
pub struct ControlClient {
    authority: String,
    path: String,
    signer: Signer,
}

/// `host:port` and path of an `http://` endpoint.
fn parse_endpoint(url: &str) -> Result<(String, String), ControlError> {
    let bad = |reason: &str| ControlError::Endpoint {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "apid's operator API does not serve TLS yet: use http:// on a trusted network",
            ));
        }
        _ => return Err(bad("must be http://host[:port]")),
    }
    let authority = uri.authority().ok_or_else(|| bad("names no host"))?;
    let authority = match authority.port_u16() {
        Some(_) => authority.as_str().to_owned(),
        None => format!("{}:80", authority.host()),
    };
    if uri.query().is_some() {
        return Err(bad("must not have a query"));
    }
    Ok((authority, uri.path().to_owned()))
}

/// The last `/`-separated part of an ARN (an id or name), or the whole string.
pub fn arn_name(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// The cluster an ARN of the shape `...:<kind>/<cluster>/<id>` names.
fn arn_cluster(arn: &str) -> &str {
    let mut parts = arn.rsplit('/');
    parts.next();
    parts.next().unwrap_or("")
}

impl ControlClient {
    /// A client of apid at `endpoint` (`http://host[:port][/path]`), signing for `region`.
    pub fn new(
        endpoint: &str,
        credentials: Credentials,
        region: &str,
    ) -> Result<Self, ControlError> {
        let (authority, path) = parse_endpoint(endpoint)?;
        Ok(Self {
            authority,
            path,
            signer: Signer {
                credentials,
                region: region.to_owned(),
                service: SERVICE.to_owned(),
            },
        })
    }

    /// Calls `target` (prefix and action) with `body`; the answer's JSON.
    pub async fn call(&self, target: &str, body: &Value) -> Result<Value, ControlError> {
        tokio::time::timeout(CALL_TIMEOUT, self.exchange(target, body))
            .await
            .unwrap_or_else(|_| {
                Err(ControlError::Timeout {
                    target: target.to_owned(),
                    authority: self.authority.clone(),
                })
            })
    }

    async fn exchange(&self, target: &str, body: &Value) -> Result<Value, ControlError> {
        let http = |source| ControlError::Http {
            target: target.to_owned(),
            authority: self.authority.clone(),
            source,
        };
        let decode = |detail: String| ControlError::Decode {
            action: target.to_owned(),
            detail,
        };
        let body = Bytes::from(body.to_string());
        let (mut parts, ()) = Request::post(self.path.as_str())
            .header("host", self.authority.as_str())
            .header("content-type", CONTENT_TYPE)
            .header("x-amz-target", target)
            .body(())
            .map_err(|e| decode(e.to_string()))?
            .into_parts();
        self.signer.sign(&mut parts, &body, SystemTime::now())?;
        parts.headers.insert(
            "user-agent",
            hyper::http::HeaderValue::from_static(concat!("skiff/", env!("CARGO_PKG_VERSION"))),
        );
        let stream = TcpStream::connect(self.authority.as_str())
            .await
            .map_err(|source| ControlError::Connect {
                authority: self.authority.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(conn);
        let resp = sender
            .send_request(Request::from_parts(parts, Full::new(body)))
            .await
            .map_err(http)?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(http)?.to_bytes();
        let value: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            return value.ok_or_else(|| {
                decode(format!(
                    "not JSON: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ))
            });
        }
        let field = |name: &str| {
            value
                .as_ref()
                .and_then(|v| v.get(name).or_else(|| v.get(name.to_ascii_uppercase())))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Err(ControlError::Refused {
            action: target.to_owned(),
            kind: field("__type")
                .map(|t| arn_name(t.rsplit('#').next().unwrap_or(&t)).to_owned())
                .unwrap_or_else(|| format!("HTTP {status}")),
            status: status.as_u16(),
            message: field("message")
                .or_else(|| field("Message"))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
        })
    }

    /// Calls ECS action `action`.
    pub async fn ecs(&self, action: &str, body: &Value) -> Result<Value, ControlError> {
        self.call(&format!("{ECS_PREFIX}{action}"), body).await
    }

    /// Calls apid admin action `action` (see `skiff_apid::control`).
    pub async fn control(&self, action: &str, body: &Value) -> Result<Value, ControlError> {
        self.call(&format!("{CONTROL_PREFIX}{action}"), body).await
    }

    /// Every ARN `list` answers in `field` for `body`, following `nextToken`.
    async fn list_all(
        &self,
        list: &str,
        mut body: Value,
        field: &str,
    ) -> Result<Vec<String>, ControlError> {
        let mut all = Vec::new();
        loop {
            let page = self.ecs(list, &body).await?;
            let arns = page[field].as_array().ok_or_else(|| ControlError::Decode {
                action: list.to_owned(),
                detail: format!("no {field} array"),
            })?;
            all.extend(arns.iter().filter_map(Value::as_str).map(str::to_owned));
            match page["nextToken"].as_str() {
                Some(token) if !token.is_empty() => body["nextToken"] = token.into(),
                _ => return Ok(all),
            }
        }
    }

    /// `describe` of `arns` in batches of `batch`, in `field` of `body`; what it answers in
    /// `out`.
    async fn describe_all(
        &self,
        describe: &str,
        mut body: Value,
        (field, out): (&str, &str),
        arns: &[String],
        batch: usize,
    ) -> Result<Vec<Value>, ControlError> {
        let mut all = Vec::new();
        for chunk in arns.chunks(batch) {
            body[field] = json!(chunk);
            let answer = self.ecs(describe, &body).await?;
            let items = answer[out].as_array().ok_or_else(|| ControlError::Decode {
                action: describe.to_owned(),
                detail: format!("no {out} array"),
            })?;
            all.extend(items.iter().cloned());
        }
        Ok(all)
    }

    /// Every cluster, described.
    pub async fn clusters(&self) -> Result<Vec<Value>, ControlError> {
        let arns = self
            .list_all("ListClusters", json!({}), "clusterArns")
            .await?;
        self.describe_all(
            "DescribeClusters",
            json!({}),
            ("clusters", "clusters"),
            &arns,
            100,
        )
        .await
    }

    /// `only`, or every cluster's name.
    async fn cluster_names(&self, only: Option<&str>) -> Result<Vec<String>, ControlError> {
        match only {
            Some(cluster) => Ok(vec![cluster.to_owned()]),
            None => Ok(self
                .list_all("ListClusters", json!({}), "clusterArns")
                .await?
                .iter()
                .map(|arn| arn_name(arn).to_owned())
                .collect()),
        }
    }

    /// For each of `clusters` (all when `None`), `list` then `describe` in batches of `batch`.
    async fn per_cluster(
        &self,
        cluster: Option<&str>,
        (list, list_field): (&str, &str),
        (describe, field): (&str, &str),
        batch: usize,
    ) -> Result<Vec<Value>, ControlError> {
        let mut all = Vec::new();
        for cluster in self.cluster_names(cluster).await? {
            let body = json!({ "cluster": cluster });
            let arns = self.list_all(list, body.clone(), list_field).await?;
            all.extend(
                self.describe_all(describe, body, (field, field), &arns, batch)
                    .await?,
            );
        }
        Ok(all)
    }

    /// The container instances of `cluster` (of every cluster when `None`), described.
    pub async fn nodes(&self, cluster: Option<&str>) -> Result<Vec<Value>, ControlError> {
        self.per_cluster(
            cluster,
            ("ListContainerInstances", "containerInstanceArns"),
            ("DescribeContainerInstances", "containerInstances"),
            100,
        )
        .await
    }

    /// The services of `cluster` (of every cluster when `None`), described.
    pub async fn services(&self, cluster: Option<&str>) -> Result<Vec<Value>, ControlError> {
        self.per_cluster(
            cluster,
            ("ListServices", "serviceArns"),
            ("DescribeServices", "services"),
            10,
        )
        .await
    }

    /// The tasks of `cluster` (of every cluster when `None`) that are meant to run, described.
    pub async fn tasks(&self, cluster: Option<&str>) -> Result<Vec<Value>, ControlError> {
        self.per_cluster(
            cluster,
            ("ListTasks", "taskArns"),
            ("DescribeTasks", "tasks"),
            100,
        )
        .await
    }
}

/// Rows under a header, printed with columns aligned by two spaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// Column names.
    pub header: Vec<&'static str>,
    /// Cells, one `Vec` per row, as many as the header.
    pub rows: Vec<Vec<String>>,
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        let lines: Vec<&Vec<String>> = std::iter::once(&header).chain(&self.rows).collect();
        let mut widths = vec![0; self.header.len()];
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line.iter()) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for line in lines {
            let mut text = String::new();
            for (i, (cell, width)) in line.iter().zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                text.extend(std::iter::repeat_n(
                    ' ',
                    width.saturating_sub(cell.chars().count()),
                ));
            }
            writeln!(f, "{}", text.trim_end())?;
        }
        Ok(())
    }
}

/// A JSON value as a cell: strings bare, numbers and booleans as JSON, absent as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Epoch seconds as RFC 3339 UTC, or `-`.
pub fn time_cell(v: &Value) -> String {
    match v.as_f64() {
        Some(secs) if secs.is_finite() && secs >= 0.0 => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs_f64(secs))
                .to_string()
        }
        _ => "-".to_owned(),
    }
}

/// `left/registered` of resource `name` (`CPU`, `MEMORY`) of a container instance.
fn resource_cell(node: &Value, name: &str) -> String {
    let value = |field: &str| {
        node[field]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == name)
            .and_then(|r| r["integerValue"].as_i64())
    };
    match (value("remainingResources"), value("registeredResources")) {
        (Some(left), Some(all)) => format!("{left}/{all}"),
        (Some(left), None) => left.to_string(),
        _ => "-".to_owned(),
    }
}

/// A column: its header and how a row's cell is read from an item.
type Column = (&'static str, fn(&Value) -> String);

/// One row per item, one cell per column.
fn table<'a>(items: impl IntoIterator<Item = &'a Value>, columns: &[Column]) -> Table {
    Table {
        header: columns.iter().map(|(name, _)| *name).collect(),
        rows: items
            .into_iter()
            .map(|item| columns.iter().map(|(_, read)| read(item)).collect())
            .collect(),
    }
}

/// The items of the array in `answer[field]`.
fn items<'a>(answer: &'a Value, field: &str) -> impl Iterator<Item = &'a Value> {
    answer[field].as_array().into_iter().flatten()
}

/// The id or name at the end of the ARN in `v`.
fn name_cell(v: &Value) -> String {
    cell(&json!(arn_name(v.as_str().unwrap_or(""))))
}

/// The cluster named by the ARN in `v`.
fn cluster_cell(v: &Value) -> String {
    cell(&json!(arn_cluster(v.as_str().unwrap_or(""))))
}

/// Clusters as `DescribeClusters` answers them.
pub fn clusters_table(clusters: &[Value]) -> Table {
    table(
        clusters,
        &[
            ("NAME", |c| cell(&c["clusterName"])),
            ("STATUS", |c| cell(&c["status"])),
            ("INSTANCES", |c| {
                cell(&c["registeredContainerInstancesCount"])
            }),
            ("SERVICES", |c| cell(&c["activeServicesCount"])),
            ("RUNNING", |c| cell(&c["runningTasksCount"])),
            ("PENDING", |c| cell(&c["pendingTasksCount"])),
        ],
    )
}

/// Container instances as `DescribeContainerInstances` answers them.
pub fn nodes_table(nodes: &[Value]) -> Table {
    table(
        nodes,
        &[
            ("CLUSTER", |n| cluster_cell(&n["containerInstanceArn"])),
            ("INSTANCE", |n| name_cell(&n["containerInstanceArn"])),
            ("STATUS", |n| cell(&n["status"])),
            ("AGENT", |n| {
                match n["agentConnected"].as_bool() {
                    Some(true) => "connected",
                    Some(false) => "disconnected",
                    None => "-",
                }
                .to_owned()
            }),
            ("CPU LEFT", |n| resource_cell(n, "CPU")),
            ("MEMORY LEFT", |n| resource_cell(n, "MEMORY")),
            ("RUNNING", |n| cell(&n["runningTasksCount"])),
            ("PENDING", |n| cell(&n["pendingTasksCount"])),
        ],
    )
}

/// Services as `DescribeServices` answers them.
pub fn services_table(services: &[Value]) -> Table {
    table(
        services,
        &[
            ("CLUSTER", |s| cluster_cell(&s["serviceArn"])),
            ("SERVICE", |s| cell(&s["serviceName"])),
            ("STATUS", |s| cell(&s["status"])),
            ("RUNNING/DESIRED", |s| {
                format!("{}/{}", cell(&s["runningCount"]), cell(&s["desiredCount"]))
            }),
            ("PENDING", |s| cell(&s["pendingCount"])),
            ("TASK DEFINITION", |s| name_cell(&s["taskDefinition"])),
        ],
    )
}

/// Tasks as `DescribeTasks` answers them.
pub fn tasks_table(tasks: &[Value]) -> Table {
    table(
        tasks,
        &[
            ("CLUSTER", |t| cluster_cell(&t["taskArn"])),
            ("TASK", |t| name_cell(&t["taskArn"])),
            ("LAST STATUS", |t| cell(&t["lastStatus"])),
            ("DESIRED", |t| cell(&t["desiredStatus"])),
            ("TASK DEFINITION", |t| name_cell(&t["taskDefinitionArn"])),
            ("INSTANCE", |t| name_cell(&t["containerInstanceArn"])),
            ("GROUP", |t| cell(&t["group"])),
            ("STARTED", |t| time_cell(&t["startedAt"])),
        ],
    )
}

/// Activations as `ListActivations` answers them.
pub fn activations_table(answer: &Value) -> Table {
    table(
        items(answer, "activations"),
        &[
            ("ACTIVATION", |a| cell(&a["activationId"])),
            ("CLUSTER", |a| cell(&a["cluster"])),
            ("REMAINING", |a| cell(&a["remaining"])),
            ("EXPIRES", |a| {
                let expires = time_cell(&a["expiresAt"]);
                if a["expired"] == true {
                    format!("{expires} (expired)")
                } else {
                    expires
                }
            }),
        ],
    )
}

/// A new activation as `CreateActivation` answers it (the code is shown only now).
pub fn new_activation_table(answer: &Value) -> Table {
    table(
        [answer],
        &[
            ("ACTIVATION ID", |a| cell(&a["activationId"])),
            ("ACTIVATION CODE", |a| cell(&a["activationCode"])),
        ],
    )
}

/// Access keys as `ListAccessKeys` answers them.
pub fn keys_table(answer: &Value) -> Table {
    table(
        items(answer, "accessKeys"),
        &[
            ("ACCESS KEY ID", |k| cell(&k["accessKeyId"])),
            ("STATUS", |k| cell(&k["status"])),
        ],
    )
}

/// A new access key as `CreateAccessKey` answers it (the secret is shown only now).
pub fn new_key_table(answer: &Value) -> Table {
    table(
        [&answer["accessKey"]],
        &[
            ("ACCESS KEY ID", |k| cell(&k["accessKeyId"])),
            ("SECRET ACCESS KEY", |k| cell(&k["secretAccessKey"])),
        ],
    )
}

/// Node certificates as `ListNodeCertificates` answers them.
pub fn certs_table(answer: &Value) -> Table {
    table(
        items(answer, "certificates"),
        &[
            ("SERIAL", |c| cell(&c["serial"])),
            ("INSTANCE", |c| cell(&c["containerInstance"])),
            ("ISSUED", |c| time_cell(&c["issuedAt"])),
            ("NOT AFTER", |c| time_cell(&c["notAfter"])),
            ("REVOKED", |c| time_cell(&c["revokedAt"])),
        ],
    )
}

#[cfg(test)]
#[path = "control_tests.rs"]
mod tests;
