//! Registry access over the OCI distribution API, on top of `oci-client`.
//!
//! `oci-client` does the HTTP: the `/v2/` probe, the `WWW-Authenticate` bearer challenge and
//! token cache, basic auth, TLS with extra roots, `Range` requests. What it does not do, and this
//! module adds (docs/design.md says why we stayed on the library):
//! - per-registry settings: one client per host, each with its own CAs and HTTP/HTTPS choice;
//! - credentials from Skiff's config and docker's `config.json`, and an explicit authentication
//!   step so that a wrong password is reported as such (the library swallows that error and
//!   retries anonymously);
//! - mirrors tried first, in order, with fallback to the registry itself;
//! - retries with exponential backoff and jitter for transient failures (connection errors,
//!   5xx, 429), and resumption of interrupted downloads from the last byte on disk;
//! - verification of every byte against the descriptor by the store's ingest (so the library's
//!   own hashing is skipped: blobs are always fetched as `Range: bytes=N-`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use oci_client::client::{
    BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol,
};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use tokio::sync::OnceCell;

use crate::config::{ConfigError, ImagesConfig};
use crate::digest::Digest;
use crate::progress::{Event, Progress};
use crate::store::{Ingest, StoreError};

/// Media types we accept for manifests, most preferred first.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Errors talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Every endpoint failed; the last error of each is listed.
    #[error("{what} of {reference}: {}", failures.join("; "))]
    Failed {
        /// What was fetched ("manifest", "blob sha256:...").
        what: String,
        /// The image reference.
        reference: String,
        /// `host: error` per endpoint tried.
        failures: Vec<String>,
    },
    /// The registry refused the credentials.
    #[error("registry {host} refused the credentials for {reference}: {message}")]
    Auth {
        /// The host.
        host: String,
        /// The image.
        reference: String,
        /// What it said.
        message: String,
    },
    /// A configured CA file could not be read.
    #[error("cannot read CA file {path} for registry {host}")]
    Ca {
        /// The host.
        host: String,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Configuration or credential lookup failed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Writing into the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Endpoint {
    host: String,
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
    authed: OnceCell<()>,
}

/// One image repository on a registry and its mirrors.
pub struct RegistrySource {
    reference: Reference,
    endpoints: Vec<Endpoint>,
    preferred: AtomicUsize,
    attempts: u32,
    max_document: u64,
}

impl std::fmt::Debug for RegistrySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrySource")
            .field("reference", &self.reference.whole())
            .field(
                "endpoints",
                &self.endpoints.iter().map(|e| &e.host).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Whether an error is worth retrying on the same endpoint.
fn transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, oci_client::errors::OciErrorCode::Toomanyrequests)),
        _ => false,
    }
}

