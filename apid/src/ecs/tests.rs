//! The actions over a real store, without HTTP: each test runs on SQLite and on PostgreSQL.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::*;
use crate::store::Store;
use crate::store::testing::both_stores;

pub(crate) async fn call(api: &Api, action: &str, body: Value) -> Result<Value, ApiError> {
    api.call(action, body.to_string().as_bytes()).await
}

async fn clusters_create_describe_list_page_and_delete(store: Store) {
    let api = Api::new(store, ApidConfig::default());
    let c = call(
        &api,
        "CreateCluster",
        json!({"clusterName": "edge", "tags": [{"key": "site", "value": "a"}]}),
    )
    .await
    .unwrap();
    assert_eq!(
        c["cluster"]["clusterArn"],
        "arn:aws:ecs:us-east-1:000000000000:cluster/edge"
    );
    assert_eq!(c["cluster"]["status"], "ACTIVE");
    // Idempotent, and `default` when no name is given.
    call(&api, "CreateCluster", json!({"clusterName": "edge"}))
        .await
        .unwrap();
    call(&api, "CreateCluster", json!({})).await.unwrap();
    for n in ["a1", "a2", "a3"] {
        call(&api, "CreateCluster", json!({"clusterName": n}))
            .await
            .unwrap();
    }
    let d = call(
        &api,
        "DescribeClusters",
        json!({"clusters": ["edge", "arn:aws:ecs:us-east-1:000000000000:cluster/a1", "nope"]}),
    )
    .await
    .unwrap();
    assert_eq!(d["clusters"].as_array().unwrap().len(), 2);
    assert_eq!(
        d["failures"][0],
        json!({"arn": "arn:aws:ecs:us-east-1:000000000000:cluster/nope", "reason": "MISSING"})
    );
    let d = call(&api, "DescribeClusters", json!({})).await.unwrap();
    assert_eq!(d["clusters"][0]["clusterName"], "default");
    // Pages of two, following nextToken to the end.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = json!({"maxResults": 2});
        if let Some(t) = &token {
            req["nextToken"] = t.clone().into();
        }
        let p = call(&api, "ListClusters", req).await.unwrap();
        seen.extend(
            p["clusterArns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().rsplit('/').next().unwrap().to_owned()),
        );
        match p["nextToken"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["a1", "a2", "a3", "default", "edge"]);
    let e = call(&api, "ListClusters", json!({"maxResults": 101}))
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::InvalidParameter(_)), "{e:?}");
    let e = call(&api, "ListClusters", json!({"nextToken": "zz"}))
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::InvalidParameter(_)), "{e:?}");
    let gone = call(&api, "DeleteCluster", json!({"cluster": "edge"}))
        .await
        .unwrap();
    assert_eq!(gone["cluster"]["status"], "INACTIVE");
    let e = call(&api, "DeleteCluster", json!({"cluster": "edge"}))
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::ClusterNotFound), "{e:?}");
    let e = call(&api, "CreateCluster", json!({"clusterName": "bad name"}))
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::InvalidParameter(_)), "{e:?}");
    let e = call(
        &api,
        "CreateCluster",
        json!({"clusterName": "x", "bogus": 1}),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, ApiError::Serialization(ref m) if m.contains("bogus")),
        "{e:?}"
    );
    let e = call(&api, "RunFaster", json!({})).await.unwrap_err();
    assert!(matches!(e, ApiError::UnknownOperation(_)), "{e:?}");
}

pub(crate) fn web(family: &str) -> Value {
    json!({
        "family": family,
        "networkMode": "bridge",
        "containerDefinitions": [{"name": "web", "image": "busybox", "memory": 64, "portMappings": [{"containerPort": 80}]}],
        "tags": [{"key": "team", "value": "edge"}]
    })
}

