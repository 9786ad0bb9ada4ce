//! apid's ECS API driven by the real `aws` CLI and boto3 (Debian's awscli and python3-boto3),
//! over HTTP on loopback, signed with access keys apid issued.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::{free_port, workspace_bin};

/// An apid of its own: config, database and log in a scratch directory.
struct Apid {
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    child: Child,
    key: (String, String),
}

impl Apid {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("apid-e2e-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let config = dir.path().join("apid.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\nnode_listen = \"127.0.0.1:{}\"\ndatabase = {:?}\n",
                free_port(),
                dir.path().join("apid.db")
            ),
        )
        .unwrap();
        let out = Command::new(workspace_bin("apid"))
            .arg("--config")
            .arg(&config)
            .args(["keys", "create"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let k: Value = serde_json::from_slice(&out.stdout).unwrap();
        let key = (
            k["AccessKey"]["AccessKeyId"].as_str().unwrap().to_owned(),
            k["AccessKey"]["SecretAccessKey"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        assert!(
            key.0.starts_with("AKIA") && key.0.len() == 20 && key.1.len() == 40,
            "{k}"
        );
        let log = std::fs::File::create(dir.path().join("apid.log")).unwrap();
        let child = Command::new(workspace_bin("apid"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "apid did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            dir,
            config,
            port,
            child,
            key,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `aws ecs <args>` signed with `key`.
    fn aws_as(&self, key: (&str, &str), args: &[&str]) -> Output {
        Command::new("/usr/bin/aws")
            .arg("ecs")
            .args(args)
            .args([
                "--endpoint-url",
                &self.endpoint(),
                "--region",
                "us-east-1",
                "--output",
                "json",
            ])
            .env("AWS_ACCESS_KEY_ID", key.0)
            .env("AWS_SECRET_ACCESS_KEY", key.1)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_PAGER", "")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .output()
            .expect("run the aws CLI (apt-get install awscli)")
    }

    /// `aws ecs <args>` with apid's key, asserting success; its JSON.
    fn aws(&self, args: &[&str]) -> Value {
        let out = self.aws_as((&self.key.0, &self.key.1), args);
        assert!(
            out.status.success(),
            "aws ecs {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        if out.stdout.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `aws ecs <args>` expected to fail; its stderr.
    fn aws_err(&self, key: (&str, &str), args: &[&str]) -> String {
        let out = self.aws_as(key, args);
        assert!(!out.status.success(), "aws ecs {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("apid.log")).unwrap_or_default()
    }
}

impl Drop for Apid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_aws_cli_manages_clusters_and_task_definitions() {
    let a = Apid::start();
    let c = a.aws(&[
        "create-cluster",
        "--cluster-name",
        "edge",
        "--tags",
        "key=site,value=lab",
    ]);
    assert_eq!(
        c["cluster"]["clusterArn"],
        "arn:aws:ecs:us-east-1:000000000000:cluster/edge"
    );
    for n in ["b1", "b2", "b3"] {
        a.aws(&["create-cluster", "--cluster-name", n]);
    }
    // The CLI follows nextToken itself: pages of 2 give every cluster.
    let l = a.aws(&["list-clusters", "--page-size", "2"]);
    assert_eq!(l["clusterArns"].as_array().unwrap().len(), 4, "{l}");
    let arn = "arn:aws:ecs:us-east-1:000000000000:cluster/edge";
    a.aws(&[
        "tag-resource",
        "--resource-arn",
        arn,
        "--tags",
        "key=tier,value=edge",
    ]);
    a.aws(&[
        "untag-resource",
        "--resource-arn",
        arn,
        "--tag-keys",
        "site",
    ]);
    let t = a.aws(&["list-tags-for-resource", "--resource-arn", arn]);
    assert_eq!(
        t["tags"],
        serde_json::json!([{"key": "tier", "value": "edge"}])
    );
    let d = a.aws(&["describe-clusters", "--clusters", "edge", "nope"]);
    assert_eq!(d["clusters"][0]["clusterName"], "edge");
    assert_eq!(d["failures"][0]["reason"], "MISSING");

    let def = a.dir.path().join("web.json");
    std::fs::write(
        &def,
        r#"{"family":"web","networkMode":"bridge","containerDefinitions":[{"name":"web","image":"busybox","memory":64,"portMappings":[{"containerPort":80}]}]}"#,
    )
    .unwrap();
    let file = format!("file://{}", def.display());
    for rev in 1..=2 {
        let r = a.aws(&["register-task-definition", "--cli-input-json", &file]);
        assert_eq!(r["taskDefinition"]["revision"], rev);
    }
    let d = a.aws(&["describe-task-definition", "--task-definition", "web"]);
    assert_eq!(
        d["taskDefinition"]["taskDefinitionArn"],
        "arn:aws:ecs:us-east-1:000000000000:task-definition/web:2"
    );
    assert_eq!(
        d["taskDefinition"]["containerDefinitions"][0]["image"],
        "busybox"
    );
    a.aws(&["deregister-task-definition", "--task-definition", "web:1"]);
    let l = a.aws(&["list-task-definitions", "--family-prefix", "web"]);
    assert_eq!(l["taskDefinitionArns"].as_array().unwrap().len(), 1, "{l}");
    let f = a.aws(&["list-task-definition-families"]);
    assert_eq!(f["families"], serde_json::json!(["web"]));
    // (delete-task-definitions is newer than Debian 12's aws CLI 2.9: unit-tested in apid.)
    // ECS's errors, as the CLI reports them.
    std::fs::write(
        &def,
        r#"{"family":"web","containerDefinitions":[{"name":"web","image":"busybox","memory":2}]}"#,
    )
    .unwrap();
    let e = a.aws_err(
        (&a.key.0, &a.key.1),
        &["register-task-definition", "--cli-input-json", &file],
    );
    assert!(
        e.contains("(ClientException)") && e.contains("containerDefinitions[0].memory"),
        "{e}"
    );
    let e = a.aws_err(
        (&a.key.0, &a.key.1),
        &["delete-cluster", "--cluster", "nope"],
    );
    assert!(e.contains("(ClusterNotFoundException)"), "{e}");
    let e = a.aws_err(
        (&a.key.0, &a.key.1),
        &[
            "list-clusters",
            "--max-items",
            "1",
            "--starting-token",
            "bogus",
        ],
    );
    assert!(!e.is_empty());
}

#[test]
fn requests_are_authenticated_with_sigv4() {
    let a = Apid::start();
    let (id, secret) = (a.key.0.clone(), a.key.1.clone());
    let e = a.aws_err(
        (&id, "wrong-secret-wrong-secret-wrong-secret-0"),
        &["list-clusters"],
    );
    assert!(e.contains("(InvalidSignatureException)"), "{e}");
    let e = a.aws_err(("AKIAAAAAAAAAAAAAAAAA", &secret), &["list-clusters"]);
    assert!(e.contains("(UnrecognizedClientException)"), "{e}");
    let e = a.aws_err((&id, &secret), &["list-clusters", "--no-sign-request"]);
    assert!(e.contains("(MissingAuthenticationTokenException)"), "{e}");
    // boto3 signs the same way.
    let script = format!(
        "import boto3\nc = boto3.client('ecs', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='{id}', aws_secret_access_key='{secret}')\nc.create_cluster(clusterName='from-boto3')\nprint(c.describe_clusters(clusters=['from-boto3'])['clusters'][0]['status'])\n",
        a.endpoint()
    );
    let out = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .env("AWS_CONFIG_FILE", "/dev/null")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ACTIVE",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A revoked key is refused from then on.
    let out = Command::new(workspace_bin("apid"))
        .arg("--config")
        .arg(&a.config)
        .args(["keys", "revoke", &id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let e = a.aws_err((&id, &secret), &["list-clusters"]);
    assert!(e.contains("(UnrecognizedClientException)"), "{e}");
    // Every response names its request.
    assert!(a.log().is_empty() || !a.log().contains("panicked"));
}

#[test]
fn the_aws_cli_runs_describes_and_stops_tasks() {
    let a = Apid::start();
    a.aws(&["create-cluster", "--cluster-name", "edge"]);
    // No node registers itself yet: the hidden debug verb records instances.
    let register = |attrs: &[&str]| {
        let out = Command::new(workspace_bin("apid"))
            .arg("--config")
            .arg(&a.config)
            .args(["debug", "register-instance", "--cluster", "edge"])
            .args(["--cpu", "2048", "--memory", "1024"])
            .args(attrs.iter().flat_map(|x| ["--attribute", x]))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    register(&["ecs.cpu-architecture=x86_64"]);
    let lab = register(&["ecs.cpu-architecture=arm64", "site=lab"]);
    let def = a.dir.path().join("web.json");
    std::fs::write(
        &def,
        r#"{"family":"web","containerDefinitions":[{"name":"web","image":"busybox","memory":400}]}"#,
    )
    .unwrap();
    a.aws(&[
        "register-task-definition",
        "--cli-input-json",
        &format!("file://{}", def.display()),
    ]);
    // Two 400 MiB tasks fit the lab node's 1024; the third is a placement failure.
    let r = a.aws(&[
        "run-task",
        "--cluster",
        "edge",
        "--task-definition",
        "web",
        "--count",
        "3",
        "--started-by",
        "e2e",
        "--placement-constraints",
        r#"[{"type":"memberOf","expression":"attribute:site == lab"}]"#,
        "--placement-strategy",
        "type=binpack,field=memory",
    ]);
    let tasks = r["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2, "{r}");
    assert!(
        tasks
            .iter()
            .all(|t| t["containerInstanceArn"].as_str().unwrap().ends_with(&lab)),
        "{r}"
    );
    // Each instance says why it took no more: the lab one is full, the other not a member.
    let mut why: Vec<(bool, &str)> = r["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let on_lab = f["arn"].as_str().unwrap().ends_with(&lab);
            (on_lab, f["reason"].as_str().unwrap())
        })
        .collect();
    why.sort();
    assert_eq!(
        why,
        [
            (false, "MemberOf placement constraint unsatisfied."),
            (true, "RESOURCE:MEMORY")
        ],
        "{r}"
    );
    let arn = tasks[0]["taskArn"].as_str().unwrap();
    let d = a.aws(&[
        "describe-tasks",
        "--cluster",
        "edge",
        "--tasks",
        arn,
        "nope",
    ]);
    assert_eq!(d["tasks"][0]["lastStatus"], "PROVISIONING");
    assert_eq!(d["tasks"][0]["startedBy"], "e2e");
    assert_eq!(d["failures"][0]["reason"], "MISSING");
    let s = a.aws(&[
        "stop-task",
        "--cluster",
        "edge",
        "--task",
        arn,
        "--reason",
        "done",
    ]);
    assert_eq!(s["task"]["desiredStatus"], "STOPPED");
    assert_eq!(s["task"]["stopCode"], "UserInitiated");
    let l = a.aws(&[
        "list-tasks",
        "--cluster",
        "edge",
        "--desired-status",
        "STOPPED",
    ]);
    assert_eq!(l["taskArns"], serde_json::json!([arn]));
    let l = a.aws(&["list-tasks", "--cluster", "edge", "--started-by", "e2e"]);
    assert_eq!(l["taskArns"].as_array().unwrap().len(), 1, "{l}");
    let e = a.aws_err(
        (&a.key.0, &a.key.1),
        &[
            "run-task",
            "--cluster",
            "edge",
            "--task-definition",
            "web",
            "--placement-constraints",
            r#"[{"type":"memberOf","expression":"attribute:site in [lab"}]"#,
        ],
    );
    assert!(
        e.contains("(InvalidParameterException)") && e.contains("position"),
        "{e}"
    );
}
