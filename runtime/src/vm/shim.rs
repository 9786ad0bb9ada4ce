//! The host side of a task VM: `skiff-shim vm` ([`serve`]) owns the VMM for the task's life
//! and routes frames between the guest agent and the per-container `skiff-shim vm-run`
//! processes ([`run`]), which keep `skiff-shim run`'s contract with skiffd.
//!
//! `serve` puts itself in the task's cgroup (`<task>/.vmm`: the VMM's memory, the guest's
//! included, counts against the task), listens on the agent socket before starting the VMM (so
//! that nothing the guest says is lost), starts a virtio-fs daemon per volume (on a socket it
//! listens on first, so the VMM connects at once; read-only volumes shared from a read-only
//! view), enters the task's network namespace (where the VMM opens the taps netd made), waits
//! for the agent's `ready`, gives it the guest's network (`configure`), prints
//! `ready <vmm pid>`, then forwards each client's `start` and `signal` to the agent and the
//! agent's output and exits back to the client that started the process. SIGTERM powers the
//! VM off (the agent's `shutdown`), SIGKILL'ing the VMM if it does not stop in time. The VMM
//! dies with the shim (PR_SET_PDEATHSIG), and the shim ends when the VMM does: each `vm-run`
//! then sees its socket close and records its container killed.
//!
//! Threads are fine here, unlike in `skiff-shim run`: nothing in this process clones with
//! libcontainer.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use skiff_guest::proto::{
    Capabilities, Frame, Message, NetworkConfig, Process, Stream, VolumeMount, read_frame,
    write_frame,
};

use super::{Qemu, VmDir, VmError, VmSpec, Vmm, io};
use crate::logs::{LogWriter, Rotation};
use crate::shim::{ExitStatus, ShimError, Stopper, stop_requests, write_exit};

