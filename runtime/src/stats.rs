//! Resource usage of task and container cgroups, read from cgroupfs, and its Prometheus text
//! exposition (format 0.0.4) for the node's `/metrics` and `skiff stats`.
//!
//! The kernel already accounts everything a task uses in its cgroups, hierarchically (a task's
//! figures include its containers'), so stats are plain reads of controller files: no sampling
//! thread, nothing kept between reads. `skiff stats` derives a cpu percentage from two reads
//! ([`cpu_percent`]); Prometheus derives rates itself from the counters.
//!
//! Both cgroup layouts are read (see [`crate::cgroups`]): v1 (`cpuacct.usage`, `cpu.stat`,
//! `memory.usage_in_bytes`, ... each under its controller's hierarchy) and v2 (`cpu.stat`,
//! `memory.current`, ... in one directory). The working set is computed as docker stats and
//! cAdvisor do: usage minus inactive file cache, the memory the kernel cannot simply drop.
//!
//! A file a kernel or a controller does not provide (no `memory.peak` before Linux 5.19, a v1
//! controller not mounted, or not joined by this cgroup) leaves its field `None`; only a cgroup
//! that exists in no hierarchy is an error. Unlimited limits (`max`, or v1's page-rounded
//! `i64::MAX`) are `None` too.
//!
//! Two figures do not come from cgroups, for the Docker-shaped stats of the task metadata
//! endpoint: a namespace's interface counters ([`read_interfaces`], `/proc/<pid>/net/dev`, which
//! shows the namespace of that process whichever namespace skiffd is in; `/sys/class/net` would
//! show skiffd's own) and the node's cpu time ([`read_system_cpu`], `/proc/stat`).

use std::fmt::Write as _;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cgroups::Layout;

/// Errors reading cgroup statistics.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The cgroup exists in none of the hierarchies.
    #[error("cgroup {rel} not found under {root}")]
    NotFound {
        /// The cgroup, relative to the hierarchy roots.
        rel: PathBuf,
        /// The cgroup mount (v2) or the directory of the v1 controller mounts.
        root: PathBuf,
    },
    /// A controller file could not be read.
    #[error("read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A controller file held something other than the kernel's format.
    #[error("unexpected content {content:?} in {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held (the offending line).
        content: String,
    },
}

/// CPU time of a cgroup, nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// Total cpu time consumed.
    pub usage_ns: Option<u64>,
    /// Of which in user mode.
    pub user_ns: Option<u64>,
    /// Of which in kernel mode.
    pub system_ns: Option<u64>,
    /// CFS enforcement periods elapsed (only with a quota).
    pub periods: Option<u64>,
    /// Periods in which the quota was exhausted.
    pub throttled_periods: Option<u64>,
    /// Time spent throttled.
    pub throttled_ns: Option<u64>,
}

/// Memory of a cgroup, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// Current usage, page cache included.
    pub usage: Option<u64>,
    /// Hard limit; `None` when unlimited.
    pub limit: Option<u64>,
    /// Highest usage recorded.
    pub max_usage: Option<u64>,
    /// Inactive file cache (reclaimable without writing anything out).
    pub inactive_file: Option<u64>,
}

impl MemoryStats {
    /// Usage minus inactive file cache, as docker stats reports and the kubelet evicts on.
    pub fn working_set(&self) -> Option<u64> {
        self.usage
            .map(|u| u.saturating_sub(self.inactive_file.unwrap_or(0)))
    }
}

/// Processes of a cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PidsStats {
    /// Tasks (threads included) in the cgroup and its descendants.
    pub current: Option<u64>,
    /// Limit; `None` when unlimited.
    pub limit: Option<u64>,
}

/// Everything read from one cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CgroupStats {
    /// CPU time.
    pub cpu: CpuStats,
    /// Memory.
    pub memory: MemoryStats,
    /// Processes.
    pub pids: PidsStats,
}

/// v1 writes "no limit" as the largest page-aligned `i64`; anything this large is unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