async fn task_definitions_register_describe_list_deregister_delete(store: Store) {
    let api = Api::new(store, ApidConfig::default());
    for _ in 0..3 {
        call(&api, "RegisterTaskDefinition", web("web"))
            .await
            .unwrap();
    }
    let r = call(&api, "RegisterTaskDefinition", web("api"))
        .await
        .unwrap();
    assert_eq!(r["taskDefinition"]["revision"], 1);
    assert_eq!(
        r["taskDefinition"]["taskDefinitionArn"],
        "arn:aws:ecs:us-east-1:000000000000:task-definition/api:1"
    );
    assert_eq!(
        r["taskDefinition"]["containerDefinitions"][0]["portMappings"][0]["containerPort"],
        80
    );
    assert_eq!(r["tags"][0]["key"], "team");
    // The family alone is its latest active revision; a revision or an ARN names one.
    let d = call(
        &api,
        "DescribeTaskDefinition",
        json!({"taskDefinition": "web"}),
    )
    .await
    .unwrap();
    assert_eq!(d["taskDefinition"]["revision"], 3);
    assert!(d.get("tags").is_none());
    let d = call(&api, "DescribeTaskDefinition", json!({"taskDefinition": "arn:aws:ecs:us-east-1:000000000000:task-definition/web:2", "include": ["TAGS"]}))
        .await
        .unwrap();
    assert_eq!(
        (
            d["taskDefinition"]["revision"].clone(),
            d["tags"][0]["value"].clone()
        ),
        (json!(2), json!("edge"))
    );
    // What a node cannot run is refused with the field named.
    let mut bad = web("bad");
    bad["containerDefinitions"][0]["memory"] = json!(2);
    let e = call(&api, "RegisterTaskDefinition", bad).await.unwrap_err();
    assert!(
        matches!(&e, ApiError::Client(m) if m.contains("containerDefinitions[0].memory")),
        "{e:?}"
    );
    let mut bad = web("bad");
    bad["containerDefinitions"][0]["secrets"] = json!([]);
    let e = call(&api, "RegisterTaskDefinition", bad).await.unwrap_err();
    assert!(
        matches!(&e, ApiError::Client(m) if m.contains("secrets")),
        "{e:?}"
    );
    // Lists, filters, order.
    let l = call(
        &api,
        "ListTaskDefinitions",
        json!({"familyPrefix": "we", "sort": "DESC"}),
    )
    .await
    .unwrap();
    let arns: Vec<&str> = l["taskDefinitionArns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    assert_eq!(arns, ["web:3", "web:2", "web:1"]);
    let l = call(&api, "ListTaskDefinitions", json!({"maxResults": 2}))
        .await
        .unwrap();
    assert_eq!(l["taskDefinitionArns"].as_array().unwrap().len(), 2);
    assert!(l["nextToken"].is_string());
    // Deregister, then the bare family resolves to the latest active revision left.
    let g = call(
        &api,
        "DeregisterTaskDefinition",
        json!({"taskDefinition": "web:3"}),
    )
    .await
    .unwrap();
    assert_eq!(g["taskDefinition"]["status"], "INACTIVE");
    assert!(g["taskDefinition"]["deregisteredAt"].is_number());
    let d = call(
        &api,
        "DescribeTaskDefinition",
        json!({"taskDefinition": "web"}),
    )
    .await
    .unwrap();
    assert_eq!(d["taskDefinition"]["revision"], 2);
    let e = call(
        &api,
        "DeregisterTaskDefinition",
        json!({"taskDefinition": "web"}),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ApiError::Client(_)), "{e:?}");
    let f = call(&api, "ListTaskDefinitionFamilies", json!({}))
        .await
        .unwrap();
    assert_eq!(f["families"], json!(["api", "web"]));
    call(
        &api,
        "DeregisterTaskDefinition",
        json!({"taskDefinition": "api:1"}),
    )
    .await
    .unwrap();
    let f = call(
        &api,
        "ListTaskDefinitionFamilies",
        json!({"status": "INACTIVE"}),
    )
    .await
    .unwrap();
    assert_eq!(f["families"], json!(["api"]));
    // Delete: inactive ones only; the rest are failures.
    let x = call(
        &api,
        "DeleteTaskDefinitions",
        json!({"taskDefinitions": ["web:3", "web:1", "web:9"]}),
    )
    .await
    .unwrap();
    assert_eq!(x["taskDefinitions"][0]["status"], "DELETE_IN_PROGRESS");
    let reasons: Vec<&str> = x["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 2, "{x:#}");
    assert!(reasons[0].contains("still in ACTIVE status"));
    let e = call(
        &api,
        "DescribeTaskDefinition",
        json!({"taskDefinition": "web:3"}),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, ApiError::Client(m) if m == "Unable to describe task definition."),
        "{e:?}"
    );
}

fn node(arch: &str) -> NodeInfo {
    NodeInfo {
        cpu: 2048,
        memory: 3900,
        reserved_ports: vec![22],
        attributes: vec![
            Attribute {
                name: "ecs.cpu-architecture".into(),
                value: Some(arch.into()),
                target_type: None,
                target_id: None,
            },
            Attribute {
                name: "ecs.os-type".into(),
                value: Some("linux".into()),
                target_type: None,
                target_id: None,
            },
        ],
        agent_version: "skiff 0.1.0".into(),
        hostname: "box1".into(),
    }
}

async fn container_instances_drain_attributes_and_deregister(store: Store) {
    let api = Api::new(store, ApidConfig::default());
    let e = api
        .register_instance("edge", &node("x86_64"))
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::ClusterNotFound), "{e:?}");
    call(&api, "CreateCluster", json!({"clusterName": "edge"}))
        .await
        .unwrap();
    let a = api
        .register_instance("edge", &node("x86_64"))
        .await
        .unwrap();
    let b = api.register_instance("edge", &node("arm64")).await.unwrap();
    let l = call(&api, "ListContainerInstances", json!({"cluster": "edge"}))
        .await
        .unwrap();
    assert_eq!(l["containerInstanceArns"].as_array().unwrap().len(), 2);
    let d = call(
        &api,
        "DescribeContainerInstances",
        json!({"cluster": "edge", "containerInstances": [a.clone(), "nope"]}),
    )
    .await
    .unwrap();
    let inst = &d["containerInstances"][0];
    assert_eq!(inst["registeredResources"][1]["integerValue"], 3900);
    assert!(
        inst["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "ecs.cpu-architecture" && x["value"] == "x86_64")
    );
    assert_eq!(d["failures"][0]["reason"], "MISSING");
    // Drain.
    let u = call(
        &api,
        "UpdateContainerInstancesState",
        json!({"cluster": "edge", "containerInstances": [b.clone()], "status": "DRAINING"}),
    )
    .await
    .unwrap();
    assert_eq!(u["containerInstances"][0]["status"], "DRAINING");
    let l = call(
        &api,
        "ListContainerInstances",
        json!({"cluster": "edge", "status": "DRAINING"}),
    )
    .await
    .unwrap();
    assert_eq!(l["containerInstanceArns"].as_array().unwrap().len(), 1);
    // Filtered by the cluster query language.
    let l = call(
        &api,
        "ListContainerInstances",
        json!({"cluster": "edge", "filter": "attribute:ecs.cpu-architecture == arm64"}),
    )
    .await
    .unwrap();
    assert_eq!(l["containerInstanceArns"].as_array().unwrap().len(), 1);
    let e = call(
        &api,
        "ListContainerInstances",
        json!({"cluster": "edge", "filter": "attribute:x =="}),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, ApiError::InvalidParameter(m) if m.contains("position 14")),
        "{e:?}"
    );
    // Custom attributes.
    call(&api, "PutAttributes", json!({"cluster": "edge", "attributes": [{"name": "site", "value": "lab", "targetId": a.clone()}]}))
        .await
        .unwrap();
    let l = call(
        &api,
        "ListAttributes",
        json!({"cluster": "edge", "targetType": "container-instance", "attributeName": "site"}),
    )
    .await
    .unwrap();
    assert_eq!(l["attributes"][0]["value"], "lab");
    call(
        &api,
        "DeleteAttributes",
        json!({"cluster": "edge", "attributes": [{"name": "site", "targetId": a.clone()}]}),
    )
    .await
    .unwrap();
    let l = call(
        &api,
        "ListAttributes",
        json!({"cluster": "edge", "targetType": "container-instance", "attributeName": "site"}),
    )
    .await
    .unwrap();
    assert!(l["attributes"].as_array().unwrap().is_empty());
    let e = call(
        &api,
        "PutAttributes",
        json!({"cluster": "edge", "attributes": [{"name": "x", "targetId": "nope"}]}),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ApiError::InvalidParameter(_)), "{e:?}");
    // Deregister: INACTIVE, gone from the default listing.
    let g = call(
        &api,
        "DeregisterContainerInstance",
        json!({"cluster": "edge", "containerInstance": a.clone()}),
    )
    .await
    .unwrap();
    assert_eq!(g["containerInstance"]["status"], "INACTIVE");
    let l = call(&api, "ListContainerInstances", json!({"cluster": "edge"}))
        .await
        .unwrap();
    assert_eq!(l["containerInstanceArns"].as_array().unwrap().len(), 1);
}

