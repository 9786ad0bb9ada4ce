//! Network benchmark: a task's network setup and teardown with Skiff's netd (`bridge` with one
//! port mapping, `awsvpc` routed) against the CNI plugins of Debian's
//! containernetworking-plugins doing the same job, then throughput and latency over Skiff's
//! data paths against the same traffic over loopback, side by side in one run. The goals it
//! checks (issue 4, docs/benchmarks.md): Skiff's setup + teardown faster than the CNI chain's,
//! and Skiff's setup at most 5 ms at the median.
//!
//! ```text
//! cargo bench -p skiff-tests --bench net
//! ```
//!
//! It needs no binary of the workspace: netd is a library (`skiff_netd`), called as skiffd
//! calls it. It needs root, `nft`, `ip`, `nsenter`, iperf3 and the CNI plugins in
//! `/usr/lib/cni` (`packaging/deps.sh` installs them); without root it says why and exits 0, or
//! 1 under `SKIFF_REQUIRE_PRIVILEGED=1`.
//!
//! **Where it runs.** Everything happens in network namespaces the bench makes, under one temporary
//! directory: a "node" namespace, where Skiff's bridge, nftables table and the CNI bridge and
//! iptables rules live, a "LAN" namespace linked to the node by a veth (a stand-in for another
//! host), one for the MTU baseline below, and the tasks' namespaces. One thread enters the node
//! namespace and runs both tools from there, with a current-thread tokio runtime for netd (as
//! netd's real-kernel test does); the CNI plugins are started by that thread and so run in the node
//! namespace. No packet goes to an address outside these namespaces. At the end every namespace is
//! unmounted and every process stopped (also on error or panic), and the bench fails if a mount
//! under its directory or a new link in the host's namespace is left.
//!
//! **Setup and teardown** (`BENCH_ROUNDS`, default 300, timed rounds after 5 untimed warm-up
//! rounds; each round runs every tool once, rotating which goes first):
//!
//! - *Skiff bridge*: `NodeNetwork::setup` of a `bridge` task with one TCP mapping (host port
//!   8080 -> 80), then `NodeNetwork::teardown`. Setup persists the lease (fsync), binds the host
//!   port, makes the namespace (bind mount), adds the veth on the bridge, configures the inside
//!   and adds the mapping to Skiff's nftables map (one `nft -f -`); teardown undoes it.
//! - *CNI bridge + host-local + portmap*: the namespace made with netd's own
//!   `Kernel::create_netns` (so both sides pay the same for it), then the chain run as libcni
//!   runs a conflist: `bridge` (`ipMasq`, `isGateway`, `host-local` IPAM in the bench's
//!   directory) then `portmap` (host port 8081 -> 80, `runtimeConfig.portMappings`), each
//!   plugin binary started with `CNI_COMMAND=ADD`, the network config on stdin and the previous
//!   plugin's result as `prevResult`. Teardown: `DEL` in reverse order with the chain's result
//!   as `prevResult`, then `Kernel::remove_netns`. libcni's result cache file is not written.
//! - *Skiff awsvpc (routed)*: setup and teardown of an `awsvpc` task on a node configured with
//!   `mode = "routed"`: a veth into the namespace and a /32 route to it.
//! - *CNI ptp + host-local*: the closest CNI equivalent (a routed veth per namespace, `ipMasq`
//!   off), with the namespace made and removed as above.
//! - *netns only*: `Kernel::create_netns` then `Kernel::remove_netns`, the part both sides
//!   share, for reference.
//!
//! Setup and teardown are timed separately (wall time, `Instant`) and reported as p50, p90,
//! p99 and mean, with their per-round sum. In the first warm-up round each tool's task is
//! checked to work: a TCP connection from the node to the host port (bridge) or to the task's
//! address (routed) reaches a listener inside the task. `BENCH_ONLY` (comma-separated keys:
//! `netns`, `skiff-bridge`, `cni-bridge`, `skiff-awsvpc`, `cni-ptp`) runs a subset, for
//! profiling one tool; `BENCH_TRAFFIC=0` skips the traffic part.
//!
//! **Traffic** (run first, while the node's firewall holds Skiff's table only). Three Skiff tasks
//! stay up: a bridge server task (host ports 15201 -> iperf3's 5201, 17000 -> 7000), a bridge
//! client task and a routed awsvpc server task. Paths: loopback in the node namespace (the baseline
//! the issue asks for); loopback with its MTU lowered to the veths' 1500, in a namespace of its own
//! (a second baseline: loopback's 64 KiB MTU alone is worth a fifth to a quarter of its throughput,
//! which no path through a 1500-byte veth can have); task -> task over the bridge; node ->
//! 127.0.0.1:host port -> task (DNAT); LAN -> node uplink (no NAT, the veth hop alone); LAN -> node
//! host port -> task; LAN -> awsvpc task at its own address. Throughput: `iperf3 -c -J` (one TCP
//! stream, `BENCH_IPERF_SECS`, default 5, after 1 s omitted), `BENCH_IPERF_RUNS` (default 3) runs
//! per path, interleaved, started with `nsenter --net=<ns>` against an `iperf3 -s` in the server's
//! namespace. Latency: iperf3 has no request/response mode (its UDP jitter is the spread of one-way
//! arrival times, not a round trip), so the bench times a 1-byte TCP ping-pong over one established
//! connection (`TCP_NODELAY`), each round trip timed with `Instant` in a thread inside the client's
//! namespace, against a thread echoing the byte in the server's: `BENCH_PINGS` (default 10000)
//! round trips per path in 5 blocks interleaved across paths, each block on a new connection after
//! 100 untimed round trips. This measures what the path adds to a round trip (veth, bridge,
//! routing, NAT on an established conntrack entry) without process start-up or iperf3's own costs.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use nix::sched::{CloneFlags, setns};
use serde_json::{Value, json};
use skiff_netd::kernel::Kernel;
use skiff_netd::{
    AwsvpcConfig, Mode, NetConfig, NetDirs, Netlink, Nft, NodeNetwork, PortRequest, Protocol,
    TaskRequest,
};
use skiff_tests::{bench_may_run, env_num, first_line, percentile, sh};
use tempfile::TempDir;

