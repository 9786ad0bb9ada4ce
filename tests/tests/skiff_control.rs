//! `skiff control` against a real apid on loopback: the admin actions an operator used to need a
//! shell on the apid host for, and the readable views, with the real `skiff` binary signing
//! with keys apid issued.

use std::process::{Command, Output};

use skiff_tests::{Apid, workspace_bin};

/// `skiff control <args>` against `a`, signed with `key`.
fn skiff_as(a: &Apid, key: (&str, &str), args: &[&str]) -> Output {
    Command::new(workspace_bin("skiff"))
        .arg("control")
        .args(args)
        .env("SKIFF_ENDPOINT_URL", a.endpoint())
        .env("AWS_ACCESS_KEY_ID", key.0)
        .env("AWS_SECRET_ACCESS_KEY", key.1)
        .output()
        .expect("run skiff")
}

/// `skiff control <args>` with the fixture's key, asserting success; its stdout.
fn skiff(a: &Apid, args: &[&str]) -> String {
    let out = skiff_as(a, (&a.key.0, &a.key.1), args);
    assert!(out.status.success(), "skiff control {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn skiff_control_administers_apid_and_shows_the_cluster() {
    let a = Apid::start();
    a.aws(&["create-cluster", "--cluster-name", "edge"]);

    // Activations: created, listed (without the code), deleted.
    let created = json(&skiff(
        &a,
        &[
            "activations",
            "create",
            "--cluster",
            "edge",
            "--count",
            "2",
            "--expires",
            "1h",
            "--json",
        ],
    ));
    let id = created["activationId"].as_str().unwrap().to_owned();
    let code = created["activationCode"].as_str().unwrap();
    let table = skiff(&a, &["activations", "ls"]);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("ACTIVATION  "), "{table}");
    let row: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..3], [id.as_str(), "edge", "2"], "{table}");
    assert!(!table.contains(code), "{table}");
    let out = skiff_as(
        &a,
        (&a.key.0, &a.key.1),
        &["activations", "create", "--cluster", "nope"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ResourceNotFoundException: cluster nope not found"),
        "{err}"
    );
    skiff(&a, &["activations", "rm", &id]);
    assert_eq!(skiff(&a, &["activations", "ls"]).lines().count(), 1);

    // Keys: a second key works until revoked, then is refused as AWS refuses unknown keys.
    let k = json(&skiff(&a, &["keys", "create", "--json"]));
    let second = (
        k["accessKey"]["accessKeyId"].as_str().unwrap().to_owned(),
        k["accessKey"]["secretAccessKey"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let out = skiff_as(&a, (&second.0, &second.1), &["keys", "ls"]);
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains(&format!("{}  Active", second.0)),
        "{listed}"
    );
    // A key cannot revoke itself.
    let out = skiff_as(&a, (&second.0, &second.1), &["keys", "revoke", &second.0]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot revoke itself"), "{err}");
    skiff(&a, &["keys", "revoke", &second.0]);
    let out = skiff_as(&a, (&second.0, &second.1), &["clusters"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("UnrecognizedClientException"), "{err}");
    assert!(skiff(&a, &["keys", "ls"]).contains(&format!("{}  Revoked", second.0)));

    // The CA, as `skiff-apid ca-cert` prints it on the host.
    let pem = skiff(&a, &["ca-cert"]);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert_eq!(pem, a.admin(&["ca-cert"]));

    // Node certificates: none issued yet; an unknown serial is named.
    assert_eq!(skiff(&a, &["certs", "ls"]).lines().count(), 1);
    let out = skiff_as(&a, (&a.key.0, &a.key.1), &["certs", "revoke", "abcd"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no node certificate with serial abcd"),
        "{err}"
    );

    // The views, after an instance registers.
    let instance = a
        .admin(&[
            "debug",
            "register-instance",
            "--cluster",
            "edge",
            "--cpu",
            "2048",
            "--memory",
            "1024",
        ])
        .trim()
        .to_owned();
    let clusters = skiff(&a, &["clusters"]);
    let rows: Vec<Vec<&str>> = clusters
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "NAME",
            "STATUS",
            "INSTANCES",
            "SERVICES",
            "RUNNING",
            "PENDING"
        ]
    );
    assert!(
        rows.contains(&vec!["edge", "ACTIVE", "1", "0", "0", "0"]),
        "{clusters}"
    );
    let nodes = skiff(&a, &["nodes", "--cluster", "edge"]);
    let row: Vec<_> = nodes.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[..6],
        [
            "edge",
            instance.as_str(),
            "ACTIVE",
            "connected",
            "2048/2048",
            "1024/1024"
        ],
        "{nodes}"
    );
    // Without --cluster, every cluster's.
    assert_eq!(skiff(&a, &["nodes"]), nodes);
    let described = json(&skiff(&a, &["nodes", "--json"]));
    assert_eq!(described.as_array().unwrap().len(), 1);
    assert_eq!(skiff(&a, &["services"]).lines().count(), 1);
    assert_eq!(
        skiff(&a, &["tasks", "--cluster", "edge"]).lines().count(),
        1
    );
}

#[test]
fn skiff_control_says_what_is_missing() {
    let out = Command::new(workspace_bin("skiff"))
        .args(["control", "clusters"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .expect("run skiff");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AWS_ACCESS_KEY_ID is not set"), "{err}");
    let out = Command::new(workspace_bin("skiff"))
        .args([
            "control",
            "--endpoint-url",
            "https://127.0.0.1:1",
            "clusters",
        ])
        .env("AWS_ACCESS_KEY_ID", "AKIAX")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .output()
        .expect("run skiff");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not serve TLS"), "{err}");
}
