//! The control-plane agent: skiffd's side of apid's node channel, what the ECS agent's ACS and
//! TCS sessions are to ECS (one connection here, not two).
//!
//! A registered node ([`identity`]) keeps one outbound mTLS connection to apid
//! ([`transport`]) and syncs in a loop: each call carries the desired-state version it holds
//! and the state changes apid has not acknowledged ([`journal`]); the answer carries the
//! acknowledged number and, when it changed or at the heartbeat, the node's whole desired
//! state, which the agent makes true ([`plan`]) through the same task service as the local API.
//! When nothing is to be reported the call is a long poll (apid holds it until something
//! changes or the heartbeat is due); a local change cancels it and is sent at once.
//!
//! **Offline first.** Tasks never depend on the connection: while apid is unreachable they keep
//! running, containers restart by their restartPolicy (the runner does that, not the control
//! plane), and every change is recorded in the journal. The agent retries with capped
//! exponential backoff and jitter; on reconnect it sends the changes in order, takes the new
//! desired state and converges: what apid still wants keeps running untouched, stale copies
//! (replaced elsewhere while the node was away past the grace period) are stopped. A node
//! A service task that stops on its own while apid is away is replaced on the node at once, so
//! the service keeps its count there; apid adopts the replacement on reconnect. A node
//! drained or deregistered while offline applies it at reconnect: a revoked certificate
//! (refused at the handshake) or a 403 stops the control plane's tasks and retires the
//! registration.
//!
//! **Operators' requests** (logs, stats, exec of a task) ride the same channel ([`asks`]).
//!
//! **Rotation.** When a third of the certificate's life is left (or `renew_before` in tests)
//! the agent asks apid for a new certificate for its key and uses it from the next connection.

pub mod asks;
pub mod identity;
pub mod journal;
pub mod plan;
pub mod transport;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::broadcast;

use self::identity::{Credentials, IdentityError, NodeIdentity};
use self::journal::{Journal, JournalError};
use self::plan::{Action, Held};
use self::transport::{Channel, TransportError};
use crate::config::NodeConfig;
use crate::daemon::{Daemon, DaemonError};
use crate::lifecycle::StopCode;
use crate::protocol::{DesiredTask, RenewRequest, Renewed, SyncRequest, SyncResponse};
use crate::record::{Origin, TaskRecord};

/// Most events sent in one sync: a node back after a long cut sends its backlog in batches.
const MAX_EVENTS: usize = 256;
/// The heartbeat until apid says otherwise.
const DEFAULT_HEARTBEAT: u64 = 20;
/// Longest wait between two attempts to reach apid.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Errors that end the agent (an unreachable apid is not one: it is retried forever).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The node's credentials could not be read.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The journal could not be read or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// The link to apid, as the agent sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Link {
    /// The last sync succeeded.
    Up,
    /// Syncs fail; `attempts` in a row, since `since` (epoch seconds).
    Down {
        /// Failed attempts since the last success.
        attempts: u32,
        /// When the link was last known up (or the agent started).
        since: f64,
    },
}

impl Link {
    /// The link after a sync that succeeded (`ok`) or not, at `now`.
    fn next(self, ok: bool, now: f64) -> Self {
        match (self, ok) {
            (_, true) => Self::Up,
            (Self::Up, false) => Self::Down {
                attempts: 1,
                since: now,
            },
            (Self::Down { attempts, since }, false) => Self::Down {
                attempts: attempts.saturating_add(1),
                since,
            },
        }
    }

    /// How long to wait before the next attempt: 250 ms doubling to [`MAX_BACKOFF`], with up
    /// to a quarter of jitter so that nodes cut off together do not return together.
    fn backoff(self) -> Duration {
        let Self::Down { attempts, .. } = self else {
            return Duration::ZERO;
        };
        let base = Duration::from_millis(250)
            .saturating_mul(1 << attempts.min(7).saturating_sub(1))
            .min(MAX_BACKOFF);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }
}

/// The agent of a registered node.
#[derive(Debug)]
pub struct Agent {
    daemon: Daemon,
    creds: Credentials,
    identity: NodeIdentity,
    journal_path: PathBuf,
    journal: Journal,
    channel: Channel,
    heartbeat: u64,
    link: Link,
    renew_before: Option<Duration>,
    /// When the certificate was last renewed by this agent.
    renewed_at: Option<tokio::time::Instant>,
    /// Whether apid has this start's capabilities.
    capabilities_sent: bool,
}

