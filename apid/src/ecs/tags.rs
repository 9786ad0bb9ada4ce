//! Tags: TagResource, UntagResource, ListTagsForResource on clusters, task definitions,
//! container instances, services and tasks, found by ARN as ECS finds them. Keys are unique per resource; the `aws:`
//! prefix is reserved, as in ECS; at most 50 tags.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Api, Tag};
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct TagResource {
    resource_arn: String,
    tags: Vec<Tag>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct UntagResource {
    resource_arn: String,
    tag_keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ListTagsForResource {
    resource_arn: String,
}

/// Where a resource's tags are kept: the table, and the key columns with their values.
struct Target {
    table: &'static str,
    /// (column expression, value): values are bound as text.
    keys: Vec<(&'static str, String)>,
}

impl Target {
    /// `key = $first AND ...`, numbering the keys' placeholders from `first`.
    fn conditions(&self, first: usize) -> String {
        let cond: Vec<String> = (self.keys.iter().enumerate())
            .map(|(i, (k, _))| format!("{k} = ${}", first + i))
            .collect();
        cond.join(" AND ")
    }
}

impl Api {
    /// The row an ARN of this apid names.
    fn target(&self, arn: &str) -> Result<Target, ApiError> {
        let prefix = self.arn("");
        let bad = || {
            ApiError::InvalidParameter(format!(
                "resourceArn {arn} is not an ARN of this cluster manager ({prefix}...)"
            ))
        };
        let rest = arn.strip_prefix(&prefix).ok_or_else(bad)?;
        let (kind, path) = rest.split_once('/').ok_or_else(bad)?;
        Ok(match kind {
            "cluster" => Target {
                table: "clusters",
                keys: vec![("name", path.to_owned())],
            },
            "task-definition" => {
                let (family, rev) = path.rsplit_once(':').ok_or_else(bad)?;
                Target {
                    table: "task_definitions",
                    keys: vec![
                        ("family", family.to_owned()),
                        ("CAST(revision AS TEXT)", rev.to_owned()),
                    ],
                }
            }
            "container-instance" => Target {
                table: "container_instances",
                keys: vec![("id", path.rsplit('/').next().unwrap_or(path).to_owned())],
            },
            // `service/<cluster>/<name>` and `task/<cluster>/<id>`.
            "service" | "task" => {
                let (cluster, last) = path.split_once('/').ok_or_else(bad)?;
                let (table, key) = match kind {
                    "service" => ("services", "name"),
                    _ => ("tasks", "id"),
                };
                Target {
                    table,
                    keys: vec![("cluster", cluster.to_owned()), (key, last.to_owned())],
                }
            }
            _ => return Err(bad()),
        })
    }

    async fn tags_of(&self, t: &Target) -> Result<Vec<Tag>, ApiError> {
        let cond = t.conditions(1);
        // Only constant table and column names are spliced in; values are bound.
        let sql = format!("SELECT tags FROM {} WHERE {}", t.table, cond);
        let mut q = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(sql));
        for (_, v) in &t.keys {
            q = q.bind(v);
        }
        let row = q.fetch_optional(self.pool()).await?.ok_or_else(|| {
            ApiError::InvalidParameter("The specified resource could not be found.".into())
        })?;
        Ok(serde_json::from_str(&row.0).unwrap_or_default())
    }

    async fn set_tags(&self, t: &Target, tags: &[Tag]) -> Result<(), ApiError> {
        let cond = t.conditions(2);
        let sql = format!("UPDATE {} SET tags = $1 WHERE {}", t.table, cond);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(serde_json::to_string(tags).expect("tags serialize"));
        for (_, v) in &t.keys {
            q = q.bind(v);
        }
        q.execute(self.pool()).await?;
        Ok(())
    }

    pub(super) async fn tag_resource(&self, r: TagResource) -> Result<Value, ApiError> {
        let t = self.target(&r.resource_arn)?;
        let mut tags = self.tags_of(&t).await?;
        for new in r.tags {
            if new.key.is_empty() || new.key.len() > 128 || new.value.len() > 256 {
                return Err(ApiError::InvalidParameter(
                    "tag keys have 1 to 128 characters, values up to 256".into(),
                ));
            }
            if new.key.to_ascii_lowercase().starts_with("aws:") {
                return Err(ApiError::InvalidParameter(
                    "Tag keys beginning with aws: are reserved.".into(),
                ));
            }
            tags.retain(|x| x.key != new.key);
            tags.push(new);
        }
        if tags.len() > 50 {
            return Err(ApiError::InvalidParameter(
                "a resource has at most 50 tags".into(),
            ));
        }
        self.set_tags(&t, &tags).await?;
        Ok(json!({}))
    }

    pub(super) async fn untag_resource(&self, r: UntagResource) -> Result<Value, ApiError> {
        let t = self.target(&r.resource_arn)?;
        let mut tags = self.tags_of(&t).await?;
        tags.retain(|x| !r.tag_keys.contains(&x.key));
        self.set_tags(&t, &tags).await?;
        Ok(json!({}))
    }

    pub(super) async fn list_tags_for_resource(
        &self,
        r: ListTagsForResource,
    ) -> Result<Value, ApiError> {
        let t = self.target(&r.resource_arn)?;
        Ok(json!({ "tags": self.tags_of(&t).await? }))
    }
}
