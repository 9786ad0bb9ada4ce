//! The ECS API's actions over apid's store: each action's request is deserialised from its
//! AWS JSON body into a typed struct (names and shapes of botocore's ECS model), handled, and its
//! response serialised back. The HTTP adapter ([`crate::protocol`]) only authenticates and calls
//! [`Api::call`].

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::AnyPool;

use crate::config::ApidConfig;
use crate::error::ApiError;
use crate::store::Store;

pub(crate) mod clusters;
mod container_instances;
mod deploy;
mod placement;
mod services;
mod tags;
mod task_definitions;
mod tasks;

pub use container_instances::{Attribute, NodeInfo};

/// The ECS service of apid.
#[derive(Clone, Debug)]
pub struct Api {
    store: Store,
    cfg: ApidConfig,
    /// Bumped by every change a node or the scheduler should see at once (desired state,
    /// reported state); other replicas' changes are found by polling the store.
    changes: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// Each cluster's placement snapshot as of its generation (see the store's migration 3):
    /// placement reuses it while the generation is unchanged instead of reading every instance
    /// and task again.
    snapshots: std::sync::Arc<std::sync::Mutex<Snapshots>>,
}

/// Placement snapshots by cluster: (generation, candidates).
type Snapshots = std::collections::HashMap<String, (i64, Vec<placement::Candidate>)>;

/// Marks desired state changed for `instances`: their version goes up, so their nodes' next
/// (or pending) sync returns the new state.
pub(crate) async fn bump_desired(
    conn: &mut sqlx::AnyConnection,
    instances: impl IntoIterator<Item = &str>,
) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = instances.into_iter().collect();
    if ids.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
    let sql = format!(
        "UPDATE container_instances SET desired_version = desired_version + 1 WHERE id IN ({})",
        list.join(", ")
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in ids {
        q = q.bind(id);
    }
    q.execute(conn).await?;
    Ok(())
}

/// An ECS tag: the task definition parser's own, since tags ride in the same JSON.
pub use skiff_runtime::taskdef::Tag;

/// Seconds since the epoch, as the ECS API's timestamps.
pub(crate) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Fills `buf` from the kernel's random source (ids, request ids, access keys).
pub(crate) fn random_bytes(buf: &mut [u8]) {
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, buf))
        .is_ok();
    assert!(ok, "reading /dev/urandom");
}

/// A fresh id: 32 hex digits from the kernel's random source, as ECS's task and instance ids.
pub(crate) fn random_id() -> String {
    let mut b = [0u8; 16];
    random_bytes(&mut b);
    hex::encode(b)
}

/// The action's request from its body (an empty body is `{}`).
fn request<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.is_empty() {
        b"{}" as &[u8]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| ApiError::Serialization(e.to_string()))
}

fn response<T: Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::Server(format!("serialising a response: {e}")))
}

/// One page of `items` for `nextToken`/`maxResults` (at most `limit`, ECS's 100 by default).
fn page<T>(
    items: Vec<T>,
    next_token: Option<&str>,
    max_results: Option<i64>,
    limit: usize,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let max = match max_results {
        None => limit,
        Some(n) if n >= 1 && n as usize <= limit => n as usize,
        Some(n) => {
            return Err(ApiError::InvalidParameter(format!(
                "maxResults {n} must be between 1 and {limit}"
            )));
        }
    };
    let start = match next_token {
        None => 0,
        Some(t) => hex::decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("o:").and_then(|n| n.parse::<usize>().ok()))
            .ok_or_else(|| ApiError::InvalidParameter("nextToken is not valid".into()))?,
    };
    let total = items.len();
    let out: Vec<T> = items.into_iter().skip(start).take(max).collect();
    let next = (start + out.len() < total).then(|| hex::encode(format!("o:{}", start + out.len())));
    Ok((out, next))
}

impl Api {
    /// The service over `store`.
    pub fn new(store: Store, cfg: ApidConfig) -> Self {
        Self {
            store,
            cfg,
            changes: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
            snapshots: Default::default(),
        }
    }

    /// Wakes whoever waits for a change (node syncs, the scheduler).
    pub(crate) fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Takes the cluster's placement snapshot, with its generation (put back by
    /// [`Api::keep_snapshot`] once used; a placement that fails leaves none).
    fn snapshot(&self, cluster: &str) -> Option<(i64, Vec<placement::Candidate>)> {
        self.snapshots.lock().expect("not poisoned").remove(cluster)
    }

    /// Keeps `candidates` as the cluster's snapshot at `generation`.
    fn keep_snapshot(&self, cluster: &str, generation: i64, candidates: Vec<placement::Candidate>) {
        self.snapshots
            .lock()
            .expect("not poisoned")
            .insert(cluster.to_owned(), (generation, candidates));
    }