fn ecs_now() -> i64 {
    crate::record::now() as i64
}

impl Agent {
    /// The agent of the node configured by `cfg`, if it is registered.
    pub fn new(daemon: Daemon, cfg: &NodeConfig) -> Result<Option<Self>, AgentError> {
        let creds = Credentials::of(cfg);
        let Some(identity) = creds.identity()? else {
            return Ok(None);
        };
        let channel = Channel::new(identity.endpoint.clone(), creds.client_config()?);
        let journal_path = cfg.agent_state();
        Ok(Some(Self {
            daemon,
            creds,
            identity,
            journal: Journal::load(&journal_path)?,
            journal_path,
            channel,
            heartbeat: DEFAULT_HEARTBEAT,
            link: Link::Down {
                attempts: 0,
                since: crate::record::now(),
            },
            renew_before: cfg.renew_certificate_before,
            renewed_at: None,
            capabilities_sent: false,
        }))
    }

    /// The registration it serves.
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// The control plane's tasks the node holds, by id.
    fn held(&self) -> HashMap<String, (Held, TaskRecord)> {
        self.daemon
            .list()
            .into_iter()
            .filter(|r| r.origin.is_some())
            .map(|r| (r.task_id.clone(), (Held::of(&r), r)))
            .collect()
    }

    /// Records what changed in task `id` since its last report.
    fn note(&mut self, id: &str) -> bool {
        match self.daemon.describe(id) {
            Ok(rec) if rec.origin.is_some() => {
                let changed = self.journal.record(plan::report(&rec));
                if changed {
                    self.replace_while_offline(&rec);
                }
                changed
            }
            _ => false,
        }
    }

    /// Keeps a service's count on this node while apid is unreachable: a service task that
    /// stopped on its own since the link went down is replaced here at once, by a task of the
    /// same definition that says which one it replaces. apid adopts the replacement when the
    /// node is back, or has it stopped if it moved the service's tasks elsewhere meanwhile
    /// (past the grace period). Online, replacing is the service scheduler's work.
    fn replace_while_offline(&mut self, rec: &TaskRecord) {
        let Link::Down { since, .. } = self.link else {
            return;
        };
        let Some(origin) = rec.origin.as_ref() else {
            return;
        };
        if !plan::failed_service_task(rec) || rec.stopped_at.is_none_or(|t| t < since) {
            return;
        }
        let already = self.daemon.list().iter().any(|r| {
            r.origin
                .as_ref()
                .is_some_and(|o| o.replaces.as_deref() == Some(rec.task_id.as_str()))
        });
        if already {
            return;
        }
        let id = crate::daemon::new_task_id();
        let arn = match origin.task_arn.rsplit_once('/') {
            Some((prefix, _)) => format!("{prefix}/{id}"),
            None => id.clone(),
        };
        let replacement = Origin {
            task_arn: arn,
            replaces: Some(rec.task_id.clone()),
            ..origin.clone()
        };
        match self
            .daemon
            .run_placed(&id, rec.task_definition.clone(), replacement)
        {
            Ok(new) => {
                tracing::info!(task = %id, replaces = %rec.task_id, "offline: replacing a service task that stopped, to keep the service's count on this node");
                self.journal.record(plan::report(&new));
            }
            Err(e) => {
                tracing::warn!(replaces = %rec.task_id, error = %e, "offline: the service task cannot be replaced here")
            }
        }
    }

    /// Records what changed in every control-plane task (at start, and when the change feed
    /// overflowed).
    fn note_all(&mut self) -> bool {
        let mut any = false;
        for (_, rec) in self.held().into_values() {
            any |= self.journal.record(plan::report(&rec));
        }
        any
    }

    /// Records one piece of the change feed's news.
    fn noted(&mut self, change: Result<String, broadcast::error::RecvError>) -> bool {
        match change {
            Ok(id) => self.note(&id),
            Err(broadcast::error::RecvError::Lagged(_)) => self.note_all(),
            Err(broadcast::error::RecvError::Closed) => false,
        }
    }

