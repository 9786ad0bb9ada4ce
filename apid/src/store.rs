//! apid's state in SQLite: one file, WAL, nothing to install. Tables are created at open
//! (`CREATE TABLE IF NOT EXISTS`); task definitions keep their registered JSON as it was given,
//! so describing one returns what was registered.

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};

/// Errors of opening the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or prepared.
    #[error("database {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS clusters (
        name TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        tags TEXT NOT NULL DEFAULT '[]'
    )",
    "CREATE TABLE IF NOT EXISTS task_definitions (
        family TEXT NOT NULL,
        revision INTEGER NOT NULL,
        status TEXT NOT NULL,
        body TEXT NOT NULL,
        tags TEXT NOT NULL DEFAULT '[]',
        registered_at REAL NOT NULL,
        deregistered_at REAL,
        PRIMARY KEY (family, revision)
    )",
    "CREATE TABLE IF NOT EXISTS container_instances (
        id TEXT PRIMARY KEY,
        cluster TEXT NOT NULL,
        status TEXT NOT NULL,
        agent_connected INTEGER NOT NULL DEFAULT 0,
        registered_at REAL NOT NULL,
        resources TEXT NOT NULL,
        attributes TEXT NOT NULL DEFAULT '[]',
        version_info TEXT NOT NULL DEFAULT '{}',
        cert_serial TEXT,
        tags TEXT NOT NULL DEFAULT '[]'
    )",
    "CREATE TABLE IF NOT EXISTS access_keys (
        id TEXT PRIMARY KEY,
        secret TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL
    )",
    // identity/: the cluster CA (one row) and ECS Anywhere-style activations (codes hashed).
    "CREATE TABLE IF NOT EXISTS ca (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        cert_pem TEXT NOT NULL,
        key_pem TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS activations (
        id TEXT PRIMARY KEY,
        cluster TEXT NOT NULL,
        code_hash TEXT NOT NULL,
        remaining INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        created_at REAL NOT NULL
    )",
    // Tasks: placed on an instance at RunTask/StartTask, reserving cpu, memory and host ports
    // until their last status is STOPPED.
    "CREATE TABLE IF NOT EXISTS tasks (
        id TEXT PRIMARY KEY,
        cluster TEXT NOT NULL,
        container_instance TEXT NOT NULL,
        family TEXT NOT NULL,
        revision INTEGER NOT NULL,
        desired_status TEXT NOT NULL,
        last_status TEXT NOT NULL,
        cpu INTEGER NOT NULL,
        memory INTEGER NOT NULL,
        host_ports TEXT NOT NULL DEFAULT '[]',
        started_by TEXT,
        task_group TEXT NOT NULL,
        created_at REAL NOT NULL,
        stopping_at REAL,
        stopped_reason TEXT,
        stop_code TEXT,
        version INTEGER NOT NULL DEFAULT 1,
        containers TEXT NOT NULL DEFAULT '[]',
        overrides TEXT NOT NULL DEFAULT '{}',
        tags TEXT NOT NULL DEFAULT '[]'
    )",
    "CREATE INDEX IF NOT EXISTS tasks_by_cluster ON tasks (cluster, last_status)",
    "CREATE INDEX IF NOT EXISTS tasks_by_instance ON tasks (container_instance, last_status)",
];

/// Opens (creating) the database at `path` and its tables.
pub async fn open(path: &Path) -> Result<SqlitePool, StoreError> {
    let err = |source| StoreError::Open {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(sqlx::Error::Io(e)))?;
    }
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .map_err(err)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(std::time::Duration::from_secs(10));
    let pool = SqlitePool::connect_with(opts).await.map_err(err)?;
    for stmt in SCHEMA {
        sqlx::query(*stmt).execute(&pool).await.map_err(err)?;
    }
    Ok(pool)
}