    /// A receiver woken by [`Api::changed`].
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store's connection pool.
    pub fn pool(&self) -> &AnyPool {
        self.store.pool()
    }

    /// The settings.
    pub fn config(&self) -> &ApidConfig {
        &self.cfg
    }

    /// `arn:aws:ecs:<region>:<account>:<resource>`.
    pub(crate) fn arn(&self, resource: &str) -> String {
        format!(
            "arn:aws:ecs:{}:{}:{resource}",
            self.cfg.region, self.cfg.account_id
        )
    }

    /// Runs `action` on its JSON `body`.
    pub async fn call(&self, action: &str, body: &[u8]) -> Result<Value, ApiError> {
        match action {
            "CreateCluster" => response(&self.create_cluster(request(body)?).await?),
            "DescribeClusters" => response(&self.describe_clusters(request(body)?).await?),
            "ListClusters" => response(&self.list_clusters(request(body)?).await?),
            "DeleteCluster" => response(&self.delete_cluster(request(body)?).await?),
            "RegisterTaskDefinition" => response(&self.register_task_definition(body).await?),
            "DescribeTaskDefinition" => {
                response(&self.describe_task_definition(request(body)?).await?)
            }
            "ListTaskDefinitions" => response(&self.list_task_definitions(request(body)?).await?),
            "ListTaskDefinitionFamilies" => {
                response(&self.list_task_definition_families(request(body)?).await?)
            }
            "DeregisterTaskDefinition" => {
                response(&self.deregister_task_definition(request(body)?).await?)
            }
            "DeleteTaskDefinitions" => {
                response(&self.delete_task_definitions(request(body)?).await?)
            }
            "ListContainerInstances" => self.list_container_instances(request(body)?).await,
            "DescribeContainerInstances" => self.describe_container_instances(request(body)?).await,
            "DeregisterContainerInstance" => {
                self.deregister_container_instance(request(body)?).await
            }
            "UpdateContainerInstancesState" => {
                self.update_container_instances_state(request(body)?).await
            }
            "PutAttributes" => self.put_attributes(request(body)?).await,
            "DeleteAttributes" => self.delete_attributes(request(body)?).await,
            "ListAttributes" => self.list_attributes(request(body)?).await,
            "TagResource" => self.tag_resource(request(body)?).await,
            "UntagResource" => self.untag_resource(request(body)?).await,
            "ListTagsForResource" => self.list_tags_for_resource(request(body)?).await,
            "RunTask" => self.run_task(request(body)?).await,
            "StartTask" => self.start_task(request(body)?).await,
            "StopTask" => self.stop_task(request(body)?).await,
            "DescribeTasks" => self.describe_tasks(request(body)?).await,
            "ListTasks" => self.list_tasks(request(body)?).await,
            "CreateService" => self.create_service(request(body)?).await,
            "UpdateService" => self.update_service(request(body)?).await,
            "DeleteService" => self.delete_service(request(body)?).await,
            "DescribeServices" => self.describe_services(request(body)?).await,
            "ListServices" => self.list_services(request(body)?).await,
            other => Err(ApiError::UnknownOperation(format!(
                "apid does not implement the ECS action {other}"
            ))),
        }
    }
}

/// Whether a Describe*'s `include` asks for tags (`TAGS`, the only value accepted here).
fn include_tags(include: &[String]) -> Result<bool, ApiError> {
    match include.iter().find(|i| *i != "TAGS") {
        Some(i) => Err(ApiError::InvalidParameter(format!(
            "include: {i} is not valid"
        ))),
        None => Ok(!include.is_empty()),
    }
}

/// Describe*'s answer from what was found for each wanted key: the descriptions, and a
/// MISSING failure with the ARN `arn` makes of each key not found.
fn found_or_missing(
    results: Vec<(&str, Option<Value>)>,
    arn: impl Fn(&str) -> String,
) -> (Vec<Value>, Vec<Failure>) {
    let (mut found, mut failures) = (Vec::new(), Vec::new());
    for (key, v) in results {
        match v {
            Some(v) => found.push(v),
            None => failures.push(Failure {
                arn: arn(key),
                reason: "MISSING".into(),
            }),
        }
    }
    (found, failures)
}

/// A `failures[]` entry of Describe* and batch actions.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// The resource asked for.
    pub arn: String,
    /// Why (`MISSING`).
    pub reason: String,
}

#[cfg(test)]
#[path = "tests.rs"]
pub(crate) mod tests;
