//! Services and the node channel end to end: the real `apid` binary, the real aws CLI and
//! boto3 (Debian's), and simulated nodes (`apid/tests/simnode.py`) that register with an
//! activation and sync over mTLS as skiffd does. Heartbeats are short here (1 s, timeout 3 s,
//! grace 6 s) so that disconnection and replacement happen within the test.
//!
//! Waiting: the test polls `describe-*` until the state it expects, then runs the aws CLI's own
//! waiter (`services-stable`, `tasks-running`, `tasks-stopped`), which must agree at once; the
//! CLI's fixed 6 to 15 s waiter delays would otherwise make the suite slow. boto3's waiter runs
//! with a 1 s delay through a rollout.
//!
//! The PostgreSQL failover test runs two apid replicas on one throw-away PostgreSQL
//! (`apid/tests/postgres.sh`), kills the scheduling one with SIGKILL during a deployment, and
//! checks that the other finishes it with no task lost or started twice.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use skiff_tests::ecs::{
    create_service, service, service_tasks, set_state, stable, task_ids, until,
};
use skiff_tests::{Apid, SimNodes};

const FAST: &str =
    "heartbeat_seconds = 1\nheartbeat_timeout_seconds = 3\ndisconnect_grace_seconds = 6\n";

/// Node `k`'s count of the tasks in `ids`.
fn on_node(nodes: &SimNodes, k: usize, ids: &BTreeSet<String>) -> usize {
    nodes.running(k).iter().filter(|t| ids.contains(*t)).count()
}

/// `aws ecs update-service` of service web with `args`.
fn update(a: &Apid, args: &[&str]) -> Value {
    let mut all = vec!["update-service", "--cluster", "edge", "--service", "web"];
    all.extend_from_slice(args);
    a.aws(&all)
}

fn register(a: &Apid, family: &str, revision: i64) {
    let def = a.path(&format!("{family}.json"));
    std::fs::write(
        &def,
        json!({"family": family, "networkMode": "bridge", "containerDefinitions": [
            {"name": "web", "image": "127.0.0.1:5000/busybox:latest", "memory": 64,
             "command": ["sh", "-c", "sleep 3600"]}]})
        .to_string(),
    )
    .unwrap();
    let r = a.aws(&[
        "register-task-definition",
        "--cli-input-json",
        &format!("file://{}", def.display()),
    ]);
    assert_eq!(r["taskDefinition"]["revision"], revision);
}

