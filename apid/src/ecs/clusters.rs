//! Clusters: CreateCluster, DescribeClusters, ListClusters, DeleteCluster. A cluster named
//! `default` exists implicitly for actions that take no cluster, as in ECS; it is created on the
//! first CreateCluster without a name.

use serde::{Deserialize, Serialize};

use super::tasks::PENDING;
use super::{Api, Failure, Tag, now, page};
use crate::error::ApiError;

/// ECS's `Cluster`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    cluster_arn: String,
    cluster_name: String,
    status: String,
    registered_container_instances_count: i64,
    running_tasks_count: i64,
    pending_tasks_count: i64,
    active_services_count: i64,
    statistics: Vec<serde_json::Value>,
    tags: Vec<Tag>,
    settings: Vec<serde_json::Value>,
    capacity_providers: Vec<String>,
    default_capacity_provider_strategy: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CreateCluster {
    cluster_name: Option<String>,
    #[serde(default)]
    tags: Vec<Tag>,
}

#[derive(Debug, Serialize)]
pub(super) struct ClusterResponse {
    cluster: Cluster,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DescribeClusters {
    #[serde(default)]
    clusters: Vec<String>,
    #[serde(default)]
    include: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct DescribeClustersResponse {
    clusters: Vec<Cluster>,
    failures: Vec<Failure>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ListClusters {
    next_token: Option<String>,
    max_results: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListClustersResponse {
    cluster_arns: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DeleteCluster {
    cluster: String,
}

/// The cluster's name from a name or an ARN, checked as ECS checks it.
pub(crate) fn cluster_name(s: &str) -> Result<String, ApiError> {
    let name = match s.strip_prefix("arn:") {
        Some(_) => s
            .split_once(":cluster/")
            .map(|(_, n)| n)
            .ok_or_else(|| ApiError::InvalidParameter(format!("{s} is not a cluster ARN")))?,
        None => s,
    };
    if name.is_empty()
        || name.len() > 255
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::InvalidParameter(
            "Cluster names can be up to 255 letters (uppercase and lowercase), numbers, underscores, and hyphens.".into(),
        ));
    }
    Ok(name.to_owned())
}

/// Name, status, tags, then the counts of instances, running and pending tasks, and active
/// services.
type ClusterRow = (String, String, String, i64, i64, i64, i64);

impl Api {
    fn cluster(
        &self,
        (name, status, tags, instances, running, pending, services): ClusterRow,
    ) -> Cluster {
        Cluster {
            cluster_arn: self.arn(&format!("cluster/{name}")),
            cluster_name: name,
            status,
            registered_container_instances_count: instances,
            running_tasks_count: running,
            pending_tasks_count: pending,
            active_services_count: services,
            statistics: Vec::new(),
            tags: serde_json::from_str(&tags).unwrap_or_default(),
            settings: Vec::new(),
            capacity_providers: Vec::new(),
            default_capacity_provider_strategy: Vec::new(),
        }
    }

    async fn find_cluster(&self, name: &str) -> Result<Option<ClusterRow>, ApiError> {
        Ok(
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT name, status, tags,
                   (SELECT COUNT(*) FROM container_instances i WHERE i.cluster = clusters.name AND i.status != 'INACTIVE'),
                   (SELECT COUNT(*) FROM tasks t WHERE t.cluster = clusters.name AND t.last_status = 'RUNNING'),
                   (SELECT COUNT(*) FROM tasks t WHERE t.cluster = clusters.name AND t.last_status IN {PENDING}),
                   (SELECT COUNT(*) FROM services s WHERE s.cluster = clusters.name AND s.status = 'ACTIVE')
                 FROM clusters WHERE name = $1"
            )))
            .bind(name)
            .fetch_optional(self.pool())
            .await?,
        )
    }

    pub(super) async fn create_cluster(
        &self,
        r: CreateCluster,
    ) -> Result<ClusterResponse, ApiError> {
        let name = cluster_name(r.cluster_name.as_deref().unwrap_or("default"))?;
        let tags = serde_json::to_string(&r.tags).expect("tags serialize");
        // Creating an existing active cluster returns it, as ECS does; an inactive one is
        // made active again.
        sqlx::query(
            "INSERT INTO clusters (name, status, created_at, tags) VALUES ($1, 'ACTIVE', $2, $3)
             ON CONFLICT(name) DO UPDATE SET status = 'ACTIVE' WHERE clusters.status != 'ACTIVE'",
        )
        .bind(&name)
        .bind(now())
        .bind(tags)
        .execute(self.pool())
        .await?;
        let row = self
            .find_cluster(&name)
            .await?
            .ok_or(ApiError::ClusterNotFound)?;
        Ok(ClusterResponse {
            cluster: self.cluster(row),
        })
    }

    pub(super) async fn describe_clusters(
        &self,
        r: DescribeClusters,
    ) -> Result<DescribeClustersResponse, ApiError> {
        for i in &r.include {
            if ![
                "ATTACHMENTS",
                "CONFIGURATIONS",
                "SETTINGS",
                "STATISTICS",
                "TAGS",
            ]
            .contains(&i.as_str())
            {
                return Err(ApiError::InvalidParameter(format!(
                    "include: {i} is not valid"
                )));
            }
        }
        let asked = if r.clusters.is_empty() {
            vec!["default".to_owned()]
        } else {
            r.clusters
        };
        let (mut clusters, mut failures) = (Vec::new(), Vec::new());
        for a in asked {
            let name = cluster_name(&a)?;
            match self.find_cluster(&name).await? {
                Some(row) => clusters.push(self.cluster(row)),
                None => failures.push(Failure {
                    arn: self.arn(&format!("cluster/{name}")),
                    reason: "MISSING".into(),
                }),
            }
        }
        Ok(DescribeClustersResponse { clusters, failures })
    }

    pub(super) async fn list_clusters(
        &self,
        r: ListClusters,
    ) -> Result<ListClustersResponse, ApiError> {
        let names: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM clusters WHERE status = 'ACTIVE' ORDER BY name")
                .fetch_all(self.pool())
                .await?;
        let arns = names
            .into_iter()
            .map(|(n,)| self.arn(&format!("cluster/{n}")))
            .collect();
        let (cluster_arns, next_token) = page(arns, r.next_token.as_deref(), r.max_results, 100)?;
        Ok(ListClustersResponse {
            cluster_arns,
            next_token,
        })
    }

    pub(super) async fn delete_cluster(
        &self,
        r: DeleteCluster,
    ) -> Result<ClusterResponse, ApiError> {
        let name = cluster_name(&r.cluster)?;
        let done = sqlx::query(
            "UPDATE clusters SET status = 'INACTIVE' WHERE name = $1 AND status = 'ACTIVE'",
        )
        .bind(&name)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::ClusterNotFound);
        }
        let row = self
            .find_cluster(&name)
            .await?
            .ok_or(ApiError::ClusterNotFound)?;
        Ok(ClusterResponse {
            cluster: self.cluster(row),
        })
    }
}
