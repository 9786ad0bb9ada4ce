//! The node's identity with the control plane, as `ecs-anywhere-install.sh` sets one up for ECS
//! Anywhere: `skiffd register` makes the node's P-256 key (it never leaves the box), sends a
//! CSR with the activation to apid's node channel, and keeps what comes back.
//!
//! Where things live, and why there:
//! - `credentials_dir` (`/etc/skiff/node`, 0700): `node.key` (0600), `node.crt`, `ca.pem`.
//!   Configuration-like secrets, backed up with /etc, readable by root only.
//! - `<root>/node.json` (0600): the registration itself (endpoint, container instance ARN):
//!   state, not configuration. Its presence is what makes skiffd dial the control plane.
//!
//! First contact is verified: the operator gives the install the cluster CA (`skiff control
//! ca-cert` prints it) with the activation; there is no "insecure first contact", since a node
//! that skips verification hands its activation code to whoever answers. From then on the node
//! pins the CA that registration returned.
//!
//! Rotation keeps the key and replaces the certificate (one atomic rename, so a crash leaves a
//! working pair): apid revokes the older certificate once the node has connected with the new
//! one, so a node that lost the answer is not locked out.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};

use crate::config::NodeConfig;
use crate::protocol::{NodeAttribute, RegisterRequest, Registered};
use crate::record::write_atomic;

/// Errors of the node's identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The endpoint is not `https://HOST:PORT`.
    #[error("endpoint {endpoint:?}: {why}")]
    Endpoint {
        /// What was given.
        endpoint: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {why}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A file could not be read or written.
    #[error("{op} {path}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The node is registered already; registering again would make a second instance.
    #[error(
        "this node is registered already as {arn} ({path}); deregister it and remove that file to register again"
    )]
    Registered {
        /// Its container instance.
        arn: String,
        /// The registration file.
        path: PathBuf,
    },
    /// The key or CSR could not be made.
    #[error("making the node's key and CSR: {0}")]
    Key(#[from] rcgen::Error),
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// An attribute given is not `name=value`.
    #[error("attribute {0:?}: expected NAME=VALUE with a name of 1 to 128 characters")]
    Attribute(String),
    /// apid could not be reached or refused.
    #[error(transparent)]
    Transport(#[from] super::transport::TransportError),
}

/// Where the control plane's node channel is: `https://HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Endpoint {
    /// The host, a name or an address (what apid's certificate names).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl TryFrom<String> for Endpoint {
    type Error = IdentityError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        let bad = |why| IdentityError::Endpoint {
            endpoint: s.clone(),
            why,
        };
        let rest = s
            .strip_prefix("https://")
            .ok_or_else(|| bad("the node channel is TLS: https://HOST:PORT"))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("a port is needed (apid's node_listen, 8461 by default)"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port.parse().map_err(|_| bad("the port is not a number"))?;
        if host.is_empty() || host.contains('/') {
            return Err(bad("no host"));
        }
        ServerName::try_from(host.to_owned()).map_err(|_| bad("the host is not a valid name"))?;
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl From<Endpoint> for String {
    fn from(e: Endpoint) -> String {
        e.to_string()
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "https://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "https://{}:{}", self.host, self.port)
        }
    }
}

impl Endpoint {
    /// The name apid's server certificate is checked against.
    pub fn server_name(&self) -> ServerName<'static> {
        ServerName::try_from(self.host.clone()).expect("checked when parsed")
    }
}

/// The registration, as `<root>/node.json` keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeIdentity {
    /// apid's node channel.
    pub endpoint: Endpoint,
    /// The container instance's ARN.
    pub container_instance_arn: String,
    /// Its id.
    pub container_instance_id: String,
}

impl NodeIdentity {
    /// The cluster's name, from the ARN (`...:container-instance/<cluster>/<id>`).
    pub fn cluster(&self) -> &str {
        self.container_instance_arn
            .rsplit('/')
            .nth(1)
            .unwrap_or_default()
    }
}

/// What `skiffd register` is given.
#[derive(Clone, Debug)]
pub struct Registration {
    /// apid's node channel.
    pub endpoint: Endpoint,
    /// The cluster CA, PEM, to verify apid at first contact.
    pub ca_cert: PathBuf,
    /// The activation's id.
    pub activation_id: String,
    /// The activation's code.
    pub activation_code: String,
    /// The cluster the operator expects (the activation decides; apid checks this).
    pub cluster: Option<String>,
    /// Custom attributes, `name=value`.
    pub attributes: Vec<String>,
}

