//! Activations, as ECS Anywhere's SSM activations: an operator creates one for a cluster with a
//! count limit and an expiry (`skiff-apid activations create`) and hands its id and code to the nodes'
//! installs. Each node registering uses one; a code is checked in constant time against its
//! SHA-256 (the code itself is shown once and never stored), and a use is taken in one SQL
//! statement, so two nodes racing for the last use cannot both get it.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::AnyPool;
use subtle::ConstantTimeEq;

/// The most registrations one activation may allow (ECS Anywhere's limit).
pub const MAX_COUNT: i64 = 1000;

/// Errors of activations.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// No such activation, or the code is not its code (not told apart, so that ids cannot be
    /// probed).
    #[error("the activation id or code is not valid")]
    Invalid,
    /// The activation has expired.
    #[error("activation {id} expired")]
    Expired {
        /// The activation.
        id: String,
    },
    /// Every registration the activation allowed has been used.
    #[error("activation {id} has no registrations left")]
    Exhausted {
        /// The activation.
        id: String,
    },
    /// The cluster to create an activation for does not exist.
    #[error("cluster {cluster} not found")]
    ClusterNotFound {
        /// The cluster.
        cluster: String,
    },
    /// The count is out of range.
    #[error("count {count}: 1 to {MAX_COUNT}")]
    Count {
        /// What was asked.
        count: i64,
    },
    /// The database failed.
    #[error("activations in the database")]
    Store(#[source] sqlx::Error),
}

/// An activation as created: the code is shown only here.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NewActivation {
    /// The id.
    pub activation_id: String,
    /// The code, secret.
    pub activation_code: String,
}

/// An activation as listed.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Activation {
    /// The id.
    pub activation_id: String,
    /// The cluster its nodes join.
    pub cluster: String,
    /// Registrations left.
    pub remaining: i64,
    /// Epoch seconds.
    pub expires_at: f64,
    /// Whether it has expired.
    pub expired: bool,
}

use crate::ecs::now;

fn hash(code: &str) -> String {
    hex::encode(Sha256::digest(code.as_bytes()))
}