/// How long a powered-off VM may take to exit before its VMM is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the VM described by `dir`'s spec until it ends or the shim is asked to stop.
/// `cgroup_procs`: the `cgroup.procs` files to join first; `on_ready` gets the VMM's pid.
pub fn serve(
    dir: &VmDir,
    cgroup_procs: &[PathBuf],
    on_ready: impl FnOnce(i32),
) -> Result<(), VmError> {
    let spec = VmSpec::load(dir)?;
    let me = std::process::id().to_string();
    for p in cgroup_procs {
        std::fs::write(p, &me).map_err(io("join cgroup", p))?;
    }
    let agent_listener = listen(&dir.agent_socket())?;
    let control = listen(&dir.control_socket())?;
    // Blocked before any thread starts, so that stop requests reach the signalfd only.
    let signals = stop_requests().map_err(|e| io("block signals in", &dir.0)(e.into()))?;
    let mut shares = Children(Vec::new());
    for share in &spec.shares {
        shares.0.push(share_daemon(&spec, dir, share)?);
    }
    // The VMM opens the task's taps by name: it runs in the task's network namespace (this
    // process has no other use for a network; its sockets are unix ones, bound already).
    if let Some(n) = &spec.network {
        let ns = std::fs::File::open(&n.netns).map_err(io("open", &n.netns))?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| io("enter the network namespace", &n.netns)(e.into()))?;
    }
    let log = dir.0.join("vmm.log");
    let mut cmd = Qemu.command(&spec, dir);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).map_err(io("create", &log))?);
    crate::sys::die_with_parent(&mut cmd);
    let mut vmm = cmd
        .spawn()
        .map_err(|e| VmError::Boot(format!("starting {}: {e}", spec.vmm.display())))?;
    let deadline = Instant::now() + Duration::from_millis(spec.boot_timeout_ms);
    let network = spec
        .network
        .as_ref()
        .map(|n| n.guest.clone())
        .unwrap_or_default();
    let booted = accept_ready(&agent_listener, &mut vmm, deadline)
        .and_then(|agent| configure(agent, network, deadline));
    let agent = match booted {
        Ok(a) => a,
        Err(why) => {
            let _ = vmm.kill();
            let _ = vmm.wait();
            let tail = |p: PathBuf| {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().rev().take(3).collect();
                lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
            };
            return Err(VmError::Boot(format!(
                "{why} (vmm: {}; console: {})",
                tail(log),
                tail(dir.console_log())
            )));
        }
    };
    on_ready(vmm.id() as i32);

    let to_agent = Arc::new(Mutex::new(
        agent
            .try_clone()
            .map_err(io("clone", &dir.agent_socket()))?,
    ));
    let routes: Arc<Mutex<HashMap<String, UnixStream>>> = Arc::default();
    {
        let routes = routes.clone();
        std::thread::spawn(move || from_agent(agent, &routes));
    }
    {
        let (routes, to_agent) = (routes.clone(), to_agent.clone());
        std::thread::spawn(move || {
            for conn in control.incoming().flatten() {
                let (routes, to_agent) = (routes.clone(), to_agent.clone());
                std::thread::spawn(move || from_client(conn, &routes, &to_agent));
            }
        });
    }

    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_child(&vmm),
        rustix::process::PidfdFlags::empty(),
    )
    .map_err(|e| io("watch the VMM of", &dir.0)(e.into()))?;
    let mut stop_at: Option<Instant> = None;
    loop {
        let timeout = stop_at.map_or(PollTimeout::NONE, |t| {
            let ms = t.saturating_duration_since(Instant::now()).as_millis() + 1;
            PollTimeout::try_from(i32::try_from(ms).unwrap_or(i32::MAX)).unwrap_or(PollTimeout::MAX)
        });
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(io("wait for the VMM of", &dir.0)(e.into())),
            Ok(_) => {}
        }
        let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        if ready(1) {
            break;
        }
        if ready(0) {
            while let Ok(Some(_)) = signals.read_signal() {}
            if stop_at.is_none() {
                let mut a = to_agent.lock().expect("agent lock");
                let _ = write_frame(&mut *a, &Frame::Message(Message::Shutdown));
                stop_at = Some(Instant::now() + SHUTDOWN_GRACE);
            }
        } else if stop_at.is_some_and(|t| Instant::now() >= t) {
            let _ = vmm.kill();
            stop_at = Some(Instant::now() + SHUTDOWN_GRACE);
        }
    }
    let _ = vmm.wait();
    drop(shares);
    Ok(())
}

/// Processes killed and reaped when dropped: the virtio-fs daemons, on every way out of
/// [`serve`] (they end by themselves when the VMM disconnects, too).
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts the virtio-fs daemon of `share` on a socket this process binds and listens on
/// first, so the VMM can connect at once (the daemon accepts on it as fd 3).
fn share_daemon(
    spec: &VmSpec,
    dir: &VmDir,
    share: &super::Share,
) -> Result<std::process::Child, VmError> {
    let listener = listen(&dir.share_socket(&share.tag))?;
    let log = dir.0.join(format!("virtiofsd-{}.log", share.tag));
    let mut cmd = std::process::Command::new(&spec.virtiofsd);
    cmd.arg("--fd=3")
        .arg("-o")
        .arg(format!("source={}", share.source.display()))
        .args(["-o", "cache=auto"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).map_err(io("create", &log))?);
    let read_only = share
        .read_only
        .then(|| std::ffi::CString::new(share.source.as_os_str().as_encoded_bytes()))
        .transpose()
        .map_err(|e| io("share", &share.source)(std::io::Error::other(e)))?;
    crate::sys::share_daemon(&mut cmd, listener.as_raw_fd(), read_only);
    crate::sys::die_with_parent(&mut cmd);
    cmd.spawn()
        .map_err(|e| VmError::Boot(format!("starting {}: {e}", spec.virtiofsd.display())))
}

/// A unix socket listening at `path`, whatever was there before.
fn listen(path: &std::path::Path) -> Result<UnixListener, VmError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", path)(e)),
        _ => {}
    }
    UnixListener::bind(path).map_err(io("listen on", path))
}

