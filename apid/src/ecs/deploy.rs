//! The service scheduler's decisions, as a pure function over a snapshot of one service ([`plan`]):
//! which tasks to start, which to stop and why, and how its deployments move on. The caller
//! ([`super::services`]) reads the snapshot, applies the plan under the store's write lock, and
//! runs again on the next tick; every decision is recomputed from state, so a plan half-applied
//! by an apid that died is finished by the next one.
//!
//! The rules are ECS's rolling update:
//! - At most `maximumPercent` of the desired count live at once (all deployments), and at least
//!   `minimumHealthyPercent` of it RUNNING and not unhealthy while old tasks are replaced; old
//!   deployments' tasks, and tasks on DRAINING instances, are replaced within those bounds.
//! - A task that is UNHEALTHY, or whose instance was disconnected past the grace period or
//!   deregistered, is stopped and replaced (the copy on a disconnected node is stopped when it
//!   returns: its desired status says so).
//! - Scaling in stops tasks at once, pending ones first.
//! - The deployment circuit breaker: once the primary deployment's failed tasks (stopped without
//!   being asked to, or for failing health checks) reach the threshold, the rollout is FAILED;
//!   with `rollback`, a new deployment of the last completed task definition takes over.
//! - DAEMON: one task per eligible instance (ACTIVE, connected, meeting the constraints); an
//!   old deployment's task on an instance is stopped before its replacement starts there.
//!
//! A deployment's lifecycle is [`Rollout`], moved only by [`Rollout::next`].

use std::collections::{BTreeMap, BTreeSet};

/// A deployment's rollout state (ECS `rolloutState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rollout {
    /// Tasks are being started or replaced.
    InProgress,
    /// The deployment reached its desired count and nothing else of the service runs.
    Completed,
    /// The circuit breaker tripped.
    Failed,
}

/// What happened to a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutEvent {
    /// It is steady: its tasks run, no other deployment has any.
    Steady,
    /// Its failed tasks reached the circuit breaker's threshold.
    Tripped,
}

impl Rollout {
    /// ECS's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "IN_PROGRESS",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }

    /// From ECS's name.
    pub fn parse(s: &str) -> Self {
        match s {
            "COMPLETED" => Self::Completed,
            "FAILED" => Self::Failed,
            _ => Self::InProgress,
        }
    }

    /// The one transition function: `None` when the event changes nothing.
    pub fn next(self, e: RolloutEvent) -> Option<Self> {
        match (self, e) {
            (Self::InProgress, RolloutEvent::Steady) => Some(Self::Completed),
            (Self::InProgress, RolloutEvent::Tripped) => Some(Self::Failed),
            _ => None,
        }
    }
}

/// How a service is scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduling {
    /// `desiredCount` tasks.
    Replica,
    /// One task per eligible instance.
    Daemon,
}

/// What the plan needs of the service's settings.
#[derive(Clone, Debug)]
pub struct Spec {
    /// REPLICA or DAEMON.
    pub scheduling: Scheduling,
    /// REPLICA's desired count (DAEMON's is the eligible instances').
    pub desired: i64,
    /// `deploymentConfiguration.maximumPercent`.
    pub maximum_percent: i64,
    /// `deploymentConfiguration.minimumHealthyPercent`.
    pub minimum_healthy_percent: i64,
    /// The circuit breaker: (enabled, rollback).
    pub circuit_breaker: (bool, bool),
    /// Being deleted: everything stops.
    pub deleting: bool,
}

/// A deployment as the plan sees it.
#[derive(Clone, Debug)]
pub struct Deployment {
    /// Its id.
    pub id: String,
    /// PRIMARY (the newest) or ACTIVE (being replaced).
    pub primary: bool,
    /// Its rollout.
    pub rollout: Rollout,
    /// Its failed tasks so far.
    pub failed: i64,
}

/// Where a task's instance stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// ACTIVE and connected.
    Active,
    /// DRAINING: its service tasks are replaced.
    Draining,
    /// Disconnected past the grace period, or deregistered.
    Lost,
    /// Disconnected within the grace period: its tasks count as they were last seen.
    Away,
}

