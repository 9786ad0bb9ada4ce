//! One task's supervisor: an actor that owns the task's record and drives it through the
//! lifecycle (`lifecycle::transition`), taking events one at a time: stop requests, container
//! exits (a shim's pidfd became readable), health check results.
//!
//! Decisions are the pure functions of `orchestration` (dependsOn readiness, restart policy,
//! health); this module only applies them and persists the record after every change, before
//! the change is published to API readers, so that what a client saw survives a crash.
//!
//! The same loop resumes a task after a skiffd restart: running containers are watched again
//! through their shims' pidfds, and a shim that exited meanwhile is an exit event like any other,
//! read from the exit file the shim wrote.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::lifecycle::{Stop, StopCode, TaskEvent, TaskStatus};
use crate::orchestration::{
    AfterExit, CheckOutcome, Health, HealthSettings, HealthTracker, Phase, Readiness, after_exit,
    readiness,
};
use crate::process::Watched;
use crate::provision::{self, ContainerFiles, Host};
use crate::record::{ContainerStatus, Records, TaskRecord, epoch_seconds, now};
use crate::shim::ExitStatus;
use crate::taskdef::ContainerDefinition;

/// What happens to a task.
#[derive(Debug)]
pub enum Event {
    /// Stop the task.
    Stop(Stop),
    /// Run `name`'s shim exited (run = its restart count when started).
    Exited {
        /// The container.
        name: String,
        /// Which run of it.
        run: u32,
    },
    /// A health check of run `run` of `name` finished.
    Checked {
        /// The container.
        name: String,
        /// Which run of it.
        run: u32,
        /// Its result.
        outcome: CheckOutcome,
    },
}

/// The actor of one task.
pub struct Runner {
    host: Arc<Host>,
    records: Records,
    rec: TaskRecord,
    publish: watch::Sender<TaskRecord>,
    changes: broadcast::Sender<String>,
    events: mpsc::UnboundedReceiver<Event>,
    tx: mpsc::UnboundedSender<Event>,
    shims: HashMap<String, Arc<Watched>>,
    health: HashMap<String, (HealthTracker, JoinHandle<()>)>,
    started: HashMap<String, Instant>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("task", &self.rec.task_id)
            .finish()
    }
}

impl Runner {
    /// A runner for `rec`, publishing to `publish` (and the task's id to `changes`, the node's
    /// feed of changed tasks), taking events from `events` (whose sender is `tx`).
    pub fn new(
        host: Arc<Host>,
        records: Records,
        rec: TaskRecord,
        (publish, changes): (watch::Sender<TaskRecord>, broadcast::Sender<String>),
        tx: mpsc::UnboundedSender<Event>,
        events: mpsc::UnboundedReceiver<Event>,
    ) -> Self {
        Self {
            host,
            records,
            rec,
            publish,
            changes,
            events,
            tx,
            shims: HashMap::new(),
            health: HashMap::new(),
            started: HashMap::new(),
        }
    }

    fn task_dir(&self) -> PathBuf {
        self.records.task_dir(&self.rec.task_id)
    }

    /// Persists and publishes the record. The write (two fsyncs) blocks, so it runs as blocking
    /// work rather than stall one of the runtime's two workers.
    fn save(&mut self) {
        let saved = tokio::task::block_in_place(|| self.records.save(&self.rec));
        if let Err(e) = saved {
            tracing::error!(task = %self.rec.task_id, error = %e, "persisting the task record");
        }
        self.publish.send_replace(self.rec.clone());
        // Nobody listening (no control plane) is not an error.
        let _ = self.changes.send(self.rec.task_id.clone());
    }

    /// Applies a lifecycle event; an invalid one is a bug, logged and ignored.
    fn apply(&mut self, event: TaskEvent) {
        match self.rec.status.clone().transition(event) {
            Ok(next) => {
                match &next {
                    TaskStatus::Running => self.rec.started_at = Some(now()),
                    TaskStatus::Stopped(_) => self.rec.stopped_at = Some(now()),
                    s if s.stop().is_some() && self.rec.stopping_at.is_none() => {
                        self.rec.stopping_at = Some(now());
                        self.rec.desired_status = "STOPPED".into();
                    }
                    _ => {}
                }
                self.rec.status = next;
            }
            Err(e) => tracing::error!(task = %self.rec.task_id, error = %e, "lifecycle"),
        }
    }