/// Accepts the VMM's connection to the agent port and reads the agent's `ready`, by `deadline`,
/// unless the VMM exits first.
fn accept_ready(
    listener: &UnixListener,
    vmm: &mut std::process::Child,
    deadline: Instant,
) -> Result<UnixStream, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("agent socket: {e}"))?;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("agent socket: {e}")),
        }
        if let Ok(Some(st)) = vmm.try_wait() {
            return Err(format!("the VMM exited ({st}) before connecting"));
        }
        if Instant::now() > deadline {
            return Err("the VMM did not connect to the agent socket".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    stream
        .set_nonblocking(false)
        .map_err(|e| format!("agent socket: {e}"))?;
    let left = deadline.saturating_duration_since(Instant::now());
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(|e| format!("agent socket: {e}"))?;
    let mut r = &stream;
    match read_frame(&mut r) {
        Ok(Some(Frame::Message(Message::Ready { version, .. })))
            if version == skiff_guest::proto::VERSION =>
        {
            stream
                .set_read_timeout(None)
                .map_err(|e| format!("agent socket: {e}"))?;
            Ok(stream)
        }
        Ok(Some(Frame::Message(Message::Ready { version, .. }))) => Err(format!(
            "the guest agent speaks protocol {version}, this host {} (rebuild the initrd)",
            skiff_guest::proto::VERSION
        )),
        Ok(other) => Err(format!("the guest agent said {other:?} instead of ready")),
        Err(e) => match vmm.try_wait() {
            Ok(Some(st)) => Err(format!("the VMM exited ({st}) during boot")),
            _ => Err(format!(
                "no word from the guest agent within the boot timeout ({e})"
            )),
        },
    }
}

/// Gives the agent the guest's network and waits for its answer, by `deadline`.
fn configure(
    agent: UnixStream,
    network: NetworkConfig,
    deadline: Instant,
) -> Result<UnixStream, String> {
    let fail = |e: std::io::Error| format!("agent socket: {e}");
    write_frame(&mut &agent, &Frame::Message(Message::Configure { network })).map_err(fail)?;
    let left = deadline.saturating_duration_since(Instant::now());
    agent
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(fail)?;
    let answer = read_frame(&mut &agent);
    agent.set_read_timeout(None).map_err(fail)?;
    match answer {
        Ok(Some(Frame::Message(Message::Configured { error: None }))) => Ok(agent),
        Ok(Some(Frame::Message(Message::Configured { error: Some(e) }))) => {
            Err(format!("the guest's network: {e}"))
        }
        Ok(other) => Err(format!(
            "the guest agent said {other:?} instead of configured"
        )),
        Err(e) => Err(format!(
            "no answer to the guest's network setup within the boot timeout ({e})"
        )),
    }
}

/// The agent's frames, to the client that started each process.
fn from_agent(mut agent: UnixStream, routes: &Mutex<HashMap<String, UnixStream>>) {
    while let Ok(Some(frame)) = read_frame(&mut agent) {
        let Some(id) = frame.id().map(str::to_owned) else {
            continue;
        };
        let done = matches!(
            frame,
            Frame::Message(Message::Exited { .. } | Message::Failed { .. })
        );
        let mut routes = routes.lock().expect("routes lock");
        if let Some(client) = routes.get_mut(&id)
            && (write_frame(client, &frame).is_err() || done)
        {
            routes.remove(&id);
        }
    }
}

/// A client's `start` and `signal` requests, to the agent.
fn from_client(
    mut conn: UnixStream,
    routes: &Mutex<HashMap<String, UnixStream>>,
    to_agent: &Mutex<UnixStream>,
) {
    while let Ok(Some(frame)) = read_frame(&mut conn) {
        match &frame {
            Frame::Message(Message::Start(p)) => {
                let Ok(reply) = conn.try_clone() else { return };
                routes
                    .lock()
                    .expect("routes lock")
                    .insert(p.id.clone(), reply);
            }
            Frame::Message(Message::Signal { .. } | Message::Resize { .. })
            | Frame::Output {
                stream: Stream::Stdin,
                ..
            } => {}
            _ => continue,
        }
        let mut a = to_agent.lock().expect("agent lock");
        if write_frame(&mut *a, &frame).is_err() {
            return;
        }
    }
}

/// What `skiff-shim vm-run` runs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The container's runtime id (the process's id in the VM).
    pub id: String,
    /// The task's VM.
    pub vm: VmDir,
    /// The container's bundle: its `config.json` has the process to run.
    pub bundle: PathBuf,
    /// The serial of its root filesystem's disk.
    pub disk: String,
    /// The VMM's pid, reported as the container's (it is what runs the container on the host).
    pub host_pid: i32,
    /// Where the exit status goes.
    pub exit_file: PathBuf,
    /// The json-file log's directory.
    pub log_dir: PathBuf,
    /// Its rotation.
    pub rotation: Rotation,
    /// SIGTERM, then SIGKILL this long after.
    pub stop_timeout: Duration,
}