/// A live task of the service (desired RUNNING).
#[derive(Clone, Debug)]
pub struct Task {
    /// Its id.
    pub id: String,
    /// Its deployment.
    pub deployment: String,
    /// Its instance.
    pub instance: String,
    /// Its last status is RUNNING.
    pub running: bool,
    /// Its health is UNHEALTHY.
    pub unhealthy: bool,
    /// Its instance's state.
    pub host: Host,
}

/// A task to stop, and why (ECS's wording where it has one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stop {
    /// The task.
    pub task: String,
    /// The reason shown as its `stoppedReason`.
    pub reason: &'static str,
}

/// What to do now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Tasks of the primary deployment to place: a count placed by the service's strategies
    /// (REPLICA), or one on each listed instance (DAEMON).
    pub start: usize,
    /// DAEMON: the instances to start one task on.
    pub start_on: Vec<String>,
    /// Tasks to stop.
    pub stop: Vec<Stop>,
    /// Deployments whose rollout moves: (id, new state).
    pub rollouts: Vec<(String, Rollout)>,
    /// Deployments with no live task left that are not primary: to retire (INACTIVE).
    pub retire: Vec<String>,
    /// Roll back: the primary deployment failed and a previous task definition takes over.
    pub roll_back: bool,
    /// Nothing runs but what should, as it should: ECS's "steady state".
    pub steady: bool,
}

/// Why a task is stopped.
pub const UNHEALTHY: &str = "Task failed container health checks";
/// See [`UNHEALTHY`].
pub const LOST: &str = "Task stopped because its container instance was disconnected past the grace period or deregistered";
/// See [`UNHEALTHY`].
pub const REPLACED: &str = "Task replaced by a newer deployment";
/// See [`UNHEALTHY`].
pub const DRAINED: &str = "Container instance is draining";
/// See [`UNHEALTHY`].
pub const SCALED_IN: &str = "Scaling activity initiated by deployment";
/// See [`UNHEALTHY`].
pub const DELETED: &str = "Service deleted";

/// The circuit breaker's threshold for `desired` tasks: half of them, at least 3 and at most
/// 200 (ECS's rule).
pub fn failure_threshold(desired: i64) -> i64 {
    ((desired + 1) / 2).clamp(3, 200)
}

/// The plan for one service: `tasks` are its live tasks, `eligible` (DAEMON) the instances
/// that should each run one.
pub fn plan(spec: &Spec, deployments: &[Deployment], tasks: &[Task], eligible: &[String]) -> Plan {
    let mut p = Plan::default();
    let Some(primary) = deployments.iter().find(|d| d.primary) else {
        p.stop = tasks
            .iter()
            .map(|t| Stop {
                task: t.id.clone(),
                reason: DELETED,
            })
            .collect();
        return p;
    };
    // Tasks that must go whatever the bounds: unhealthy ones and those of lost instances.
    let mut live: Vec<&Task> = Vec::new();
    for t in tasks {
        let reason = if spec.deleting {
            Some(DELETED)
        } else if t.host == Host::Lost {
            Some(LOST)
        } else if t.unhealthy {
            Some(UNHEALTHY)
        } else {
            None
        };
        match reason {
            Some(reason) => p.stop.push(Stop {
                task: t.id.clone(),
                reason,
            }),
            None => live.push(t),
        }
    }
    if spec.deleting {
        p.retire = deployments.iter().map(|d| d.id.clone()).collect();
        return p;
    }
    // The circuit breaker.
    let (breaker, rollback) = spec.circuit_breaker;
    let desired = match spec.scheduling {
        Scheduling::Replica => spec.desired,
        Scheduling::Daemon => eligible.len() as i64,
    };
    let mut primary_rollout = primary.rollout;
    if breaker
        && primary.failed >= failure_threshold(desired)
        && let Some(next) = primary.rollout.next(RolloutEvent::Tripped)
    {
        p.rollouts.push((primary.id.clone(), next));
        p.roll_back = rollback;
        primary_rollout = next;
    }
    let starting = primary_rollout != Rollout::Failed;
    let is_primary = |t: &&Task| t.deployment == primary.id;
    // Running tasks count as healthy wherever they run until they are stopped: a draining
    // instance's tasks keep serving until their replacements run.
    let healthy = |t: &&Task| t.running;
    match spec.scheduling {
        Scheduling::Replica => replica(spec, &live, &is_primary, &healthy, starting, &mut p),
        Scheduling::Daemon => daemon(&live, &is_primary, eligible, starting, &mut p),
    }
    // Rollouts and retirements, from what stays.
    let stopping: BTreeSet<&str> = p.stop.iter().map(|s| s.task.as_str()).collect();
    let staying: Vec<&&Task> = live
        .iter()
        .filter(|t| !stopping.contains(t.id.as_str()))
        .collect();
    for d in deployments.iter().filter(|d| !d.primary) {
        if !staying.iter().any(|t| t.deployment == d.id) {
            p.retire.push(d.id.clone());
        }
    }
    let primary_running = staying
        .iter()
        .filter(|t| is_primary(t) && t.running && t.host == Host::Active)
        .count() as i64;
    p.steady = p.start == 0
        && p.start_on.is_empty()
        && p.stop.is_empty()
        && primary_running == desired
        && staying.iter().all(|t| is_primary(t));
    if p.steady
        && let Some(next) = primary_rollout.next(RolloutEvent::Steady)
    {
        p.rollouts.push((primary.id.clone(), next));
    }
    p
}

