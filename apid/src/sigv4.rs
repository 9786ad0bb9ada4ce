//! AWS Signature Version 4 verification (stub: the interface; the implementation lands with its
//! own commit).

use std::time::SystemTime;

use axum::http::HeaderMap;

/// The parts of a request that SigV4 covers.
#[derive(Debug)]
pub struct Request<'a> {
    /// `POST`.
    pub method: &'a str,
    /// The URI path, as received (`/`).
    pub path: &'a str,
    /// The raw query string (empty for AWS JSON).
    pub query: &'a str,
    /// All headers.
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
}

/// A parsed `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id.
    pub access_key_id: String,
    /// The scope's date (`YYYYMMDD`).
    pub date: String,
    /// The scope's region.
    pub region: String,
    /// The scope's service.
    pub service: String,
    /// SignedHeaders, lowercase, in order.
    pub signed_headers: Vec<String>,
    /// The hex signature.
    pub signature: String,
}

/// Why a request's signature was refused; each is one of the exception names AWS uses.
#[derive(Debug, thiserror::Error)]
pub enum SigV4Error {
    /// No Authorization header.
    #[error("Missing Authentication Token")]
    MissingAuthenticationToken,
    /// The header or a required part is malformed.
    #[error("{0}")]
    IncompleteSignature(String),
    /// The access key is unknown or revoked.
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,
    /// Scope, time or signature wrong.
    #[error("{0}")]
    InvalidSignature(String),
}

impl SigV4Error {
    /// The `__type` AWS returns for it.
    pub fn aws_type(&self) -> &'static str {
        match self {
            Self::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            Self::IncompleteSignature(_) => "IncompleteSignatureException",
            Self::UnrecognizedClient => "UnrecognizedClientException",
            Self::InvalidSignature(_) => "InvalidSignatureException",
        }
    }
}

/// Parses the Authorization header.
pub fn parse_authorization(_headers: &HeaderMap) -> Result<Authorization, SigV4Error> {
    Err(SigV4Error::MissingAuthenticationToken)
}

/// Verifies `req` signed as `auth` says with `secret`, at `now`, for `region` and `service`.
pub fn verify(
    _req: &Request<'_>,
    _auth: &Authorization,
    _secret: &str,
    _now: SystemTime,
    _region: &str,
    _service: &str,
) -> Result<(), SigV4Error> {
    Err(SigV4Error::InvalidSignature("not implemented".into()))
}
