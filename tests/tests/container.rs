//! A container from a task definition, end to end: an image from the store, a runtime spec from
//! `skiff_runtime::spec`, and the real `skiff-shim` running it with youki's libcontainer on this
//! kernel, its exit code and output recorded.

use std::path::{Path, PathBuf};
use std::process::Command;

use skiff_runtime::cgroups::{CGROUP_ROOT, Layout, TaskCgroup, TaskLimits};
use skiff_runtime::logs::{LogLine, Stream, read};
use skiff_runtime::shim::ExitStatus;
use skiff_runtime::spec::{ImageRunConfig, SpecInputs, build_spec};
use skiff_runtime::taskdef::TaskDefinition;
use skiff_tests::*;

struct Ran {
    exit: ExitStatus,
    stdout: String,
    stderr: String,
    lines: Vec<LogLine>,
    /// Exit code and output of each exec, in order.
    execs: Vec<(i32, String)>,
}

fn text(lines: &[LogLine], stream: Stream) -> String {
    lines
        .iter()
        .filter(|l| l.stream == stream)
        .map(|l| l.log.as_str())
        .collect()
}

/// Loads a busybox image, mounts a root filesystem, runs `container` (JSON of one container
/// definition) through skiff-shim, and cleans up every mount, cgroup and state directory.
fn run_container(name: &str, container: &str) -> Ran {
    run_in_task(name, container, TaskLimits::default(), None)
}

/// A stop request: SIGTERM to the shim after `after`, with `timeout` seconds before SIGKILL.
struct StopAfter {
    after: std::time::Duration,
    timeout: u64,
    /// Run with `skiff-shim exec` inside the container just before stopping it.
    execs: &'static [Exec],
}

/// A command for `skiff-shim exec`.
struct Exec {
    args: &'static [&'static str],
    /// Run with `--tty`, the shim's stdio a terminal of the test's, with this typed into it.
    tty: Option<&'static str>,
}