/// `edge` with instances of these architectures (2048 cpu, 3900 MiB each) and the `web`
/// definition (64 MiB, no fixed port); the instance ids.
pub(crate) async fn fleet(api: &Api, archs: &[&str]) -> Vec<String> {
    call(api, "CreateCluster", json!({"clusterName": "edge"}))
        .await
        .unwrap();
    call(api, "RegisterTaskDefinition", web("web"))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for a in archs {
        ids.push(api.register_instance("edge", &node(a)).await.unwrap());
    }
    ids
}

/// RunTask's placed tasks' instance ids, and its failures' reasons.
pub(crate) async fn run(api: &Api, body: Value) -> Result<(Vec<String>, Vec<String>), ApiError> {
    let r = call(api, "RunTask", body).await?;
    let on = r["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let arn = t["containerInstanceArn"].as_str().unwrap();
            arn.rsplit('/').next().unwrap().to_owned()
        })
        .collect();
    let why = r["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["reason"].as_str().unwrap().to_owned())
        .collect();
    Ok((on, why))
}

fn counts(on: &[String], ids: &[String]) -> Vec<usize> {
    ids.iter()
        .map(|i| on.iter().filter(|x| *x == i).count())
        .collect()
}

async fn run_task_places_by_strategy_constraint_architecture_and_resources(store: Store) {
    let api = Api::new(store, ApidConfig::default());
    let ids = fleet(&api, &["x86_64", "x86_64", "arm64"]).await;
    let (a, b) = (&ids[0], &ids[1]);
    // Spread over the two x86 instances: 2 and 1.
    let x86 =
        json!([{"type": "memberOf", "expression": "attribute:ecs.cpu-architecture == x86_64"}]);
    let (on, why) = run(&api, json!({"cluster": "edge", "taskDefinition": "web", "count": 3,
        "placementStrategy": [{"type": "spread", "field": "instanceId"}], "placementConstraints": x86}))
    .await
    .unwrap();
    let mut c = counts(&on, &ids);
    c[..2].sort();
    assert_eq!((c, why.len()), (vec![1, 2, 0], 0), "{on:?}");
    // Binpack fills one instance (the fullest: the one with two tasks).
    let (on, _) = run(&api, json!({"cluster": "edge", "taskDefinition": "web:1", "count": 3, "group": "packed",
        "placementStrategy": [{"type": "binpack", "field": "memory"}], "placementConstraints": x86}))
    .await
    .unwrap();
    assert_eq!(on.iter().collect::<BTreeSet<_>>().len(), 1, "{on:?}");
    // The architecture of runtimePlatform, and memberOf by attribute, choose the arm node.
    let mut arm = web("arm");
    arm["runtimePlatform"] = json!({"cpuArchitecture": "ARM64"});
    call(&api, "RegisterTaskDefinition", arm).await.unwrap();
    let (on, _) = run(
        &api,
        json!({"cluster": "edge", "taskDefinition": "arm", "count": 2}),
    )
    .await
    .unwrap();
    assert_eq!(counts(&on, &ids), [0, 0, 2]);
    // DRAINING gets nothing: with the arm node draining, its tasks have nowhere to go.
    call(&api, "UpdateContainerInstancesState",
        json!({"cluster": "edge", "containerInstances": [ids[2].clone(), a.clone()], "status": "DRAINING"}))
        .await
        .unwrap();
    let (on, why) = run(&api, json!({"cluster": "edge", "taskDefinition": "arm"}))
        .await
        .unwrap();
    assert_eq!((on.len(), why), (0, vec!["ATTRIBUTE".to_owned()]));
    let (on, _) = run(
        &api,
        json!({"cluster": "edge", "taskDefinition": "web", "count": 4}),
    )
    .await
    .unwrap();
    assert_eq!(on, vec![b.clone(); 4]);
    // Memory runs out: 3900 MiB, 1000 MiB a task, 6 x 64 MiB already on b.
    let mut big = web("big");
    big["containerDefinitions"][0]["memory"] = json!(1000);
    call(&api, "RegisterTaskDefinition", big).await.unwrap();
    let (on, why) = run(
        &api,
        json!({"cluster": "edge", "taskDefinition": "big", "count": 5}),
    )
    .await
    .unwrap();
    assert_eq!((on.len(), why), (3, vec!["RESOURCE:MEMORY".to_owned()]));
    // ECS's refusals.
    let bad = [
        json!({"cluster": "edge", "taskDefinition": "web", "count": 11}),
        json!({"cluster": "edge", "taskDefinition": "web", "placementStrategy": [{"type": "binpack"}]}),
        json!({"cluster": "edge", "taskDefinition": "web", "placementConstraints": [{"type": "memberOf", "expression": "attribute:x in [a"}]}),
        json!({"cluster": "edge", "taskDefinition": "web", "overrides": {"containerOverrides": [{"name": "nope", "command": ["x"]}]}}),
    ];
    for body in bad {
        let e = call(&api, "RunTask", body.clone()).await.unwrap_err();
        assert!(matches!(e, ApiError::InvalidParameter(_)), "{body}: {e:?}");
    }
    let e = call(
        &api,
        "RunTask",
        json!({"cluster": "edge", "taskDefinition": "nope"}),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ApiError::Client(_)), "{e:?}");
    call(
        &api,
        "UpdateContainerInstancesState",
        json!({"cluster": "edge", "containerInstances": [b.clone()], "status": "DRAINING"}),
    )
    .await
    .unwrap();
    let e = call(
        &api,
        "RunTask",
        json!({"cluster": "edge", "taskDefinition": "web"}),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, ApiError::InvalidParameter(m) if m.contains("No Container Instances")),
        "{e:?}"
    );
}