const RERUN: &str = "cargo bench -p skiff-tests --bench net";
const WARMUP: usize = 5;
const CNI_PATH: &str = "/usr/lib/cni";
const CNI_VERSION: &str = "1.0.0";
/// The container port of the setup benchmark's mappings.
const CONTAINER_PORT: u16 = 80;
const SKIFF_HOST_PORT: u16 = 8080;
const CNI_HOST_PORT: u16 = 8081;
/// The traffic part's server ports inside a namespace, and the host ports mapped to them.
const IPERF_PORT: u16 = 5201;
const PONG_PORT: u16 = 7000;
const IPERF_HOST_PORT: u16 = 15201;
const PONG_HOST_PORT: u16 = 17000;
/// The node's uplink to the LAN namespace, and the LAN's side.
const UPLINK_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 1);
const UPLINK_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 2);
const SKIFF_ROUTED_SUBNET: &str = "10.86.0.0/16";
const PING_BLOCKS: usize = 5;
const PING_WARMUP: usize = 100;

/// The tools of the setup benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Netns,
    SkiffBridge,
    CniBridge,
    SkiffAwsvpc,
    CniPtp,
}

impl Tool {
    const ALL: [Tool; 5] = [
        Tool::SkiffBridge,
        Tool::CniBridge,
        Tool::SkiffAwsvpc,
        Tool::CniPtp,
        Tool::Netns,
    ];

    fn key(self) -> &'static str {
        match self {
            Tool::Netns => "netns",
            Tool::SkiffBridge => "skiff-bridge",
            Tool::CniBridge => "cni-bridge",
            Tool::SkiffAwsvpc => "skiff-awsvpc",
            Tool::CniPtp => "cni-ptp",
        }
    }

    fn mode(self) -> &'static str {
        match self {
            Tool::Netns => "reference",
            Tool::SkiffBridge | Tool::CniBridge => "bridge + 1 port mapping",
            Tool::SkiffAwsvpc | Tool::CniPtp => "awsvpc routed",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Tool::Netns => "netns only (create + remove)",
            Tool::SkiffBridge => "skiff netd",
            Tool::CniBridge => "CNI bridge + host-local + portmap",
            Tool::SkiffAwsvpc => "skiff netd",
            Tool::CniPtp => "CNI ptp + host-local",
        }
    }
}

struct Params {
    rounds: usize,
    tools: Vec<Tool>,
    traffic: bool,
    iperf_secs: usize,
    iperf_runs: usize,
    pings: usize,
}

impl Params {
    fn from_env() -> Result<Self> {
        let tools = match std::env::var("BENCH_ONLY") {
            Ok(list) => list
                .split(',')
                .map(|k| {
                    Tool::ALL
                        .into_iter()
                        .find(|t| t.key() == k.trim())
                        .with_context(|| format!("BENCH_ONLY: unknown tool {k:?}"))
                })
                .collect::<Result<Vec<_>>>()?,
            Err(_) => Tool::ALL.to_vec(),
        };
        Ok(Self {
            rounds: env_num("BENCH_ROUNDS", 300)?,
            tools,
            traffic: std::env::var("BENCH_TRAFFIC").as_deref() != Ok("0"),
            iperf_secs: env_num("BENCH_IPERF_SECS", 5)?,
            iperf_runs: env_num("BENCH_IPERF_RUNS", 3)?,
            pings: env_num("BENCH_PINGS", 10_000)?,
        })
    }
}

