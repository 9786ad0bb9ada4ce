use super::*;
use crate::taskdef::TaskDefinition;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nwheel:x:10:app\napp:x:1000:\nstaff:x:50:app,other\n";

fn container(json: &str) -> ContainerDefinition {
    let def = TaskDefinition::from_json(&format!(
        r#"{{"family":"t","memory":"512","containerDefinitions":[{json}]}}"#
    ))
    .unwrap();
    def.container_definitions[0].clone()
}

fn image() -> ImageRunConfig {
    ImageRunConfig {
        entrypoint: vec!["/docker-entrypoint.sh".into()],
        cmd: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
        env: vec!["PATH=/usr/bin:/bin".into(), "MODE=image".into()],
        working_dir: Some("/srv".into()),
        user: None,
    }
}

fn inputs<'a>(def: &'a ContainerDefinition, image: &'a ImageRunConfig) -> SpecInputs<'a> {
    SpecInputs {
        def,
        image,
        network_mode: NetworkMode::Bridge,
        netns_path: Some("/run/netns/task-1".into()),
        pid_mode: None,
        task_pid: None,
        ipc_mode: None,
        task_ipc: None,
        rootfs: "/var/lib/skiff/rootfs/c1/merged".into(),
        cgroups_path: "/skiff/task-1/web".into(),
        hostname: Some("web".into()),
        passwd: PASSWD,
        group: GROUP,
        env_files: &[],
        mounts: vec![],
        pids_limit: Some(512),
        allow_privileged: false,
        seccomp_profile: None,
        init_binary: None,
    }
}

