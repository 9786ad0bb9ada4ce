//! `skiff`: the node-local command line. Images are handled in-process on the store
//! (`skiff image ...`); tasks, logs and exec go through skiffd's local API; `skiff control ...`
//! talks to apid's operator API (admin actions and views of the cluster). Thin by design: it
//! parses arguments, renders results, and maps errors to one line and a non-zero exit.

mod control;
mod image;
mod task;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use skiff_images::config::DEFAULT_CONFIG_PATH;
use skiff_images::store::DEFAULT_ROOT;

#[derive(Parser)]
#[command(name = "skiff", version, about = "Skiff node command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage images in the node's content store.
    Image {
        /// Root of Skiff's state.
        #[arg(long, global = true, default_value = DEFAULT_ROOT, env = "SKIFF_ROOT")]
        root: PathBuf,
        /// Image configuration file (registries, mirrors, limits).
        #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH, env = "SKIFF_IMAGES_CONFIG")]
        config: PathBuf,
        #[command(subcommand)]
        command: image::ImageCommand,
    },
    /// Run and manage tasks (through skiffd).
    Task {
        #[command(flatten)]
        api: task::Api,
        #[command(subcommand)]
        command: task::TaskCommand,
    },
    /// Print a container's logs.
    Logs {
        #[command(flatten)]
        api: task::Api,
        #[command(flatten)]
        args: task::LogsArgs,
    },
    /// Show a task's cpu, memory and pids use, per container.
    Stats {
        #[command(flatten)]
        api: task::Api,
        #[command(flatten)]
        args: task::StatsArgs,
    },
    /// Run a command in a running container.
    Exec {
        #[command(flatten)]
        api: task::Api,
        #[command(flatten)]
        args: task::ExecArgs,
    },
    /// Administer apid and view its clusters (over its operator API, signed with an access key).
    Control {
        #[command(flatten)]
        endpoint: control::Endpoint,
        #[command(subcommand)]
        command: control::ControlCommand,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Image {
            root,
            config,
            command,
        } => image::run(&root, &config, command).map(|()| 0),
        Command::Task { api, command } => task::run(&api, command),
        Command::Logs { api, args } => task::logs(&api, args).map(|()| 0),
        Command::Exec { api, args } => task::exec(&api, args),
        Command::Stats { api, args } => task::stats(&api, args).map(|()| 0),
        Command::Control { endpoint, command } => control::run(&endpoint, command).map(|()| 0),
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("skiff: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