/// Reads the stats of the cgroup `rel` (relative to the hierarchy roots, with or without a
/// leading `/`, as [`crate::cgroups::TaskCgroup::container_path`] gives it).
///
/// ```no_run
/// use std::path::Path;
/// use skiff_runtime::cgroups::{CGROUP_ROOT, Layout};
///
/// let layout = Layout::detect(Path::new(CGROUP_ROOT));
/// let stats = skiff_runtime::stats::read(&layout, Path::new("/skiff/task-1/web"))?;
/// println!("{:?} bytes", stats.memory.working_set());
/// # Ok::<(), skiff_runtime::stats::StatsError>(())
/// ```
pub fn read(layout: &Layout, rel: &Path) -> Result<CgroupStats, StatsError> {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    match layout {
        Layout::V2 { root } => {
            let dir = root.join(rel);
            if !dir.is_dir() {
                return Err(not_found(rel, root));
            }
            read_v2(&dir)
        }
        Layout::V1 { root } => {
            let dir = |ctrl: &str| root.join(ctrl).join(rel);
            let joined = ["cpuacct", "cpu", "memory", "pids"]
                .iter()
                .any(|c| dir(c).is_dir());
            if !joined {
                return Err(not_found(rel, root));
            }
            read_v1(&dir("cpuacct"), &dir("cpu"), &dir("memory"), &dir("pids"))
        }
    }
}

fn not_found(rel: &Path, root: &Path) -> StatsError {
    StatsError::NotFound {
        rel: rel.to_owned(),
        root: root.to_owned(),
    }
}

fn read_v1(
    cpuacct: &Path,
    cpu: &Path,
    memory: &Path,
    pids: &Path,
) -> Result<CgroupStats, StatsError> {
    let cpu_stat = keyed(&cpu.join("cpu.stat"))?;
    let mem_stat = keyed(&memory.join("memory.stat"))?;
    Ok(CgroupStats {
        cpu: CpuStats {
            usage_ns: number(&cpuacct.join("cpuacct.usage"))?,
            user_ns: number(&cpuacct.join("cpuacct.usage_user"))?,
            system_ns: number(&cpuacct.join("cpuacct.usage_sys"))?,
            periods: cpu_stat.get("nr_periods"),
            throttled_periods: cpu_stat.get("nr_throttled"),
            throttled_ns: cpu_stat.get("throttled_time"),
        },
        memory: MemoryStats {
            usage: number(&memory.join("memory.usage_in_bytes"))?,
            limit: number(&memory.join("memory.limit_in_bytes"))?.filter(|&l| l < V1_UNLIMITED),
            max_usage: number(&memory.join("memory.max_usage_in_bytes"))?,
            inactive_file: mem_stat.get("total_inactive_file"),
        },
        pids: PidsStats {
            current: number(&pids.join("pids.current"))?,
            limit: number(&pids.join("pids.max"))?,
        },
    })
}

fn read_v2(dir: &Path) -> Result<CgroupStats, StatsError> {
    let cpu_stat = keyed(&dir.join("cpu.stat"))?;
    let us = |key| cpu_stat.get(key).map(|v| v.saturating_mul(1000));
    let mem_stat = keyed(&dir.join("memory.stat"))?;
    Ok(CgroupStats {
        cpu: CpuStats {
            usage_ns: us("usage_usec"),
            user_ns: us("user_usec"),
            system_ns: us("system_usec"),
            periods: cpu_stat.get("nr_periods"),
            throttled_periods: cpu_stat.get("nr_throttled"),
            throttled_ns: us("throttled_usec"),
        },
        memory: MemoryStats {
            usage: number(&dir.join("memory.current"))?,
            limit: number(&dir.join("memory.max"))?,
            max_usage: number(&dir.join("memory.peak"))?,
            inactive_file: mem_stat.get("inactive_file"),
        },
        pids: PidsStats {
            current: number(&dir.join("pids.current"))?,
            limit: number(&dir.join("pids.max"))?,
        },
    })
}

/// A controller file's content; `None` when the controller does not provide it.
fn content(path: &Path) -> Result<Option<String>, StatsError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        // ENODEV: a cgroup removed between the existence check and the read.
        Err(e)
            if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(nix::libc::ENODEV) =>
        {
            Ok(None)
        }
        Err(source) => Err(StatsError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn parse_error(path: &Path, content: &str) -> StatsError {
    StatsError::Parse {
        path: path.to_owned(),
        content: content.to_owned(),
    }
}

/// A single-number file; `max` (no limit) is `None`.
fn number(path: &Path) -> Result<Option<u64>, StatsError> {
    let Some(s) = content(path)? else {
        return Ok(None);
    };
    match s.trim() {
        "max" => Ok(None),
        n => n.parse().map(Some).map_err(|_| parse_error(path, n)),
    }
}

/// The `key value` lines of a flat-keyed file (`cpu.stat`, `memory.stat`).
#[derive(Default)]
struct Keyed(Vec<(String, u64)>);

impl Keyed {
    fn get(&self, key: &str) -> Option<u64> {
        self.0.iter().find(|(k, _)| k == key).map(|&(_, v)| v)
    }
}

fn keyed(path: &Path) -> Result<Keyed, StatsError> {
    let Some(s) = content(path)? else {
        return Ok(Keyed::default());
    };
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split_once(' ')
                .and_then(|(k, v)| Some((k.to_owned(), v.trim().parse().ok()?)))
                .ok_or_else(|| parse_error(path, l))
        })
        .collect::<Result<_, _>>()
        .map(Keyed)
}