#[test]
fn services_roll_out_replace_and_survive_disconnection_through_the_aws_cli() {
    let a = Apid::start_with(FAST);
    a.aws(&["create-cluster", "--cluster-name", "edge"]);
    let act = a.activation("edge", 3);
    let nodes = SimNodes::start(&[&a], &act, 3, a.dir.path());
    let instances = a.aws(&["list-container-instances", "--cluster", "edge"]);
    assert_eq!(
        instances["containerInstanceArns"].as_array().unwrap().len(),
        3
    );
    register(&a, "web", 1);

    // A service of 4 spreads over the three nodes.
    let s = create_service(
        &a,
        "web",
        "web",
        &[
            "--desired-count",
            "4",
            "--deployment-configuration",
            "maximumPercent=150,minimumHealthyPercent=50,deploymentCircuitBreaker={enable=true,rollback=true}",
        ],
    );
    assert_eq!(
        s["service"]["deployments"][0]["rolloutState"],
        "IN_PROGRESS"
    );
    stable(&a, "web", 4);
    let ids = task_ids(&service_tasks(&a, "web"));
    let mut per: Vec<usize> = (0..3).map(|k| on_node(&nodes, k, &ids)).collect();
    per.sort_unstable();
    assert_eq!(per, [1, 1, 2], "spread over the nodes");

    // A rolling deployment to web:2, watched by boto3's waiter.
    register(&a, "web", 2);
    update(&a, &["--task-definition", "web:2"]);
    let script = format!(
        "import boto3\nc = boto3.client('ecs', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='{}', aws_secret_access_key='{}')\nc.get_waiter('services_stable').wait(cluster='edge', services=['web'], WaiterConfig={{'Delay': 1, 'MaxAttempts': 90}})\nprint(c.describe_services(cluster='edge', services=['web'])['services'][0]['taskDefinition'])\n",
        a.endpoint(),
        a.key.0,
        a.key.1
    );
    let out = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .env("AWS_CONFIG_FILE", "/dev/null")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .ends_with("task-definition/web:2"),
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        a.log()
    );
    stable(&a, "web", 4);
    let rolled = task_ids(&service_tasks(&a, "web"));
    assert!(rolled.is_disjoint(&ids), "every task replaced");

    // web:3 fails to start on the nodes: the circuit breaker rolls back to web:2.
    register(&a, "web", 3);
    nodes.fail(&["web:3"]);
    update(&a, &["--task-definition", "web:3"]);
    until(90, "the rollback", || {
        let s = service(&a, "web");
        let events = s["events"].to_string();
        (events.contains("circuit breaker") && events.contains("rolling back")).then_some(())
    });
    let s = stable(&a, "web", 4);
    assert!(
        s["taskDefinition"].as_str().unwrap().ends_with("web:2"),
        "{s}"
    );
    nodes.fail(&[]);

    // forceNewDeployment: the same revision, every task replaced; then desiredCount down and up.
    let before = task_ids(&service_tasks(&a, "web"));
    let s = update(&a, &["--force-new-deployment"]);
    assert_eq!(
        s["service"]["deployments"].as_array().map(Vec::len),
        Some(2),
        "{s:#}"
    );
    let s = stable(&a, "web", 4);
    assert!(
        s["taskDefinition"].as_str().unwrap().ends_with("web:2"),
        "{s}"
    );
    assert!(
        task_ids(&service_tasks(&a, "web")).is_disjoint(&before),
        "a forced deployment replaces every task"
    );
    update(&a, &["--desired-count", "2"]);
    stable(&a, "web", 2);
    assert_eq!(service_tasks(&a, "web").len(), 2);
    update(&a, &["--desired-count", "4"]);
    stable(&a, "web", 4);

    // Drain node 0: its tasks move to the others.
    set_state(&a, &nodes.ids[0], "DRAINING");
    until(90, "node 0 drained", || {
        let ids = task_ids(&service_tasks(&a, "web"));
        (nodes.running(0).is_empty() && on_node(&nodes, 1, &ids) + on_node(&nodes, 2, &ids) == 4)
            .then_some(())
    });
    stable(&a, "web", 4);

    // Node 1 is cut off past the grace period: shown disconnected, its tasks started on
    // node 2; back, it is told to stop its stale copies, and nothing runs twice.
    let before = nodes.running(1);
    assert!(!before.is_empty());
    nodes.set_offline(1, true);
    until(60, "node 1 disconnected", || {
        let d = a.aws(&[
            "describe-container-instances",
            "--cluster",
            "edge",
            "--container-instances",
            &nodes.ids[1],
        ]);
        (d["containerInstances"][0]["agentConnected"] == false).then_some(())
    });
    until(90, "node 1's tasks replaced on node 2", || {
        let ids = task_ids(&service_tasks(&a, "web"));
        (on_node(&nodes, 2, &ids) == 4).then_some(())
    });
    assert_eq!(
        nodes.running(1),
        before,
        "a cut-off node keeps running its tasks"
    );
    nodes.set_offline(1, false);
    until(60, "the stale copies stopped", || {
        nodes.running(1).is_empty().then_some(())
    });
    let s = stable(&a, "web", 4);
    assert_eq!(s["runningCount"], 4);
    let total: usize = (0..3).map(|k| nodes.running(k).len()).sum();
    assert_eq!(total, 4, "nothing duplicated or lost");

    // A DAEMON service: one task on each ACTIVE node (node 0 is still draining).
    set_state(&a, &nodes.ids[0], "ACTIVE");
    create_service(&a, "agent", "web:1", &["--scheduling-strategy", "DAEMON"]);
    stable(&a, "agent", 3);
    let daemon = task_ids(&service_tasks(&a, "agent"));
    assert!((0..3).all(|k| on_node(&nodes, k, &daemon) == 1));

    // RunTask and StopTask with their waiters; delete with force; the services-inactive waiter.
    let r = a.aws(&[
        "run-task",
        "--cluster",
        "edge",
        "--task-definition",
        "web:1",
    ]);
    let arn = r["tasks"][0]["taskArn"].as_str().unwrap().to_owned();
    until(30, "the task running", || {
        (a.aws(&["describe-tasks", "--cluster", "edge", "--tasks", &arn])["tasks"][0]["lastStatus"]
            == "RUNNING")
            .then_some(())
    });
    a.aws(&[
        "wait",
        "tasks-running",
        "--cluster",
        "edge",
        "--tasks",
        &arn,
    ]);
    a.aws(&["stop-task", "--cluster", "edge", "--task", &arn]);
    until(30, "the task stopped", || {
        (a.aws(&["describe-tasks", "--cluster", "edge", "--tasks", &arn])["tasks"][0]["lastStatus"]
            == "STOPPED")
            .then_some(())
    });
    a.aws(&[
        "wait",
        "tasks-stopped",
        "--cluster",
        "edge",
        "--tasks",
        &arn,
    ]);
    let e = a.aws_err(
        (&a.key.0, &a.key.1),
        &["delete-service", "--cluster", "edge", "--service", "web"],
    );
    assert!(e.contains("scaled above 0"), "{e}");
    a.aws(&[
        "delete-service",
        "--cluster",
        "edge",
        "--service",
        "web",
        "--force",
    ]);
    until(60, "web inactive", || {
        (service(&a, "web")["status"] == "INACTIVE").then_some(())
    });
    a.aws(&[
        "wait",
        "services-inactive",
        "--cluster",
        "edge",
        "--services",
        "web",
    ]);
    assert!(service_tasks(&a, "web").is_empty());

    // Deregistering node 2 revokes it: its next sync is refused and it stops syncing.
    a.aws(&[
        "deregister-container-instance",
        "--cluster",
        "edge",
        "--container-instance",
        &nodes.ids[2],
        "--force",
    ]);
    until(30, "node 2 refused", || {
        nodes.dir.join("node2/deregistered").exists().then_some(())
    });
    assert!(nodes.log().contains("node 2"), "{}", nodes.log());
}

