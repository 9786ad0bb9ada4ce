//! apid's TLS listeners: the node channel (mTLS, its configuration rebuilt when revocations
//! change) and, when configured, the operator API. One accept loop serves both: each
//! connection gets its configuration from `config`, completes its handshake within
//! [`HANDSHAKE_TIMEOUT`], and is served HTTP/1.1 by the router `route` makes from the client's
//! verified certificate (if any). A failed handshake or accept is logged and never stops the
//! listener.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Errors of loading a listener's certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate chain or key could not be read or parsed.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the pair (a key that does not match the certificate, say).
    #[error("the certificate {certificate} and key {key}: {source}")]
    Config {
        /// The certificate file.
        certificate: String,
        /// The key file.
        key: String,
        /// Why.
        #[source]
        source: rustls::Error,
    },
}

/// A server configuration (HTTP/1.1, no client certificates) from PEM files: the certificate
/// chain, leaf first, and its private key.
pub fn server_config(certificate: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let pem = |path: &Path, message: String| TlsError::Pem {
        path: path.display().to_string(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .map_err(|e| pem(certificate, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem(certificate, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem(certificate, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key_der))
        .map_err(|source| TlsError::Config {
            certificate: certificate.display().to_string(),
            key: key.display().to_string(),
            source,
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves `listener` until dropped (see the module documentation). `what` names the listener
/// in logs.
pub async fn serve<C, CF, R, RF>(
    listener: TcpListener,
    what: &'static str,
    config: C,
    route: R,
) -> std::convert::Infallible
where
    C: Fn() -> CF + Clone + Send + Sync + 'static,
    CF: Future<Output = Option<Arc<ServerConfig>>> + Send,
    R: Fn(Option<CertificateDer<'static>>) -> RF + Clone + Send + Sync + 'static,
    RF: Future<Output = Router> + Send,
{
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, listener = what, "accepting a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (config, route) = (config.clone(), route.clone());
        tokio::spawn(async move {
            let Some(cfg) = config().await else {
                return;
            };
            connection(tcp, from, what, cfg, route).await;
        });
    }
}

async fn connection<R, RF>(
    tcp: tokio::net::TcpStream,
    from: SocketAddr,
    what: &'static str,
    cfg: Arc<ServerConfig>,
    route: R,
) where
    R: Fn(Option<CertificateDer<'static>>) -> RF,
    RF: Future<Output = Router>,
{
    let handshake = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(%from, error = %e, listener = what, "handshake refused");
            return;
        }
        Err(_) => {
            tracing::info!(%from, listener = what, "handshake timed out");
            return;
        }
    };
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned());
    let svc = TowerToHyperService::new(route(peer).await);
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), svc)
        .await
    {
        tracing::debug!(%from, error = %e, listener = what, "connection");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named_and_a_mismatched_key_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let e = server_config(&p("none.pem"), &p("none.key")).unwrap_err();
        assert!(e.to_string().contains("none.pem"), "{e}");
        let one = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let two = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        std::fs::write(p("cert.pem"), one.cert.pem()).unwrap();
        std::fs::write(p("key.pem"), one.signing_key.serialize_pem()).unwrap();
        std::fs::write(p("other.key"), two.signing_key.serialize_pem()).unwrap();
        std::fs::write(p("empty.pem"), "").unwrap();
        assert!(server_config(&p("cert.pem"), &p("key.pem")).is_ok());
        let e = server_config(&p("empty.pem"), &p("key.pem")).unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
        let e = server_config(&p("cert.pem"), &p("other.key")).unwrap_err();
        assert!(e.to_string().contains("other.key"), "{e}");
    }
}
