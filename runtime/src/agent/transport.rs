//! One HTTP/1.1 connection over TLS to apid's node channel, opened by the node (edge boxes sit
//! behind NAT) and kept alive between calls.
//!
//! A call that is abandoned half-way (the agent cancels a long poll when it has something to
//! report) leaves the connection in an unknown state, so the connection is taken out before a
//! call and put back only after a whole answer was read: a cancelled call just means the next
//! one dials again. That is safe for the protocol: what apid applied from a lost call is
//! acknowledged again by sequence number, never applied twice.
//!
//! Errors are classified once, here: a refused or revoked certificate (apid deregistered the
//! node) is [`TransportError::Revoked`], different from an unreachable apid, because the agent
//! gives up on the first and keeps retrying the second.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_rustls::TlsConnector;

use super::identity::Endpoint;

/// How long dialling (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of a call to apid.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// apid could not be reached (connection refused, no route, timeout).
    #[error("connecting to {endpoint}: {why}")]
    Connect {
        /// The node channel.
        endpoint: String,
        /// Why.
        why: String,
    },
    /// apid refused the node's certificate: revoked (deregistered), expired or unknown.
    #[error("{endpoint} refused this node's certificate ({alert}): the node is deregistered")]
    Revoked {
        /// The node channel.
        endpoint: String,
        /// The TLS alert.
        alert: String,
    },
    /// The connection failed during the call.
    #[error("calling {endpoint}{path}: {why}")]
    Call {
        /// The node channel.
        endpoint: String,
        /// The route.
        path: String,
        /// Why.
        why: String,
    },
    /// apid answered with an error status.
    #[error("{endpoint}{path} answered {status}: {message}")]
    Status {
        /// The node channel.
        endpoint: String,
        /// The route.
        path: String,
        /// The HTTP status.
        status: u16,
        /// apid's message.
        message: String,
    },
}

impl TransportError {
    /// Whether apid said the node is not (or no longer) one of its nodes.
    pub fn deregistered(&self) -> bool {
        matches!(
            self,
            Self::Revoked { .. } | Self::Status { status: 403, .. }
        )
    }
}

/// The TLS alert in `e`'s chain that says apid refused the client certificate, if any.
fn refused_certificate(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::AlertDescription as A;
    let mut cur = Some(e);
    while let Some(err) = cur {
        let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::AlertReceived(
            alert @ (A::CertificateRevoked
            | A::CertificateExpired
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown),
        )) = tls
        {
            return Some(format!("{alert:?}"));
        }
        cur = err.source();
    }
    None
}

fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(&format!(": {err}"));
        cur = err.source();
    }
    s
}

/// A kept-alive connection to apid's node channel.
pub struct Channel {
    endpoint: Endpoint,
    tls: Arc<ClientConfig>,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("endpoint", &self.endpoint)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl Channel {
    /// A channel to `endpoint` with `tls` (not connected until the first call).
    pub fn new(endpoint: Endpoint, tls: Arc<ClientConfig>) -> Self {
        Self {
            endpoint,
            tls,
            conn: None,
        }
    }

    /// Another channel to the same apid with the same credentials, not connected yet.
    pub fn sibling(&self) -> Self {
        Self::new(self.endpoint.clone(), self.tls.clone())
    }

    /// Uses `tls` from the next connection on (a renewed certificate), closing this one.
    pub fn set_tls(&mut self, tls: Arc<ClientConfig>) {
        self.tls = tls;
        self.conn = None;
    }

    async fn dial(&self) -> Result<SendRequest<Full<Bytes>>, TransportError> {
        let endpoint = self.endpoint.to_string();
        let fail = |why: String| TransportError::Connect {
            endpoint: endpoint.clone(),
            why,
        };
        let connect = async {
            let tcp =
                tokio::net::TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
                    .await
                    .map_err(|e| fail(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let tls = TlsConnector::from(self.tls.clone())
                .connect(self.endpoint.server_name(), tcp)
                .await
                .map_err(|e| match refused_certificate(&e) {
                    Some(alert) => TransportError::Revoked {
                        endpoint: endpoint.clone(),
                        alert,
                    },
                    None => fail(format!("TLS: {}", describe(&e))),
                })?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| fail(describe(&e)))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "node channel connection ended");
                }
            });
            Ok(send)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| fail(format!("no answer within {CONNECT_TIMEOUT:?}")))?
    }

    /// `POST path` with `body` as JSON; the answer's JSON. `timeout` bounds the whole call.
    pub async fn post<T: Serialize, R: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &T,
        timeout: Duration,
    ) -> Result<R, TransportError> {
        let endpoint = self.endpoint.to_string();
        let call_err = |why: String| TransportError::Call {
            endpoint: endpoint.clone(),
            path: path.to_owned(),
            why,
        };
        let mut send = match self.conn.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.dial().await?,
        };
        let req = hyper::Request::post(path)
            .header("host", self.endpoint.host.as_str())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                serde_json::to_vec(body).expect("requests serialize"),
            )))
            .expect("static request parts");
        let call = async {
            send.ready().await?;
            let resp = send.send_request(req).await?;
            let status = resp.status();
            let data = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, data))
        };
        let (status, data) = match tokio::time::timeout(timeout, call).await {
            Err(_) => return Err(call_err(format!("no answer within {timeout:?}"))),
            Ok(Err(e)) => {
                return Err(match refused_certificate(&e) {
                    Some(alert) => TransportError::Revoked { endpoint, alert },
                    None => call_err(describe(&e)),
                });
            }
            Ok(Ok(done)) => done,
        };
        // A whole answer was read: the connection can carry the next call.
        self.conn = Some(send);
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&data)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&data).into_owned());
            return Err(TransportError::Status {
                endpoint,
                path: path.to_owned(),
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&data).map_err(|e| call_err(format!("the answer: {e}")))
    }
}