fn describe(e: &OciDistributionError) -> String {
    // reqwest's Display hides the cause ("error sending request"): show the chain.
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

impl RegistrySource {
    /// Prepares access to `reference`'s repository with the settings of `config`.
    pub fn new(config: &ImagesConfig, reference: &Reference) -> Result<Self, RegistryError> {
        let origin = reference.registry().to_owned();
        let mut hosts = config.registry(&origin).mirrors;
        hosts.push(origin.clone());
        let mut endpoints = Vec::new();
        for host in hosts {
            let settings = config.registry(&host);
            let mut extra = Vec::new();
            for path in &settings.ca {
                let data = std::fs::read(path).map_err(|source| RegistryError::Ca {
                    host: host.clone(),
                    path: path.clone(),
                    source,
                })?;
                extra.push(Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                });
            }
            let mut r = reference.clone();
            if host != origin {
                r.set_mirror_registry(host.clone());
            }
            let wire_host = r.resolve_registry().to_owned();
            let client = Client::new(ClientConfig {
                protocol: if settings.insecure {
                    ClientProtocol::HttpsExcept(vec![wire_host])
                } else {
                    ClientProtocol::Https
                },
                extra_root_certificates: extra,
                connect_timeout: Some(Duration::from_secs(10)),
                read_timeout: Some(Duration::from_secs(60)),
                platform_resolver: None,
                user_agent: concat!("skiff/", env!("CARGO_PKG_VERSION")),
                ..Default::default()
            });
            let auth = match config.credentials(&host)? {
                Some(c) => RegistryAuth::Basic(c.username, c.password),
                None => RegistryAuth::Anonymous,
            };
            endpoints.push(Endpoint {
                host,
                client,
                reference: r,
                auth,
                authed: OnceCell::new(),
            });
        }
        Ok(Self {
            reference: reference.clone(),
            endpoints,
            preferred: AtomicUsize::new(0),
            attempts: config.attempts.max(1),
            max_document: config.limits.max_document_bytes,
        })
    }

    /// Endpoints in the order to try: the last one that worked, then the configured order.
    fn order(&self) -> Vec<usize> {
        let first = self.preferred.load(Ordering::Relaxed);
        std::iter::once(first)
            .chain((0..self.endpoints.len()).filter(|i| *i != first))
            .collect()
    }

    async fn authenticate(&self, ep: &Endpoint) -> Result<(), RegistryError> {
        ep.authed
            .get_or_try_init(|| async {
                match ep.client.auth(&ep.reference, &ep.auth, RegistryOperation::Pull).await {
                    Ok(_) => Ok(()),
                    Err(OciDistributionError::AuthenticationFailure(message)) => Err(RegistryError::Auth {
                        host: ep.host.clone(),
                        reference: self.reference.whole(),
                        message: message.trim().chars().take(300).collect(),
                    }),
                    // Connection trouble: the request itself will report it (and may retry).
                    Err(e) => {
                        tracing::debug!(host = %ep.host, error = %describe(&e), "auth probe failed");
                        Ok(())
                    }
                }
            })
            .await
            .map(|_| ())
    }

    /// Runs `op` against the endpoints in rounds: each round tries every endpoint still in play
    /// once, in order (so a dead mirror costs one attempt, not a backoff series, before the next
    /// host is asked); an endpoint that answered with a permanent error leaves play; between
    /// rounds the pause grows. After `attempts` rounds, every endpoint's last error is reported.
    async fn with_endpoints<T, F, Fut>(
        &self,
        what: &str,
        progress: &Progress,
        mut op: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<T, AttemptError>>,
    {
        let mut last: Vec<Option<String>> = vec![None; self.endpoints.len()];
        let mut in_play = self.order();
        for round in 1..=self.attempts {
            let mut still = Vec::new();
            for &i in &in_play {
                let ep = &self.endpoints[i];
                if let Err(e) = self.authenticate(ep).await {
                    last[i] = Some(e.to_string());
                    continue;
                }
                match op(i).await {
                    Ok(v) => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return Ok(v);
                    }
                    Err(AttemptError::Fatal(e)) => return Err(e),
                    Err(AttemptError::NextEndpoint(msg)) => last[i] = Some(msg),
                    Err(AttemptError::Retry(msg)) => {
                        last[i] = Some(msg);
                        still.push(i);
                    }
                }
            }
            in_play = still;
            if in_play.is_empty() || round == self.attempts {
                break;
            }
            let delay = backoff(round);
            for &i in &in_play {
                progress.emit(Event::Retrying {
                    what: what.to_owned(),
                    host: self.endpoints[i].host.clone(),
                    attempt: round,
                    error: last[i].clone().unwrap_or_default(),
                    delay,
                });
            }
            tokio::time::sleep(delay).await;
        }
        Err(RegistryError::Failed {
            what: what.to_owned(),
            reference: self.reference.whole(),
            failures: self
                .endpoints
                .iter()
                .zip(last)
                .filter_map(|(ep, msg)| msg.map(|m| format!("{}: {m}", ep.host)))
                .collect(),
        })
    }

    /// Fetches a manifest by the reference's tag or digest, or by `digest` when given.
    /// Returns its bytes and digest (verified when the digest was asked for).
    pub async fn manifest(
        &self,
        digest: Option<&Digest>,
        progress: &Progress,
    ) -> Result<(Bytes, Digest), RegistryError> {
        let what = match digest {
            Some(d) => format!("manifest {d}"),
            None => "manifest".to_owned(),
        };
        let max = self.max_document;
        self.with_endpoints(&what, progress, |i| {
            let ep = &self.endpoints[i];
            let r = match digest {
                Some(d) => ep.reference.clone_with_digest(d.to_string()),
                None => ep.reference.clone(),
            };
            async move {
                let (body, _) = ep
                    .client
                    .pull_manifest_raw(&r, &ep.auth, MANIFEST_TYPES)
                    .await
                    .map_err(AttemptError::from_oci)?;
                if body.len() as u64 > max {
                    return Err(AttemptError::NextEndpoint(format!(
                        "manifest of {} bytes exceeds the {max}-byte limit",
                        body.len()
                    )));
                }
                let actual = Digest::of(&body);
                let want = digest
                    .cloned()
                    .or_else(|| r.digest().and_then(|d| d.parse().ok()));
                if let Some(want) = want.filter(|w| *w != actual) {
                    return Err(AttemptError::NextEndpoint(format!(
                        "manifest content is {actual}, not the requested {want}"
                    )));
                }
                Ok((body, actual))
            }
        })
        .await
    }

    /// Downloads a blob into `ingest`, resuming from what it already holds.
    pub async fn blob(
        &self,
        ingest: &mut Ingest,
        media_type: &str,
        progress: &Progress,
    ) -> Result<(), RegistryError> {
        let digest = ingest.digest().clone();
        let what = format!("blob {digest}");
        let desc = oci_client::manifest::OciDescriptor {
            media_type: media_type.to_owned(),
            digest: digest.to_string(),
            size: ingest.size() as i64,
            ..Default::default()
        };
        // The closure needs the ingest mutably on every attempt; a RefCell-free way is a
        // single-owner cell handed back after each attempt.
        let cell = tokio::sync::Mutex::new(ingest);
        self.with_endpoints(&what, progress, |i| {
            let ep = &self.endpoints[i];
            let desc = desc.clone();
            let cell = &cell;
            let digest = &digest;
            async move {
                let mut ingest = cell.lock().await;
                let offset = ingest.offset();
                if offset == ingest.size() {
                    return Ok(());
                }
                let resp = ep
                    .client
                    .pull_blob_stream_partial(&ep.reference, &desc, offset, None)
                    .await
                    .map_err(AttemptError::from_oci)?;
                let mut stream = match resp {
                    BlobResponse::Partial(s) => s,
                    BlobResponse::Full(s) => {
                        // The server ignored Range: start over.
                        ingest.reset().map_err(|e| AttemptError::Fatal(e.into()))?;
                        s
                    }
                };
                let total = ingest.size();
                let mut last = 0u64;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| {
                        AttemptError::Retry(format!(
                            "download interrupted at byte {}: {e}",
                            ingest.offset()
                        ))
                    })?;
                    ingest
                        .write(&chunk)
                        .map_err(|e| AttemptError::Fatal(e.into()))?;
                    let done = ingest.offset();
                    if done - last >= 1 << 20 || done == total {
                        last = done;
                        progress.emit(Event::LayerProgress {
                            digest: digest.clone(),
                            done,
                            total,
                        });
                    }
                }
                if ingest.offset() < total {
                    return Err(AttemptError::Retry(format!(
                        "connection closed at byte {} of {total}",
                        ingest.offset()
                    )));
                }
                Ok(())
            }
        })
        .await
    }
}

/// How one attempt failed.
enum AttemptError {
    /// Try the same endpoint again after a pause.
    Retry(String),
    /// This endpoint cannot serve it; try the next.
    NextEndpoint(String),
    /// Stop: retrying cannot help (local I/O, for instance).
    Fatal(RegistryError),
}

impl AttemptError {
    fn from_oci(e: OciDistributionError) -> Self {
        if transient(&e) {
            Self::Retry(describe(&e))
        } else {
            Self::NextEndpoint(describe(&e))
        }
    }
}

/// 200 ms doubling to 5 s, with up to 50% jitter so that many nodes do not retry in step.
fn backoff(attempt: u32) -> Duration {
    let base =
        Duration::from_millis(200).saturating_mul(1 << attempt.clamp(1, 6).saturating_sub(1));
    let base = base.min(Duration::from_secs(5));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base + base.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(
            backoff(1) >= Duration::from_millis(200) && backoff(1) < Duration::from_millis(301)
        );
        assert!(
            backoff(10) >= Duration::from_secs(5) && backoff(10) <= Duration::from_millis(7500)
        );
    }
}
