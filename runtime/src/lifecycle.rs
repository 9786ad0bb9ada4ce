//! The task lifecycle: ECS's task states as one enum, and one transition function.
//!
//! ```text
//! PROVISIONING -> PENDING -> ACTIVATING -> RUNNING -> DEACTIVATING -> STOPPING -> DEPROVISIONING -> STOPPED
//!      |             |            |                         ^             ^              ^
//!      |             |            +-- stop / exit ----------+             |              |
//!      |             +-- stop / essential exit -------------------------- +              |
//!      +-- stop / start failure --------------------------------------------------------+
//! ```
//!
//! Every way out of the happy path carries a [`Stop`] (ECS's `stopCode` and `stoppedReason`)
//! inside the state from then on, so a stopped task always says why. Stopping is idempotent: a
//! second stop request, or a container exiting because the task is being stopped, leaves the
//! state (and the first reason) as it is, as ECS does. Anything else that does not fit the
//! current state is an [`InvalidTransition`] naming both, never a silent change. The state
//! serialises with ECS's names, so it can be persisted and reported as is.

use serde::{Deserialize, Serialize};

/// ECS's `stopCode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopCode {
    /// The task could not start (image pull, mount, network, container create...).
    TaskFailedToStart,
    /// An essential container exited.
    EssentialContainerExited,
    /// `StopTask` or `skiff task stop`.
    UserInitiated,
    /// A service scaled in or replaced the task.
    ServiceSchedulerInitiated,
    /// The node is shutting down or draining.
    TerminationNotice,
}

/// Why a task stops: `stopCode` and `stoppedReason`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stop {
    /// The code.
    pub stop_code: StopCode,
    /// Human-readable detail (`Essential container in task exited`).
    pub stopped_reason: String,
}

/// A task's state (ECS `lastStatus`), with the stop once there is one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "lastStatus", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    /// Preparing cgroups, network and root filesystems; pulling images.
    Provisioning,
    /// Resources ready; containers are being created and started in dependency order.
    Pending,
    /// Containers started; waiting for what makes the task ready (dependencies, health).
    Activating,
    /// Running.
    Running,
    /// Leaving: deregistering (ports, endpoints) before containers are signalled.
    Deactivating(Stop),
    /// Containers are being stopped (SIGTERM, then SIGKILL after stopTimeout).
    Stopping(Stop),
    /// Containers are gone; network, mounts and cgroups are being released.
    Deprovisioning(Stop),
    /// Done.
    Stopped(Stop),
}

/// What happens to a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskEvent {
    /// Cgroups, network and root filesystems are ready.
    Provisioned,
    /// The containers that can start have started.
    ContainersStarted,
    /// Dependencies and health say the task is up.
    Activated,
    /// Starting failed before the task ran.
    StartFailed {
        /// Why.
        reason: String,
    },
    /// Someone asked the task to stop.
    StopRequested(Stop),
    /// An essential container exited.
    EssentialExited {
        /// Its name.
        container: String,
        /// Its exit code.
        exit_code: i32,
    },
    /// Deregistration done.
    Deactivated,
    /// Every container has exited.
    ContainersStopped,
    /// Every resource is released.
    Deprovisioned,
}

/// An event that does not apply to the state the task is in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task in state {from} cannot take event {event}")]
pub struct InvalidTransition {
    /// The state.
    pub from: &'static str,
    /// The event.
    pub event: &'static str,
}

