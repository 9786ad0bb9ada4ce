//! `skiff task ...`, `skiff logs`, `skiff exec`: clients of skiffd's local API.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use hyper::Method;
use skiff_runtime::client::Client;
use skiff_runtime::daemon::ExecTarget;
use skiff_runtime::lifecycle::TaskStatus;
use skiff_runtime::logs::LogLine;
use skiff_runtime::record::TaskRecord;

/// Where skiffd listens.
#[derive(Args)]
pub struct Api {
    /// skiffd's API socket.
    #[arg(
        long,
        global = true,
        default_value = "/run/skiff/skiffd.sock",
        env = "SKIFF_SOCKET"
    )]
    socket: PathBuf,
}

#[derive(Subcommand)]
pub enum TaskCommand {
    /// Run a task from an ECS task definition (JSON, as register-task-definition takes it).
    Run {
        /// The task definition file (`-` for standard input).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Return once skiffd has accepted the task, without waiting for it to run.
        #[arg(short, long)]
        detach: bool,
    },
    /// List tasks.
    Ls {
        /// Stopped tasks too.
        #[arg(short, long)]
        all: bool,
        /// Print task ids only.
        #[arg(short, long)]
        quiet: bool,
        /// Print the records as JSON.
        #[arg(long, conflicts_with = "quiet")]
        json: bool,
    },
    /// Show a task as JSON (ECS DescribeTasks' shape).
    Describe {
        /// Task id (or unique prefix).
        id: String,
    },
    /// Stop a task: SIGTERM to its containers, SIGKILL after their stopTimeout.
    Stop {
        /// Task id (or unique prefix).
        id: String,
        /// Return at once instead of waiting for STOPPED.
        #[arg(long)]
        no_wait: bool,
    },
    /// Wait until a task has stopped; exits with its first essential container's exit code.
    Wait {
        /// Task id (or unique prefix).
        id: String,
    },
    /// Forget a stopped task (its record and logs).
    Rm {
        /// Task ids (or unique prefixes).
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Args)]
pub struct LogsArgs {
    /// Keep printing as the container writes.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    tail: Option<usize>,
    /// Prefix lines with their time.
    #[arg(short, long)]
    timestamps: bool,
    /// Task id (or unique prefix).
    id: String,
    /// Container name (default: the first).
    container: Option<String>,
}

#[derive(Args)]
pub struct StatsArgs {
    /// Print one sample (taken over a second) and exit.
    #[arg(long)]
    no_stream: bool,
    /// Task id (or unique prefix).
    id: String,
}

#[derive(Args)]
pub struct ExecArgs {
    /// Allocate a terminal.
    #[arg(short, long)]
    tty: bool,
    /// Task id (or unique prefix).
    id: String,
    /// Container name.
    container: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn essential_exit(rec: &TaskRecord) -> Option<i32> {
    rec.task_definition
        .container_definitions
        .iter()
        .filter(|d| d.is_essential())
        .find_map(|d| rec.container(&d.name).and_then(|c| c.exit_code))
}

fn print_stopped(rec: &TaskRecord) {
    if let Some(stop) = rec.status.stop() {
        eprintln!(
            "task {} stopped: {:?}: {}",
            rec.task_id, stop.stop_code, stop.stopped_reason
        );
    }
    for c in &rec.containers {
        let code = c.exit_code.map_or("-".into(), |c| c.to_string());
        let reason = c.reason.as_deref().unwrap_or("");
        eprintln!("  {} exit {code} {reason}", c.name);
    }
}

/// Runs a task command; returns the process exit code.
pub fn run(api: &Api, cmd: TaskCommand) -> anyhow::Result<u8> {
    let client = Client::new(&api.socket);
    let rt = runtime()?;
    rt.block_on(async {
        match cmd {
            TaskCommand::Run { file, detach } => {
                let def = if file.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin())?
                } else {
                    std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?
                };
                let path = if detach {
                    "/v1/tasks"
                } else {
                    "/v1/tasks?wait=running"
                };
                let rec: TaskRecord = client.call(Method::POST, path, Bytes::from(def)).await?;
                println!("{}", rec.task_id);
                if matches!(rec.status, TaskStatus::Stopped(_)) {
                    print_stopped(&rec);
                    let failed = rec.status.stop().is_some_and(|s| {
                        s.stop_code == skiff_runtime::lifecycle::StopCode::TaskFailedToStart
                    });
                    return Ok(if failed { 1 } else { 0 });
                }
                Ok(0)
            }
            TaskCommand::Ls { all, quiet, json } => {
                let recs: Vec<TaskRecord> =
                    client.call(Method::GET, "/v1/tasks", Bytes::new()).await?;
                let shown = recs
                    .iter()
                    .filter(|r| all || !matches!(r.status, TaskStatus::Stopped(_)));
                if json {
                    println!("{}", serde_json::to_string(&shown.collect::<Vec<_>>())?);
                    return Ok(0);
                }
                if !quiet {
                    println!(
                        "{:<32}  {:<20}  {:<14}  {:<8}  CONTAINERS",
                        "TASK", "FAMILY", "STATUS", "HEALTH"
                    );
                }
                for r in shown {
                    if quiet {
                        println!("{}", r.task_id);
                        continue;
                    }
                    let containers: Vec<String> = r
                        .containers
                        .iter()
                        .map(|c| match c.exit_code {
                            Some(code) => format!("{}(exit {code})", c.name),
                            None => format!("{}({:?})", c.name, c.last_status).to_lowercase(),
                        })
                        .collect();
                    let health = serde_json::to_value(r.health_status)?;
                    println!(
                        "{:<32}  {:<20}  {:<14}  {:<8}  {}",
                        r.task_id,
                        r.task_definition.family,
                        r.status.name(),
                        health.as_str().unwrap_or(""),
                        containers.join(" ")
                    );
                }
                Ok(0)
            }
            TaskCommand::Describe { id } => {
                let rec: serde_json::Value = client
                    .call(Method::GET, &format!("/v1/tasks/{id}"), Bytes::new())
                    .await?;
                println!("{}", serde_json::to_string_pretty(&rec)?);
                Ok(0)
            }
            TaskCommand::Stop { id, no_wait } => {
                let q = if no_wait { "" } else { "?wait=stopped" };
                let rec: TaskRecord = client
                    .call(
                        Method::POST,
                        &format!("/v1/tasks/{id}/stop{q}"),
                        Bytes::new(),
                    )
                    .await?;
                println!("{} {}", rec.task_id, rec.status.name());
                Ok(0)
            }
            TaskCommand::Wait { id } => {
                let rec: TaskRecord = client
                    .call(
                        Method::GET,
                        &format!("/v1/tasks/{id}?wait=stopped"),
                        Bytes::new(),
                    )
                    .await?;
                print_stopped(&rec);
                Ok(essential_exit(&rec).map_or(1, |c| c.clamp(0, 255) as u8))
            }
            TaskCommand::Rm { ids } => {
                for id in ids {
                    client
                        .call::<()>(Method::DELETE, &format!("/v1/tasks/{id}"), Bytes::new())
                        .await?;
                    println!("{id}");
                }
                Ok(0)
            }
        }
    })
}

