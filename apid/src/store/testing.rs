//! Stores for tests: a fresh SQLite file, or a fresh database on a PostgreSQL server that this
//! test process starts once (`apid/tests/postgres.sh`, which stops the server and deletes its
//! data when the process exits). [`both_stores!`] runs a test body against each, so the same
//! suite covers both backends.
//!
//! Without PostgreSQL installed the PostgreSQL variants say so and pass, unless
//! `SKIFF_REQUIRE_PRIVILEGED=1` (as CI sets) turns that into a failure.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use super::{Backend, Store};

/// What keeps a test's store alive: the SQLite file's directory.
pub(crate) struct Guard {
    _dir: Option<tempfile::TempDir>,
}

/// The server and its admin URL, started on first use and kept for the process's life.
static SERVER: OnceLock<Result<(Child, String), String>> = OnceLock::new();

fn server() -> Result<&'static str, &'static str> {
    let started = SERVER.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/postgres.sh");
        let mut child = Command::new(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("running {script}: {e}"))?;
        let mut line = String::new();
        let out = child.stdout.take().expect("piped");
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| format!("reading {script}'s URL: {e}"))?;
        if !line.starts_with("postgres://") {
            let status = child.wait().map_err(|e| e.to_string())?;
            return Err(format!("{script} did not start PostgreSQL ({status})"));
        }
        Ok((child, line.trim().to_owned()))
    });
    started
        .as_ref()
        .map(|(_, url)| url.as_str())
        .map_err(String::as_str)
}

/// A fresh, migrated store of `backend`, or `None` (having said why) when PostgreSQL cannot
/// run here and CI does not require it.
pub(crate) async fn store(backend: Backend) -> Option<(Guard, Store)> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("apid.db");
            let store = Store::open(path.to_str().unwrap()).await.unwrap();
            Some((Guard { _dir: Some(dir) }, store))
        }
        Backend::Postgres => {
            let admin = match server() {
                Ok(url) => url,
                Err(why) => {
                    assert!(
                        std::env::var("SKIFF_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
                        "SKIFF_REQUIRE_PRIVILEGED=1 and PostgreSQL cannot run: {why}"
                    );
                    eprintln!("SKIPPED on PostgreSQL: {why}");
                    return None;
                }
            };
            let name = format!("t{}", crate::ecs::random_id());
            sqlx::any::install_default_drivers();
            let admin_pool = sqlx::AnyPool::connect(admin).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&admin_pool)
                .await
                .unwrap();
            admin_pool.close().await;
            let url = admin.replacen("/postgres?", &format!("/{name}?"), 1);
            Some((Guard { _dir: None }, Store::open(&url).await.unwrap()))
        }
    }
}

/// Runs each `async fn name(store: Store)` as two tests, `name::sqlite` and `name::postgres`.
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    let (_g, s) = $crate::store::testing::store($crate::store::Backend::Sqlite)
                        .await
                        .expect("SQLite always runs");
                    super::$name(s).await;
                }
                #[tokio::test]
                async fn postgres() {
                    if let Some((_g, s)) =
                        $crate::store::testing::store($crate::store::Backend::Postgres).await
                    {
                        super::$name(s).await;
                    }
                }
            }
        )*
    };
}
pub(crate) use both_stores;