/// Counters of one network interface (serialised with Docker's stats names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct InterfaceStats {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Packets dropped on sending.
    pub tx_dropped: u64,
}

/// The interfaces of process `pid`'s network namespace but loopback, with their counters, in
/// the kernel's order.
pub fn read_interfaces(pid: i32) -> Result<Vec<(String, InterfaceStats)>, StatsError> {
    let path = PathBuf::from(format!("/proc/{pid}/net/dev"));
    let text = fs::read_to_string(&path).map_err(|source| StatsError::Io {
        path: path.clone(),
        source,
    })?;
    parse_net_dev(&path, &text)
}

/// `/proc/net/dev`: two header lines, then `name: rx_bytes rx_packets rx_errs rx_drop fifo frame
/// compressed multicast tx_bytes tx_packets tx_errs tx_drop ...` per interface.
fn parse_net_dev(path: &Path, text: &str) -> Result<Vec<(String, InterfaceStats)>, StatsError> {
    let mut out = Vec::new();
    for line in text.lines().skip(2).filter(|l| !l.trim().is_empty()) {
        let (name, counters) = line
            .split_once(':')
            .ok_or_else(|| parse_error(path, line))?;
        let n: Vec<u64> = counters
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| parse_error(path, line))?;
        if n.len() < 12 {
            return Err(parse_error(path, line));
        }
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        out.push((
            name.to_owned(),
            InterfaceStats {
                rx_bytes: n[0],
                rx_packets: n[1],
                rx_errors: n[2],
                rx_dropped: n[3],
                tx_bytes: n[8],
                tx_packets: n[9],
                tx_errors: n[10],
                tx_dropped: n[11],
            },
        ));
    }
    Ok(out)
}

/// The node's cpu time as Docker's stats report it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemCpu {
    /// Time of all cpus since boot (user, nice, system, idle, iowait, irq, softirq), ns: the
    /// denominator of a container's cpu share between two reads.
    pub usage_ns: u64,
    /// CPUs online.
    pub online_cpus: u32,
}

/// `/proc/stat` counts in USER_HZ, which Linux fixes at 100 for userspace on every
/// architecture (Docker assumes the same).
const NS_PER_USER_HZ_TICK: u64 = 10_000_000;

/// Reads the node's cpu time from `/proc/stat`.
pub fn read_system_cpu() -> Result<SystemCpu, StatsError> {
    let path = Path::new("/proc/stat");
    let text = fs::read_to_string(path).map_err(|source| StatsError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_proc_stat(path, &text)
}

fn parse_proc_stat(path: &Path, text: &str) -> Result<SystemCpu, StatsError> {
    let mut cpu = None;
    let mut online_cpus = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("cpu") => {
                let ticks: Vec<u64> = fields
                    .take(7)
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|_| parse_error(path, line))?;
                if ticks.len() < 7 {
                    return Err(parse_error(path, line));
                }
                cpu = Some(
                    ticks
                        .iter()
                        .sum::<u64>()
                        .saturating_mul(NS_PER_USER_HZ_TICK),
                );
            }
            Some(f) if f.starts_with("cpu") => online_cpus += 1,
            _ => {}
        }
    }
    let usage_ns = cpu.ok_or_else(|| parse_error(path, "(no cpu line)"))?;
    Ok(SystemCpu {
        usage_ns,
        online_cpus,
    })
}

/// CPU use between two reads of the same cgroup `elapsed` apart, in percent of one core (as
/// `docker stats`: 200 is two cores busy). `None` when usage is unknown, the counter went back
/// (the cgroup was recreated) or no time passed.
pub fn cpu_percent(prev: &CgroupStats, cur: &CgroupStats, elapsed: Duration) -> Option<f64> {
    let used = cur.cpu.usage_ns?.checked_sub(prev.cpu.usage_ns?)?;
    let elapsed = elapsed.as_nanos();
    (elapsed > 0).then(|| used as f64 * 100.0 / elapsed as f64)
}

