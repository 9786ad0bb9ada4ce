//! Volumes, devices and the init, end to end: a task's volumes provisioned by
//! `skiff_runtime::volumes`, its containers' specs from `skiff_runtime::spec`, each container
//! run by the real `skiff-shim` on this kernel, one after the other, in one task cgroup.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use skiff_runtime::cgroups::{CGROUP_ROOT, Layout, TaskCgroup, TaskLimits};
use skiff_runtime::logs::{Stream, read};
use skiff_runtime::shim::ExitStatus;
use skiff_runtime::spec::{DEFAULT_INIT_BINARY, ImageRunConfig, SpecInputs, build_spec};
use skiff_runtime::taskdef::TaskDefinition;
use skiff_runtime::volumes::{self, PreparedVolumes, VolumeDirs};
use skiff_tests::*;

/// A task of busybox containers with its volumes prepared; removes its cgroup and task volumes
/// on drop (each container's mounts and state go when it has run).
struct Task {
    skiff: Skiff,
    id: String,
    def: TaskDefinition,
    dirs: VolumeDirs,
    prepared: PreparedVolumes,
    cgroup: TaskCgroup,
}

/// What a container did.
struct Ran {
    exit: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Task {
    /// `volumes` and `containers` are the contents of the task definition's JSON arrays; `{dir}`
    /// in them stands for the test's scratch directory.
    fn new(id: &str, volumes: &str, containers: &str) -> Self {
        let skiff = Skiff::new("");
        let dir = skiff.dir.path().display().to_string();
        let layout = skiff.dir.path().join("layout");
        write_busybox_layout(&layout);
        skiff.ok(&["load", "--name", "local/bb", layout.to_str().unwrap()]);
        let def = TaskDefinition::from_json(
            &format!(
                r#"{{"family":"t","networkMode":"none","memory":"128","volumes":[{volumes}],"containerDefinitions":[{containers}]}}"#
            )
            .replace("{dir}", &dir),
        )
        .unwrap();
        let dirs = VolumeDirs {
            task_dir: skiff.dir.path().join("task"),
            node_volumes: skiff.dir.path().join("node-volumes"),
        };
        let prepared = volumes::prepare(&def, &dirs).unwrap();
        let layout = Layout::detect(Path::new(CGROUP_ROOT));
        let cgroup = TaskCgroup::create(layout, id, TaskLimits::default()).unwrap();
        Self {
            skiff,
            id: id.to_owned(),
            def,
            dirs,
            prepared,
            cgroup,
        }
    }

    fn dir(&self) -> &Path {
        self.skiff.dir.path()
    }

    /// Runs container `name` to its end; with `stop`, sends the shim SIGTERM after that long.
    fn run(&self, name: &str, stop: Option<Duration>) -> Ran {
        let c = self
            .def
            .container_definitions
            .iter()
            .find(|c| c.name == name)
            .unwrap();
        let id = format!("{}-{name}", self.id);
        let rootfs = PathBuf::from(self.skiff.ok(&["mount", "local/bb:1", &id]).trim());
        let profile = std::fs::read_to_string(skiff_runtime::seccomp::DEFAULT_PROFILE)
            .expect("seccomp profile (apt-get install golang-github-containers-common)");
        assert!(
            Path::new(DEFAULT_INIT_BINARY).exists(),
            "{DEFAULT_INIT_BINARY} (apt-get install tini)"
        );
        let spec = build_spec(&SpecInputs {
            def: c,
            image: &ImageRunConfig {
                env: vec!["PATH=/bin".into()],
                ..Default::default()
            },
            network_mode: self.def.network_mode(),
            netns_path: None,
            pid_mode: None,
            task_pid: None,
            ipc_mode: None,
            task_ipc: None,
            rootfs,
            cgroups_path: self.cgroup.container_path(name),
            hostname: Some(name.to_owned()),
            passwd: "",
            group: "",
            env_files: &[],
            mounts: self.prepared.mounts_for(&self.def, c).unwrap(),
            pids_limit: Some(64),
            allow_privileged: false,
            seccomp_profile: Some(&profile),
            init_binary: Some(Path::new(DEFAULT_INIT_BINARY)),
        })
        .unwrap();
        let bundle = self.dir().join("bundles").join(name);
        std::fs::create_dir_all(&bundle).unwrap();
        spec.save(bundle.join("config.json")).unwrap();
        let state = self.dir().join("state");
        let (logs, exit) = (bundle.join("logs"), bundle.join("exit"));
        let child = shim_run(&id, &bundle, &state, 5).spawn().unwrap();
        if let Some(after) = stop {
            std::thread::sleep(after);
            sh(Command::new("kill").args(["-TERM", &child.id().to_string()])).unwrap();
        }
        let shim = child.wait_with_output().unwrap();
        self.skiff.ok(&["unmount", &id]);
        assert!(
            shim.status.success(),
            "skiff-shim failed: {}",
            String::from_utf8_lossy(&shim.stderr)
        );
        assert!(!state.join(&id).exists(), "libcontainer state deleted");
        let lines = read(&logs, None);
        let text = |stream| {
            lines
                .iter()
                .filter(|l| l.stream == stream)
                .map(|l| l.log.as_str())
                .collect()
        };
        Ran {
            exit: ExitStatus::read(&exit).unwrap().expect("exit file written"),
            stdout: text(Stream::Stdout),
            stderr: text(Stream::Stderr),
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        let removed = volumes::remove_task_volumes(&self.dirs);
        let cgroup = self.cgroup.remove();
        // Skiff's parent cgroup too, once no other test's task is in it.
        let container = self.cgroup.container_path("c");
        let parent = container
            .ancestors()
            .nth(2)
            .unwrap()
            .strip_prefix("/")
            .unwrap();
        for hierarchy in std::fs::read_dir(CGROUP_ROOT)
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(hierarchy.path().join(parent));
        }
        if !std::thread::panicking() {
            removed.unwrap();
            cgroup.unwrap();
        }
    }
}

#[test]
fn scratch_volumes_are_shared_read_only_refuses_writes_and_host_paths_show() {
    if !privileged("scratch_volumes_are_shared_read_only_refuses_writes_and_host_paths_show") {
        return;
    }
    let task = Task::new(
        "skiff-e2e-vol",
        r#"{"name":"scratch"},{"name":"hostdir","host":{"sourcePath":"{dir}/host"}}"#,
        r#"{"name":"writer","image":"local/bb:1","essential":false,
            "mountPoints":[{"sourceVolume":"scratch","containerPath":"/data"}],
            "command":["sh","-c","echo written > /data/f"]},
           {"name":"reader","image":"local/bb:1","essential":false,
            "volumesFrom":[{"sourceContainer":"writer"}],
            "command":["sh","-c","cat /data/f"]},
           {"name":"ro","image":"local/bb:1",
            "volumesFrom":[{"sourceContainer":"writer","readOnly":true}],
            "command":["sh","-c","cat /data/f; busybox touch /data/g"]},
           {"name":"host","image":"local/bb:1","essential":false,
            "mountPoints":[{"sourceVolume":"hostdir","containerPath":"/host","readOnly":true}],
            "command":["sh","-c","cat /host/h"]}"#,
    );
    let host = task.dir().join("host");
    assert!(host.is_dir(), "the missing host directory was created");
    std::fs::write(host.join("h"), "from the host\n").unwrap();
    let scratch = task.prepared.host_path("scratch").unwrap().to_owned();
    assert!(scratch.starts_with(task.dir().join("task")));

