//! Task definitions: Register, Describe, List, ListFamilies, Deregister, Delete. A definition is
//! validated by the node runtime's own parser (`skiff_runtime::taskdef`), so what apid accepts
//! is exactly what a node can run, and refusals name the field as skiffd's do. The JSON is kept
//! as registered and returned with ECS's added fields (ARN, revision, status, times).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Api, Failure, Tag, now, page};
use crate::error::ApiError;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TaskDefinitionResponse {
    task_definition: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<Vec<Tag>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DescribeTaskDefinition {
    task_definition: String,
    #[serde(default)]
    include: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ListTaskDefinitions {
    family_prefix: Option<String>,
    status: Option<String>,
    sort: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListTaskDefinitionsResponse {
    task_definition_arns: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ListTaskDefinitionFamilies {
    family_prefix: Option<String>,
    status: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListTaskDefinitionFamiliesResponse {
    families: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DeregisterTaskDefinition {
    task_definition: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DeleteTaskDefinitions {
    task_definitions: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DeleteTaskDefinitionsResponse {
    task_definitions: Vec<Value>,
    failures: Vec<Failure>,
}

type Row = (String, i64, String, String, String, f64, Option<f64>);

const COLUMNS: &str =
    "family, revision, status, body, tags, registered_at, deregistered_at FROM task_definitions";

/// `family`, `family:revision` or an ARN ending in `task-definition/family[:revision]`.
fn parse_ref(s: &str) -> Result<(String, Option<i64>), ApiError> {
    let s = s.rsplit_once(":task-definition/").map_or(s, |(_, r)| r);
    let (family, revision) = match s.rsplit_once(':') {
        Some((f, r)) => (
            f,
            Some(r.parse::<i64>().ok().filter(|&r| r > 0).ok_or_else(|| {
                ApiError::Client(format!("Invalid revision number. Number: {r}"))
            })?),
        ),
        None => (s, None),
    };
    if family.is_empty() {
        return Err(ApiError::Client(
            "Task definition family cannot be empty.".into(),
        ));
    }
    Ok((family.to_owned(), revision))
}

impl Api {
    pub(crate) fn task_definition_arn(&self, family: &str, revision: i64) -> String {
        self.arn(&format!("task-definition/{family}:{revision}"))
    }

    /// The definition as ECS describes it: what was registered plus ECS's fields.
    fn task_definition(
        &self,
        (family, revision, status, body, _, registered_at, deregistered_at): &Row,
    ) -> Value {
        let mut v: Map<String, Value> = serde_json::from_str(body).unwrap_or_default();
        v.insert(
            "taskDefinitionArn".into(),
            self.task_definition_arn(family, *revision).into(),
        );
        v.insert("revision".into(), (*revision).into());
        v.insert("status".into(), status.clone().into());
        v.insert("registeredAt".into(), (*registered_at).into());
        if let Some(d) = deregistered_at {
            v.insert("deregisteredAt".into(), (*d).into());
        }
        let mut compat = vec![Value::from("EC2"), Value::from("EXTERNAL")];
        if v.get("requiresCompatibilities")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|c| c == "FARGATE"))
        {
            compat.push("FARGATE".into());
        }
        v.insert("compatibilities".into(), compat.into());
        v.insert("requiresAttributes".into(), Value::Array(Vec::new()));
        Value::Object(v)
    }

    async fn find(&self, family: &str, revision: Option<i64>) -> Result<Option<Row>, ApiError> {
        let q = match revision {
            Some(_) => format!("SELECT {COLUMNS} WHERE family = $1 AND revision = $2"),
            // The latest ACTIVE revision, as ECS resolves a bare family.
            None => format!(
                "SELECT {COLUMNS} WHERE family = $1 AND status = 'ACTIVE' ORDER BY revision DESC LIMIT 1"
            ),
        };
        // Only constants are spliced into these statements; values are bound.
        let mut q = sqlx::query_as(sqlx::AssertSqlSafe(q)).bind(family);
        if let Some(r) = revision {
            q = q.bind(r);
        }
        Ok(q.fetch_optional(self.pool()).await?)
    }

    /// The ACTIVE definition `s` names (family, `family:revision` or ARN), as RunTask and
    /// StartTask resolve it: its family, revision and parsed body.
    pub(super) async fn runnable_task_definition(
        &self,
        s: &str,
    ) -> Result<(String, i64, skiff_runtime::taskdef::TaskDefinition), ApiError> {
        let (family, revision) = parse_ref(s)?;
        let (family, revision, status, body, ..) = self
            .find(&family, revision)
            .await?
            .ok_or_else(|| ApiError::Client("TaskDefinition not found.".into()))?;
        if status != "ACTIVE" {
            return Err(ApiError::Client(format!(
                "TaskDefinition {family}:{revision} is inactive."
            )));
        }
        let def = skiff_runtime::taskdef::TaskDefinition::from_json(&body).map_err(|e| {
            ApiError::Server(format!("stored task definition {family}:{revision}: {e}"))
        })?;
        Ok((family, revision, def))
    }

    pub(super) async fn register_task_definition(
        &self,
        body: &[u8],
    ) -> Result<TaskDefinitionResponse, ApiError> {
        let mut input: Map<String, Value> =
            serde_json::from_slice(body).map_err(|e| ApiError::Serialization(e.to_string()))?;
        let tags: Vec<Tag> = match input.remove("tags") {
            Some(t) => serde_json::from_value(t)
                .map_err(|e| ApiError::InvalidParameter(format!("tags: {e}")))?,
            None => Vec::new(),
        };
        let text = Value::Object(input).to_string();
        let def = skiff_runtime::taskdef::TaskDefinition::from_json(&text)
            .map_err(|e| ApiError::Client(e.to_string()))?;
        let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO task_definitions (family, revision, status, body, tags, registered_at)
             SELECT $1, COALESCE(MAX(revision), 0) + 1, 'ACTIVE', $2, $3, $4 FROM task_definitions WHERE family = $1
             RETURNING {}",
            COLUMNS.trim_end_matches(" FROM task_definitions")
        )))
        .bind(&def.family)
        .bind(&text)
        .bind(serde_json::to_string(&tags).expect("tags serialize"))
        .bind(now())
        .fetch_one(self.pool())
        .await?;
        Ok(TaskDefinitionResponse {
            task_definition: self.task_definition(&row),
            tags: Some(tags),
        })
    }

    pub(super) async fn describe_task_definition(
        &self,
        r: DescribeTaskDefinition,
    ) -> Result<TaskDefinitionResponse, ApiError> {
        let (family, revision) = parse_ref(&r.task_definition)?;
        let row = self
            .find(&family, revision)
            .await?
            .ok_or_else(|| ApiError::Client("Unable to describe task definition.".into()))?;
        let tags = r
            .include
            .iter()
            .any(|i| i == "TAGS")
            .then(|| serde_json::from_str(&row.4).unwrap_or_default());
        Ok(TaskDefinitionResponse {
            task_definition: self.task_definition(&row),
            tags,
        })
    }

    pub(super) async fn list_task_definitions(
        &self,
        r: ListTaskDefinitions,
    ) -> Result<ListTaskDefinitionsResponse, ApiError> {
        let status = r.status.as_deref().unwrap_or("ACTIVE");
        if !["ACTIVE", "INACTIVE", "DELETE_IN_PROGRESS"].contains(&status) {
            return Err(ApiError::InvalidParameter(format!(
                "status {status} is not valid"
            )));
        }
        let order = match r.sort.as_deref().unwrap_or("ASC") {
            "ASC" => "ASC",
            "DESC" => "DESC",
            other => {
                return Err(ApiError::InvalidParameter(format!(
                    "sort {other} is not valid"
                )));
            }
        };
        let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT family, revision FROM task_definitions WHERE status = $1 AND substr(family, 1, length($2)) = $2
             ORDER BY family {order}, revision {order}"
        )))
        .bind(status)
        .bind(r.family_prefix.as_deref().unwrap_or(""))
        .fetch_all(self.pool())
        .await?;
        let arns = rows
            .iter()
            .map(|(f, rev)| self.task_definition_arn(f, *rev))
            .collect();
        let (task_definition_arns, next_token) =
            page(arns, r.next_token.as_deref(), r.max_results, 100)?;
        Ok(ListTaskDefinitionsResponse {
            task_definition_arns,
            next_token,
        })
    }

    pub(super) async fn list_task_definition_families(
        &self,
        r: ListTaskDefinitionFamilies,
    ) -> Result<ListTaskDefinitionFamiliesResponse, ApiError> {
        // ACTIVE: families with an active revision; INACTIVE: families with none; ALL: all.
        let having = match r.status.as_deref().unwrap_or("ACTIVE") {
            "ACTIVE" => "HAVING SUM(CASE WHEN status = 'ACTIVE' THEN 1 ELSE 0 END) > 0",
            "INACTIVE" => "HAVING SUM(CASE WHEN status = 'ACTIVE' THEN 1 ELSE 0 END) = 0",
            "ALL" => "",
            other => {
                return Err(ApiError::InvalidParameter(format!(
                    "status {other} is not valid"
                )));
            }
        };
        let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT family FROM task_definitions WHERE substr(family, 1, length($1)) = $1 GROUP BY family {having} ORDER BY family"
        )))
        .bind(r.family_prefix.as_deref().unwrap_or(""))
        .fetch_all(self.pool())
        .await?;
        let (families, next_token) = page(
            rows.into_iter().map(|(f,)| f).collect(),
            r.next_token.as_deref(),
            r.max_results,
            100,
        )?;
        Ok(ListTaskDefinitionFamiliesResponse {
            families,
            next_token,
        })
    }

    pub(super) async fn deregister_task_definition(
        &self,
        r: DeregisterTaskDefinition,
    ) -> Result<TaskDefinitionResponse, ApiError> {
        let (family, revision) = parse_ref(&r.task_definition)?;
        let revision = revision.ok_or_else(|| {
            ApiError::Client(
                "A revision is required to deregister a task definition (family:revision).".into(),
            )
        })?;
        sqlx::query(
            "UPDATE task_definitions SET status = 'INACTIVE', deregistered_at = $1 WHERE family = $2 AND revision = $3 AND status = 'ACTIVE'",
        )
        .bind(now())
        .bind(&family)
        .bind(revision)
        .execute(self.pool())
        .await?;
        let row = self.find(&family, Some(revision)).await?.ok_or_else(|| {
            ApiError::Client("The specified task definition does not exist.".into())
        })?;
        Ok(TaskDefinitionResponse {
            task_definition: self.task_definition(&row),
            tags: None,
        })
    }

    pub(super) async fn delete_task_definitions(
        &self,
        r: DeleteTaskDefinitions,
    ) -> Result<DeleteTaskDefinitionsResponse, ApiError> {
        if r.task_definitions.is_empty() || r.task_definitions.len() > 10 {
            return Err(ApiError::InvalidParameter(
                "taskDefinitions: 1 to 10 entries".into(),
            ));
        }
        let (mut task_definitions, mut failures) = (Vec::new(), Vec::new());
        for t in &r.task_definitions {
            let (family, revision) = parse_ref(t)?;
            let Some(revision) = revision else {
                failures.push(Failure {
                    arn: t.clone(),
                    reason: "The task definition revision is required.".into(),
                });
                continue;
            };
            match self.find(&family, Some(revision)).await? {
                None => failures.push(Failure {
                    arn: self.task_definition_arn(&family, revision),
                    reason: "The specified task definition does not exist.".into(),
                }),
                Some(row) if row.2 == "ACTIVE" => failures.push(Failure {
                    arn: self.task_definition_arn(&family, revision),
                    reason: "The specified task definition is still in ACTIVE status. Please deregister the target and try again.".into(),
                }),
                Some(mut row) => {
                    sqlx::query("DELETE FROM task_definitions WHERE family = $1 AND revision = $2")
                        .bind(&family)
                        .bind(revision)
                        .execute(self.pool())
                        .await?;
                    row.2 = "DELETE_IN_PROGRESS".into();
                    task_definitions.push(self.task_definition(&row));
                }
            }
        }
        Ok(DeleteTaskDefinitionsResponse {
            task_definitions,
            failures,
        })
    }
}
