//! Task benchmark: starting and cycling one-container tasks with Skiff against `crun run` and
//! `runc run` on the same busybox root filesystem, side by side in one run. The goals it checks
//! (docs/benchmarks.md): Skiff's run -> exit -> cleanup cycle no slower than crun's, tasks
//! started per second (sustained) no fewer than crun's, skiffd at most 15 MiB idle and at most
//! 2 MiB added per running task.
//!
//! Run it with the release binaries built first (the fixture runs `skiffd`, `skiff` and
//! `skiff-shim` from `target/release/`, the directory above the bench executable's `deps/`):
//!
//! ```text
//! cargo build --release --workspace && cargo bench -p skiff-tests --bench tasks
//! ```
//!
//! What is measured, all on one skiffd of the test fixture ([`Skiffd`]: its own root, socket and
//! cgroup parent, the busybox image `local/bb:1` cached, `networkMode: none`):
//!
//! - **start**: from the call to the container's process running. Skiff: `POST
//!   /v1/tasks?wait=running` through [`Client`] (the library the CLI uses), and for reference
//!   the CLI, `skiff task run -f` (which makes that call from a new process). Peers: `crun run
//!   --detach` and `runc run --detach`, which return once the container's process is started.
//!   The task runs `sleep`; untimed, the bench SIGKILLs it and removes it.
//! - **cycle**: run -> exit -> cleanup of a container running busybox `true`. Skiff: `POST
//!   /v1/tasks`, `GET /v1/tasks/{id}?wait=stopped` (Skiff has then released the cgroups and the
//!   root filesystem), `DELETE /v1/tasks/{id}`; CLI: `skiff task run -f --detach`, `skiff task
//!   wait`, `skiff task rm`. Peers: a foreground `crun run` / `runc run`, which deletes the
//!   container (state and cgroup) when it exits.
//! - **throughput**: `BENCH_CONCURRENCY` clients (default 4) start `sleep` tasks in a loop for
//!   `BENCH_THROUGHPUT_SECS` (default 30); started tasks keep running until the window ends, then
//!   all are killed and removed (untimed). Skiff through the API against `crun run --detach`.
//! - **footprint**: skiffd's RSS idle (1 s after start), then with `BENCH_FOOTPRINT_TASKS`
//!   (default 100) `sleep` tasks running: the daemon's growth per task and each shim's RSS and
//!   PSS (`/proc/PID/smaps_rollup`). crun and runc leave no process of theirs behind a detached
//!   container, so they add nothing here.
//!
//! `BENCH_ROUNDS` (default 200) is the number of timed runs of each tool in each latency
//! scenario, after 5 untimed warm-up runs; rounds interleave the tools, rotating which goes
//! first. The defaults take about five minutes.
//!
//! The peers get the OCI config Skiff itself wrote for a container of the same definition
//! (same namespaces including a fresh network namespace, capabilities, seccomp filter, masked
//! paths, devices, memory limit), with the root, the arguments and the cgroups path changed;
//! the root is an overlay mounted with `skiff image mount` from the same image. crun 1.8 refuses
//! this host's cgroup v1/v2 hybrid layout, so both peers run in a mount namespace where the v2
//! mount (`/sys/fs/cgroup/unified`) is hidden (entered with `setns` between fork and exec, no
//! extra process); Skiff runs in the host's namespace, as deployed.
//!
//! Everything the bench starts is removed at the end: tasks (by the fixture), peer containers,
//! their cgroups, the peers' root filesystem and the mount namespace holder.
//!
//! Needs root: when not root it says why and exits 0, or 1 under `SKIFF_REQUIRE_PRIVILEGED=1`.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use hyper::Method;
use serde_json::{Value, json};
use skiff_runtime::client::Client;
use skiff_tests::{
    BUSYBOX, Skiffd, bench_may_run, env_num, first_line, percentile, remove_cgroup_parent,
    workspace_bin,
};

const RERUN: &str = "cargo build --release --workspace && cargo bench -p skiff-tests --bench tasks";
const WARMUP: usize = 5;

struct Params {
    rounds: usize,
    concurrency: usize,
    throughput: Duration,
    footprint_tasks: usize,
}