    let ran = task.run("writer", None);
    assert_eq!(ran.exit.exit_code, 0, "{}", ran.stderr);
    assert_eq!(
        std::fs::read_to_string(scratch.join("f")).unwrap(),
        "written\n"
    );

    let ran = task.run("reader", None);
    assert_eq!((ran.exit.exit_code, ran.stdout.as_str()), (0, "written\n"));

    let ran = task.run("ro", None);
    assert_eq!(ran.stdout, "written\n");
    assert_ne!(ran.exit.exit_code, 0);
    assert!(
        ran.stderr.contains("Read-only file system"),
        "{}",
        ran.stderr
    );
    assert!(!scratch.join("g").exists());

    let ran = task.run("host", None);
    assert_eq!(
        (ran.exit.exit_code, ran.stdout.as_str()),
        (0, "from the host\n"),
        "{}",
        ran.stderr
    );

    let dirs = task.dirs.clone();
    drop(task);
    assert!(!scratch.exists(), "the scratch volume went with the task");
    assert!(!dirs.task_dir.join("volumes").exists());
}

#[test]
fn a_device_is_usable_at_its_container_path() {
    if !privileged("a_device_is_usable_at_its_container_path") {
        return;
    }
    let task = Task::new(
        "skiff-e2e-dev",
        "",
        r#"{"name":"c","image":"local/bb:1",
            "linuxParameters":{"devices":[{"hostPath":"/dev/zero","containerPath":"/dev/myzero","permissions":["read"]}]},
            "command":["sh","-c","busybox stat -c '%F %t:%T' /dev/myzero; busybox head -c 5 /dev/myzero | busybox wc -c; busybox cat /sys/fs/cgroup/devices/devices.list 2>/dev/null || true"]}"#,
    );
    let ran = task.run("c", None);
    assert_eq!(ran.exit.exit_code, 0, "{}{}", ran.stdout, ran.stderr);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines[..2], ["character special file 1:5", "5"]);
    // On a cgroup v1 devices hierarchy the list is visible: the deny-all rule replaced the
    // inherited `a *:* rwm`.
    if Path::new(CGROUP_ROOT).join("devices").is_dir() {
        assert!(!lines[2..].contains(&"a *:* rwm"), "{lines:?}");
        assert!(lines[2..].contains(&"c 1:5 rwm"), "{lines:?}");
    }
}

#[test]
fn the_init_is_pid_1_and_passes_on_signals_and_the_exit_code() {
    if !privileged("the_init_is_pid_1_and_passes_on_signals_and_the_exit_code") {
        return;
    }
    let task = Task::new(
        "skiff-e2e-init",
        "",
        r#"{"name":"c","image":"local/bb:1","linuxParameters":{"initProcessEnabled":true},
            "command":["sh","-c","busybox tr '\\0' ' ' < /proc/1/cmdline; echo; echo sh is $$; trap 'echo got TERM; exit 3' TERM; while :; do sleep 0.1; done"]},
           {"name":"plain","image":"local/bb:1","linuxParameters":{"initProcessEnabled":true},
            "command":["sh","-c","exit 7"]}"#,
    );
    let ran = task.run("c", Some(Duration::from_millis(800)));
    assert_eq!(
        ran.exit,
        ExitStatus {
            exit_code: 3,
            signal: None,
            oom_killed: false
        },
        "SIGTERM reached the command through the init: {}{}",
        ran.stdout,
        ran.stderr
    );
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(
        lines[0].starts_with("/sbin/skiff-init -- sh -c "),
        "{lines:?}"
    );
    assert_ne!(lines[1], "sh is 1", "the command is not PID 1");
    assert_eq!(lines[2], "got TERM");

    let ran = task.run("plain", None);
    assert_eq!(ran.exit.exit_code, 7, "{}", ran.stderr);
}
