//! Operators' requests about a node's tasks (`skiff control logs/stats/exec`), relayed by apid
//! over the node's own connection: the node sits behind NAT, so apid cannot dial it. Each
//! request arrives in a sync answer and is answered on a connection of its own
//! (`POST /v1/replies`), so a slow one (an exec) never holds up the sync loop.
//!
//! Only tasks the control plane placed are reachable this way: a task run locally with
//! `skiff task run` is the node operator's, not the cluster's.
//!
//! Exec here is non-interactive (the command's output and exit code, bounded in time and
//! size); an interactive terminal needs a stream the long-poll channel does not carry.

use std::time::Duration;

use serde_json::{Value, json};

use super::transport::Channel;
use crate::daemon::{Daemon, DaemonError};
use crate::protocol::{Ask, NodeReply, NodeRequest};

/// The most output an exec returns, per stream.
const MAX_OUTPUT: usize = 1 << 20;

fn clip(mut b: Vec<u8>) -> String {
    b.truncate(MAX_OUTPUT);
    String::from_utf8_lossy(&b).into_owned()
}

/// The answer to `ask` about task `task`.
async fn answer(daemon: &Daemon, task: &str, ask: Ask) -> Result<Value, String> {
    let rec = daemon.describe(task).map_err(|e| e.to_string())?;
    if rec.origin.is_none() {
        return Err(DaemonError::NoSuchTask(task.to_owned()).to_string());
    }
    match ask {
        Ask::Logs { container, tail } => {
            let (dir, _, _) = daemon
                .log_dir(task, container.as_deref())
                .map_err(|e| e.to_string())?;
            let lines = tokio::task::spawn_blocking(move || crate::logs::read(&dir, tail))
                .await
                .map_err(|e| e.to_string())?;
            Ok(json!({ "lines": lines }))
        }
        Ask::Stats => {
            let stats = daemon.stats(task).map_err(|e| e.to_string())?;
            Ok(serde_json::to_value(stats).expect("stats serialize"))
        }
        Ask::Exec {
            container,
            command,
            timeout_seconds,
        } => {
            if command.is_empty() {
                return Err("exec: no command".into());
            }
            let target = daemon
                .exec_target(task, &container)
                .map_err(|e| e.to_string())?;
            let mut cmd = tokio::process::Command::from(target.command(false, &command));
            cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
            let limit = Duration::from_secs(timeout_seconds.clamp(1, 600));
            let out = tokio::time::timeout(limit, cmd.output())
                .await
                .map_err(|_| format!("exec: still running after {limit:?}; killed"))?
                .map_err(|e| format!("exec: running the shim: {e}"))?;
            Ok(json!({
                "exitCode": out.status.code(),
                "stdout": clip(out.stdout),
                "stderr": clip(out.stderr),
            }))
        }
    }
}

/// Answers `req` and sends the reply on `channel` (a connection of its own).
pub async fn serve(daemon: Daemon, mut channel: Channel, req: NodeRequest) {
    let result = answer(&daemon, &req.task_id, req.ask).await;
    let reply = match result {
        Ok(v) => NodeReply {
            id: req.id.clone(),
            result: Some(v),
            error: None,
        },
        Err(e) => NodeReply {
            id: req.id.clone(),
            result: None,
            error: Some(e),
        },
    };
    let sent: Result<Value, _> = channel
        .post("/v1/replies", &reply, Duration::from_secs(30))
        .await;
    if let Err(e) = sent {
        tracing::warn!(request = %req.id, error = %e, "replying to an operator's request");
    }
}
