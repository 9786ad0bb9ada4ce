//! `skiffd`: the Skiff node daemon. Runs tasks (see `skiff_runtime::daemon`), serves the local
//! API on a root-only unix socket and the ECS task metadata endpoint to tasks, and, once the
//! node is registered (`skiffd register`), syncs with the control plane
//! (`skiff_runtime::agent`). Stopping or killing skiffd leaves tasks running: each container
//! belongs to its shim, and the next skiffd finds them again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use skiff_runtime::agent::Agent;
use skiff_runtime::agent::identity::{Credentials, Endpoint, Registration};
use skiff_runtime::config::{DEFAULT_CONFIG_PATH, NodeConfig};
use skiff_runtime::daemon::Daemon;

#[derive(Parser)]
#[command(name = "skiffd", version, about = "Skiff node daemon")]
struct Args {
    /// Node configuration file (missing: defaults).
    #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH, env = "SKIFFD_CONFIG")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Register this node with a control plane, as ecs-anywhere-install.sh does: makes the
    /// node's key, sends a CSR with the activation, keeps the certificate and the CA.
    Register {
        /// apid's node channel, https://HOST:PORT.
        #[arg(long)]
        endpoint: String,
        /// The cluster CA certificate (PEM) to verify apid with (`skiff control ca-cert`).
        #[arg(long)]
        ca_cert: PathBuf,
        /// The activation's id.
        #[arg(long)]
        activation_id: String,
        /// The activation's code.
        #[arg(long)]
        activation_code: String,
        /// The cluster the activation should be for (refused if it is for another).
        #[arg(long)]
        cluster: Option<String>,
        /// A custom attribute, NAME=VALUE (repeatable).
        #[arg(long = "attribute", value_name = "NAME=VALUE")]
        attributes: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
                .unwrap_or_else(|_| "info,libcgroups=error,libcontainer=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiffd: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let cfg = NodeConfig::load(&args.config)?;
    match args.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cfg),
        Command::Register {
            endpoint,
            ca_cert,
            activation_id,
            activation_code,
            cluster,
            attributes,
        } => {
            let r = Registration {
                endpoint: Endpoint::try_from(endpoint)?,
                ca_cert,
                activation_id,
                activation_code,
                cluster,
                attributes,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let id = rt.block_on(Credentials::of(&cfg).register(&cfg, &r))?;
            println!(
                "{}",
                serde_json::json!({
                    "containerInstanceArn": id.container_instance_arn,
                    "cluster": id.cluster(),
                    "endpoint": id.endpoint,
                })
            );
            Ok(())
        }
    }
}

fn serve(cfg: NodeConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let socket = cfg.socket();
        let metrics = cfg.metrics_address;
        let agent_cfg = cfg.clone();
        let daemon = Daemon::start(cfg).await?;
        match Agent::new(daemon.clone(), &agent_cfg)? {
            Some(agent) => {
                tokio::spawn(async move {
                    if let Err(e) = agent.run().await {
                        tracing::error!(error = %format!("{:#}", anyhow::Error::new(e)), "the control-plane agent stopped: tasks keep running, nothing more is reported");
                    }
                });
            }
            None => tracing::info!("not registered with a control plane: standalone"),
        }
        if let Some(addr) = metrics {
            let d = daemon.clone();
            tokio::spawn(async move {
                if let Err(e) = skiff_runtime::api::serve_metrics(d, addr).await {
                    tracing::error!(error = %format!("{e:#}"), "metrics endpoint");
                }
            });
        }
        // The task metadata endpoint, in skiffd's own network namespace (the node's), where
        // netd put its address on the bridge and DNATs its port 80 to this port.
        match daemon.metadata_address() {
            Some(ip) => {
                let (d, addr) = (
                    daemon.clone(),
                    SocketAddr::from((ip, skiff_netd::METADATA_PORT)),
                );
                tokio::spawn(async move {
                    if let Err(e) = skiff_runtime::metadata::serve(d, addr).await {
                        tracing::error!(error = %format!("{:#}", anyhow::Error::new(e)), "task metadata endpoint not served: tasks' ECS_CONTAINER_METADATA_URI_V4 will not answer");
                    }
                });
            }
            None => tracing::warn!(
                "task networking did not start, so neither does the task metadata endpoint"
            ),
        }
        let pruner = daemon.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                pruner.prune_stopped();
            }
        });
        tracing::info!(socket = %socket.display(), "skiffd ready");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = skiff_runtime::api::serve(daemon, &socket) => r?,
            _ = term.recv() => tracing::info!("SIGTERM: exiting; tasks keep running"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: exiting; tasks keep running"),
        }
        Ok(())
    })
}