/// Starts the container's process in the VM, relays its output into its log and stop requests
/// to it, and records how it ended. `on_started` gets the pid to report.
pub fn run(cfg: &RunConfig, on_started: impl FnOnce(i32)) -> Result<ExitStatus, ShimError> {
    let process = process_of(&cfg.vm, &cfg.bundle, &cfg.id, &cfg.disk)?;
    let mut log = LogWriter::open(&cfg.log_dir, cfg.rotation)?;
    let mut sock = start(&cfg.vm, process)?;
    on_started(cfg.host_pid);
    let signals = stop_requests().map_err(|e| vm_io(&cfg.vm, "block signals for")(e.into()))?;
    let mut requests = sock.try_clone().map_err(vm_io(&cfg.vm, "clone"))?;
    let id = cfg.id.clone();
    let mut stop = Stopper::new(cfg.stop_timeout, signals, move |sig: Signal| {
        let msg = Message::Signal {
            id: id.clone(),
            signal: sig as i32,
        };
        let _ = write_frame(&mut requests, &Frame::Message(msg));
    });
    let status = follow(&cfg.vm, &mut sock, Some(&mut stop), |stream, data| {
        if let Err(e) = log.write(stream, data) {
            eprintln!("skiff-shim: {e}");
        }
    })?;
    log.flush()?;
    write_exit(&cfg.exit_file, &status)?;
    let _ = std::io::stderr().flush();
    Ok(status)
}

/// Runs `args` in the VM, in the root and as the user of the container whose bundle is
/// `bundle` (as `docker exec` does), with this process's stdin (relayed until its end) and its
/// output on this process's stdout and stderr; returns how it ended. With `tty`
/// (`docker exec -t`), the agent gives the process a terminal, whose input and output are this
/// process's stdin and stdout, in raw mode and at its window size when they are a terminal.
pub fn exec(
    vm: &VmDir,
    bundle: &std::path::Path,
    container_id: &str,
    disk: &str,
    args: Vec<String>,
    tty: bool,
) -> Result<ExitStatus, ShimError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let id = format!("{container_id}.exec-{}-{nanos}", std::process::id());
    let mut process = process_of(vm, bundle, &id, disk)?;
    process.args = args;
    process.stdin = true;
    process.tty = tty;
    if tty && !process.env.iter().any(|e| e.starts_with("TERM=")) {
        // As docker exec -t: programs need a terminal type to drive the terminal.
        process.env.push("TERM=xterm".into());
    }
    // Two copies of stdin: one read by the relay thread, one whose terminal mode and size are
    // managed here.
    let ((stdin, _), (input, _)) = (crate::console::stdio()?, crate::console::stdio()?);
    let _raw = if tty {
        crate::console::RawMode::enter(stdin.as_fd())?
    } else {
        None
    };
    // Blocked before the relay threads start, so that only the signalfd sees it.
    let mut winch = nix::sys::signal::SigSet::empty();
    winch.add(Signal::SIGWINCH);
    if tty {
        winch
            .thread_block()
            .map_err(|e| vm_io(vm, "block SIGWINCH for")(e.into()))?;
    }
    let mut sock = start(vm, process)?;
    let to_vm = Arc::new(Mutex::new(sock.try_clone().map_err(vm_io(vm, "clone"))?));
    if tty {
        resize_on_winch(&id, &stdin, winch, to_vm.clone());
    }
    relay_stdin(&id, input, to_vm);
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    follow(vm, &mut sock, None, |stream, data| {
        let _ = match stream {
            crate::logs::Stream::Stdout => out.write_all(data).and_then(|()| out.flush()),
            crate::logs::Stream::Stderr => err.write_all(data).and_then(|()| err.flush()),
        };
    })
}