impl TaskStatus {
    /// ECS's name of the state.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Provisioning => "PROVISIONING",
            Self::Pending => "PENDING",
            Self::Activating => "ACTIVATING",
            Self::Running => "RUNNING",
            Self::Deactivating(_) => "DEACTIVATING",
            Self::Stopping(_) => "STOPPING",
            Self::Deprovisioning(_) => "DEPROVISIONING",
            Self::Stopped(_) => "STOPPED",
        }
    }

    /// The stop, once the task is on its way out.
    pub fn stop(&self) -> Option<&Stop> {
        match self {
            Self::Deactivating(s)
            | Self::Stopping(s)
            | Self::Deprovisioning(s)
            | Self::Stopped(s) => Some(s),
            _ => None,
        }
    }

    /// The one transition function.
    pub fn transition(self, event: TaskEvent) -> Result<TaskStatus, InvalidTransition> {
        use TaskEvent as E;
        use TaskStatus as S;
        let invalid = |from: &S, event: &E| InvalidTransition {
            from: from.name(),
            event: event.name(),
        };
        Ok(match (self, event) {
            (S::Provisioning, E::Provisioned) => S::Pending,
            (S::Pending, E::ContainersStarted) => S::Activating,
            (S::Activating, E::Activated) => S::Running,

            // Failing to start: nothing runs that needs stopping before PENDING; from PENDING on,
            // containers may have started and are stopped first.
            (S::Provisioning, E::StartFailed { reason }) => S::Deprovisioning(failed(reason)),
            (S::Pending | S::Activating, E::StartFailed { reason }) => S::Stopping(failed(reason)),

            (S::Provisioning, E::StopRequested(stop)) => S::Deprovisioning(stop),
            (S::Pending, E::StopRequested(stop)) => S::Stopping(stop),
            (S::Activating | S::Running, E::StopRequested(stop)) => S::Deactivating(stop),

            (
                S::Pending,
                E::EssentialExited {
                    container,
                    exit_code,
                },
            ) => S::Stopping(exited(&container, exit_code)),
            (
                S::Activating | S::Running,
                E::EssentialExited {
                    container,
                    exit_code,
                },
            ) => S::Deactivating(exited(&container, exit_code)),

            (S::Deactivating(stop), E::Deactivated) => S::Stopping(stop),
            (S::Stopping(stop), E::ContainersStopped) => S::Deprovisioning(stop),
            (S::Deprovisioning(stop), E::Deprovisioned) => S::Stopped(stop),

            // Idempotent stopping: the first reason stands; containers exit because we stop them.
            (
                s @ (S::Deactivating(_) | S::Stopping(_) | S::Deprovisioning(_) | S::Stopped(_)),
                E::StopRequested(_),
            ) => s,
            (s @ (S::Deactivating(_) | S::Stopping(_)), E::EssentialExited { .. }) => s,

            (s, e) => return Err(invalid(&s, &e)),
        })
    }
}

fn failed(reason: String) -> Stop {
    Stop {
        stop_code: StopCode::TaskFailedToStart,
        stopped_reason: reason,
    }
}

fn exited(container: &str, code: i32) -> Stop {
    Stop {
        stop_code: StopCode::EssentialContainerExited,
        stopped_reason: format!(
            "Essential container in task exited ({container}: exit code {code})"
        ),
    }
}

impl TaskEvent {
    /// A name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Provisioned => "Provisioned",
            Self::ContainersStarted => "ContainersStarted",
            Self::Activated => "Activated",
            Self::StartFailed { .. } => "StartFailed",
            Self::StopRequested(_) => "StopRequested",
            Self::EssentialExited { .. } => "EssentialExited",
            Self::Deactivated => "Deactivated",
            Self::ContainersStopped => "ContainersStopped",
            Self::Deprovisioned => "Deprovisioned",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_stop() -> Stop {
        Stop {
            stop_code: StopCode::UserInitiated,
            stopped_reason: "first".into(),
        }
    }

    fn states() -> Vec<TaskStatus> {
        let s = user_stop();
        vec![
            TaskStatus::Provisioning,
            TaskStatus::Pending,
            TaskStatus::Activating,
            TaskStatus::Running,
            TaskStatus::Deactivating(s.clone()),
            TaskStatus::Stopping(s.clone()),
            TaskStatus::Deprovisioning(s.clone()),
            TaskStatus::Stopped(s),
        ]
    }

    fn events() -> Vec<TaskEvent> {
        vec![
            TaskEvent::Provisioned,
            TaskEvent::ContainersStarted,
            TaskEvent::Activated,
            TaskEvent::StartFailed {
                reason: "pull".into(),
            },
            TaskEvent::StopRequested(Stop {
                stop_code: StopCode::ServiceSchedulerInitiated,
                stopped_reason: "second".into(),
            }),
            TaskEvent::EssentialExited {
                container: "app".into(),
                exit_code: 3,
            },
            TaskEvent::Deactivated,
            TaskEvent::ContainersStopped,
            TaskEvent::Deprovisioned,
        ]
    }