#[test]
fn args_follow_dockers_override_rules() {
    let img = image();
    let c = container(r#"{"name":"a","image":"x"}"#);
    assert_eq!(
        process_args(&c, &img),
        ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]
    );
    let c = container(r#"{"name":"a","image":"x","command":["sh","-c","echo hi"]}"#);
    assert_eq!(
        process_args(&c, &img),
        ["/docker-entrypoint.sh", "sh", "-c", "echo hi"]
    );
    let c = container(r#"{"name":"a","image":"x","entryPoint":["/bin/true"]}"#);
    assert_eq!(
        process_args(&c, &img),
        ["/bin/true"],
        "a new entrypoint resets the image's Cmd"
    );
    let c = container(r#"{"name":"a","image":"x","entryPoint":["/bin/echo"],"command":["x"]}"#);
    assert_eq!(process_args(&c, &img), ["/bin/echo", "x"]);
    let empty = ImageRunConfig::default();
    let c = container(r#"{"name":"a","image":"x"}"#);
    let err = build_spec(&inputs(&c, &empty)).unwrap_err().to_string();
    assert!(err.contains("nothing to run"), "{err}");
}

#[test]
fn environment_merges_by_name_in_order() {
    let img = image();
    let c = container(
        r#"{"name":"a","image":"x","environment":[{"name":"MODE","value":"task"},{"name":"EXTRA","value":"1"}]}"#,
    );
    let files = [
        ("FROM_FILE".to_owned(), "f".to_owned()),
        ("MODE".to_owned(), "file".to_owned()),
    ];
    let mut i = inputs(&c, &img);
    i.env_files = &files;
    assert_eq!(
        environment(&i, "/root"),
        [
            "PATH=/usr/bin:/bin",
            "MODE=task",
            "FROM_FILE=f",
            "EXTRA=1",
            "HOSTNAME=web",
            "HOME=/root"
        ]
    );
    let bare = ImageRunConfig::default();
    let c = container(r#"{"name":"a","image":"x","command":["x"]}"#);
    let env = environment(&inputs(&c, &bare), "/");
    assert!(env[0].starts_with("PATH=/usr/local/sbin"), "{env:?}");
}

#[test]
fn users_resolve_like_docker() {
    let r = |u: Option<&str>| resolve_user(u, PASSWD, GROUP);
    assert_eq!(
        r(None).unwrap(),
        ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            home: "/root".into()
        }
    );
    assert_eq!(
        r(Some("app")).unwrap(),
        ResolvedUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![10, 50],
            home: "/home/app".into()
        }
    );
    assert_eq!(r(Some("1000")).unwrap().home, "/home/app");
    assert_eq!(
        r(Some("app:staff")).unwrap(),
        ResolvedUser {
            uid: 1000,
            gid: 50,
            additional_gids: vec![],
            home: "/home/app".into()
        }
    );
    assert_eq!(
        r(Some("4242:4343")).unwrap(),
        ResolvedUser {
            uid: 4242,
            gid: 4343,
            additional_gids: vec![],
            home: "/".into()
        }
    );
    assert!(r(Some("ghost")).unwrap_err().contains("no user \"ghost\""));
    assert!(
        r(Some("app:ghosts"))
            .unwrap_err()
            .contains("no group \"ghosts\"")
    );
}

#[test]
fn capabilities_start_from_dockers_set() {
    let c = container(r#"{"name":"a","image":"x"}"#);
    assert_eq!(capabilities(&c).unwrap().len(), DEFAULT_CAPABILITIES.len());
    let c = container(
        r#"{"name":"a","image":"x","linuxParameters":{"capabilities":{"add":["NET_ADMIN"],"drop":["MKNOD","CAP_NET_RAW"]}}}"#,
    );
    let caps = capabilities(&c).unwrap();
    assert!(caps.contains(&Capability::NetAdmin));
    assert!(!caps.contains(&Capability::Mknod) && !caps.contains(&Capability::NetRaw));
    let c = container(
        r#"{"name":"a","image":"x","linuxParameters":{"capabilities":{"drop":["ALL"],"add":["CHOWN"]}}}"#,
    );
    assert_eq!(capabilities(&c).unwrap(), vec![Capability::Chown]);
    let c =
        container(r#"{"name":"a","image":"x","linuxParameters":{"capabilities":{"add":["FLY"]}}}"#);
    assert!(
        capabilities(&c)
            .unwrap_err()
            .to_string()
            .contains("unknown capability \"FLY\"")
    );
    assert!(all_capabilities().len() >= 40);
}

#[test]
fn a_full_spec() {
    let img = image();
    let c = container(
        r#"{"name":"web","image":"x","user":"app","cpu":1,"memory":256,"memoryReservation":128,
            "readonlyRootFilesystem":true,"workingDirectory":"/app",
            "ulimits":[{"name":"nofile","softLimit":1024,"hardLimit":2048}],
            "systemControls":[{"namespace":"net.core.somaxconn","value":"1024"}],
            "linuxParameters":{"sharedMemorySize":128,"tmpfs":[{"containerPath":"/run","size":16,"mountOptions":["noexec"]}]}}"#,
    );
    let spec = build_spec(&inputs(&c, &img)).unwrap();
    let p = spec.process().as_ref().unwrap();
    assert_eq!(p.user().uid(), 1000);
    assert_eq!(p.cwd().to_str(), Some("/app"));
    assert_eq!(p.no_new_privileges(), Some(true));
    let rl = p.rlimits().as_ref().unwrap();
    assert_eq!((rl[0].soft(), rl[0].hard()), (1024, 2048));
    assert!(spec.root().as_ref().unwrap().readonly().unwrap());
    assert_eq!(spec.hostname().as_deref(), Some("web"));
    let linux = spec.linux().as_ref().unwrap();
    let res = linux.resources().as_ref().unwrap();
    let mem = res.memory().as_ref().unwrap();
    assert_eq!(
        (mem.limit(), mem.reservation()),
        (Some(256 << 20), Some(128 << 20))
    );
    assert_eq!(
        res.cpu().as_ref().unwrap().shares(),
        Some(2),
        "cpu shares have a floor of 2"
    );
    assert_eq!(res.pids().as_ref().unwrap().limit(), 512);
    let ns = linux.namespaces().as_ref().unwrap();
    let net = ns
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)
        .unwrap();
    assert_eq!(
        net.path().as_deref(),
        Some(std::path::Path::new("/run/netns/task-1"))
    );
    assert!(
        linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".to_string())
    );
    assert_eq!(
        linux.sysctl().as_ref().unwrap()["net.core.somaxconn"],
        "1024"
    );
    let mounts = spec.mounts().as_ref().unwrap();
    let shm = mounts
        .iter()
        .find(|m| m.destination().to_str() == Some("/dev/shm"))
        .unwrap();
    assert!(
        shm.options()
            .as_ref()
            .unwrap()
            .contains(&"size=131072k".to_string())
    );
    assert!(
        mounts
            .iter()
            .any(|m| m.destination().to_str() == Some("/run"))
    );
}

#[test]
fn host_network_and_privileged() {
    let img = image();
    let c = container(r#"{"name":"a","image":"x","privileged":true}"#);
    let mut i = inputs(&c, &img);
    i.network_mode = NetworkMode::Host;
    let err = build_spec(&i).unwrap_err().to_string();
    assert!(err.contains("not allowed on this node"), "{err}");
    i.allow_privileged = true;
    let spec = build_spec(&i).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    assert!(
        !linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Network)
    );
    assert_eq!(linux.masked_paths().as_deref(), Some(&[][..]));
    let caps = spec
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .as_ref()
        .unwrap();
    assert!(
        caps.bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin)
    );
}

#[test]
fn devices_are_created_and_allowed_after_a_deny_all() {
    let img = image();
    let c = container(
        r#"{"name":"a","image":"x","linuxParameters":{"devices":[
            {"hostPath":"/dev/null"},
            {"hostPath":"/dev/zero","containerPath":"/dev/myzero","permissions":["read"]}]}}"#,
    );
    let spec = build_spec(&inputs(&c, &img)).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    let nodes: Vec<String> = linux
        .devices()
        .as_ref()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{} {} {}:{} {:o} {}:{}",
                d.path().display(),
                d.typ().as_str(),
                d.major(),
                d.minor(),
                d.file_mode().unwrap(),
                d.uid().unwrap(),
                d.gid().unwrap()
            )
        })
        .collect();
    assert_eq!(
        nodes,
        ["/dev/null c 1:3 666 0:0", "/dev/myzero c 1:5 666 0:0"]
    );
    let rules: Vec<String> = linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .as_ref()
        .unwrap()
        .iter()
        .map(|r| format!("{} {r}", if r.allow() { "allow" } else { "deny" }))
        .collect();
    assert_eq!(
        rules,
        ["deny a *:* rwm", "allow c 1:3 rwm", "allow c 1:5 r"],
        "Docker's deny-all first, then each device with its permissions (default rwm)"
    );

    // A privileged container keeps access to every device, as with Docker.
    let p = container(r#"{"name":"a","image":"x","privileged":true}"#);
    let (_, rules) = devices(&p, true).unwrap();
    assert_eq!(rules[0].to_string(), "a *:* rwm");
    assert!(rules[0].allow());
}