fn replica(
    spec: &Spec,
    live: &[&Task],
    is_primary: &dyn Fn(&&Task) -> bool,
    healthy: &dyn Fn(&&Task) -> bool,
    starting: bool,
    p: &mut Plan,
) {
    let d = spec.desired;
    let max_total = d * spec.maximum_percent / 100;
    let min_healthy = (d * spec.minimum_healthy_percent + 99) / 100;
    // Primary tasks on ACTIVE (or briefly away) instances are the ones that stay.
    let keep = |t: &&Task| is_primary(t) && t.host != Host::Draining;
    let mut primary: Vec<&Task> = live.iter().copied().filter(keep).collect();
    // Scale in: the excess primary tasks go at once, pending ones first.
    primary.sort_by_key(|t| (t.running, t.id.clone()));
    let excess = (primary.len() as i64 - d).max(0) as usize;
    for t in primary.drain(..excess) {
        p.stop.push(Stop {
            task: t.id.clone(),
            reason: SCALED_IN,
        });
    }
    let stopped: BTreeSet<String> = p.stop.iter().map(|s| s.task.clone()).collect();
    let others: Vec<&Task> = live
        .iter()
        .copied()
        .filter(|t| !keep(t) && !stopped.contains(&t.id))
        .collect();
    let total = (primary.len() + others.len()) as i64;
    if starting {
        p.start = (d - primary.len() as i64).min(max_total - total).max(0) as usize;
    }
    // Replace old and draining tasks while enough stay healthy: pending ones first (they
    // count for nothing), then running ones down to the minimum.
    let mut healthy_now = live
        .iter()
        .filter(|t| healthy(t) && !stopped.contains(&t.id))
        .count() as i64;
    let mut replaceable = others;
    replaceable.sort_by_key(|t| (t.running, t.id.clone()));
    for t in replaceable {
        let counts = healthy(&t);
        if counts && healthy_now - 1 < min_healthy {
            break;
        }
        if counts {
            healthy_now -= 1;
        }
        p.stop.push(Stop {
            task: t.id.clone(),
            reason: if is_primary(&t) { DRAINED } else { REPLACED },
        });
    }
}

fn daemon(
    live: &[&Task],
    is_primary: &dyn Fn(&&Task) -> bool,
    eligible: &[String],
    starting: bool,
    p: &mut Plan,
) {
    let mut by_instance: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in live {
        by_instance.entry(t.instance.as_str()).or_default().push(t);
    }
    for (instance, ts) in &by_instance {
        let wanted = eligible.iter().any(|e| e == instance);
        let mut kept_primary = false;
        for t in ts {
            let keep = wanted && is_primary(t) && !kept_primary;
            if keep {
                kept_primary = true;
                continue;
            }
            p.stop.push(Stop {
                task: t.id.clone(),
                reason: match t.host {
                    Host::Draining => DRAINED,
                    _ if is_primary(t) => SCALED_IN,
                    _ => REPLACED,
                },
            });
        }
    }
    if starting {
        // An instance gets its task once nothing else of the service is live on it.
        p.start_on = eligible
            .iter()
            .filter(|e| !by_instance.contains_key(e.as_str()))
            .cloned()
            .collect();
    }
}

#[cfg(test)]
#[path = "deploy_tests.rs"]
mod tests;
