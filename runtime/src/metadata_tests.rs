use std::net::Ipv4Addr;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::Request;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use skiff_netd::{Attachment, TaskNetwork};
use tower::ServiceExt;

use super::*;
use crate::lifecycle::TaskStatus;
use crate::orchestration::Health;
use crate::record::ContainerStatus;
use crate::stats::{CpuStats, MemoryStats, PidsStats};
use crate::taskdef::TaskDefinition;
use crate::tasknet::NetworkBinding;

const TASK: &str = "0123456789abcdef0123456789abcdef";
const WEB_TOKEN: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const JOB_TOKEN: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const ADDRESS: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 5);

fn container(name: &str, token: &str) -> ContainerRecord {
    ContainerRecord {
        name: name.into(),
        image: "local/bb:1".into(),
        image_digest: Some("sha256:feed".into()),
        runtime_id: format!("{TASK}-{name}"),
        last_status: ContainerStatus::Running,
        exit_code: None,
        reason: None,
        health_status: Health::Healthy,
        shim: None,
        pid: None,
        started_at: Some(1_795_324_444.5),
        finished_at: None,
        restart_count: 2,
        network_bindings: vec![NetworkBinding {
            bind_ip: "0.0.0.0".into(),
            container_port: 80,
            host_port: 49153,
            protocol: skiff_netd::Protocol::Tcp,
        }],
        network_interfaces: vec![],
        metadata_token: token.into(),
    }
}

/// A running bridge task: `web` (port 80, health check, restart policy, labels, log options) and
/// `job`, which exited 3.
fn bridge_task() -> TaskRecord {
    let def = TaskDefinition::from_json(
        r#"{"family":"shop","networkMode":"bridge","cpu":"512","memory":"256","containerDefinitions":[
            {"name":"web","image":"local/bb:1","cpu":256,"memory":64,
             "portMappings":[{"containerPort":80}],
             "healthCheck":{"command":["CMD","true"]},
             "restartPolicy":{"enabled":true},
             "dockerLabels":{"team":"a","com.amazonaws.ecs.cluster":"spoofed"},
             "logConfiguration":{"logDriver":"json-file","options":{"max-size":"1m"}}},
            {"name":"job","image":"local/bb:1","essential":false}]}"#,
    )
    .unwrap();
    let mut job = container("job", JOB_TOKEN);
    job.last_status = ContainerStatus::Stopped;
    job.exit_code = Some(3);
    job.finished_at = Some(1_795_324_450.0);
    job.network_bindings = vec![];
    TaskRecord {
        task_id: TASK.into(),
        task_definition: def,
        status: TaskStatus::Running,
        desired_status: "RUNNING".into(),
        containers: vec![container("web", WEB_TOKEN), job],
        health_status: Health::Healthy,
        pause: None,
        vm: None,
        cgroup: Some("/skiff/t".into()),
        created_at: 1_795_324_443.0,
        started_at: Some(1_795_324_445.0),
        stopping_at: None,
        stopped_at: None,
        attachments: vec![],
        network: Some(TaskNetwork {
            netns: "/run/skiff/netns/t".into(),
            attachment: Attachment::Bridge,
            address: ADDRESS,
            subnet: "172.30.0.0/16".parse().unwrap(),
            gateway: Ipv4Addr::new(172, 30, 0, 1),
            host_link: "skb0123456789ab".into(),
            meta_address: None,
            ports: vec![],
        }),
        origin: None,
    }
}

fn with_mode(mut rec: TaskRecord, mode: &str) -> TaskRecord {
    rec.task_definition.network_mode = serde_json::from_value(json!(mode)).unwrap();
    rec
}

fn cgroup(usage_ns: u64, limit: Option<u64>) -> CgroupStats {
    CgroupStats {
        cpu: CpuStats {
            usage_ns: Some(usage_ns),
            user_ns: Some(usage_ns / 2),
            system_ns: Some(usage_ns / 4),
            ..Default::default()
        },
        memory: MemoryStats {
            usage: Some(8 << 20),
            limit,
            max_usage: Some(9 << 20),
            inactive_file: Some(1 << 20),
        },
        pids: PidsStats {
            current: Some(3),
            limit: Some(2048),
        },
    }
}