/// As `run_container`, inside a task cgroup with `limits`.
fn run_in_task(name: &str, container: &str, limits: TaskLimits, stop: Option<StopAfter>) -> Ran {
    let skiff = Skiff::new("");
    let layout = skiff.dir.path().join("layout");
    write_busybox_layout(&layout);
    skiff.ok(&["load", "--name", "local/bb", layout.to_str().unwrap()]);
    let rootfs = PathBuf::from(skiff.ok(&["mount", "local/bb:1", name]).trim());

    let def = TaskDefinition::from_json(&format!(
        r#"{{"family":"t","networkMode":"none","memory":"128","containerDefinitions":[{container}]}}"#
    ))
    .unwrap();
    let image = ImageRunConfig {
        cmd: vec!["/bin/sh".into()],
        env: vec!["PATH=/bin".into()],
        ..Default::default()
    };
    let task = TaskCgroup::create(Layout::detect(Path::new(CGROUP_ROOT)), name, limits).unwrap();
    let cgroup = task.container_path("c");
    let profile = std::fs::read_to_string(skiff_runtime::seccomp::DEFAULT_PROFILE)
        .expect("seccomp profile (apt-get install golang-github-containers-common)");
    let spec = build_spec(&SpecInputs {
        def: &def.container_definitions[0],
        image: &image,
        network_mode: def.network_mode(),
        netns_path: None,
        pid_mode: None,
        task_pid: None,
        ipc_mode: None,
        task_ipc: None,
        rootfs: rootfs.clone(),
        cgroups_path: cgroup.clone(),
        hostname: Some(name.to_owned()),
        passwd: PASSWD,
        group: GROUP,
        env_files: &[],
        mounts: vec![],
        pids_limit: Some(64),
        allow_privileged: false,
        seccomp_profile: Some(&profile),
        init_binary: None,
    })
    .unwrap();
    let bundle = skiff.dir.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    spec.save(bundle.join("config.json")).unwrap();
    let state = skiff.dir.path().join("state");
    let (logs, exit) = (bundle.join("logs"), bundle.join("exit"));
    let timeout = stop.as_ref().map_or(30, |s| s.timeout);
    let child = shim_run(name, &bundle, &state, timeout).spawn().unwrap();
    let mut execs = Vec::new();
    if let Some(stop) = &stop {
        std::thread::sleep(stop.after);
        for exec in stop.execs {
            let mut shim = Command::new(workspace_bin("skiff-shim"));
            shim.arg("--state-root")
                .arg(&state)
                .args(["exec", "--id", name]);
            execs.push(match exec.tty {
                None => {
                    let out = shim.arg("--").args(exec.args).output().unwrap();
                    (
                        out.status.code().unwrap_or(-1),
                        String::from_utf8_lossy(&out.stdout).into_owned()
                            + &String::from_utf8_lossy(&out.stderr),
                    )
                }
                Some(input) => {
                    shim.args(["--tty", "--"]).args(exec.args);
                    in_pty(shim, input)
                }
            });
        }
        sh(Command::new("kill").args(["-TERM", &child.id().to_string()])).unwrap();
    }
    let shim = child.wait_with_output().unwrap();
    skiff.ok(&["unmount", name]);
    assert!(
        shim.status.success(),
        "skiff-shim failed: {}",
        String::from_utf8_lossy(&shim.stderr)
    );
    assert!(!state.join(name).exists(), "libcontainer state deleted");
    for dir in cgroup_dirs(&cgroup) {
        assert!(!dir.exists(), "container cgroup {} removed", dir.display());
    }
    task.remove().unwrap();
    for dir in cgroup_dirs(&cgroup) {
        let task_dir = dir.parent().unwrap();
        assert!(
            !task_dir.exists(),
            "task cgroup {} removed",
            task_dir.display()
        );
        // Skiff's parent cgroup too, once no other test's task is in it.
        let _ = std::fs::remove_dir(task_dir.parent().unwrap());
    }
    let lines = read(&logs, None);
    Ran {
        exit: ExitStatus::read(&exit).unwrap().expect("exit file written"),
        stdout: text(&lines, Stream::Stdout),
        stderr: text(&lines, Stream::Stderr),
        lines,
        execs,
    }
}

/// The container's cgroup directory in every mounted hierarchy (v1 controllers, or v2).
fn cgroup_dirs(rel: &Path) -> Vec<PathBuf> {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir() && !p.is_symlink())
                .map(|p| p.join(rel))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn exit_code_and_output_are_recorded() {
    if !privileged("exit_code_and_output_are_recorded") {
        return;
    }
    let ran = run_container(
        "skiff-e2e-exit",
        r#"{"name":"c","image":"local/bb:1","command":["sh","-c","echo hi; echo oops >&2; exit 7"]}"#,
    );
    assert_eq!(
        ran.exit,
        ExitStatus {
            exit_code: 7,
            signal: None,
            oom_killed: false
        }
    );
    assert_eq!(ran.stdout, "hi\n");
    assert_eq!(ran.stderr, "oops\n");
    // json-file lines in order, each with its stream and an RFC 3339 time.
    assert_eq!(ran.lines.len(), 2);
    assert!(
        ran.lines
            .iter()
            .all(|l| l.time.ends_with('Z') && l.time.len() == 30),
        "{:?}",
        ran.lines
    );
    assert!(ran.lines[0].time <= ran.lines[1].time);
}

