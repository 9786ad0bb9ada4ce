//! The agent's decisions, as pure functions of what apid says and what the node holds, so that
//! every case is a unit test: what to start and stop ([`plan`]), what a task's record reports
//! ([`report`]), and the definition a placed task runs ([`definition`]).
//!
//! apid sends the node's whole desired state at each change (never a diff), so the plan is the
//! same whether the node missed one version or a hundred:
//! - a task to run that the node does not hold, and never reported stopped: start it, under
//!   apid's id;
//! - a task to stop that runs here: stop it; one the node never held: report it STOPPED (it
//!   was placed and cancelled while the node was away);
//! - a task of the control plane that runs here and that apid no longer lists: stop it. That
//!   is a stale copy: apid replaced it elsewhere while the node was cut off past the grace
//!   period, or the node was deregistered and registered again.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use crate::lifecycle::TaskStatus;
use crate::protocol::{ContainerReport, DesiredTask, TaskEvent};
use crate::record::{TaskRecord, now};
use crate::taskdef::TaskDefinition;

/// What the node holds of a control-plane task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// Its record says STOPPED.
    pub stopped: bool,
    /// It was asked to stop already.
    pub stopping: bool,
}

impl Held {
    /// What `rec` says.
    pub fn of(rec: &TaskRecord) -> Self {
        Self {
            stopped: matches!(rec.status, TaskStatus::Stopped(_)),
            stopping: rec.desired_status == "STOPPED",
        }
    }
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Start this task.
    Start(DesiredTask),
    /// Stop task `id` with `reason`.
    Stop {
        /// The task.
        id: String,
        /// Why, as `stoppedReason` will say.
        reason: String,
    },
    /// Report this task STOPPED: it was to stop before it ever ran here.
    NeverRan(DesiredTask),
}

/// What to do so the node holds what apid wants (see the module documentation).
/// `last_reported` is the last status the node reported of a task.
pub fn plan<'a>(
    desired: &[DesiredTask],
    held: &HashMap<String, Held>,
    last_reported: impl Fn(&str) -> Option<&'a str>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let listed: BTreeSet<&str> = desired.iter().map(|d| d.task_id.as_str()).collect();
    for d in desired {
        let stop = d.desired_status == "STOPPED";
        match held.get(&d.task_id) {
            Some(h) if stop && !h.stopped && !h.stopping => actions.push(Action::Stop {
                id: d.task_id.clone(),
                reason: d
                    .stopped_reason
                    .clone()
                    .unwrap_or_else(|| "Task stopped by the control plane".into()),
            }),
            Some(_) => {}
            None if last_reported(&d.task_id) == Some("STOPPED") => {}
            None if stop => actions.push(Action::NeverRan(d.clone())),
            None => actions.push(Action::Start(d.clone())),
        }
    }
    let mut stale: Vec<&String> = held
        .iter()
        .filter(|(id, h)| !listed.contains(id.as_str()) && !h.stopped && !h.stopping)
        .map(|(id, _)| id)
        .collect();
    stale.sort();
    actions.extend(stale.into_iter().map(|id| Action::Stop {
        id: id.clone(),
        reason: "Stale copy: the control plane no longer runs this task on this node".into(),
    }));
    actions
}

fn name_of<T: serde::Serialize>(v: &T) -> Option<String> {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
}

fn non_empty<T: serde::Serialize>(v: &[T]) -> Option<Value> {
    (!v.is_empty()).then(|| serde_json::to_value(v).expect("network facts serialize"))
}

/// What `rec` reports: its status, stop, health, attachments and containers.
pub fn report(rec: &TaskRecord) -> TaskEvent {
    let stop = rec.status.stop();
    TaskEvent {
        seq: 0,
        task_id: rec.task_id.clone(),
        last_status: rec.status.name().to_owned(),
        health_status: name_of(&rec.health_status),
        stopped_reason: stop.map(|s| s.stopped_reason.clone()),
        stop_code: stop.and_then(|s| name_of(&s.stop_code)),
        at: now(),
        pull_started_at: None,
        pull_stopped_at: None,
        replaces: rec.origin.as_ref().and_then(|o| o.replaces.clone()),
        attachments: non_empty(&rec.attachments),
        containers: rec
            .containers
            .iter()
            .map(|c| ContainerReport {
                name: c.name.clone(),
                last_status: name_of(&c.last_status).unwrap_or_default(),
                exit_code: c.exit_code.map(i64::from),
                reason: c.reason.clone(),
                health_status: name_of(&c.health_status),
                runtime_id: Some(c.runtime_id.clone()),
                network_bindings: non_empty(&c.network_bindings),
                network_interfaces: non_empty(&c.network_interfaces),
            })
            .collect(),
    }
}

/// Whether `rec`, stopped, is a service task that stopped on its own (its essential container
/// exited, or it failed to start), not because anyone asked: the case the node replaces while
/// offline, as the service scheduler would.
pub fn failed_service_task(rec: &TaskRecord) -> bool {
    use crate::lifecycle::StopCode;
    let service = rec
        .origin
        .as_ref()
        .and_then(|o| o.started_by.as_deref())
        .is_some_and(|s| s.starts_with("ecs-svc/"));
    let on_its_own = matches!(
        &rec.status,
        TaskStatus::Stopped(s)
            if matches!(s.stop_code, StopCode::EssentialContainerExited | StopCode::TaskFailedToStart)
    );
    service && on_its_own
}

