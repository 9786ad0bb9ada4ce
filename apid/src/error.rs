//! The ECS API's errors, as AWS JSON 1.1 returns them: a 4xx or 5xx status and
//! `{"__type": "<Exception>", "message": "..."}`. Every failure of apid becomes one of these in
//! one place ([`ApiError`]'s `IntoResponse`); internal detail is logged, never returned.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::sigv4::SigV4Error;

/// An error of the ECS API, named as ECS names it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request the action refuses (`ClientException`: bad task definition, missing resource
    /// that ECS reports this way).
    #[error("{0}")]
    Client(String),
    /// A parameter is invalid (`InvalidParameterException`).
    #[error("{0}")]
    InvalidParameter(String),
    /// The cluster does not exist (`ClusterNotFoundException`).
    #[error("Cluster not found.")]
    ClusterNotFound,
    /// The service does not exist (`ServiceNotFoundException`).
    #[error("Service not found.")]
    ServiceNotFound,
    /// The service is being deleted or deleted (`ServiceNotActiveException`).
    #[error("Service was not ACTIVE.")]
    ServiceNotActive,
    /// A resource a Skiff control action names does not exist (`ResourceNotFoundException`); the
    /// message names it.
    #[error("{0}")]
    NotFound(String),
    /// The body is not the action's JSON (`SerializationException`).
    #[error("{0}")]
    Serialization(String),
    /// `X-Amz-Target` names no action of the service (`UnknownOperationException`).
    #[error("{0}")]
    UnknownOperation(String),
    /// Authentication failed.
    #[error(transparent)]
    Auth(#[from] SigV4Error),
    /// apid failed (`ServerException`); the detail is logged.
    #[error("server error")]
    Server(String),
}

impl ApiError {
    /// The `__type` and status.
    fn kind(&self) -> (&'static str, StatusCode) {
        match self {
            Self::Client(_) => ("ClientException", StatusCode::BAD_REQUEST),
            Self::InvalidParameter(_) => ("InvalidParameterException", StatusCode::BAD_REQUEST),
            Self::ClusterNotFound => ("ClusterNotFoundException", StatusCode::BAD_REQUEST),
            Self::ServiceNotFound => ("ServiceNotFoundException", StatusCode::BAD_REQUEST),
            Self::ServiceNotActive => ("ServiceNotActiveException", StatusCode::BAD_REQUEST),
            Self::NotFound(_) => ("ResourceNotFoundException", StatusCode::BAD_REQUEST),
            Self::Serialization(_) => ("SerializationException", StatusCode::BAD_REQUEST),
            Self::UnknownOperation(_) => ("UnknownOperationException", StatusCode::BAD_REQUEST),
            Self::Auth(e) => (
                e.aws_type(),
                match e {
                    SigV4Error::MissingAuthenticationToken | SigV4Error::IncompleteSignature(_) => {
                        StatusCode::BAD_REQUEST
                    }
                    SigV4Error::UnrecognizedClient | SigV4Error::InvalidSignature(_) => {
                        StatusCode::FORBIDDEN
                    }
                },
            ),
            Self::Server(_) => ("ServerException", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::Server(format!("database: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (kind, status) = self.kind();
        let message = match &self {
            Self::Server(detail) => {
                tracing::error!(error = %detail, "request failed");
                "An internal error occurred.".to_owned()
            }
            other => other.to_string(),
        };
        let body = serde_json::json!({ "__type": kind, "message": message });
        (
            status,
            [("content-type", crate::protocol::CONTENT_TYPE)],
            body.to_string(),
        )
            .into_response()
    }
}
