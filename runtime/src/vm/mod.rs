//! MicroVM isolation per task, as Fargate gives it: a task whose `requiresCompatibilities`
//! contains `FARGATE` runs its containers inside a VM of its own (its own guest kernel; the
//! task's cpu and memory are the VM's size), driven by an existing VMM, never a home-made one.
//!
//! The pieces, host side:
//! - [`VmConfig`] (`[vm]` in skiffd.toml) and [`VmSupport`], what the node found at start: the
//!   VMM, the guest kernel and initramfs (`packaging/vm-assets.sh` builds them), and the
//!   accelerator (KVM where it works; TCG, software emulation, only when configured, for tests).
//!   A node without it refuses such tasks with the reason, and does not report the
//!   `ecs.capability.skiff.microvm` attribute, so the control plane places them elsewhere.
//! - [`Vmm`], the seam in front of the VMM: QEMU's `microvm` machine ([`Qemu`]) is the one
//!   available here; Firecracker and cloud-hypervisor take a kernel, an initrd, block devices and
//!   a vsock the same way through their HTTP APIs, and plug in behind the same trait.
//! - [`disk`]: each container's root filesystem (the image store's overlay, as for a container
//!   task) copied into an ext4 image by `mkfs.ext4 -d`, without mounting anything, and given
//!   to the VM as a virtio-blk disk. virtio-blk rather than virtio-fs: no daemon per VM, no
//!   shared memory backend, and the guest never sees a host directory.
//! - [`shim`]: `skiff-shim vm`, the process that owns the VMM for the task's life (in the
//!   task's cgroup; it outlives skiffd as container shims do) and routes the agent's frames;
//!   and `skiff-shim vm-run`, one per container, which keeps the contract of `skiff-shim run`
//!   (`started <pid>`, the json-file log, the exit file, SIGTERM then SIGKILL after
//!   stopTimeout), so that skiffd's task lifecycle is the same for both kinds of task.
//!
//! In the guest, `skiff-agent` (the `skiff-guest` crate) is init: it starts the containers'
//! processes and relays their output and exits over one virtio-serial port.

pub mod disk;
pub mod shim;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skiff_guest::proto::{Cidr, Interface, NetworkConfig, RouteConfig};

/// The node attribute that says this node runs microVM tasks (as `ecs.capability.*` do).
pub const CAPABILITY_ATTRIBUTE: &str = "ecs.capability.skiff.microvm";

/// The child of a task's cgroup that its VMM (and VM shim) run in.
pub const VMM_CGROUP: &str = ".vmm";

/// The smallest VM, MiB: a distribution kernel and the agent need about this much.
pub const MIN_MEMORY_MIB: u64 = 128;

/// Errors setting up or driving a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A file of the VM could not be written or read.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A root filesystem could not be copied into its disk image.
    #[error("mkfs.ext4 -d {rootfs}: {message}")]
    Disk {
        /// The root filesystem.
        rootfs: PathBuf,
        /// What mkfs said.
        message: String,
    },
    /// The VM did not boot.
    #[error("the VM did not boot: {0}")]
    Boot(String),
    /// A volume cannot be shared with a VM.
    #[error("volume {volume}: {path} {why}")]
    Volume {
        /// The volume's name.
        volume: String,
        /// Its node path.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The guest agent refused or broke the protocol.
    #[error("the guest agent: {0}")]
    Agent(String),
}

pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError + use<> {
    let path = path.to_owned();
    move |source| VmError::Io { op, path, source }
}

/// Which accelerator the VMM uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when /dev/kvm can be opened; otherwise microVM tasks are unavailable (refused, not
    /// run slowly).
    #[default]
    Auto,
    /// KVM, or unavailable.
    Kvm,
    /// Software emulation: slow (seconds to boot); for tests and hosts without virtualisation.
    Tcg,
}

