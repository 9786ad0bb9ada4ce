//! The ECS task metadata endpoint end to end: tasks of a real skiffd (in a network namespace of
//! its own) query `ECS_CONTAINER_METADATA_URI_V4` with busybox's wget, and what they print is
//! checked against the task's record; then other tasks and the node try tokens that are not
//! theirs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::*;

/// The container definition of a busybox container.
fn bb(name: &str, extra: &str) -> String {
    format!(r#"{{"name":"{name}","image":"{BUSYBOX}",{extra}}}"#)
}

/// A task definition of `containers` in network mode `mode`.
fn def(family: &str, mode: &str, containers: &[String]) -> String {
    format!(
        r#"{{"family":"{family}","networkMode":"{mode}","memory":"128","containerDefinitions":[{}]}}"#,
        containers.join(",")
    )
}

/// A shell command as a task definition's `command`.
fn sh(script: &str) -> String {
    format!(
        r#""command":["sh","-c",{}]"#,
        serde_json::to_string(script).unwrap()
    )
}

/// Container `name`'s log without its empty lines, polled until it has `lines` lines (at most
/// 30 s).
fn log_lines(d: &Skiffd, id: &str, name: &str, lines: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = d.ok(&["logs", id, name]);
        let got: Vec<String> = log
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if got.len() >= lines {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{name} logged {got:?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// `GET path` from the namespace this thread is in, to the metadata address: status and body.
fn get(path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("169.254.170.2", 80)).expect("connect to the endpoint");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 169.254.170.2\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    (status, body.unwrap_or_default())
}

#[test]
fn a_bridge_task_reads_its_documents_and_stats() {
    if !privileged("a_bridge_task_reads_its_documents_and_stats") {
        return;
    }
    let d = Skiffd::start("");
    let app = bb(
        "app",
        &format!(
            r#"{},"dependsOn":[{{"containerName":"side","condition":"START"}}]"#,
            // The record says RUNNING once the shim has reported the start, a moment after the
            // process began: wait for it as an application would, then read everything.
            sh(r#"echo "$ECS_CONTAINER_METADATA_URI_V4"
                  for i in $(seq 100); do
                    wget -qO- "$ECS_CONTAINER_METADATA_URI_V4" | grep -q '"KnownStatus":"RUNNING"' && break
                    sleep 0.1
                  done
                  for p in /task "" /stats /task/stats; do wget -qO- "$ECS_CONTAINER_METADATA_URI_V4$p"; echo; done"#)
        ),
    );
    let side = bb(
        "side",
        r#""essential":false,"stopTimeout":2,"command":["sleep","60"]"#,
    );
    let id = d.run_def(&def("meta", "bridge", &[app, side]), false);
    let rec = d.wait_stopped(&id);
    let app = Skiffd::container(&rec, "app");
    assert_eq!(app["exitCode"], 0, "{rec:#}\n{}", d.log());
    let address = app["networkInterfaces"][0]["privateIpv4Address"].clone();
    assert!(address.is_string(), "{rec:#}");
    let runtime_id = |name: &str| {
        Skiffd::container(&rec, name)["runtimeId"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    let lines = log_lines(&d, &id, "app", 5);
    assert_eq!(
        lines[0],
        format!(
            "http://169.254.170.2/v4/{}",
            app["metadataToken"].as_str().unwrap()
        )
    );

    let task = json(&lines[1]);
    assert!(
        task["TaskARN"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/{id}")),
        "{task:#}"
    );
    assert_eq!(task["Family"], "meta");
    assert_eq!(task["LaunchType"], "EXTERNAL");
    // The task may not be RUNNING yet: its last container has just started.
    assert_eq!(task["DesiredStatus"], "RUNNING");
    assert_eq!(task["Limits"]["Memory"], 128);
    let names: Vec<&str> = task["Containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app", "side"]);
    for c in task["Containers"].as_array().unwrap() {
        assert_eq!(c["Networks"][0]["NetworkMode"], "bridge");
        assert_eq!(c["Networks"][0]["IPv4Addresses"][0], address, "{c:#}");
    }

    let me = json(&lines[2]);
    assert_eq!(me["Name"], "app");
    assert_eq!(me["DockerId"], runtime_id("app"));
    assert_eq!(me["KnownStatus"], "RUNNING");
    assert_eq!(me["Labels"]["com.amazonaws.ecs.task-arn"], task["TaskARN"]);
    assert_eq!(
        me["ImageID"], app["imageDigest"],
        "the digest the container runs"
    );

    let stats = json(&lines[3]);
    assert_eq!(stats["id"], runtime_id("app"));
    assert!(
        stats["cpu_stats"]["cpu_usage"]["total_usage"].as_u64() > Some(0),
        "{stats:#}"
    );
    assert!(stats["memory_stats"]["usage"].as_u64() > Some(0));
    assert_eq!(
        stats["memory_stats"]["limit"],
        128 << 20,
        "the task's limit"
    );
    // The task namespace's own counters: the requests just made went through eth0.
    assert!(
        stats["networks"]["eth0"]["rx_bytes"].as_u64() > Some(0),
        "{stats:#}"
    );
    assert!(stats["networks"].get("lo").is_none());

    let all = json(&lines[4]);
    let mut keys: Vec<&String> = all.as_object().unwrap().keys().collect();
    keys.sort();
    let mut want = [runtime_id("app"), runtime_id("side")];
    want.sort();
    assert_eq!(keys, want.iter().collect::<Vec<_>>(), "{all:#}");
    assert_eq!(all[runtime_id("side")]["id"], runtime_id("side"));
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
}

/// A token read from another task, or from the node, reads nothing: a task with a namespace of
/// its own is served only from its own address. The node's namespace (loopback and the node's
/// addresses) is where `host` tasks, and every other process of the node, live: it gets the
/// documents of `host` tasks only, which share it; root on the node reads any task through
/// skiffd's API instead.
#[test]
fn a_token_is_honoured_only_from_inside_its_task() {
    if !privileged("a_token_is_honoured_only_from_inside_its_task") {
        return;
    }
    let d = Skiffd::start("");
    let sleeper = |name: &str| bb(name, r#""stopTimeout":2,"command":["sleep","60"]"#);
    let first = d.run_def(&def("first", "bridge", &[sleeper("a")]), false);
    let token = |id: &str, name: &str| {
        let rec = d.describe(id);
        Skiffd::container(&rec, name)["metadataToken"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first_token = token(&first, "a");

    // A host task reads its own document from the node's namespace.
    let host = d.run_def(
        &def(
            "host",
            "host",
            &[bb(
                "h",
                &format!(
                    r#""stopTimeout":2,{}"#,
                    sh(r#"wget -qO- "$ECS_CONTAINER_METADATA_URI_V4"; echo; sleep 60"#)
                ),
            )],
        ),
        false,
    );
    let host_token = token(&host, "h");
    let doc = json(&log_lines(&d, &host, "h", 1)[0]);
    assert_eq!(doc["Name"], "h");
    assert_eq!(doc["Networks"][0]["NetworkMode"], "host");

    // A second bridge task with the others' tokens, and its own.
    let script = format!(
        r#"wget -qO- http://169.254.170.2/v4/{first_token}/task 2>&1
           wget -qO- http://169.254.170.2/v4/{host_token} 2>&1
           wget -qO- "$ECS_CONTAINER_METADATA_URI_V4"; echo"#
    );
    let second = d.run_def(&def("second", "bridge", &[bb("b", &sh(&script))]), false);
    d.wait_stopped(&second);
    let lines = log_lines(&d, &second, "b", 3);
    assert!(lines[0].contains("403 Forbidden"), "{lines:?}");
    assert!(lines[1].contains("403 Forbidden"), "{lines:?}");
    assert_eq!(json(&lines[2])["Name"], "b");

    // The node's namespace: the host task's document, not the bridge task's.
    let node = d.netns.clone();
    let (host_path, first_path) = (
        format!("/v4/{host_token}/task"),
        format!("/v4/{first_token}/task"),
    );
    let (own, other, unknown) = in_netns(&node, move || {
        (
            get(&host_path),
            get(&first_path),
            get("/v4/0123456789abcdef0123456789abcdef"),
        )
    });
    assert_eq!(own.0, 200, "{}", own.1);
    assert_eq!(json(&own.1)["Family"], "host");
    assert_eq!(other.0, 403, "{}", other.1);
    assert!(other.1.contains("not served"), "{}", other.1);
    assert_eq!(unknown.0, 404, "{}", unknown.1);
    assert_eq!(json(&unknown.1), "no container has this endpoint id");
}

/// An awsvpc task (routed: its /32 behind a veth, the metadata address its on-link gateway)
/// reaches the endpoint too, and is known by its own address.
#[test]
fn an_awsvpc_task_reads_its_document() {
    if !privileged("an_awsvpc_task_reads_its_document") {
        return;
    }
    let d = Skiffd::start("[network.awsvpc]\nmode = \"routed\"\nsubnet = \"10.99.0.0/24\"");
    let id = d.run_def(
        &def(
            "vpc",
            "awsvpc",
            &[bb(
                "v",
                &sh(r#"wget -qO- "$ECS_CONTAINER_METADATA_URI_V4/task""#),
            )],
        ),
        false,
    );
    let rec = d.wait_stopped(&id);
    let task = json(&log_lines(&d, &id, "v", 1)[0]);
    let net = &task["Containers"][0]["Networks"][0];
    assert_eq!(net["NetworkMode"], "awsvpc", "{task:#}");
    assert_eq!(
        net["IPv4Addresses"][0],
        Skiffd::container(&rec, "v")["networkInterfaces"][0]["privateIpv4Address"]
    );
    assert_eq!(net["IPv4SubnetCIDRBlock"], "10.99.0.0/24");
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
}
