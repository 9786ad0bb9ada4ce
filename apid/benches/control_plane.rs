//! Control-plane benchmark: one apid's domain API in process (no HTTP: what the store and the
//! scheduler's code cost), on SQLite and on PostgreSQL (a throw-away server from
//! `apid/tests/postgres.sh`, durability off as its tests run it; SQLite runs with its production
//! settings, WAL and `synchronous=FULL`).
//!
//! For each store and fleet size (`BENCH_NODES`, default `1000,10000`):
//! - **registrations/s**: nodes registered as `POST /register` does (activation use, CSR
//!   signature check, certificate signed by the cluster CA, instance and certificate recorded),
//!   by `BENCH_CLIENTS` (default 8) concurrent callers; the CSRs are made beforehand.
//! - **placements/s**: `RunTask` with `count` 10 (ECS's maximum) by the same number of callers
//!   until `BENCH_TASKS` (default 100000) tasks are placed, binpacking by memory; RunTask's latency
//!   p50 and p99 under that load.
//! - **DescribeTasks** latency (10 tasks) under the same load, and the process's RSS at the end.
//!
//! The HTTP API's latency against moto, the other ECS-API server that runs here, is
//! `apid/benches/api_vs_moto.py`. Results: docs/benchmarks.md.
//!
//! ```text
//! cargo bench -p skiff-apid --bench control_plane
//! BENCH_NODES=1000 BENCH_TASKS=20000 cargo bench -p skiff-apid --bench control_plane
//! ```

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use serde_json::{Value, json};
use skiff_apid::config::ApidConfig;
use skiff_apid::ecs::Api;
use skiff_apid::identity::activations;
use skiff_apid::identity::ca::Ca;
use skiff_apid::identity::register::{RegisterRequest, register};
use skiff_apid::store::Store;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A PostgreSQL server for the run (stopped when dropped), or why there is none.
struct Postgres {
    child: Child,
    url: String,
}

