//! `skiff-shim`: owns one container for its whole life (`run`), runs processes inside a running
//! one (`exec`), and force-deletes what a dead shim left (`delete`); see `skiff_runtime::shim`.
//! skiffd starts `run` in its own process group and reads one line from its stdout,
//! `started <pid>`, once the container runs; the shim exits with the container, after recording
//! the exit status. `exec` exits with the exec'd process's code.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use skiff_runtime::logs::Rotation;
use skiff_runtime::shim::{ShimConfig, delete, exec, run};

#[derive(Parser)]
#[command(
    name = "skiff-shim",
    version,
    about = "Runs one container and records its exit"
)]
struct Args {
    /// libcontainer state root.
    #[arg(long, global = true, default_value = "/run/skiff/containers")]
    state_root: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create, start and wait for a container; record its exit.
    Run {
        /// Container id.
        #[arg(long)]
        id: String,
        /// OCI bundle directory (with config.json).
        #[arg(long)]
        bundle: PathBuf,
        /// File the exit status is written to.
        #[arg(long)]
        exit_file: PathBuf,
        /// Directory of the container's json-file log.
        #[arg(long)]
        log_dir: PathBuf,
        /// Rotate the log past this size (Docker's max-size: 10m, 512k).
        #[arg(long, default_value = "10m")]
        log_max_size: String,
        /// Log files kept (Docker's max-file).
        #[arg(long, default_value = "3")]
        log_max_file: String,
        /// Seconds between SIGTERM and SIGKILL when asked to stop (ECS stopTimeout).
        #[arg(long, default_value = "30")]
        stop_timeout: u64,
    },
    /// Run a command inside a running container.
    Exec {
        /// Container id.
        #[arg(long)]
        id: String,
        /// Give the command a terminal, relayed to this one (docker exec -t).
        #[arg(long, short)]
        tty: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        args: Vec<String>,
    },
    /// Kill and delete a container (processes, cgroup, state), whatever its state.
    Delete {
        /// Container id.
        #[arg(long)]
        id: String,
    },
}

fn fail(e: &dyn std::error::Error) -> std::process::ExitCode {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    eprintln!("skiff-shim: error: {msg}");
    std::process::ExitCode::from(125)
}

fn main() -> std::process::ExitCode {
    // libcontainer says why a create failed through tracing: into stderr (skiffd keeps it in
    // the container's shim.log and quotes its last line as the container's reason).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
                .unwrap_or_else(|_| "error,libcgroups=off".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .init();
    let a = Args::parse();
    match a.command {
        Cmd::Run {
            id,
            bundle,
            exit_file,
            log_dir,
            log_max_size,
            log_max_file,
            stop_timeout,
        } => {
            let Some(rotation) = Rotation::from_options(Some(&log_max_size), Some(&log_max_file))
            else {
                eprintln!(
                    "skiff-shim: error: invalid log rotation --log-max-size {log_max_size:?} --log-max-file {log_max_file:?}"
                );
                return std::process::ExitCode::from(125);
            };
            if let Err(e) = std::fs::create_dir_all(&a.state_root) {
                return fail(&e);
            }
            let cfg = ShimConfig {
                id,
                bundle,
                state_root: a.state_root,
                exit_file,
                log_dir,
                rotation,
                stop_timeout: Duration::from_secs(stop_timeout),
            };
            let started = |pid: i32| {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                // skiffd may be gone by now; the container runs regardless.
                let _ = writeln!(out, "started {pid}").and_then(|()| out.flush());
            };
            match run(&cfg, started) {
                Ok(_) => std::process::ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Cmd::Exec { id, tty, args } => match exec(&id, &a.state_root, args, tty) {
            Ok(status) => std::process::ExitCode::from(status.exit_code.clamp(0, 255) as u8),
            Err(e) => fail(&e),
        },
        Cmd::Delete { id } => match delete(&id, &a.state_root) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
    }
}
