//! The node channel's listener (`node_listen`): TLS with a server certificate signed by the
//! cluster CA, and client certificates verified by rustls against that CA.
//!
//! One port serves both registration and the channel. `POST /register` is the one route a node
//! reaches without a certificate (it has none yet: it is asking for one), so the verifier allows
//! unauthenticated clients, and every other route answers 401 unless the handshake verified a
//! client certificate. A certificate that *is* presented must verify: one from another CA, an
//! expired one or a revoked one fails the handshake itself, whatever the route. One port keeps
//! the node's configuration to one address behind NAT, as ECS Anywhere's endpoint is one.
//!
//! Revocation is a CRL, signed by the CA, of the serials of deregistered (`INACTIVE`) container
//! instances, checked by rustls in the handshake. Before each handshake the listener reads the
//! revoked serials (one query) and reuses its server configuration unless they changed,
//! so a deregistration takes effect at the next connection without apid's API and the listener
//! sharing memory (they share the database, as several apid replicas will). A connection already
//! open when its node is deregistered stays open until it closes; the long-lived desired-state
//! stream (the next issue) must recheck on deregistration.
//!
//! First contact: the node cannot verify apid's server certificate with a CA it does not have
//! yet. The operator gives the node's install the CA certificate (`skiff-apid ca-cert` prints it) along
//! with the activation, as ECS Anywhere's install is given its endpoint; the node verifies the
//! first connection with it and pins the `caPem` registration returns from then on. apid has no
//! "insecure first contact" mode: a node that skips verification would hand its activation code to
//! whoever answers.
//!
//! Routes: `POST /register`, `POST /v1/sync`, `POST /v1/renew`, `POST /v1/replies` (answers to
//! operators' requests), and `GET /v1/whoami` (the instance id from the verified
//! certificate), which proves the mTLS path end to end.

use std::sync::{Arc, Mutex};

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::json;
use tokio::net::TcpListener;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::activations::ActivationError;
use super::ca::{Ca, CaError};
use super::register::{RegisterError, RegisterRequest, register, renew, retire_older_certs};
use crate::ecs::Api;
use crate::nodes::{NodeError, SyncRequest};

/// Errors of the node channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The CA could not be loaded or made, or a certificate or CRL signed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The revoked serials could not be read.
    #[error("reading revoked serials")]
    Store(#[source] sqlx::Error),
    /// The client verifier could not be built.
    #[error("building the client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// The TLS configuration could not be built.
    #[error("building the TLS configuration")]
    Tls(#[source] rustls::Error),
}

/// The node channel: the CA, the server's certificate and the current TLS configuration.
#[derive(Debug)]
pub struct NodeChannel {
    api: Api,
    ca: Ca,
    provider: Arc<CryptoProvider>,
    server_cert: CertificateDer<'static>,
    server_key: PrivateKeyDer<'static>,
    /// The configuration for a set of revoked serials.
    current: Mutex<Option<(Vec<String>, Arc<ServerConfig>)>>,
}

/// The verified client's container instance id and certificate serial, if the client
/// presented a certificate.
#[derive(Clone, Debug)]
struct Peer(Option<(String, String)>);

/// The CN (the container instance id) and serial of a verified client certificate.
fn instance_of(cert: &CertificateDer<'_>) -> Option<(String, String)> {
    let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    let id = cn.as_str().ok()?.to_owned();
    Some((id, hex::encode(cert.raw_serial())))
}

impl NodeChannel {
    /// The channel of `api`'s apid: loads (or makes) the CA and signs a server certificate for
    /// the configured `node_channel_names`.
    pub async fn new(api: Api) -> Result<Self, ChannelError> {
        let ca = Ca::load_or_create(api.pool()).await?;
        let (server_cert, server_key) = ca.server_cert(&api.config().node_channel_names)?;
        Ok(Self {
            api,
            ca,
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            server_cert,
            server_key,
            current: Mutex::new(None),
        })
    }

    /// The serials of revoked certificates that have not expired yet (an expired one is
    /// refused anyway): deregistered instances' and those replaced by rotation.
    async fn revoked(&self) -> Result<Vec<String>, ChannelError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT serial FROM node_certs WHERE revoked_at IS NOT NULL AND not_after > $1 ORDER BY serial",
        )
        .bind(crate::ecs::now())
        .fetch_all(self.api.pool())
        .await
        .map_err(ChannelError::Store)?;
        Ok(rows.into_iter().map(|(s,)| s).collect())
    }

    /// The TLS configuration for the revoked serials as they are now.
    async fn config(&self) -> Result<Arc<ServerConfig>, ChannelError> {
        let revoked = self.revoked().await?;
        if let Some((seen, cfg)) = &*self.current.lock().expect("not poisoned")
            && *seen == revoked
        {
            return Ok(cfg.clone());
        }
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca.cert_der().clone())
            .map_err(ChannelError::Tls)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .with_crls([self.ca.crl(&revoked)?])
                .allow_unauthenticated()
                .build()
                .map_err(ChannelError::Verifier)?;
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(ChannelError::Tls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.server_cert.clone()], self.server_key.clone_key())
            .map_err(ChannelError::Tls)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        *self.current.lock().expect("not poisoned") = Some((revoked, cfg.clone()));
        Ok(cfg)
    }

    fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/register", post(register_route))
            .route("/v1/whoami", get(whoami))
            .route("/v1/sync", post(sync))
            .route("/v1/renew", post(renew_route))
            .route("/v1/replies", post(reply_route))
            .with_state(self.clone())
    }

    /// Serves node connections on `listener` until dropped. A connection whose handshake fails
    /// (or takes longer than [`crate::tls::HANDSHAKE_TIMEOUT`]) is logged and closed; a failed accept (out
    /// of file descriptors, say) is logged and retried: neither stops the listener.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::convert::Infallible {
        let router = self.router();
        let ch = self.clone();
        let config = move || {
            let ch = ch.clone();
            async move {
                ch.config()
                    .await
                    .inspect_err(|e| {
                        tracing::error!(error = %format!("{e:#}"), "node channel configuration");
                    })
                    .ok()
            }
        };
        let route = move |cert: Option<CertificateDer<'static>>| {
            let (ch, router) = (self.clone(), router.clone());
            async move {
                let peer = Peer(cert.as_ref().and_then(instance_of));
                // A node's first connection with a renewed certificate ends the rotation.
                if let Some((id, serial)) = &peer.0
                    && let Err(e) = retire_older_certs(ch.api.pool(), id, serial).await
                {
                    tracing::warn!(instance = %id, error = %e, "retiring older certificates");
                }
                router.layer(Extension(peer))
            }
        };
        crate::tls::serve(listener, "node channel", config, route).await
    }
}