    /// Runs the task to STOPPED, from whatever state its record is in; `recovered` when the
    /// record was found at skiffd's start rather than just made.
    pub async fn run(mut self, recovered: bool) {
        match self.rec.status {
            TaskStatus::Stopped(_) => return,
            TaskStatus::Provisioning if recovered => {
                // A skiffd that died while provisioning: what it made is released below.
                self.apply(TaskEvent::StartFailed {
                    reason: "skiffd restarted while the task was provisioning".into(),
                });
            }
            TaskStatus::Provisioning => {
                let dir = self.task_dir();
                let provisioned = provision::provision(&self.host, &mut self.rec, &dir).await;
                match provisioned {
                    Ok(()) => self.apply(TaskEvent::Provisioned),
                    Err(e) => self.apply(TaskEvent::StartFailed {
                        reason: e.to_string(),
                    }),
                }
            }
            _ => self.recover(),
        }
        self.save();
        loop {
            self.start_ready().await;
            self.advance().await;
            if matches!(self.rec.status, TaskStatus::Stopped(_)) {
                return;
            }
            let Some(event) = self.events.recv().await else {
                return;
            };
            self.handle(event).await;
        }
    }

    /// After a restart: watch the shims of running containers again; one that is gone is an
    /// exit to read from its exit file.
    fn recover(&mut self) {
        let running: Vec<_> = self
            .rec
            .containers
            .iter()
            .filter(|c| c.last_status == ContainerStatus::Running)
            .map(|c| (c.name.clone(), c.shim, c.restart_count, c.started_at))
            .collect();
        for (name, shim, run, started_at) in running {
            // When it really started, for restartAttemptPeriod and startPeriod.
            let ago = Duration::from_secs_f64((now() - started_at.unwrap_or_else(now)).max(0.0));
            let started = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
            self.started.insert(name.clone(), started);
            match shim.and_then(|s| Watched::open(s.pid, s.start_time)) {
                Some(w) => self.watch(&name, run, w),
                None => {
                    let _ = self.tx.send(Event::Exited { name, run });
                }
            }
        }
    }

    /// Watches a started container's shim and its health.
    fn watch(&mut self, name: &str, run: u32, shim: Watched) {
        let shim = Arc::new(shim);
        self.shims.insert(name.to_owned(), shim.clone());
        let tx = self.tx.clone();
        let n = name.to_owned();
        tokio::spawn(async move {
            shim.exited().await;
            let _ = tx.send(Event::Exited { name: n, run });
        });
        if let Some(check) = self.definition(name).health_check {
            let settings = HealthSettings::from_def(&check);
            let target = self.host.exec_target(&self.rec, name, &self.task_dir());
            let checker = tokio::spawn(health_checks(
                target,
                settings.clone(),
                name.to_owned(),
                run,
                self.tx.clone(),
            ));
            if let Some((_, old)) = self
                .health
                .insert(name.to_owned(), (HealthTracker::new(settings), checker))
            {
                old.abort();
            }
        }
    }

    /// Container `name`'s definition (every record has one).
    fn definition(&self, name: &str) -> ContainerDefinition {
        self.rec
            .task_definition
            .container_definitions
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .expect("a definition per record")
    }

    fn stopping(&self) -> bool {
        self.rec.status.stop().is_some()
    }

    /// Starts every pending container whose dependencies allow it, until none can start.
    async fn start_ready(&mut self) {
        loop {
            if self.stopping()
                || !matches!(
                    self.rec.status,
                    TaskStatus::Pending | TaskStatus::Activating | TaskStatus::Running
                )
            {
                return;
            }
            let phases = self.phases();
            let def = self.rec.task_definition.clone();
            let mut progressed = false;
            for c in &def.container_definitions {
                if self.rec.container(&c.name).map(|r| r.last_status)
                    != Some(ContainerStatus::Pending)
                {
                    continue;
                }
                match readiness(c, &phases) {
                    Readiness::Waiting => continue,
                    Readiness::Ready => match self.start_container(&c.name).await {
                        Ok(()) => {}
                        Err(reason) => self.never_started(&c.name, reason, c.is_essential()),
                    },
                    Readiness::Impossible(why) => {
                        self.never_started(&c.name, why, c.is_essential());
                    }
                }
                progressed = true;
                break;
            }
            if !progressed {
                return;
            }
        }
    }

    /// A container that will not run: recorded; an essential one stops the task.
    fn never_started(&mut self, name: &str, reason: String, essential: bool) {
        if let Some(r) = self.rec.container_mut(name) {
            r.last_status = ContainerStatus::Stopped;
            r.reason = Some(reason.clone());
        }
        if essential {
            self.begin_stop(Stop {
                stop_code: StopCode::TaskFailedToStart,
                stopped_reason: format!("Essential container {name} could not start: {reason}"),
            });
        } else {
            self.save();
        }
    }

