//! `skiff control ...`: apid's operator API from anywhere, signed with an access key; the admin
//! actions the ECS API has no word for and readable tables of clusters, nodes, services and
//! tasks. The work is in `skiff_runtime::control`; this parses, prints and exits.

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use skiff_runtime::control::{self, ActivationArgs, ControlClient, DEFAULT_ENDPOINT, Table};
use skiff_runtime::sigv4::Credentials;

/// Where apid is, and how to print.
#[derive(Args)]
pub struct Endpoint {
    /// apid's operator API (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).
    #[arg(long, global = true, env = "SKIFF_ENDPOINT_URL", default_value = DEFAULT_ENDPOINT)]
    endpoint_url: String,
    /// The region apid serves (the SigV4 scope).
    #[arg(long, global = true, default_value = "us-east-1")]
    region: String,
    /// Print apid's answers as JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum ControlCommand {
    /// Activations nodes register with (`skiffd --activation-id ... --activation-code ...`).
    Activations {
        #[command(subcommand)]
        command: ActivationsCommand,
    },
    /// Access keys that sign requests to apid.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Node certificates apid issued.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Print the cluster CA certificate (PEM) that nodes' installs trust.
    CaCert,
    /// Show clusters.
    Clusters,
    /// Show container instances (nodes).
    Nodes(ClusterArg),
    /// Show services.
    Services(ClusterArg),
    /// Show tasks meant to run.
    Tasks(ClusterArg),
    /// A control-plane task's container logs, fetched from its node through apid.
    Logs {
        #[command(flatten)]
        cluster: ClusterArg,
        /// The task (id or ARN).
        task: String,
        /// The container (the first one when absent).
        container: Option<String>,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// A control-plane task's resource use (cpu, memory, pids), from its node (JSON).
    Stats {
        #[command(flatten)]
        cluster: ClusterArg,
        /// The task (id or ARN).
        task: String,
    },
    /// Run a command in a control-plane task's container, through apid and the node's own
    /// connection (no terminal); exits with the command's exit code.
    Exec {
        #[command(flatten)]
        cluster: ClusterArg,
        /// The task (id or ARN).
        task: String,
        /// The container.
        container: String,
        /// The longest the command may run, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// Which cluster a view shows.
#[derive(Args)]
pub struct ClusterArg {
    /// Only this cluster (all clusters otherwise).
    #[arg(long)]
    cluster: Option<String>,
}

#[derive(Subcommand)]
pub enum ActivationsCommand {
    /// Create an activation and print its id and code; the code is shown only now.
    Create(ActivationArgs),
    /// List activations (without codes).
    Ls,
    /// Delete an activation.
    Rm {
        /// The activation id.
        id: String,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create an access key and print it; the secret is shown only now.
    Create,
    /// List access keys (without secrets).
    Ls,
    /// Revoke an access key (not the one in use).
    Revoke {
        /// The access key id.
        id: String,
    },
}

#[derive(Subcommand)]
pub enum CertsCommand {
    /// List node certificates.
    Ls {
        /// Only this container instance's (id or ARN).
        #[arg(long)]
        instance: Option<String>,
    },
    /// Revoke a node certificate: the node holding it is refused from its next connection on.
    Revoke {
        /// The serial (hex).
        serial: String,
    },
}

/// Prints `answer` as JSON or as `table(answer)`.
fn print(json: bool, answer: &Value, table: impl FnOnce(&Value) -> Table) {
    if json {
        println!("{answer:#}");
    } else {
        print!("{}", table(answer));
    }
}

/// Runs `command` against apid at `endpoint`.
pub fn run(endpoint: &Endpoint, command: ControlCommand) -> anyhow::Result<()> {
    let client = ControlClient::new(
        &endpoint.endpoint_url,
        Credentials::from_env()?,
        &endpoint.region,
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(execute(&client, endpoint.json, command))
}

/// How an admin answer is printed without `--json`.
enum Shown {
    /// As a table.
    Table(fn(&Value) -> Table),
    /// As the PEM in `certificate`.
    Pem,
    /// Not at all (the exit status says it was done).
    Nothing,
    /// As the log text of `lines`.
    Logs,
    /// As the command's output, exiting with its code.
    Exec,
    /// As the JSON it is.
    Json,
}

/// What a command does.
enum Plan {
    /// One control action with its request, and how its answer is shown.
    Admin(&'static str, Value, Shown),
    /// A view over the ECS actions, of one cluster or all.
    View(View, Option<String>),
}

enum View {
    Clusters,
    Nodes,
    Services,
    Tasks,
}

fn plan(command: ControlCommand) -> Plan {
    let (action, body, shown) = match command {
        ControlCommand::Activations { command } => match command {
            ActivationsCommand::Create(ActivationArgs {
                cluster,
                count,
                expires,
            }) => (
                "CreateActivation",
                json!({"cluster": cluster, "count": count, "expiresInSeconds": expires.as_secs()}),
                Shown::Table(control::new_activation_table),
            ),
            ActivationsCommand::Ls => (
                "ListActivations",
                json!({}),
                Shown::Table(control::activations_table),
            ),
            ActivationsCommand::Rm { id } => (
                "DeleteActivation",
                json!({ "activationId": id }),
                Shown::Nothing,
            ),
        },
        ControlCommand::Keys { command } => match command {
            KeysCommand::Create => (
                "CreateAccessKey",
                json!({}),
                Shown::Table(control::new_key_table),
            ),
            KeysCommand::Ls => (
                "ListAccessKeys",
                json!({}),
                Shown::Table(control::keys_table),
            ),
            KeysCommand::Revoke { id } => (
                "RevokeAccessKey",
                json!({ "accessKeyId": id }),
                Shown::Nothing,
            ),
        },
        ControlCommand::Certs { command } => match command {
            CertsCommand::Ls { instance } => (
                "ListNodeCertificates",
                instance.map_or_else(|| json!({}), |i| json!({ "containerInstance": i })),
                Shown::Table(control::certs_table),
            ),
            CertsCommand::Revoke { serial } => (
                "RevokeNodeCertificate",
                json!({ "serial": serial }),
                Shown::Nothing,
            ),
        },
        ControlCommand::CaCert => ("GetCaCertificate", json!({}), Shown::Pem),
        ControlCommand::Clusters => return Plan::View(View::Clusters, None),
        ControlCommand::Nodes(c) => return Plan::View(View::Nodes, c.cluster),
        ControlCommand::Services(c) => return Plan::View(View::Services, c.cluster),
        ControlCommand::Tasks(c) => return Plan::View(View::Tasks, c.cluster),
        ControlCommand::Logs {
            cluster,
            task,
            container,
            tail,
        } => (
            "GetTaskLogs",
            json!({"cluster": cluster.cluster, "task": task, "container": container, "tail": tail}),
            Shown::Logs,
        ),
        ControlCommand::Stats { cluster, task } => (
            "GetTaskStats",
            json!({"cluster": cluster.cluster, "task": task}),
            Shown::Json,
        ),
        ControlCommand::Exec {
            cluster,
            task,
            container,
            timeout,
            command,
        } => (
            "ExecInTask",
            json!({"cluster": cluster.cluster, "task": task, "container": container,
                   "command": command, "timeoutSeconds": timeout}),
            Shown::Exec,
        ),
    };
    Plan::Admin(action, body, shown)
}

async fn execute(
    client: &ControlClient,
    json: bool,
    command: ControlCommand,
) -> anyhow::Result<()> {
    let view = |items: Vec<Value>, table: fn(&[Value]) -> Table| {
        print(json, &Value::Array(items), |v| {
            table(v.as_array().map_or(&[], Vec::as_slice))
        });
    };
    match plan(command) {
        Plan::View(View::Clusters, _) => view(client.clusters().await?, control::clusters_table),
        Plan::View(View::Nodes, c) => view(client.nodes(c.as_deref()).await?, control::nodes_table),
        Plan::View(View::Services, c) => view(
            client.services(c.as_deref()).await?,
            control::services_table,
        ),
        Plan::View(View::Tasks, c) => view(client.tasks(c.as_deref()).await?, control::tasks_table),
        Plan::Admin(action, body, shown) => {
            let answer = client.control(action, &body).await?;
            match shown {
                _ if json => println!("{answer:#}"),
                Shown::Table(table) => print!("{}", table(&answer)),
                Shown::Pem => print!("{}", answer["certificate"].as_str().unwrap_or("")),
                Shown::Nothing => {}
                Shown::Json => println!("{answer:#}"),
                Shown::Logs => {
                    for l in answer["lines"].as_array().into_iter().flatten() {
                        print!("{}", l["log"].as_str().unwrap_or_default());
                    }
                }
                Shown::Exec => {
                    print!("{}", answer["stdout"].as_str().unwrap_or_default());
                    eprint!("{}", answer["stderr"].as_str().unwrap_or_default());
                    let code = answer["exitCode"].as_i64().unwrap_or(128);
                    std::process::exit(i32::try_from(code.clamp(0, 255)).unwrap_or(128));
                }
            }
        }
    }
    Ok(())
}