/// `[vm]` in skiffd.toml; without the section, microVM tasks are refused.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    /// The VMM: `qemu` (its `microvm` machine).
    pub vmm: String,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The initramfs whose /init is skiff-agent.
    pub initrd: PathBuf,
    /// auto, kvm or tcg.
    pub accel: Accel,
    /// Memory (MiB) the task's cgroup allows beyond the VM's own, for the VMM process itself.
    pub overhead_mib: u64,
    /// How long a VM may take to boot to its agent.
    #[serde(deserialize_with = "duration")]
    pub boot_timeout: Duration,
    /// The virtio-fs daemon that shares a task's volumes with its VM: the Rust `virtiofsd`
    /// (`/usr/libexec/virtiofsd`, Debian 13's package) or QEMU's C one
    /// (`/usr/lib/qemu/virtiofsd`, Debian 12's qemu-system-common), whichever is there; both
    /// take the options Skiff gives (`--fd`, `-o source=`, `-o cache=`).
    pub virtiofsd: PathBuf,
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            vmm: "qemu".into(),
            qemu: PathBuf::from(if cfg!(target_arch = "aarch64") {
                "/usr/bin/qemu-system-aarch64"
            } else {
                "/usr/bin/qemu-system-x86_64"
            }),
            kernel: PathBuf::from("/var/lib/skiff/vm/vmlinuz"),
            initrd: PathBuf::from("/var/lib/skiff/vm/initrd.img"),
            accel: Accel::Auto,
            overhead_mib: 256,
            boot_timeout: Duration::from_secs(60),
            // Debian 12's QEMU ships it; later releases package the Rust one separately.
            virtiofsd: ["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from("/usr/libexec/virtiofsd")),
        }
    }
}

impl VmConfig {
    /// Checks what can be checked without the files: names the bad key.
    pub fn validate(&self) -> Result<(), String> {
        if self.vmm != "qemu" {
            return Err(format!(
                "vm.vmm {:?}: only \"qemu\" is supported (Firecracker and cloud-hypervisor: docs/design.md)",
                self.vmm
            ));
        }
        if self.boot_timeout.is_zero() {
            return Err("vm.boot_timeout must be more than 0".into());
        }
        Ok(())
    }
}

/// What the node found at start.
#[derive(Clone, Debug)]
pub enum VmSupport {
    /// Ready: the VMM, its files and the accelerator it will use.
    Ready(VmHost),
    /// Why not (the reason a FARGATE task is refused with).
    Unavailable(String),
}

/// A node's resolved VM settings.
#[derive(Clone, Debug)]
pub struct VmHost {
    /// The configuration.
    pub config: VmConfig,
    /// The accelerator chosen.
    pub accel: Resolved,
}

/// An accelerator, chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "kind"
)]
pub enum Resolved {
    /// Hardware virtualisation.
    Kvm,
    /// Emulation; the guest's TSC frequency given on its command line (calibrating it against
    /// the emulated PIT can hang).
    Tcg {
        /// kHz.
        tsc_khz: u64,
    },
}

