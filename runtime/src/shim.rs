//! The per-container shim: the process that owns a container for its whole life, so that the
//! container and its exit status outlive skiffd.
//!
//! As containerd's shims do, it is started detached from skiffd (its own session), marks itself
//! a child subreaper, creates and starts the container with youki's libcontainer, and waits for
//! the container's init; then it records the exit (code, or 128 + signal, as Docker reports it)
//! in an exit file written atomically, with whether the kernel's OOM killer struck (read from the
//! container's cgroup before it goes: cgroup v1 counts the kill nowhere else), and deletes the
//! container (state and cgroup). skiffd, restarted
//! after a crash, finds running containers by their shims and finished ones by their exit files.
//!
//! The shim is single-threaded on purpose: libcontainer clones and runs Rust code in the child,
//! which is only sound when no other thread can hold a lock (docs/design.md, STACK.md). It waits
//! for its own children only (the container's init is reparented to it as the nearest
//! subreaper), never for anyone else's.
//!
//! `exec` runs a further process inside a running container, as `docker exec` does, with the
//! caller's stdio or with a terminal of the container's relayed to the caller's
//! ([`crate::console`]).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::get_executor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::console::{ConsoleError, ConsoleSocket, RawMode, copy_size, stdio};
use crate::logs::{LogError, LogWriter, Rotation, Stream};

/// Errors of the shim.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// A file of the shim could not be opened or written.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// libcontainer refused to create or start the container.
    #[error("container {id}: {op}: {message}")]
    Container {
        /// The container id.
        id: String,
        /// create, start, delete.
        op: &'static str,
        /// What libcontainer said.
        message: String,
    },
    /// The log could not be written.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The terminal of an exec could not be set up.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// The task's VM could not be reached.
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
    /// A system call failed.
    #[error("container {id}: {op}: {source}")]
    Sys {
        /// The container id.
        id: String,
        /// The call.
        op: &'static str,
        /// The errno.
        #[source]
        source: nix::Error,
    },
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitStatus {
    /// Exit code; 128 + signal number when killed by a signal.
    pub exit_code: i32,
    /// The signal that killed it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Killed by the kernel's OOM killer (ECS reports `OutOfMemoryError`).
    #[serde(default)]
    pub oom_killed: bool,
}

impl ExitStatus {
    fn from_wait(status: WaitStatus) -> Option<Self> {
        match status {
            WaitStatus::Exited(_, code) => Some(Self {
                exit_code: code,
                signal: None,
                oom_killed: false,
            }),
            WaitStatus::Signaled(_, sig, _) => Some(Self {
                exit_code: 128 + sig as i32,
                signal: Some(sig as i32),
                oom_killed: false,
            }),
            _ => None,
        }
    }

