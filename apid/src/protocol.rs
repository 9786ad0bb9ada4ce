//! The ECS API on the wire: AWS JSON 1.1. Every action is `POST /` with
//! `X-Amz-Target: AmazonEC2ContainerServiceV20141113.<Action>` and
//! `Content-Type: application/x-amz-json-1.1`, signed with SigV4 by an access key apid issued.
//! Every response carries an `x-amzn-RequestId`. This adapter authenticates, parses the target
//! and hands the body to [`Api::call`]; it knows nothing of clusters or tasks. Skiff's own admin
//! actions share the endpoint and keys under a second prefix, `SkiffControlV1.<Action>`, and go
//! to [`control::call`].

use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::ecs::Api;
use crate::error::ApiError;
use crate::{control, keys, sigv4};

/// The AWS JSON 1.1 content type.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// The ECS API's target prefix.
pub const TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";
/// The service name in SigV4 scopes.
pub const SERVICE: &str = "ecs";

/// The operator API's router (one route: AWS JSON puts the action in a header).
pub fn router(api: Api) -> Router {
    Router::new().route("/", post(handle)).with_state(api)
}

/// A request id in the UUID shape AWS uses.
fn request_id() -> String {
    let h = crate::ecs::random_id();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

async fn handle(
    State(api): State<Api>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let id = request_id();
    let out = serve(&api, &method, &uri, &headers, &body).await;
    let action = target(&headers).unwrap_or("?").to_owned();
    let mut resp = match out {
        Ok(v) => ([("content-type", CONTENT_TYPE)], v.to_string()).into_response(),
        Err(e) => {
            tracing::info!(request = %id, action, error = %e, "refused");
            e.into_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-amzn-requestid", v);
    }
    resp
}

fn target(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-amz-target").and_then(|v| v.to_str().ok())
}

async fn serve(
    api: &Api,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<serde_json::Value, ApiError> {
    let caller = authenticate(api, method, uri, headers, body).await?;
    let target = target(headers).unwrap_or("");
    let (ecs, action) = if let Some(action) = target.strip_prefix(TARGET_PREFIX) {
        (true, action)
    } else if let Some(action) = target.strip_prefix(control::TARGET_PREFIX) {
        (false, action)
    } else {
        return Err(ApiError::UnknownOperation(format!(
            "X-Amz-Target must be {TARGET_PREFIX}<Action> or {}<Action>",
            control::TARGET_PREFIX
        )));
    };
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with(CONTENT_TYPE) {
        return Err(ApiError::Serialization(format!(
            "Content-Type must be {CONTENT_TYPE}, not {ct:?}"
        )));
    }
    if ecs {
        api.call(action, body).await
    } else {
        control::call(api, &caller, action, body).await
    }
}

async fn authenticate(
    api: &Api,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, ApiError> {
    let auth = sigv4::parse_authorization(headers)?;
    let secret = keys::secret(api.pool(), &auth.access_key_id)
        .await?
        .ok_or(sigv4::SigV4Error::UnrecognizedClient)?;
    let req = sigv4::Request {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers,
        body,
    };
    sigv4::verify(
        &req,
        &auth,
        &secret,
        SystemTime::now(),
        &api.config().region,
        SERVICE,
    )?;
    Ok(auth.access_key_id)
}
