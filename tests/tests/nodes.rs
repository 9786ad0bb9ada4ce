//! The product end to end: the real `skiff-apid`, two real `skiffd` nodes, each in a network
//! namespace of its own standing in for a separate box (own state, own task networking),
//! joined to apid by a test-made bridge (`ControlNet`), and the real aws CLI.
//!
//! One test walks a node's life, because each step needs the state the last one left:
//! registration (refused codes record nothing), placement by attribute and architecture,
//! `run-task` to a running container that answers on its host port, `stop-task`, a service
//! spread over both nodes and rolled to a new revision, a node cut off (link down in its
//! namespace: its tasks keep running, a crashing container restarts locally by policy, and
//! past the grace period its service tasks are placed on the other node, whose stale copies
//! it stops when it returns; within the grace period, a service task that fails there meanwhile
//! is replaced on the node and the replacement adopted by apid), `kill -9` of apid and of skiffd, drain, and deregistration
//! (which revokes the node's certificate: the node stops its tasks and retires its identity).
//! apid's heartbeats are short (1 s, timeout 3 s, grace 12 s) so that all of it happens in the
//! test's time, and so are the containers' stopTimeout (2 s): httpd and sh, PID 1 of their
//! containers with no SIGTERM handler, ignore SIGTERM and are stopped by SIGKILL at its end.
//!
//! Consistency is checked against the nodes themselves, never against apid alone: every task
//! apid says RUNNING runs on the node it names, and no node runs a control-plane task apid
//! does not want there.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use skiff_tests::ecs::{
    create_service, service_tasks, set_state, stable, stop_task, task_ids, until, wait_task,
};
use skiff_tests::{Apid, BUSYBOX, ControlNet, Skiffd, privileged};

const FAST: &str =
    "heartbeat_seconds = 1\nheartbeat_timeout_seconds = 3\ndisconnect_grace_seconds = 12\n";