/// `skiff logs`.
pub fn logs(api: &Api, a: LogsArgs) -> anyhow::Result<()> {
    let client = Client::new(&api.socket);
    let mut q = format!("/v1/tasks/{}/logs?follow={}", a.id, a.follow);
    if let Some(c) = &a.container {
        q.push_str(&format!("&container={c}"));
    }
    if let Some(n) = a.tail {
        q.push_str(&format!("&tail={n}"));
    }
    runtime()?.block_on(client.lines(&q, |line| {
        let Ok(l) = serde_json::from_slice::<LogLine>(line) else {
            return;
        };
        let text = if a.timestamps {
            format!("{} {}", l.time, l.log)
        } else {
            l.log
        };
        let _ = match l.stream {
            skiff_runtime::logs::Stream::Stdout => std::io::stdout().write_all(text.as_bytes()),
            skiff_runtime::logs::Stream::Stderr => std::io::stderr().write_all(text.as_bytes()),
        };
    }))?;
    Ok(())
}

/// `skiff exec`: asks skiffd where the container is, then runs the shim's exec with this
/// process's terminal (the command's stdio are ours).
pub fn exec(api: &Api, a: ExecArgs) -> anyhow::Result<u8> {
    let client = Client::new(&api.socket);
    let path = format!("/v1/tasks/{}/containers/{}/exec", a.id, a.container);
    let target: ExecTarget = runtime()?.block_on(client.call(Method::GET, &path, Bytes::new()))?;
    let status = target
        .command(a.tty, &a.command)
        .status()
        .with_context(|| format!("running {}", target.shim.display()))?;
    Ok(status.code().map_or(128, |c| c.clamp(0, 255) as u8))
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.1}MiB", b as f64 / 1048576.0))
}

/// `skiff stats`: samples the task's stats every second (cpu % needs two samples).
pub fn stats(api: &Api, a: StatsArgs) -> anyhow::Result<()> {
    use skiff_runtime::stats::{CgroupStats, TaskStats, cpu_percent};
    let client = Client::new(&api.socket);
    let path = format!("/v1/tasks/{}/stats", a.id);
    let rt = runtime()?;
    let sample = || -> anyhow::Result<(TaskStats, std::time::Instant)> {
        let s = rt.block_on(client.call(Method::GET, &path, Bytes::new()))?;
        Ok((s, std::time::Instant::now()))
    };
    let row = |name: &str, prev: Option<&CgroupStats>, cur: &CgroupStats, dt| {
        let cpu = prev
            .and_then(|p| cpu_percent(p, cur, dt))
            .map_or("-".into(), |c| format!("{c:.2}%"));
        let pids = cur.pids.current.map_or("-".into(), |p| p.to_string());
        println!(
            "{name:<24}  {cpu:>8}  {:>10} / {:<10}  {pids:>5}",
            mib(cur.memory.working_set().or(cur.memory.usage)),
            mib(cur.memory.limit)
        );
    };
    let (mut prev, mut at) = sample()?;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let (cur, now) = sample()?;
        let dt = now - at;
        println!(
            "{:<24}  {:>8}  {:>23}  {:>5}",
            "CONTAINER", "CPU %", "MEM USAGE / LIMIT", "PIDS"
        );
        for (name, s) in &cur.containers {
            let p = prev
                .containers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s);
            row(name, p, s, dt);
        }
        row("(task)", Some(&prev.task), &cur.task, dt);
        if a.no_stream {
            return Ok(());
        }
        println!();
        (prev, at) = (cur, now);
    }
}