    async fn start_container(&mut self, name: &str) -> Result<(), String> {
        let def = self.definition(name);
        let runtime_id = self.rec.container(name).expect("record").runtime_id.clone();
        let files = ContainerFiles::new(&self.task_dir(), name);
        let vm = provision::in_vm(&self.rec, name, &self.task_dir());
        let (shim, pid) = provision::start(&self.host, &def, &runtime_id, &files, vm.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        let r = self.rec.container_mut(name).expect("record");
        r.last_status = ContainerStatus::Running;
        r.shim = Some(shim);
        r.pid = Some(pid);
        r.started_at = Some(now());
        r.finished_at = None;
        r.exit_code = None;
        r.reason = None;
        r.health_status = Health::Unknown;
        let run = r.restart_count;
        self.started.insert(name.to_owned(), Instant::now());
        self.save();
        match Watched::open(shim.pid, shim.start_time) {
            Some(w) => self.watch(name, run, w),
            // Already gone: the container ran and exited in no time.
            None => {
                let _ = self.tx.send(Event::Exited {
                    name: name.to_owned(),
                    run,
                });
            }
        }
        Ok(())
    }

    fn phases(&self) -> HashMap<String, Phase> {
        self.rec
            .containers
            .iter()
            .map(|c| {
                let phase = match c.last_status {
                    ContainerStatus::Pending => Phase::Pending,
                    ContainerStatus::Running => Phase::Running(c.health_status),
                    ContainerStatus::Stopped => Phase::Exited(c.exit_code.unwrap_or(-1)),
                };
                (c.name.clone(), phase)
            })
            .collect()
    }

    /// Moves the task along once its containers allow it.
    async fn advance(&mut self) {
        let none_pending = self
            .rec
            .containers
            .iter()
            .all(|c| c.last_status != ContainerStatus::Pending);
        let none_running = self
            .rec
            .containers
            .iter()
            .all(|c| c.last_status != ContainerStatus::Running);
        let before = self.rec.status.clone();
        if self.rec.status == TaskStatus::Pending && none_pending {
            self.apply(TaskEvent::ContainersStarted);
        }
        if self.rec.status == TaskStatus::Activating {
            self.apply(TaskEvent::Activated);
        }
        if matches!(self.rec.status, TaskStatus::Stopping(_)) && none_running {
            self.apply(TaskEvent::ContainersStopped);
        }
        if matches!(self.rec.status, TaskStatus::Deprovisioning(_)) {
            self.save();
            // The PID namespace holder's shim kills it at once (stopTimeout 0); a VM shim powers
            // its VM off. Release kills what is left.
            let holders = [self.rec.pause.take(), self.rec.vm.take().map(|v| v.shim)];
            for h in holders.into_iter().flatten() {
                if let Some(w) = Watched::open(h.pid, h.start_time) {
                    w.signal(Signal::TERM);
                    let _ = tokio::time::timeout(Duration::from_secs(12), w.exited()).await;
                }
            }
            provision::release(&self.host, &self.rec, &self.task_dir()).await;
            for h in self.health.drain() {
                h.1.1.abort();
            }
            self.apply(TaskEvent::Deprovisioned);
        }
        if self.rec.status != before {
            self.save();
        }
    }

    /// Begins stopping: SIGTERM to every running container through its shim (which sends
    /// SIGKILL after the container's stopTimeout), pending ones will never start.
    fn begin_stop(&mut self, stop: Stop) {
        if self.stopping() {
            return;
        }
        self.apply(TaskEvent::StopRequested(stop));
        self.deactivate();
        self.signal_all();
        self.save();
    }

    fn deactivate(&mut self) {
        if matches!(self.rec.status, TaskStatus::Deactivating(_)) {
            // Nothing to deregister yet (ports and endpoints come with netd/).
            self.apply(TaskEvent::Deactivated);
        }
    }

    fn signal_all(&mut self) {
        for c in &mut self.rec.containers {
            match c.last_status {
                ContainerStatus::Pending => {
                    c.last_status = ContainerStatus::Stopped;
                    c.reason = Some("the task stopped before the container started".into());
                }
                ContainerStatus::Running => {
                    if let Some(shim) = self.shims.get(&c.name) {
                        shim.signal(Signal::TERM);
                    }
                }
                ContainerStatus::Stopped => {}
            }
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Stop(stop) => self.begin_stop(stop),
            Event::Checked { name, run, outcome } => self.checked(&name, run, outcome),
            Event::Exited { name, run } => self.exited(&name, run).await,
        }
    }

    fn checked(&mut self, name: &str, run: u32, outcome: CheckOutcome) {
        let Some(rec) = self.rec.container(name) else {
            return;
        };
        if rec.restart_count != run || rec.last_status != ContainerStatus::Running {
            return;
        }
        let since = self
            .started
            .get(name)
            .map_or(Duration::ZERO, Instant::elapsed);
        let Some((tracker, _)) = self.health.get_mut(name) else {
            return;
        };
        let health = tracker.record(since, outcome);
        if self.rec.container(name).map(|c| c.health_status) != Some(health) {
            self.rec.container_mut(name).expect("record").health_status = health;
            self.rec.health_status = self.task_health();
            self.save();
        }
    }

    /// The task's health: UNHEALTHY if an essential container is, HEALTHY if every essential
    /// container with a check is, UNKNOWN otherwise.
    fn task_health(&self) -> Health {
        let mut all_healthy = true;
        let mut any_checked = false;
        for d in &self.rec.task_definition.container_definitions {
            if !d.is_essential() || d.health_check.is_none() {
                continue;
            }
            any_checked = true;
            match self.rec.container(&d.name).map(|c| c.health_status) {
                Some(Health::Unhealthy) => return Health::Unhealthy,
                Some(Health::Healthy) => {}
                _ => all_healthy = false,
            }
        }
        if any_checked && all_healthy {
            Health::Healthy
        } else {
            Health::Unknown
        }
    }

    async fn exited(&mut self, name: &str, run: u32) {
        let Some(rec) = self.rec.container(name) else {
            return;
        };
        if rec.restart_count != run || rec.last_status != ContainerStatus::Running {
            return;
        }
        let (runtime_id, started_at) = (rec.runtime_id.clone(), rec.started_at);
        let files = ContainerFiles::new(&self.task_dir(), name);
        self.shims.remove(name);
        if let Some((_, checker)) = self.health.remove(name) {
            checker.abort();
        }
        let status = ExitStatus::read(&files.exit_file()).ok().flatten();
        // When the shim wrote the exit, which a skiffd that was down sees late; never before
        // the recorded start, which lags the real one (and file times are coarse).
        let written = std::fs::metadata(files.exit_file()).and_then(|m| m.modified());
        let finished_at = match (&status, written) {
            (Some(_), Ok(t)) => epoch_seconds(t),
            _ => now(),
        }
        .max(started_at.unwrap_or(0.0));
        if status.is_none() {
            // The shim died without recording (SIGKILL): the container may live on.
            provision::delete_container(&self.host, &runtime_id).await;
        }
        let ran_for = self
            .started
            .get(name)
            .map_or(Duration::ZERO, Instant::elapsed);
        let def = self.definition(name);
        let r = self.rec.container_mut(name).expect("record");
        r.last_status = ContainerStatus::Stopped;
        r.shim = None;
        r.pid = None;
        r.finished_at = Some(finished_at);
        // No verdict on a container that does not run (ECS reports UNKNOWN).
        r.health_status = Health::Unknown;
        r.exit_code = status.as_ref().map(|s| s.exit_code);
        r.reason = match &status {
            Some(s) if s.oom_killed => {
                Some("OutOfMemoryError: Container killed due to memory usage".into())
            }
            Some(_) => None,
            None => Some("skiff-shim exited without recording the container's exit".into()),
        };
        let code = r.exit_code.unwrap_or(-1);
        self.rec.health_status = self.task_health();
        self.save();
        let stopping = self.stopping();
        match after_exit(def.restart_policy.as_ref(), code, ran_for, stopping) {
            AfterExit::Restart => {
                let r = self.rec.container_mut(name).expect("record");
                r.restart_count += 1;
                tracing::info!(task = %self.rec.task_id, container = name, exit_code = code, "restarting by restartPolicy");
                if let Err(reason) = self.start_container(name).await {
                    self.never_started(name, reason, def.is_essential());
                }
            }
            AfterExit::Stay(_) if def.is_essential() && !stopping => {
                self.apply(TaskEvent::EssentialExited {
                    container: name.to_owned(),
                    exit_code: code,
                });
                self.deactivate();
                self.signal_all();
                self.save();
            }
            AfterExit::Stay(_) => {}
        }
    }
}

/// Runs a container's health check (in `target`) every interval and reports each outcome.
async fn health_checks(
    target: provision::ExecTarget,
    settings: HealthSettings,
    name: String,
    run: u32,
    tx: mpsc::UnboundedSender<Event>,
) {
    loop {
        tokio::time::sleep(settings.interval).await;
        let mut cmd = tokio::process::Command::from(target.command(false, &settings.argv));
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status();
        let outcome = match tokio::time::timeout(settings.timeout, child).await {
            Ok(Ok(s)) if s.success() => CheckOutcome::Passed,
            Ok(_) => CheckOutcome::Failed,
            Err(_) => CheckOutcome::TimedOut,
        };
        let event = Event::Checked {
            name: name.clone(),
            run,
            outcome,
        };
        if tx.send(event).is_err() {
            return;
        }
    }
}