fn main() -> ExitCode {
    if let Err(code) = bench_may_run("task benchmark") {
        return code;
    }
    let release = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.to_owned()));
    for bin in ["skiffd", "skiff", "skiff-shim"] {
        if !release.as_ref().is_some_and(|d| d.join(bin).is_file()) {
            eprintln!("task benchmark: the release {bin} binary is missing; run `{RERUN}`");
            return ExitCode::FAILURE;
        }
    }
    for peer in ["crun", "runc", "unshare"] {
        if Command::new(peer).arg("--version").output().is_err() {
            eprintln!("task benchmark: {peer} is not installed (packaging/deps.sh installs it)");
            return ExitCode::FAILURE;
        }
    }
    let params = (|| {
        Ok::<_, anyhow::Error>(Params {
            rounds: env_num("BENCH_ROUNDS", 200)?,
            concurrency: env_num("BENCH_CONCURRENCY", 4)?,
            throughput: Duration::from_secs(env_num("BENCH_THROUGHPUT_SECS", 30)? as u64),
            footprint_tasks: env_num("BENCH_FOOTPRINT_TASKS", 100)?,
        })
    })();
    let result = params.and_then(|p| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")
            .and_then(|rt| run(&rt, &p))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("task benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---- task definitions ----------------------------------------------------------------------

fn task_def(args: &[&str]) -> String {
    json!({
        "family": "bench",
        "networkMode": "none",
        "memory": "256",
        "containerDefinitions": [{
            "name": "main", "image": BUSYBOX, "essential": true, "command": args,
        }],
    })
    .to_string()
}

const SLEEP: &[&str] = &["/bin/sleep", "100000"];
const TRUE: &[&str] = &["/bin/true"];

// ---- Skiff through the API -----------------------------------------------------------------

struct Skiff<'a> {
    d: &'a Skiffd,
    client: Client,
    sleep_def: Bytes,
    true_def: Bytes,
    sleep_file: PathBuf,
    true_file: PathBuf,
}

fn str_field<'v>(v: &'v Value, k: &str) -> Result<&'v str> {
    v[k].as_str()
        .with_context(|| format!("no {k} in task record {v}"))
}

impl<'a> Skiff<'a> {
    fn new(d: &'a Skiffd) -> Result<Self> {
        let (sleep_file, true_file) = (
            d.dir.path().join("sleep.json"),
            d.dir.path().join("true.json"),
        );
        fs::write(&sleep_file, task_def(SLEEP))?;
        fs::write(&true_file, task_def(TRUE))?;
        Ok(Self {
            d,
            client: Client::new(&d.socket()),
            sleep_def: Bytes::from(task_def(SLEEP)),
            true_def: Bytes::from(task_def(TRUE)),
            sleep_file,
            true_file,
        })
    }

    /// Starts a `sleep` task and returns its record once it runs.
    async fn start(&self) -> Result<Value> {
        let rec: Value = self
            .client
            .call(
                Method::POST,
                "/v1/tasks?wait=running",
                self.sleep_def.clone(),
            )
            .await?;
        ensure!(rec["lastStatus"] == "RUNNING", "task did not start: {rec}");
        Ok(rec)
    }

    /// SIGKILLs a running task's container, waits for the task to stop and removes it.
    async fn kill_and_remove(&self, rec: &Value) -> Result<()> {
        let id = str_field(rec, "taskId")?;
        if let Some(pid) = rec["containers"][0]["pid"].as_i64() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.wait_and_remove(id).await.map(drop)
    }

    /// Waits for task `id` to stop, removes it, and returns its last record.
    async fn wait_and_remove(&self, id: &str) -> Result<Value> {
        let rec: Value = self
            .client
            .call(
                Method::GET,
                &format!("/v1/tasks/{id}?wait=stopped"),
                Bytes::new(),
            )
            .await?;
        ensure!(rec["lastStatus"] == "STOPPED", "task did not stop: {rec}");
        let _: Value = self
            .client
            .call(Method::DELETE, &format!("/v1/tasks/{id}"), Bytes::new())
            .await?;
        Ok(rec)
    }

    /// Timed: POST ?wait=running. Returns seconds.
    async fn api_start(&self) -> Result<f64> {
        let t = Instant::now();
        let rec = self.start().await?;
        let dt = t.elapsed().as_secs_f64();
        self.kill_and_remove(&rec).await?;
        Ok(dt)
    }

