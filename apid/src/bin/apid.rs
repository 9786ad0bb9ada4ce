//! apid: `apid serve` runs the control plane's ECS API; `apid keys create|revoke|list` manages
//! the access keys operators sign requests with. A thin adapter over the skiff_apid library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use skiff_apid::config::{ApidConfig, DEFAULT_CONFIG_PATH};
use skiff_apid::ecs::Api;
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
    }
    Ok(())
}