/// The report of a task that never started here: STOPPED, with `code` and `reason`.
pub fn stopped_before_start(d: &DesiredTask, code: &str, reason: &str) -> TaskEvent {
    let containers = d.task_definition["containerDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .map(|name| ContainerReport {
            name: name.to_owned(),
            last_status: "STOPPED".into(),
            ..ContainerReport::default()
        })
        .collect();
    TaskEvent {
        task_id: d.task_id.clone(),
        last_status: "STOPPED".into(),
        stop_code: Some(code.to_owned()),
        stopped_reason: Some(reason.to_owned()),
        at: now(),
        containers,
        ..TaskEvent::default()
    }
}

/// The definition `d` runs: its registered task definition with RunTask's container
/// overrides applied (a command replaces the container's; environment variables are merged
/// by name, the override's winning), parsed by the same parser as a local task's.
pub fn definition(d: &DesiredTask) -> Result<TaskDefinition, String> {
    let mut def = d.task_definition.clone();
    let overrides = d.overrides["containerOverrides"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for o in overrides {
        let name = o["name"].as_str().unwrap_or_default();
        let Some(c) = def["containerDefinitions"]
            .as_array_mut()
            .and_then(|cs| cs.iter_mut().find(|c| c["name"] == name))
        else {
            return Err(format!(
                "override for container {name:?}, which the task definition does not have"
            ));
        };
        if let Some(cmd) = o.get("command").filter(|v| !v.is_null()) {
            c["command"] = cmd.clone();
        }
        if let Some(env) = o["environment"].as_array() {
            let mut merged: Vec<Value> = c["environment"].as_array().cloned().unwrap_or_default();
            for kv in env {
                merged.retain(|x| x["name"] != kv["name"]);
                merged.push(kv.clone());
            }
            c["environment"] = Value::from(merged);
        }
    }
    TaskDefinition::from_json(&def.to_string()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn desired(id: &str, status: &str) -> DesiredTask {
        DesiredTask {
            task_id: id.into(),
            task_arn: format!("arn:aws:ecs:r:0:task/edge/{id}"),
            desired_status: status.into(),
            task_definition_arn: "arn:aws:ecs:r:0:task-definition/web:1".into(),
            task_definition: json!({"family": "web", "containerDefinitions": [
                {"name": "app", "image": "local/bb:1", "memory": 64,
                 "environment": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}]}),
            overrides: json!({}),
            started_by: None,
            stopped_reason: (status == "STOPPED").then(|| "Scaled in".into()),
        }
    }

    const RUNS: Held = Held {
        stopped: false,
        stopping: false,
    };

    #[test]
    fn every_case_of_the_plan() {
        let desired = [
            desired("new", "RUNNING"),
            desired("runs", "RUNNING"),
            desired("tostop", "STOPPED"),
            desired("cancelled", "STOPPED"),
            desired("failed", "RUNNING"),
            desired("stopping", "STOPPED"),
        ];
        let held = HashMap::from([
            ("runs".to_owned(), RUNS),
            ("tostop".to_owned(), RUNS),
            (
                "stopping".to_owned(),
                Held {
                    stopped: false,
                    stopping: true,
                },
            ),
            ("stale".to_owned(), RUNS),
            (
                "old".to_owned(),
                Held {
                    stopped: true,
                    stopping: true,
                },
            ),
        ]);
        let reported = |id: &str| (id == "failed").then_some("STOPPED");
        let actions = plan(&desired, &held, reported);
        assert_eq!(
            actions,
            [
                Action::Start(desired[0].clone()),
                Action::Stop {
                    id: "tostop".into(),
                    reason: "Scaled in".into()
                },
                Action::NeverRan(desired[3].clone()),
                Action::Stop {
                    id: "stale".into(),
                    reason: "Stale copy: the control plane no longer runs this task on this node"
                        .into()
                },
            ]
        );
        // Converged: nothing to do.
        let held = HashMap::from([("new".to_owned(), RUNS)]);
        assert_eq!(plan(&desired[..1], &held, |_| None), []);
    }

    #[test]
    fn overrides_replace_commands_and_merge_environments() {
        let mut d = desired("t", "RUNNING");
        d.overrides = json!({"containerOverrides": [{"name": "app", "command": ["sleep", "5"],
            "environment": [{"name": "B", "value": "two"}, {"name": "C", "value": "3"}]}]});
        let def = definition(&d).unwrap();
        let c = &def.container_definitions[0];
        assert_eq!(c.command, ["sleep", "5"]);
        let env: Vec<(String, String)> = c
            .environment
            .iter()
            .map(|kv| (kv.name.clone(), kv.value.clone()))
            .collect();
        assert_eq!(
            env,
            [("A", "1"), ("B", "two"), ("C", "3")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        d.overrides = json!({"containerOverrides": [{"name": "nope", "command": ["x"]}]});
        assert!(definition(&d).unwrap_err().contains("nope"));
        d.overrides = json!({});
        d.task_definition["containerDefinitions"][0]["memory"] = json!("lots");
        assert!(definition(&d).unwrap_err().contains("memory"));
    }

    #[test]
    fn a_task_that_never_started_reports_its_containers_stopped() {
        let ev = stopped_before_start(
            &desired("t", "RUNNING"),
            "TaskFailedToStart",
            "this node cannot run the task: FARGATE",
        );
        assert_eq!(ev.last_status, "STOPPED");
        assert_eq!(ev.stop_code.as_deref(), Some("TaskFailedToStart"));
        assert_eq!(ev.containers.len(), 1);
        assert_eq!(ev.containers[0].last_status, "STOPPED");
    }
}