impl VmSupport {
    /// Checks `[vm]` against the host: the VMM binary, kernel and initramfs exist, and the
    /// accelerator is usable.
    pub fn probe(config: Option<&VmConfig>) -> Self {
        let Some(config) = config else {
            return Self::Unavailable("microVM tasks need [vm] in skiffd.toml".into());
        };
        for (key, path) in [
            ("qemu", &config.qemu),
            ("kernel", &config.kernel),
            ("initrd", &config.initrd),
        ] {
            if !path.is_file() {
                return Self::Unavailable(format!(
                    "vm.{key} {} does not exist (packaging/vm-assets.sh makes the kernel and initrd)",
                    path.display()
                ));
            }
        }
        let kvm = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok()
        };
        let accel = match config.accel {
            Accel::Tcg => Resolved::Tcg { tsc_khz: tsc_khz() },
            Accel::Auto | Accel::Kvm if kvm() => Resolved::Kvm,
            Accel::Auto | Accel::Kvm => {
                return Self::Unavailable(
                    "no usable KVM (/dev/kvm cannot be opened); vm.accel = \"tcg\" emulates, slowly"
                        .into(),
                );
            }
        };
        Self::Ready(VmHost {
            config: config.clone(),
            accel,
        })
    }

    /// Boots a canary when the accelerator is KVM: the node's kernel and initramfs, without
    /// disks or network, through `skiff-shim vm` (the path every task VM takes) in scratch
    /// directory `dir`, until its agent is ready. A /dev/kvm that opens is not one that runs
    /// guests (a nested hypervisor may not run stock kernels, as on the machine Skiff is
    /// developed on): a node that cannot boot one reports no microVM capability, so that its
    /// FARGATE tasks are refused at placement rather than started to hang. TCG, chosen by
    /// configuration only, is not checked.
    pub async fn canary(self, shim: &Path, dir: &Path) -> Self {
        let Self::Ready(h) = &self else {
            return self;
        };
        if h.accel != Resolved::Kvm {
            return self;
        }
        let started = std::time::Instant::now();
        // The shim has its own deadlines; this one bounds skiffd's start whatever happens.
        let booted = tokio::time::timeout(CANARY_TIMEOUT * 2, boot_canary(h, shim, dir))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", CANARY_TIMEOUT * 2)));
        let _ = std::fs::remove_dir_all(dir);
        match booted {
            Ok(()) => {
                tracing::info!(
                    ms = started.elapsed().as_millis() as u64,
                    "a canary VM booted on KVM"
                );
                self
            }
            Err(why) => Self::Unavailable(format!(
                "/dev/kvm opens but a canary guest did not boot on it ({why}); vm.accel = \"tcg\" emulates, slowly"
            )),
        }
    }

    /// The VM settings when ready, else why not.
    pub fn ready(&self) -> Result<&VmHost, &str> {
        match self {
            Self::Ready(h) => Ok(h),
            Self::Unavailable(why) => Err(why),
        }
    }
}

/// How long a canary VM may take to boot before KVM is deemed unusable (on KVM a guest is up
/// within a second).
const CANARY_TIMEOUT: Duration = Duration::from_secs(10);

async fn boot_canary(h: &VmHost, shim: &Path, dir: &Path) -> Result<(), String> {
    use tokio::io::AsyncBufReadExt;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let spec = VmSpec {
        vmm: h.config.qemu.clone(),
        kernel: h.config.kernel.clone(),
        initrd: h.config.initrd.clone(),
        accel: h.accel,
        cpus: 1,
        memory_mib: MIN_MEMORY_MIB,
        disks: Vec::new(),
        boot_timeout_ms: CANARY_TIMEOUT.as_millis() as u64,
        network: None,
        shares: Vec::new(),
        virtiofsd: PathBuf::new(),
    };
    let vm = VmDir(dir.to_owned());
    std::fs::write(
        vm.spec(),
        serde_json::to_vec(&spec).expect("a spec serializes"),
    )
    .map_err(|e| format!("writing {}: {e}", vm.spec().display()))?;
    let log = dir.join("shim.log");
    let mut child = tokio::process::Command::new(shim)
        .arg("vm")
        .arg("--dir")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(
            std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?,
        )
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", shim.display()))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = tokio::io::BufReader::new(out).read_line(&mut line).await;
    }
    let ready = line.starts_with("ready ");
    if ready && let Some(pid) = child.id() {
        // Powered off as a task's VM is at its end.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let _ = child.wait().await;
    if ready {
        return Ok(());
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    Err(text
        .lines()
        .last()
        .unwrap_or("skiff-shim vm exited")
        .to_owned())
}

/// The host CPU's frequency in kHz, from /proc/cpuinfo (2 GHz when it does not say).
pub fn tsc_khz() -> u64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("cpu MHz"))?
                .split(':')
                .nth(1)?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(2_000_000, |mhz| (mhz * 1000.0) as u64)
}

