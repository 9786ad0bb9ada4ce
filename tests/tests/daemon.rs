//! skiffd end to end: the real daemon, its API over the unix socket through the real `skiff`
//! CLI, containers run by real shims with libcontainer on this kernel.

use std::time::{Duration, Instant};

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
    let out = d.cmd(&["logs", &id]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "out\n1000\n/tmp\nhello\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(d.ok(&["logs", "--tail", "1", &id, "main"]), "hello\n");
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
            bb("stubborn", r#""essential":false,"stopTimeout":2,"command":["sh","-c","trap '' TERM; while true; do sleep 0.1; done"]"#),
        ]
        .join(","),
        false,
    );
    let rec = d.describe(&id);
    assert_eq!(rec["lastStatus"], "RUNNING", "{rec:#}");
    let t = Instant::now();
    d.ok(&["task", "stop", &id]);
    let took = t.elapsed();
    let rec = d.describe(&id);
    assert_eq!(rec["lastStatus"], "STOPPED");
    assert_eq!(rec["stopCode"], "UserInitiated");
    assert_eq!(Skiffd::container(&rec, "polite")["exitCode"], 3, "{rec:#}");
    assert_eq!(
        Skiffd::container(&rec, "stubborn")["exitCode"],
        137,
        "{rec:#}"
    );
    assert!(
        took >= Duration::from_secs(2),
        "SIGKILL came before stopTimeout: {took:?}"
    );
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
}