#[test]
fn user_env_workdir_and_isolation_apply() {
    if !privileged("user_env_workdir_and_isolation_apply") {
        return;
    }
    let ran = run_container(
        "skiff-e2e-user",
        r#"{"name":"c","image":"local/bb:1","user":"app","workingDirectory":"/tmp",
            "environment":[{"name":"GREETING","value":"hello"}],
            "command":["sh","-c","id -u; id -G; pwd; echo $GREETING $HOME; busybox hostname; busybox grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; busybox stat -c %F /proc/keys; busybox cat /proc/timer_list | busybox wc -c; echo x > /proc/sysrq-trigger || echo ro"]}"#,
    );
    assert_eq!(ran.exit.exit_code, 0, "{}{}", ran.stdout, ran.stderr);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines[0], "1000");
    assert_eq!(
        lines[1], "1000 50",
        "primary and supplementary groups from /etc/group"
    );
    assert_eq!(lines[2], "/tmp");
    assert_eq!(lines[3], "hello /home/app");
    assert_eq!(lines[4], "skiff-e2e-user");
    assert_eq!(
        lines[5], "CapEff:\t0000000000000000",
        "a non-root user has no effective capabilities"
    );
    assert_eq!(
        lines[6], "CapBnd:\t00000000a80425fb",
        "Docker's default bounding set"
    );
    assert_eq!(lines[7], "NoNewPrivs:\t1");
    assert_eq!(
        lines[8], "character special file",
        "/proc/keys is masked (bind of /dev/null)"
    );
    assert_eq!(lines[9], "0", "/proc/timer_list reads empty");
    assert_eq!(lines[10], "ro", "/proc/sysrq-trigger is read-only");
}

#[test]
fn seccomp_refuses_namespaces_and_mounts() {
    if !privileged("seccomp_refuses_namespaces_and_mounts") {
        return;
    }
    // unshare -U needs no capability, so only the filter can refuse it; mount is refused by the
    // filter before the missing CAP_SYS_ADMIN is even checked.
    let ran = run_container(
        "skiff-e2e-seccomp",
        r#"{"name":"c","image":"local/bb:1","command":["sh","-c","busybox unshare -U true; echo unshare=$?; busybox mount -t tmpfs none /tmp; echo mount=$?; busybox chroot / true; echo chroot=$?"]}"#,
    );
    assert_eq!(ran.exit.exit_code, 0, "{}{}", ran.stdout, ran.stderr);
    // chroot is allowed because CAP_SYS_CHROOT is in Docker's default set: the profile's
    // capability-conditional rules were applied.
    assert_eq!(ran.stdout, "unshare=1\nmount=1\nchroot=0\n");
    assert!(
        ran.stderr.contains("Operation not permitted"),
        "{}",
        ran.stderr
    );
}

#[test]
fn the_task_memory_limit_oom_kills() {
    if !privileged("the_task_memory_limit_oom_kills") {
        return;
    }
    // A 96 MB shell variable in a task limited to 32 MiB.
    let ran = run_in_task(
        "skiff-e2e-oom",
        r#"{"name":"c","image":"local/bb:1","command":["sh","-c","x=$(busybox head -c 100000000 /dev/zero | busybox tr '\\0' a); echo survived"]}"#,
        TaskLimits {
            memory_bytes: Some(32 << 20),
            cpu_units: Some(512),
            pids: Some(64),
        },
        None,
    );
    assert_ne!(ran.stdout, "survived\n");
    assert_eq!(
        ran.exit,
        ExitStatus {
            exit_code: 137,
            signal: Some(9),
            oom_killed: true
        },
        "reported as ECS does: exit 137, killed by the OOM killer"
    );
}