/// The VM a task gets: its vCPUs (the task's `cpu` units, rounded up to whole cores) and its
/// memory, MiB (the task's `memory`, else what its containers ask for together, else 512).
pub fn size(def: &crate::taskdef::TaskDefinition) -> (u32, u64) {
    let res = def.resources();
    let cpus = res.cpu.map_or(1, |u| u.div_ceil(1024).max(1));
    let containers: u64 = def
        .container_definitions
        .iter()
        .map(|c| u64::from(c.memory.or(c.memory_reservation).unwrap_or(0)))
        .sum();
    let memory = match res.memory {
        Some(m) => u64::from(m),
        None if containers > 0 => containers,
        None => 512,
    };
    (cpus, memory)
}

/// The serial of the disk of a task's `index`th container (virtio-blk serials hold 20 bytes;
/// container names can be longer).
pub fn disk_serial(index: usize) -> String {
    format!("c{index}")
}

/// One VM, as the VM shim starts it (`spec.json` in the VM's directory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmSpec {
    /// The VMM binary.
    pub vmm: PathBuf,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// Its initramfs.
    pub initrd: PathBuf,
    /// The accelerator.
    pub accel: Resolved,
    /// vCPUs.
    pub cpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Disks: serial (what the agent finds it by) and image file.
    pub disks: Vec<(String, PathBuf)>,
    /// How long to wait for the agent.
    pub boot_timeout_ms: u64,
    /// The task's network, if it has one of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<VmNetwork>,
    /// The task's volumes, each a node directory shared with the guest by virtio-fs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<Share>,
    /// The virtio-fs daemon (with shares only).
    #[serde(default)]
    pub virtiofsd: PathBuf,
}

/// The shares of a task's volumes: one per volume (`v0`, `v1`, ... in the order of
/// `volumes`), each its node directory, read-only unless in `writable` (the directories some
/// container mounts read-write).
pub fn shares(
    volumes: &[(String, PathBuf)],
    writable: &std::collections::HashSet<PathBuf>,
) -> Result<Vec<Share>, VmError> {
    volumes
        .iter()
        .enumerate()
        .map(|(i, (name, path))| {
            let bad = |why| VmError::Volume {
                volume: name.clone(),
                path: path.clone(),
                why,
            };
            if !path.is_dir() {
                return Err(bad("is not a directory: a microVM task's volumes are directories the guest mounts by virtio-fs"));
            }
            // virtiofsd's -o and QEMU's option syntax split on commas.
            if path.to_string_lossy().contains(',') {
                return Err(bad("has a comma, which virtio-fs options cannot carry"));
            }
            Ok(Share {
                tag: format!("v{i}"),
                source: path.clone(),
                read_only: !writable.contains(path),
            })
        })
        .collect()
}

impl VmSpec {
    /// The spec of the VM in `dir`.
    pub fn load(dir: &VmDir) -> Result<Self, VmError> {
        let path = dir.spec();
        serde_json::from_slice(&std::fs::read(&path).map_err(io("read", &path))?)
            .map_err(|e| io("parse", &path)(std::io::Error::other(e)))
    }
}

/// A node directory the guest mounts by virtio-fs, under a tag of the VM's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Share {
    /// The tag (`v0`, `v1`, ...: virtio-fs tags are short, volume names need not be).
    pub tag: String,
    /// The directory.
    pub source: PathBuf,
    /// No container of the task may write it: shared read-only (a guest's root can mount a
    /// share itself, so a container's read-only bind alone would not hold).
    #[serde(default)]
    pub read_only: bool,
}

/// A VM's share of its task's network: the VMM runs in the task's network namespace, where a
/// tap stands in for each of its interfaces (netd's `attach_vm`); the guest takes the
/// interfaces' MAC addresses, names, addresses and routes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmNetwork {
    /// The task's network namespace.
    pub netns: PathBuf,
    /// The tap of each of `guest.interfaces`, in the same order.
    pub taps: Vec<String>,
    /// What the agent sets up.
    pub guest: NetworkConfig,
}

