//! The decisions skiffd takes about a task's containers, as pure functions: when a container's
//! `dependsOn` is satisfied (or can no longer be), and what its health check says.
//!
//! Both follow ECS's documented semantics:
//! - `dependsOn`: START needs the dependency started; COMPLETE needs it exited; SUCCESS needs it
//!   exited with 0; HEALTHY needs its health check to have passed. A dependency that can no
//!   longer meet its condition (exited non-zero for SUCCESS, exited or unhealthy for HEALTHY)
//!   makes the dependent impossible to start, and the task stops with that reason.
//! - `restartPolicy`: an exited container is restarted in place, unless the policy is off, its
//!   exit code is ignored, the task is stopping, or it ran for less than `restartAttemptPeriod`
//!   (default 300 s) since it last started: a container that keeps failing fast is let fail, and
//!   an essential one then stops the task.
//! - `healthCheck`: status UNKNOWN until a check passes (HEALTHY) or `retries` consecutive
//!   checks fail or time out (UNHEALTHY); failures within `startPeriod` do not count, unless a
//!   check has already passed. Defaults: interval 30 s, timeout 5 s, retries 3, startPeriod 0.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::taskdef::{ContainerDefinition, DependencyCondition, HealthCheck, RestartPolicy};

/// ECS's container health status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Health {
    /// No verdict yet (or no health check).
    #[default]
    Unknown,
    /// The last check passed.
    Healthy,
    /// `retries` consecutive checks failed.
    Unhealthy,
}

/// Where a container of the task stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not started yet.
    Pending,
    /// Running, with its health.
    Running(Health),
    /// Exited with this code.
    Exited(i32),
}

/// Whether a container may start now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Every dependency condition holds.
    Ready,
    /// Some condition may still come true.
    Waiting,
    /// A condition can never hold; the reason names the dependency.
    Impossible(String),
}

/// Checks `def`'s `dependsOn` against the phases of the task's containers.
pub fn readiness(def: &ContainerDefinition, phases: &HashMap<String, Phase>) -> Readiness {
    let mut waiting = false;
    for dep in &def.depends_on {
        let name = &dep.container_name;
        let phase = phases.get(name).copied().unwrap_or(Phase::Pending);
        let impossible = |why: &str| {
            Readiness::Impossible(format!(
                "dependency {name} {why} ({:?} required)",
                dep.condition
            ))
        };
        match (dep.condition, phase) {
            (DependencyCondition::Start, Phase::Running(_) | Phase::Exited(_)) => {}
            (DependencyCondition::Complete, Phase::Exited(_)) => {}
            (DependencyCondition::Success, Phase::Exited(0)) => {}
            (DependencyCondition::Success, Phase::Exited(code)) => {
                return impossible(&format!("exited with code {code}"));
            }
            (DependencyCondition::Healthy, Phase::Running(Health::Healthy)) => {}
            (DependencyCondition::Healthy, Phase::Running(Health::Unhealthy)) => {
                return impossible("is unhealthy");
            }
            (DependencyCondition::Healthy, Phase::Exited(code)) => {
                return impossible(&format!("exited with code {code} before becoming healthy"));
            }
            _ => waiting = true,
        }
    }
    if waiting {
        Readiness::Waiting
    } else {
        Readiness::Ready
    }
}

/// What to do with a container that exited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterExit {
    /// Start it again.
    Restart,
    /// Leave it exited, for this reason.
    Stay(&'static str),
}

/// Applies `restartPolicy` to an exit after `ran_for` since the container last started.
pub fn after_exit(
    policy: Option<&RestartPolicy>,
    exit_code: i32,
    ran_for: Duration,
    task_stopping: bool,
) -> AfterExit {
    let Some(p) = policy.filter(|p| p.enabled) else {
        return AfterExit::Stay("no restart policy");
    };
    if task_stopping {
        return AfterExit::Stay("the task is stopping");
    }
    if p.ignored_exit_codes.contains(&exit_code) {
        return AfterExit::Stay("exit code is in ignoredExitCodes");
    }
    let period = Duration::from_secs(p.restart_attempt_period.map_or(300, u64::from));
    if ran_for < period {
        return AfterExit::Stay("ran for less than restartAttemptPeriod");
    }
    AfterExit::Restart
}

