//! Image configuration: per-registry settings (TLS, credentials, mirrors), unpack limits and
//! cleanup defaults, read from Skiff's TOML file (`/etc/skiff/images.toml`), and credentials from
//! a docker `config.json` (`auths`, `credHelpers`, `credsStore`), as `docker login` writes it.
//!
//! Credentials are looked up by registry host: Skiff's own file first, then the docker file. A
//! registry is spoken to over HTTPS (system roots plus the CAs configured for it) unless it is
//! explicitly listed as `insecure`, which is the only way to get plain HTTP.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use crate::platform::Platform;

/// Where Skiff looks for its image configuration when none is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/skiff/images.toml";

/// Errors reading configuration or credentials.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown key.
    #[error("invalid configuration in {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, with the line.
        message: String,
    },
    /// A docker config.json entry could not be decoded.
    #[error("invalid docker config {path}: {message}")]
    DockerConfig {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A docker credential helper failed.
    #[error("docker credential helper docker-credential-{helper} failed for {registry}: {message}")]
    CredentialHelper {
        /// The helper name.
        helper: String,
        /// The registry asked for.
        registry: String,
        /// What went wrong.
        message: String,
    },
}

/// Limits that bound what one image may unpack to (decompression bombs, path tricks).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Total bytes of file content all layers of one image may unpack to.
    pub max_image_bytes: u64,
    /// Tar entries one layer may hold.
    pub max_layer_entries: u64,
    /// Longest entry path or link target, in bytes.
    pub max_path_bytes: usize,
    /// Largest manifest, index or config document accepted.
    pub max_document_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_image_bytes: 64 << 30,
            max_layer_entries: 1_000_000,
            max_path_bytes: 4096,
            max_document_bytes: 4 << 20,
        }
    }
}

/// Defaults for `skiff image prune`, in the spirit of ECR lifecycle rules.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CleanupConfig {
    /// Keep at most this many images per repository (most recently used first).
    pub keep_per_repository: Option<usize>,
    /// Remove images not used for longer than this (e.g. "30d").
    #[serde(default, with = "opt_duration")]
    pub unused_for: Option<Duration>,
}

/// Settings for one registry host (`docker.io`, `registry.local:5000`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Speak plain HTTP to this registry.
    pub insecure: bool,
    /// PEM files of CAs trusted for this registry, besides the system roots.
    pub ca: Vec<PathBuf>,
    /// Basic credentials (also sent to the token service of a bearer challenge).
    pub username: Option<String>,
    /// Password or token for `username`.
    pub password: Option<String>,
    /// Hosts tried before this one, in order; the registry itself is the fallback.
    pub mirrors: Vec<String>,
}

/// Skiff's image configuration.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Platform to pull for, when the command line gives none (default: the host's).
    #[serde(default, deserialize_with = "opt_platform")]
    pub platform: Option<Platform>,
    /// A docker `config.json` to read credentials from (default: `$DOCKER_CONFIG/config.json`
    /// or `~/.docker/config.json`).
    pub docker_config: Option<PathBuf>,
    /// Layers downloaded at once per pull.
    pub concurrent_downloads: usize,
    /// Rounds of attempts over the endpoints (mirrors, then the registry) for one request.
    pub attempts: u32,
    /// Unpack limits.
    pub limits: Limits,
    /// Prune defaults.
    pub cleanup: CleanupConfig,
    /// Per-registry settings, keyed by `host[:port]`.
    pub registries: BTreeMap<String, RegistryConfig>,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            platform: None,
            docker_config: None,
            concurrent_downloads: 3,
            attempts: 5,
            limits: Limits::default(),
            cleanup: CleanupConfig::default(),
            registries: BTreeMap::new(),
        }
    }
}

impl ImagesConfig {
    /// Reads `path`; a missing file at the default path means defaults, anywhere else an error.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && path == Path::new(DEFAULT_CONFIG_PATH) =>
            {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    /// Parses TOML text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            ConfigError::Parse {
                path: path.to_owned(),
                message: match line {
                    Some(l) => format!("line {l}: {}", e.message()),
                    None => e.message().to_owned(),
                },
            }
        })
    }

    /// Settings for `host` (defaults when it is not configured).
    pub fn registry(&self, host: &str) -> RegistryConfig {
        self.registries.get(host).cloned().unwrap_or_default()
    }

    /// Credentials for `host`: Skiff's file first, then the docker config.
    pub fn credentials(&self, host: &str) -> Result<Option<Credentials>, ConfigError> {
        let reg = self.registry(host);
        if let (Some(username), Some(password)) = (reg.username, reg.password) {
            return Ok(Some(Credentials { username, password }));
        }
        let path = match &self.docker_config {
            Some(p) => p.clone(),
            None => match default_docker_config() {
                Some(p) => p,
                None => return Ok(None),
            },
        };
        DockerConfig::load(&path)?.credentials(host)
    }
}

