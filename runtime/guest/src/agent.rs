//! The guest agent: PID 1 of a task's microVM, started by the kernel from Skiff's initramfs.
//!
//! It mounts the kernel's filesystems, loads the virtio modules the distribution kernel keeps
//! as modules (listed in load order in `/lib/modules/load-order` by the initramfs builder),
//! finds its virtio-serial port by name, and says [`Message::Ready`]; it sets the guest's
//! network up as the host's [`Message::Configure`] says ([`crate::net`]). Then it runs what the
//! host asks: each process in its container's root filesystem (a virtio-blk disk, found by its
//! serial and mounted on first use), in a mount namespace of its own with a private /dev,
//! /proc and a read-only /sys, with its volumes (virtio-fs shares, mounted once under
//! /run/volumes, bound at the container's mount points), as the container's user, its stdout and stderr relayed as frames; it reaps every
//! process (it is init), reports exits after their output, and powers the VM off on
//! [`Message::Shutdown`] or when the host goes away.
//!
//! The process model is simpler than a container runtime's on purpose: the VM is the task's
//! isolation boundary (as a Fargate task's VM is), so its containers are separated by mount
//! namespaces and users, not by seccomp, capabilities or cgroups of their own; the task's
//! limits are the VM's size. No PID namespace either: the agent must see, signal and reap
//! every process.
//!
//! Threads: the main thread reads the host's frames; one reaper thread waits for every child
//! (`waitpid(-1)`, which is right for init and wrong anywhere else); two reader threads per
//! process relay its output. Frames go out through one locked writer, whole.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, sync};

use crate::net;
use crate::proto::{Frame, Message, PORT_NAME, Process, Stream, VERSION, read_frame, write_frame};
use crate::sys::{Confinement, DEVICES, confine};

/// Why the agent could not boot or serve.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A boot step failed.
    #[error("{op} {path}: {source}")]
    Boot {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A device did not appear.
    #[error("no {what} appeared within {secs} s")]
    NoDevice {
        /// Which.
        what: String,
        /// How long it was waited for.
        secs: u64,
    },
    /// The host's stream failed.
    #[error(transparent)]
    Proto(#[from] crate::proto::ProtoError),
}

fn boot_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + use<> {
    let path = path.to_owned();
    move |source| AgentError::Boot { op, path, source }
}

/// How long devices may take to appear after their drivers load (they probe asynchronously).
const DEVICE_WAIT: Duration = Duration::from_secs(20);

/// Runs the agent as the VM's init; returns only to power off.
pub fn run() -> Result<(), AgentError> {
    mount_kernel_filesystems()?;
    load_modules(Path::new("/lib/modules"))?;
    let port = wait_for(PORT_NAME, || find_port(Path::new("/sys"), PORT_NAME))?;
    let reader = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&port)
        .map_err(boot_err("open", &port))?;
    let writer = reader.try_clone().map_err(boot_err("open", &port))?;
    let agent = Agent {
        shared: Shared {
            out: Arc::new(Mutex::new(writer)),
            procs: Arc::new(Mutex::new(Procs::default())),
        },
        disks: HashMap::new(),
        shares: HashSet::new(),
    };
    let reaper = agent.shared.clone();
    std::thread::spawn(move || reaper.reap());
    agent.shared.send(&Frame::Message(Message::Ready {
        version: VERSION,
        uptime_ms: uptime_ms(),
    }));
    serve(agent, reader)
}

fn serve(mut agent: Agent, mut reader: File) -> Result<(), AgentError> {
    loop {
        match read_frame(&mut reader)? {
            // The host closed its end: nothing will be asked any more.
            None => return Ok(()),
            Some(Frame::Message(Message::Shutdown)) => return Ok(()),
            Some(Frame::Message(Message::Configure { network })) => {
                let nic = |mac: &[u8; 6]| {
                    wait_for(&net::mac_string(mac), || {
                        net::find_nic(Path::new("/sys"), mac)
                    })
                    .ok()
                };
                let error = net::configure(&network, nic).err().map(|e| e.to_string());
                agent
                    .shared
                    .send(&Frame::Message(Message::Configured { error }));
            }
            Some(Frame::Message(Message::Start(p))) => agent.start(p),
            Some(Frame::Message(Message::Signal { id, signal })) => agent.signal(&id, signal),
            Some(Frame::Output {
                id,
                stream: Stream::Stdin,
                data,
            }) => agent.shared.input(&id, data),
            Some(Frame::Message(Message::Resize { id, rows, cols })) => {
                agent.shared.resize(&id, rows, cols);
            }
            Some(other) => eprintln!("skiff-agent: ignoring {other:?}"),
        }
    }
}