    /// Takes the change feed's news without waiting.
    fn drain(&mut self, changes: &mut broadcast::Receiver<String>) -> bool {
        let mut any = false;
        loop {
            match changes.try_recv() {
                Ok(id) => any |= self.note(&id),
                Err(broadcast::error::TryRecvError::Lagged(_)) => any |= self.note_all(),
                Err(_) => return any,
            }
        }
    }

    fn save(&self) -> Result<(), AgentError> {
        Ok(self.journal.save(&self.journal_path)?)
    }

    /// Starts a task apid placed here; a definition this node cannot run is reported
    /// STOPPED (TaskFailedToStart) with the reason, as ECS reports it.
    fn start(&mut self, d: &DesiredTask) {
        let origin = Origin {
            task_arn: d.task_arn.clone(),
            task_definition_arn: d.task_definition_arn.clone(),
            started_by: d.started_by.clone(),
            replaces: None,
        };
        let started = plan::definition(d)
            .map_err(|e| format!("invalid task definition: {e}"))
            .and_then(|def| {
                self.daemon
                    .run_placed(&d.task_id, def, origin)
                    .map_err(|e| e.to_string())
            });
        match started {
            Ok(rec) => {
                tracing::info!(task = %d.task_id, definition = %d.task_definition_arn, "starting a task placed by the control plane");
                self.journal.record(plan::report(&rec));
            }
            Err(why) => {
                tracing::warn!(task = %d.task_id, error = %why, "a placed task cannot start here");
                self.journal
                    .record(plan::stopped_before_start(d, "TaskFailedToStart", &why));
            }
        }
    }

    /// Makes the node hold what `r` says.
    fn converge(&mut self, r: &SyncResponse) {
        let held = self.held();
        let states: HashMap<String, Held> = held
            .iter()
            .map(|(id, (h, _))| (id.clone(), h.clone()))
            .collect();
        let journal = self.journal.clone();
        let actions = plan::plan(&r.tasks, &states, |id| journal.last_status(id));
        for a in actions {
            match a {
                Action::Start(d) => self.start(&d),
                Action::Stop { id, reason } => {
                    tracing::info!(task = %id, %reason, "stopping a task as the control plane asks");
                    match self.daemon.stop(&id, StopCode::UserInitiated, &reason) {
                        Ok(_) | Err(DaemonError::NoSuchTask(_)) => {}
                        Err(e) => tracing::warn!(task = %id, error = %e, "stopping"),
                    }
                }
                Action::NeverRan(d) => {
                    let reason = d
                        .stopped_reason
                        .clone()
                        .unwrap_or_else(|| "Task stopped before it started".into());
                    self.journal
                        .record(plan::stopped_before_start(&d, "UserInitiated", &reason));
                }
            }
        }
        let mut keep: BTreeSet<&str> = r.tasks.iter().map(|d| d.task_id.as_str()).collect();
        keep.extend(held.keys().map(String::as_str));
        self.journal.prune(&keep);
    }

    /// apid refused the node: its registration is over. The control plane's tasks stop (as
    /// deregistration stops them on ECS) and the registration is retired, so the node can be
    /// registered anew; tasks run locally are not the control plane's and keep running.
    fn deregistered(&mut self, e: &TransportError) {
        tracing::error!(instance = %self.identity.container_instance_arn, error = %e, "the control plane deregistered this node: stopping its tasks");
        for (id, (h, _)) in self.held() {
            if !h.stopped {
                let _ = self.daemon.stop(
                    &id,
                    StopCode::TerminationNotice,
                    "Container instance deregistered",
                );
            }
        }
        if let Err(e) = self.creds.retire() {
            tracing::error!(error = %e, "retiring the registration");
        }
    }

    /// Renews the certificate when due (a third of its life left, or `renew_before`).
    async fn renew_if_due(&mut self) {
        let Ok((not_before, not_after)) = self.creds.cert_validity() else {
            return;
        };
        let now = ecs_now();
        let lead = match self.renew_before {
            Some(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            None => (not_after - not_before) / 3,
        };
        // At most every ten minutes, whatever `renew_before` says.
        let recently = self
            .renewed_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(600));
        if now < not_after - lead || recently {
            return;
        }
        let renewed: Result<Renewed, AgentError> = async {
            let csr = self.creds.csr()?;
            let r: Renewed = self
                .channel
                .post("/v1/renew", &RenewRequest { csr }, Duration::from_secs(30))
                .await
                .map_err(IdentityError::from)?;
            self.creds.install_cert(&r.certificate_pem)?;
            self.channel.set_tls(self.creds.client_config()?);
            Ok(r)
        }
        .await;
        self.renewed_at = Some(tokio::time::Instant::now());
        match renewed {
            Ok(r) => tracing::info!(not_after = r.not_after, "node certificate renewed"),
            Err(e) => tracing::warn!(error = %e, "renewing the node certificate; will retry"),
        }
    }

