//! apid's state: embedded SQLite by default (one file, WAL, `synchronous=FULL`, nothing to
//! install), PostgreSQL when several apid replicas share one database. Both go through sqlx's
//! `Any` driver, so every query is written once, in the SQL both accept: `$N` placeholders,
//! `BIGINT`/`DOUBLE PRECISION`/`TEXT` columns, no JSON functions (aggregation happens in Rust).
//!
//! The schema is a list of versioned migrations applied at open, in order, each in its own
//! transaction with its version recorded in `schema_migrations`; replicas starting together
//! serialise on the store's write lock, so each migration runs once.
//!
//! Writes that read before they decide (placement, the scheduler's lease) take the store's
//! write lock first ([`Store::begin_write`]): `BEGIN IMMEDIATE` on SQLite, a transaction-scoped
//! advisory lock on PostgreSQL. Two such transactions never interleave, on one apid or several.

use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Transaction};

/// Errors of opening the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or prepared.
    #[error("database {database}: {source}")]
    Open {
        /// The file or URL (without its password).
        database: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("database {database}: schema migration {version}: {source}")]
    Migrate {
        /// The file or URL (without its password).
        database: String,
        /// The migration's version.
        version: i64,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
}

/// Which database a store is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// The key of PostgreSQL's advisory lock that stands for SQLite's write lock.
const WRITE_LOCK: i64 = 0x736b_6966_6601;