/// Records and stats held in memory, the cpu counter of `web` advancing at each read.
#[derive(Clone)]
struct Fake {
    rec: TaskRecord,
    reads: Arc<Mutex<u64>>,
}

impl Fake {
    fn new(rec: TaskRecord) -> Self {
        Self {
            rec,
            reads: Arc::default(),
        }
    }
}

impl Tasks for Fake {
    fn token_owner(&self, token: &str) -> Option<TokenOwner> {
        let c = self
            .rec
            .containers
            .iter()
            .find(|c| c.metadata_token == token)?;
        Some(TokenOwner {
            task: self.rec.clone(),
            container: c.name.clone(),
            task_dir: PathBuf::from("/nonexistent"),
        })
    }

    fn stats(&self, task_id: &str) -> Option<TaskStats> {
        let mut reads = self.reads.lock().unwrap();
        *reads += 1;
        Some(TaskStats {
            task_id: task_id.into(),
            family: "shop".into(),
            revision: 0,
            task: cgroup(0, Some(256 << 20)),
            containers: vec![("web".into(), cgroup(*reads * 1_000_000, None))],
        })
    }
}

async fn get(app: &Router, peer: IpAddr, path: &str) -> (StatusCode, Value) {
    let app = app
        .clone()
        .layer(MockConnectInfo(SocketAddr::new(peer, 40000)));
    let res = app
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[test]
fn the_container_document_in_the_agent_s_shape() {
    let rec = bridge_task();
    let doc = serde_json::to_value(container_doc(
        &rec,
        &rec.containers[0],
        &networks(&rec, &["192.0.2.53".into()]),
    ))
    .unwrap();
    let arn = format!("arn:aws:ecs:local:000000000000:task/default/{TASK}");
    assert_eq!(
        doc,
        json!({
            "DockerId": format!("{TASK}-web"),
            "Name": "web",
            "DockerName": format!("{TASK}-web"),
            "Image": "local/bb:1",
            "ImageID": "sha256:feed",
            "Ports": [{"ContainerPort": 80, "Protocol": "tcp", "HostPort": 49153, "HostIp": "0.0.0.0"}],
            "Labels": {
                "team": "a",
                "com.amazonaws.ecs.cluster": "default",
                "com.amazonaws.ecs.container-name": "web",
                "com.amazonaws.ecs.task-arn": arn,
                "com.amazonaws.ecs.task-definition-family": "shop",
                "com.amazonaws.ecs.task-definition-version": "0",
            },
            "DesiredStatus": "RUNNING",
            "KnownStatus": "RUNNING",
            "Limits": {"CPU": 256.0, "Memory": 64},
            "CreatedAt": "2026-11-22T05:14:03.000000000Z",
            "StartedAt": "2026-11-22T05:14:04.500000000Z",
            "Type": "NORMAL",
            "Health": {"status": "HEALTHY"},
            "LogDriver": "json-file",
            "LogOptions": {"max-size": "1m"},
            "ContainerARN": format!("arn:aws:ecs:local:000000000000:container/default/{TASK}/web"),
            "Networks": [{
                "NetworkMode": "bridge",
                "IPv4Addresses": ["172.30.0.5"],
                "AttachmentIndex": 0,
                "IPv4SubnetCIDRBlock": "172.30.0.0/16",
                "DomainNameServers": ["192.0.2.53"],
                "PrivateDNSName": "ip-172-30-0-5",
                "SubnetGatewayIpv4Address": "172.30.0.1/16",
            }],
            "RestartCount": 2,
        })
    );
    // A stopped container without health check or restart policy: its exit, no health, no
    // restart count; limits 0 as the agent reports unset ones.
    let job = serde_json::to_value(container_doc(&rec, &rec.containers[1], &[])).unwrap();
    assert_eq!(job["KnownStatus"], "STOPPED");
    assert_eq!(job["ExitCode"], 3);
    assert_eq!(job["FinishedAt"], "2026-11-22T05:14:10.000000000Z");
    assert_eq!(job["Limits"], json!({"CPU": 0.0, "Memory": 0}));
    for absent in ["Health", "RestartCount", "Ports", "LogOptions"] {
        assert!(job.get(absent).is_none(), "{absent} in {job:#}");
    }
}

#[test]
fn the_task_document() {
    let doc = serde_json::to_value(task_doc(&bridge_task(), &[])).unwrap();
    assert_eq!(doc["Cluster"], "default");
    assert_eq!(
        doc["TaskARN"],
        format!("arn:aws:ecs:local:000000000000:task/default/{TASK}")
    );
    assert_eq!(doc["Family"], "shop");
    assert_eq!(doc["Revision"], "0");
    assert_eq!(doc["KnownStatus"], "RUNNING");
    assert_eq!(doc["DesiredStatus"], "RUNNING");
    assert_eq!(doc["LaunchType"], "EXTERNAL");
    // Task CPU in vCPU, as the agent gives it.
    assert_eq!(doc["Limits"], json!({"CPU": 0.5, "Memory": 256}));
    let names: Vec<&Value> = doc["Containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["Name"])
        .collect();
    assert_eq!(names, ["web", "job"]);
    assert_eq!(
        doc["Containers"][1]["Networks"][0]["IPv4Addresses"],
        json!(["172.30.0.5"])
    );
    for absent in [
        "PullStartedAt",
        "AvailabilityZone",
        "ServiceName",
        "ExecutionStoppedAt",
    ] {
        assert!(doc.get(absent).is_none(), "{absent} in {doc:#}");
    }
    // A host task has no address of its own; no task limits, no Limits.
    let mut host = with_mode(bridge_task(), "host");
    host.network = None;
    host.task_definition.cpu = None;
    host.task_definition.memory = None;
    let doc = serde_json::to_value(task_doc(&host, &[])).unwrap();
    assert_eq!(
        doc["Containers"][0]["Networks"],
        json!([{"NetworkMode": "host"}])
    );
    assert!(doc.get("Limits").is_none());
}

#[test]
fn a_placed_task_carries_the_control_plane_s_names() {
    let mut rec = bridge_task();
    let arn = format!("arn:aws:ecs:eu-west-1:123456789012:task/edge/{TASK}");
    rec.origin = Some(crate::record::Origin {
        task_arn: arn.clone(),
        task_definition_arn: "arn:aws:ecs:eu-west-1:123456789012:task-definition/shop:3".into(),
        started_by: None,
        replaces: None,
    });
    let doc = serde_json::to_value(task_doc(&rec, &[])).unwrap();
    assert_eq!(doc["Cluster"], "edge");
    assert_eq!(doc["TaskARN"], arn.as_str());
    assert_eq!(doc["Revision"], "3");
    let c = &doc["Containers"][0];
    assert_eq!(c["Labels"]["com.amazonaws.ecs.cluster"], "edge");
    assert_eq!(
        c["Labels"]["com.amazonaws.ecs.task-definition-version"],
        "3"
    );
    assert_eq!(
        c["ContainerARN"],
        format!("arn:aws:ecs:eu-west-1:123456789012:container/edge/{TASK}/web")
    );
}

#[test]
fn who_may_present_a_token() {
    let ip = |a: [u8; 4]| IpAddr::from(a);
    let bridge = bridge_task();
    assert!(peer_allowed(&bridge, ip([172, 30, 0, 5])));
    assert!(!peer_allowed(&bridge, ip([172, 30, 0, 6])), "another task");
    assert!(!peer_allowed(&bridge, ip([127, 0, 0, 1])), "the node");
    let mut unplumbed = bridge.clone();
    unplumbed.network = None;
    assert!(!peer_allowed(&unplumbed, ip([172, 30, 0, 5])));

    let mut lan = with_mode(bridge_task(), "awsvpc");
    if let Some(n) = lan.network.as_mut() {
        n.attachment = Attachment::Macvlan;
        n.address = Ipv4Addr::new(192, 168, 50, 100);
        n.meta_address = Some(Ipv4Addr::new(169, 254, 172, 2));
    }
    assert!(peer_allowed(&lan, ip([169, 254, 172, 2])), "its meta0");
    assert!(peer_allowed(&lan, ip([192, 168, 50, 100])));
    assert!(
        !peer_allowed(&lan, ip([169, 254, 172, 3])),
        "another's meta0"
    );

    let host = with_mode(bridge_task(), "host");
    assert!(peer_allowed(&host, ip([127, 0, 0, 1])));
    // TEST-NET-3: an address of no interface here, as a task's would be.
    assert!(!peer_allowed(&host, ip([203, 0, 113, 9])));
    assert!(!peer_allowed(
        &with_mode(bridge_task(), "none"),
        ip([127, 0, 0, 1])
    ));
}

#[tokio::test]
async fn routes_answer_the_token_s_owner_only() {
    let app = router(Fake::new(bridge_task()));
    let me = IpAddr::V4(ADDRESS);
    let (status, doc) = get(&app, me, &format!("/v4/{WEB_TOKEN}")).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["Name"], "web");
    let (status, doc) = get(&app, me, &format!("/v4/{JOB_TOKEN}/task")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["Containers"].as_array().unwrap().len(), 2);
    // v3's variable names the same documents.
    let (status, v3) = get(&app, me, &format!("/v3/{JOB_TOKEN}/task")).await;
    assert_eq!((status, &v3), (StatusCode::OK, &doc));

    let (status, body) = get(&app, me, "/v4/cccccccccccccccccccccccccccccccc/task").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, "no container has this endpoint id");
    let other = IpAddr::from([172, 30, 0, 9]);
    let (status, body) = get(&app, other, &format!("/v4/{WEB_TOKEN}/stats")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, "this endpoint id is not served to 172.30.0.9");
    assert!(!body.to_string().contains(TASK), "the task is not named");
}

