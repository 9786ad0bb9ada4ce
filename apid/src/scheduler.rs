//! The scheduler: one loop per apid that, while this apid holds the scheduling lease, marks
//! silent nodes disconnected and keeps every service at its tasks
//! ([`Api::reconcile_services`]). It runs on each change apid makes (a RunTask, a node's
//! report) and at least every second.
//!
//! Several apid replicas sharing a PostgreSQL store all serve the API, but only the lease's
//! holder schedules. The lease is a row renewed on every pass and valid [`LEASE_SECONDS`];
//! when its holder dies another replica takes it once it expires. A holder that stalled past
//! its lease cannot place anything: placement checks the lease in the same write-locked
//! transaction that records the tasks ([`holds_lease`]), so no task is placed twice; stopping
//! a task twice is harmless.

use crate::ecs::{Api, now};
use crate::error::ApiError;

/// How long a lease lasts without renewal.
pub const LEASE_SECONDS: f64 = 10.0;

/// Whether `holder` holds the lease now, read on `conn` (inside the caller's write lock).
pub async fn holds_lease(
    conn: &mut sqlx::AnyConnection,
    holder: &str,
) -> Result<bool, sqlx::Error> {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT 1 FROM scheduler_lease WHERE id = 1 AND holder = $1 AND expires_at > $2",
    )
    .bind(holder)
    .bind(now())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.is_some())
}

/// The scheduling loop of one apid.
#[derive(Debug)]
pub struct Scheduler {
    api: Api,
    holder: String,
    /// Whether the last [`Scheduler::lease`] held it (to log changes once).
    holding: std::sync::atomic::AtomicBool,
}

impl Scheduler {
    /// A scheduler over `api`, with a fresh holder id.
    pub fn new(api: Api) -> Self {
        let holder = format!(
            "apid-{}-{}",
            std::process::id(),
            &crate::ecs::random_id()[..8]
        );
        Self {
            api,
            holder,
            holding: false.into(),
        }
    }

    /// This scheduler's holder id.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes the lease if it is free or expired, or renews it if this scheduler holds it;
    /// whether it does now.
    pub async fn lease(&self) -> Result<bool, sqlx::Error> {
        let mut tx = self.api.store().begin_write().await?;
        let at = now();
        let row: Option<(String, f64)> =
            sqlx::query_as("SELECT holder, expires_at FROM scheduler_lease WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await?;
        let mine = match row {
            None => {
                sqlx::query(
                    "INSERT INTO scheduler_lease (id, holder, expires_at) VALUES (1, $1, $2)",
                )
                .bind(&self.holder)
                .bind(at + LEASE_SECONDS)
                .execute(&mut *tx)
                .await?;
                true
            }
            Some((h, expires)) if h == self.holder || expires <= at => {
                sqlx::query("UPDATE scheduler_lease SET holder = $1, expires_at = $2 WHERE id = 1")
                    .bind(&self.holder)
                    .bind(at + LEASE_SECONDS)
                    .execute(&mut *tx)
                    .await?;
                true
            }
            Some(_) => false,
        };
        tx.commit().await?;
        let was = self
            .holding
            .swap(mine, std::sync::atomic::Ordering::Relaxed);
        if mine && !was {
            tracing::info!(holder = %self.holder, "took the scheduling lease");
        } else if was && !mine {
            tracing::warn!(holder = %self.holder, "lost the scheduling lease");
        }
        Ok(mine)
    }

    /// One pass: marks instances silent for `heartbeat_timeout_seconds` disconnected, then
    /// schedules every service.
    pub async fn pass(&self) -> Result<(), ApiError> {
        let timeout = self.api.config().heartbeat_timeout_seconds as f64;
        let done = sqlx::query(
            "UPDATE container_instances SET agent_connected = 0
             WHERE agent_connected = 1 AND status != 'INACTIVE' AND last_seen < $1",
        )
        .bind(now() - timeout)
        .execute(self.api.pool())
        .await?;
        if done.rows_affected() > 0 {
            tracing::info!(instances = done.rows_affected(), "instances disconnected");
        }
        self.api.reconcile_services(&self.holder).await
    }

    /// Runs forever: a pass whenever apid changes something and at least every second, while
    /// this apid holds the lease.
    pub async fn run(self) -> std::convert::Infallible {
        let mut changes = self.api.subscribe();
        loop {
            match self.lease().await {
                Ok(true) => {
                    if let Err(e) = self.pass().await {
                        tracing::warn!(error = %e, "scheduling pass");
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "the scheduling lease"),
            }
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), changes.changed()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApidConfig;
    use crate::store::Store;
    use crate::store::testing::both_stores;

    async fn one_holder_at_a_time_and_a_takeover_after_expiry(store: Store) {
        let api = Api::new(store, ApidConfig::default());
        let (a, b) = (Scheduler::new(api.clone()), Scheduler::new(api.clone()));
        assert!(a.lease().await.unwrap());
        assert!(!b.lease().await.unwrap(), "held by a");
        assert!(a.lease().await.unwrap(), "renewed");
        let mut conn = api.pool().acquire().await.unwrap();
        assert!(holds_lease(&mut conn, a.holder()).await.unwrap());
        assert!(!holds_lease(&mut conn, b.holder()).await.unwrap());
        // a dies: its lease runs out and b takes it; a, back, is fenced off.
        sqlx::query("UPDATE scheduler_lease SET expires_at = $1")
            .bind(now() - 1.0)
            .execute(api.pool())
            .await
            .unwrap();
        assert!(b.lease().await.unwrap());
        assert!(!a.lease().await.unwrap());
        assert!(!holds_lease(&mut conn, a.holder()).await.unwrap());
    }

    both_stores!(one_holder_at_a_time_and_a_takeover_after_expiry);
}