async fn tasks_start_describe_list_and_stop(store: Store) {
    let api = Api::new(store, ApidConfig::default());
    let ids = fleet(&api, &["x86_64", "x86_64"]).await;
    let r = call(
        &api,
        "RunTask",
        json!({"cluster": "edge", "taskDefinition": "web", "count": 2,
        "startedBy": "ci", "tags": [{"key": "k", "value": "v"}],
        "overrides": {"containerOverrides": [{"name": "web", "command": ["sleep", "1"]}]}}),
    )
    .await
    .unwrap();
    let t = &r["tasks"][0];
    let arn = t["taskArn"].as_str().unwrap().to_owned();
    assert!(
        arn.starts_with("arn:aws:ecs:us-east-1:000000000000:task/edge/"),
        "{arn}"
    );
    assert_eq!(arn.rsplit('/').next().unwrap().len(), 32);
    assert_eq!(
        (
            &t["lastStatus"],
            &t["desiredStatus"],
            &t["launchType"],
            &t["memory"],
            &t["group"]
        ),
        (
            &json!("PROVISIONING"),
            &json!("RUNNING"),
            &json!("EXTERNAL"),
            &json!("64"),
            &json!("family:web")
        )
    );
    assert_eq!(
        t["taskDefinitionArn"],
        "arn:aws:ecs:us-east-1:000000000000:task-definition/web:1"
    );
    assert_eq!(t["containers"][0]["name"], "web");
    assert_eq!(t["containers"][0]["image"], "busybox");
    assert_eq!(t["overrides"]["containerOverrides"][0]["command"][1], "1");
    // StartTask: on the instance named, MISSING for an unknown one.
    let s = call(
        &api,
        "StartTask",
        json!({"cluster": "edge", "taskDefinition": "web",
        "containerInstances": [ids[1].clone(), "0123"], "startedBy": "manual"}),
    )
    .await
    .unwrap();
    assert!(
        s["tasks"][0]["containerInstanceArn"]
            .as_str()
            .unwrap()
            .ends_with(&ids[1])
    );
    assert_eq!(s["failures"][0]["reason"], "MISSING");
    // Describe: tags only when asked, MISSING for the unknown.
    let d = call(
        &api,
        "DescribeTasks",
        json!({"cluster": "edge", "tasks": [arn.clone(), "feed"], "include": ["TAGS"]}),
    )
    .await
    .unwrap();
    assert_eq!(d["tasks"][0]["tags"][0]["key"], "k");
    assert_eq!(d["tasks"][0]["startedBy"], "ci");
    assert_eq!(
        d["failures"][0],
        json!({"arn": "arn:aws:ecs:us-east-1:000000000000:task/edge/feed", "reason": "MISSING"})
    );
    let d = call(
        &api,
        "DescribeTasks",
        json!({"cluster": "edge", "tasks": [arn.clone()]}),
    )
    .await
    .unwrap();
    assert!(d["tasks"][0].get("tags").is_none());
    // Stop: desired STOPPED with the reason; the node does the rest.
    let s = call(
        &api,
        "StopTask",
        json!({"cluster": "edge", "task": arn.clone(), "reason": "done"}),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            &s["task"]["desiredStatus"],
            &s["task"]["stoppedReason"],
            &s["task"]["stopCode"]
        ),
        (&json!("STOPPED"), &json!("done"), &json!("UserInitiated"))
    );
    let e = call(&api, "StopTask", json!({"cluster": "edge", "task": "feed"}))
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::InvalidParameter(_)), "{e:?}");
    // List: RUNNING by default, then the filters.
    let list = |body: Value| {
        let api = api.clone();
        async move {
            let l = call(&api, "ListTasks", body).await.unwrap();
            l["taskArns"].as_array().unwrap().len()
        }
    };
    assert_eq!(list(json!({"cluster": "edge"})).await, 2);
    assert_eq!(
        list(json!({"cluster": "edge", "desiredStatus": "STOPPED"})).await,
        1
    );
    assert_eq!(
        list(json!({"cluster": "edge", "startedBy": "manual"})).await,
        1
    );
    assert_eq!(list(json!({"cluster": "edge", "family": "web"})).await, 2);
    assert_eq!(list(json!({"cluster": "edge", "family": "api"})).await, 0);
    assert_eq!(
        list(json!({"cluster": "edge", "serviceName": "web"})).await,
        0
    );
    // The first task is stopped; the second and the started one may be on ids[1].
    let on_1 = usize::from(
        r["tasks"][1]["containerInstanceArn"]
            .as_str()
            .unwrap()
            .ends_with(&ids[1]),
    );
    assert_eq!(
        list(json!({"cluster": "edge", "containerInstance": ids[1].clone()})).await,
        1 + on_1
    );
    let l = call(
        &api,
        "ListTasks",
        json!({"cluster": "edge", "maxResults": 1}),
    )
    .await
    .unwrap();
    assert_eq!(l["taskArns"].as_array().unwrap().len(), 1);
    assert!(l["nextToken"].is_string());
    // Counts and what is left: three tasks hold their reservations until the node stops them.
    let c = call(&api, "DescribeClusters", json!({"clusters": ["edge"]}))
        .await
        .unwrap();
    let c = &c["clusters"][0];
    assert_eq!(
        (
            &c["registeredContainerInstancesCount"],
            &c["pendingTasksCount"],
            &c["runningTasksCount"]
        ),
        (&json!(2), &json!(3), &json!(0))
    );
    let d = call(
        &api,
        "DescribeContainerInstances",
        json!({"cluster": "edge", "containerInstances": ids.clone()}),
    )
    .await
    .unwrap();
    let sum = |field: &str| -> i64 {
        d["containerInstances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.pointer(field).unwrap().as_i64().unwrap())
            .sum()
    };
    assert_eq!(
        (
            sum("/remainingResources/1/integerValue"),
            sum("/pendingTasksCount")
        ),
        (2 * 3900 - 3 * 64, 3)
    );
    let e = call(
        &api,
        "ListTasks",
        json!({"cluster": "edge", "desiredStatus": "GONE"}),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ApiError::InvalidParameter(_)), "{e:?}");
}