/// Sends this process's stdin to process `id`'s, then its end (an empty frame).
fn relay_stdin(id: &str, mut stdin: std::fs::File, to_vm: Arc<Mutex<UnixStream>>) {
    let id = id.to_owned();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let data = match std::io::Read::read(&mut stdin, &mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => Vec::new(),
                Ok(n) => buf[..n].to_vec(),
            };
            let end = data.is_empty();
            let frame = Frame::Output {
                id: id.clone(),
                stream: Stream::Stdin,
                data,
            };
            if write_frame(&mut *to_vm.lock().expect("vm lock"), &frame).is_err() || end {
                return;
            }
        }
    });
}

/// Gives process `id`'s terminal the window size of `stdin` (when it is a terminal) now and at
/// each SIGWINCH (blocked in `winch`).
fn resize_on_winch(
    id: &str,
    stdin: &std::fs::File,
    winch: nix::sys::signal::SigSet,
    to_vm: Arc<Mutex<UnixStream>>,
) {
    let Ok(stdin) = stdin.try_clone() else { return };
    if !rustix::termios::isatty(&stdin) {
        return;
    }
    let Ok(signals) = nix::sys::signalfd::SignalFd::new(&winch) else {
        return;
    };
    let id = id.to_owned();
    std::thread::spawn(move || {
        loop {
            let Ok(size) = rustix::termios::tcgetwinsize(&stdin) else {
                return;
            };
            let msg = Message::Resize {
                id: id.clone(),
                rows: size.ws_row,
                cols: size.ws_col,
            };
            if write_frame(&mut *to_vm.lock().expect("vm lock"), &Frame::Message(msg)).is_err() {
                return;
            }
            if !matches!(signals.read_signal(), Ok(Some(_))) {
                return;
            }
        }
    });
}

fn vm_io(vm: &VmDir, op: &'static str) -> impl FnOnce(std::io::Error) -> ShimError + use<> {
    let path = vm.control_socket();
    move |source| ShimError::Vm(VmError::Io { op, path, source })
}

/// Asks the VM shim to start `process`; returns the connection its frames come back on.
fn start(vm: &VmDir, process: Process) -> Result<UnixStream, ShimError> {
    let id = process.id.clone();
    let mut sock = UnixStream::connect(vm.control_socket()).map_err(vm_io(vm, "connect to"))?;
    write_frame(&mut sock, &Frame::Message(Message::Start(process)))
        .map_err(vm_io(vm, "write to"))?;
    let message = match read_frame(&mut sock) {
        Ok(Some(Frame::Message(Message::Started { .. }))) => return Ok(sock),
        Ok(Some(Frame::Message(Message::Failed { message, .. }))) => message,
        other => format!("the VM answered {other:?}"),
    };
    Err(ShimError::Container {
        id,
        op: "start in the VM",
        message,
    })
}

