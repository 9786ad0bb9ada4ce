//! Access keys that apid issues, for SigV4: an administrator creates them on the apid host
//! (`skiff-apid keys create`) or remotely (`skiff control keys create`, see [`crate::control`]), hands
//! the pair to an operator's aws CLI profile, and revokes them.
//! Ids look like AWS's (`AKIA` + 16 characters) so SDKs accept them; secrets are 40 characters
//! of base64-ish alphabet, from the kernel's random source.

use serde::Serialize;
use sqlx::AnyPool;

/// An access key.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccessKey {
    /// `AKIA...`.
    pub access_key_id: String,
    /// The secret (shown once, at creation).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub secret_access_key: String,
    /// `Active` or `Revoked`.
    pub status: String,
}

fn random(alphabet: &[u8], n: usize) -> String {
    let mut bytes = vec![0u8; n];
    crate::ecs::random_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| alphabet[usize::from(*b) % alphabet.len()] as char)
        .collect()
}

/// Makes a new key.
pub async fn create(pool: &AnyPool) -> Result<AccessKey, sqlx::Error> {
    let key = AccessKey {
        access_key_id: format!("AKIA{}", random(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)),
        secret_access_key: random(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
            40,
        ),
        status: "Active".into(),
    };
    sqlx::query("INSERT INTO access_keys (id, secret, created_at) VALUES ($1, $2, $3)")
        .bind(&key.access_key_id)
        .bind(&key.secret_access_key)
        .bind(crate::ecs::now())
        .execute(pool)
        .await?;
    Ok(key)
}

/// Revokes `id`; false if there is no such active key.
pub async fn revoke(pool: &AnyPool, id: &str) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("UPDATE access_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(crate::ecs::now())
            .execute(pool)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Every key, without secrets.
pub async fn list(pool: &AnyPool) -> Result<Vec<AccessKey>, sqlx::Error> {
    let rows: Vec<(String, Option<f64>)> =
        sqlx::query_as("SELECT id, revoked_at FROM access_keys ORDER BY created_at, id")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, revoked)| AccessKey {
            access_key_id: id,
            secret_access_key: String::new(),
            status: if revoked.is_some() {
                "Revoked"
            } else {
                "Active"
            }
            .into(),
        })
        .collect())
}

/// The secret of active key `id`.
pub async fn secret(pool: &AnyPool, id: &str) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT secret FROM access_keys WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(s,)| s))
}