/// Kills every process, flushes the disks and powers off: QEMU (with `-no-reboot`) exits.
pub fn power_off() -> ! {
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    sync();
    let _ = reboot(RebootMode::RB_POWER_OFF);
    // PID 1 must never exit (the kernel would panic); power-off does not return.
    loop {
        std::thread::park();
    }
}

fn mount_kernel_filesystems() -> Result<(), AgentError> {
    // devpts for the terminals of `exec -t` (openpty opens /dev/ptmx, then /dev/pts/N).
    for (fs, target) in [
        ("proc", "/proc"),
        ("sysfs", "/sys"),
        ("devtmpfs", "/dev"),
        ("devpts", "/dev/pts"),
    ] {
        let target = Path::new(target);
        std::fs::create_dir_all(target).map_err(boot_err("create", target))?;
        match mount(Some(fs), target, Some(fs), MsFlags::empty(), None::<&str>) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => return Err(boot_err("mount", target)(e.into())),
        }
    }
    Ok(())
}

/// The modules named in `dir/load-order`, one file name a line, loaded in that order (each
/// after its dependencies); one built into the kernel already is fine.
pub fn load_modules(dir: &Path) -> Result<(), AgentError> {
    let order = dir.join("load-order");
    let list = match std::fs::read_to_string(&order) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(boot_err("read", &order)(e)),
    };
    for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(name);
        let file = File::open(&path).map_err(boot_err("open", &path))?;
        match finit_module(&file, c"", ModuleInitFlags::empty()) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(boot_err("load module", &path)(e.into())),
        }
    }
    Ok(())
}

/// The device node of the virtio-serial port named `name`, if it exists yet.
pub fn find_port(sys: &Path, name: &str) -> Option<PathBuf> {
    find_in(&sys.join("class/virtio-ports"), "name", name)
}

/// The device node of the virtio-blk disk whose serial is `serial`, if it exists yet.
pub fn find_disk(sys: &Path, serial: &str) -> Option<PathBuf> {
    find_in(&sys.join("block"), "serial", serial)
}

/// `/dev/<entry>` for the entry of `class` whose `attr` file reads `value`.
fn find_in(class: &Path, attr: &str, value: &str) -> Option<PathBuf> {
    std::fs::read_dir(class).ok()?.flatten().find_map(|e| {
        let v = std::fs::read_to_string(e.path().join(attr)).ok()?;
        (v.trim() == value).then(|| Path::new("/dev").join(e.file_name()))
    })
}