fn main() -> ExitCode {
    if let Err(code) = bench_may_run("network benchmark") {
        return code;
    }
    let mut missing: Vec<String> = ["bridge", "host-local", "portmap", "ptp"]
        .iter()
        .map(|p| Path::new(CNI_PATH).join(p))
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    for tool in ["iperf3", "nft", "ip", "nsenter"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            missing.push(tool.into());
        }
    }
    if !missing.is_empty() {
        eprintln!(
            "network benchmark: missing {} (packaging/deps.sh installs them)",
            missing.join(", ")
        );
        return ExitCode::FAILURE;
    }
    match Params::from_env().and_then(|p| run(&p)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("network benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---- namespaces ----------------------------------------------------------------------------

/// Runs `f` on a new thread inside the network namespace at `ns` (setns is per thread).
fn in_ns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = File::open(ns).with_context(|| format!("open {}", ns.display()))?;
    let name = ns.display().to_string();
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("a thread in namespace {name} panicked"))?
}

/// A netd kernel for namespace files: they need no netlink connection, and a runtime only for
/// `Netlink::open` (as netd's real-kernel test does).
fn kernel_for_files() -> Result<Netlink> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _g = rt.enter();
    Ok(Netlink::open()?)
}

/// Where the bench keeps its namespaces and files, handed to the thread in the node namespace.
#[derive(Clone, Debug)]
struct Paths {
    node: PathBuf,
    lan: PathBuf,
    /// A namespace whose loopback has the veths' MTU (1500): the second baseline.
    lo1500: PathBuf,
    skiff_netns: PathBuf,
    cni_netns: PathBuf,
    cni_ipam: PathBuf,
    leases: PathBuf,
    logs: PathBuf,
}

/// The bench's temporary directory and the node and LAN namespaces; removes every namespace
/// under it on drop.
struct Site {
    tmp: TempDir,
    kernel: Netlink,
    paths: Paths,
}

impl Site {
    fn new() -> Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("skiff-bench-net-")
            .tempdir()?;
        let d = tmp.path();
        let paths = Paths {
            node: d.join("node"),
            lan: d.join("lan"),
            lo1500: d.join("lo1500"),
            skiff_netns: d.join("skiff-netns"),
            cni_netns: d.join("cni-netns"),
            cni_ipam: d.join("cni-ipam"),
            leases: d.join("state/leases.json"),
            logs: d.join("logs"),
        };
        for dir in [&paths.cni_netns, &paths.cni_ipam, &paths.logs] {
            fs::create_dir_all(dir)?;
        }
        let site = Self {
            kernel: kernel_for_files()?,
            tmp,
            paths,
        };
        site.kernel.create_netns(&site.paths.node)?;
        site.kernel.create_netns(&site.paths.lan)?;
        site.kernel.create_netns(&site.paths.lo1500)?;
        Ok(site)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for dir in [&self.paths.skiff_netns, &self.paths.cni_netns] {
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                self.kernel.remove_netns(&e.path());
            }
        }
        self.kernel.remove_netns(&self.paths.lan);
        self.kernel.remove_netns(&self.paths.lo1500);
        self.kernel.remove_netns(&self.paths.node);
    }
}

/// Names of the links of the calling thread's namespace.
fn link_names() -> Result<Vec<String>> {
    let out = sh(Command::new("ip").args(["-o", "link", "show"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect())
}

// ---- a listener inside a task, for checks and the ping-pong ---------------------------------

/// From the calling thread's namespace, connects to `to` where a listener on port `port` in
/// `ns` answers "ok": checks that a tool's task network carries traffic.
fn check_reach(ns: &Path, port: u16, to: SocketAddr) -> Result<()> {
    let l = in_ns(ns, move || Ok(TcpListener::bind(("0.0.0.0", port))?))?;
    let server = std::thread::spawn(move || -> Result<()> {
        let (mut s, _) = l.accept()?;
        s.write_all(b"ok")?;
        Ok(())
    });
    let mut got = String::new();
    let reached = TcpStream::connect_timeout(&to, Duration::from_secs(3)).and_then(|mut s| {
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.read_to_string(&mut got)
    });
    match reached {
        Ok(_) => {
            server
                .join()
                .map_err(|_| anyhow!("check server panicked"))??;
            ensure!(got == "ok", "{to} answered {got:?}");
            Ok(())
        }
        // The server thread stays blocked in accept; the process ends soon after an error.
        Err(e) => Err(anyhow!("connect {to} (listener in {}): {e}", ns.display())),
    }
}

/// A thread echoing one byte per byte received, on each connection in turn, until it receives
/// `q`.
fn pong_server(ns: &Path, port: u16) -> Result<JoinHandle<()>> {
    let l = in_ns(ns, move || Ok(TcpListener::bind(("0.0.0.0", port))?))?;
    Ok(std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_nodelay(true);
            let mut b = [0u8; 1];
            while let Ok(1) = s.read(&mut b) {
                if b[0] == b'q' {
                    return;
                }
                if s.write_all(&b).is_err() {
                    break;
                }
            }
        }
    }))
}

/// `n` timed 1-byte round trips from namespace `ns` to `to`, after untimed warm-up; seconds.
fn ping(ns: &Path, to: SocketAddr, n: usize) -> Result<Vec<f64>> {
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .with_context(|| format!("connect {to}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut b = [0u8; 1];
        let mut out = Vec::with_capacity(n);
        for i in 0..PING_WARMUP + n {
            let t = Instant::now();
            s.write_all(b"p")?;
            s.read_exact(&mut b)?;
            if i >= PING_WARMUP {
                out.push(t.elapsed().as_secs_f64());
            }
        }
        Ok(out)
    })
}