fn refusal(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

async fn register_route(State(ch): State<Arc<NodeChannel>>, body: axum::body::Bytes) -> Response {
    let r: RegisterRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return refusal(StatusCode::BAD_REQUEST, format!("the request: {e}")),
    };
    match register(&ch.api, &ch.ca, r).await {
        Ok(done) => {
            tracing::info!(instance = %done.container_instance_id, "node registered");
            Json(done).into_response()
        }
        Err(e) => {
            let status = match &e {
                RegisterError::Activation(ActivationError::Store(_))
                | RegisterError::Activation(
                    ActivationError::ClusterNotFound { .. } | ActivationError::Count { .. },
                )
                | RegisterError::Internal { .. } => {
                    tracing::error!(error = %format!("{e:#}"), "registration failed");
                    return refusal(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "an internal error occurred".into(),
                    );
                }
                RegisterError::Activation(_) => StatusCode::FORBIDDEN,
                RegisterError::Csr(_) | RegisterError::Invalid(_) => StatusCode::BAD_REQUEST,
                RegisterError::ClusterGone { .. } => StatusCode::CONFLICT,
            };
            tracing::info!(error = %e, "registration refused");
            refusal(status, e.to_string())
        }
    }
}

/// The answer to a node route called without a client certificate.
fn no_certificate() -> Response {
    refusal(
        StatusCode::UNAUTHORIZED,
        "this route needs the node's client certificate".into(),
    )
}

/// The verified instance and the parsed body of a call to a node route, or the refusal to
/// answer with (no client certificate, or a body that is not the route's request).
fn node_request<T: serde::de::DeserializeOwned>(
    peer: Peer,
    body: &[u8],
) -> Result<(String, T), Box<Response>> {
    let Some((id, _)) = peer.0 else {
        return Err(Box::new(no_certificate()));
    };
    serde_json::from_slice(body).map(|r| (id, r)).map_err(|e| {
        Box::new(refusal(
            StatusCode::BAD_REQUEST,
            format!("the request: {e}"),
        ))
    })
}

async fn whoami(Extension(peer): Extension<Peer>) -> Response {
    match peer.0 {
        Some((id, _)) => Json(json!({ "containerInstanceId": id })).into_response(),
        None => no_certificate(),
    }
}

async fn sync(
    State(ch): State<Arc<NodeChannel>>,
    Extension(peer): Extension<Peer>,
    body: axum::body::Bytes,
) -> Response {
    let (id, r): (String, SyncRequest) = match node_request(peer, &body) {
        Ok(done) => done,
        Err(refused) => return *refused,
    };
    match ch.api.sync(&id, r).await {
        Ok(done) => Json(done).into_response(),
        Err(e @ NodeError::Deregistered { .. }) => refusal(StatusCode::FORBIDDEN, e.to_string()),
        Err(e @ NodeError::Invalid(_)) => refusal(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ NodeError::Store { .. }) => {
            tracing::error!(error = %format!("{e:#}"), "node sync failed");
            refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store is unavailable; retry".into(),
            )
        }
    }
}

/// `POST /v1/replies`: a node's answer to an operator's request.
async fn reply_route(
    State(ch): State<Arc<NodeChannel>>,
    Extension(peer): Extension<Peer>,
    body: axum::body::Bytes,
) -> Response {
    let (id, r): (String, crate::nodes::NodeReply) = match node_request(peer, &body) {
        Ok(done) => done,
        Err(refused) => return *refused,
    };
    match ch.api.reply(&id, &r).await {
        Ok(()) => Json(json!({})).into_response(),
        Err(e @ NodeError::Invalid(_)) => refusal(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "recording a node's reply");
            refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store is unavailable; retry".into(),
            )
        }
    }
}

/// `POST /v1/renew {"csr": PEM}`: certificate rotation.
async fn renew_route(
    State(ch): State<Arc<NodeChannel>>,
    Extension(peer): Extension<Peer>,
    body: axum::body::Bytes,
) -> Response {
    let (id, r): (String, skiff_runtime::protocol::RenewRequest) = match node_request(peer, &body) {
        Ok(done) => done,
        Err(refused) => return *refused,
    };
    match renew(&ch.api, &ch.ca, &id, &r.csr).await {
        Ok(done) => {
            tracing::info!(instance = %id, "node certificate renewed");
            Json(done).into_response()
        }
        Err(e @ RegisterError::Csr(_)) => refusal(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "renewal failed");
            refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "an internal error occurred".into(),
            )
        }
    }
}

#[cfg(test)]
#[path = "channel_tests.rs"]
mod tests;
