//! skiffd end to end: the real daemon, its API over the unix socket through the real `skiff`
//! CLI, containers run by real shims with libcontainer on this kernel.

use std::time::Duration;

use skiff_tests::*;

fn bb(name: &str, extra: &str) -> String {
    format!(r#"{{"name":"{name}","image":"{BUSYBOX}",{extra}}}"#)
}

#[test]
fn task_runs_logs_and_reports_its_exit() {
    if !privileged("task_runs_logs_and_reports_its_exit") {
        return;
    }
    let d = Skiffd::start("");
    let id = d.run(
        &bb(
            "main",
            r#""command":["sh","-c","echo out; echo err >&2; id -u; pwd; echo $GREETING; exit 7"],"user":"app","workingDirectory":"/tmp","environment":[{"name":"GREETING","value":"hello"}]"#,
        ),
        false,
    );
    let rec = d.wait_stopped(&id);
    assert_eq!(rec["stopCode"], "EssentialContainerExited", "{rec:#}");
    let main = Skiffd::container(&rec, "main");
    assert_eq!(main["exitCode"], 7, "{rec:#}");
    assert_eq!(main["lastStatus"], "STOPPED");
    assert!(rec["stoppedAt"].as_f64() >= rec["startedAt"].as_f64());
    // When the shim wrote the exit, between the start and the task's stop.
    let finished = main["finishedAt"].as_f64();
    assert!(
        finished.is_some() && finished >= main["startedAt"].as_f64(),
        "{rec:#}"
    );
    assert!(finished <= rec["stoppedAt"].as_f64(), "{rec:#}");
    let out = d.cmd(&["logs", &id]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "out\n1000\n/tmp\nhello\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    // --tail counts lines across both streams; which stream's line is last depends on how the
    // shim read its two pipes, so compare with the file's last line.
    let logs = d.root.join("tasks").join(&id).join("containers/main/logs");
    let last = skiff_runtime::logs::read(&logs, None).pop().unwrap().log;
    let tail = d
        .cmd(&["logs", "--tail", "1", &id, "main"])
        .output()
        .unwrap();
    let tail = String::from_utf8_lossy(&tail.stdout) + String::from_utf8_lossy(&tail.stderr);
    assert_eq!(tail, last);
    // `skiff task wait` exits with the essential container's code.
    assert_eq!(
        d.cmd(&["task", "wait", &id]).status().unwrap().code(),
        Some(7)
    );
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
    d.ok(&["task", "rm", &id]);
    assert!(d.ok(&["task", "ls", "-a", "-q"]).trim().is_empty());
    assert!(!d.root.join("tasks").join(&id).exists());
}

#[test]
fn bad_input_is_refused_clearly_and_failed_starts_leave_nothing() {
    if !privileged("bad_input_is_refused_clearly_and_failed_starts_leave_nothing") {
        return;
    }
    let d = Skiffd::start("");
    // Malformed definitions never become tasks.
    let file = d.dir.path().join("bad.json");
    for (def, says) in [
        (
            r#"{"family":"x","containerDefinitions":[{"name":"a","image":"busybox","memory":64,"comand":["true"]}]}"#,
            "comand",
        ),
        (
            r#"{"family":"x","containerDefinitions":[]}"#,
            "containerDefinitions",
        ),
        (
            r#"{"family":"x","containerDefinitions":[{"name":"a","image":"busybox"}]}"#,
            "memory",
        ),
        ("{", "EOF"),
    ] {
        std::fs::write(&file, def).unwrap();
        let out = d
            .cmd(&["task", "run", "-f", file.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("invalid task definition") && err.contains(says),
            "{def}: {err}"
        );
    }
    // What the node cannot do (yet) is refused up front, naming it.
    let other_arch = if cfg!(target_arch = "x86_64") {
        "ARM64"
    } else {
        "X86_64"
    };
    for (def, says) in [
        (r#"{"family":"x","containerDefinitions":[{"name":"a","image":"busybox","memory":64,"portMappings":[{"containerPort":80}]},{"name":"b","image":"busybox","memory":64,"portMappings":[{"containerPort":80}]}]}"#.to_owned(), "containerDefinitions[1].portMappings[0].containerPort: 80/tcp is also mapped by container a"),
        (r#"{"family":"x","networkMode":"awsvpc","containerDefinitions":[{"name":"a","image":"busybox","memory":64}]}"#.to_owned(), "networkMode awsvpc"),
        (r#"{"family":"x","networkMode":"none","requiresCompatibilities":["FARGATE"],"cpu":"256","memory":"512","containerDefinitions":[{"name":"a","image":"busybox"}]}"#.to_owned(), "FARGATE"),
        (format!(r#"{{"family":"x","networkMode":"none","runtimePlatform":{{"cpuArchitecture":"{other_arch}"}},"containerDefinitions":[{{"name":"a","image":"busybox","memory":64}}]}}"#), "cpuArchitecture"),
    ] {
        std::fs::write(&file, &def).unwrap();
        let out = d.cmd(&["task", "run", "-f", file.to_str().unwrap()]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("this node cannot run the task") && err.contains(says), "{def}: {err}");
    }
    assert!(d.ok(&["task", "ls", "-a", "-q"]).trim().is_empty());

    // An image that is nowhere: the task fails to start, with the reason.
    let missing = d.run(r#"{"name":"a","image":"127.0.0.1:9/none:1"}"#, false);
    let rec = d.wait_stopped(&missing);
    assert_eq!(rec["stopCode"], "TaskFailedToStart", "{rec:#}");
    assert!(
        rec["stoppedReason"]
            .as_str()
            .unwrap()
            .contains("CannotPullContainerError"),
        "{rec:#}"
    );
    // A command that does not exist: created, but it cannot start.
    let bad = d.run(&bb("a", r#""command":["/no/such/binary"]"#), false);
    let rec = d.wait_stopped(&bad);
    assert_eq!(rec["stopCode"], "TaskFailedToStart", "{rec:#}");
    let a = Skiffd::container(&rec, "a");
    assert!(
        a["reason"]
            .as_str()
            .unwrap()
            .contains("CannotStartContainerError"),
        "{rec:#}"
    );
    // privileged: true on a node that does not allow it.
    let privileged = d.run(&bb("a", r#""privileged":true,"command":["true"]"#), false);
    let rec = d.wait_stopped(&privileged);
    assert_eq!(rec["stopCode"], "TaskFailedToStart", "{rec:#}");
    assert!(
        rec["stoppedReason"]
            .as_str()
            .unwrap()
            .contains("privileged"),
        "{rec:#}"
    );
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
    // Operations on tasks that are not there say so.
    let out = d.cmd(&["task", "stop", "ffffffff"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no task ffffffff"));
}

#[test]
fn stop_sends_sigterm_then_sigkill_after_stop_timeout() {
    if !privileged("stop_sends_sigterm_then_sigkill_after_stop_timeout") {
        return;
    }
    let d = Skiffd::start("");
    let id = d.run(
        &[
            bb("polite", r#""command":["sh","-c","trap 'exit 3' TERM; while true; do sleep 0.1; done"]"#),
            bb("stubborn", r#""essential":false,"stopTimeout":2,"command":["sh","-c","trap 'echo term' TERM; while true; do echo tick; sleep 0.5; done"]"#),
        ]
        .join(","),
        false,
    );
    let rec = d.describe(&id);
    assert_eq!(rec["lastStatus"], "RUNNING", "{rec:#}");
    d.ok(&["task", "stop", &id]);
    let rec = d.describe(&id);
    assert_eq!(rec["lastStatus"], "STOPPED");
    assert_eq!(rec["stopCode"], "UserInitiated");
    assert_eq!(Skiffd::container(&rec, "polite")["exitCode"], 3, "{rec:#}");
    assert_eq!(
        Skiffd::container(&rec, "stubborn")["exitCode"],
        137,
        "{rec:#}"
    );
    // It got SIGTERM, lived on through it (it kept ticking), and only then was SIGKILLed.
    let log = d.ok(&["logs", &id, "stubborn"]);
    let after_term: Vec<&str> = log.lines().skip_while(|l| *l != "term").skip(1).collect();
    assert!(
        after_term.len() >= 2 && after_term.iter().all(|l| *l == "tick"),
        "SIGTERM, then running until SIGKILL: {log}"
    );
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
}

#[test]
fn depends_on_conditions_and_health_checks() {
    if !privileged("depends_on_conditions_and_health_checks") {
        return;
    }
    let d = Skiffd::start("");
    // db and migrate leave marks in a shared volume; app prints what it finds when it starts.
    let shared = r#""mountPoints":[{"sourceVolume":"shared","containerPath":"/shared"}]"#;
    let health = r#""healthCheck":{"command":["CMD-SHELL","test -f /shared/ready"],"interval":5,"timeout":2,"retries":2}"#;
    let containers = [
        bb(
            "db",
            &format!(
                r#""stopTimeout":2,"command":["sh","-c","sleep 2; touch /shared/ready; sleep 300"],{health},{shared}"#
            ),
        ),
        bb(
            "migrate",
            &format!(
                r#""essential":false,"command":["sh","-c","sleep 1; touch /shared/migrated"],{shared}"#
            ),
        ),
        bb(
            "warmup",
            r#""essential":false,"command":["sh","-c","exit 4"]"#,
        ),
        bb(
            "app",
            &format!(
                r#""stopTimeout":2,"command":["sh","-c","ls /shared; sleep 300"],{shared},"dependsOn":[{{"containerName":"db","condition":"HEALTHY"}},{{"containerName":"migrate","condition":"SUCCESS"}},{{"containerName":"warmup","condition":"COMPLETE"}}]"#
            ),
        ),
        bb(
            "sidecar",
            r#""essential":false,"stopTimeout":2,"command":["sleep","300"],"dependsOn":[{"containerName":"app","condition":"START"}]"#,
        ),
        bb(
            "never",
            r#""essential":false,"command":["true"],"dependsOn":[{"containerName":"warmup","condition":"SUCCESS"}]"#,
        ),
        bb(
            "sick",
            r#""essential":false,"stopTimeout":2,"command":["sleep","300"],"healthCheck":{"command":["CMD","false"],"interval":5,"retries":2}"#,
        ),
    ];
    let id = d.run_def(
        &format!(
            r#"{{"family":"deps","networkMode":"none","memory":"256","volumes":[{{"name":"shared"}}],"containerDefinitions":[{}]}}"#,
            containers.join(",")
        ),
        true,
    );
    let rec = d.wait_for(&id, 30, |r| r["lastStatus"] == "RUNNING");
    let c = |n| Skiffd::container(&rec, n).clone();
    let started = |n| c(n)["startedAt"].as_f64().unwrap();
    assert_eq!(c("db")["healthStatus"], "HEALTHY", "{rec:#}");
    // app started only once db was healthy (ready) and migrate had succeeded (migrated).
    assert_eq!(d.ok(&["logs", &id, "app"]), "migrated\nready\n", "{rec:#}");
    assert_eq!(c("migrate")["exitCode"], 0);
    assert_eq!(c("warmup")["exitCode"], 4);
    assert!(started("sidecar") >= started("app"));
    assert_eq!(c("never")["lastStatus"], "STOPPED");
    assert!(
        c("never")["reason"]
            .as_str()
            .unwrap()
            .contains("dependency warmup exited with code 4"),
        "{rec:#}"
    );
    assert!(c("never").get("startedAt").is_none());
    let rec = d.wait_for(&id, 30, |r| {
        Skiffd::container(r, "sick")["healthStatus"] == "UNHEALTHY"
    });
    // Only essential containers make the task's health: db is.
    assert_eq!(rec["healthStatus"], "HEALTHY", "{rec:#}");
    d.ok(&["task", "stop", &id]);
    // Stopped containers have no health verdict, nor has the task.
    let rec = d.describe(&id);
    assert_eq!(
        Skiffd::container(&rec, "db")["healthStatus"],
        "UNKNOWN",
        "{rec:#}"
    );
    assert_eq!(rec["healthStatus"], "UNKNOWN", "{rec:#}");
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
}

#[test]
fn restart_policy_restarts_in_place_unless_the_exit_code_is_ignored() {
    if !privileged("restart_policy_restarts_in_place_unless_the_exit_code_is_ignored") {
        return;
    }
    let d = Skiffd::start("");
    // ECS's shortest restartAttemptPeriod is 60 s: a container must have run that long. The two
    // that do, worker (restarted) and done (its exit code ignored), run those 61 s side by side.
    let policy =
        r#""restartPolicy":{"enabled":true,"ignoredExitCodes":[0],"restartAttemptPeriod":60}"#;
    let id = d.run(
        &[
            bb("worker", &format!(r#""command":["sh","-c","echo run; if [ -f /tmp/again ]; then while [ ! -f /tmp/go ]; do sleep 0.1; done; exit 0; fi; sleep 61; touch /tmp/again; exit 9"],{policy}"#)),
            bb("done", &format!(r#""essential":false,"command":["sh","-c","sleep 61; exit 0"],{policy}"#)),
            bb("quick", &format!(r#""essential":false,"command":["sh","-c","exit 5"],{policy}"#)),
        ]
        .join(","),
        false,
    );
    // quick failed fast: not restarted.
    let rec = d.wait_for(&id, 10, |r| {
        Skiffd::container(r, "quick")["lastStatus"] == "STOPPED"
    });
    assert_eq!(
        Skiffd::container(&rec, "quick")["restartCount"],
        0,
        "{rec:#}"
    );
    // worker ran 61 s and exited 9: restarted in place (its writable layer kept: it found
    // /tmp/again), and the task runs on; done ran as long and exited 0, which is ignored.
    let rec = d.wait_for(&id, 150, |r| {
        let w = Skiffd::container(r, "worker");
        w["restartCount"] == 1
            && w["lastStatus"] == "RUNNING"
            && Skiffd::container(r, "done")["lastStatus"] == "STOPPED"
    });
    assert_eq!(rec["lastStatus"], "RUNNING", "{rec:#}");
    // Told to, worker exits 0 too: the essential container stays exited and the task stops.
    d.ok(&["exec", &id, "worker", "--", "sh", "-c", "echo > /tmp/go"]);
    let rec = d.wait_for(&id, 30, |r| r["lastStatus"] == "STOPPED");
    let w = Skiffd::container(&rec, "worker");
    assert_eq!(w["restartCount"], 1, "{rec:#}");
    assert_eq!(w["exitCode"], 0, "{rec:#}");
    let done = Skiffd::container(&rec, "done");
    assert_eq!(done["restartCount"], 0, "{rec:#}");
    assert_eq!(done["exitCode"], 0, "{rec:#}");
    assert_eq!(d.ok(&["logs", &id, "worker"]), "run\nrun\n");
}

#[test]
fn exec_runs_in_the_container_and_logs_follow() {
    if !privileged("exec_runs_in_the_container_and_logs_follow") {
        return;
    }
    let d = Skiffd::start("");
    let id = d.run(
        &bb("web", r#""user":"app","hostname":"webhost","stopTimeout":2,"command":["sh","-c","i=0; while [ $i -lt 3 ]; do echo tick$i; i=$((i+1)); sleep 1; done; sleep 300"]"#),
        false,
    );
    let out = d
        .cmd(&[
            "exec",
            &id,
            "web",
            "--",
            "sh",
            "-c",
            "hostname; id -u; exit 4",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "webhost\n1000\n");
    let err = d
        .cmd(&["exec", &id, "nope", "--", "true"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("has no container nope"),
        "{err:?}"
    );
    // Follow: lines arrive as written, and the stream ends when the container stops.
    let mut follow = d
        .cmd(&["logs", "-f", &id])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    for want in ["tick0", "tick1", "tick2"] {
        assert_eq!(lines.next().unwrap().unwrap(), want);
    }
    d.ok(&["task", "stop", &id]);
    assert!(lines.next().is_none());
    assert!(follow.wait().unwrap().success());
}

#[test]
fn kill_9_skiffd_loses_no_task_and_no_exit() {
    if !privileged("kill_9_skiffd_loses_no_task_and_no_exit") {
        return;
    }
    let mut d = Skiffd::start("");
    let long = d.run(&bb("main", r#""stopTimeout":2,"command":["sh","-c","trap 'exit 0' TERM; while true; do sleep 0.1; done"]"#), false);
    let short = d.run(
        &bb("main", r#""command":["sh","-c","sleep 2; exit 5"]"#),
        false,
    );
    let oom = d.run_def(
        &format!(
            r#"{{"family":"oom","networkMode":"none","memory":"32","containerDefinitions":[{}]}}"#,
            bb(
                "hog",
                r#""command":["sh","-c","sleep 2; x=a; while true; do x=$x$x; done"]"#
            )
        ),
        false,
    );
    let pid_before = Skiffd::container(&d.describe(&long), "main")["pid"].clone();
    d.kill9();
    std::thread::sleep(Duration::from_secs(5));
    d.spawn();
    // The short task's container exited while skiffd was down: its real exit code is reported.
    let rec = d.wait_stopped(&short);
    assert_eq!(Skiffd::container(&rec, "main")["exitCode"], 5, "{rec:#}");
    let rec = d.wait_stopped(&oom);
    let hog = Skiffd::container(&rec, "hog");
    assert_eq!(hog["exitCode"], 137, "{rec:#}");
    assert!(
        hog["reason"].as_str().unwrap().contains("OutOfMemoryError"),
        "{rec:#}"
    );
    // The long one runs on, the same process, and can still be stopped.
    let rec = d.describe(&long);
    assert_eq!(rec["lastStatus"], "RUNNING", "{rec:#}");
    assert_eq!(Skiffd::container(&rec, "main")["pid"], pid_before);
    d.ok(&["task", "stop", &long]);
    let rec = d.describe(&long);
    assert_eq!(Skiffd::container(&rec, "main")["exitCode"], 0, "{rec:#}");
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
}

#[test]
fn a_restart_cleans_what_belongs_to_no_task() {
    if !privileged("a_restart_cleans_what_belongs_to_no_task") {
        return;
    }
    let mut d = Skiffd::start("");
    let id = d.run(&bb("main", r#""command":["sleep","300"]"#), false);
    d.kill9();
    // The task's record vanishes while skiffd is down (a lost disk write, an operator): its
    // container, root filesystem and cgroup are orphans now.
    std::fs::remove_dir_all(d.root.join("tasks").join(&id)).unwrap();
    assert!(!d.leftovers().is_empty());
    d.spawn();
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
}

#[test]
fn two_hundred_start_stop_cycles_leave_nothing_behind() {
    if !privileged("two_hundred_start_stop_cycles_leave_nothing_behind") {
        return;
    }
    let d = Skiffd::start("");
    let def = d.dir.path().join("cycle.json");
    std::fs::write(
        &def,
        format!(r#"{{"family":"cycle","networkMode":"none","memory":"64","volumes":[{{"name":"scratch"}}],"containerDefinitions":[{}]}}"#,
            bb("main", r#""command":["sh","-c","trap 'exit 0' TERM; while [ ! -f /data/stop ]; do sleep 0.05; done"],"mountPoints":[{"sourceVolume":"scratch","containerPath":"/data"}]"#)),
    )
    .unwrap();
    // Half stopped through the API, half exiting on their own (told to through exec).
    for i in 0..200 {
        let id = d
            .ok(&["task", "run", "-f", def.to_str().unwrap()])
            .trim()
            .to_owned();
        if i % 2 == 0 {
            d.ok(&["task", "stop", &id]);
        } else {
            d.ok(&["exec", &id, "main", "--", "sh", "-c", "echo > /data/stop"]);
            d.wait_stopped(&id);
        }
        d.ok(&["task", "rm", &id]);
    }
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
    assert!(d.ok(&["task", "ls", "-a", "-q"]).trim().is_empty());
    let tasks: Vec<_> = std::fs::read_dir(d.root.join("tasks")).unwrap().collect();
    assert!(tasks.is_empty(), "{tasks:?}");
    // No shim or container process of this node is left.
    let ps = std::process::Command::new("pgrep")
        .args(["-f", d.run_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&ps.stdout)
    );
}

#[test]
fn stats_and_the_prometheus_endpoint() {
    if !privileged("stats_and_the_prometheus_endpoint") {
        return;
    }
    let port = free_port();
    let d = Skiffd::start(&format!("metrics_address = \"127.0.0.1:{port}\""));
    let id = d.run_def(
        &format!(
            r#"{{"family":"busy","networkMode":"none","memory":"128","containerDefinitions":[{},{}]}}"#,
            bb("spin", r#""stopTimeout":2,"command":["sh","-c","while true; do :; done"]"#),
            bb("idle", r#""stopTimeout":2,"essential":false,"command":["sleep","300"]"#)
        ),
        false,
    );
    let out = d.ok(&["stats", "--no-stream", &id]);
    let spin = out
        .lines()
        .find(|l| l.starts_with("spin"))
        .unwrap_or_else(|| panic!("{out}"));
    let cpu: f64 = spin
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(cpu > 20.0, "a busy loop uses a core: {out}");
    let task = out.lines().find(|l| l.starts_with("(task)")).unwrap();
    assert!(task.contains("/ 128.0MiB"), "{out}");
    // The metrics endpoint, scraped over loopback as Prometheus would.
    let body = skiff_tests::in_netns(&d.netns, move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::io::Write::write_all(
            &mut s,
            b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .unwrap();
        let mut body = String::new();
        std::io::Read::read_to_string(&mut s, &mut body).unwrap();
        body
    });
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let metric = |name: &str, container: &str| -> f64 {
        body.lines()
            .find(|l| {
                l.starts_with(name)
                    && l.contains(&format!("task_id=\"{id}\""))
                    && (container.is_empty() || l.contains(&format!("container=\"{container}\"")))
            })
            .unwrap_or_else(|| panic!("{name} {container}: {body}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(metric("skiff_container_cpu_usage_seconds_total", "spin") > 0.1);
    assert_eq!(
        metric("skiff_task_memory_limit_bytes", ""),
        128.0 * 1048576.0
    );
    assert!(metric("skiff_container_pids", "idle") >= 1.0);
    d.ok(&["task", "stop", &id]);
}

/// A cgroup v1 file of this node's task `id` (container `c`, when given).
fn cgroup_file(d: &Skiffd, ctrl: &str, id: &str, c: Option<&str>, file: &str) -> String {
    let mut p = std::path::PathBuf::from("/sys/fs/cgroup")
        .join(ctrl)
        .join(&d.cgroup_parent)
        .join(id);
    if let Some(c) = c {
        p.push(c);
    }
    std::fs::read_to_string(p.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", p.join(file).display()))
        .trim()
        .to_owned()
}

#[test]
fn cgroup_limits_are_written_and_enforced() {
    if !privileged("cgroup_limits_are_written_and_enforced") {
        return;
    }
    if !std::path::Path::new("/sys/fs/cgroup/memory").is_dir() {
        // cgroup v2 hosts are covered by tests/tests/cgroup2_vm.rs.
        eprintln!(
            "cgroup_limits_are_written_and_enforced: checks cgroup v1 files; this host is v2"
        );
        return;
    }
    let d = Skiffd::start("container_pids_limit = 12\ntask_pids_limit = 40");
    let id = d.run_def(
        &format!(
            r#"{{"family":"limits","networkMode":"none","cpu":"512","memory":"256","containerDefinitions":[{}]}}"#,
            bb("app", r#""cpu":256,"memory":64,"memoryReservation":32,"stopTimeout":2,"command":["sleep","300"]"#)
        ),
        false,
    );
    // The task: cpu as a CFS quota (512 units = half a core) and shares, memory hard limit.
    assert_eq!(
        cgroup_file(&d, "cpu", &id, None, "cpu.cfs_quota_us"),
        "50000"
    );
    assert_eq!(cgroup_file(&d, "cpu", &id, None, "cpu.shares"), "512");
    assert_eq!(
        cgroup_file(&d, "memory", &id, None, "memory.limit_in_bytes"),
        (256u64 << 20).to_string()
    );
    // The container: its shares, hard and soft memory limits, the node's pids limit.
    assert_eq!(
        cgroup_file(&d, "cpu", &id, Some("app"), "cpu.shares"),
        "256"
    );
    assert_eq!(
        cgroup_file(&d, "memory", &id, Some("app"), "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        cgroup_file(&d, "memory", &id, Some("app"), "memory.soft_limit_in_bytes"),
        (32u64 << 20).to_string()
    );
    assert_eq!(cgroup_file(&d, "pids", &id, Some("app"), "pids.max"), "12");
    // Forks beyond the limit fail inside the container (an exec'd shell counts too).
    let fork = "i=0; while [ $i -lt 30 ]; do sleep 60 >/dev/null 2>&1 & i=$((i+1)); done";
    let out = d
        .cmd(&["exec", &id, "app", "--", "sh", "-c", fork])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("can't fork"),
        "{out:?}"
    );
    // sleep 300, the exec'd shell and 10 sleeps made 12; the shell is gone now.
    assert_eq!(
        cgroup_file(&d, "pids", &id, Some("app"), "pids.current"),
        "11"
    );
    d.ok(&["task", "stop", &id]);
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
}

#[test]
fn one_skiffd_per_state_root() {
    if !privileged("one_skiffd_per_state_root") {
        return;
    }
    let d = Skiffd::start("");
    let out = std::process::Command::new(workspace_bin("skiffd"))
        .arg("--config")
        .arg(&d.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another skiffd is using"), "{err}");
    // The first one is untouched.
    d.ok(&["task", "ls"]);
}

#[test]
fn pid_and_ipc_modes() {
    if !privileged("pid_and_ipc_modes") {
        return;
    }
    let d = Skiffd::start("");
    let ns = |what: &str| {
        std::fs::read_link(format!("/proc/self/ns/{what}"))
            .unwrap()
            .display()
            .to_string()
    };
    // ipcMode task: one IPC namespace and one /dev/shm for the task's containers.
    let def = |extra: &str, containers: &[String]| {
        format!(
            r#"{{"family":"ns","networkMode":"none","memory":"128",{extra}"containerDefinitions":[{}]}}"#,
            containers.join(",")
        )
    };
    let id = d.run_def(
        &def(
            r#""ipcMode":"task","pidMode":"host","#,
            &[
                bb("a", r#""command":["sh","-c","busybox readlink /proc/self/ns/ipc > /dev/shm/a; busybox readlink /proc/self/ns/pid; sleep 300"],"stopTimeout":2"#),
                bb("b", r#""essential":false,"dependsOn":[{"containerName":"a","condition":"START"}],"command":["sh","-c","while [ ! -s /dev/shm/a ]; do sleep 0.05; done; busybox readlink /proc/self/ns/ipc; cat /dev/shm/a"]"#),
            ],
        ),
        false,
    );
    d.wait_for(&id, 20, |r| {
        Skiffd::container(r, "b")["lastStatus"] == "STOPPED"
    });
    let b = d.ok(&["logs", &id, "b"]);
    let lines: Vec<&str> = b.lines().collect();
    assert_eq!(lines.len(), 2, "{b}");
    assert_eq!(lines[0], lines[1], "same IPC namespace: {b}");
    assert_ne!(lines[0], ns("ipc"), "not the node's: {b}");
    // pidMode host: the node's PID namespace.
    assert_eq!(d.ok(&["logs", &id, "a"]).trim(), ns("pid"));
    let ns_dir = d.run_dir.join("ns").join(&id);
    assert!(ns_dir.join("ipc").exists());
    d.ok(&["task", "stop", &id]);
    assert!(!ns_dir.exists(), "the task's IPC namespace is released");
    // ipcMode none: no /dev/shm at all; host: the node's IPC namespace.
    let id = d.run_def(
        &def(
            r#""ipcMode":"none","#,
            &[bb(
                "c",
                r#""command":["sh","-c","test -d /dev/shm && echo shm || echo no shm"]"#,
            )],
        ),
        false,
    );
    d.wait_stopped(&id);
    assert_eq!(d.ok(&["logs", &id]), "no shm\n");
    let id = d.run_def(
        &def(
            r#""ipcMode":"host","#,
            &[bb(
                "c",
                r#""command":["busybox","readlink","/proc/self/ns/ipc"]"#,
            )],
        ),
        false,
    );
    d.wait_stopped(&id);
    assert_eq!(d.ok(&["logs", &id]).trim(), ns("ipc"));
    // pidMode task: the containers share one PID namespace, held by the task's pause.
    let id = d.run_def(
        &def(
            r#""pidMode":"task","#,
            &[
                bb("a", r#""command":["sleep","300"],"stopTimeout":2"#),
                bb("b", r#""essential":false,"dependsOn":[{"containerName":"a","condition":"START"}],"command":["sh","-c","busybox ps -o args | busybox grep -v ps"]"#),
            ],
        ),
        false,
    );
    d.wait_for(&id, 20, |r| {
        Skiffd::container(r, "b")["lastStatus"] == "STOPPED"
    });
    let ps = d.ok(&["logs", &id, "b"]);
    assert!(
        ps.contains("/busybox sleep 2147483647") && ps.contains("sleep 300"),
        "{ps}"
    );
    d.ok(&["task", "stop", &id]);
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
}
