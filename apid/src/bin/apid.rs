//! apid: `apid serve` runs the control plane's ECS API; `apid keys create|revoke|list` manages
//! the access keys operators sign requests with. A thin adapter over the skiff_apid library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use skiff_apid::config::{ApidConfig, DEFAULT_CONFIG_PATH};
use skiff_apid::ecs::{Api, Attribute, NodeInfo};
use skiff_apid::{keys, protocol, store};

#[derive(Parser)]
#[command(
    name = "apid",
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
    /// Serves the ECS API.
    Serve,
    /// Access keys for SigV4.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Test and bootstrap aids, hidden: not an interface.
    #[command(hide = true)]
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
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
    let pool = store::open(&cfg.database).await?;
    match cli.command {
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(cfg.listen)
                .await
                .with_context(|| format!("listening on {}", cfg.listen))?;
            tracing::info!(address = %cfg.listen, region = %cfg.region, "apid serving the ECS API");
            let app = protocol::router(Api::new(pool, cfg));
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
                .context("serving")?;
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
            let id = Api::new(pool, cfg)
                .register_instance(&cluster, &node)
                .await
                .with_context(|| format!("registering an instance in {cluster}"))?;
            println!("{id}");
        }
    }
    Ok(())
}