    /// Every (state, event) pair: the resulting state's name and stop code, or "-" for invalid.
    /// Rows are states in `states()` order, columns events in `events()` order.
    #[rustfmt::skip]
    const TABLE: [[&str; 9]; 8] = [
        // Provisioned, ContainersStarted, Activated, StartFailed, StopRequested, EssentialExited, Deactivated, ContainersStopped, Deprovisioned
        ["PENDING", "-", "-", "DEPROVISIONING/TaskFailedToStart", "DEPROVISIONING/ServiceSchedulerInitiated", "-", "-", "-", "-"],
        ["-", "ACTIVATING", "-", "STOPPING/TaskFailedToStart", "STOPPING/ServiceSchedulerInitiated", "STOPPING/EssentialContainerExited", "-", "-", "-"],
        ["-", "-", "RUNNING", "STOPPING/TaskFailedToStart", "DEACTIVATING/ServiceSchedulerInitiated", "DEACTIVATING/EssentialContainerExited", "-", "-", "-"],
        ["-", "-", "-", "-", "DEACTIVATING/ServiceSchedulerInitiated", "DEACTIVATING/EssentialContainerExited", "-", "-", "-"],
        ["-", "-", "-", "-", "DEACTIVATING/UserInitiated", "DEACTIVATING/UserInitiated", "STOPPING/UserInitiated", "-", "-"],
        ["-", "-", "-", "-", "STOPPING/UserInitiated", "STOPPING/UserInitiated", "-", "DEPROVISIONING/UserInitiated", "-"],
        ["-", "-", "-", "-", "DEPROVISIONING/UserInitiated", "-", "-", "-", "STOPPED/UserInitiated"],
        ["-", "-", "-", "-", "STOPPED/UserInitiated", "-", "-", "-", "-"],
    ];

    fn describe(s: &TaskStatus) -> String {
        match s.stop() {
            Some(stop) => format!("{}/{:?}", s.name(), stop.stop_code),
            None => s.name().to_owned(),
        }
    }

    #[test]
    fn every_state_event_pair() {
        for (row, state) in states().into_iter().enumerate() {
            for (col, event) in events().into_iter().enumerate() {
                let label = format!("{} + {}", state.name(), event.name());
                let got = match state.clone().transition(event) {
                    Ok(next) => describe(&next),
                    Err(e) => {
                        assert_eq!(
                            (e.from, e.to_string().contains(e.event)),
                            (state.name(), true),
                            "{label}"
                        );
                        "-".to_owned()
                    }
                };
                assert_eq!(got, TABLE[row][col], "{label}");
            }
        }
    }

    #[test]
    fn the_happy_path_and_the_first_reason_stands() {
        let mut s = TaskStatus::Provisioning;
        for e in [
            TaskEvent::Provisioned,
            TaskEvent::ContainersStarted,
            TaskEvent::Activated,
        ] {
            s = s.transition(e).unwrap();
        }
        assert_eq!(s, TaskStatus::Running);
        s = s
            .transition(TaskEvent::EssentialExited {
                container: "web".into(),
                exit_code: 137,
            })
            .unwrap();
        let first = s.stop().unwrap().clone();
        assert_eq!(
            first.stopped_reason,
            "Essential container in task exited (web: exit code 137)"
        );
        for e in [
            TaskEvent::StopRequested(user_stop()),
            TaskEvent::Deactivated,
            TaskEvent::ContainersStopped,
            TaskEvent::Deprovisioned,
        ] {
            s = s.transition(e).unwrap();
        }
        assert_eq!(s, TaskStatus::Stopped(first));
    }

    #[test]
    fn persists_with_ecs_names() {
        let s = TaskStatus::Stopping(user_stop());
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"lastStatus":"STOPPING","stopCode":"UserInitiated","stoppedReason":"first"}"#
        );
        assert_eq!(serde_json::from_str::<TaskStatus>(&json).unwrap(), s);
        assert_eq!(
            serde_json::to_string(&TaskStatus::Running).unwrap(),
            r#"{"lastStatus":"RUNNING"}"#
        );
    }
}