fn wait_for(what: &str, mut f: impl FnMut() -> Option<PathBuf>) -> Result<PathBuf, AgentError> {
    let deadline = Instant::now() + DEVICE_WAIT;
    loop {
        if let Some(p) = f().filter(|p| p.exists()) {
            return Ok(p);
        }
        if Instant::now() > deadline {
            return Err(AgentError::NoDevice {
                what: what.to_owned(),
                secs: DEVICE_WAIT.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |s| (s * 1000.0) as u64)
}

/// The highest capability number the guest kernel knows (40 for Linux 6.1).
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// The guest kernel's OOM kill count so far.
fn oom_kills() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A running process.
#[derive(Debug)]
struct Entry {
    id: String,
    /// One message per output stream at its end.
    eof: Receiver<()>,
    /// How many output streams it has (one with a terminal).
    streams: usize,
    /// Its stdin's writer thread, while the host keeps it open.
    stdin: Option<Sender<Vec<u8>>>,
    /// Its terminal's master side, to size it.
    terminal: Option<File>,
    oom_before: u64,
}

#[derive(Debug, Default)]
struct Procs {
    by_pid: HashMap<i32, Entry>,
    by_id: HashMap<String, i32>,
}

/// A thread writing what the host sends to a process's stdin, so that a process that does not
/// read it never blocks the agent; the stdin closes when the sender goes.
fn feed(mut to: Box<dyn Write + Send>) -> Sender<Vec<u8>> {
    let (tx, rx) = channel::<Vec<u8>>();
    std::thread::spawn(move || {
        for data in rx {
            if to.write_all(&data).is_err() {
                break;
            }
        }
    });
    tx
}

/// What the main thread, the reaper and the output relays share: the writer to the host and
/// the processes started.
#[derive(Clone, Debug)]
struct Shared {
    out: Arc<Mutex<File>>,
    procs: Arc<Mutex<Procs>>,
}

/// The main thread's state: the shared part, and the disks it mounted.
#[derive(Debug)]
struct Agent {
    shared: Shared,
    /// Mounted disks by serial.
    disks: HashMap<String, PathBuf>,
    /// The virtio-fs tags mounted so far.
    shares: HashSet<String>,
}

impl Shared {
    /// Host input for process `id`'s stdin; empty closes it.
    fn input(&self, id: &str, data: Vec<u8>) {
        let mut procs = self.procs.lock().expect("procs lock");
        let Some(pid) = procs.by_id.get(id).copied() else {
            return;
        };
        let Some(entry) = procs.by_pid.get_mut(&pid) else {
            return;
        };
        if data.is_empty() {
            entry.stdin = None;
        } else if let Some(tx) = &entry.stdin {
            let _ = tx.send(data);
        }
    }

    /// Sizes process `id`'s terminal, if it has one.
    fn resize(&self, id: &str, rows: u16, cols: u16) {
        let procs = self.procs.lock().expect("procs lock");
        let terminal = procs
            .by_id
            .get(id)
            .and_then(|pid| procs.by_pid.get(pid))
            .and_then(|e| e.terminal.as_ref());
        if let Some(t) = terminal
            && let Err(e) = crate::sys::set_window_size(t, rows, cols)
        {
            eprintln!("skiff-agent: sizing the terminal of {id}: {e}");
        }
    }

    fn send(&self, f: &Frame) {
        let mut out = self.out.lock().expect("writer lock");
        if let Err(e) = write_frame(&mut *out, f) {
            eprintln!("skiff-agent: writing to the host: {e}");
        }
    }

    /// Reaps every child for good (init inherits orphans too); reports those it started.
    fn reap(self) {
        loop {
            let (pid, exit_code, signal) = match waitpid(None, None) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code, None),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32, Some(sig as i32)),
                Ok(_) => continue,
                Err(Errno::ECHILD) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(_) => continue,
            };
            let entry = {
                let mut procs = self.procs.lock().expect("procs lock");
                let e = procs.by_pid.remove(&pid.as_raw());
                if let Some(e) = &e {
                    procs.by_id.remove(&e.id);
                }
                e
            };
            let Some(entry) = entry else { continue };
            // Its output first: both streams to their end, unless a child it left behind
            // holds them open.
            for _ in 0..entry.streams {
                if entry.eof.recv_timeout(Duration::from_secs(1)).is_err() {
                    break;
                }
            }
            let oom_killed =
                signal == Some(Signal::SIGKILL as i32) && oom_kills() > entry.oom_before;
            self.send(&Frame::Message(Message::Exited {
                id: entry.id,
                exit_code,
                signal,
                oom_killed,
            }));
        }
    }
}

impl Agent {
    fn start(&mut self, p: Process) {
        let id = p.id.clone();
        if let Err(message) = self.spawn(p) {
            self.shared
                .send(&Frame::Message(Message::Failed { id, message }));
        }
    }

