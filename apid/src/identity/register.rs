//! Registration: a node presents an activation (id and code), a PKCS#10 CSR for a key it made
//! and keeps, and what it offers (resources, attributes, agent version). apid checks the CSR's
//! signature first, then takes one use of the activation, records the container instance, and
//! returns a client certificate for it signed by the cluster CA, with the CA certificate.
//!
//! Nothing is recorded for a refused registration: a bad CSR or a wrong, expired or used-up code
//! is refused before any write, and if recording the instance or signing fails after the use was
//! taken, the use is given back and the instance removed. (Recording goes through
//! [`Api::register_instance`], outside the activation's statement: SQLite allows one writer, so
//! the two cannot share a transaction without the instance insert waiting on itself.)

pub use skiff_runtime::protocol::{RegisterRequest, Registered, Renewed};

use super::activations::{self, ActivationError};
use super::ca::{Ca, CaError};
use crate::ecs::{Api, Attribute, NodeInfo};
use crate::error::ApiError;

/// How long a node certificate is valid; nodes renew it ([`renew`]) before it expires.
pub const NODE_CERT_DAYS: i64 = 30;

/// Errors of registration.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The activation refused it (wrong code, expired, used up).
    #[error(transparent)]
    Activation(#[from] ActivationError),
    /// The CSR is not one, or its signature does not verify.
    #[error(transparent)]
    Csr(CaError),
    /// A field of the request is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The activation's cluster no longer exists.
    #[error("cluster {cluster} no longer exists")]
    ClusterGone {
        /// The cluster.
        cluster: String,
    },
    /// apid failed; the detail is logged, not returned.
    #[error("registering in cluster {cluster}: {detail}")]
    Internal {
        /// The cluster.
        cluster: String,
        /// What failed.
        detail: String,
    },
}

fn validate(r: &RegisterRequest) -> Result<(), RegisterError> {
    if r.cpu <= 0 || r.memory <= 0 {
        return Err(RegisterError::Invalid(
            "cpu and memory must be positive".into(),
        ));
    }
    if let Some(a) = r
        .attributes
        .iter()
        .find(|a| a.name.is_empty() || a.name.len() > 128)
    {
        return Err(RegisterError::Invalid(format!(
            "attribute name {:?}: 1 to 128 characters",
            a.name
        )));
    }
    if r.hostname.is_empty() || r.agent_version.is_empty() {
        return Err(RegisterError::Invalid(
            "hostname and agentVersion are required".into(),
        ));
    }
    Ok(())
}

/// Records `cert` as `instance`'s current certificate, and in the list of issued ones that
/// deregistration and rotation revoke from.
async fn record_cert(
    pool: &sqlx::AnyPool,
    instance: &str,
    cert: &super::ca::NodeCert,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO node_certs (serial, instance, issued_at, not_after) VALUES ($1, $2, $3, $4)",
    )
    .bind(&cert.serial)
    .bind(instance)
    .bind(crate::ecs::now())
    .bind(cert.not_after)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE container_instances SET cert_serial = $1 WHERE id = $2")
        .bind(&cert.serial)
        .bind(instance)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// A new certificate for registered `instance`, from a CSR for a key it made (the same or a
/// new one): certificate rotation. The older certificates stay valid until the node has used
/// the new one ([`retire_older_certs`]), so a node that never received the answer is not
/// locked out.
pub async fn renew(
    api: &Api,
    ca: &Ca,
    instance: &str,
    csr_pem: &str,
) -> Result<Renewed, RegisterError> {
    let csr = Ca::parse_csr(csr_pem).map_err(RegisterError::Csr)?;
    let internal = |detail: String| RegisterError::Internal {
        cluster: String::new(),
        detail: format!("renewing the certificate of {instance}: {detail}"),
    };
    let cert = ca
        .sign_node(csr, instance, time::Duration::days(NODE_CERT_DAYS))
        .map_err(|e| internal(format!("signing: {e}")))?;
    record_cert(api.pool(), instance, &cert)
        .await
        .map_err(|e| internal(format!("recording the serial: {e}")))?;
    Ok(Renewed {
        certificate_pem: cert.pem,
        not_after: cert.not_after,
    })
}

/// Revokes `instance`'s certificates older than `serial` once the node has connected with
/// `serial` (its newest): the end of a rotation. True when any was revoked.
pub async fn retire_older_certs(
    pool: &sqlx::AnyPool,
    instance: &str,
    serial: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE node_certs SET revoked_at = $1
         WHERE instance = $2 AND serial != $3 AND revoked_at IS NULL
           AND issued_at < (SELECT issued_at FROM node_certs WHERE serial = $3)",
    )
    .bind(crate::ecs::now())
    .bind(instance)
    .bind(serial)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Registers a node (see the module's documentation).
pub async fn register(api: &Api, ca: &Ca, r: RegisterRequest) -> Result<Registered, RegisterError> {
    validate(&r)?;
    let csr = Ca::parse_csr(&r.csr).map_err(RegisterError::Csr)?;
    let pool = api.pool();
    let cluster = activations::consume(pool, &r.activation_id, &r.activation_code).await?;
    if let Some(want) = &r.cluster
        && *want != cluster
        && !want.ends_with(&format!(":cluster/{cluster}"))
    {
        activations::give_back(pool, &r.activation_id).await?;
        return Err(RegisterError::Invalid(format!(
            "the activation is for cluster {cluster}, not {want}"
        )));
    }
    let node = NodeInfo {
        cpu: r.cpu,
        memory: r.memory,
        reserved_ports: r.reserved_ports,
        attributes: r
            .attributes
            .into_iter()
            .map(|a| Attribute {
                name: a.name,
                value: a.value,
                target_type: None,
                target_id: None,
            })
            .collect(),
        agent_version: r.agent_version,
        hostname: r.hostname,
    };
    let internal = |detail: String| RegisterError::Internal {
        cluster: cluster.clone(),
        detail,
    };
    let id = match api.register_instance(&cluster, &node).await {
        Ok(id) => id,
        Err(e) => {
            activations::give_back(pool, &r.activation_id).await?;
            return Err(match e {
                ApiError::ClusterNotFound => RegisterError::ClusterGone {
                    cluster: cluster.clone(),
                },
                other => internal(format!("recording the instance: {other:?}")),
            });
        }
    };
    let issued: Result<_, String> = async {
        let cert = ca
            .sign_node(csr, &id, time::Duration::days(NODE_CERT_DAYS))
            .map_err(|e| format!("signing: {e}"))?;
        record_cert(pool, &id, &cert)
            .await
            .map_err(|e| format!("recording the serial: {e}"))?;
        Ok(cert)
    }
    .await;
    let cert = match issued {
        Ok(cert) => cert,
        Err(detail) => {
            let undo = sqlx::query("DELETE FROM container_instances WHERE id = $1")
                .bind(&id)
                .execute(pool)
                .await;
            activations::give_back(pool, &r.activation_id).await?;
            return Err(internal(format!("{detail} (undoing: {undo:?})")));
        }
    };
    let cfg = api.config();
    Ok(Registered {
        container_instance_arn: format!(
            "arn:aws:ecs:{}:{}:container-instance/{cluster}/{id}",
            cfg.region, cfg.account_id
        ),
        container_instance_id: id,
        certificate_pem: cert.pem,
        ca_pem: ca.cert_pem().to_owned(),
    })
}