/// Creates an activation for `cluster` (which must be active) allowing `count` registrations
/// until `valid_for` from now.
pub async fn create(
    pool: &AnyPool,
    cluster: &str,
    count: i64,
    valid_for: std::time::Duration,
) -> Result<NewActivation, ActivationError> {
    if !(1..=MAX_COUNT).contains(&count) {
        return Err(ActivationError::Count { count });
    }
    let found: Option<(String,)> =
        sqlx::query_as("SELECT name FROM clusters WHERE name = $1 AND status = 'ACTIVE'")
            .bind(cluster)
            .fetch_optional(pool)
            .await
            .map_err(ActivationError::Store)?;
    if found.is_none() {
        return Err(ActivationError::ClusterNotFound {
            cluster: cluster.to_owned(),
        });
    }
    let a = NewActivation {
        activation_id: crate::ecs::random_id(),
        // 128 bits from the kernel's random source.
        activation_code: crate::ecs::random_id(),
    };
    let created = now();
    sqlx::query(
        "INSERT INTO activations (id, cluster, code_hash, remaining, expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&a.activation_id)
    .bind(cluster)
    .bind(hash(&a.activation_code))
    .bind(count)
    .bind(created + valid_for.as_secs_f64())
    .bind(created)
    .execute(pool)
    .await
    .map_err(ActivationError::Store)?;
    Ok(a)
}

/// Every activation, oldest first.
pub async fn list(pool: &AnyPool) -> Result<Vec<Activation>, ActivationError> {
    let rows: Vec<(String, String, i64, f64)> = sqlx::query_as(
        "SELECT id, cluster, remaining, expires_at FROM activations ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await
    .map_err(ActivationError::Store)?;
    let t = now();
    Ok(rows
        .into_iter()
        .map(
            |(activation_id, cluster, remaining, expires_at)| Activation {
                activation_id,
                cluster,
                remaining,
                expires_at,
                expired: expires_at <= t,
            },
        )
        .collect())
}

/// Deletes activation `id`; false if there is none.
pub async fn delete(pool: &AnyPool, id: &str) -> Result<bool, ActivationError> {
    let done = sqlx::query("DELETE FROM activations WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map_err(ActivationError::Store)?;
    Ok(done.rows_affected() == 1)
}

/// Checks `code` for activation `id` and takes one use of it; the cluster its node joins.
/// The use is taken by one conditional `UPDATE`, so the count never goes below zero whatever
/// races it.
pub async fn consume(pool: &AnyPool, id: &str, code: &str) -> Result<String, ActivationError> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT cluster, code_hash FROM activations WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(ActivationError::Store)?;
    // A missing activation still costs a full comparison, against a hash no code has.
    let (cluster, stored) = row.unwrap_or_else(|| (String::new(), "-".repeat(64)));
    let given = hash(code);
    let matches: bool = given.as_bytes().ct_eq(stored.as_bytes()).into();
    if !matches {
        return Err(ActivationError::Invalid);
    }
    let t = now();
    let taken = sqlx::query(
        "UPDATE activations SET remaining = remaining - 1 WHERE id = $1 AND remaining > 0 AND expires_at > $2",
    )
    .bind(id)
    .bind(t)
    .execute(pool)
    .await
    .map_err(ActivationError::Store)?;
    if taken.rows_affected() == 1 {
        return Ok(cluster);
    }
    let (remaining, expires_at): (i64, f64) =
        sqlx::query_as("SELECT remaining, expires_at FROM activations WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(ActivationError::Store)?
            .ok_or(ActivationError::Invalid)?;
    let id = id.to_owned();
    Err(if expires_at <= t {
        ActivationError::Expired { id }
    } else {
        debug_assert!(remaining <= 0);
        ActivationError::Exhausted { id }
    })
}

/// Gives back the use [`consume`] took, when the registration failed after it.
pub async fn give_back(pool: &AnyPool, id: &str) -> Result<(), ActivationError> {
    sqlx::query("UPDATE activations SET remaining = remaining + 1 WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map_err(ActivationError::Store)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::Store;
    use crate::store::testing::both_stores;

    async fn cluster(pool: &AnyPool, name: &str) {
        sqlx::query("INSERT INTO clusters (name, status, created_at) VALUES ($1, 'ACTIVE', 0)")
            .bind(name)
            .execute(pool)
            .await
            .unwrap();
    }

    async fn codes_are_checked_counted_and_expire(store: Store) {
        let pool = store.pool().clone();
        cluster(&pool, "edge").await;
        let a = create(&pool, "edge", 2, Duration::from_secs(3600))
            .await
            .unwrap();
        // Only the hash is kept.
        let (stored,): (String,) = sqlx::query_as("SELECT code_hash FROM activations")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_ne!(stored, a.activation_code);
        assert!(matches!(
            consume(&pool, &a.activation_id, "wrong").await,
            Err(ActivationError::Invalid)
        ));
        assert!(matches!(
            consume(&pool, "nope", &a.activation_code).await,
            Err(ActivationError::Invalid)
        ));
        // A wrong code takes no use.
        for _ in 0..2 {
            assert_eq!(
                consume(&pool, &a.activation_id, &a.activation_code)
                    .await
                    .unwrap(),
                "edge"
            );
        }
        let e = consume(&pool, &a.activation_id, &a.activation_code)
            .await
            .unwrap_err();
        assert!(matches!(e, ActivationError::Exhausted { .. }), "{e}");
        give_back(&pool, &a.activation_id).await.unwrap();
        consume(&pool, &a.activation_id, &a.activation_code)
            .await
            .unwrap();

        let old = create(&pool, "edge", 5, Duration::ZERO).await.unwrap();
        let e = consume(&pool, &old.activation_id, &old.activation_code)
            .await
            .unwrap_err();
        assert!(matches!(e, ActivationError::Expired { .. }), "{e}");
        let l = list(&pool).await.unwrap();
        assert_eq!(l.len(), 2);
        assert!(l[1].expired && l[1].remaining == 5);
        assert!(delete(&pool, &old.activation_id).await.unwrap());
        assert!(!delete(&pool, &old.activation_id).await.unwrap());
    }

    async fn an_activation_needs_a_cluster_and_a_sane_count(store: Store) {
        let pool = store.pool().clone();
        let e = create(&pool, "nope", 1, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        cluster(&pool, "edge").await;
        for count in [0, MAX_COUNT + 1] {
            assert!(matches!(
                create(&pool, "edge", count, Duration::from_secs(60)).await,
                Err(ActivationError::Count { .. })
            ));
        }
    }

    async fn racing_nodes_never_take_more_than_the_count(store: Store) {
        let pool = store.pool().clone();
        cluster(&pool, "edge").await;
        let a = create(&pool, "edge", 3, Duration::from_secs(60))
            .await
            .unwrap();
        let mut joins = Vec::new();
        for _ in 0..10 {
            let (pool, id, code) = (
                pool.clone(),
                a.activation_id.clone(),
                a.activation_code.clone(),
            );
            joins.push(tokio::spawn(
                async move { consume(&pool, &id, &code).await },
            ));
        }
        let mut ok = 0;
        for j in joins {
            ok += usize::from(j.await.unwrap().is_ok());
        }
        assert_eq!(ok, 3);
    }

    both_stores!(
        codes_are_checked_counted_and_expire,
        an_activation_needs_a_cluster_and_a_sane_count,
        racing_nodes_never_take_more_than_the_count,
    );
}