/// What one health check run gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Exit code 0.
    Passed,
    /// Non-zero exit.
    Failed,
    /// Did not finish within the timeout.
    TimedOut,
}

/// A container's health check settings with ECS's defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    /// What to run: `["CMD", ...]` runs the program, `["CMD-SHELL", cmd]` runs `/bin/sh -c cmd`.
    pub argv: Vec<String>,
    /// Between checks.
    pub interval: Duration,
    /// Per check.
    pub timeout: Duration,
    /// Consecutive failures before UNHEALTHY.
    pub retries: u32,
    /// Grace after start.
    pub start_period: Duration,
}

impl HealthSettings {
    /// From a (validated) definition.
    pub fn from_def(h: &HealthCheck) -> Self {
        let secs = |v: Option<u32>, d: u64| Duration::from_secs(v.map_or(d, u64::from));
        let argv = match h.command.first().map(String::as_str) {
            Some("CMD-SHELL") => vec!["/bin/sh".into(), "-c".into(), h.command[1..].join(" ")],
            _ => h.command[1..].to_vec(),
        };
        Self {
            argv,
            interval: secs(h.interval, 30),
            timeout: secs(h.timeout, 5),
            retries: h.retries.unwrap_or(3),
            start_period: secs(h.start_period, 0),
        }
    }
}

/// The health of one container over time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthTracker {
    settings: HealthSettings,
    status: Health,
    failures: u32,
    passed_once: bool,
}

