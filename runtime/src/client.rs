//! A client of skiffd's local API ([`crate::api`]), for the `skiff` CLI and tests: one HTTP/1.1
//! connection per call over the unix socket.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

/// Errors of API calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// skiffd is not listening.
    #[error("connecting to skiffd at {path} (is skiffd running?)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("talking to skiffd: {0}")]
    Http(#[from] hyper::Error),
    /// skiffd refused the request; its message.
    #[error("{message}")]
    Refused {
        /// The status.
        status: StatusCode,
        /// skiffd's error message.
        message: String,
    },
    /// The answer was not what the API defines.
    #[error("unexpected answer from skiffd: {0}")]
    Decode(String),
}

/// The API at one socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the skiffd listening on `socket`.
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "skiffd")
            .body(Full::new(body))
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let resp = sender.send_request(req).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{status}: {}", String::from_utf8_lossy(&body)));
        Err(ClientError::Refused { status, message })
    }

    /// Calls `method path` with `body` and decodes the JSON answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<T, ClientError> {
        let resp = self.send(method, path, body).await?;
        let body = resp.into_body().collect().await?.to_bytes();
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Calls `GET path` and hands each line of the streamed answer to `f`.
    pub async fn lines(&self, path: &str, mut f: impl FnMut(&[u8])) -> Result<(), ClientError> {
        let mut body = self
            .send(Method::GET, path, Bytes::new())
            .await?
            .into_body();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                pending.extend_from_slice(&data);
                while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                    f(&pending[..nl]);
                    pending.drain(..=nl);
                }
            }
        }
        Ok(())
    }
}