/// A user name and password (or identity token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// The parts of a docker `config.json` that carry credentials.
#[derive(Debug, Default, Deserialize)]
struct DockerConfig {
    #[serde(skip)]
    path: PathBuf,
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

impl DockerConfig {
    fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut cfg: Self = serde_json::from_str(&text).map_err(|e| ConfigError::DockerConfig {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        cfg.path = path.to_owned();
        Ok(cfg)
    }

    /// Docker keys Docker Hub as its legacy v1 URL; other registries by host, with or without
    /// a scheme.
    fn keys_for(host: &str) -> Vec<String> {
        if host == "docker.io" || host == "index.docker.io" {
            return vec![
                "https://index.docker.io/v1/".into(),
                "index.docker.io".into(),
                "docker.io".into(),
            ];
        }
        vec![
            host.to_owned(),
            format!("https://{host}"),
            format!("http://{host}"),
        ]
    }

    fn credentials(&self, host: &str) -> Result<Option<Credentials>, ConfigError> {
        let keys = Self::keys_for(host);
        let helper = keys
            .iter()
            .find_map(|k| self.cred_helpers.get(k))
            .or(self.creds_store.as_ref());
        if let Some(helper) = helper
            && let Some(c) = run_credential_helper(helper, &keys[0])?
        {
            return Ok(Some(c));
        }
        let Some(entry) = keys.iter().find_map(|k| {
            self.auths
                .get(k)
                .or_else(|| self.auths.get(&format!("{k}/")))
        }) else {
            return Ok(None);
        };
        if let Some(token) = &entry.identity_token {
            return Ok(Some(Credentials {
                username: "<token>".into(),
                password: token.clone(),
            }));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            }));
        }
        let Some(auth) = &entry.auth else {
            return Ok(None);
        };
        let bad = |message: &str| ConfigError::DockerConfig {
            path: self.path.clone(),
            message: format!("auth for {host}: {message}"),
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad("not base64"))?;
        let text = String::from_utf8(decoded).map_err(|_| bad("not UTF-8"))?;
        let (username, password) = text
            .split_once(':')
            .ok_or_else(|| bad("no ':' separator"))?;
        Ok(Some(Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        }))
    }
}

/// Runs `docker-credential-<helper> get` as docker does (server URL on stdin, JSON out).
fn run_credential_helper(helper: &str, server: &str) -> Result<Option<Credentials>, ConfigError> {
    let fail = |message: String| ConfigError::CredentialHelper {
        helper: helper.to_owned(),
        registry: server.to_owned(),
        message,
    };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Helpers print "credentials not found in native keychain" when they have nothing.
        if stdout.contains("not found") {
            return Ok(None);
        }
        return Err(fail(format!("{}: {}", out.status, stdout.trim())));
    }
    #[derive(Deserialize)]
    struct HelperOutput {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let parsed: HelperOutput = serde_json::from_str(&stdout).map_err(|e| fail(e.to_string()))?;
    Ok(Some(Credentials {
        username: parsed.username,
        password: parsed.secret,
    }))
}

fn opt_platform<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Platform>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .transpose()
}

mod opt_duration {
    use std::time::Duration;

    use serde::Deserialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file_and_rejects_unknown_keys() {
        let cfg = ImagesConfig::parse(
            r#"
            platform = "linux/arm64"
            concurrent_downloads = 4
            [limits]
            max_layer_entries = 10
            [cleanup]
            keep_per_repository = 3
            unused_for = "30days"
            [registries."localhost:5000"]
            insecure = true
            mirrors = ["127.0.0.1:6000"]
            "#,
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(cfg.platform.as_ref().unwrap().to_string(), "linux/arm64/v8");
        assert_eq!(cfg.limits.max_layer_entries, 10);
        assert_eq!(cfg.limits.max_path_bytes, 4096);
        assert_eq!(
            cfg.cleanup.unused_for,
            Some(Duration::from_secs(30 * 86400))
        );
        assert!(cfg.registry("localhost:5000").insecure);
        assert!(!cfg.registry("other").insecure);

        let err = ImagesConfig::parse("[registries.x]\ninsecur = true\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2: unknown field `insecur`"), "{err}");
    }

    #[test]
    fn docker_config_auths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},
                   "localhost:5000":{{"username":"bob","password":"pw"}}}}}}"#
            ),
        )
        .unwrap();
        let cfg = ImagesConfig {
            docker_config: Some(path),
            ..Default::default()
        };
        let hub = cfg.credentials("docker.io").unwrap().unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("alice", "s3cret")
        );
        assert_eq!(
            cfg.credentials("localhost:5000").unwrap().unwrap().username,
            "bob"
        );
        assert!(cfg.credentials("elsewhere").unwrap().is_none());
    }
}
