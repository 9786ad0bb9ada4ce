//! `skiff-apid serve` runs the control plane's ECS API and the node channel; `skiff-apid keys
//! create|revoke|list` manages the access keys operators sign requests with; `skiff-apid activations
//! create|list|delete` the activations nodes register with; `skiff-apid ca-cert` prints the cluster CA
//! that nodes' installs trust. A thin adapter over the skiff_apid library. Once the first key
//! exists, `skiff control ...` does the same remotely over the operator API.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use skiff_apid::config::{ApidConfig, DEFAULT_CONFIG_PATH};
use skiff_apid::ecs::{Api, Attribute, NodeInfo};
use skiff_apid::identity::activations;
use skiff_apid::identity::ca::Ca;
use skiff_apid::identity::channel::NodeChannel;
use skiff_apid::scheduler::Scheduler;
use skiff_apid::store::Store;
use skiff_apid::{keys, protocol};
use skiff_runtime::control::ActivationArgs;

#[derive(Parser)]
#[command(
    name = "skiff-apid",
    about = "Skiff's control plane: the ECS API over an embedded store"
)]
struct Cli {
    /// The configuration file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH, env = "APID_CONFIG")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the ECS API and the node channel.
    Serve,
    /// Access keys for SigV4.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Activations nodes register with (as ECS Anywhere's SSM activations).
    Activations {
        #[command(subcommand)]
        command: ActivationsCommand,
    },
    /// Prints the cluster CA certificate (PEM), made now if there is none: give it to nodes'
    /// installs so that they can verify apid at first contact.
    CaCert,
    /// Test and bootstrap aids, hidden: not an interface.
    #[command(hide = true)]
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
    },
}

#[derive(Subcommand)]
enum ActivationsCommand {
    /// Creates an activation and prints its id and code (JSON); the code is shown only now.
    Create(ActivationArgs),
    /// Lists activations (without codes), JSON.
    List,
    /// Deletes an activation.
    Delete {
        /// The activation id.
        id: String,
    },
}

/// Until nodes register themselves over the node channel, tests and first setups record
/// container instances directly in the store.
#[derive(Subcommand)]
enum DebugCommand {
    /// Records a container instance as if a node had registered; prints its id.
    RegisterInstance {
        /// The cluster (it must exist).
        #[arg(long, default_value = "default")]
        cluster: String,
        /// CPU units (1024 per core).
        #[arg(long)]
        cpu: i64,
        /// Memory in MiB.
        #[arg(long)]
        memory: i64,
        /// An attribute, `name=value` (`ecs.cpu-architecture=arm64`); repeatable.
        #[arg(long = "attribute", value_parser = attribute)]
        attributes: Vec<Attribute>,
    },
}

fn attribute(s: &str) -> Result<Attribute, String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not name=value"))?;
    Ok(Attribute {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        target_type: None,
        target_id: None,
    })
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Creates a key and prints it (JSON, as `aws iam create-access-key`); the secret is shown
    /// only now.
    Create,
    /// Revokes a key.
    Revoke {
        /// The access key id.
        id: String,
    },
    /// Lists keys (without secrets).
    List,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apid: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = ApidConfig::load(&cli.config)?;
    let store = Store::open(&cfg.database).await?;
    let pool = store.pool().clone();
    match cli.command {
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(cfg.listen)
                .await
                .with_context(|| format!("listening on {}", cfg.listen))?;
            tracing::info!(address = %cfg.listen, region = %cfg.region, "apid serving the ECS API");
            let node_listener = tokio::net::TcpListener::bind(cfg.node_listen)
                .await
                .with_context(|| format!("listening on {}", cfg.node_listen))?;
            let api = Api::new(store, cfg.clone());
            let channel = NodeChannel::new(api.clone())
                .await
                .context("preparing the node channel")?;
            tracing::info!(address = %cfg.node_listen, "apid serving the node channel");
            let scheduler = Scheduler::new(api.clone());
            tracing::info!(holder = %scheduler.holder(), "apid scheduling while it holds the lease");
            let app = protocol::router(api);
            // The ECS API ends on ctrl-c; the node channel and the scheduler never end by
            // themselves.
            let node_channel = std::sync::Arc::new(channel).serve(node_listener);
            match (&cfg.tls_certificate, &cfg.tls_key) {
                (Some(cert), Some(key)) => {
                    let tls = skiff_apid::tls::server_config(cert, key)?;
                    let config = move || std::future::ready(Some(tls.clone()));
                    let route = move |_| std::future::ready(app.clone());
                    let ecs = skiff_apid::tls::serve(listener, "ECS API", config, route);
                    tracing::info!("the ECS API is served over TLS");
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        never = ecs => match never {},
                        never = node_channel => match never {},
                        never = scheduler.run() => match never {},
                    }
                }
                _ => {
                    let ecs = axum::serve(listener, app).with_graceful_shutdown(async {
                        let _ = tokio::signal::ctrl_c().await;
                    });
                    tokio::select! {
                        served = ecs => served.context("serving the ECS API")?,
                        never = node_channel => match never {},
                        never = scheduler.run() => match never {},
                    }
                }
            }
        }
        Command::Activations { command } => match command {
            ActivationsCommand::Create(ActivationArgs {
                cluster,
                count,
                expires,
            }) => {
                let a = activations::create(&pool, &cluster, count, expires)
                    .await
                    .context("creating an activation")?;
                println!("{}", serde_json::to_string(&a)?);
            }
            ActivationsCommand::List => {
                let l = activations::list(&pool).await.context("listing")?;
                println!("{}", serde_json::json!({ "Activations": l }));
            }
            ActivationsCommand::Delete { id } => {
                anyhow::ensure!(
                    activations::delete(&pool, &id).await.context("deleting")?,
                    "no activation {id}"
                );
            }
        },
        Command::CaCert => {
            let ca = Ca::load_or_create(&pool).await.context("the cluster CA")?;
            print!("{}", ca.cert_pem());
        }
        Command::Keys { command } => match command {
            KeysCommand::Create => {
                let k = keys::create(&pool).await.context("creating a key")?;
                println!("{}", serde_json::json!({ "AccessKey": k }));
            }
            KeysCommand::Revoke { id } => {
                anyhow::ensure!(
                    keys::revoke(&pool, &id).await.context("revoking")?,
                    "no active access key {id}"
                );
            }
            KeysCommand::List => {
                for k in keys::list(&pool).await.context("listing")? {
                    println!("{}\t{}", k.access_key_id, k.status);
                }
            }
        },
        Command::Debug {
            command:
                DebugCommand::RegisterInstance {
                    cluster,
                    cpu,
                    memory,
                    attributes,
                },
        } => {
            let node = NodeInfo {
                cpu,
                memory,
                reserved_ports: Vec::new(),
                attributes,
                agent_version: "apid-debug".into(),
                hostname: "debug".into(),
            };
            let id = Api::new(store, cfg)
                .register_instance(&cluster, &node)
                .await
                .with_context(|| format!("registering an instance in {cluster}"))?;
            println!("{id}");
        }
    }
    Ok(())
}