/// A throw-away PostgreSQL for this test (stopped and deleted when dropped).
struct Postgres {
    child: std::process::Child,
    url: String,
}

impl Postgres {
    fn start() -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../apid/tests/postgres.sh");
        let mut child = Command::new(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run postgres.sh");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("postgres://"),
            "postgres.sh did not start PostgreSQL (apt-get install postgresql)"
        );
        Self {
            child,
            url: line.trim().to_owned(),
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[test]
fn a_replica_takes_over_scheduling_when_the_other_dies_on_postgres() {
    let pg = Postgres::start();
    let settings = format!("{FAST}database = {:?}\n", pg.url);
    let mut first = Apid::start_with(&settings);
    // The first replica has taken the lease before the second starts.
    until(20, "the first replica scheduling", || {
        first
            .log()
            .contains("took the scheduling lease")
            .then_some(())
    });
    let second = Apid::start_with(&settings);
    first.aws(&["create-cluster", "--cluster-name", "edge"]);
    let act = first.activation("edge", 3);
    let nodes = SimNodes::start(&[&first, &second], &act, 3, second.dir.path());
    register(&first, "web", 1);
    // One task at a time (120% of 6 is 7), so that the deployment spans several passes.
    create_service(
        &first,
        "web",
        "web",
        &[
            "--desired-count",
            "6",
            "--deployment-configuration",
            "maximumPercent=120,minimumHealthyPercent=100",
        ],
    );
    stable(&second, "web", 6);
    // A deployment starts; the scheduling replica dies at once, in the middle of it.
    register(&second, "web", 2);
    update(&second, &["--task-definition", "web:2"]);
    first.kill();
    until(30, "the second replica taking over", || {
        second
            .log()
            .contains("took the scheduling lease")
            .then_some(())
    });
    let s = stable(&second, "web", 6);
    assert!(
        s["taskDefinition"].as_str().unwrap().ends_with("web:2"),
        "{s}"
    );
    // Nothing lost or doubled: six tasks run on the nodes, all of web:2, and no task of the
    // service was placed beyond what the rollout needed.
    let tasks = service_tasks(&second, "web");
    assert_eq!(tasks.len(), 6);
    let ids = task_ids(&tasks);
    let running: usize = (0..3).map(|k| on_node(&nodes, k, &ids)).sum();
    assert_eq!(running, 6, "{}", nodes.log());
    let all: usize = (0..3).map(|k| nodes.running(k).len()).sum();
    assert_eq!(all, 6, "no stray copy runs");
}
