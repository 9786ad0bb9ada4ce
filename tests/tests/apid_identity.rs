//! Node identity end to end against the real `apid`: an operator creates a cluster (aws CLI) and
//! an activation (`skiff-apid activations create`); a node makes its key and CSR with openssl, registers
//! with curl over TLS trusting the CA from `skiff-apid ca-cert`, and then speaks mTLS with the issued
//! certificate until it is deregistered. Refusals (wrong code, expired activation, used-up count,
//! foreign CA, revoked) record nothing and fail the handshake respectively. (An expired client
//! certificate needs the CA's key to make: apid's unit tests cover it, in
//! apid/src/identity/channel_tests.rs.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skiff_tests::Apid;

/// What a node does against apid, in these tests.
trait NodeSide {
    fn instances(&self) -> Vec<Value>;
    fn curl(&self, path: &str, extra: &[&str]) -> Result<(u16, Value), (i32, String)>;
    fn register(&self, activation: &Value, code: Option<&str>, csr: &Path) -> (u16, Value);
    fn wait_log(&self, needle: &str);
}

impl NodeSide for Apid {
    fn instances(&self) -> Vec<Value> {
        self.aws(&["list-container-instances", "--cluster", "edge"])["containerInstanceArns"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// curl to the node channel trusting apid's CA, with `extra` arguments; the status and
    /// body, or curl's failure (exit code, stderr).
    fn curl(&self, path: &str, extra: &[&str]) -> Result<(u16, Value), (i32, String)> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(self.path("ca.pem"))
            .args(extra)
            .args(["-w", "\n%{http_code}"])
            .arg(format!("https://127.0.0.1:{}{path}", self.node_port))
            .output()
            .expect("run curl");
        if !out.status.success() {
            return Err((
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        Ok((
            code.parse().unwrap(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        ))
    }

    /// POSTs a registration; the status and body.
    fn register(&self, activation: &Value, code: Option<&str>, csr: &Path) -> (u16, Value) {
        let body = json!({
            "activationId": activation["ActivationId"],
            "activationCode": code.map_or(activation["ActivationCode"].clone(), Value::from),
            "csr": std::fs::read_to_string(csr).unwrap(),
            "cpu": 4096,
            "memory": 7800,
            "reservedPorts": [22, 8080],
            "attributes": [
                {"name": "ecs.cpu-architecture", "value": "x86_64"},
                {"name": "ecs.os-type", "value": "linux"},
                {"name": "site", "value": "lab-1"},
            ],
            "agentVersion": "0.1.0",
            "hostname": "edge-box-1",
        });
        let file = self.path("register.json");
        std::fs::write(&file, body.to_string()).unwrap();
        self.curl(
            "/register",
            &[
                "-H",
                "content-type: application/json",
                "--data-binary",
                &format!("@{}", file.display()),
            ],
        )
        .unwrap_or_else(|e| panic!("register: {e:?}\n{}", self.log()))
    }

    /// Waits for apid to log `needle` (it logs a refused handshake just after refusing it).
    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A P-256 key and CSR made by openssl, as a node's install makes them: the key stays here.
fn node_key_and_csr(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    dir.join(format!("{name}.csr"))
}

#[test]
fn a_node_registers_with_an_activation_and_speaks_mtls_until_deregistered() {
    let a = Apid::start();
    let dir = a.dir.path().to_owned();
    a.aws(&["create-cluster", "--cluster-name", "edge"]);
    std::fs::write(a.path("ca.pem"), a.admin(&["ca-cert"])).unwrap();
    let act: Value = serde_json::from_str(&a.admin(&[
        "activations",
        "create",
        "--cluster",
        "edge",
        "--count",
        "1",
        "--expires",
        "1h",
    ]))
    .unwrap();
    assert_eq!(act["ActivationId"].as_str().unwrap().len(), 32, "{act}");
    let csr = node_key_and_csr(&dir, "node");

    // A wrong code and an expired activation are refused, and nothing is recorded.
    let (s, b) = a.register(&act, Some("0123456789abcdef0123456789abcdef"), &csr);
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["message"], "the activation id or code is not valid");
    let expired: Value = serde_json::from_str(&a.admin(&[
        "activations",
        "create",
        "--cluster",
        "edge",
        "--expires",
        "0s",
    ]))
    .unwrap();
    let (s, b) = a.register(&expired, None, &csr);
    assert_eq!(s, 403, "{b}");
    assert!(b["message"].as_str().unwrap().contains("expired"), "{b}");
    assert!(a.instances().is_empty());

    // The good registration.
    let (s, reg) = a.register(&act, None, &csr);
    assert_eq!(s, 200, "{reg}\n{}", a.log());
    let id = reg["containerInstanceId"].as_str().unwrap().to_owned();
    let arn = reg["containerInstanceArn"].as_str().unwrap().to_owned();
    assert_eq!(
        arn,
        format!("arn:aws:ecs:us-east-1:000000000000:container-instance/edge/{id}")
    );
    assert_eq!(
        reg["caPem"].as_str().unwrap(),
        std::fs::read_to_string(a.path("ca.pem")).unwrap()
    );
    std::fs::write(a.path("node.pem"), reg["certificatePem"].as_str().unwrap()).unwrap();
    // The certificate chains to the CA and names the instance (openssl's own view).
    let out = Command::new("openssl")
        .current_dir(&dir)
        .args([
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            "ca.pem",
            "node.pem",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = Command::new("openssl")
        .current_dir(&dir)
        .args(["x509", "-noout", "-subject", "-in", "node.pem"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&id),
        "{out:?}"
    );

    // The count (1) is used up: a second node is refused, nothing recorded.
    let csr2 = node_key_and_csr(&dir, "node2");
    let (s, b) = a.register(&act, None, &csr2);
    assert_eq!(s, 403, "{b}");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("no registrations left"),
        "{b}"
    );
    assert_eq!(a.instances(), [Value::from(arn.clone())]);

    // The aws CLI sees the node, its resources and attributes.
    let d = a.aws(&[
        "describe-container-instances",
        "--cluster",
        "edge",
        "--container-instances",
        &id,
    ]);
    let ci = &d["containerInstances"][0];
    assert_eq!(ci["containerInstanceArn"], arn.as_str(), "{d}");
    assert_eq!(ci["status"], "ACTIVE");
    let res = ci["registeredResources"].as_array().unwrap();
    let cpu = res.iter().find(|r| r["name"] == "CPU").unwrap();
    assert_eq!(cpu["integerValue"], 4096);
    let mem = res.iter().find(|r| r["name"] == "MEMORY").unwrap();
    assert_eq!(mem["integerValue"], 7800);
    let ports = res.iter().find(|r| r["name"] == "PORTS").unwrap();
    assert_eq!(ports["stringSetValue"], json!(["22", "8080"]));
    let attrs = ci["attributes"].as_array().unwrap();
    for (n, v) in [
        ("ecs.cpu-architecture", "x86_64"),
        ("ecs.os-type", "linux"),
        ("site", "lab-1"),
    ] {
        assert!(
            attrs.iter().any(|x| x["name"] == n && x["value"] == v),
            "{n}: {attrs:?}"
        );
    }
    assert_eq!(ci["versionInfo"]["agentVersion"], "0.1.0");

    // mTLS with the issued certificate.
    let (node_pem, node_key) = (
        dir.join("node.pem").display().to_string(),
        dir.join("node.key").display().to_string(),
    );
    let cert_args = ["--cert", &*node_pem, "--key", &*node_key];
    let (s, b) = a.curl("/v1/whoami", &cert_args).unwrap();
    assert_eq!(
        (s, b["containerInstanceId"].as_str()),
        (200, Some(id.as_str()))
    );
    // No certificate: 401 on the channel's routes.
    let (s, _) = a.curl("/v1/whoami", &[]).unwrap();
    assert_eq!(s, 401);

    // A certificate from another CA (openssl's) for the same CN: refused at the handshake.
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "other-ca.key",
            "-out",
            "other-ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Skiff apid cluster CA",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "forged.key",
            "-out",
            "forged.csr",
            "-subj",
            &format!("/CN={id}"),
        ],
    );
    // v3 with the extensions apid's own certificates carry, so that only the issuer differs.
    std::fs::write(
        dir.join("client-ext.cnf"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-extfile",
            "client-ext.cnf",
            "-in",
            "forged.csr",
            "-CA",
            "other-ca.pem",
            "-CAkey",
            "other-ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            "forged.pem",
        ],
    );
    let (forged_pem, forged_key) = (
        dir.join("forged.pem").display().to_string(),
        dir.join("forged.key").display().to_string(),
    );
    let forged = ["--cert", &*forged_pem, "--key", &*forged_key];
    let e = a.curl("/v1/whoami", &forged).unwrap_err();
    assert!(e.0 != 0, "{e:?}");
    // (It even copies the CA's name: the signature gives it away.)
    a.wait_log("BadSignature");

    // Deregistered: its certificate is refused from then on.
    a.aws(&[
        "deregister-container-instance",
        "--cluster",
        "edge",
        "--container-instance",
        &id,
    ]);
    let e = a.curl("/v1/whoami", &cert_args).unwrap_err();
    assert!(e.0 != 0, "{e:?}");
    a.wait_log("Revoked");
    assert!(a.instances().is_empty());
    assert!(!a.log().contains("panicked"), "{}", a.log());
}