/// Relays a started process's output to `out` (and stop requests, with `stop`) until it exits;
/// a VM that goes away kills it.
fn follow(
    vm: &VmDir,
    sock: &mut UnixStream,
    mut stop: Option<&mut Stopper>,
    mut out: impl FnMut(crate::logs::Stream, &[u8]),
) -> Result<ExitStatus, ShimError> {
    loop {
        let timeout = stop
            .as_mut()
            .map_or(PollTimeout::NONE, |s| s.poll_timeout());
        let mut fds = vec![PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        if let Some(s) = &stop {
            fds.push(PollFd::new(s.signals.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(vm_io(vm, "wait on")(e.into())),
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready.get(1) == Some(&true)
            && let Some(s) = stop.as_mut()
        {
            s.requested();
        }
        if !ready[0] {
            continue;
        }
        match read_frame(sock) {
            Ok(Some(Frame::Output {
                stream: Stream::Stdout,
                data,
                ..
            })) => out(crate::logs::Stream::Stdout, &data),
            Ok(Some(Frame::Output {
                stream: Stream::Stderr,
                data,
                ..
            })) => out(crate::logs::Stream::Stderr, &data),
            Ok(Some(Frame::Message(Message::Exited {
                exit_code,
                signal,
                oom_killed,
                ..
            }))) => {
                return Ok(ExitStatus {
                    exit_code,
                    signal,
                    oom_killed,
                });
            }
            Ok(Some(_)) => {}
            // The VM is gone (powered off, or its VMM killed): the process with it.
            Ok(None) | Err(_) => {
                eprintln!("skiff-shim: the VM stopped while the process ran");
                return Ok(ExitStatus {
                    exit_code: 128 + Signal::SIGKILL as i32,
                    signal: Some(Signal::SIGKILL as i32),
                    oom_killed: false,
                });
            }
        }
    }
}

/// The process of the container whose bundle is `bundle`, run by the agent of VM `vm` as `id`:
/// its spec's process, and its volumes as the VM's shares (its hosts and resolv.conf are in
/// its disk already).
fn process_of(
    vm: &VmDir,
    bundle: &std::path::Path,
    id: &str,
    disk: &str,
) -> Result<Process, ShimError> {
    let config = bundle.join("config.json");
    let bad = |message: String| ShimError::Container {
        id: id.to_owned(),
        op: "read the spec",
        message,
    };
    let spec = oci_spec::runtime::Spec::load(&config).map_err(|e| bad(e.to_string()))?;
    let p = spec
        .process()
        .as_ref()
        .ok_or_else(|| bad(format!("{} has no process", config.display())))?;
    let shares = VmSpec::load(vm).map_err(|e| bad(e.to_string()))?.shares;
    let mut mounts = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination().display().to_string();
        if m.typ().as_deref() != Some("bind")
            || ["/etc/hosts", "/etc/resolv.conf"].contains(&dest.as_str())
        {
            continue;
        }
        let source = m.source().clone().unwrap_or_default();
        let share = shares.iter().find(|s| s.source == source).ok_or_else(|| {
            bad(format!(
                "{} is not shared with the VM (mount at {dest})",
                source.display()
            ))
        })?;
        mounts.push(VolumeMount {
            tag: share.tag.clone(),
            destination: dest,
            read_only: m.options().iter().flatten().any(|o| o == "ro"),
        });
    }
    Ok(Process {
        id: id.to_owned(),
        disk: disk.to_owned(),
        args: p.args().clone().unwrap_or_default(),
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().display().to_string(),
        uid: p.user().uid(),
        gid: p.user().gid(),
        additional_gids: p.user().additional_gids().clone().unwrap_or_default(),
        capabilities: p.capabilities().as_ref().map(|c| {
            let mask = |set: &Option<oci_spec::runtime::Capabilities>| {
                crate::spec::capability_mask(set.iter().flatten())
            };
            Capabilities {
                bounding: mask(c.bounding()),
                effective: mask(c.effective()),
                permitted: mask(c.permitted()),
            }
        }),
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        stdin: false,
        tty: false,
        mounts,
    })
}
