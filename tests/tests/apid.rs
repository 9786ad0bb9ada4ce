//! apid's ECS API driven by the real `aws` CLI and boto3 (Debian's awscli and python3-boto3),
//! over HTTP on loopback, signed with access keys apid issued.

use std::process::Command;

use skiff_tests::{Apid, workspace_bin};

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
        &["list-clusters", "--no-paginate", "--next-token", "bogus"],
    );
    assert!(
        e.contains("(InvalidParameterException)") && e.contains("nextToken is not valid"),
        "{e}"
    );
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
    let out = Command::new(workspace_bin("skiff-apid"))
        .arg("--config")
        .arg(&a.config)
        .args(["keys", "revoke", &id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let e = a.aws_err((&id, &secret), &["list-clusters"]);
    assert!(e.contains("(UnrecognizedClientException)"), "{e}");
    // On the wire: an unsigned request gets a 400 with AWS JSON 1.1's error body, and every
    // response names its request.
    let out = Command::new("curl")
        .args(["-sS", "-i", "-X", "POST", "-d", "{}"])
        .args([
            "-H",
            "X-Amz-Target: AmazonEC2ContainerServiceV20141113.ListClusters",
        ])
        .args(["-H", "Content-Type: application/x-amz-json-1.1"])
        .arg(a.endpoint())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.starts_with("http/1.1 400"), "{text}");
    assert!(text.contains("\nx-amzn-requestid: "), "{text}");
    assert!(
        text.contains("content-type: application/x-amz-json-1.1"),
        "{text}"
    );
    assert!(
        text.contains(r#""__type":"missingauthenticationtokenexception""#),
        "{text}"
    );
}

#[test]
fn the_aws_cli_runs_describes_and_stops_tasks() {
    let a = Apid::start();
    a.aws(&["create-cluster", "--cluster-name", "edge"]);
    // No node registers itself yet: the hidden debug verb records instances.
    let register = |attrs: &[&str]| {
        let out = Command::new(workspace_bin("skiff-apid"))
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

/// The operator API over TLS (`tls_certificate`/`tls_key`): the aws CLI trusting the test CA
/// works, plain HTTP to the same port does not, and a client that does not trust the CA is
/// refused at the handshake.
#[test]
fn the_operator_api_serves_tls_when_configured() {
    let a = Apid::start_tls();
    a.aws(&["create-cluster", "--cluster-name", "tls"]);
    let l = a.aws(&["list-clusters"]);
    assert!(l["clusterArns"].to_string().contains("cluster/tls"), "{l}");
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-X", "POST"])
        .arg(format!("http://127.0.0.1:{}/", a.port))
        .output()
        .unwrap();
    assert!(
        !plain.status.success(),
        "plain HTTP answered on the TLS port"
    );
    let untrusted = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-X", "POST"])
        .arg(a.endpoint())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&untrusted.stderr)
    );
}
