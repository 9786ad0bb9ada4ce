use super::*;

const WEB: &str = r#"{
  "family": "web",
  "networkMode": "bridge",
  "cpu": "0.5 vCPU",
  "memory": "1 GB",
  "requiresCompatibilities": ["EXTERNAL"],
  "runtimePlatform": {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"},
  "volumes": [
    {"name": "scratch", "host": {}},
    {"name": "data", "host": {"sourcePath": "/srv/data"}},
    {"name": "cache", "dockerVolumeConfiguration": {"scope": "shared", "autoprovision": true, "driver": "local"}}
  ],
  "containerDefinitions": [
    {
      "name": "app",
      "image": "localhost:5000/team/app:1.0",
      "entryPoint": ["/bin/app"],
      "command": ["--port", "8080"],
      "environment": [{"name": "MODE", "value": "prod"}],
      "workingDirectory": "/srv",
      "user": "app:app",
      "cpu": 256,
      "memory": 512,
      "memoryReservation": 256,
      "essential": true,
      "dependsOn": [{"containerName": "db", "condition": "HEALTHY"}],
      "healthCheck": {"command": ["CMD-SHELL", "wget -q -O- localhost:8080/health"], "interval": 10, "timeout": 3, "retries": 3, "startPeriod": 5},
      "stopTimeout": 10,
      "portMappings": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}, {"containerPort": 9000, "protocol": "udp"}],
      "mountPoints": [{"sourceVolume": "data", "containerPath": "/data", "readOnly": true}],
      "ulimits": [{"name": "nofile", "softLimit": 1024, "hardLimit": 4096}],
      "readonlyRootFilesystem": true,
      "linuxParameters": {
        "capabilities": {"add": ["NET_ADMIN"], "drop": ["MKNOD"]},
        "initProcessEnabled": true,
        "sharedMemorySize": 64,
        "tmpfs": [{"containerPath": "/tmp", "size": 64, "mountOptions": ["noexec"]}],
        "devices": [{"hostPath": "/dev/null", "permissions": ["read", "write"]}]
      },
      "restartPolicy": {"enabled": true, "ignoredExitCodes": [0], "restartAttemptPeriod": 60},
      "logConfiguration": {"logDriver": "json-file", "options": {"max-size": "10m"}},
      "dockerLabels": {"team": "edge"},
      "systemControls": [{"namespace": "net.core.somaxconn", "value": "1024"}],
      "hostname": "app"
    },
    {
      "name": "db",
      "image": "busybox",
      "essential": false,
      "healthCheck": {"command": ["CMD", "/bin/true"]},
      "volumesFrom": [{"sourceContainer": "app", "readOnly": true}]
    }
  ]
}"#;

#[test]
fn a_full_task_definition_parses() {
    let def = TaskDefinition::from_json(WEB).unwrap();
    assert_eq!(def.network_mode(), NetworkMode::Bridge);
    assert_eq!(
        def.resources(),
        TaskResources {
            cpu: Some(512),
            memory: Some(1024)
        }
    );
    assert!(!def.wants_vm());
    let app = &def.container_definitions[0];
    assert!(app.is_essential());
    assert!(!def.container_definitions[1].is_essential());
    assert_eq!(app.port_mappings[1].protocol, Protocol::Udp);
    assert_eq!(app.depends_on[0].condition, DependencyCondition::Healthy);
}

fn with(patch: impl FnOnce(&mut serde_json::Value)) -> Result<TaskDefinition, TaskDefinitionError> {
    let mut v: serde_json::Value = serde_json::from_str(WEB).unwrap();
    patch(&mut v);
    TaskDefinition::from_json(&v.to_string())
}

fn field_error(patch: impl FnOnce(&mut serde_json::Value)) -> String {
    with(patch).unwrap_err().to_string()
}