/// One task's sample for [`render`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStats {
    /// The task id.
    pub task_id: String,
    /// Its task definition's family.
    pub family: String,
    /// And revision.
    pub revision: u32,
    /// The task cgroup's stats (its containers included).
    pub task: CgroupStats,
    /// Each container's name and stats.
    pub containers: Vec<(String, CgroupStats)>,
}

/// A metric exposed for tasks (`skiff_task_<name>`) and containers (`skiff_container_<name>`).
struct Metric {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    value: fn(&CgroupStats) -> Option<f64>,
}

fn seconds(ns: Option<u64>) -> Option<f64> {
    ns.map(|n| n as f64 / 1e9)
}

fn float(v: Option<u64>) -> Option<f64> {
    v.map(|n| n as f64)
}

const METRICS: &[Metric] = &[
    Metric {
        name: "cpu_usage_seconds_total",
        help: "Cumulative cpu time consumed",
        kind: "counter",
        value: |s| seconds(s.cpu.usage_ns),
    },
    Metric {
        name: "cpu_user_seconds_total",
        help: "Cumulative cpu time consumed in user mode",
        kind: "counter",
        value: |s| seconds(s.cpu.user_ns),
    },
    Metric {
        name: "cpu_system_seconds_total",
        help: "Cumulative cpu time consumed in kernel mode",
        kind: "counter",
        value: |s| seconds(s.cpu.system_ns),
    },
    Metric {
        name: "cpu_cfs_periods_total",
        help: "CFS enforcement periods elapsed",
        kind: "counter",
        value: |s| float(s.cpu.periods),
    },
    Metric {
        name: "cpu_cfs_throttled_periods_total",
        help: "CFS periods in which the cpu quota was exhausted",
        kind: "counter",
        value: |s| float(s.cpu.throttled_periods),
    },
    Metric {
        name: "cpu_cfs_throttled_seconds_total",
        help: "Cumulative time throttled by the cpu quota",
        kind: "counter",
        value: |s| seconds(s.cpu.throttled_ns),
    },
    Metric {
        name: "memory_usage_bytes",
        help: "Memory usage, page cache included",
        kind: "gauge",
        value: |s| float(s.memory.usage),
    },
    Metric {
        name: "memory_working_set_bytes",
        help: "Memory usage minus inactive file cache",
        kind: "gauge",
        value: |s| float(s.memory.working_set()),
    },
    Metric {
        name: "memory_limit_bytes",
        help: "Hard memory limit (absent when unlimited)",
        kind: "gauge",
        value: |s| float(s.memory.limit),
    },
    Metric {
        name: "memory_max_usage_bytes",
        help: "Highest memory usage recorded",
        kind: "gauge",
        value: |s| float(s.memory.max_usage),
    },
    Metric {
        name: "pids",
        help: "Number of processes and threads",
        kind: "gauge",
        value: |s| float(s.pids.current),
    },
    Metric {
        name: "pids_limit",
        help: "Maximum number of processes and threads (absent when unlimited)",
        kind: "gauge",
        value: |s| float(s.pids.limit),
    },
];

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Renders `samples` in the Prometheus text exposition format 0.0.4: every metric once as
/// `skiff_task_*` (labels `task_id`, `family`, `revision`) and once as `skiff_container_*` (the
/// same and `container`), each with its HELP and TYPE lines; a metric without any value (a
/// controller missing everywhere, or no limit set) is left out.
pub fn render(samples: &[TaskStats]) -> String {
    let mut out = String::new();
    for scope in ["task", "container"] {
        for m in METRICS {
            let mut lines = String::new();
            for t in samples {
                let labels = format!(
                    "task_id=\"{}\",family=\"{}\",revision=\"{}\"",
                    escape(&t.task_id),
                    escape(&t.family),
                    t.revision
                );
                let series: Vec<(String, &CgroupStats)> = if scope == "task" {
                    vec![(labels, &t.task)]
                } else {
                    t.containers
                        .iter()
                        .map(|(name, s)| (format!("{labels},container=\"{}\"", escape(name)), s))
                        .collect()
                };
                for (labels, stats) in series {
                    if let Some(v) = (m.value)(stats) {
                        let _ = writeln!(lines, "skiff_{scope}_{}{{{labels}}} {v}", m.name);
                    }
                }
            }
            if !lines.is_empty() {
                let name = format!("skiff_{scope}_{}", m.name);
                let _ = writeln!(out, "# HELP {name} {} of the {scope}", m.help);
                let _ = writeln!(out, "# TYPE {name} {}", m.kind);
                out.push_str(&lines);
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "stats_tests.rs"]
mod tests;