    /// Timed: POST, GET ?wait=stopped, DELETE of a `true` task.
    async fn api_cycle(&self) -> Result<f64> {
        let t = Instant::now();
        let rec: Value = self
            .client
            .call(Method::POST, "/v1/tasks", self.true_def.clone())
            .await?;
        let id = str_field(&rec, "taskId")?;
        let rec = self.wait_and_remove(id).await?;
        let dt = t.elapsed().as_secs_f64();
        ensure!(
            rec["containers"][0]["exitCode"] == 0,
            "true did not exit 0: {rec}"
        );
        Ok(dt)
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        let out = self.d.cmd(args).stdin(Stdio::null()).output()?;
        ensure!(
            out.status.success(),
            "skiff {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned())
    }

    /// Timed: `skiff task run -f sleep.json` (waits for running).
    async fn cli_start(&self) -> Result<f64> {
        let file = self.sleep_file.to_str().context("path")?;
        let t = Instant::now();
        let id = self.cli(&["task", "run", "-f", file])?;
        let dt = t.elapsed().as_secs_f64();
        let rec: Value = self
            .client
            .call(Method::GET, &format!("/v1/tasks/{id}"), Bytes::new())
            .await?;
        ensure!(rec["lastStatus"] == "RUNNING", "task did not start: {rec}");
        self.kill_and_remove(&rec).await?;
        Ok(dt)
    }

    /// Timed: `skiff task run -f true.json --detach`, `skiff task wait`, `skiff task rm`.
    fn cli_cycle(&self) -> Result<f64> {
        let file = self.true_file.to_str().context("path")?;
        let t = Instant::now();
        let id = self.cli(&["task", "run", "-f", file, "--detach"])?;
        self.cli(&["task", "wait", &id])?;
        self.cli(&["task", "rm", &id])?;
        Ok(t.elapsed().as_secs_f64())
    }
}

// ---- crun and runc -------------------------------------------------------------------------

/// A process holding a mount namespace in which the cgroup v2 mount is hidden (crun 1.8
/// refuses the hybrid layout); mounts made on the host later still propagate into it.
struct MountNs {
    holder: Child,
    ns: Arc<File>,
}

impl MountNs {
    fn new() -> Result<Self> {
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "sh", "-c"])
            .arg(
                "if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified || exit 1; fi; \
                 echo ready; exec sleep 1000000",
            )
            .stdout(Stdio::piped())
            .spawn()
            .context("unshare")?;
        let mut line = String::new();
        BufReader::new(holder.stdout.take().context("holder stdout")?).read_line(&mut line)?;
        ensure!(line.trim() == "ready", "mount namespace holder failed");
        let ns = File::open(format!("/proc/{}/ns/mnt", holder.id()))?;
        Ok(Self {
            holder,
            ns: Arc::new(ns),
        })
    }

    /// Makes `cmd` run in this namespace.
    #[allow(unsafe_code)]
    fn enter(&self, cmd: &mut Command) {
        let ns = Arc::clone(&self.ns);
        // SAFETY: the closure runs in the forked child before exec and only makes the setns(2)
        // system call (async-signal-safe, no allocation) on a descriptor that stays open: the
        // closure owns a reference to the File.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&*ns, nix::sched::CloneFlags::CLONE_NEWNS)
                    .map_err(std::io::Error::from)
            });
        }
    }
}

impl Drop for MountNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

struct Peer {
    name: &'static str,
    state: PathBuf,
    bundles: PathBuf,
    template: Value,
    cgroup_parent: String,
    ns: Arc<MountNs>,
    seq: AtomicUsize,
}

impl Peer {
    fn new(
        name: &'static str,
        scratch: &Path,
        template: &Value,
        ns: &Arc<MountNs>,
    ) -> Result<Self> {
        let dir = scratch.join(name);
        let (state, bundles) = (dir.join("state"), dir.join("bundles"));
        fs::create_dir_all(&state)?;
        fs::create_dir_all(&bundles)?;
        Ok(Self {
            name,
            state,
            bundles,
            template: template.clone(),
            cgroup_parent: format!("skiff-bench-{name}-{}", std::process::id()),
            ns: Arc::clone(ns),
            seq: AtomicUsize::new(0),
        })
    }