async fn concurrent_run_tasks_never_over_commit_memory(store: Store) {
    let api = Api::new(store, ApidConfig::default());
    fleet(&api, &["x86_64"]).await;
    let mut half = web("half");
    half["containerDefinitions"][0]["memory"] = json!(500);
    call(&api, "RegisterTaskDefinition", half).await.unwrap();
    // 4 x 3 tasks of 500 MiB want 6000 MiB; the node has 3900: 7 fit, never more.
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move {
                run(
                    &api,
                    json!({"cluster": "edge", "taskDefinition": "half", "count": 3}),
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let mut placed = 0;
    for r in runs {
        let (on, why) = r.await.unwrap();
        placed += on.len();
        assert!(why.iter().all(|w| w == "RESOURCE:MEMORY"), "{why:?}");
    }
    assert_eq!(placed, 7);
    let (reserved,): (i64,) = sqlx::query_as("SELECT CAST(SUM(memory) AS BIGINT) FROM tasks")
        .fetch_one(api.pool())
        .await
        .unwrap();
    assert_eq!(reserved, 3500);
}

async fn tags_on_clusters_task_definitions_and_instances(store: Store) {
    let api = Api::new(store, ApidConfig::default());
    let c = call(&api, "CreateCluster", json!({"clusterName": "edge"}))
        .await
        .unwrap();
    let arn = c["cluster"]["clusterArn"].as_str().unwrap().to_owned();
    call(&api, "TagResource", json!({"resourceArn": arn, "tags": [{"key": "site", "value": "a"}, {"key": "env", "value": "lab"}]}))
        .await
        .unwrap();
    call(
        &api,
        "TagResource",
        json!({"resourceArn": arn, "tags": [{"key": "site", "value": "b"}]}),
    )
    .await
    .unwrap();
    call(
        &api,
        "UntagResource",
        json!({"resourceArn": arn, "tagKeys": ["env"]}),
    )
    .await
    .unwrap();
    let l = call(&api, "ListTagsForResource", json!({"resourceArn": arn}))
        .await
        .unwrap();
    assert_eq!(l["tags"], json!([{"key": "site", "value": "b"}]));
    let e = call(
        &api,
        "TagResource",
        json!({"resourceArn": arn, "tags": [{"key": "aws:x", "value": "1"}]}),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ApiError::InvalidParameter(_)), "{e:?}");
    let td = call(&api, "RegisterTaskDefinition", web("web"))
        .await
        .unwrap();
    let td_arn = td["taskDefinition"]["taskDefinitionArn"]
        .as_str()
        .unwrap()
        .to_owned();
    let l = call(&api, "ListTagsForResource", json!({"resourceArn": td_arn}))
        .await
        .unwrap();
    assert_eq!(l["tags"][0]["key"], "team");
    let id = api
        .register_instance("edge", &node("x86_64"))
        .await
        .unwrap();
    let inst = format!("arn:aws:ecs:us-east-1:000000000000:container-instance/edge/{id}");
    call(
        &api,
        "TagResource",
        json!({"resourceArn": inst, "tags": [{"key": "rack", "value": "3"}]}),
    )
    .await
    .unwrap();
    let d = call(
        &api,
        "DescribeContainerInstances",
        json!({"cluster": "edge", "containerInstances": [id]}),
    )
    .await
    .unwrap();
    assert_eq!(d["containerInstances"][0]["tags"][0]["key"], "rack");
    for bad in [
        "arn:aws:ecs:us-east-1:000000000000:cluster/nope",
        "arn:aws:s3:::bucket",
        "x",
    ] {
        let e = call(&api, "ListTagsForResource", json!({"resourceArn": bad}))
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::InvalidParameter(_)), "{bad}: {e:?}");
    }
}

both_stores!(
    clusters_create_describe_list_page_and_delete,
    task_definitions_register_describe_list_deregister_delete,
    container_instances_drain_attributes_and_deregister,
    run_task_places_by_strategy_constraint_architecture_and_resources,
    tasks_start_describe_list_and_stop,
    concurrent_run_tasks_never_over_commit_memory,
    tags_on_clusters_task_definitions_and_instances,
);