impl VmNetwork {
    /// The VM's network from what netd attached in namespace `netns`.
    pub fn of(netns: &Path, g: &skiff_netd::GuestNetwork) -> Self {
        let cidr = |address, prefix_len| Cidr {
            address,
            prefix_len,
        };
        let interfaces = g
            .nics
            .iter()
            .map(|n| Interface {
                mac: n.mac,
                name: n.name.clone(),
                mtu: n.mtu,
                addresses: g
                    .addrs
                    .iter()
                    .filter(|a| a.dev == n.name)
                    .map(|a| cidr(a.addr.addr(), a.addr.prefix_len()))
                    .collect(),
            })
            .collect();
        let routes = g
            .routes
            .iter()
            .map(|r| RouteConfig {
                destination: cidr(r.dest.addr(), r.dest.prefix_len()),
                via: r.via,
                dev: r.dev.clone(),
                source: r.src,
            })
            .collect();
        Self {
            netns: netns.to_owned(),
            taps: g.nics.iter().map(|n| n.tap.clone()).collect(),
            guest: NetworkConfig { interfaces, routes },
        }
    }
}

/// A VM's files, in its task's directory.
#[derive(Clone, Debug)]
pub struct VmDir(pub PathBuf);

impl VmDir {
    /// The VM of the task whose directory is `task_dir`.
    pub fn of(task_dir: &Path) -> Self {
        Self(task_dir.join("vm"))
    }
    /// The spec the VM shim starts.
    pub fn spec(&self) -> PathBuf {
        self.0.join("spec.json")
    }
    /// The agent's port: the VM shim listens, the VMM connects.
    pub fn agent_socket(&self) -> PathBuf {
        self.0.join("agent.sock")
    }
    /// Where `skiff-shim vm-run` and `vm-exec` reach the VM shim.
    pub fn control_socket(&self) -> PathBuf {
        self.0.join("control.sock")
    }
    /// The guest's serial console.
    pub fn console_log(&self) -> PathBuf {
        self.0.join("console.log")
    }
    /// The disk image of container `name`.
    pub fn disk(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.ext4"))
    }
    /// Where the virtio-fs daemon of share `tag` listens for the VMM.
    pub fn share_socket(&self, tag: &str) -> PathBuf {
        self.0.join(format!("fs-{tag}.sock"))
    }
}

/// Removes a VM's disk images (its console log stays with the task's logs).
pub fn remove_disks(dir: &VmDir) {
    for e in std::fs::read_dir(&dir.0).into_iter().flatten().flatten() {
        if e.path().extension().is_some_and(|x| x == "ext4")
            && let Err(err) = std::fs::remove_file(e.path())
        {
            tracing::warn!(disk = %e.path().display(), error = %err, "removing a VM disk");
        }
    }
}

/// The seam in front of a VMM: how to start one VM whose agent port is the VM shim's listening
/// socket `agent`. QEMU takes everything on its command line; Firecracker and cloud-hypervisor
/// would start bare and be configured through their API socket before booting (their vsock
/// device's socket then stands for `agent`).
pub trait Vmm: std::fmt::Debug {
    /// The VMM process.
    fn command(&self, spec: &VmSpec, dir: &VmDir) -> std::process::Command;
}

/// QEMU's `microvm` machine: virtio-mmio devices only, no PCI, no firmware; the kernel and
/// initramfs loaded directly.
#[derive(Debug)]
pub struct Qemu;