    fn next_id(&self) -> String {
        format!(
            "bench-{}-{}",
            self.name,
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Writes worker `w`'s bundle for container `id` running `args`.
    fn bundle(&self, w: usize, id: &str, args: &[&str]) -> Result<PathBuf> {
        let b = self.bundles.join(format!("w{w}"));
        fs::create_dir_all(&b)?;
        let mut cfg = self.template.clone();
        cfg["process"]["args"] = json!(args);
        cfg["linux"]["cgroupsPath"] = json!(format!("/{}/{id}", self.cgroup_parent));
        fs::write(b.join("config.json"), cfg.to_string())?;
        Ok(b)
    }

    /// A command of this runtime; its standard streams and the container's are /dev/null
    /// (a pipe would stay open in a detached container) but for stderr, which goes to `err`.
    fn cmd(&self, args: &[&str], err: &Path) -> Result<Command> {
        let mut c = Command::new(self.name);
        c.arg("--root")
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(err)?);
        self.ns.enter(&mut c);
        Ok(c)
    }

    fn err_file(&self, id: &str) -> PathBuf {
        self.bundles.join(format!("{id}.stderr"))
    }

    fn check(&self, mut c: Command, id: &str, what: &str) -> Result<()> {
        let status = c
            .status()
            .with_context(|| format!("{} {what}", self.name))?;
        let err = self.err_file(id);
        let text = fs::read_to_string(&err).unwrap_or_default();
        let _ = fs::remove_file(&err);
        ensure!(
            status.success(),
            "{} {what} {id}: {status}: {text}",
            self.name
        );
        Ok(())
    }

    /// `run --detach` of a `sleep` container; returns its id (bundle written untimed).
    fn start(&self, w: usize) -> Result<(f64, String)> {
        let id = self.next_id();
        let b = self.bundle(w, &id, SLEEP)?;
        let c = self.run_cmd(&b, &id, true)?;
        let t = Instant::now();
        self.check(c, &id, "run --detach")?;
        Ok((t.elapsed().as_secs_f64(), id))
    }

    fn run_cmd(&self, bundle: &Path, id: &str, detach: bool) -> Result<Command> {
        let mut args = vec!["run", "--bundle", bundle.to_str().context("utf-8 path")?];
        if detach {
            args.push("--detach");
        }
        args.push(id);
        self.cmd(&args, &self.err_file(id))
    }

    fn delete(&self, id: &str) -> Result<()> {
        let c = self.cmd(&["delete", "--force", id], &self.err_file(id))?;
        self.check(c, id, "delete --force")
    }

    fn timed_start(&self) -> Result<f64> {
        let (dt, id) = self.start(0)?;
        self.delete(&id)?;
        Ok(dt)
    }

    /// Foreground `run` of `true`: runs, waits, deletes.
    fn timed_cycle(&self) -> Result<f64> {
        let id = self.next_id();
        let b = self.bundle(0, &id, TRUE)?;
        let c = self.run_cmd(&b, &id, false)?;
        let t = Instant::now();
        self.check(c, &id, "run")?;
        Ok(t.elapsed().as_secs_f64())
    }

    /// Containers its state dir still knows.
    fn leftovers(&self) -> usize {
        fs::read_dir(&self.state)
            .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0)
    }

    /// Removes the cgroup parent from every hierarchy.
    fn remove_cgroups(&self) {
        remove_cgroup_parent(&self.cgroup_parent);
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(d) = fs::read_dir(&self.state) {
            for e in d.flatten().filter(|e| e.path().is_dir()) {
                let _ = self.delete(&e.file_name().to_string_lossy());
            }
        }
        self.remove_cgroups();
    }
}

/// The peers' root filesystem: an overlay of the fixture's image in a store of its own.
struct PeerRootfs {
    root: PathBuf,
    images: PathBuf,
    path: PathBuf,
}

const PEER_ROOTFS_ID: &str = "bench-peer";

