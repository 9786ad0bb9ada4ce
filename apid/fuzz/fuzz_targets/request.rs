//! Arbitrary action bodies through apid's ECS actions ([`Api::call`]), over a real SQLite store
//! on a current-thread runtime, as the HTTP layer hands them over once a request is
//! authenticated. The input is the action's name, a newline, and its JSON body:
//!
//! ```text
//! RegisterTaskDefinition
//! {"family": "web", "containerDefinitions": [...]}
//! ```
//!
//! The store is made once per process and keeps what the inputs do: clusters `default` and
//! `edge`, two container instances in `edge` and task definitions `web` and `arm` to start from,
//! so that tasks get placed, described and stopped. It is emptied of the inputs' leftovers every
//! few thousand runs so that it stays small; a crash that needs what earlier inputs left may thus
//! not replay from its artifact alone (replay the corpus up to it). Whatever the input, no action
//! may panic, and its response or error must turn into an HTTP response.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use axum::response::IntoResponse;
use libfuzzer_sys::fuzz_target;
use skiff_apid::config::ApidConfig;
use skiff_apid::ecs::{Api, Attribute, NodeInfo};
use tokio::runtime::Runtime;

struct Harness {
    rt: Runtime,
    api: Api,
    runs: std::sync::atomic::AtomicU64,
}

/// Runs since which the store is reset.
const RESET_EVERY: u64 = 5000;

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = store_dir();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let path = dir.join("apid.db");
        let store = rt
            .block_on(skiff_apid::store::Store::open(
                path.to_str().expect("a UTF-8 path"),
            ))
            .expect("opening the store");
        let api = Api::new(store, ApidConfig::default());
        let h = Harness {
            rt,
            api,
            runs: 0.into(),
        };
        h.rt.block_on(populate(&h.api));
        h
    })
}

/// The store's directory, `skiff-apid-fuzz-<pid>` in tmpfs when there is one (SQLite syncs
/// every write). libFuzzer exits without dropping anything, so instead of a `TempDir` that would
/// stay behind, each process removes the directories of processes that are gone.
fn store_dir() -> PathBuf {
    const PREFIX: &str = "skiff-apid-fuzz-";
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix(PREFIX));
        let Some(pid) = pid.filter(|p| p.parse::<u32>().is_ok()) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = parent.join(format!("{PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("creating the store's directory");
    dir
}

/// Every table emptied, then the starting state.
async fn populate(api: &Api) {
    for statement in [
        "DELETE FROM clusters",
        "DELETE FROM task_definitions",
        "DELETE FROM container_instances",
        "DELETE FROM tasks",
    ] {
        sqlx::query(statement)
            .execute(api.pool())
            .await
            .expect("emptying the store");
    }
    for body in [
        r#"{"clusterName": "default"}"#,
        r#"{"clusterName": "edge"}"#,
    ] {
        api.call("CreateCluster", body.as_bytes())
            .await
            .expect("CreateCluster");
    }
    for arch in ["x86_64", "arm64"] {
        let node = NodeInfo {
            cpu: 2048,
            memory: 3900,
            reserved_ports: vec![22],
            attributes: vec![
                attribute("ecs.cpu-architecture", arch),
                attribute("ecs.os-type", "linux"),
            ],
            agent_version: "skiff 0.1.0".into(),
            hostname: format!("box-{arch}"),
        };
        api.register_instance("edge", &node)
            .await
            .expect("register_instance");
    }
    for body in [
        r#"{"family": "web", "networkMode": "bridge", "containerDefinitions": [{"name": "web", "image": "busybox", "memory": 64, "portMappings": [{"containerPort": 80, "hostPort": 8080}]}], "tags": [{"key": "team", "value": "edge"}]}"#,
        r#"{"family": "arm", "containerDefinitions": [{"name": "a", "image": "busybox", "cpu": 256, "memory": 128}], "runtimePlatform": {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"}}"#,
    ] {
        api.call("RegisterTaskDefinition", body.as_bytes())
            .await
            .expect("RegisterTaskDefinition");
    }
}

fn attribute(name: &str, value: &str) -> Attribute {
    Attribute {
        name: name.into(),
        value: Some(value.into()),
        target_type: None,
        target_id: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let (action, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(action) = std::str::from_utf8(action) else {
        return;
    };
    let runs = h.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if runs > 0 && runs % RESET_EVERY == 0 {
        h.rt.block_on(populate(&h.api));
    }
    match h.rt.block_on(h.api.call(action, body)) {
        Ok(value) => drop(value.to_string()),
        Err(e) => drop(e.into_response()),
    }
});