impl Qemu {
    /// The machine of `spec` booting its kernel and initramfs, without devices or console:
    /// what every VM of this node is, and what the microVM benchmark boots bare as its floor.
    pub fn machine(spec: &VmSpec) -> std::process::Command {
        let mut c = std::process::Command::new(&spec.vmm);
        let (accel, cpu, tsc) = match spec.accel {
            Resolved::Kvm => ("kvm".to_owned(), "host", String::new()),
            // TCG's translation cache defaults to 1 GiB: kept small, it is the VMM's overhead.
            Resolved::Tcg { tsc_khz } => (
                "tcg,tb-size=64".to_owned(),
                "max",
                format!(" tsc_early_khz={tsc_khz} tsc=reliable"),
            ),
        };
        c.args(["-M", "microvm,rtc=on", "-accel", &accel, "-cpu", cpu])
            // Modern (version 2) virtio-mmio devices: vhost-user ones (virtio-fs) have no
            // legacy mode.
            .args(["-global", "virtio-mmio.force-legacy=false"])
            .args(["-smp", &spec.cpus.to_string()])
            .args(["-m", &format!("{}M", spec.memory_mib)])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(&spec.kernel)
            .arg("-initrd")
            .arg(&spec.initrd)
            .args([
                "-append",
                &format!("console=ttyS0 rdinit=/init panic=-1 quiet loglevel=3{tsc}"),
            ]);
        c
    }
}