    /// Syncs until the node is deregistered (an unreachable apid is retried forever).
    pub async fn run(mut self) -> Result<(), AgentError> {
        let mut changes = self.daemon.subscribe();
        self.note_all();
        self.save()?;
        tracing::info!(instance = %self.identity.container_instance_arn, endpoint = %self.identity.endpoint, "syncing with the control plane");
        loop {
            if self.drain(&mut changes) {
                self.save()?;
            }
            let events: Vec<_> = self
                .journal
                .outbox
                .iter()
                .take(MAX_EVENTS)
                .cloned()
                .collect();
            let wait = if events.is_empty() { self.heartbeat } else { 0 };
            let req = SyncRequest {
                version: self.journal.version,
                events,
                wait_seconds: wait,
                capabilities: (!self.capabilities_sent).then(|| self.daemon.capabilities()),
            };
            let timeout = Duration::from_secs(wait + 30);
            let result = if wait > 0 {
                // A long poll: a local change cancels it, to be sent at once.
                tokio::select! {
                    r = self.channel.post::<_, SyncResponse>("/v1/sync", &req, timeout) => Ok(r),
                    c = changes.recv() => Err(c),
                }
            } else {
                Ok(self.channel.post("/v1/sync", &req, timeout).await)
            };
            let result = match result {
                Ok(r) => r,
                Err(change) => {
                    self.noted(change);
                    continue;
                }
            };
            match result {
                Ok(r) => {
                    if self.link != Link::Up {
                        tracing::info!(
                            pending = self.journal.outbox.len(),
                            "connected to the control plane"
                        );
                    }
                    self.link = self.link.next(true, crate::record::now());
                    self.capabilities_sent = true;
                    self.journal.acknowledged(r.acked_seq);
                    self.journal.version = r.version;
                    self.heartbeat = r.heartbeat_seconds.max(1);
                    self.converge(&r);
                    self.save()?;
                    for req in r.requests {
                        tokio::spawn(asks::serve(
                            self.daemon.clone(),
                            self.channel.sibling(),
                            req,
                        ));
                    }
                    self.renew_if_due().await;
                }
                Err(e) if e.deregistered() => {
                    self.deregistered(&e);
                    return Ok(());
                }
                Err(e) => {
                    if self.link == Link::Up {
                        tracing::warn!(error = %e, "lost the control plane: tasks keep running, changes are kept until it is back");
                    } else {
                        tracing::debug!(error = %e, "the control plane is still unreachable");
                    }
                    self.link = self.link.next(false, crate::record::now());
                    // Changes meanwhile are recorded as they come, so none is lost if skiffd
                    // stops while apid is away.
                    let pause = tokio::time::sleep(self.link.backoff());
                    tokio::pin!(pause);
                    loop {
                        tokio::select! {
                            _ = &mut pause => break,
                            c = changes.recv() => {
                                if self.noted(c) {
                                    self.save()?;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_backs_off_and_recovers() {
        let mut l = Link::Up;
        assert_eq!(l.backoff(), Duration::ZERO);
        let mut last = Duration::ZERO;
        for t in 0..10 {
            l = l.next(false, f64::from(t));
            let b = l.backoff();
            assert!(b >= last.min(MAX_BACKOFF), "{b:?} after {last:?}");
            assert!(b <= MAX_BACKOFF + MAX_BACKOFF / 4, "{b:?}");
            last = b;
        }
        assert!(last >= MAX_BACKOFF, "reaches the cap: {last:?}");
        assert!(
            matches!(l, Link::Down { since: 0.0, .. }),
            "down since the first failure"
        );
        assert_eq!(l.next(true, 11.0), Link::Up);
    }
}
