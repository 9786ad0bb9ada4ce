//! apid's configuration (`/etc/skiff/apid.toml`): where it listens, where it keeps its state, and
//! the account id and region its ARNs and SigV4 scopes carry. Every key has a default; an
//! unknown key is an error naming it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where apid looks for its configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/skiff/apid.toml";

/// Errors of the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ApidConfigError {
    /// The file exists but could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// apid's settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApidConfig {
    /// The operator API (the ECS API): plain HTTP unless `tls_certificate` and `tls_key` are
    /// set; without TLS keep it on loopback.
    pub listen: SocketAddr,
    /// The operator API's certificate chain (PEM, leaf first): with `tls_key`, the API is
    /// served over TLS (clients: `--endpoint-url https://...`, `--ca-bundle` for a private CA).
    pub tls_certificate: Option<PathBuf>,
    /// The private key (PEM) of `tls_certificate`.
    pub tls_key: Option<PathBuf>,
    /// The store: a SQLite file's path (the default; created if missing), or a
    /// `postgres://user:password@host/db` URL shared by several apid replicas.
    pub database: String,
    /// The region in ARNs, and the one SigV4 scopes must name.
    pub region: String,
    /// The 12-digit account id in ARNs.
    pub account_id: String,
    /// The node channel (TLS; mTLS except `POST /register`), which nodes dial.
    pub node_listen: SocketAddr,
    /// The DNS names and IP addresses the node channel's server certificate carries: the
    /// names nodes dial apid by.
    pub node_channel_names: Vec<String>,
    /// The longest a node's sync is held when nothing changed, in seconds: nodes sync at
    /// least this often, and that is their heartbeat.
    pub heartbeat_seconds: u64,
    /// Without a sync for this long (seconds), an instance is shown disconnected
    /// (`agentConnected` false) and gets no new tasks.
    pub heartbeat_timeout_seconds: u64,
    /// Disconnected for this long (seconds), an instance's service tasks are started elsewhere
    /// and the stale copies stopped when it returns. Its other tasks stay (a node that is only
    /// unreachable keeps them running).
    pub disconnect_grace_seconds: u64,
}

impl Default for ApidConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8460".parse().expect("a valid default address"),
            tls_certificate: None,
            tls_key: None,
            database: "/var/lib/skiff-apid/apid.db".into(),
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
            node_listen: "127.0.0.1:8461".parse().expect("a valid default address"),
            node_channel_names: vec!["localhost".into(), "127.0.0.1".into()],
            heartbeat_seconds: 20,
            heartbeat_timeout_seconds: 60,
            disconnect_grace_seconds: 300,
        }
    }
}

impl ApidConfig {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Self, ApidConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(ApidConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let invalid = |message: String| ApidConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let cfg: Self = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if cfg.account_id.len() != 12 || !cfg.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(format!(
                "account_id {:?}: 12 digits",
                cfg.account_id
            )));
        }
        if cfg.region.is_empty()
            || !cfg
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid(format!(
                "region {:?}: lowercase letters, digits and '-'",
                cfg.region
            )));
        }
        if cfg.node_channel_names.is_empty() {
            return Err(invalid(
                "node_channel_names: at least one name nodes dial apid by".into(),
            ));
        }
        if cfg.tls_certificate.is_some() != cfg.tls_key.is_some() {
            return Err(invalid(
                "tls_certificate and tls_key: both or neither".into(),
            ));
        }
        if cfg.heartbeat_seconds == 0 || cfg.heartbeat_timeout_seconds <= cfg.heartbeat_seconds {
            return Err(invalid(format!(
                "heartbeat_timeout_seconds ({}) must exceed heartbeat_seconds ({}), which is at least 1",
                cfg.heartbeat_timeout_seconds, cfg.heartbeat_seconds
            )));
        }
        if cfg.disconnect_grace_seconds < cfg.heartbeat_timeout_seconds {
            return Err(invalid(format!(
                "disconnect_grace_seconds ({}) must be at least heartbeat_timeout_seconds ({})",
                cfg.disconnect_grace_seconds, cfg.heartbeat_timeout_seconds
            )));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// packaging/apid.toml documents every key commented out with its default: uncommented,
    /// it must load.
    #[test]
    fn the_packaged_file_documents_real_keys() {
        let active: String = include_str!("../../packaging/apid.toml")
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.contains(" = ") => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apid.toml");
        std::fs::write(&path, &active).unwrap();
        let cfg = ApidConfig::load(&path).unwrap();
        assert_eq!(
            cfg.heartbeat_seconds,
            ApidConfig::default().heartbeat_seconds
        );
    }

    #[test]
    fn defaults_and_errors_naming_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("apid.toml");
        let c = ApidConfig::load(&p).unwrap();
        assert_eq!(c.region, "us-east-1");
        for (text, says) in [
            ("regoin = \"x\"\n", "regoin"),
            ("account_id = \"12\"\n", "account_id"),
            ("region = \"US East\"\n", "region"),
            ("node_channel_names = []\n", "node_channel_names"),
            ("tls_key = \"/k.pem\"\n", "tls_certificate"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = ApidConfig::load(&p).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