impl Vmm for Qemu {
    fn command(&self, spec: &VmSpec, dir: &VmDir) -> std::process::Command {
        let mut c = Self::machine(spec);
        c.arg("-serial")
            .arg(format!("file:{}", dir.console_log().display()));
        for (i, (serial, path)) in spec.disks.iter().enumerate() {
            c.args(["-drive"])
                .arg(format!(
                    "id=d{i},file={},format=raw,if=none,cache=unsafe",
                    path.display()
                ))
                .args([
                    "-device",
                    &format!("virtio-blk-device,drive=d{i},serial={serial}"),
                ]);
        }
        // The taps are opened by name in the task's namespace, where the VM shim starts QEMU.
        // vhost-net off: the in-kernel data path needs /dev/vhost-net handed to QEMU, and gains
        // a TCG guest nothing (on KVM hosts it is the next step for throughput).
        let nics = spec
            .network
            .iter()
            .flat_map(|n| n.taps.iter().zip(&n.guest.interfaces));
        for (i, (tap, nic)) in nics.enumerate() {
            c.arg("-netdev")
                .arg(format!(
                    "tap,id=n{i},ifname={tap},script=no,downscript=no,vhost=off"
                ))
                .arg("-device")
                .arg(format!(
                    "virtio-net-device,netdev=n{i},mac={},host_mtu={}",
                    skiff_guest::net::mac_string(&nic.mac),
                    nic.mtu
                ));
        }
        // vhost-user devices read the guest's memory: it must be shared memory (a memfd).
        if !spec.shares.is_empty() {
            c.arg("-object")
                .arg(format!(
                    "memory-backend-memfd,id=mem,size={}M,share=on",
                    spec.memory_mib
                ))
                .args(["-machine", "memory-backend=mem"]);
        }
        for (i, share) in spec.shares.iter().enumerate() {
            c.arg("-chardev")
                .arg(format!(
                    "socket,id=fs{i},path={}",
                    dir.share_socket(&share.tag).display()
                ))
                .arg("-device")
                .arg(format!(
                    "vhost-user-fs-device,chardev=fs{i},tag={}",
                    share.tag
                ));
        }
        c.args(["-device", "virtio-serial-device,max_ports=2"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=agent,path={}",
                dir.agent_socket().display()
            ))
            .args([
                "-device",
                &format!(
                    "virtserialport,chardev=agent,name={}",
                    skiff_guest::proto::PORT_NAME
                ),
            ]);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_gets_the_machine_the_disks_and_the_agent_port() {
        let dir = VmDir(PathBuf::from("/t/vm"));
        let spec = VmSpec {
            vmm: "/usr/bin/qemu-system-x86_64".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            accel: Resolved::Tcg { tsc_khz: 2_500_000 },
            cpus: 2,
            memory_mib: 512,
            disks: vec![("c0".into(), "/t/vm/web.ext4".into())],
            boot_timeout_ms: 1000,
            network: Some(VmNetwork {
                netns: "/run/skiff/netns/t".into(),
                taps: vec!["tap0".into()],
                guest: NetworkConfig {
                    interfaces: vec![Interface {
                        mac: [2, 0, 0, 0, 0, 0xab],
                        name: "eth0".into(),
                        mtu: 1500,
                        addresses: Vec::new(),
                    }],
                    routes: Vec::new(),
                },
            }),
            shares: vec![Share {
                tag: "v0".into(),
                source: "/srv/data".into(),
                read_only: false,
            }],
            virtiofsd: "/usr/lib/qemu/virtiofsd".into(),
        };
        let c = Qemu.command(&spec, &dir);
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = args.join(" ");
        assert!(
            line.contains("-M microvm,rtc=on -accel tcg,tb-size=64 -cpu max"),
            "{line}"
        );
        assert!(line.contains("-smp 2 -m 512M"), "{line}");
        assert!(
            line.contains("tsc_early_khz=2500000 tsc=reliable"),
            "{line}"
        );
        assert!(line.contains("file=/t/vm/web.ext4,format=raw"), "{line}");
        assert!(
            line.contains("virtio-blk-device,drive=d0,serial=c0"),
            "{line}"
        );
        assert!(
            line.contains("socket,id=agent,path=/t/vm/agent.sock"),
            "{line}"
        );
        assert!(line.contains("name=skiff.agent"), "{line}");
        assert!(
            line.contains(
                "memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem"
            ),
            "{line}"
        );
        assert!(
            line.contains("socket,id=fs0,path=/t/vm/fs-v0.sock -device vhost-user-fs-device,chardev=fs0,tag=v0"),
            "{line}"
        );
        assert!(
            line.contains("-netdev tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off -device virtio-net-device,netdev=n0,mac=02:00:00:00:00:ab,host_mtu=1500"),
            "{line}"
        );
        let kvm = Qemu.command(
            &VmSpec {
                accel: Resolved::Kvm,
                ..spec
            },
            &dir,
        );
        let line: Vec<String> = kvm
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(line.join(" ").contains("-accel kvm -cpu host"));
        assert!(!line.join(" ").contains("tsc_early_khz"));
    }

    #[test]
    fn the_capability_is_one_the_node_reports_itself() {
        assert!(CAPABILITY_ATTRIBUTE.starts_with(crate::protocol::NODE_CAPABILITY_PREFIX));
    }

    #[test]
    fn probe_names_what_is_missing() {
        assert!(matches!(
            VmSupport::probe(None),
            VmSupport::Unavailable(w) if w.contains("[vm]")
        ));
        let c = VmConfig {
            kernel: "/nonexistent/vmlinuz".into(),
            qemu: "/bin/sh".into(),
            ..VmConfig::default()
        };
        match VmSupport::probe(Some(&c)) {
            VmSupport::Unavailable(w) => {
                assert!(w.contains("vm.kernel /nonexistent/vmlinuz"), "{w}")
            }
            other => panic!("{other:?}"),
        }
        let t = tempfile::tempdir().unwrap();
        let (k, i) = (t.path().join("k"), t.path().join("i"));
        std::fs::write(&k, "").unwrap();
        std::fs::write(&i, "").unwrap();
        let c = VmConfig {
            kernel: k,
            initrd: i,
            qemu: "/bin/sh".into(),
            accel: Accel::Tcg,
            ..VmConfig::default()
        };
        match VmSupport::probe(Some(&c)) {
            VmSupport::Ready(h) => {
                assert!(matches!(h.accel, Resolved::Tcg { tsc_khz } if tsc_khz > 0))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            VmConfig {
                vmm: "firecracker".into(),
                ..VmConfig::default()
            }
            .validate()
            .unwrap_err()
            .contains("vm.vmm")
        );
    }
}