impl PeerRootfs {
    fn new(d: &Skiffd) -> Result<Self> {
        let root = d.dir.path().join("peer-store");
        let images = d.dir.path().join("images.toml");
        let skiff = workspace_bin("skiff");
        let run = |args: &[&str]| -> Result<String> {
            let out = Command::new(&skiff)
                .args(["image"])
                .args(args)
                .arg("--root")
                .arg(&root)
                .arg("--config")
                .arg(&images)
                .output()?;
            ensure!(out.status.success(), "skiff image {args:?}: {out:?}");
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        let layout = d.dir.path().join("layout");
        run(&[
            "load",
            "--name",
            "local/bb",
            layout.to_str().context("path")?,
        ])?;
        let path = PathBuf::from(run(&["mount", BUSYBOX, PEER_ROOTFS_ID])?);
        ensure!(path.join("bin/busybox").is_file(), "no busybox in {path:?}");
        Ok(Self { root, images, path })
    }
}

impl Drop for PeerRootfs {
    fn drop(&mut self) {
        let _ = Command::new(workspace_bin("skiff"))
            .args(["image", "unmount", PEER_ROOTFS_ID, "--root"])
            .arg(&self.root)
            .arg("--config")
            .arg(&self.images)
            .output();
    }
}

/// Skiff's own OCI config for a container of the benchmark's definition, for the peers.
async fn peer_template(s: &Skiff<'_>, rootfs: &Path) -> Result<Value> {
    let rec = s.start().await?;
    let id = str_field(&rec, "taskId")?;
    let path =
        s.d.root
            .join("tasks")
            .join(id)
            .join("containers/main/config.json");
    let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()));
    s.kill_and_remove(&rec).await?;
    let mut cfg: Value = serde_json::from_str(&text?)?;
    cfg["root"] = json!({"path": rootfs, "readonly": false});
    cfg["process"]["terminal"] = json!(false);
    // Anything mounted from Skiff's task directory (none for this definition) would not exist.
    let task_root = s.d.root.display().to_string();
    if let Some(m) = cfg["mounts"].as_array() {
        for m in m {
            if m["source"]
                .as_str()
                .is_some_and(|s| s.starts_with(&task_root))
            {
                bail!("the container config mounts a task file: {m}");
            }
        }
    }
    Ok(cfg)
}