#[test]
fn unknown_and_unsupported_fields_are_named() {
    let e = field_error(|v| v["taskRoleArn"] = "arn:aws:iam::1:role/x".into());
    assert!(e.contains("unknown field `taskRoleArn`"), "{e}");
    let e = field_error(|v| v["containerDefinitions"][1]["secrets"] = serde_json::json!([]));
    assert!(
        e.contains("containerDefinitions[1]") && e.contains("unknown field `secrets`"),
        "{e}"
    );
    let e = field_error(|v| {
        v["containerDefinitions"][0]["portMappings"][0]["protocol"] = "sctp".into()
    });
    assert!(
        e.contains("containerDefinitions[0].portMappings[0].protocol"),
        "{e}"
    );
    let e = field_error(|v| {
        v["containerDefinitions"][0]["logConfiguration"]["logDriver"] = "awslogs".into()
    });
    assert!(e.contains("logDriver") && e.contains("awslogs"), "{e}");
    let e = field_error(|v| v["networkMode"] = "nat".into());
    assert!(e.contains("networkMode"), "{e}");
    let e = TaskDefinition::from_json("{").unwrap_err().to_string();
    assert!(e.starts_with("task definition:"), "{e}");
}

#[test]
fn invalid_values_name_the_field_and_reason() {
    type Patch = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(&str, &str, Patch)> = vec![
        (
            "family",
            "letters, digits",
            Box::new(|v| v["family"] = "has space".into()),
        ),
        (
            "cpu",
            "not CPU units",
            Box::new(|v| v["cpu"] = "lots".into()),
        ),
        ("memory", "not MiB", Box::new(|v| v["memory"] = "-1".into())),
        (
            "containerDefinitions",
            "at least one container",
            Box::new(|v| v["containerDefinitions"] = serde_json::json!([])),
        ),
        (
            "containerDefinitions[1].name",
            "duplicate",
            Box::new(|v| v["containerDefinitions"][1]["name"] = "app".into()),
        ),
        (
            "containerDefinitions[0].image",
            "required",
            Box::new(|v| v["containerDefinitions"][0]["image"] = "".into()),
        ),
        (
            "containerDefinitions[0].memoryReservation",
            "exceeds memory",
            Box::new(|v| v["containerDefinitions"][0]["memoryReservation"] = 1024.into()),
        ),
        (
            "containerDefinitions[0].memory",
            "exceeds the task",
            Box::new(|v| v["containerDefinitions"][0]["memory"] = 2048.into()),
        ),
        (
            "containerDefinitions[0].dependsOn[0].containerName",
            "no container",
            Box::new(|v| {
                v["containerDefinitions"][0]["dependsOn"][0]["containerName"] = "cache".into()
            }),
        ),
        (
            "containerDefinitions[0].dependsOn[0].containerName",
            "itself",
            Box::new(|v| {
                v["containerDefinitions"][0]["dependsOn"][0]["containerName"] = "app".into()
            }),
        ),
        (
            "containerDefinitions[0].dependsOn[0].condition",
            "HEALTHY needs a healthCheck",
            Box::new(|v| {
                v["containerDefinitions"][1]
                    .as_object_mut()
                    .unwrap()
                    .remove("healthCheck");
            }),
        ),
        (
            "containerDefinitions[0].healthCheck.interval",
            "outside 5-300",
            Box::new(|v| v["containerDefinitions"][0]["healthCheck"]["interval"] = 1.into()),
        ),
        (
            "containerDefinitions[0].healthCheck.command",
            "CMD",
            Box::new(|v| {
                v["containerDefinitions"][0]["healthCheck"]["command"] =
                    serde_json::json!(["curl", "x"])
            }),
        ),
        (
            "containerDefinitions[0].stopTimeout",
            "outside 2-120",
            Box::new(|v| v["containerDefinitions"][0]["stopTimeout"] = 600.into()),
        ),
        (
            "containerDefinitions[0].portMappings[1].containerPort",
            "mapped twice",
            Box::new(|v| {
                v["containerDefinitions"][0]["portMappings"][1] =
                    serde_json::json!({"containerPort": 8080})
            }),
        ),
        (
            "containerDefinitions[0].portMappings[0].hostPort",
            "must equal containerPort",
            Box::new(|v| {
                v["networkMode"] = "awsvpc".into();
                v["containerDefinitions"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("hostname");
                v["containerDefinitions"][0]["portMappings"][0]["hostPort"] = 80.into();
            }),
        ),
        (
            "containerDefinitions[0].hostname",
            "awsvpc",
            Box::new(|v| v["networkMode"] = "awsvpc".into()),
        ),
        (
            "containerDefinitions[0].mountPoints[0].sourceVolume",
            "no volume",
            Box::new(|v| {
                v["containerDefinitions"][0]["mountPoints"][0]["sourceVolume"] = "nope".into()
            }),
        ),
        (
            "containerDefinitions[1].volumesFrom[0].sourceContainer",
            "no other container",
            Box::new(|v| {
                v["containerDefinitions"][1]["volumesFrom"][0]["sourceContainer"] = "db".into()
            }),
        ),
        (
            "containerDefinitions[0].ulimits[0].name",
            "unknown ulimit",
            Box::new(|v| v["containerDefinitions"][0]["ulimits"][0]["name"] = "files".into()),
        ),
        (
            "containerDefinitions[0].ulimits[0].softLimit",
            "exceeds hardLimit",
            Box::new(|v| v["containerDefinitions"][0]["ulimits"][0]["softLimit"] = 9999.into()),
        ),
        (
            "containerDefinitions[0].linuxParameters.tmpfs[0].size",
            "at least 1 MiB",
            Box::new(|v| {
                v["containerDefinitions"][0]["linuxParameters"]["tmpfs"][0]["size"] = 0.into()
            }),
        ),
        (
            "containerDefinitions[0].linuxParameters.devices[0].hostPath",
            "under /dev",
            Box::new(|v| {
                v["containerDefinitions"][0]["linuxParameters"]["devices"][0]["hostPath"] =
                    "/etc/passwd".into()
            }),
        ),
        (
            "containerDefinitions[0].restartPolicy.restartAttemptPeriod",
            "outside 60-1800",
            Box::new(|v| {
                v["containerDefinitions"][0]["restartPolicy"]["restartAttemptPeriod"] = 5.into()
            }),
        ),
        (
            "containerDefinitions[0].systemControls[0].namespace",
            "not a namespaced sysctl",
            Box::new(|v| {
                v["containerDefinitions"][0]["systemControls"][0]["namespace"] =
                    "vm.swappiness".into()
            }),
        ),
        (
            "volumes[1].host.sourcePath",
            "absolute",
            Box::new(|v| v["volumes"][1]["host"]["sourcePath"] = "srv".into()),
        ),
        (
            "volumes[2].name",
            "duplicate",
            Box::new(|v| v["volumes"][2]["name"] = "data".into()),
        ),
        (
            "containerDefinitions",
            "must be essential",
            Box::new(|v| v["containerDefinitions"][0]["essential"] = false.into()),
        ),
        (
            "containerDefinitions.dependsOn",
            "cycle app -> db -> app",
            Box::new(|v| {
                v["containerDefinitions"][1]["dependsOn"] =
                    serde_json::json!([{"containerName": "app", "condition": "START"}])
            }),
        ),
        (
            "containerDefinitions[1].memory",
            "required when the task has no memory",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("memory");
            }),
        ),
    ];
    for (field, reason, patch) in cases {
        let e = field_error(patch);
        assert!(
            e.contains(&format!("{field}: ")) && e.contains(reason),
            "expected {field}: …{reason}…, got {e}"
        );
    }
}

#[test]
fn resources_accept_ecs_spellings() {
    assert_eq!(parse_cpu("1024"), Some(1024));
    assert_eq!(parse_cpu("1 vCPU"), Some(1024));
    assert_eq!(parse_cpu("0.25 vcpu"), Some(256));
    assert_eq!(parse_cpu("0"), None);
    assert_eq!(parse_memory("512"), Some(512));
    assert_eq!(parse_memory("2 GB"), Some(2048));
    assert_eq!(parse_memory("0.5gb"), Some(512));
    assert_eq!(parse_memory("x"), None);
}