fn register_def(a: &Apid, def: Value) -> String {
    let path = a.path(&format!("{}.json", def["family"].as_str().unwrap()));
    std::fs::write(&path, def.to_string()).unwrap();
    let r = a.aws(&[
        "register-task-definition",
        "--cli-input-json",
        &format!("file://{}", path.display()),
    ]);
    r["taskDefinition"]["taskDefinitionArn"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// ECS action `action` with `body`, signed by curl's own SigV4 (`--aws-sigv4`): for what
/// Debian's aws CLI 2.9 and boto3 1.26 cannot send (`restartPolicy`, `clientToken`).
fn raw(a: &Apid, action: &str, body: &Value) -> Value {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            "--aws-sigv4",
            "aws:amz:us-east-1:ecs",
        ])
        .args(["--user", &format!("{}:{}", a.key.0, a.key.1)])
        .args(["-H", "Content-Type: application/x-amz-json-1.1"])
        .args([
            "-H",
            &format!("X-Amz-Target: AmazonEC2ContainerServiceV20141113.{action}"),
        ])
        .args(["--data", &body.to_string(), &a.endpoint()])
        .output()
        .expect("run curl");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn register_raw(a: &Apid, def: &Value) -> String {
    raw(a, "RegisterTaskDefinition", def)["taskDefinition"]["taskDefinitionArn"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A web server on a dynamic host port (bridge mode), answering with `body`.
fn web(body: &str) -> Value {
    json!({"family": "web", "networkMode": "bridge", "containerDefinitions": [
        {"name": "web", "image": BUSYBOX, "memory": 64, "stopTimeout": 2,
         "command": ["sh", "-c", format!("mkdir -p /www && echo {body} > /www/index.html && echo serving {body} && exec httpd -f -p 8080 -h /www")],
         "portMappings": [{"containerPort": 8080, "protocol": "tcp"}]}]})
}

/// `skiff control <args>` against apid with its key.
fn control(a: &Apid, args: &[&str]) -> std::process::Output {
    std::process::Command::new(skiff_tests::workspace_bin("skiff"))
        .arg("control")
        .args(["--endpoint-url", &a.endpoint()])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", &a.key.0)
        .env("AWS_SECRET_ACCESS_KEY", &a.key.1)
        .output()
        .expect("run skiff control")
}

fn describe(a: &Apid, arn: &str) -> Value {
    a.aws(&["describe-tasks", "--cluster", "edge", "--tasks", arn])["tasks"][0].clone()
}

fn run_task(a: &Apid, td: &str, more: &[&str]) -> Value {
    let mut args = vec!["run-task", "--cluster", "edge", "--task-definition", td];
    args.extend_from_slice(more);
    a.aws(&args)
}

/// The control plane's tasks that node `n` runs (not stopped), by id.
fn held(n: &Skiffd) -> BTreeSet<String> {
    let ls: Value =
        serde_json::from_str(&n.ok(&["task", "ls", "-a", "--json"])).unwrap_or_default();
    ls.as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["origin"].is_object() && t["lastStatus"] != "STOPPED")
        .map(|t| t["taskId"].as_str().unwrap().to_owned())
        .collect()
}

fn instance_of(t: &Value) -> String {
    t["containerInstanceArn"]
        .as_str()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned()
}

/// What apid wants running, per node, equals what each node runs: nothing lost, nothing twice.
fn consistent(a: &Apid, nodes: &[(&Skiffd, &str)]) -> bool {
    let listed = a.aws(&[
        "list-tasks",
        "--cluster",
        "edge",
        "--desired-status",
        "RUNNING",
    ]);
    let arns: Vec<String> = listed["taskArns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let wanted: Vec<Value> = if arns.is_empty() {
        Vec::new()
    } else {
        let mut args = vec!["describe-tasks", "--cluster", "edge", "--tasks"];
        args.extend(arns.iter().map(String::as_str));
        a.aws(&args)["tasks"].as_array().unwrap().clone()
    };
    nodes.iter().all(|(n, id)| {
        let want: BTreeSet<String> = task_ids(
            &wanted
                .iter()
                .filter(|t| instance_of(t) == *id && t["lastStatus"] == "RUNNING")
                .cloned()
                .collect::<Vec<_>>(),
        );
        held(n) == want
    })
}

/// Cuts `n` off the network (its link down), as an edge box losing its uplink.
fn cut(n: &Skiffd) {
    n.sh("ip link set eth0 down");
}

/// Brings `n`'s link back (and its default route, which went with it).
fn reconnect(n: &Skiffd) {
    n.sh(&format!(
        "ip link set eth0 up && ip route replace default via {}",
        ControlNet::ADDR
    ));
}

/// GET http://ADDR:PORT/ from inside `n`'s namespace.
fn get(n: &Skiffd, addr: &str, port: &Value) -> String {
    n.sh(&format!(
        "for i in $(seq 50); do wget -q -T 2 -O - http://{addr}:{port}/ && exit 0; sleep 0.2; done; exit 1"
    ))
}

#[test]
fn nodes_register_run_tasks_and_services_and_survive_cuts() {
    if !privileged("nodes_register_run_tasks_and_services_and_survive_cuts") {
        return;
    }
    let net = ControlNet::new();
    let mut apid = Apid::start_for_nodes(ControlNet::ADDR, FAST);
    apid.aws(&["create-cluster", "--cluster-name", "edge"]);
    let act = apid.activation("edge", 2);

    // Registration: refused codes leave nothing behind; good ones make instances.
    // Node a renews its certificate at once (as if a third of its life were left).
    let mut a = Skiffd::registered(
        &net,
        2,
        &apid,
        &act,
        &["--attribute", "zone=a"],
        "renew_certificate_before = \"30d\"",
    );
    let wrong = Skiffd::prepare("");
    net.attach(&wrong, 9);
    let bad = (act.0.clone(), "not-the-code".to_owned());
    let out = wrong.register(&apid, &bad, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("403"), "{err}");
    assert!(!wrong.root.join("node.json").exists(), "nothing kept");
    let out = wrong.register(&apid, &act, &["--cluster", "other"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not other"), "{err}");
    let b = Skiffd::registered(&net, 3, &apid, &act, &["--attribute", "zone=b"], "");
    let out = wrong.register(&apid, &act, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a third node on a count of 2");
    assert!(err.contains("activation"), "{err}");
    drop(wrong);
    let again = a.register(&apid, &act, &[]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("registered already"),
        "{again:?}"
    );

    let node_id = |n: &Skiffd| {
        let v: Value =
            serde_json::from_slice(&std::fs::read(n.root.join("node.json")).unwrap()).unwrap();
        v["containerInstanceId"].as_str().unwrap().to_owned()
    };
    let (ida, idb) = (node_id(&a), node_id(&b));
    let instances = apid.aws(&[
        "describe-container-instances",
        "--cluster",
        "edge",
        "--container-instances",
        &ida,
        &idb,
    ]);
    for ci in instances["containerInstances"].as_array().unwrap() {
        assert_eq!(ci["agentConnected"], true, "{ci:#}");
        let attrs = ci["attributes"].to_string();
        assert!(
            attrs.contains("ecs.cpu-architecture") && attrs.contains("zone"),
            "{attrs}"
        );
        let cpu = ci["registeredResources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "CPU")
            .unwrap()["integerValue"]
            .as_i64()
            .unwrap();
        assert!(cpu >= 1024, "{ci:#}");
    }

    // Rotation: a's new certificate is in use, and its first one revoked once it was.
    let certs = until(30, "a's certificate to rotate", || {
        let out = control(&apid, &["--json", "certs", "ls", "--instance", &ida]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let certs = v["certificates"].as_array().cloned().unwrap_or_default();
        (certs.len() == 2 && certs.iter().filter(|c| c["revokedAt"].is_number()).count() == 1)
            .then_some(certs)
    });
    assert!(a.log().contains("node certificate renewed"), "{certs:?}");

    // A container that crashes after its restartAttemptPeriod, on node b: restarted locally,
    // even while b is cut off below. Started early, so that its 61 s overlap the steps between.
    let crash = register_raw(
        &apid,
        &json!({"family": "crash", "networkMode": "none", "containerDefinitions": [
            {"name": "job", "image": BUSYBOX, "memory": 32, "stopTimeout": 2,
             "command": ["sh", "-c", "sleep 61; exit 3"],
             "restartPolicy": {"enabled": true, "restartAttemptPeriod": 60}}]}),
    );
    let r = run_task(
        &apid,
        &crash,
        &[
            "--placement-constraints",
            "type=memberOf,expression=attribute:zone == b",
        ],
    );
    let crash_id = task_ids(&r["tasks"].as_array().unwrap().clone())
        .into_iter()
        .next()
        .unwrap();

    // run-task by attribute -> running on that node, reachable on its host port; stop-task.
    let td1 = register_def(&apid, web("one"));
    let r = run_task(
        &apid,
        &td1,
        &[
            "--placement-constraints",
            "type=memberOf,expression=attribute:zone == b",
        ],
    );
    let arn = r["tasks"][0]["taskArn"].as_str().unwrap().to_owned();
    assert_eq!(instance_of(&r["tasks"][0]), idb);
    wait_task(&apid, "RUNNING", &arn);
    let t = describe(&apid, &arn);
    assert_eq!(t["lastStatus"], "RUNNING", "{t:#}");
    let binding = &t["containers"][0]["networkBindings"][0];
    assert_eq!(binding["containerPort"], 8080, "{t:#}");
    assert!(
        t["attachments"].to_string().contains("privateIPv4Address"),
        "{t:#}"
    );
    assert_eq!(get(&b, "127.0.0.1", &binding["hostPort"]).trim(), "one");
    let id = arn.rsplit('/').next().unwrap().to_owned();
    assert!(held(&b).contains(&id));
    // Logs, exec and stats through apid, over the node's own connection.
    let out = control(&apid, &["logs", "--cluster", "edge", &arn]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("serving one"),
        "{out:?}"
    );
    let out = control(
        &apid,
        &[
            "exec",
            "--cluster",
            "edge",
            &arn,
            "web",
            "--",
            "sh",
            "-c",
            "cat /www/index.html; echo oops >&2; exit 4",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "one");
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "oops");
    let out = control(&apid, &["stats", "--cluster", "edge", &id]);
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(stats["task"]["memory"].is_object(), "{out:?}");
    let out = control(
        &apid,
        &[
            "logs",
            "--cluster",
            "edge",
            "0123456789abcdef0123456789abcdef",
        ],
    );
    assert!(!out.status.success(), "{out:?}");
    stop_task(&apid, &arn);
    let t = describe(&apid, &arn);
    assert_eq!(t["stopCode"], "UserInitiated", "{t:#}");
    assert!(t["containers"][0]["exitCode"].is_i64(), "{t:#}");
    until(20, "the node to stop it", || {
        (!held(&b).contains(&id)).then_some(())
    });

    // The architecture is a placement attribute: an ARM64 task has nowhere to go.
    let mut arm = web("arm");
    arm["family"] = json!("arm");
    arm["runtimePlatform"] = json!({"cpuArchitecture": "ARM64"});
    let td_arm = register_def(&apid, arm);
    let r = run_task(&apid, &td_arm, &[]);
    assert!(r["tasks"].as_array().unwrap().is_empty(), "{r:#}");
    assert!(r["failures"].to_string().contains("ATTRIBUTE"), "{r:#}");

    // RunTask's clientToken (newer SDKs send one): a repeat starts nothing more.
    let once = json!({"cluster": "edge", "taskDefinition": td1, "clientToken": "bench-once-1",
        "placementConstraints": [{"type": "memberOf", "expression": "attribute:zone == a"}]});
    let first = raw(&apid, "RunTask", &once);
    let again = raw(&apid, "RunTask", &once);
    assert_eq!(first["tasks"][0]["taskArn"], again["tasks"][0]["taskArn"]);
    let arn = first["tasks"][0]["taskArn"].as_str().unwrap().to_owned();
    stop_task(&apid, &arn);

    // A service of 4 spread over the nodes, then rolled to a new revision.
    create_service(
        &apid,
        "web",
        &td1,
        &[
            "--desired-count",
            "4",
            "--placement-strategy",
            "type=spread,field=attribute:zone",
        ],
    );
    stable(&apid, "web", 4);
    let ids = task_ids(&service_tasks(&apid, "web"));
    let on = |n: &Skiffd| held(n).intersection(&ids).count();
    until(20, "2 service tasks on each node", || {
        (on(&a) == 2 && on(&b) == 2).then_some(())
    });
    let td2 = register_def(&apid, web("two"));
    apid.aws(&[
        "update-service",
        "--cluster",
        "edge",
        "--service",
        "web",
        "--task-definition",
        &td2,
    ]);
    let s = until(120, "the rollout", || {
        let s = skiff_tests::ecs::service(&apid, "web");
        (s["taskDefinition"] == td2.as_str()
            && s["deployments"].as_array().map(Vec::len) == Some(1)
            && s["runningCount"] == 4)
            .then_some(s)
    });
    assert_eq!(s["deployments"][0]["rolloutState"], "COMPLETED", "{s:#}");
    stable(&apid, "web", 4);
    let tasks = service_tasks(&apid, "web");
    for t in &tasks {
        assert_eq!(t["taskDefinitionArn"], td2.as_str());
        let node = if instance_of(t) == ida { &a } else { &b };
        let port = &t["containers"][0]["networkBindings"][0]["hostPort"];
        assert_eq!(get(node, "127.0.0.1", port).trim(), "two");
    }
    until(30, "nodes to hold what apid wants", || {
        consistent(&apid, &[(&a, &ida), (&b, &idb)]).then_some(())
    });

    // A short cut (within the grace period): a service task that fails on b meanwhile is
    // replaced on b at once, and apid adopts the replacement when b is back.
    let flag = b.dir.path().join("flag");
    std::fs::create_dir_all(&flag).unwrap();
    let flaky = register_def(
        &apid,
        json!({"family": "flaky", "networkMode": "none",
            "volumes": [{"name": "flag", "host": {"sourcePath": flag}}],
            "containerDefinitions": [{"name": "job", "image": BUSYBOX, "memory": 32, "stopTimeout": 2,
             "mountPoints": [{"sourceVolume": "flag", "containerPath": "/flag"}],
             "command": ["sh", "-c", "while ! rm /flag/die 2>/dev/null; do sleep 0.2; done; exit 1"]}]}),
    );
    create_service(
        &apid,
        "flaky",
        &flaky,
        &[
            "--desired-count",
            "1",
            "--placement-constraints",
            "type=memberOf,expression=attribute:zone == b",
        ],
    );
    stable(&apid, "flaky", 1);
    let first = task_ids(&service_tasks(&apid, "flaky"));
    until(20, "the flaky task on b", || {
        held(&b).is_superset(&first).then_some(())
    });
    cut(&b);
    std::fs::write(flag.join("die"), "").unwrap();
    let replacement = until(30, "b to replace the failed service task", || {
        let now = held(&b);
        let new: Vec<String> = now
            .difference(&first)
            .filter(|id| {
                b.describe(id)["origin"]["replaces"].as_str()
                    == first.iter().next().map(String::as_str)
            })
            .cloned()
            .collect();
        (new.len() == 1 && now.is_disjoint(&first)).then(|| new[0].clone())
    });
    reconnect(&b);
    until(30, "apid to adopt the replacement", || {
        let ts = service_tasks(&apid, "flaky");
        (task_ids(&ts) == BTreeSet::from([replacement.clone()]) && ts[0]["lastStatus"] == "RUNNING")
            .then_some(())
    });
    stable(&apid, "flaky", 1);
    apid.aws(&[
        "delete-service",
        "--cluster",
        "edge",
        "--service",
        "flaky",
        "--force",
    ]);
    until(30, "the flaky service's task to stop", || {
        (!held(&b).contains(&replacement)).then_some(())
    });

    // Cut b off. Its tasks keep running; its crashing container restarts locally.
    let b_service: BTreeSet<String> = held(&b).intersection(&task_ids(&tasks)).cloned().collect();
    assert_eq!(b_service.len(), 2);
    cut(&b);
    let restarted = b.wait_for(&crash_id, 150, |t| {
        t["containers"][0]["restartCount"].as_u64() >= Some(1)
    });
    assert_eq!(restarted["lastStatus"], "RUNNING", "{restarted:#}");
    assert!(
        held(&b).is_superset(&b_service),
        "tasks kept running offline"
    );
    // Past the grace period apid places b's service tasks on a.
    until(60, "replacement on a", || {
        let ts = service_tasks(&apid, "web");
        (ts.len() == 4
            && ts
                .iter()
                .all(|t| instance_of(t) == ida && t["lastStatus"] == "RUNNING"))
        .then_some(())
    });
    // Back: b stops its stale copies and keeps what apid still wants.
    reconnect(&b);
    until(60, "b to converge", || {
        consistent(&apid, &[(&a, &ida), (&b, &idb)]).then_some(())
    });
    assert!(held(&b).contains(&crash_id), "a non-service task stays");
    assert!(held(&b).is_disjoint(&b_service), "stale copies stopped");
    stable(&apid, "web", 4);

    // kill -9 apid, then skiffd a: nothing lost or doubled.
    apid.kill();
    std::thread::sleep(Duration::from_secs(2));
    apid.restart();
    a.kill9();
    a.spawn();
    until(60, "convergence after the crashes", || {
        consistent(&apid, &[(&a, &ida), (&b, &idb)]).then_some(())
    });
    stable(&apid, "web", 4);

    // Drain a while it is cut off: it keeps its tasks until it is back, then its service
    // tasks move to b.
    let on_a = held(&a);
    assert!(!on_a.is_empty());
    cut(&a);
    until(20, "a shown disconnected", || {
        let d = apid.aws(&[
            "describe-container-instances",
            "--cluster",
            "edge",
            "--container-instances",
            &ida,
        ]);
        (d["containerInstances"][0]["agentConnected"] == false).then_some(())
    });
    set_state(&apid, &ida, "DRAINING");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        held(&a).is_superset(&on_a),
        "a cut-off node keeps its tasks"
    );
    reconnect(&a);
    until(90, "a drained", || {
        let ts = service_tasks(&apid, "web");
        (ts.len() == 4
            && ts
                .iter()
                .all(|t| instance_of(t) == idb && t["lastStatus"] == "RUNNING")
            && held(&a).is_empty())
        .then_some(())
    });
    stable(&apid, "web", 4);

    // Deregister b (force) while it is cut off: its certificate is revoked; when b is back it
    // is refused, stops its tasks and retires its registration.
    cut(&b);
    apid.aws(&[
        "deregister-container-instance",
        "--cluster",
        "edge",
        "--container-instance",
        &idb,
        "--force",
    ]);
    assert!(
        !held(&b).is_empty(),
        "b's tasks keep running while it is cut off"
    );
    reconnect(&b);
    until(60, "b to stop its tasks", || {
        held(&b).is_empty().then_some(())
    });
    until(20, "b to retire its registration", || {
        b.root.join("node.json.deregistered").exists().then_some(())
    });
    assert!(b.log().contains("deregistered"), "{}", b.log());
    drop(a);
    drop(b);
}