// ---- statistics and output -----------------------------------------------------------------

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// (RSS, PSS) in KiB of a process.
fn rss_pss(pid: i64) -> Result<(u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |k: &str| {
        text.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .with_context(|| format!("no {k} in smaps_rollup of {pid}"))
    };
    Ok((field("Rss:")?, field("Pss:")?))
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

// ---- the scenarios -------------------------------------------------------------------------

#[derive(Default)]
struct Latency {
    rows: Vec<(&'static str, &'static str, Vec<f64>)>,
}

impl Latency {
    fn push(&mut self, scenario: &'static str, tool: &'static str, dt: f64) {
        match self
            .rows
            .iter_mut()
            .find(|(s, t, _)| *s == scenario && *t == tool)
        {
            Some(r) => r.2.push(dt),
            None => self.rows.push((scenario, tool, vec![dt])),
        }
    }
}

const S_START: &str = "start (to process running)";
const S_CYCLE: &str = "cycle: run `true` -> exit -> cleanup";
const T_API: &str = "skiff (API client)";
const T_CLI: &str = "skiff (CLI, reference)";

fn latency(
    rt: &tokio::runtime::Runtime,
    s: &Skiff<'_>,
    peers: &[&Peer],
    rounds: usize,
) -> Result<Latency> {
    let mut res = Latency::default();
    let tools = 2 + peers.len();
    let t0 = Instant::now();
    for round in 0..WARMUP + rounds {
        for k in 0..tools {
            let tool = (k + round) % tools;
            let (name, start, cycle) = match tool {
                0 => (
                    T_API,
                    rt.block_on(s.api_start())?,
                    rt.block_on(s.api_cycle())?,
                ),
                1 => (T_CLI, rt.block_on(s.cli_start())?, s.cli_cycle()?),
                n => {
                    let p = peers[n - 2];
                    (p.name, p.timed_start()?, p.timed_cycle()?)
                }
            };
            if round >= WARMUP {
                res.push(S_START, name, start);
                res.push(S_CYCLE, name, cycle);
            }
        }
        if round >= WARMUP && (round - WARMUP + 1).is_multiple_of(50) {
            eprintln!(
                "  latency: {} rounds in {:.0} s",
                round - WARMUP + 1,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    for p in peers {
        ensure!(p.leftovers() == 0, "{} left containers behind", p.name);
    }
    // Scenario by scenario, tools in a fixed order.
    let order: Vec<&str> = [T_API, T_CLI]
        .into_iter()
        .chain(peers.iter().map(|p| p.name))
        .collect();
    let rank = |tool: &str| order.iter().position(|t| *t == tool);
    res.rows.sort_by_key(|(s, t, _)| (*s != S_START, rank(t)));
    Ok(res)
}

struct Throughput {
    tool: &'static str,
    started: usize,
    secs: f64,
}

async fn skiff_throughput(s: &Skiff<'_>, p: &Params) -> Result<Throughput> {
    let deadline = Instant::now() + p.throughput;
    let t = Instant::now();
    let workers = (0..p.concurrency).map(|_| async {
        let mut recs = Vec::new();
        while Instant::now() < deadline {
            recs.push(s.start().await?);
        }
        Ok::<_, anyhow::Error>(recs)
    });
    let results = futures::future::join_all(workers).await;
    let secs = t.elapsed().as_secs_f64();
    let mut started = 0;
    let mut first_err = None;
    let mut all = Vec::new();
    for r in results {
        match r {
            Ok(recs) => {
                started += recs.len();
                all.extend(recs);
            }
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    let t = Instant::now();
    for rec in &all {
        if let Some(pid) = rec["containers"][0]["pid"].as_i64() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    for rec in &all {
        s.wait_and_remove(str_field(rec, "taskId")?).await?;
    }
    eprintln!(
        "  skiff: removed {} tasks in {:.1} s",
        all.len(),
        t.elapsed().as_secs_f64()
    );
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(Throughput {
        tool: T_API,
        started,
        secs,
    })
}

fn peer_throughput(peer: &Peer, p: &Params) -> Result<Throughput> {
    let deadline = Instant::now() + p.throughput;
    let t = Instant::now();
    let results: Vec<Result<Vec<String>>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..p.concurrency)
            .map(|w| {
                sc.spawn(move || {
                    let mut ids = Vec::new();
                    while Instant::now() < deadline {
                        ids.push(peer.start(w)?.1);
                    }
                    Ok(ids)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect()
    });
    let secs = t.elapsed().as_secs_f64();
    let ids: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .flatten()
        .cloned()
        .collect();
    let t = Instant::now();
    std::thread::scope(|sc| {
        for chunk in ids.chunks(ids.len().div_ceil(p.concurrency).max(1)) {
            sc.spawn(move || {
                for id in chunk {
                    let _ = peer.delete(id);
                }
            });
        }
    });
    eprintln!(
        "  {}: removed {} containers in {:.1} s",
        peer.name,
        ids.len(),
        t.elapsed().as_secs_f64()
    );
    for r in results {
        r?;
    }
    Ok(Throughput {
        tool: peer.name,
        started: ids.len(),
        secs,
    })
}

struct Footprint {
    idle_kib: u64,
    loaded_kib: u64,
    after_kib: u64,
    tasks: usize,
    shim_rss: Vec<f64>,
    shim_pss: Vec<f64>,
}

fn daemon_rss(pid: u32) -> Result<u64> {
    Ok(rss_pss(pid.into())?.0)
}

async fn footprint(s: &Skiff<'_>, pid: u32, tasks: usize) -> Result<Footprint> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_kib = daemon_rss(pid)?;
    let mut recs = Vec::new();
    for _ in 0..tasks {
        recs.push(s.start().await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded_kib = daemon_rss(pid)?;
    let (mut shim_rss, mut shim_pss) = (Vec::new(), Vec::new());
    for rec in &recs {
        let id = str_field(rec, "taskId")?;
        let rec: Value = s
            .client
            .call(Method::GET, &format!("/v1/tasks/{id}"), Bytes::new())
            .await?;
        let shim = rec["containers"][0]["shim"]["pid"]
            .as_i64()
            .with_context(|| format!("no shim pid in {rec}"))?;
        let (rss, pss) = rss_pss(shim)?;
        shim_rss.push(rss as f64);
        shim_pss.push(pss as f64);
    }
    for rec in &recs {
        s.kill_and_remove(rec).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_kib = daemon_rss(pid)?;
    Ok(Footprint {
        idle_kib,
        loaded_kib,
        after_kib,
        tasks,
        shim_rss,
        shim_pss,
    })
}

/// The 1-minute load average: this benchmark shares its machine, and the figures move with it.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn run(rt: &tokio::runtime::Runtime, p: &Params) -> Result<()> {
    let started = Instant::now();
    let load_before = loadavg();
    let d = Skiffd::start("");
    let pid = d.pid().context("skiffd pid")?;
    let s = Skiff::new(&d)?;

    eprintln!(
        "footprint: skiffd idle, then {} sleep tasks",
        p.footprint_tasks
    );
    let fp = rt.block_on(footprint(&s, pid, p.footprint_tasks))?;

    let rootfs = PeerRootfs::new(&d)?;
    let template = rt.block_on(peer_template(&s, &rootfs.path))?;
    let scratch = tempfile::Builder::new()
        .prefix("skiff-bench-tasks-")
        .tempdir()?;
    let ns = Arc::new(MountNs::new()?);
    let crun = Peer::new("crun", scratch.path(), &template, &ns)?;
    let runc = Peer::new("runc", scratch.path(), &template, &ns)?;

    eprintln!(
        "latency: {} rounds (+{WARMUP} warm-up) of 4 tools",
        p.rounds
    );
    let lat = latency(rt, &s, &[&crun, &runc], p.rounds)?;

    eprintln!(
        "throughput: {} clients for {} s each",
        p.concurrency,
        p.throughput.as_secs()
    );
    let tp = [
        rt.block_on(skiff_throughput(&s, p))?,
        peer_throughput(&crun, p)?,
    ];
    let leaks = [crun.leftovers(), runc.leftovers()];
    ensure!(leaks == [0, 0], "peer containers left behind: {leaks:?}");

    // ---- the report
    let kernel = first_line("uname", &["-r"]);
    println!();
    println!(
        "Skiff (release) at commit {}; {}; {}; kernel {kernel}; {} CPUs; BENCH_ROUNDS={} \
         BENCH_CONCURRENCY={} BENCH_THROUGHPUT_SECS={} BENCH_FOOTPRINT_TASKS={}; {:.0} s in all; load average {load_before} at the start, {} at the end",
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default(),
        first_line("crun", &["--version"]),
        first_line("runc", &["--version"]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        p.rounds,
        p.concurrency,
        p.throughput.as_secs(),
        p.footprint_tasks,
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    println!();
    println!("| scenario | tool | median ms | p95 ms | min ms | runs |");
    println!("|---|---|---:|---:|---:|---:|");
    for (scenario, tool, v) in &lat.rows {
        println!(
            "| {scenario} | {tool} | {:.1} | {:.1} | {:.1} | {} |",
            median(v) * 1e3,
            percentile(v, 0.95) * 1e3,
            percentile(v, 0.0) * 1e3,
            v.len()
        );
    }
    println!();
    println!(
        "| throughput ({} clients) | tasks started | seconds | tasks/s |",
        p.concurrency
    );
    println!("|---|---:|---:|---:|");
    for t in &tp {
        println!(
            "| {} | {} | {:.1} | {:.1} |",
            t.tool,
            t.started,
            t.secs,
            t.started as f64 / t.secs
        );
    }
    println!();
    let growth = (fp.loaded_kib as f64 - fp.idle_kib as f64) / fp.tasks as f64;
    let (rss, pss) = (median(&fp.shim_rss), median(&fp.shim_pss));
    println!("| footprint | MiB |");
    println!("|---|---:|");
    println!(
        "| skiffd RSS idle (goal <= 15) | {:.1} |",
        mib(fp.idle_kib as f64)
    );
    println!(
        "| skiffd RSS with {} tasks running | {:.1} |",
        fp.tasks,
        mib(fp.loaded_kib as f64)
    );
    println!(
        "| skiffd RSS idle again after they were removed | {:.1} |",
        mib(fp.after_kib as f64)
    );
    println!("| skiffd growth per task | {:.2} |", mib(growth));
    println!("| skiff-shim RSS per task (median) | {:.2} |", mib(rss));
    println!("| skiff-shim PSS per task (median) | {:.2} |", mib(pss));
    println!(
        "| added per task: growth + shim PSS (goal <= 2) | {:.2} |",
        mib(growth + pss)
    );
    println!(
        "| added per task: growth + shim RSS | {:.2} |",
        mib(growth + rss)
    );
    println!();
    println!("Rerun: `{RERUN}`");

    drop(crun);
    drop(runc);
    drop(ns);
    drop(rootfs);
    let left = d.leftovers();
    ensure!(left.is_empty(), "Skiff left behind: {left:?}");
    Ok(())
}
