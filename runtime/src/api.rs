//! skiffd's local API: HTTP/1.1 with JSON bodies on a root-only unix socket, an adapter over
//! [`Daemon`]. The `skiff` CLI is its client ([`crate::client`]).
//!
//! | method and path                          | does                                          |
//! |------------------------------------------|-----------------------------------------------|
//! | `POST /v1/tasks[?wait=running]`          | run a task; body: an ECS task definition      |
//! | `GET /v1/tasks`                          | every task                                    |
//! | `GET /v1/tasks/{id}[?wait=stopped]`      | one task (id or unique prefix)                |
//! | `POST /v1/tasks/{id}/stop[?wait=stopped]`| stop it                                       |
//! | `DELETE /v1/tasks/{id}`                  | forget a stopped task                         |
//! | `GET /v1/tasks/{id}/logs?container=&tail=&follow=` | json-file lines, NDJSON, streamed   |
//! | `GET /v1/tasks/{id}/containers/{name}/exec` | where to exec (the CLI runs the shim)      |
//! | `GET /v1/tasks/{id}/stats`               | cpu, memory, pids of the task and containers  |
//!
//! [`serve_metrics`] serves `GET /metrics` (Prometheus text) on a loopback TCP address, when the
//! node config asks for it: nothing listens on TCP by default.
//!
//! Errors are `{"error": "..."}` with 400 (bad input), 404 (no such thing), 409 (wrong state).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::net::UnixListener;

use crate::daemon::{Daemon, DaemonError};
use crate::lifecycle::{StopCode, TaskStatus};
use crate::logs::LogLine;
use crate::record::TaskRecord;

/// Errors of serving the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be bound.
    #[error("binding {path}: {source}")]
    Bind {
        /// The socket path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving the API: {0}")]
    Serve(#[source] std::io::Error),
}

impl IntoResponse for DaemonError {
    fn into_response(self) -> Response {
        let status = match &self {
            DaemonError::InvalidTaskDefinition(_)
            | DaemonError::Ambiguous(_)
            | DaemonError::Unsupported(_) => StatusCode::BAD_REQUEST,
            DaemonError::NoSuchTask(_) | DaemonError::NoSuchContainer { .. } => {
                StatusCode::NOT_FOUND
            }
            DaemonError::NotRunning { .. }
            | DaemonError::NotStopped(_)
            | DaemonError::Exists(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut msg = self.to_string();
        let mut src = std::error::Error::source(&self);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        (status, axum::Json(serde_json::json!({ "error": msg }))).into_response()
    }
}

type ApiResult<T> = Result<axum::Json<T>, DaemonError>;

/// The router over `daemon`.
pub fn router(daemon: Daemon) -> Router {
    Router::new()
        .route("/v1/tasks", post(run_task).get(list))
        .route("/v1/tasks/{id}", get(describe).delete(remove))
        .route("/v1/tasks/{id}/stop", post(stop))
        .route("/v1/tasks/{id}/logs", get(logs))
        .route("/v1/tasks/{id}/containers/{name}/exec", get(exec_target))
        .route("/v1/tasks/{id}/stats", get(stats))
        .with_state(daemon)
}

/// Serves the API on `socket` (replacing a stale one), readable by root only.
pub async fn serve(daemon: Daemon, socket: &Path) -> Result<(), ApiError> {
    let bind = |source| ApiError::Bind {
        path: socket.to_owned(),
        source,
    };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(bind)?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(bind(e)),
        _ => {}
    }
    let listener = UnixListener::bind(socket).map_err(bind)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(bind)?;
    axum::serve(listener, router(daemon))
        .await
        .map_err(ApiError::Serve)
}

#[derive(Deserialize)]
struct WaitQuery {
    wait: Option<String>,
}

async fn run_task(
    State(d): State<Daemon>,
    Query(q): Query<WaitQuery>,
    body: Bytes,
) -> ApiResult<TaskRecord> {
    let text = String::from_utf8_lossy(&body);
    let rec = d.run_task(&text)?;
    if q.wait.as_deref() == Some("running") {
        let done = |r: &TaskRecord| r.status == TaskStatus::Running;
        return Ok(axum::Json(d.wait(&rec.task_id, done).await?));
    }
    Ok(axum::Json(rec))
}

async fn list(State(d): State<Daemon>) -> axum::Json<Vec<TaskRecord>> {
    axum::Json(d.list())
}

async fn describe(
    State(d): State<Daemon>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<TaskRecord> {
    if q.wait.as_deref() == Some("stopped") {
        return Ok(axum::Json(d.wait(&id, |_| false).await?));
    }
    Ok(axum::Json(d.describe(&id)?))
}

async fn remove(State(d): State<Daemon>, UrlPath(id): UrlPath<String>) -> ApiResult<()> {
    Ok(axum::Json(d.remove(&id)?))
}

async fn stop(
    State(d): State<Daemon>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<TaskRecord> {
    let rec = d.stop(&id, StopCode::UserInitiated, "Task stopped by the user")?;
    if q.wait.as_deref() == Some("stopped") {
        return Ok(axum::Json(d.wait(&rec.task_id, |_| false).await?));
    }
    Ok(axum::Json(rec))
}

#[derive(Deserialize)]
struct LogsQuery {
    container: Option<String>,
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
}

async fn logs(
    State(d): State<Daemon>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, DaemonError> {
    let (dir, state, name) = d.log_dir(&id, q.container.as_deref())?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let line = |l: &LogLine| {
        let mut v = serde_json::to_vec(l).expect("log lines serialize");
        v.push(b'\n');
        Bytes::from(v)
    };
    // Files are read with blocking calls; the stream ends when the client goes away or, when
    // following, once the container has stopped and its last lines are out.
    tokio::task::spawn_blocking(move || {
        let send = |l: LogLine| tx.blocking_send(line(&l)).is_ok();
        if !q.follow {
            crate::logs::read(&dir, q.tail).into_iter().all(send);
            return;
        }
        let stopped = || {
            let rec = state.borrow();
            tx.is_closed()
                || rec
                    .container(&name)
                    .is_none_or(|c| c.last_status == crate::record::ContainerStatus::Stopped)
        };
        crate::logs::follow(&dir, q.tail, send, stopped);
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Ok(Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(stream))
        .expect("static response parts"))
}

async fn stats(
    State(d): State<Daemon>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<crate::stats::TaskStats> {
    Ok(axum::Json(d.stats(&id)?))
}

/// Serves `GET /metrics` on `addr` (the config only allows loopback addresses).
pub async fn serve_metrics(daemon: Daemon, addr: std::net::SocketAddr) -> Result<(), ApiError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind {
            path: addr.to_string().into(),
            source,
        })?;
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(d): State<Daemon>| async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    tokio::task::spawn_blocking(move || d.metrics())
                        .await
                        .unwrap_or_default(),
                )
            }),
        )
        .with_state(daemon);
    axum::serve(listener, app).await.map_err(ApiError::Serve)
}

async fn exec_target(
    State(d): State<Daemon>,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> ApiResult<crate::daemon::ExecTarget> {
    Ok(axum::Json(d.exec_target(&id, &name)?))
}