    /// The root of disk `serial`, mounted on first use.
    fn root(&mut self, serial: &str) -> Result<PathBuf, String> {
        if let Some(r) = self.disks.get(serial) {
            return Ok(r.clone());
        }
        let dev = wait_for(&format!("disk {serial}"), || {
            find_disk(Path::new("/sys"), serial)
        })
        .map_err(|e| e.to_string())?;
        let root = Path::new("/run/disks").join(serial);
        std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
        mount(
            Some(&dev),
            &root,
            Some("ext4"),
            MsFlags::MS_NOATIME,
            Some("noinit_itable"),
        )
        .map_err(|e| format!("mounting {} ({serial}): {e}", dev.display()))?;
        // Mount points of the kernel filesystems each process gets, made as OCI runtimes make
        // them when an image lacks them (a symlink among them can only lead elsewhere in this
        // VM, the task's own).
        for d in ["dev", "proc", "sys"] {
            let p = root.join(d);
            if std::fs::symlink_metadata(&p).is_err() {
                std::fs::create_dir(&p).map_err(|e| format!("creating {}: {e}", p.display()))?;
            }
        }
        self.disks.insert(serial.to_owned(), root.clone());
        Ok(root)
    }

    /// Where virtio-fs share `tag` is mounted, on first use (`/run/volumes/<tag>`).
    fn share(&mut self, tag: &str) -> Result<PathBuf, String> {
        let at = Path::new("/run/volumes").join(tag);
        if self.shares.contains(tag) {
            return Ok(at);
        }
        std::fs::create_dir_all(&at).map_err(|e| format!("creating {}: {e}", at.display()))?;
        mount(
            Some(tag),
            &at,
            Some("virtiofs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|e| format!("mounting volume share {tag}: {e}"))?;
        self.shares.insert(tag.to_owned());
        Ok(at)
    }

    /// Starts `p` and says `started`; the error otherwise.
    fn spawn(&mut self, p: Process) -> Result<(), String> {
        if p.args.is_empty() {
            return Err("no command".into());
        }
        if self
            .shared
            .procs
            .lock()
            .expect("procs lock")
            .by_id
            .contains_key(&p.id)
        {
            return Err(format!("process {} exists already", p.id));
        }
        let root = self.root(&p.disk)?;
        let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string());
        let mut binds = Vec::new();
        for m in &p.mounts {
            let share = self.share(&m.tag)?;
            // The mount point, made in the container's disk as OCI runtimes make it.
            let dest = root.join(m.destination.trim_start_matches('/'));
            std::fs::create_dir_all(&dest)
                .map_err(|e| format!("creating mount point {}: {e}", m.destination))?;
            binds.push((cstr(&share)?, cstr(&dest)?, m.read_only));
        }
        let confinement = Confinement {
            root: cstr(&root)?,
            dev: cstr(&root.join("dev"))?,
            pts: cstr(&root.join("dev/pts"))?,
            ptmx: cstr(&root.join("dev/ptmx"))?,
            proc: cstr(&root.join("proc"))?,
            sys: cstr(&root.join("sys"))?,
            devices: DEVICES
                .iter()
                .map(|(n, maj, min)| Ok((cstr(&root.join("dev").join(n))?, *maj, *min)))
                .collect::<Result<_, String>>()?,
            cwd: CString::new(p.cwd.as_bytes()).map_err(|e| e.to_string())?,
            uid: p.uid,
            gid: p.gid,
            groups: p.additional_gids.clone(),
            binds,
            controlling_terminal: p.tty,
            capabilities: p.capabilities.map(|c| (c, last_capability())),
            no_new_privileges: p.no_new_privileges,
        };
        let mut cmd = Command::new(&p.args[0]);
        cmd.args(&p.args[1..])
            .env_clear()
            .envs(p.env.iter().filter_map(|kv| kv.split_once('=')));
        // With a terminal: its slave side is the process's stdio, the master relayed.
        let master = if p.tty {
            let pty =
                nix::pty::openpty(None, None).map_err(|e| format!("allocating a terminal: {e}"))?;
            let slave = File::from(pty.slave);
            let dup = |f: &File| f.try_clone().map_err(|e| format!("terminal: {e}"));
            cmd.stdin(dup(&slave)?).stdout(dup(&slave)?).stderr(slave);
            Some(File::from(pty.master))
        } else {
            cmd.stdin(if p.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            None
        };
        confine(&mut cmd, confinement);
        let oom_before = oom_kills();
        // Held across the spawn: the reaper looks a pid up only under this lock, so it cannot
        // miss a process that exits before it is recorded.
        let mut procs = self.shared.procs.lock().expect("procs lock");
        let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", p.args[0]))?;
        let pid = child.id() as i32;
        // Said before any output is relayed: the host takes the first frame about a process
        // as the answer to its start.
        self.shared.send(&Frame::Message(Message::Started {
            id: p.id.clone(),
            pid,
        }));
        // The parent's copies of the terminal's slave side go, so that the master reads its
        // end when the process's side is closed.
        drop(cmd);
        let (tx, eof) = channel();
        let (streams, stdin, terminal) = match master {
            Some(master) => {
                let clone = || master.try_clone().map_err(|e| format!("terminal: {e}"));
                self.relay(&p.id, Stream::Stdout, clone()?, tx);
                let input: Box<dyn Write + Send> = Box::new(clone()?);
                (1, Some(input), Some(master))
            }
            None => {
                if let Some(o) = child.stdout.take() {
                    self.relay(&p.id, Stream::Stdout, o, tx.clone());
                }
                if let Some(e) = child.stderr.take() {
                    self.relay(&p.id, Stream::Stderr, e, tx);
                }
                let input = child
                    .stdin
                    .take()
                    .map(|w| Box::new(w) as Box<dyn Write + Send>);
                (2, input, None)
            }
        };
        procs.by_id.insert(p.id.clone(), pid);
        procs.by_pid.insert(
            pid,
            Entry {
                id: p.id,
                eof,
                streams,
                stdin: stdin.map(feed),
                terminal,
                oom_before,
            },
        );
        Ok(())
    }

    fn relay(
        &self,
        id: &str,
        stream: Stream,
        mut from: impl Read + Send + 'static,
        eof: Sender<()>,
    ) {
        let (me, id) = (self.shared.clone(), id.to_owned());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => me.send(&Frame::Output {
                        id: id.clone(),
                        stream,
                        data: buf[..n].to_vec(),
                    }),
                }
            }
            let _ = eof.send(());
        });
    }

    fn signal(&self, id: &str, signal: i32) {
        let pid = self
            .shared
            .procs
            .lock()
            .expect("procs lock")
            .by_id
            .get(id)
            .copied();
        let (Some(pid), Ok(sig)) = (pid, Signal::try_from(signal)) else {
            return;
        };
        // The process group first (the process leads its own session), else the process.
        if kill(Pid::from_raw(-pid), sig).is_err() {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_disks_are_found_by_name_and_serial() {
        let sys = tempfile::tempdir().unwrap();
        let port = sys.path().join("class/virtio-ports/vport0p1");
        std::fs::create_dir_all(&port).unwrap();
        std::fs::write(port.join("name"), "skiff.agent\n").unwrap();
        let other = sys.path().join("class/virtio-ports/vport0p2");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("name"), "something.else\n").unwrap();
        for (dev, serial) in [("vda", "c0"), ("vdb", "c1")] {
            let d = sys.path().join("block").join(dev);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("serial"), serial).unwrap();
        }
        assert_eq!(
            find_port(sys.path(), PORT_NAME),
            Some(PathBuf::from("/dev/vport0p1"))
        );
        assert_eq!(find_disk(sys.path(), "c1"), Some(PathBuf::from("/dev/vdb")));
        assert_eq!(find_disk(sys.path(), "c2"), None);
        assert_eq!(find_port(Path::new("/nonexistent"), PORT_NAME), None);
    }

    #[test]
    fn modules_without_a_list_are_nothing_to_load() {
        let dir = tempfile::tempdir().unwrap();
        load_modules(dir.path()).unwrap();
        std::fs::write(dir.path().join("load-order"), "missing.ko\n").unwrap();
        let e = load_modules(dir.path()).unwrap_err().to_string();
        assert!(e.contains("missing.ko"), "{e}");
    }
}