#[test]
fn a_device_must_be_a_device_node() {
    let img = image();
    let file = tempfile::NamedTempFile::new().unwrap();
    for (path, want) in [
        (
            file.path().display().to_string(),
            "is not a character or block device",
        ),
        ("/dev/skiff-no-such-device".into(), "No such file"),
    ] {
        let mut c = container(
            r#"{"name":"a","image":"x","linuxParameters":{"devices":[{"hostPath":"/dev/null"}]}}"#,
        );
        // Validation wants /dev/ paths when parsing; the spec checks whatever it is given.
        c.linux_parameters.as_mut().unwrap().devices[0].host_path = path.clone();
        let err = build_spec(&inputs(&c, &img)).unwrap_err();
        let chain = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        assert!(
            chain.starts_with(&format!("container a: device {path}")),
            "{chain}"
        );
        assert!(chain.contains(want), "{chain}");
    }
}

#[test]
fn init_process_enabled_runs_the_command_under_the_init() {
    let img = image();
    let c = container(
        r#"{"name":"a","image":"x","command":["sleep","1"],"linuxParameters":{"initProcessEnabled":true}}"#,
    );
    let mut i = inputs(&c, &img);
    let err = build_spec(&i).unwrap_err().to_string();
    assert_eq!(
        err,
        "container a: initProcessEnabled is set but this node has no init binary"
    );
    i.init_binary = Some(Path::new("/usr/bin/tini-static"));
    let spec = build_spec(&i).unwrap();
    assert_eq!(
        spec.process().as_ref().unwrap().args().as_deref().unwrap(),
        [
            "/sbin/skiff-init",
            "--",
            "/docker-entrypoint.sh",
            "sleep",
            "1"
        ]
    );
    let init = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new(INIT_PATH))
        .expect("init mounted");
    assert_eq!(
        init.source().as_deref(),
        Some(Path::new("/usr/bin/tini-static"))
    );
    assert_eq!(init.typ().as_deref(), Some("bind"));
    assert_eq!(
        init.options().as_deref().unwrap(),
        ["rbind", "rprivate", "ro"]
    );

    // Without initProcessEnabled, no init even when the node has one.
    let plain = container(r#"{"name":"a","image":"x","command":["sleep","1"]}"#);
    let mut i = inputs(&plain, &img);
    i.init_binary = Some(Path::new("/usr/bin/tini-static"));
    let spec = build_spec(&i).unwrap();
    assert_eq!(
        spec.process().as_ref().unwrap().args().as_deref().unwrap(),
        ["/docker-entrypoint.sh", "sleep", "1"]
    );
}