#[tokio::test]
async fn stats_in_docker_s_shape_with_the_previous_read() {
    let app = router(Fake::new(bridge_task()));
    let me = IpAddr::V4(ADDRESS);
    let (status, first) = get(&app, me, &format!("/v4/{WEB_TOKEN}/stats")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["id"], format!("{TASK}-web"));
    assert_eq!(first["name"], format!("/{TASK}-web"));
    assert_eq!(first["cpu_stats"]["cpu_usage"]["total_usage"], 1_000_000);
    assert_eq!(
        first["cpu_stats"]["cpu_usage"]["usage_in_usermode"],
        500_000
    );
    assert!(first["cpu_stats"]["online_cpus"].as_u64() >= Some(1));
    assert_eq!(first["precpu_stats"]["cpu_usage"]["total_usage"], 0);
    assert_eq!(first["preread"], "1970-01-01T00:00:00.000000000Z");
    // The container has no limit of its own: the task's is its limit.
    assert_eq!(
        first["memory_stats"],
        json!({"usage": 8 << 20, "max_usage": 9 << 20, "stats": {"inactive_file": 1 << 20}, "limit": 256 << 20})
    );
    assert_eq!(first["pids_stats"], json!({"current": 3, "limit": 2048}));
    assert!(first.get("networks").is_none(), "no pid, no counters");

    let (_, map) = get(&app, me, &format!("/v4/{JOB_TOKEN}/task/stats")).await;
    let web = &map[format!("{TASK}-web")];
    assert_eq!(web["cpu_stats"]["cpu_usage"]["total_usage"], 2_000_000);
    assert_eq!(web["precpu_stats"]["cpu_usage"]["total_usage"], 1_000_000);
    assert_eq!(web["preread"], first["read"]);
    assert_eq!(map[format!("{TASK}-job")], Value::Null, "job does not run");

    let (status, job) = get(&app, me, &format!("/v4/{JOB_TOKEN}/stats")).await;
    assert_eq!((status, job), (StatusCode::OK, Value::Null));
}

#[test]
fn interfaces_are_reported_by_name() {
    let rec = bridge_task();
    let cg = cgroup(5, Some(64 << 20));
    let ifs = [(
        "eth0".to_owned(),
        InterfaceStats {
            rx_bytes: 10,
            tx_packets: 2,
            ..Default::default()
        },
    )];
    let cur = Current {
        read: UNIX_EPOCH,
        cgroup: &cg,
        task_memory_limit: Some(256 << 20),
        system: SystemCpu {
            usage_ns: 7,
            online_cpus: 2,
        },
        interfaces: Some(&ifs),
    };
    let doc = serde_json::to_value(stats_doc(&rec.containers[0], &cur, None)).unwrap();
    assert_eq!(doc["networks"]["eth0"]["rx_bytes"], 10);
    assert_eq!(doc["networks"]["eth0"]["tx_packets"], 2);
    assert_eq!(
        doc["memory_stats"]["limit"],
        64 << 20,
        "its own limit first"
    );
    assert_eq!(doc["cpu_stats"]["system_cpu_usage"], 7);
}