/// Stops a pong server at `to` (from the calling thread's namespace, which must reach it).
fn quit_pong(to: SocketAddr, h: JoinHandle<()>) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    s.write_all(b"q")?;
    h.join().map_err(|_| anyhow!("pong server panicked"))
}

// ---- CNI -----------------------------------------------------------------------------------

/// A CNI network list run plugin by plugin, as libcni runs a conflist.
struct Cni {
    name: &'static str,
    plugins: Vec<Value>,
    /// The host port of the one mapping, for plugins with the `portMappings` capability.
    host_port: Option<u16>,
}

impl Cni {
    fn host_local(dir: &Path, subnet: &str) -> Value {
        json!({
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": dir,
        })
    }

    fn bridge(ipam: &Path) -> Self {
        Self {
            name: "benchbridge",
            plugins: vec![
                json!({
                    "type": "bridge", "bridge": "cnibench0", "isGateway": true, "ipMasq": true,
                    "ipam": Self::host_local(ipam, "10.88.0.0/16"),
                }),
                json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}),
            ],
            host_port: Some(CNI_HOST_PORT),
        }
    }

    fn ptp(ipam: &Path) -> Self {
        Self {
            name: "benchptp",
            plugins: vec![json!({
                "type": "ptp", "ipMasq": false, "ipam": Self::host_local(ipam, "10.85.0.0/16"),
            })],
            host_port: None,
        }
    }

    /// The config one plugin reads on stdin.
    fn conf(&self, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut c = plugin.clone();
        c["cniVersion"] = json!(CNI_VERSION);
        c["name"] = json!(self.name);
        if let (Some(port), true) = (
            self.host_port,
            plugin["capabilities"]["portMappings"] == true,
        ) {
            c["runtimeConfig"] = json!({"portMappings": [
                {"hostPort": port, "containerPort": CONTAINER_PORT, "protocol": "tcp"},
            ]});
        }
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    }

    fn exec(
        &self,
        plugin: &Value,
        command: &str,
        id: &str,
        ns: &Path,
        prev: Option<&Value>,
    ) -> Result<Vec<u8>> {
        let kind = plugin["type"].as_str().context("plugin without type")?;
        let mut child = Command::new(Path::new(CNI_PATH).join(kind))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", ns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH)
            .env("CNI_ARGS", "")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start CNI plugin {kind}"))?;
        let conf = serde_json::to_vec(&self.conf(plugin, prev))?;
        child
            .stdin
            .take()
            .context("plugin stdin")?
            .write_all(&conf)?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "CNI {kind} {command} {id}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout)
    }

    /// ADD through the chain; the last plugin's result.
    fn add(&self, id: &str, ns: &Path) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for p in &self.plugins {
            let out = self.exec(p, "ADD", id, ns, prev.as_ref())?;
            prev = Some(serde_json::from_slice(&out).context("CNI result")?);
        }
        prev.context("empty chain")
    }

    /// DEL through the chain in reverse, each plugin given the chain's result; every plugin
    /// runs even if one fails.
    fn del(&self, id: &str, ns: &Path, result: Option<&Value>) -> Result<()> {
        let mut first_err = None;
        for p in self.plugins.iter().rev() {
            if let Err(e) = self.exec(p, "DEL", id, ns, result) {
                first_err = first_err.or(Some(e));
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The address of a CNI result's first IP.
fn cni_address(result: &Value) -> Result<Ipv4Addr> {
    let a = result["ips"][0]["address"]
        .as_str()
        .with_context(|| format!("no address in CNI result {result}"))?;
    Ok(a.split('/').next().unwrap_or(a).parse()?)
}

// ---- setup and teardown --------------------------------------------------------------------

#[derive(Default)]
struct Samples {
    setup: Vec<f64>,
    teardown: Vec<f64>,
}

impl Samples {
    fn sums(&self) -> Vec<f64> {
        self.setup
            .iter()
            .zip(&self.teardown)
            .map(|(a, b)| a + b)
            .collect()
    }
}

/// What the thread in the node namespace works with.
struct Node<'a> {
    rt: &'a tokio::runtime::Runtime,
    net: &'a NodeNetwork,
    kernel: &'a Netlink,
    paths: &'a Paths,
}

/// A Skiff task id: 32 hex digits, unique in its first 12 (they name the task's link).
fn task_id(seq: usize) -> String {
    format!("{seq:012x}{:020x}", 0xbe7c4)
}

fn mapping(container_port: u16, host_port: u16) -> PortRequest {
    PortRequest {
        container_name: "main".into(),
        container_port,
        host_port: Some(host_port),
        protocol: Protocol::Tcp,
    }
}

fn seconds(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

impl Node<'_> {
    fn skiff_round(&self, seq: usize, mode: Mode, check: bool) -> Result<(f64, f64)> {
        let req = TaskRequest {
            task_id: task_id(seq),
            mode,
            ports: match mode {
                Mode::Bridge => vec![mapping(CONTAINER_PORT, SKIFF_HOST_PORT)],
                Mode::Awsvpc => vec![],
            },
        };
        let t = Instant::now();
        let tn = self
            .rt
            .block_on(self.net.setup(&req))
            .with_context(|| format!("skiff setup of {mode:?} task {}", req.task_id))?;
        let setup = seconds(t);
        let checked = if check {
            let to = match mode {
                Mode::Bridge => SocketAddr::from((Ipv4Addr::LOCALHOST, SKIFF_HOST_PORT)),
                Mode::Awsvpc => SocketAddr::from((tn.address, CONTAINER_PORT)),
            };
            check_reach(&tn.netns, CONTAINER_PORT, to)
        } else {
            Ok(())
        };
        let t = Instant::now();
        let down = self.rt.block_on(self.net.teardown(&req.task_id));
        let teardown = seconds(t);
        checked.context("skiff task network check")?;
        down.with_context(|| format!("skiff teardown of {}", req.task_id))?;
        Ok((setup, teardown))
    }

    fn cni_round(&self, cni: &Cni, seq: usize, check: bool) -> Result<(f64, f64)> {
        let id = format!("bench{seq}");
        let ns = self.paths.cni_netns.join(&id);
        let t = Instant::now();
        self.kernel.create_netns(&ns)?;
        let added = cni.add(&id, &ns);
        let setup = seconds(t);
        let result = match added {
            Ok(r) => r,
            Err(e) => {
                let _ = cni.del(&id, &ns, None);
                self.kernel.remove_netns(&ns);
                return Err(e);
            }
        };
        let checked = if check {
            cni_address(&result).and_then(|addr| {
                let to = match cni.host_port {
                    Some(p) => SocketAddr::from((Ipv4Addr::LOCALHOST, p)),
                    None => SocketAddr::from((addr, CONTAINER_PORT)),
                };
                check_reach(&ns, CONTAINER_PORT, to)
            })
        } else {
            Ok(())
        };
        let t = Instant::now();
        let del = cni.del(&id, &ns, Some(&result));
        self.kernel.remove_netns(&ns);
        let teardown = seconds(t);
        checked.with_context(|| format!("CNI {} task network check", cni.name))?;
        del?;
        Ok((setup, teardown))
    }

    fn netns_round(&self, seq: usize) -> Result<(f64, f64)> {
        let ns = self.paths.cni_netns.join(format!("ns{seq}"));
        let t = Instant::now();
        self.kernel.create_netns(&ns)?;
        let setup = seconds(t);
        let t = Instant::now();
        self.kernel.remove_netns(&ns);
        Ok((setup, seconds(t)))
    }

    fn setup_bench(&self, p: &Params) -> Result<Vec<(Tool, Samples)>> {
        let (bridge, ptp) = (
            Cni::bridge(&self.paths.cni_ipam),
            Cni::ptp(&self.paths.cni_ipam),
        );
        let mut out: Vec<(Tool, Samples)> =
            p.tools.iter().map(|&t| (t, Samples::default())).collect();
        let n = out.len();
        let mut seq = 0;
        let t0 = Instant::now();
        for round in 0..WARMUP + p.rounds {
            for k in 0..n {
                let i = (k + round) % n;
                seq += 1;
                let check = round == 0;
                let (s, t) = match out[i].0 {
                    Tool::Netns => self.netns_round(seq)?,
                    Tool::SkiffBridge => self.skiff_round(seq, Mode::Bridge, check)?,
                    Tool::SkiffAwsvpc => self.skiff_round(seq, Mode::Awsvpc, check)?,
                    Tool::CniBridge => self.cni_round(&bridge, seq, check)?,
                    Tool::CniPtp => self.cni_round(&ptp, seq, check)?,
                };
                if round >= WARMUP {
                    out[i].1.setup.push(s);
                    out[i].1.teardown.push(t);
                }
            }
            if round >= WARMUP && (round - WARMUP + 1).is_multiple_of(50) {
                eprintln!(
                    "  setup/teardown: {} rounds in {:.0} s",
                    round - WARMUP + 1,
                    t0.elapsed().as_secs_f64()
                );
            }
        }
        ensure!(
            self.net.leased_tasks().is_empty(),
            "Skiff kept leases: {:?}",
            self.net.leased_tasks()
        );
        let left: Vec<_> = fs::read_dir(&self.paths.cni_netns)?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        ensure!(left.is_empty(), "namespaces left behind: {left:?}");
        Ok(out)
    }
}

// ---- traffic -------------------------------------------------------------------------------

/// An `iperf3 -s` in a namespace, killed on drop.
struct IperfServer(Child);

impl IperfServer {
    fn start(ns: &Path, log: &Path) -> Result<Self> {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["iperf3", "-s", "-p", &IPERF_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(File::create(log)?)
            .stderr(Stdio::from(File::create(log.with_extension("err"))?))
            .spawn()
            .context("start iperf3 -s")?;
        let server = Self(child);
        // Ready when the process is in the namespace and listens on the port.
        let want_ns = format!("net:[{}]", fs::metadata(ns)?.ino());
        let port = format!(":{IPERF_PORT:04X} ");
        let pid = server.0.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let in_ns = fs::read_link(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|l| l.to_string_lossy() == want_ns);
            let listening = ["tcp", "tcp6"].iter().any(|f| {
                fs::read_to_string(format!("/proc/{pid}/net/{f}")).is_ok_and(|t| {
                    t.lines().any(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        f.len() > 3 && format!("{} ", f[1]).ends_with(&port) && f[3] == "0A"
                    })
                })
            });
            if in_ns && listening {
                return Ok(server);
            }
            ensure!(
                Instant::now() < deadline,
                "iperf3 -s in {} did not listen",
                ns.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One iperf3 run: (Gbit/s received, retransmits).
fn iperf(client: &Path, to: SocketAddrV4, secs: usize) -> Result<(f64, u64)> {
    let mut last = None;
    for _attempt in 0..3 {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", client.display()))
            .args(["iperf3", "-J", "-O", "1", "-c"])
            .arg(to.ip().to_string())
            .args(["-p", &to.port().to_string(), "-t", &secs.to_string()])
            .output()
            .context("iperf3 -c")?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if out.status.success()
            && let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64()
        {
            let retr = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
            return Ok((bps / 1e9, retr));
        }
        // "the server is busy" right after the previous test: try again.
        last = Some(format!(
            "{}{}",
            v["error"],
            String::from_utf8_lossy(&out.stderr)
        ));
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!(
        "iperf3 {} -> {to}: {}",
        client.display(),
        last.unwrap_or_default()
    )
}

/// A path of the traffic part: who sends, to which address, iperf3 and ping-pong ports.
struct TrafficPath {
    label: &'static str,
    client: PathBuf,
    to: Ipv4Addr,
    iperf_port: u16,
    pong_port: u16,
}

struct TrafficResult {
    label: &'static str,
    gbits: Vec<f64>,
    retransmits: Vec<u64>,
    rtt: Vec<f64>,
}

impl Node<'_> {
    fn traffic_bench(&self, p: &Params) -> Result<Vec<TrafficResult>> {
        let task = |seq: usize, mode: Mode, ports: Vec<PortRequest>| TaskRequest {
            task_id: task_id(seq),
            mode,
            ports,
        };
        let reqs = [
            task(
                900_001,
                Mode::Bridge,
                vec![
                    mapping(IPERF_PORT, IPERF_HOST_PORT),
                    mapping(PONG_PORT, PONG_HOST_PORT),
                ],
            ),
            task(900_002, Mode::Bridge, vec![]),
            task(900_003, Mode::Awsvpc, vec![]),
        ];
        let mut up = Vec::new();
        let result = (|| {
            for r in &reqs {
                up.push(self.rt.block_on(self.net.setup(r))?);
            }
            self.traffic_with(p, &up[0], &up[1], &up[2])
        })();
        for r in &reqs {
            if let Err(e) = self.rt.block_on(self.net.teardown(&r.task_id)) {
                eprintln!("tearing down {}: {e:#}", r.task_id);
            }
        }
        result
    }

    fn traffic_with(
        &self,
        p: &Params,
        srv: &skiff_netd::TaskNetwork,
        cli: &skiff_netd::TaskNetwork,
        aws: &skiff_netd::TaskNetwork,
    ) -> Result<Vec<TrafficResult>> {
        let paths = [
            TrafficPath {
                label: "loopback in the node (127.0.0.1), baseline",
                client: self.paths.node.clone(),
                to: Ipv4Addr::LOCALHOST,
                iperf_port: IPERF_PORT,
                pong_port: PONG_PORT,
            },
            TrafficPath {
                label: "loopback at MTU 1500 (own namespace), baseline",
                client: self.paths.lo1500.clone(),
                to: Ipv4Addr::LOCALHOST,
                iperf_port: IPERF_PORT,
                pong_port: PONG_PORT,
            },
            TrafficPath {
                label: "task -> task over the bridge",
                client: cli.netns.clone(),
                to: srv.address,
                iperf_port: IPERF_PORT,
                pong_port: PONG_PORT,
            },
            TrafficPath {
                label: "node -> 127.0.0.1:hostPort -> task (DNAT)",
                client: self.paths.node.clone(),
                to: Ipv4Addr::LOCALHOST,
                iperf_port: IPERF_HOST_PORT,
                pong_port: PONG_HOST_PORT,
            },
            TrafficPath {
                label: "LAN -> node uplink (veth, no NAT), reference",
                client: self.paths.lan.clone(),
                to: UPLINK_NODE,
                iperf_port: IPERF_PORT,
                pong_port: PONG_PORT,
            },
            TrafficPath {
                label: "LAN -> node uplink:hostPort -> task (DNAT, bridge)",
                client: self.paths.lan.clone(),
                to: UPLINK_NODE,
                iperf_port: IPERF_HOST_PORT,
                pong_port: PONG_HOST_PORT,
            },
            TrafficPath {
                label: "LAN -> awsvpc task at its own address (routed)",
                client: self.paths.lan.clone(),
                to: aws.address,
                iperf_port: IPERF_PORT,
                pong_port: PONG_PORT,
            },
        ];
        let logs = &self.paths.logs;
        let _servers = [
            IperfServer::start(&self.paths.node, &logs.join("iperf-node.log"))?,
            IperfServer::start(&self.paths.lo1500, &logs.join("iperf-lo1500.log"))?,
            IperfServer::start(&srv.netns, &logs.join("iperf-bridge-task.log"))?,
            IperfServer::start(&aws.netns, &logs.join("iperf-awsvpc-task.log"))?,
        ];
        // Each server with where it is stopped from: the node reaches all but the MTU baseline.
        let node = &self.paths.node;
        let local = SocketAddr::from((Ipv4Addr::LOCALHOST, PONG_PORT));
        let pongs = [
            (node, local, pong_server(node, PONG_PORT)?),
            (
                &self.paths.lo1500,
                local,
                pong_server(&self.paths.lo1500, PONG_PORT)?,
            ),
            (
                node,
                SocketAddr::from((srv.address, PONG_PORT)),
                pong_server(&srv.netns, PONG_PORT)?,
            ),
            (
                node,
                SocketAddr::from((aws.address, PONG_PORT)),
                pong_server(&aws.netns, PONG_PORT)?,
            ),
        ];
        let mut res: Vec<TrafficResult> = paths
            .iter()
            .map(|t| TrafficResult {
                label: t.label,
                gbits: vec![],
                retransmits: vec![],
                rtt: vec![],
            })
            .collect();
        let n = paths.len();
        let measured = (|| -> Result<()> {
            for run in 0..p.iperf_runs {
                for k in 0..n {
                    let i = (k + run) % n;
                    let t = &paths[i];
                    let (g, r) = iperf(
                        &t.client,
                        SocketAddrV4::new(t.to, t.iperf_port),
                        p.iperf_secs,
                    )?;
                    eprintln!("  iperf3 {}: {g:.2} Gbit/s, {r} retransmits", t.label);
                    res[i].gbits.push(g);
                    res[i].retransmits.push(r);
                }
            }
            let block = p.pings.div_ceil(PING_BLOCKS);
            for b in 0..PING_BLOCKS {
                for k in 0..n {
                    let i = (k + b) % n;
                    let t = &paths[i];
                    let v = ping(&t.client, SocketAddr::from((t.to, t.pong_port)), block)?;
                    res[i].rtt.extend(v);
                }
            }
            Ok(())
        })();
        for (from, to, h) in pongs {
            if let Err(e) = in_ns(from, move || quit_pong(to, h)) {
                eprintln!("stopping the ping-pong server at {to}: {e:#}");
            }
        }
        measured?;
        Ok(res)
    }
}

// ---- the run -------------------------------------------------------------------------------

struct Report {
    setup: Vec<(Tool, Samples)>,
    traffic: Vec<TrafficResult>,
    bridge_nf_call_iptables: String,
}

/// The thread in the node namespace: netd set up there, then both parts.
fn node_main(paths: Paths, p: &Params) -> Result<Report> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _enter = rt.enter();
    let kernel = Netlink::open()?;
    sh(Command::new("ip").args(["link", "set", "lo", "up"]))?;
    let cfg = NetConfig {
        bridge: "skbench0".into(),
        bridge_subnet: "10.87.0.0/16".parse()?,
        dynamic_ports: "40000-40100".into(),
        table: "skiff_bench".into(),
        awsvpc: Some(AwsvpcConfig::Routed {
            subnet: SKIFF_ROUTED_SUBNET.parse()?,
        }),
        ..NetConfig::default()
    };
    let dirs = NetDirs {
        netns_dir: paths.skiff_netns.clone(),
        leases: paths.leases.clone(),
    };
    let net = rt
        .block_on(NodeNetwork::init(cfg, dirs, Netlink::open()?, Nft::new()))
        .context("netd init in the node namespace")?;
    // The uplink to the LAN namespace; the LAN routes the awsvpc subnet to the node.
    sh(Command::new("ip")
        .args([
            "link", "add", "uplink0", "type", "veth", "peer", "name", "lan0", "netns",
        ])
        .arg(&paths.lan))?;
    sh(Command::new("ip").args([
        "addr",
        "add",
        &format!("{UPLINK_NODE}/24"),
        "dev",
        "uplink0",
    ]))?;
    sh(Command::new("ip").args(["link", "set", "uplink0", "up"]))?;
    sh(Command::new("nsenter")
        .arg(format!("--net={}", paths.lan.display()))
        .args(["sh", "-ec"])
        .arg(format!(
            "ip link set lo up; ip addr add {UPLINK_LAN}/24 dev lan0; ip link set lan0 up; \
             ip route add {SKIFF_ROUTED_SUBNET} via {UPLINK_NODE}"
        )))?;
    sh(Command::new("nsenter")
        .arg(format!("--net={}", paths.lo1500.display()))
        .args(["ip", "link", "set", "lo", "mtu", "1500", "up"]))?;
    let bridge_nf_call_iptables =
        fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
            .map_or_else(|_| "absent".into(), |s| s.trim().to_owned());
    let node = Node {
        rt: &rt,
        net: &net,
        kernel: &kernel,
        paths: &paths,
    };
    // Traffic first, while the node namespace holds Skiff's table only (the CNI plugins leave
    // their empty base chains behind in iptables' nat table).
    let traffic = if p.traffic {
        eprintln!(
            "traffic: iperf3 {} x {} s per path, {} ping-pong round trips per path",
            p.iperf_runs, p.iperf_secs, p.pings
        );
        node.traffic_bench(p)?
    } else {
        Vec::new()
    };
    eprintln!(
        "setup/teardown: {} rounds (+{WARMUP} warm-up) of {} tools",
        p.rounds,
        p.tools.len()
    );
    let setup = node.setup_bench(p)?;
    ensure!(
        net.leased_tasks().is_empty(),
        "Skiff kept leases: {:?}",
        net.leased_tasks()
    );
    Ok(Report {
        setup,
        traffic,
        bridge_nf_call_iptables,
    })
}

fn run(p: &Params) -> Result<()> {
    let started = Instant::now();
    let load_before = loadavg();
    let host_links = link_names()?;
    let site = Site::new()?;
    let tmp = site.tmp.path().to_owned();
    let paths = site.paths.clone();
    let node = paths.node.clone();
    let params = Params {
        tools: p.tools.clone(),
        ..*p
    };
    let report = in_ns(&node, move || node_main(paths, &params));
    drop(site);
    // Nothing may be left: no mount under the bench's directory, no new host link.
    let mounts = fs::read_to_string("/proc/self/mountinfo")?;
    let tmp_s = tmp.display().to_string();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&tmp_s)).collect();
    ensure!(left.is_empty(), "mounts left behind: {left:?}");
    let new_links: Vec<String> = link_names()?
        .into_iter()
        .filter(|l| !host_links.contains(l))
        .collect();
    ensure!(
        new_links.is_empty(),
        "links left in the host's namespace: {new_links:?}"
    );
    let report = report?;
    print_report(p, &report, started, &load_before);
    Ok(())
}

// ---- statistics and output -----------------------------------------------------------------

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The 1-minute load average: the machine may be shared, and the figures move with it.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn print_report(p: &Params, r: &Report, started: Instant, load_before: &str) {
    println!();
    println!(
        "Skiff at commit {}; kernel {}; {} CPUs; containernetworking-plugins {}; {}; {}; \
         bridge-nf-call-iptables {} in the node namespace; BENCH_ROUNDS={}; {:.0} s in all; \
         load average {load_before} at the start, {} at the end",
        first_line("git", &["rev-parse", "--short", "HEAD"]),
        first_line("uname", &["-r"]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        first_line(
            "dpkg-query",
            &["-W", "-f=${Version}", "containernetworking-plugins"]
        ),
        first_line("iperf3", &["--version"]),
        first_line("nft", &["--version"]),
        r.bridge_nf_call_iptables,
        p.rounds,
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    println!();
    println!("| mode | tool | phase | p50 ms | p90 ms | p99 ms | mean ms |");
    println!("|---|---|---|---:|---:|---:|---:|");
    for (tool, s) in &r.setup {
        for (phase, v) in [
            ("setup", s.setup.clone()),
            ("teardown", s.teardown.clone()),
            ("setup + teardown", s.sums()),
        ] {
            println!(
                "| {} | {} | {phase} | {:.2} | {:.2} | {:.2} | {:.2} |",
                tool.mode(),
                tool.label(),
                percentile(&v, 0.5) * 1e3,
                percentile(&v, 0.9) * 1e3,
                percentile(&v, 0.99) * 1e3,
                mean(&v) * 1e3
            );
        }
    }
    println!();
    println!("{} rounds each.", p.rounds);
    if !r.traffic.is_empty() {
        println!();
        println!(
            "| path | Gbit/s (median of {}) | Gbit/s range | retransmits (median) | RTT p50 µs | RTT p99 µs | RTT mean µs |",
            p.iperf_runs
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for t in &r.traffic {
            let retr: Vec<f64> = t.retransmits.iter().map(|&x| x as f64).collect();
            println!(
                "| {} | {:.2} | {:.2}–{:.2} | {:.0} | {:.1} | {:.1} | {:.1} |",
                t.label,
                percentile(&t.gbits, 0.5),
                percentile(&t.gbits, 0.0),
                percentile(&t.gbits, 1.0),
                percentile(&retr, 0.5),
                percentile(&t.rtt, 0.5) * 1e6,
                percentile(&t.rtt, 0.99) * 1e6,
                mean(&t.rtt) * 1e6
            );
        }
        println!();
        println!(
            "iperf3: one TCP stream, {} s after 1 s omitted; RTT: {} 1-byte TCP round trips per path.",
            p.iperf_secs, p.pings
        );
    }
    println!();
    println!("Rerun: `{RERUN}`");
}
