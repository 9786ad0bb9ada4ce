//! The node channel in process: registration over TLS, then mTLS with the issued certificate,
//! and the handshake refusals (foreign CA, expired, revoked).

use std::sync::Arc;

use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::config::ApidConfig;
use crate::identity::activations;
use crate::identity::ca::tests::{node_cert_between, node_csr, pool};

struct Fixture {
    _dir: crate::store::testing::Guard,
    api: Api,
    ch: Arc<NodeChannel>,
    port: u16,
}

async fn fixture() -> Fixture {
    let (dir, store) = pool().await;
    let api = Api::new(store, ApidConfig::default());
    api.call("CreateCluster", br#"{"clusterName":"edge"}"#)
        .await
        .unwrap();
    let ch = Arc::new(NodeChannel::new(api.clone()).await.unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(ch.clone().serve(listener));
    Fixture {
        _dir: dir,
        api,
        ch,
        port,
    }
}

/// A client certificate (PEM) and its key.
type Identity = (String, KeyPair);

/// One HTTP/1.1 request over TLS trusting `ca_pem`; `Err` when the TLS session fails (a refused
/// client certificate shows as an alert on the first read, TLS 1.3 style).
async fn request(
    port: u16,
    ca_pem: &str,
    client: Option<&Identity>,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, Value), std::io::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client {
        Some((pem, key)) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()],
                PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no response: {text:?}")))?;
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

fn registration(id: &str, code: &str, csr: &str) -> String {
    json!({
        "activationId": id,
        "activationCode": code,
        "csr": csr,
        "cpu": 2048,
        "memory": 3900,
        "reservedPorts": [22],
        "attributes": [{"name": "ecs.cpu-architecture", "value": "x86_64"}, {"name": "site", "value": "lab"}],
        "agentVersion": "0.1.0",
        "hostname": "box-1",
    })
    .to_string()
}

async fn instances(api: &Api) -> usize {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM container_instances")
        .fetch_one(api.pool())
        .await
        .unwrap();
    usize::try_from(n).unwrap()
}

#[tokio::test]
async fn a_node_registers_then_speaks_mtls_until_deregistered() {
    let f = fixture().await;
    let ca_pem = f.ch.ca.cert_pem().to_owned();
    let a = activations::create(f.api.pool(), "edge", 1, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let (key, csr) = node_csr();

    // Refused, and nothing recorded: wrong code, bad CSR.
    let (s, b) = request(
        f.port,
        &ca_pem,
        None,
        "POST",
        "/register",
        &registration(&a.activation_id, "wrong", &csr),
    )
    .await
    .unwrap();
    assert_eq!(
        (s, b["message"].as_str().unwrap()),
        (403, "the activation id or code is not valid")
    );
    let (s, _) = request(
        f.port,
        &ca_pem,
        None,
        "POST",
        "/register",
        &registration(&a.activation_id, &a.activation_code, "not a csr"),
    )
    .await
    .unwrap();
    assert_eq!(s, 400);
    assert_eq!(instances(&f.api).await, 0);

    let (s, reg) = request(
        f.port,
        &ca_pem,
        None,
        "POST",
        "/register",
        &registration(&a.activation_id, &a.activation_code, &csr),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{reg}");
    let id = reg["containerInstanceId"].as_str().unwrap().to_owned();
    assert_eq!(
        reg["containerInstanceArn"],
        format!("arn:aws:ecs:us-east-1:000000000000:container-instance/edge/{id}")
    );
    assert_eq!(reg["caPem"], ca_pem.as_str());
    // Used up: the second node is refused, nothing recorded.
    let (s, b) = request(
        f.port,
        &ca_pem,
        None,
        "POST",
        "/register",
        &registration(&a.activation_id, &a.activation_code, &csr),
    )
    .await
    .unwrap();
    assert_eq!(s, 403, "{b}");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("no registrations left")
    );
    assert_eq!(instances(&f.api).await, 1);

    let me: Identity = (reg["certificatePem"].as_str().unwrap().to_owned(), key);
    let (s, b) = request(f.port, &ca_pem, Some(&me), "GET", "/v1/whoami", "")
        .await
        .unwrap();
    assert_eq!(
        (s, b["containerInstanceId"].as_str()),
        (200, Some(id.as_str()))
    );
    // Without a certificate, only /register answers.
    let (s, _) = request(f.port, &ca_pem, None, "GET", "/v1/whoami", "")
        .await
        .unwrap();
    assert_eq!(s, 401);

    // Expired, and from another CA: refused at the handshake.
    let (key2, csr2) = node_csr();
    let now = OffsetDateTime::now_utc();
    let expired = node_cert_between(
        &f.ch.ca,
        &csr2,
        &id,
        now - Duration::days(40),
        now - Duration::days(10),
    );
    let old: Identity = (expired.pem, key2);
    let e = request(f.port, &ca_pem, Some(&old), "GET", "/v1/whoami", "")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("CertificateExpired"), "{e}");
    let other_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, id.as_str());
    let foreign: Identity = (p.self_signed(&other_key).unwrap().pem(), other_key);
    let e = request(f.port, &ca_pem, Some(&foreign), "GET", "/v1/whoami", "")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("UnknownCA"), "{e}");

    // The sync route answers the node over mTLS.
    let (s, b) = request(
        f.port,
        &ca_pem,
        Some(&me),
        "POST",
        "/v1/sync",
        r#"{"version":0}"#,
    )
    .await
    .unwrap();
    assert_eq!(
        (s, b["instanceStatus"].as_str()),
        (200, Some("ACTIVE")),
        "{b}"
    );
    let (s, _) = request(
        f.port,
        &ca_pem,
        None,
        "POST",
        "/v1/sync",
        r#"{"version":0}"#,
    )
    .await
    .unwrap();
    assert_eq!(s, 401);

    // Rotation: a new certificate for a new key; the old one keeps working until the node
    // has connected with the new one, and is revoked from then on.
    let (key3, csr3) = node_csr();
    let (s, renewed) = request(
        f.port,
        &ca_pem,
        Some(&me),
        "POST",
        "/v1/renew",
        &json!({ "csr": csr3 }).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{renewed}");
    assert!(renewed["notAfter"].as_f64().unwrap() > 29.0 * 86400.0 + now.unix_timestamp() as f64);
    let (s, _) = request(f.port, &ca_pem, Some(&me), "GET", "/v1/whoami", "")
        .await
        .unwrap();
    assert_eq!(
        s, 200,
        "the old certificate still works before the new one is used"
    );
    let new: Identity = (renewed["certificatePem"].as_str().unwrap().to_owned(), key3);
    let (s, b) = request(f.port, &ca_pem, Some(&new), "GET", "/v1/whoami", "")
        .await
        .unwrap();
    assert_eq!(
        (s, b["containerInstanceId"].as_str()),
        (200, Some(id.as_str()))
    );
    let e = request(f.port, &ca_pem, Some(&me), "GET", "/v1/whoami", "")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("CertificateRevoked"), "{e}");
    let me = new;

    // Deregistered: its certificate is revoked at the next handshake.
    f.api
        .call(
            "DeregisterContainerInstance",
            format!(r#"{{"cluster":"edge","containerInstance":"{id}"}}"#).as_bytes(),
        )
        .await
        .unwrap();
    let e = request(f.port, &ca_pem, Some(&me), "GET", "/v1/whoami", "")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("CertificateRevoked"), "{e}");
    // The listener carries on for others.
    let (s, _) = request(f.port, &ca_pem, None, "GET", "/v1/whoami", "")
        .await
        .unwrap();
    assert_eq!(s, 401);
}

#[tokio::test]
async fn an_expired_activation_records_nothing() {
    let f = fixture().await;
    let ca_pem = f.ch.ca.cert_pem().to_owned();
    let a = activations::create(f.api.pool(), "edge", 5, std::time::Duration::ZERO)
        .await
        .unwrap();
    let (_, csr) = node_csr();
    let (s, b) = request(
        f.port,
        &ca_pem,
        None,
        "POST",
        "/register",
        &registration(&a.activation_id, &a.activation_code, &csr),
    )
    .await
    .unwrap();
    assert_eq!(s, 403);
    assert!(b["message"].as_str().unwrap().contains("expired"), "{b}");
    assert_eq!(instances(&f.api).await, 0);
}
