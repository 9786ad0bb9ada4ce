//! The sync protocol over a real store (both backends): desired state, events applied once,
//! the long poll woken by a change, deregistration.

use serde_json::json;

use super::*;
use crate::config::ApidConfig;
use crate::ecs::tests::{call, fleet, run};
use crate::store::Store;
use crate::store::testing::both_stores;

fn event(seq: i64, task: &str, status: &str) -> TaskEvent {
    TaskEvent {
        seq,
        task_id: task.into(),
        last_status: status.into(),
        at: now(),
        containers: vec![ContainerReport {
            name: "web".into(),
            last_status: status.into(),
            exit_code: (status == "STOPPED").then_some(3),
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn describe(api: &Api, task: &str) -> Value {
    let d = call(
        api,
        "DescribeTasks",
        json!({"cluster": "edge", "tasks": [task]}),
    )
    .await
    .unwrap();
    d["tasks"][0].clone()
}

async fn a_node_gets_its_tasks_and_reports_them_once(store: Store) {
    let api = Api::new(store, ApidConfig::default());
    let ids = fleet(&api, &["x86_64", "x86_64"]).await;
    let node = &ids[0];
    let first = api.sync(node, SyncRequest::default()).await.unwrap();
    assert!(first.tasks.is_empty());
    assert_eq!(first.instance_status, "ACTIVE");
    let (on, _) = run(
        &api,
        json!({"cluster": "edge", "taskDefinition": "web", "count": 4,
        "placementStrategy": [{"type": "spread", "field": "instanceId"}]}),
    )
    .await
    .unwrap();
    assert_eq!(on.iter().filter(|i| *i == node).count(), 2);
    let s = api
        .sync(
            node,
            SyncRequest {
                version: first.version,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(s.version > first.version);
    assert_eq!(s.tasks.len(), 2, "only this node's tasks");
    let t = &s.tasks[0];
    assert_eq!(t.desired_status, "RUNNING");
    assert_eq!(t.task_definition["family"], "web");
    // Events: applied in order, once; a resend after a lost answer changes nothing.
    let evs = vec![
        event(1, &t.task_id, "PENDING"),
        event(2, &t.task_id, "RUNNING"),
    ];
    let r = api
        .sync(
            node,
            SyncRequest {
                version: s.version,
                events: evs.clone(),
                wait_seconds: 0,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.acked_seq, 2);
    let d = describe(&api, &t.task_id).await;
    assert_eq!(d["lastStatus"], "RUNNING");
    assert_eq!(d["containers"][0]["lastStatus"], "RUNNING");
    assert!(d["startedAt"].is_number());
    let version = d["version"].clone();
    let r = api
        .sync(
            node,
            SyncRequest {
                version: s.version,
                events: evs,
                wait_seconds: 0,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.acked_seq, 2);
    assert_eq!(
        describe(&api, &t.task_id).await["version"],
        version,
        "not applied twice"
    );
    // A report never moves a task backwards; events out of order are refused.
    api.sync(
        node,
        SyncRequest {
            version: s.version,
            events: vec![event(3, &t.task_id, "PENDING")],
            wait_seconds: 0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(describe(&api, &t.task_id).await["lastStatus"], "RUNNING");
    let e = api
        .sync(
            node,
            SyncRequest {
                version: 0,
                events: vec![
                    event(9, &t.task_id, "RUNNING"),
                    event(8, &t.task_id, "RUNNING"),
                ],
                wait_seconds: 0,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("sequence"), "{e}");
    // A report for another node's task is ignored.
    let other = s
        .tasks
        .iter()
        .map(|t| t.task_id.clone())
        .collect::<Vec<_>>();
    let foreign = api
        .sync(&ids[1], SyncRequest::default())
        .await
        .unwrap()
        .tasks[0]
        .task_id
        .clone();
    assert!(!other.contains(&foreign));
    api.sync(
        node,
        SyncRequest {
            version: s.version,
            events: vec![event(4, &foreign, "STOPPED")],
            wait_seconds: 0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(describe(&api, &foreign).await["lastStatus"], "PROVISIONING");
    // The container exits: the task is STOPPED, desired STOPPED, its exit code kept, and it
    // leaves the node's desired state.
    let r = api
        .sync(
            node,
            SyncRequest {
                version: s.version,
                events: vec![event(5, &t.task_id, "STOPPED")],
                wait_seconds: 0,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.tasks.len(), 1);
    let d = describe(&api, &t.task_id).await;
    assert_eq!(
        (d["lastStatus"].as_str(), d["desiredStatus"].as_str()),
        (Some("STOPPED"), Some("STOPPED"))
    );
    assert_eq!(d["containers"][0]["exitCode"], 3);
}

async fn a_long_poll_wakes_on_a_change_and_deregistration_ends_syncs(store: Store) {
    let api = Api::new(store, ApidConfig::default());
    let ids = fleet(&api, &["x86_64"]).await;
    let node = ids[0].clone();
    let s = api.sync(&node, SyncRequest::default()).await.unwrap();
    // Nothing changes: the poll returns after its wait with the same version.
    let t0 = std::time::Instant::now();
    let same = api
        .sync(
            &node,
            SyncRequest {
                version: s.version,
                events: vec![],
                wait_seconds: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(same.version, s.version);
    assert!(t0.elapsed() >= std::time::Duration::from_millis(900));
    // A RunTask while the node waits wakes it with the task.
    let waiting = {
        let (api, node) = (api.clone(), node.clone());
        tokio::spawn(async move {
            api.sync(
                &node,
                SyncRequest {
                    version: s.version,
                    events: vec![],
                    wait_seconds: 15,
                    ..Default::default()
                },
            )
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    run(&api, json!({"cluster": "edge", "taskDefinition": "web"}))
        .await
        .unwrap();
    let woke = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("woken by the change, not by the 15 s wait")
        .unwrap()
        .unwrap();
    assert_eq!(woke.tasks.len(), 1);
    // StopTask reaches the node as desired STOPPED.
    let task = woke.tasks[0].task_id.clone();
    call(
        &api,
        "StopTask",
        json!({"cluster": "edge", "task": task, "reason": "enough"}),
    )
    .await
    .unwrap();
    let s = api
        .sync(
            &node,
            SyncRequest {
                version: woke.version,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(s.tasks[0].desired_status, "STOPPED");
    assert_eq!(s.tasks[0].stopped_reason.as_deref(), Some("enough"));
    // Draining shows; deregistration ends the node's syncs.
    call(
        &api,
        "UpdateContainerInstancesState",
        json!({"cluster": "edge", "containerInstances": [node], "status": "DRAINING"}),
    )
    .await
    .unwrap();
    assert_eq!(
        api.sync(&node, SyncRequest::default())
            .await
            .unwrap()
            .instance_status,
        "DRAINING"
    );
    call(
        &api,
        "DeregisterContainerInstance",
        json!({"cluster": "edge", "containerInstance": node, "force": true}),
    )
    .await
    .unwrap();
    let e = api.sync(&node, SyncRequest::default()).await.unwrap_err();
    assert!(matches!(e, NodeError::Deregistered { .. }), "{e}");
    assert_eq!(describe(&api, &task).await["lastStatus"], "STOPPED");
}

async fn placement_sees_what_a_stop_frees_and_a_drain_takes(store: Store) {
    let api = Api::new(store, ApidConfig::default());
    let ids = fleet(&api, &["x86_64"]).await;
    // 3900 MiB and 64 MiB tasks: 60 fit (placement's snapshot is reused between these calls).
    for _ in 0..6 {
        let (on, why) = run(
            &api,
            json!({"cluster": "edge", "taskDefinition": "web", "count": 10}),
        )
        .await
        .unwrap();
        assert_eq!((on.len(), why.len()), (10, 0));
    }
    let (on, why) = run(&api, json!({"cluster": "edge", "taskDefinition": "web"}))
        .await
        .unwrap();
    assert_eq!(
        (on.len(), why.as_slice()),
        (0, ["RESOURCE:MEMORY".to_owned()].as_slice())
    );
    // The node reports one stopped: its memory is free again.
    let s = api.sync(&ids[0], SyncRequest::default()).await.unwrap();
    let ev = event(1, &s.tasks[0].task_id, "STOPPED");
    api.sync(
        &ids[0],
        SyncRequest {
            version: s.version,
            events: vec![ev],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (on, _) = run(&api, json!({"cluster": "edge", "taskDefinition": "web"}))
        .await
        .unwrap();
    assert_eq!(on.len(), 1);
    // Drained (by another replica's write, as far as this snapshot knows): nothing placed.
    sqlx::query("UPDATE container_instances SET status = 'DRAINING'")
        .execute(api.pool())
        .await
        .unwrap();
    let e = run(&api, json!({"cluster": "edge", "taskDefinition": "web"}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("No Container Instances"), "{e}");
}

async fn a_node_replaces_its_capabilities_when_it_starts(store: Store) {
    let api = Api::new(store, ApidConfig::default());
    let ids = fleet(&api, &["x86_64"]).await;
    let node = &ids[0];
    call(&api, "PutAttributes", json!({"cluster": "edge", "attributes": [{"name": "site", "value": "lab", "targetId": node}]}))
        .await
        .unwrap();
    let names = async || -> Vec<String> {
        let l = call(
            &api,
            "ListAttributes",
            json!({"cluster": "edge", "targetType": "container-instance"}),
        )
        .await
        .unwrap();
        let mut n: Vec<String> = l["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_owned())
            .filter(|n| !n.starts_with("ecs.") || n.starts_with(NODE_CAPABILITY_PREFIX))
            .collect();
        n.sort();
        n
    };
    let fargate = json!({"family": "vm", "requiresCompatibilities": ["FARGATE"], "networkMode": "awsvpc", "cpu": "256", "memory": "256",
        "containerDefinitions": [{"name": "a", "image": "busybox"}]});
    call(&api, "RegisterTaskDefinition", fargate).await.unwrap();
    let sync = async |caps: Option<Vec<&str>>| {
        api.sync(
            node,
            SyncRequest {
                capabilities: caps.map(|c| c.into_iter().map(str::to_owned).collect()),
                ..Default::default()
            },
        )
        .await
    };
    // VMs configured after registration: reported at the next start, then placed on.
    sync(Some(vec!["ecs.capability.skiff.microvm"]))
        .await
        .unwrap();
    assert_eq!(names().await, ["ecs.capability.skiff.microvm", "site"]);
    let (on, _) = run(&api, json!({"cluster": "edge", "taskDefinition": "vm"}))
        .await
        .unwrap();
    assert_eq!(on, std::slice::from_ref(node));
    // None: unchanged; a start without VMs takes the capability back, the operator's stays.
    sync(None).await.unwrap();
    assert_eq!(names().await, ["ecs.capability.skiff.microvm", "site"]);
    sync(Some(vec![])).await.unwrap();
    assert_eq!(names().await, ["site"]);
    let (on, why) = run(&api, json!({"cluster": "edge", "taskDefinition": "vm"}))
        .await
        .unwrap();
    assert!(on.is_empty() && why[0].starts_with("ATTRIBUTE"), "{why:?}");
    // A node cannot set the operator's attributes this way.
    let e = sync(Some(vec!["site"])).await.unwrap_err();
    assert!(e.to_string().contains("ecs.capability.skiff."), "{e}");
    assert_eq!(names().await, ["site"]);
}

both_stores!(
    a_node_replaces_its_capabilities_when_it_starts,
    placement_sees_what_a_stop_frees_and_a_drain_takes,
    a_node_gets_its_tasks_and_reports_them_once,
    a_long_poll_wakes_on_a_change_and_deregistration_ends_syncs,
);