/// The schema, as migrations: (version, statements). Append, never edit a released one. A
/// statement that starts with `-- sqlite` or `-- postgres` runs on that backend only (triggers,
/// whose syntax differs).
const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE IF NOT EXISTS clusters (
            name TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            tags TEXT NOT NULL DEFAULT '[]'
        )",
            "CREATE TABLE IF NOT EXISTS task_definitions (
            family TEXT NOT NULL,
            revision BIGINT NOT NULL,
            status TEXT NOT NULL,
            body TEXT NOT NULL,
            tags TEXT NOT NULL DEFAULT '[]',
            registered_at DOUBLE PRECISION NOT NULL,
            deregistered_at DOUBLE PRECISION,
            PRIMARY KEY (family, revision)
        )",
            "CREATE TABLE IF NOT EXISTS container_instances (
            id TEXT PRIMARY KEY,
            cluster TEXT NOT NULL,
            status TEXT NOT NULL,
            agent_connected BIGINT NOT NULL DEFAULT 0,
            registered_at DOUBLE PRECISION NOT NULL,
            resources TEXT NOT NULL,
            attributes TEXT NOT NULL DEFAULT '[]',
            version_info TEXT NOT NULL DEFAULT '{}',
            cert_serial TEXT,
            tags TEXT NOT NULL DEFAULT '[]'
        )",
            "CREATE TABLE IF NOT EXISTS access_keys (
            id TEXT PRIMARY KEY,
            secret TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION
        )",
            // identity/: the cluster CA (one row) and ECS Anywhere-style activations (codes hashed).
            "CREATE TABLE IF NOT EXISTS ca (
            id BIGINT PRIMARY KEY CHECK (id = 1),
            cert_pem TEXT NOT NULL,
            key_pem TEXT NOT NULL
        )",
            "CREATE TABLE IF NOT EXISTS activations (
            id TEXT PRIMARY KEY,
            cluster TEXT NOT NULL,
            code_hash TEXT NOT NULL,
            remaining BIGINT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        )",
            // Tasks: placed on an instance at RunTask/StartTask, reserving cpu, memory and host
            // ports until their last status is STOPPED.
            "CREATE TABLE IF NOT EXISTS tasks (
            id TEXT PRIMARY KEY,
            cluster TEXT NOT NULL,
            container_instance TEXT NOT NULL,
            family TEXT NOT NULL,
            revision BIGINT NOT NULL,
            desired_status TEXT NOT NULL,
            last_status TEXT NOT NULL,
            cpu BIGINT NOT NULL,
            memory BIGINT NOT NULL,
            host_ports TEXT NOT NULL DEFAULT '[]',
            started_by TEXT,
            task_group TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            stopping_at DOUBLE PRECISION,
            stopped_reason TEXT,
            stop_code TEXT,
            version BIGINT NOT NULL DEFAULT 1,
            containers TEXT NOT NULL DEFAULT '[]',
            overrides TEXT NOT NULL DEFAULT '{}',
            tags TEXT NOT NULL DEFAULT '[]'
        )",
            "CREATE INDEX IF NOT EXISTS tasks_by_cluster ON tasks (cluster, last_status)",
            "CREATE INDEX IF NOT EXISTS tasks_by_instance ON tasks (container_instance, last_status)",
        ],
    ),
    (
        2,
        &[
            // The node channel: the version of an instance's desired state (bumped with every
            // change to it), the last event sequence number applied from the node, its last sync.
            "ALTER TABLE container_instances ADD COLUMN desired_version BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE container_instances ADD COLUMN acked_seq BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE container_instances ADD COLUMN last_seen DOUBLE PRECISION",
            // What nodes report of their tasks, and which service deployment started a task.
            "ALTER TABLE tasks ADD COLUMN health_status TEXT NOT NULL DEFAULT 'UNKNOWN'",
            "ALTER TABLE tasks ADD COLUMN started_at DOUBLE PRECISION",
            "ALTER TABLE tasks ADD COLUMN stopped_at DOUBLE PRECISION",
            "ALTER TABLE tasks ADD COLUMN pull_started_at DOUBLE PRECISION",
            "ALTER TABLE tasks ADD COLUMN pull_stopped_at DOUBLE PRECISION",
            "ALTER TABLE tasks ADD COLUMN attachments TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE tasks ADD COLUMN deployment TEXT",
            "CREATE INDEX IF NOT EXISTS tasks_by_deployment ON tasks (deployment, last_status)",
            // Every node certificate issued: deregistration revokes an instance's, and rotation
            // revokes the older ones once the node has used its new one.
            "CREATE TABLE IF NOT EXISTS node_certs (
            serial TEXT PRIMARY KEY,
            instance TEXT NOT NULL,
            issued_at DOUBLE PRECISION NOT NULL,
            not_after DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION
        )",
            "INSERT INTO node_certs (serial, instance, issued_at, not_after, revoked_at)
           SELECT cert_serial, id, registered_at, registered_at + 30 * 86400,
                  CASE WHEN status = 'INACTIVE' THEN registered_at END
           FROM container_instances WHERE cert_serial IS NOT NULL",
            // Services and their deployments (ECS's model: one PRIMARY, older ACTIVE ones being
            // replaced, INACTIVE when done).
            "CREATE TABLE IF NOT EXISTS services (
            cluster TEXT NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            body TEXT NOT NULL,
            desired_count BIGINT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            events TEXT NOT NULL DEFAULT '[]',
            tags TEXT NOT NULL DEFAULT '[]',
            PRIMARY KEY (cluster, name)
        )",
            "CREATE TABLE IF NOT EXISTS deployments (
            id TEXT PRIMARY KEY,
            cluster TEXT NOT NULL,
            service TEXT NOT NULL,
            status TEXT NOT NULL,
            family TEXT NOT NULL,
            revision BIGINT NOT NULL,
            rollout_state TEXT NOT NULL,
            rollout_reason TEXT NOT NULL,
            failed_tasks BIGINT NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )",
            "CREATE INDEX IF NOT EXISTS deployments_by_service ON deployments (cluster, service, status)",
            // The scheduler's lease: one apid replica schedules at a time.
            "CREATE TABLE IF NOT EXISTS scheduler_lease (
            id BIGINT PRIMARY KEY CHECK (id = 1),
            holder TEXT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )",
        ],
    ),
    (
        3,
        &[
            // A cluster's placement generation: bumped by triggers whenever what placement
            // reads changes (a task placed or stopped; an instance registered, drained,
            // deregistered, connected, disconnected or given attributes), so each apid can keep
            // the cluster's placement snapshot in memory and trust it while the generation is
            // the same. Triggers, not call sites, so that no write path can forget it.
            "ALTER TABLE clusters ADD COLUMN generation BIGINT NOT NULL DEFAULT 0",
            "-- sqlite
            CREATE TRIGGER IF NOT EXISTS placement_task_placed AFTER INSERT ON tasks
            BEGIN UPDATE clusters SET generation = generation + 1 WHERE name = NEW.cluster; END",
            "-- sqlite
            CREATE TRIGGER IF NOT EXISTS placement_task_stopped AFTER UPDATE OF last_status ON tasks
            WHEN NEW.last_status = 'STOPPED' AND OLD.last_status != 'STOPPED'
            BEGIN UPDATE clusters SET generation = generation + 1 WHERE name = NEW.cluster; END",
            "-- sqlite
            CREATE TRIGGER IF NOT EXISTS placement_instance_added AFTER INSERT ON container_instances
            BEGIN UPDATE clusters SET generation = generation + 1 WHERE name = NEW.cluster; END",
            "-- sqlite
            CREATE TRIGGER IF NOT EXISTS placement_instance_changed AFTER UPDATE ON container_instances
            WHEN OLD.status != NEW.status OR OLD.agent_connected != NEW.agent_connected
              OR OLD.attributes != NEW.attributes OR OLD.resources != NEW.resources
            BEGIN UPDATE clusters SET generation = generation + 1 WHERE name = NEW.cluster; END",
            "-- postgres
            CREATE OR REPLACE FUNCTION skiff_placement_changed() RETURNS trigger AS $body$
            BEGIN
                UPDATE clusters SET generation = generation + 1 WHERE name = NEW.cluster;
                RETURN NEW;
            END
            $body$ LANGUAGE plpgsql",
            // Once per statement for inserted tasks (a RunTask inserts up to 10 in one): every
            // bump is a new version of the cluster's row, which PostgreSQL must prune.
            "-- postgres
            CREATE OR REPLACE FUNCTION skiff_tasks_placed() RETURNS trigger AS $body$
            BEGIN
                UPDATE clusters SET generation = generation + 1
                WHERE name IN (SELECT DISTINCT cluster FROM placed);
                RETURN NULL;
            END
            $body$ LANGUAGE plpgsql",
            "-- postgres
            CREATE TRIGGER placement_task_placed AFTER INSERT ON tasks
            REFERENCING NEW TABLE AS placed
            FOR EACH STATEMENT EXECUTE FUNCTION skiff_tasks_placed()",
            "-- postgres
            CREATE TRIGGER placement_task_stopped AFTER UPDATE OF last_status ON tasks
            FOR EACH ROW WHEN (NEW.last_status = 'STOPPED' AND OLD.last_status != 'STOPPED')
            EXECUTE FUNCTION skiff_placement_changed()",
            "-- postgres
            CREATE TRIGGER placement_instance_added AFTER INSERT ON container_instances
            FOR EACH ROW EXECUTE FUNCTION skiff_placement_changed()",
            "-- postgres
            CREATE TRIGGER placement_instance_changed AFTER UPDATE ON container_instances
            FOR EACH ROW WHEN (OLD.status != NEW.status OR OLD.agent_connected != NEW.agent_connected
              OR OLD.attributes != NEW.attributes OR OLD.resources != NEW.resources)
            EXECUTE FUNCTION skiff_placement_changed()",
        ],
    ),
    (
        4,
        &[
            // Operators' requests about a node's tasks (logs, stats, exec), relayed over the
            // node's own connection: delivered in a sync answer (sent_at), answered by the
            // node (reply), read and deleted by the apid replica that asked.
            "CREATE TABLE IF NOT EXISTS node_requests (
            id TEXT PRIMARY KEY,
            instance TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            sent_at DOUBLE PRECISION,
            reply TEXT
        )",
            "CREATE INDEX IF NOT EXISTS node_requests_instance ON node_requests (instance, sent_at)",
            // RunTask's clientToken: the first answer, returned again for a repeated call.
            "CREATE TABLE IF NOT EXISTS run_task_tokens (
            cluster TEXT NOT NULL,
            token TEXT NOT NULL,
            response TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (cluster, token)
        )",
        ],
    ),
];

