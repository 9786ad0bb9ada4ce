//! Control plane to running container: `RunTask` through apid (boto3, SigV4 verified) until
//! `DescribeTasks` says RUNNING on a registered node, against the same task started through the
//! node's own local API (the floor: no control plane at all), in one run.
//!
//! ```text
//! cargo build --release --workspace && cargo bench -p skiff-tests --bench placed
//! ```
//!
//! The setup is the end-to-end tests' (`tests/tests/nodes.rs`): the release `skiff-apid` on
//! SQLite (production settings: WAL, synchronous=FULL) and one release `skiffd` registered with
//! an activation, in a network namespace of its own, reaching apid's node channel over mTLS
//! through a test bridge. The task is one busybox container that sleeps and exits on SIGTERM (`networkMode: none`,
//! image cached). Measured (`tests/benches/placed.py`):
//!
//! - **placed**: `BENCH_ROUNDS` (default 100) times, RunTask, then DescribeTasks every 2 ms
//!   until RUNNING; each task is stopped (untimed) before the next. The figure includes boto3's
//!   own cost per call (about 1 ms) and up to 2 ms of polling.
//! - **RunTask** alone: the call's own latency (placement, the durable commit).
//! - **local**: the same definition through skiffd's API, `POST /v1/tasks?wait=running`, as
//!   the tasks bench measures it.
//! - **burst**: `BENCH_BURST` (default 100) tasks started by RunTask calls of count 10, timed
//!   until every one is RUNNING: tasks/s from an idle node.
//!
//! Needs root: when not root it says why and exits 0, or 1 under `SKIFF_REQUIRE_PRIVILEGED=1`.

use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use hyper::Method;
use serde_json::{Value, json};
use skiff_runtime::client::Client;
use skiff_tests::{
    Apid, BUSYBOX, ControlNet, Skiffd, bench_main, env_num, percentile, stop_and_remove,
};

const RERUN: &str =
    "cargo build --release --workspace && cargo bench -p skiff-tests --bench placed";

fn definition() -> Value {
    json!({"family": "bench", "networkMode": "none", "containerDefinitions": [
        {"name": "app", "image": BUSYBOX, "memory": 16, "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]}]})
}

fn stats(v: &[f64]) -> String {
    format!(
        "p50 {:.1} ms, p99 {:.1} ms (n = {})",
        percentile(v, 0.5),
        percentile(v, 0.99),
        v.len()
    )
}

fn local(node: &Skiffd, rounds: usize) -> Result<Vec<f64>> {
    let rt = tokio::runtime::Runtime::new()?;
    let client = Client::new(&node.socket());
    let body = Bytes::from(definition().to_string());
    let mut out = Vec::new();
    for i in 0..rounds + 3 {
        let t0 = Instant::now();
        let rec: Value =
            rt.block_on(client.call(Method::POST, "/v1/tasks?wait=running", body.clone()))?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        ensure!(rec["lastStatus"] == "RUNNING", "{rec}");
        if i >= 3 {
            out.push(ms);
        }
        let id = rec["taskId"].as_str().context("task id")?.to_owned();
        stop_and_remove(&rt, &client, &id)?;
    }
    Ok(out)
}

fn run() -> Result<()> {
    let rounds = env_num("BENCH_ROUNDS", 100)?;
    let burst = env_num("BENCH_BURST", 100)?;
    let net = ControlNet::new();
    let apid = Apid::start_for_nodes(ControlNet::ADDR, "");
    apid.aws(&["create-cluster", "--cluster-name", "edge"]);
    let act = apid.activation("edge", 1);
    let node = Skiffd::registered(&net, 2, &apid, &act, &[], "");
    let path = apid.path("bench.json");
    std::fs::write(&path, definition().to_string())?;
    let td = apid.aws(&[
        "register-task-definition",
        "--cli-input-json",
        &format!("file://{}", path.display()),
    ])["taskDefinition"]["taskDefinitionArn"]
        .as_str()
        .context("task definition ARN")?
        .to_owned();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/placed.py");
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .args([
            &apid.endpoint(),
            &apid.key.0,
            &apid.key.1,
            &td,
            &rounds.to_string(),
            &burst.to_string(),
        ])
        .output()
        .context("running placed.py")?;
    ensure!(
        out.status.success(),
        "placed.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout)?;
    let nums = |k: &str| -> Vec<f64> {
        r[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect()
    };
    let floor = local(&node, rounds)?;
    println!(
        "RunTask -> RUNNING on the node (boto3): {}",
        stats(&nums("latency_ms"))
    );
    println!(
        "RunTask call alone:                     {}",
        stats(&nums("runtask_ms"))
    );
    println!("local API start (the floor):            {}", stats(&floor));
    let secs = r["burst_s"].as_f64().unwrap_or(f64::NAN);
    println!(
        "burst: {} tasks RUNNING in {secs:.2} s: {:.1} tasks/s",
        r["burst"],
        r["burst"].as_f64().unwrap_or(0.0) / secs
    );
    println!("rerun: {RERUN}");
    Ok(())
}

fn main() -> ExitCode {
    bench_main("the placed-task benchmark", run)
}