/// The node's files: key, certificate and CA under `credentials_dir`, and the registration.
#[derive(Clone, Debug)]
pub struct Credentials {
    dir: PathBuf,
    identity: PathBuf,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + use<> {
    let path = path.to_owned();
    move |source| IdentityError::Io { op, path, source }
}

fn certs_from(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let data = std::fs::read(path).map_err(io("reading", path))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<_, _>>()
        .map_err(|e| IdentityError::Pem {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::Pem {
            path: path.to_owned(),
            why: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// A rustls root store of the CA certificates in `path`.
fn roots_from(path: &Path) -> Result<rustls::RootCertStore, IdentityError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs_from(path)? {
        roots.add(cert).map_err(|e| IdentityError::Pem {
            path: path.to_owned(),
            why: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The CPU architecture as ECS's `ecs.cpu-architecture` names it.
pub fn cpu_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        other => other,
    }
}

/// The node's memory in MiB, from /proc/meminfo.
fn memory_mib() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Parses `name=value` attributes.
fn attributes(given: &[String]) -> Result<Vec<NodeAttribute>, IdentityError> {
    let mut out = vec![
        NodeAttribute {
            name: "ecs.cpu-architecture".into(),
            value: Some(cpu_architecture().into()),
        },
        NodeAttribute {
            name: "ecs.os-type".into(),
            value: Some("linux".into()),
        },
    ];
    for a in given {
        let (name, value) = a
            .split_once('=')
            .ok_or_else(|| IdentityError::Attribute(a.clone()))?;
        if name.is_empty() || name.len() > 128 {
            return Err(IdentityError::Attribute(a.clone()));
        }
        out.retain(|x| x.name != name);
        out.push(NodeAttribute {
            name: name.into(),
            value: Some(value.into()),
        });
    }
    Ok(out)
}

impl Credentials {
    /// The files of the node configured by `cfg`.
    pub fn of(cfg: &NodeConfig) -> Self {
        Self {
            dir: cfg.credentials_dir.clone(),
            identity: cfg.identity_file(),
        }
    }

    /// The node's private key.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("node.key")
    }

    /// The node's certificate.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("node.crt")
    }

    /// The cluster CA.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The registration, if the node has one.
    pub fn identity(&self) -> Result<Option<NodeIdentity>, IdentityError> {
        match std::fs::read(&self.identity) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| IdentityError::Pem {
                    path: self.identity.clone(),
                    why: format!("not a registration: {e}"),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", &self.identity)(e)),
        }
    }

    /// Forgets the registration after the control plane deregistered the node: the file is
    /// kept beside, renamed, for the operator to see, and the node can register anew.
    pub fn retire(&self) -> Result<(), IdentityError> {
        let mut to = self.identity.as_os_str().to_owned();
        to.push(".deregistered");
        std::fs::rename(&self.identity, &to).map_err(io("renaming", &self.identity))
    }

    /// The TLS configuration of the node channel: apid verified with the pinned CA, the
    /// node's certificate offered.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, IdentityError> {
        let roots = roots_from(&self.ca_path())?;
        let chain = certs_from(&self.cert_path())?;
        let key_path = self.key_path();
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| IdentityError::Pem {
            path: key_path.clone(),
            why: e.to_string(),
        })?;
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// The validity of the node's certificate (epoch seconds: not before, not after).
    pub fn cert_validity(&self) -> Result<(i64, i64), IdentityError> {
        let path = self.cert_path();
        let der = certs_from(&path)?.remove(0);
        let (_, cert) =
            x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| IdentityError::Pem {
                path: path.clone(),
                why: e.to_string(),
            })?;
        let v = cert.validity();
        Ok((v.not_before.timestamp(), v.not_after.timestamp()))
    }

    /// A CSR for the node's key (rotation keeps the key).
    pub fn csr(&self) -> Result<String, IdentityError> {
        let path = self.key_path();
        let pem = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
        let key = rcgen::KeyPair::from_pem(&pem)?;
        csr_for(&key)
    }

    /// Replaces the certificate with a renewed one (atomically: the old pair or the new one).
    pub fn install_cert(&self, pem: &str) -> Result<(), IdentityError> {
        let path = self.cert_path();
        write_atomic(&path, pem.as_bytes(), 0o644).map_err(io("writing", &path))
    }

    /// Registers the node (see the module documentation). Nothing is written unless apid
    /// accepted: a refused code leaves the node as it was.
    pub async fn register(
        &self,
        cfg: &NodeConfig,
        r: &Registration,
    ) -> Result<NodeIdentity, IdentityError> {
        if let Some(id) = self.identity()? {
            return Err(IdentityError::Registered {
                arn: id.container_instance_arn,
                path: self.identity.clone(),
            });
        }
        // The node's capabilities (microVMs) are not claimed here: skiffd reports them on its
        // first sync of each start, once it has checked them (see SyncRequest::capabilities).
        let attributes = attributes(&r.attributes)?;
        let roots = roots_from(&r.ca_cert)?;
        let mut tls = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let req = RegisterRequest {
            activation_id: r.activation_id.clone(),
            activation_code: r.activation_code.clone(),
            csr: csr_for(&key)?,
            cpu: i64::try_from(cores).unwrap_or(1) * 1024,
            memory: (memory_mib() - cfg.reserved_memory).max(1),
            // ECS's reserved ports, with Skiff's metadata endpoint's.
            reserved_ports: vec![22, 51678, 51679],
            attributes,
            agent_version: format!("skiffd {}", env!("CARGO_PKG_VERSION")),
            hostname: hostname(),
            cluster: r.cluster.clone(),
        };
        let mut channel = super::transport::Channel::new(r.endpoint.clone(), Arc::new(tls));
        let done: Registered = channel
            .post("/register", &req, std::time::Duration::from_secs(30))
            .await?;
        let identity = NodeIdentity {
            endpoint: r.endpoint.clone(),
            container_instance_arn: done.container_instance_arn,
            container_instance_id: done.container_instance_id,
        };
        self.save(&key, &done.certificate_pem, &done.ca_pem, &identity)?;
        Ok(identity)
    }

    fn save(
        &self,
        key: &rcgen::KeyPair,
        cert: &str,
        ca: &str,
        identity: &NodeIdentity,
    ) -> Result<(), IdentityError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io("creating", &self.dir))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("restricting", &self.dir))?;
        let files = [
            (self.key_path(), key.serialize_pem().into_bytes(), 0o600),
            (self.cert_path(), cert.as_bytes().to_vec(), 0o644),
            (self.ca_path(), ca.as_bytes().to_vec(), 0o644),
        ];
        for (path, data, mode) in files {
            write_atomic(&path, &data, mode).map_err(io("writing", &path))?;
        }
        if let Some(parent) = self.identity.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        let data = serde_json::to_vec_pretty(identity).expect("identities serialize");
        write_atomic(&self.identity, &data, 0o600).map_err(io("writing", &self.identity))
    }
}