/// apid's database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite: writers of this process queue here rather than in SQLite's busy handler, whose
    /// sleeps with backoff make a waiting writer's latency jump (hundreds of ms under load).
    writers: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A transaction holding the store's write lock ([`Store::begin_write`]); it derefs to the
/// connection, as sqlx's `Transaction` does.
#[derive(Debug)]
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    _queued: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    /// Commits, releasing the lock.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// `database` without a password, for messages.
fn redacted(database: &str) -> String {
    match (database.find("://"), database.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &database[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &database[..s + 3], &database[at..])
        }
        _ => database.to_owned(),
    }
}

impl Store {
    /// Opens `database`, a `postgres://` (or `postgresql://`) URL or else a SQLite file's path
    /// (created with its directory), and applies the migrations it lacks.
    pub async fn open(database: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let name = redacted(database);
        let err = |source| StoreError::Open {
            database: name.clone(),
            source,
        };
        let (backend, url) =
            if database.starts_with("postgres://") || database.starts_with("postgresql://") {
                (Backend::Postgres, database.to_owned())
            } else {
                let path = std::path::Path::new(database);
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| err(sqlx::Error::Io(e)))?;
                }
                (Backend::Sqlite, format!("sqlite://{database}?mode=rwc"))
            };
        let opts = AnyConnectOptions::from_str(&url).map_err(err)?;
        let mut pool = AnyPoolOptions::new();
        if backend == Backend::Sqlite {
            pool = pool.after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = FULL",
                        "PRAGMA busy_timeout = 10000",
                        "PRAGMA foreign_keys = ON",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            });
        }
        let pool = pool.connect_with(opts).await.map_err(err)?;
        let store = Self {
            pool,
            backend,
            writers: Default::default(),
        };
        store.migrate(&name).await?;
        Ok(store)
    }

    async fn migrate(&self, name: &str) -> Result<(), StoreError> {
        let err = |version, source| StoreError::Migrate {
            database: name.to_owned(),
            version,
            source,
        };
        for &(version, statements) in MIGRATIONS {
            let mut tx = self.begin_write().await.map_err(|e| err(version, e))?;
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version BIGINT PRIMARY KEY,
                    applied_at DOUBLE PRECISION NOT NULL
                )",
            )
            .execute(&mut *tx)
            .await
            .map_err(|e| err(version, e))?;
            let done: Option<(i64,)> =
                sqlx::query_as("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| err(version, e))?;
            if done.is_some() {
                continue;
            }
            for stmt in statements.iter().filter(|s| self.runs_here(s)) {
                sqlx::query(*stmt)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| err(version, e))?;
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(crate::ecs::now())
                .execute(&mut *tx)
                .await
                .map_err(|e| err(version, e))?;
            tx.commit().await.map_err(|e| err(version, e))?;
            tracing::info!(version, "schema migration applied");
        }
        Ok(())
    }

    /// How much inserting `tasks` tasks in one statement moves their cluster's placement
    /// generation: SQLite's triggers run per row, PostgreSQL's per statement (migration 3).
    pub fn generation_bumps(&self, tasks: usize) -> i64 {
        match (self.backend, tasks) {
            (_, 0) => 0,
            (Backend::Sqlite, n) => n as i64,
            (Backend::Postgres, _) => 1,
        }
    }

    /// Whether a migration statement is for this backend (see [`MIGRATIONS`]).
    fn runs_here(&self, stmt: &str) -> bool {
        let only = |name: &str| stmt.trim_start().starts_with(&format!("-- {name}\n"));
        match self.backend {
            Backend::Sqlite => !only("postgres"),
            Backend::Postgres => !only("sqlite"),
        }
    }

    /// The connection pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A transaction holding the store's write lock from its first statement (see the module
    /// documentation).
    pub async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => {
                let queued = self.writers.clone().lock_owned().await;
                Ok(WriteTx {
                    tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
                    _queued: Some(queued),
                })
            }
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                // `pg_advisory_xact_lock` returns `void`, which the Any driver cannot decode.
                sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS l")
                    .bind(WRITE_LOCK)
                    .execute(&mut *tx)
                    .await?;
                Ok(WriteTx { tx, _queued: None })
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod testing;