#[test]
fn pid_and_ipc_modes() {
    use crate::taskdef::NamespaceMode;
    let d = container(r#"{"name":"web","image":"nginx","memory":64}"#);
    let img = image();
    let types = |spec: &Spec| -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        let l = spec.linux().as_ref().unwrap();
        l.namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect()
    };
    let shm = |spec: &Spec| -> Vec<Mount> {
        spec.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination() == Path::new("/dev/shm"))
            .cloned()
            .collect()
    };
    // Defaults: private PID and IPC namespaces, a private sized /dev/shm.
    let s = build_spec(&inputs(&d, &img)).unwrap();
    assert!(types(&s).contains(&(LinuxNamespaceType::Pid, None)));
    assert!(types(&s).contains(&(LinuxNamespaceType::Ipc, None)));
    assert_eq!(shm(&s)[0].typ().as_deref(), Some("tmpfs"));
    // host: the node's namespaces and /dev/shm.
    let mut i = inputs(&d, &img);
    i.pid_mode = Some(NamespaceMode::Host);
    i.ipc_mode = Some(NamespaceMode::Host);
    let s = build_spec(&i).unwrap();
    assert!(
        !types(&s)
            .iter()
            .any(|(t, _)| matches!(t, LinuxNamespaceType::Pid | LinuxNamespaceType::Ipc))
    );
    assert_eq!(shm(&s)[0].source().as_deref(), Some(Path::new("/dev/shm")));
    // task: the task's IPC namespace and shared /dev/shm.
    let mut i = inputs(&d, &img);
    i.ipc_mode = Some(NamespaceMode::Task);
    i.task_ipc = Some(("/run/skiff/ns/t/ipc".into(), "/run/skiff/ns/t/shm".into()));
    let s = build_spec(&i).unwrap();
    assert!(types(&s).contains(&(LinuxNamespaceType::Ipc, Some("/run/skiff/ns/t/ipc".into()))));
    assert_eq!(
        shm(&s)[0].source().as_deref(),
        Some(Path::new("/run/skiff/ns/t/shm"))
    );
    // none: a private namespace without /dev/shm.
    let mut i = inputs(&d, &img);
    i.ipc_mode = Some(NamespaceMode::None);
    let s = build_spec(&i).unwrap();
    assert!(types(&s).contains(&(LinuxNamespaceType::Ipc, None)));
    assert!(shm(&s).is_empty());
    // pidMode task joins the task's PID namespace; without one it is refused, naming it.
    let mut i = inputs(&d, &img);
    i.pid_mode = Some(NamespaceMode::Task);
    i.task_pid = Some("/proc/42/ns/pid".into());
    let s = build_spec(&i).unwrap();
    assert!(types(&s).contains(&(LinuxNamespaceType::Pid, Some("/proc/42/ns/pid".into()))));
    i.task_pid = None;
    let e = build_spec(&i).unwrap_err();
    assert!(e.to_string().contains("pidMode Task without"), "{e}");
}

#[test]
fn capability_sets_become_the_kernels_bit_masks() {
    // Docker's default set is 0xa80425fb, as /proc/PID/status shows it in a Docker container.
    let default = capabilities(&container(r#"{"name":"a","image":"i"}"#)).unwrap();
    assert_eq!(capability_mask(&default), 0xa804_25fb);
    let all = capabilities(&container(
        r#"{"name":"a","image":"i","linuxParameters":{"capabilities":{"add":["ALL"]}}}"#,
    ))
    .unwrap();
    assert_eq!(
        capability_mask(&all) & (1 << 21),
        1 << 21,
        "CAP_SYS_ADMIN is bit 21"
    );
    assert_eq!(capability_mask(&[]), 0);
}