    /// Reads an exit file written by a shim.
    pub fn read(path: &Path) -> Result<Option<Self>, ShimError> {
        match std::fs::read(path) {
            Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| {
                io("parse exit file", path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read exit file", path)(e)),
        }
    }
}

/// What the shim runs.
#[derive(Clone, Debug)]
pub struct ShimConfig {
    /// Container id (unique on the node).
    pub id: String,
    /// OCI bundle: a directory with `config.json`.
    pub bundle: PathBuf,
    /// libcontainer's state root.
    pub state_root: PathBuf,
    /// Where the exit status goes.
    pub exit_file: PathBuf,
    /// Directory of the container's json-file log.
    pub log_dir: PathBuf,
    /// Its rotation.
    pub rotation: Rotation,
    /// On SIGTERM or SIGINT to the shim, the container gets SIGTERM, and SIGKILL this long after
    /// if it is still running (the container definition's `stopTimeout`).
    pub stop_timeout: Duration,
}

/// Error makers for a system call (`sys`) and a libcontainer call (`lc`) on container `id`.
fn sys_err(id: &str) -> impl Fn(&'static str) -> Box<dyn FnOnce(nix::Error) -> ShimError> + use<> {
    let id = id.to_owned();
    move |op| {
        let id = id.clone();
        Box::new(move |source| ShimError::Sys { id, op, source })
    }
}

fn lc_err(
    id: &str,
) -> impl Fn(&'static str) -> Box<dyn FnOnce(libcontainer::error::LibcontainerError) -> ShimError> + use<>
{
    let id = id.to_owned();
    move |op| {
        let id = id.clone();
        Box::new(move |e| ShimError::Container {
            id,
            op,
            message: e.to_string(),
        })
    }
}

/// Creates, starts and waits for the container; records its exit; deletes it. Returns the exit.
/// `on_started` is called with the container's init pid once it runs (skiffd waits for it).
pub fn run(cfg: &ShimConfig, on_started: impl FnOnce(i32)) -> Result<ExitStatus, ShimError> {
    let id = cfg.id.clone();
    let (sys, lc) = (sys_err(&id), lc_err(&id));
    nix::sys::prctl::set_child_subreaper(true).map_err(sys("set child subreaper"))?;
    let config = cfg.bundle.join("config.json");
    let cgroup = oci_spec::runtime::Spec::load(&config)
        .ok()
        .and_then(|s| s.linux().as_ref().and_then(|l| l.cgroups_path().clone()));
    let layout = crate::cgroups::Layout::detect(Path::new(crate::cgroups::CGROUP_ROOT));
    let ooms = || {
        cgroup
            .as_deref()
            .map(|c| crate::cgroups::oom_kills(&layout, c))
            .unwrap_or(0)
    };
    let ooms_before = ooms();
    let mut log = LogWriter::open(&cfg.log_dir, cfg.rotation)?;
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    let mut container = ContainerBuilder::new(cfg.id.clone(), SyscallType::Linux)
        .with_root_path(&cfg.state_root)
        .map_err(lc("state root"))?
        .with_stdout(out_w)
        .with_stderr(err_w)
        .validate_id()
        .map_err(lc("id"))?
        .as_init(&cfg.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(lc("create"))?;
    let started = container.start().map_err(lc("start"));
    let mut status = match (started, container.pid()) {
        (Ok(()), Some(pid)) => {
            on_started(pid.as_raw());
            // Stop requests arrive as signals to the shim. Blocked only now: the container's
            // init was forked by build() and must not inherit the mask.
            let signals = stop_requests().map_err(sys("signalfd"))?;
            let stop = Stopper::new(cfg.stop_timeout, signals, move |sig| {
                let _ = kill(pid, sig);
            });
            // The write ends went to the container: the pipes close when its processes are gone.
            pump(
                &mut log,
                [(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
                stop,
            )
            .map_err(sys("read output"))?;
            log.flush()?;
            wait_for(pid).map_err(sys("wait"))?
        }
        (Err(e), _) => {
            let _ = container.delete(true);
            return Err(e);
        }
        (Ok(()), None) => {
            let _ = container.delete(true);
            return Err(ShimError::Container {
                id,
                op: "start",
                message: "no init pid after start".into(),
            });
        }
    };
    status.oom_killed =
        status.signal == Some(nix::sys::signal::Signal::SIGKILL as i32) && ooms() > ooms_before;
    write_exit(&cfg.exit_file, &status)?;
    container.delete(true).map_err(lc("delete"))?;
    Ok(status)
}

/// Blocks SIGTERM and SIGINT, the stop requests to a shim, in this thread (and the threads it
/// starts after), and returns a descriptor to read them from.
pub(crate) fn stop_requests() -> nix::Result<SignalFd> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block()?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
}

/// SIGTERM to the container on a stop request, SIGKILL once the timeout has passed; `send`
/// delivers a signal (to a local process, or through a VM's agent).
pub(crate) struct Stopper {
    send: Box<dyn FnMut(Signal)>,
    timeout: Duration,
    deadline: Option<Instant>,
    /// SIGTERM and SIGINT to the shim: the stop requests.
    pub(crate) signals: SignalFd,
}

impl Stopper {
    pub(crate) fn new(
        timeout: Duration,
        signals: SignalFd,
        send: impl FnMut(Signal) + 'static,
    ) -> Self {
        Self {
            send: Box::new(send),
            timeout,
            deadline: None,
            signals,
        }
    }

    /// A stop request arrived: ask the container to stop, once.
    pub(crate) fn requested(&mut self) {
        while let Ok(Some(_)) = self.signals.read_signal() {}
        if self.deadline.is_none() {
            (self.send)(Signal::SIGTERM);
            self.deadline = Some(Instant::now() + self.timeout);
        }
    }

    /// How long poll may sleep; kills the container when its time is up.
    pub(crate) fn poll_timeout(&mut self) -> PollTimeout {
        let Some(deadline) = self.deadline else {
            return PollTimeout::NONE;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            (self.send)(Signal::SIGKILL);
            self.deadline = Some(Instant::now() + Duration::from_secs(3600));
            return PollTimeout::NONE;
        }
        let ms = i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX);
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
    }
}

/// Copies the container's output into the log until both pipes are closed, handling stop
/// requests meanwhile.
fn pump(
    log: &mut LogWriter,
    pipes: [(OwnedFd, Stream); 2],
    mut stop: Stopper,
) -> Result<(), nix::Error> {
    let mut open: Vec<(File, Stream)> = pipes
        .into_iter()
        .map(|(fd, s)| (File::from(fd), s))
        .collect();
    let mut buf = vec![0u8; 64 * 1024];
    while !open.is_empty() {
        let timeout = stop.poll_timeout();
        let mut fds: Vec<PollFd<'_>> = open
            .iter()
            .map(|(f, _)| PollFd::new(f.as_fd(), PollFlags::POLLIN))
            .collect();
        fds.push(PollFd::new(stop.signals.as_fd(), PollFlags::POLLIN));
        match poll(&mut fds, timeout) {
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[open.len()] {
            stop.requested();
        }
        let mut closed = Vec::new();
        for (i, (file, stream)) in open.iter_mut().enumerate() {
            if !ready[i] {
                continue;
            }
            match file.read(&mut buf) {
                Ok(0) => closed.push(i),
                Ok(n) => {
                    if let Err(e) = log.write(*stream, &buf[..n]) {
                        // A full disk must not stall the container on a full pipe: drop output.
                        eprintln!("skiff-shim: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            open.remove(i);
        }
    }
    Ok(())
}

/// Runs `args` inside the running container `id` as `docker exec` does: in its namespaces and
/// cgroup, with its process settings (user, environment, working directory, capabilities,
/// `noNewPrivileges`, rlimits) taken from the container's spec, as runc builds an exec process.
/// Returns how it ended. The caller becomes the subreaper of the exec'd process, so it is
/// waited for here even though libcontainer's intermediate process exits.
///
/// Without `tty` the process gets this process's stdio. With `tty` (`docker exec -t`) it gets a
/// terminal allocated in the container (see [`crate::console`]), which this process relays to
/// its own stdin and stdout, in raw mode and at its window size when they are a terminal, until
/// the process has exited and its output is drained.
///
/// The container's seccomp filter is loaded by `SeccompExecutor` (libcontainer's tenant
/// builder drops it).
pub fn exec(
    id: &str,
    state_root: &Path,
    args: Vec<String>,
    tty: bool,
) -> Result<ExitStatus, ShimError> {
    let (sys, lc) = (sys_err(id), lc_err(id));
    nix::sys::prctl::set_child_subreaper(true).map_err(sys("set child subreaper"))?;
    let container =
        libcontainer::container::Container::load(state_root.join(id)).map_err(lc("load"))?;
    let config = container.bundle().join("config.json");
    let spec = oci_spec::runtime::Spec::load(&config).map_err(|e| ShimError::Container {
        id: id.to_owned(),
        op: "read spec",
        message: e.to_string(),
    })?;
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args)).set_terminal(Some(tty));
    let mut env = process.env().clone().unwrap_or_default();
    if tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        // As docker exec -t: programs need a terminal type to drive the terminal.
        env.push("TERM=xterm".into());
    }
    process.set_env(Some(env));
    // Private (0700): the process spec and the console socket, which only libcontainer may use.
    let dir = tempfile::Builder::new()
        .prefix("skiff-exec-")
        .tempdir()
        .map_err(io("create", &std::env::temp_dir()))?;
    let process_file = dir.path().join("process.json");
    std::fs::write(
        &process_file,
        serde_json::to_vec(&process).expect("process spec serializes"),
    )
    .map_err(io("write", &process_file))?;
    let console = if tty {
        Some(ConsoleSocket::bind(&dir.path().join("console"))?)
    } else {
        None
    };
    let pid = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
        .with_root_path(state_root)
        .map_err(lc("state root"))?
        .with_console_socket(console.as_ref().map(ConsoleSocket::path))
        .with_executor(SeccompExecutor { seccomp })
        .as_tenant()
        .with_process(Some(&process_file))
        // libcontainer only accepts a console socket for a "detached" process; for a tenant
        // that changes nothing else, and the process is waited for below either way.
        .with_detach(tty)
        .build()
        .map_err(lc("exec"))?;
    match console {
        None => wait_for(pid).map_err(sys("wait")),
        Some(console) => match console.receive() {
            Ok(master) => relay(id, master, pid),
            Err(e) => {
                // Nobody would ever read its terminal.
                let _ = kill(pid, Signal::SIGKILL);
                let _ = wait_for(pid);
                Err(e.into())
            }
        },
    }
}

/// Relays this process's stdin to the pty `master` and the master to its stdout until `pid` has
/// exited and the master is drained (or has no writer left); returns how `pid` ended.
fn relay(id: &str, master: OwnedFd, pid: Pid) -> Result<ExitStatus, ShimError> {
    let sys = sys_err(id);
    let (stdin, mut stdout) = stdio()?;
    let mut master = File::from(master);
    let _raw = RawMode::enter(stdin.as_fd())?;
    copy_size(&stdin, &master)?;
    // Blocked only now: the exec'd process, forked by build(), must not inherit the mask.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGWINCH);
    mask.thread_block().map_err(sys("block signals"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(sys("signalfd"))?;
    // It may have exited before SIGCHLD was blocked.
    let mut status = reap(pid).map_err(sys("wait"))?;
    let mut stdin_open = true;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // Once the process is gone, what it wrote is read until the master goes quiet: other
        // processes of the container may still hold the terminal, and must not keep exec alive.
        let timeout = match status {
            Some(_) => PollTimeout::from(100u8),
            None => PollTimeout::NONE,
        };
        let mut fds = vec![
            PollFd::new(master.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        if stdin_open && status.is_none() {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(0) => break,
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(sys("poll")(e)),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[1] {
            while let Ok(Some(sig)) = signals.read_signal() {
                if sig.ssi_signo == Signal::SIGWINCH as u32 {
                    // A failure to resize is no reason to cut the session.
                    let _ = copy_size(&stdin, &master);
                }
            }
            if status.is_none() {
                status = reap(pid).map_err(sys("wait"))?;
            }
        }
        if ready.get(2) == Some(&true) {
            match (&stdin).read(&mut buf) {
                Ok(0) => stdin_open = false,
                // The process may be exiting: its terminal going away ends the input only.
                Ok(n) => stdin_open = master.write_all(&buf[..n]).is_ok(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => stdin_open = false,
            }
        }
        if ready[0] {
            match master.read(&mut buf) {
                // EIO: every holder of the terminal's slave side is gone.
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // A closed stdout must not keep the process blocked on a full terminal:
                    // the output is dropped, as the log writer does on a full disk.
                    let _ = stdout.write_all(&buf[..n]).and_then(|()| stdout.flush());
                }
            }
        }
    }
    match status {
        Some(status) => Ok(status),
        None => wait_for(pid).map_err(sys("wait")),
    }
}

/// How `pid` ended, if it has; reaps (as the subreaper) any other child that exited too.
fn reap(pid: Pid) -> Result<Option<ExitStatus>, nix::Error> {
    let mut found = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => return Ok(found),
            Ok(s) if s.pid() == Some(pid) => found = found.or(ExitStatus::from_wait(s)),
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Kills and deletes container `id` (its processes, cgroup and state), whatever state it is
/// in: the cleanup of a container whose shim died (SIGKILL, reboot) or never finished creating
/// it. A container that does not exist is not an error.
pub fn delete(id: &str, state_root: &Path) -> Result<(), ShimError> {
    let lc = lc_err(id);
    if !state_root.join(id).exists() {
        return Ok(());
    }
    let mut container =
        libcontainer::container::Container::load(state_root.join(id)).map_err(lc("load"))?;
    container.delete(true).map_err(lc("delete"))
}

/// Runs an exec'd process as libcontainer's default executor does, after loading the
/// container's seccomp filter into it. libcontainer 0.7's tenant builder rebuilds the spec's
/// `linux` section without `seccomp`, so without this an exec'd process (and every health check)
/// would run unfiltered, unlike `docker exec`. The executor runs in the exec'd process itself,
/// inside the container, after its capabilities were dropped and no-new-privileges set, just
/// before execve: where libcontainer loads the filter for a container's own process.
#[derive(Clone)]
struct SeccompExecutor {
    seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &oci_spec::runtime::Spec) -> Result<(), ExecutorError> {
        if let Some(seccomp) = &self.seccomp {
            libcontainer::seccomp::initialize_seccomp(seccomp)
                .map_err(|e| ExecutorError::Other(format!("loading the seccomp filter: {e}")))?;
        }
        get_executor().exec(spec)
    }

    fn validate(&self, spec: &oci_spec::runtime::Spec) -> Result<(), ExecutorValidationError> {
        get_executor().validate(spec)
    }
}

/// Waits for `pid`, reaping (as the subreaper) any orphan that exits meanwhile.
fn wait_for(pid: Pid) -> Result<ExitStatus, nix::Error> {
    loop {
        match waitpid(None, Some(WaitPidFlag::__WALL)) {
            Ok(s) if s.pid() == Some(pid) => {
                if let Some(exit) = ExitStatus::from_wait(s) {
                    return Ok(exit);
                }
            }
            Ok(_) => {} // an orphan reparented to us
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Error maker for an I/O operation `op` on `path`.
fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ShimError + use<> {
    let path = path.to_owned();
    move |source| ShimError::Io { op, path, source }
}

pub(crate) fn write_exit(path: &Path, status: &ExitStatus) -> Result<(), ShimError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(&serde_json::to_vec(status).expect("exit status serializes"))
        .map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", path))
}