#[test]
fn stop_sends_sigterm_then_sigkill_after_the_timeout() {
    if !privileged("stop_sends_sigterm_then_sigkill_after_the_timeout") {
        return;
    }
    // A container that handles SIGTERM exits with its own code.
    let ran = run_in_task(
        "skiff-e2e-term",
        r#"{"name":"c","image":"local/bb:1","command":["sh","-c","trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 0.1; done"]}"#,
        TaskLimits::default(),
        Some(StopAfter {
            after: std::time::Duration::from_millis(800),
            timeout: 5,
            execs: &[],
        }),
    );
    assert_eq!(ran.exit.exit_code, 3, "{}{}", ran.stdout, ran.stderr);
    assert_eq!(ran.stdout, "ready\ngot TERM\n");

    // One that ignores it is killed once stopTimeout has passed.
    let ran = run_in_task(
        "skiff-e2e-kill",
        r#"{"name":"c","image":"local/bb:1","command":["sh","-c","trap '' TERM; echo ready; while :; do sleep 0.1; done"]}"#,
        TaskLimits::default(),
        Some(StopAfter {
            after: std::time::Duration::from_millis(800),
            timeout: 2,
            execs: &[],
        }),
    );
    assert_eq!(
        ran.exit,
        ExitStatus {
            exit_code: 137,
            signal: Some(9),
            oom_killed: false
        },
        "{}{}",
        ran.stdout,
        ran.stderr
    );
}

#[test]
fn exec_runs_inside_the_running_container() {
    if !privileged("exec_runs_inside_the_running_container") {
        return;
    }
    let ran = run_in_task(
        "skiff-e2e-exec",
        r#"{"name":"c","image":"local/bb:1","user":"app","environment":[{"name":"FROM_DEF","value":"yes"}],
            "command":["sh","-c","trap 'exit 0' TERM; echo $$ > /tmp/main.pid; while :; do sleep 0.1; done"]}"#,
        TaskLimits::default(),
        Some(StopAfter {
            after: std::time::Duration::from_millis(800),
            timeout: 5,
            execs: &[Exec {
                args: &[
                    "sh",
                    "-c",
                    "busybox hostname; id -u; echo $FROM_DEF; cat /tmp/main.pid; \
                     busybox grep Seccomp: /proc/self/status; \
                     busybox unshare -U true 2>/dev/null || echo unshare refused; exit 5",
                ],
                tty: None,
            }],
        }),
    );
    let (code, out) = &ran.execs[0];
    // Same UTS and PID namespaces, same user and environment, same filesystem, the container's
    // seccomp filter (mode 2: filtered; it refuses unshare); its own exit code.
    assert_eq!(
        out, "skiff-e2e-exec\n1000\nyes\n1\nSeccomp:\t2\nunshare refused\n",
        "exec output"
    );
    assert_eq!(*code, 5);
    assert_eq!(
        ran.exit.exit_code, 0,
        "the container stopped on SIGTERM: {}{}",
        ran.stdout, ran.stderr
    );
}

#[test]
fn exec_with_a_tty() {
    if !privileged("exec_with_a_tty") {
        return;
    }
    let ran = run_in_task(
        "skiff-e2e-exec-tty",
        r#"{"name":"c","image":"local/bb:1","user":"app","workingDirectory":"/tmp",
            "command":["sh","-c","trap 'exit 0' TERM; while :; do sleep 0.1; done"]}"#,
        TaskLimits::default(),
        Some(StopAfter {
            after: std::time::Duration::from_millis(800),
            timeout: 5,
            execs: &[
                Exec {
                    args: &[
                        "sh",
                        "-c",
                        "tty; test -t 0 && echo isatty; id -u; pwd; exit 3",
                    ],
                    tty: Some(""),
                },
                // Typed after the shim has copied its terminal's size to the container's.
                Exec {
                    args: &["sh"],
                    tty: Some("stty size\necho hello-$((1+2))\nexit 5\n"),
                },
            ],
        }),
    );
    let (code, out) = &ran.execs[0];
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("/dev/pts/"),
        "a terminal of the container's devpts: {out}"
    );
    assert_eq!(lines[1..], ["isatty", "1000", "/tmp"], "{out}");
    assert_eq!(*code, 3, "{out}");
    let (code, out) = &ran.execs[1];
    assert!(out.contains("\n40 100\n"), "window size copied: {out}");
    assert!(out.contains("\nhello-3\n"), "{out}");
    assert_eq!(*code, 5, "{out}");
    assert_eq!(ran.exit.exit_code, 0, "{}{}", ran.stdout, ran.stderr);
}
