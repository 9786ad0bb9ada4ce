//! `skiff-shim`: owns one container for its whole life (`run`), runs processes inside a running
//! one (`exec`), and force-deletes what a dead shim left (`delete`); see `skiff_runtime::shim`.
//! skiffd starts `run` in its own process group and reads one line from its stdout,
//! `started <pid>`, once the container runs; the shim exits with the container, after recording
//! the exit status. `exec` exits with the exec'd process's code. `vm` owns a task's microVM
//! and `vm-run` runs one container in it, with `run`'s contract (`skiff_runtime::vm`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use skiff_runtime::logs::Rotation;
use skiff_runtime::shim::{ShimConfig, delete, exec, run};
use skiff_runtime::vm;

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

/// Where a container's output and exit go, and how it stops: shared by `run` and `vm-run`.
#[derive(clap::Args)]
struct Outputs {
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
}

impl Outputs {
    fn rotation(&self) -> Result<Rotation, std::process::ExitCode> {
        Rotation::from_options(Some(&self.log_max_size), Some(&self.log_max_file)).ok_or_else(|| {
            eprintln!(
                "skiff-shim: error: invalid log rotation --log-max-size {:?} --log-max-file {:?}",
                self.log_max_size, self.log_max_file
            );
            std::process::ExitCode::from(125)
        })
    }
}

/// A container of a microVM task.
#[derive(clap::Args)]
struct InVm {
    /// Container id (its processes' ids in the VM derive from it).
    #[arg(long)]
    id: String,
    /// The VM's directory.
    #[arg(long)]
    vm_dir: PathBuf,
    /// The container's bundle: its config.json has the process and its settings.
    #[arg(long)]
    bundle: PathBuf,
    /// The serial of the disk with its root filesystem.
    #[arg(long)]
    disk: String,
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
        #[command(flatten)]
        out: Outputs,
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
    /// Own a task's microVM for its life: start the VMM of DIR/spec.json, print
    /// `ready <vmm pid>` once the guest agent answers, route the containers' requests.
    Vm {
        /// The VM's directory in its task's.
        #[arg(long)]
        dir: PathBuf,
        /// cgroup.procs files of the task's cgroup to join before starting the VMM.
        #[arg(long)]
        cgroup_procs: Vec<PathBuf>,
    },
    /// Run a command in a container of a microVM task (as `exec` does in a container).
    VmExec {
        #[command(flatten)]
        c: InVm,
        /// A terminal: not available in microVM tasks (refused).
        #[arg(long, short)]
        tty: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        args: Vec<String>,
    },
    /// Run a container's process in its task's VM (as `run` does a container); record its exit.
    VmRun {
        #[command(flatten)]
        c: InVm,
        /// The VMM's pid, reported as the container's.
        #[arg(long)]
        host_pid: i32,
        #[command(flatten)]
        out: Outputs,
    },
}

/// Prints `<word> <pid>` on stdout for skiffd (which may be gone by now: what runs, runs).
fn announce(word: &'static str) -> impl FnOnce(i32) {
    move |pid| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{word} {pid}").and_then(|()| out.flush());
    }
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
        Cmd::Run { id, bundle, out } => {
            let rotation = match out.rotation() {
                Ok(r) => r,
                Err(code) => return code,
            };
            if let Err(e) = std::fs::create_dir_all(&a.state_root) {
                return fail(&e);
            }
            let cfg = ShimConfig {
                id,
                bundle,
                state_root: a.state_root,
                exit_file: out.exit_file,
                log_dir: out.log_dir,
                rotation,
                stop_timeout: Duration::from_secs(out.stop_timeout),
            };
            match run(&cfg, announce("started")) {
                Ok(_) => std::process::ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Cmd::Vm { dir, cgroup_procs } => {
            match vm::shim::serve(&vm::VmDir(dir), &cgroup_procs, announce("ready")) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Cmd::VmRun { c, host_pid, out } => {
            let rotation = match out.rotation() {
                Ok(r) => r,
                Err(code) => return code,
            };
            let cfg = vm::shim::RunConfig {
                id: c.id,
                vm: vm::VmDir(c.vm_dir),
                bundle: c.bundle,
                disk: c.disk,
                host_pid,
                exit_file: out.exit_file,
                log_dir: out.log_dir,
                rotation,
                stop_timeout: Duration::from_secs(out.stop_timeout),
            };
            match vm::shim::run(&cfg, announce("started")) {
                Ok(_) => std::process::ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Cmd::VmExec { c, tty, args } => {
            match vm::shim::exec(&vm::VmDir(c.vm_dir), &c.bundle, &c.id, &c.disk, args, tty) {
                Ok(status) => std::process::ExitCode::from(status.exit_code.clamp(0, 255) as u8),
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