impl HealthTracker {
    /// A tracker for a container that just started.
    pub fn new(settings: HealthSettings) -> Self {
        Self {
            settings,
            status: Health::Unknown,
            failures: 0,
            passed_once: false,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &HealthSettings {
        &self.settings
    }

    /// The current status.
    pub fn status(&self) -> Health {
        self.status
    }

    /// Records a check that ended `since_start` after the container started.
    pub fn record(&mut self, since_start: Duration, outcome: CheckOutcome) -> Health {
        match outcome {
            CheckOutcome::Passed => {
                self.failures = 0;
                self.passed_once = true;
                self.status = Health::Healthy;
            }
            CheckOutcome::Failed | CheckOutcome::TimedOut => {
                let in_grace = since_start < self.settings.start_period && !self.passed_once;
                if !in_grace {
                    self.failures += 1;
                    if self.failures >= self.settings.retries {
                        self.status = Health::Unhealthy;
                    }
                }
            }
        }
        self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::taskdef::TaskDefinition;

    fn task() -> TaskDefinition {
        TaskDefinition::from_json(
            r#"{"family":"t","memory":"256","containerDefinitions":[
              {"name":"db","image":"x","essential":false,"healthCheck":{"command":["CMD-SHELL","pg_isready"]}},
              {"name":"init","image":"x","essential":false},
              {"name":"web","image":"x","dependsOn":[
                {"containerName":"db","condition":"HEALTHY"},
                {"containerName":"init","condition":"SUCCESS"}]},
              {"name":"side","image":"x","dependsOn":[{"containerName":"web","condition":"START"},{"containerName":"init","condition":"COMPLETE"}]}
            ]}"#,
        )
        .unwrap()
    }

    #[test]
    fn depends_on_conditions() {
        let t = task();
        let web = &t.container_definitions[2];
        let side = &t.container_definitions[3];
        let phases = |db: Phase, init: Phase, web: Phase| {
            HashMap::from([
                ("db".to_string(), db),
                ("init".to_string(), init),
                ("web".to_string(), web),
            ])
        };
        use Phase::*;
        let cases = [
            (
                phases(Pending, Pending, Pending),
                Readiness::Waiting,
                Readiness::Waiting,
            ),
            (
                phases(Running(Health::Unknown), Running(Health::Unknown), Pending),
                Readiness::Waiting,
                Readiness::Waiting,
            ),
            (
                phases(Running(Health::Healthy), Exited(0), Pending),
                Readiness::Ready,
                Readiness::Waiting,
            ),
            (
                phases(
                    Running(Health::Healthy),
                    Exited(0),
                    Running(Health::Unknown),
                ),
                Readiness::Ready,
                Readiness::Ready,
            ),
            (
                phases(Running(Health::Healthy), Exited(2), Exited(1)),
                Readiness::Impossible(
                    "dependency init exited with code 2 (Success required)".into(),
                ),
                Readiness::Ready,
            ),
            (
                phases(Running(Health::Unhealthy), Exited(0), Pending),
                Readiness::Impossible("dependency db is unhealthy (Healthy required)".into()),
                Readiness::Waiting,
            ),
            (
                phases(Exited(1), Exited(0), Pending),
                Readiness::Impossible(
                    "dependency db exited with code 1 before becoming healthy (Healthy required)"
                        .into(),
                ),
                Readiness::Waiting,
            ),
        ];
        for (i, (p, want_web, want_side)) in cases.into_iter().enumerate() {
            assert_eq!(readiness(web, &p), want_web, "case {i} web");
            assert_eq!(readiness(side, &p), want_side, "case {i} side");
        }
        assert_eq!(
            readiness(&t.container_definitions[0], &HashMap::new()),
            Readiness::Ready
        );
    }

    #[test]
    fn restart_policy() {
        let p = |enabled, codes: Vec<i32>, period| RestartPolicy {
            enabled,
            ignored_exit_codes: codes,
            restart_attempt_period: period,
        };
        let s = Duration::from_secs;
        let on = p(true, vec![0], Some(60));
        assert_eq!(after_exit(Some(&on), 1, s(61), false), AfterExit::Restart);
        assert_eq!(
            after_exit(Some(&on), 0, s(61), false),
            AfterExit::Stay("exit code is in ignoredExitCodes")
        );
        assert_eq!(
            after_exit(Some(&on), 1, s(59), false),
            AfterExit::Stay("ran for less than restartAttemptPeriod")
        );
        assert_eq!(
            after_exit(Some(&on), 1, s(61), true),
            AfterExit::Stay("the task is stopping")
        );
        assert_eq!(
            after_exit(Some(&p(false, vec![], None)), 1, s(999), false),
            AfterExit::Stay("no restart policy")
        );
        assert_eq!(
            after_exit(None, 1, s(999), false),
            AfterExit::Stay("no restart policy")
        );
        assert_eq!(
            after_exit(Some(&p(true, vec![], None)), 1, s(299), false),
            AfterExit::Stay("ran for less than restartAttemptPeriod")
        );
        assert_eq!(
            after_exit(Some(&p(true, vec![], None)), 1, s(300), false),
            AfterExit::Restart
        );
    }

    fn settings(retries: u32, start_period: u64) -> HealthSettings {
        HealthSettings {
            argv: vec!["true".into()],
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            retries,
            start_period: Duration::from_secs(start_period),
        }
    }

    #[test]
    fn health_transitions() {
        use CheckOutcome::*;
        let s = |n| Duration::from_secs(n);
        let mut h = HealthTracker::new(settings(3, 0));
        assert_eq!(h.status(), Health::Unknown);
        assert_eq!(h.record(s(5), Failed), Health::Unknown);
        assert_eq!(h.record(s(10), TimedOut), Health::Unknown);
        assert_eq!(
            h.record(s(15), Passed),
            Health::Healthy,
            "a pass resets the count"
        );
        assert_eq!(h.record(s(20), Failed), Health::Healthy);
        assert_eq!(h.record(s(25), Failed), Health::Healthy);
        assert_eq!(h.record(s(30), Failed), Health::Unhealthy);
        assert_eq!(h.record(s(35), Passed), Health::Healthy, "and recovers");

        // Failures in the start period do not count...
        let mut h = HealthTracker::new(settings(1, 60));
        assert_eq!(h.record(s(10), Failed), Health::Unknown);
        assert_eq!(h.record(s(20), TimedOut), Health::Unknown);
        assert_eq!(h.record(s(61), Failed), Health::Unhealthy);
        // ...unless a check already passed.
        let mut h = HealthTracker::new(settings(1, 60));
        h.record(s(5), Passed);
        assert_eq!(h.record(s(10), Failed), Health::Unhealthy);
    }

    #[test]
    fn settings_from_definitions() {
        let t = task();
        let h = HealthSettings::from_def(t.container_definitions[0].health_check.as_ref().unwrap());
        assert_eq!(h.argv, ["/bin/sh", "-c", "pg_isready"]);
        assert_eq!(
            (h.interval, h.timeout, h.retries, h.start_period),
            (
                Duration::from_secs(30),
                Duration::from_secs(5),
                3,
                Duration::ZERO
            )
        );
    }
}
