//! `skiff-shim`: owns one container for its whole life (see `skiff_runtime::shim`). skiffd
//! starts it detached; it exits with the container, after recording the exit status.

use std::path::PathBuf;

use clap::Parser;
use skiff_runtime::logs::Rotation;
use skiff_runtime::shim::{ShimConfig, run};

#[derive(Parser)]
#[command(
    name = "skiff-shim",
    version,
    about = "Runs one container and records its exit"
)]
struct Args {
    /// Container id.
    #[arg(long)]
    id: String,
    /// OCI bundle directory (with config.json).
    #[arg(long)]
    bundle: PathBuf,
    /// libcontainer state root.
    #[arg(long, default_value = "/run/skiff/containers")]
    state_root: PathBuf,
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

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let Some(rotation) = Rotation::from_options(Some(&a.log_max_size), Some(&a.log_max_file))
    else {
        eprintln!(
            "skiff-shim: error: invalid log rotation --log-max-size {:?} --log-max-file {:?}",
            a.log_max_size, a.log_max_file
        );
        return std::process::ExitCode::FAILURE;
    };
    let cfg = ShimConfig {
        id: a.id,
        bundle: a.bundle,
        state_root: a.state_root,
        exit_file: a.exit_file,
        log_dir: a.log_dir,
        rotation,
        stop_timeout: std::time::Duration::from_secs(a.stop_timeout),
    };
    if let Err(e) = std::fs::create_dir_all(&cfg.state_root) {
        eprintln!(
            "skiff-shim: error: cannot create {}: {e}",
            cfg.state_root.display()
        );
        return std::process::ExitCode::FAILURE;
    }
    match run(&cfg) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("skiff-shim: error: {msg}");
            std::process::ExitCode::FAILURE
        }
    }
}