impl Postgres {
    fn start() -> Result<Self, String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/postgres.sh");
        let mut child = Command::new(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{script}: {e}"))?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if !line.starts_with("postgres://") {
            return Err("postgres.sh did not start PostgreSQL".into());
        }
        Ok(Self {
            child,
            url: line.trim().to_owned(),
        })
    }

    /// A fresh database's URL.
    async fn database(&self, name: &str) -> String {
        sqlx::any::install_default_drivers();
        let admin = sqlx::AnyPool::connect(&self.url).await.expect("admin");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        self.url.replacen("/postgres?", &format!("/{name}?"), 1)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

struct Row {
    store: &'static str,
    nodes: usize,
    registrations: f64,
    tasks: usize,
    placements: f64,
    run_p50: f64,
    run_p99: f64,
    describe_p50: f64,
    describe_p99: f64,
    rss: f64,
}

async fn run_one(
    store: Store,
    name: &'static str,
    nodes: usize,
    tasks: usize,
    clients: usize,
) -> Row {
    let api = Api::new(store, ApidConfig::default());
    api.call("CreateCluster", br#"{"clusterName":"bench"}"#)
        .await
        .expect("cluster");
    let ca = Arc::new(Ca::load_or_create(api.pool()).await.expect("CA"));
    // One activation per 1,000 nodes (an activation's limit, as SSM's).
    let mut acts = Vec::new();
    for _ in 0..nodes.div_ceil(activations::MAX_COUNT as usize) {
        let a = activations::create(
            api.pool(),
            "bench",
            activations::MAX_COUNT,
            Duration::from_secs(3600),
        )
        .await
        .expect("activation");
        acts.push(a);
    }
    // The nodes' CSRs, made beforehand (the node's work, not apid's).
    let csrs: Vec<(String, activations::NewActivation)> = (0..nodes)
        .map(|i| {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
            let mut p = CertificateParams::default();
            p.distinguished_name
                .push(DnType::CommonName, format!("n{i}"));
            let csr = p.serialize_request(&key).expect("csr").pem().expect("pem");
            (csr, acts[i / activations::MAX_COUNT as usize].clone())
        })
        .collect();
    let csrs = Arc::new(std::sync::Mutex::new(csrs));
    let t0 = Instant::now();
    let mut joins = Vec::new();
    for _ in 0..clients {
        let (api, ca, csrs) = (api.clone(), ca.clone(), csrs.clone());
        joins.push(tokio::spawn(async move {
            loop {
                let Some((csr, act)) = csrs.lock().expect("lock").pop() else {
                    return;
                };
                let r = RegisterRequest {
                    activation_id: act.activation_id.clone(),
                    activation_code: act.activation_code.clone(),
                    csr,
                    cpu: 8192,
                    memory: 131_072,
                    reserved_ports: vec![22],
                    attributes: vec![],
                    agent_version: "bench".into(),
                    hostname: "bench".into(),
                    cluster: None,
                };
                register(&api, &ca, r).await.expect("register");
            }
        }));
    }
    for j in joins {
        j.await.expect("registration client");
    }
    let registrations = nodes as f64 / t0.elapsed().as_secs_f64();
    let def = json!({"family": "bench", "containerDefinitions": [
        {"name": "app", "image": "busybox", "memory": 32, "cpu": 8}]});
    api.call("RegisterTaskDefinition", def.to_string().as_bytes())
        .await
        .expect("task definition");
    let placed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut joins = Vec::new();
    for c in 0..clients {
        let (api, placed) = (api.clone(), placed.clone());
        joins.push(tokio::spawn(async move {
            let (mut run, mut describe) = (Vec::new(), Vec::new());
            let body = json!({"cluster": "bench", "taskDefinition": "bench", "count": 10,
                "placementStrategy": [{"type": "binpack", "field": "memory"}]})
            .to_string();
            while placed.load(std::sync::atomic::Ordering::Relaxed) < tasks {
                let s = Instant::now();
                let r: Value = api.call("RunTask", body.as_bytes()).await.expect("RunTask");
                run.push(s.elapsed());
                let arns: Vec<Value> = r["tasks"].as_array().cloned().unwrap_or_default();
                assert!(!arns.is_empty(), "nothing placed: {r}");
                placed.fetch_add(arns.len(), std::sync::atomic::Ordering::Relaxed);
                if c == 0 {
                    let ids: Vec<&Value> = arns.iter().map(|t| &t["taskArn"]).collect();
                    let q = json!({"cluster": "bench", "tasks": ids}).to_string();
                    let s = Instant::now();
                    api.call("DescribeTasks", q.as_bytes())
                        .await
                        .expect("DescribeTasks");
                    describe.push(s.elapsed());
                }
            }
            (run, describe)
        }));
    }
    let (mut run, mut describe) = (Vec::new(), Vec::new());
    for j in joins {
        let (r, d) = j.await.expect("placement client");
        run.extend(r);
        describe.extend(d);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let total = placed.load(std::sync::atomic::Ordering::Relaxed);
    run.sort();
    describe.sort();
    Row {
        store: name,
        nodes,
        registrations,
        tasks: total,
        placements: total as f64 / elapsed,
        run_p50: percentile(&run, 0.5),
        run_p99: percentile(&run, 0.99),
        describe_p50: percentile(&describe, 0.5),
        describe_p99: percentile(&describe, 0.99),
        rss: rss_mib(),
    }
}

#[tokio::main]
async fn main() {
    let nodes: Vec<usize> = std::env::var("BENCH_NODES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let tasks = env_num("BENCH_TASKS", 100_000);
    let clients = env_num("BENCH_CLIENTS", 8);
    let pg = match Postgres::start() {
        Ok(pg) => Some(pg),
        Err(why) => {
            eprintln!("control_plane: PostgreSQL skipped: {why}");
            None
        }
    };
    let mut rows = Vec::new();
    for (i, &n) in nodes.iter().enumerate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("apid.db");
        let store = Store::open(path.to_str().expect("utf-8"))
            .await
            .expect("SQLite");
        let row = run_one(store, "SQLite", n, tasks, clients).await;
        eprintln!("done: SQLite, {n} nodes");
        rows.push(row);
        if let Some(pg) = &pg {
            let url = pg.database(&format!("bench{i}")).await;
            let store = Store::open(&url).await.expect("PostgreSQL");
            let row = run_one(store, "PostgreSQL", n, tasks, clients).await;
            eprintln!("done: PostgreSQL, {n} nodes");
            rows.push(row);
        }
    }
    println!(
        "| store | nodes | registrations/s | tasks placed | placements/s | RunTask p50 / p99 (ms) | DescribeTasks p50 / p99 (ms) | RSS (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {} | {:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {:.0} |",
            r.store,
            r.nodes,
            r.registrations,
            r.tasks,
            r.placements,
            r.run_p50,
            r.run_p99,
            r.describe_p50,
            r.describe_p99,
            r.rss
        );
    }
}
