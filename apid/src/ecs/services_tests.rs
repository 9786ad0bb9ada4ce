//! Services over a real store (both backends) with the scheduler's passes and simulated nodes
//! that do what they are told through the sync protocol.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::super::tests::{call, fleet};
use super::*;
use crate::config::ApidConfig;
use crate::nodes::{SyncRequest, TaskEvent};
use crate::scheduler::Scheduler;
use crate::store::Store;
use crate::store::testing::both_stores;

/// A node that runs what it is told: each sync reports desired-RUNNING tasks RUNNING (or
/// `health`), desired-STOPPED ones STOPPED, unless it `fails` them.
#[derive(Default)]
struct Node {
    id: String,
    seq: i64,
    version: i64,
    reported: BTreeMap<String, String>,
}

impl Node {
    async fn sync(&mut self, api: &Api, fails: bool) {
        let s = api
            .sync(
                &self.id,
                SyncRequest {
                    version: self.version,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        self.version = s.version;
        let mut events = Vec::new();
        for t in s.tasks {
            let status = match (t.desired_status.as_str(), fails) {
                ("STOPPED", _) | (_, true) => "STOPPED",
                _ => "RUNNING",
            };
            if self.reported.get(&t.task_id).map(String::as_str) == Some(status) {
                continue;
            }
            self.seq += 1;
            events.push(TaskEvent {
                seq: self.seq,
                task_id: t.task_id.clone(),
                last_status: status.into(),
                stop_code: (fails && t.desired_status == "RUNNING")
                    .then(|| "TaskFailedToStart".into()),
                at: now(),
                ..Default::default()
            });
            self.reported.insert(t.task_id, status.into());
        }
        api.sync(
            &self.id,
            SyncRequest {
                version: self.version,
                events,
                wait_seconds: 0,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
}

struct Cluster {
    api: Api,
    scheduler: Scheduler,
    nodes: Vec<Node>,
}

impl Cluster {
    async fn new(store: Store, n: usize) -> Self {
        let api = Api::new(store, ApidConfig::default());
        let ids = fleet(&api, &vec!["x86_64"; n]).await;
        let scheduler = Scheduler::new(api.clone());
        assert!(scheduler.lease().await.unwrap());
        let nodes = ids
            .into_iter()
            .map(|id| Node {
                id,
                ..Default::default()
            })
            .collect();
        Self {
            api,
            scheduler,
            nodes,
        }
    }

    /// Scheduler passes and node syncs until nothing changes (at most `rounds`).
    async fn settle(&mut self, fails: bool) {
        for _ in 0..12 {
            self.scheduler.pass().await.unwrap();
            for n in &mut self.nodes {
                n.sync(&self.api, fails).await;
            }
        }
    }

    /// UpdateContainerInstancesState of node `k`.
    async fn set_state(&self, k: usize, status: &str) {
        let body =
            json!({"cluster": "edge", "containerInstances": [self.nodes[k].id], "status": status});
        call(&self.api, "UpdateContainerInstancesState", body)
            .await
            .unwrap();
    }

    async fn service(&self, name: &str) -> Value {
        let d = call(
            &self.api,
            "DescribeServices",
            json!({"cluster": "edge", "services": [name]}),
        )
        .await
        .unwrap();
        d["services"][0].clone()
    }

    async fn running_by_node(&self, name: &str) -> Vec<usize> {
        let l = call(
            &self.api,
            "ListTasks",
            json!({"cluster": "edge", "serviceName": name}),
        )
        .await
        .unwrap();
        let arns = l["taskArns"].as_array().unwrap().clone();
        let mut per = vec![0; self.nodes.len()];
        if arns.is_empty() {
            return per;
        }
        let d = call(
            &self.api,
            "DescribeTasks",
            json!({"cluster": "edge", "tasks": arns}),
        )
        .await
        .unwrap();
        for t in d["tasks"].as_array().unwrap() {
            let i = t["containerInstanceArn"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap();
            if t["lastStatus"] == "RUNNING" {
                per[self.nodes.iter().position(|n| n.id == i).unwrap()] += 1;
            }
        }
        per
    }
}

async fn a_replica_service_spreads_rolls_and_scales(store: Store) {
    let mut c = Cluster::new(store, 2).await;
    let s = call(
        &c.api,
        "CreateService",
        json!({"cluster": "edge", "serviceName": "web",
        "taskDefinition": "web", "desiredCount": 4,
        "deploymentConfiguration": {"maximumPercent": 150, "minimumHealthyPercent": 50}}),
    )
    .await
    .unwrap();
    assert_eq!(s["service"]["status"], "ACTIVE");
    assert_eq!(
        s["service"]["deployments"][0]["rolloutState"],
        "IN_PROGRESS"
    );
    let e = call(&c.api, "CreateService", json!({"cluster": "edge", "serviceName": "web", "taskDefinition": "web", "desiredCount": 1}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("idempotent"), "{e}");
    c.settle(false).await;
    let s = c.service("web").await;
    assert_eq!(
        (s["runningCount"].as_i64(), s["desiredCount"].as_i64()),
        (Some(4), Some(4))
    );
    assert_eq!(s["deployments"].as_array().unwrap().len(), 1);
    assert_eq!(s["deployments"][0]["rolloutState"], "COMPLETED");
    assert_eq!(
        c.running_by_node("web").await,
        [2, 2],
        "spread over the instances"
    );
    assert!(
        s["events"][0]["message"]
            .as_str()
            .unwrap()
            .contains("steady state"),
        "{}",
        s["events"]
    );
    // A new revision: a rolling deployment replaces every task.
    let old: Vec<String> = task_ids(&c.api).await;
    call(
        &c.api,
        "RegisterTaskDefinition",
        super::super::tests::web("web"),
    )
    .await
    .unwrap();
    let u = call(
        &c.api,
        "UpdateService",
        json!({"cluster": "edge", "service": "web", "taskDefinition": "web:2"}),
    )
    .await
    .unwrap();
    assert_eq!(u["service"]["deployments"].as_array().unwrap().len(), 2);
    // One pass: within 150% (6) and 50% healthy (2): two new start, two old stop.
    c.scheduler.pass().await.unwrap();
    let s = c.service("web").await;
    let deps = s["deployments"].as_array().unwrap();
    assert_eq!(deps[0]["status"], "PRIMARY");
    assert_eq!(
        deps[0]["pendingCount"].as_i64().unwrap() + deps[1]["runningCount"].as_i64().unwrap(),
        4
    );
    c.settle(false).await;
    let s = c.service("web").await;
    assert_eq!(s["runningCount"], 4);
    assert_eq!(s["deployments"].as_array().unwrap().len(), 1);
    assert!(s["taskDefinition"].as_str().unwrap().ends_with("web:2"));
    let new = task_ids(&c.api).await;
    assert!(new.iter().all(|t| !old.contains(t)), "every task replaced");
    // Tags, by the service's ARN.
    let arn = s["serviceArn"].clone();
    call(
        &c.api,
        "TagResource",
        json!({"resourceArn": arn, "tags": [{"key": "team", "value": "edge"}]}),
    )
    .await
    .unwrap();
    let t = call(&c.api, "ListTagsForResource", json!({"resourceArn": arn}))
        .await
        .unwrap();
    assert_eq!(t["tags"], json!([{"key": "team", "value": "edge"}]));
    let d = call(
        &c.api,
        "DescribeServices",
        json!({"cluster": "edge", "services": ["web"], "include": ["TAGS"]}),
    )
    .await
    .unwrap();
    assert_eq!(d["services"][0]["tags"][0]["key"], "team");
    // Scale in, then delete (a scaled-up service needs force).
    call(
        &c.api,
        "UpdateService",
        json!({"cluster": "edge", "service": "web", "desiredCount": 1}),
    )
    .await
    .unwrap();
    c.settle(false).await;
    assert_eq!(c.service("web").await["runningCount"], 1);
    let e = call(
        &c.api,
        "DeleteService",
        json!({"cluster": "edge", "service": "web"}),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("scaled above 0"), "{e}");
    let d = call(
        &c.api,
        "DeleteService",
        json!({"cluster": "edge", "service": "web", "force": true}),
    )
    .await
    .unwrap();
    assert_eq!(d["service"]["status"], "DRAINING");
    c.settle(false).await;
    assert_eq!(c.service("web").await["status"], "INACTIVE");
    assert!(task_ids(&c.api).await.is_empty());
    let l = call(&c.api, "ListServices", json!({"cluster": "edge"}))
        .await
        .unwrap();
    assert!(l["serviceArns"].as_array().unwrap().is_empty());
}

async fn task_ids(api: &Api) -> Vec<String> {
    let l = call(
        api,
        "ListTasks",
        json!({"cluster": "edge", "serviceName": "web"}),
    )
    .await
    .unwrap();
    l["taskArns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

async fn failures_trip_the_circuit_breaker_and_roll_back(store: Store) {
    let mut c = Cluster::new(store, 2).await;
    call(&c.api, "CreateService", json!({"cluster": "edge", "serviceName": "web",
        "taskDefinition": "web:1", "desiredCount": 2,
        "deploymentConfiguration": {"deploymentCircuitBreaker": {"enable": true, "rollback": true}}}))
    .await
    .unwrap();
    c.settle(false).await;
    call(
        &c.api,
        "RegisterTaskDefinition",
        super::super::tests::web("web"),
    )
    .await
    .unwrap();
    call(
        &c.api,
        "UpdateService",
        json!({"cluster": "edge", "service": "web", "taskDefinition": "web:2"}),
    )
    .await
    .unwrap();
    // Every web:2 task fails to start.
    for _ in 0..6 {
        c.scheduler.pass().await.unwrap();
        for n in &mut c.nodes {
            let fails = true;
            n.sync(&c.api, fails).await;
        }
    }
    let s = c.service("web").await;
    let events: Vec<&str> = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        events.iter().any(|e| e.contains("circuit breaker")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.contains("rolling back")),
        "{events:?}"
    );
    // Back on web:1, running.
    c.settle(false).await;
    let s = c.service("web").await;
    assert!(
        s["taskDefinition"].as_str().unwrap().ends_with("web:1"),
        "{s}"
    );
    assert_eq!(s["runningCount"], 2);
}

async fn draining_and_lost_nodes_have_their_tasks_replaced(store: Store) {
    let mut c = Cluster::new(store, 3).await;
    call(
        &c.api,
        "CreateService",
        json!({"cluster": "edge", "serviceName": "web",
        "taskDefinition": "web", "desiredCount": 3}),
    )
    .await
    .unwrap();
    c.settle(false).await;
    assert_eq!(c.running_by_node("web").await, [1, 1, 1]);
    // Drain node 0: its task moves; nothing else does.
    c.set_state(0, "DRAINING").await;
    c.settle(false).await;
    let per = c.running_by_node("web").await;
    assert_eq!((per[0], per[1] + per[2]), (0, 3), "{per:?}");
    // Node 2 goes silent past the grace period: its task is started elsewhere, and the copy
    // it still runs is stopped when it comes back.
    let n2 = c.nodes.pop().unwrap();
    sqlx::query("UPDATE container_instances SET agent_connected = 0, last_seen = $1 WHERE id = $2")
        .bind(now() - 3600.0)
        .bind(&n2.id)
        .execute(c.api.pool())
        .await
        .unwrap();
    c.settle(false).await;
    let s = c.service("web").await;
    assert_eq!(
        s["runningCount"], 3,
        "counted: two on node 1 plus the stale one not yet stopped? {s}"
    );
    let mut n2 = n2;
    let stale: Vec<String> = c
        .api
        .sync(
            &n2.id,
            SyncRequest {
                version: 0,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .tasks
        .iter()
        .filter(|t| t.desired_status == "STOPPED")
        .map(|t| t.task_id.clone())
        .collect();
    assert!(
        !stale.is_empty(),
        "the returning node is told to stop its stale copies"
    );
    n2.sync(&c.api, false).await;
    c.nodes.push(n2);
    c.settle(false).await;
    let per = c.running_by_node("web").await;
    assert_eq!(per.iter().sum::<usize>(), 3, "{per:?}");
}

async fn a_daemon_service_runs_one_task_per_active_node(store: Store) {
    let mut c = Cluster::new(store, 3).await;
    c.set_state(0, "DRAINING").await;
    call(
        &c.api,
        "CreateService",
        json!({"cluster": "edge", "serviceName": "agent",
        "taskDefinition": "web", "schedulingStrategy": "DAEMON"}),
    )
    .await
    .unwrap();
    c.settle(false).await;
    let s = c.service("agent").await;
    assert_eq!(
        (s["desiredCount"].as_i64(), s["runningCount"].as_i64()),
        (Some(2), Some(2)),
        "{s}"
    );
    assert_eq!(s["deployments"][0]["rolloutState"], "COMPLETED", "{s}");
    assert_eq!(c.running_by_node("agent").await, [0, 1, 1]);
    // Back to ACTIVE: the node gets its task.
    c.set_state(0, "ACTIVE").await;
    c.settle(false).await;
    assert_eq!(c.running_by_node("agent").await, [1, 1, 1]);
    assert_eq!(c.service("agent").await["desiredCount"], 3);
}

both_stores!(
    a_daemon_service_runs_one_task_per_active_node,
    a_replica_service_spreads_rolls_and_scales,
    failures_trip_the_circuit_breaker_and_roll_back,
    draining_and_lost_nodes_have_their_tasks_replaced,
);