/// A CSR for `key`, its subject the node's hostname (apid names the certificate after the
/// container instance whatever the CSR says).
fn csr_for(key: &rcgen::KeyPair) -> Result<String, IdentityError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname());
    Ok(params.serialize_request(key)?.pem()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print() {
        let e = Endpoint::try_from("https://10.0.0.1:8461".to_owned()).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("10.0.0.1", 8461));
        assert_eq!(e.to_string(), "https://10.0.0.1:8461");
        let e = Endpoint::try_from("https://apid.example:9/".to_owned()).unwrap();
        assert_eq!(e.host, "apid.example");
        for (bad, why) in [
            ("http://10.0.0.1:8461", "TLS"),
            ("https://10.0.0.1", "port"),
            ("https://:8461", "no host"),
            ("https://h:x", "number"),
        ] {
            let err = Endpoint::try_from(bad.to_owned()).unwrap_err().to_string();
            assert!(err.contains(why) && err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn attributes_are_parsed_and_override_defaults() {
        let a = attributes(&["zone=a".into(), "ecs.os-type=linux2".into()]).unwrap();
        assert!(a.contains(&NodeAttribute {
            name: "zone".into(),
            value: Some("a".into())
        }));
        assert_eq!(
            a.iter().filter(|x| x.name == "ecs.os-type").count(),
            1,
            "{a:?}"
        );
        assert!(attributes(&["novalue".into()]).is_err());
        assert!(attributes(&["=x".into()]).is_err());
    }

    #[test]
    fn the_cluster_comes_from_the_arn() {
        let id = NodeIdentity {
            endpoint: Endpoint::try_from("https://h:1".to_owned()).unwrap(),
            container_instance_arn: "arn:aws:ecs:us-east-1:0:container-instance/edge/abc".into(),
            container_instance_id: "abc".into(),
        };
        assert_eq!(id.cluster(), "edge");
    }

    #[test]
    fn a_csr_is_made_and_the_key_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NodeConfig {
            root: dir.path().join("root"),
            credentials_dir: dir.path().join("creds"),
            ..NodeConfig::default()
        };
        let c = Credentials::of(&cfg);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let id = NodeIdentity {
            endpoint: Endpoint::try_from("https://h:1".to_owned()).unwrap(),
            container_instance_arn: "arn:aws:ecs:r:0:container-instance/edge/abc".into(),
            container_instance_id: "abc".into(),
        };
        c.save(&key, "CERT", "CA", &id).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(c.key_path()), 0o600);
        assert_eq!(mode(cfg.credentials_dir.clone()), 0o700);
        assert_eq!(mode(cfg.identity_file()), 0o600);
        assert_eq!(c.identity().unwrap(), Some(id));
        assert!(c.csr().unwrap().contains("BEGIN CERTIFICATE REQUEST"));
        c.retire().unwrap();
        assert_eq!(c.identity().unwrap(), None);
    }
}
