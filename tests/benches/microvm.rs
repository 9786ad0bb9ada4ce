//! MicroVM tasks: how long a task VM takes to boot to its agent and to its first container
//! running, against QEMU booting the same kernel with a bare initramfs (the floor: an init that
//! only says it runs), and what the VMM costs in memory, in one run.
//!
//! ```text
//! cargo build --release --workspace && cargo bench -p skiff-tests --bench microvm
//! ```
//!
//! - **floor**: `qemu-system-x86_64 -M microvm` with the guest kernel and an initramfs whose
//!   /init is a static busybox shell script writing a line on the serial console and powering
//!   off; timed from the spawn to that line.
//! - **agent**: the same kernel with Skiff's initramfs (`packaging/vm-assets.sh`: skiff-agent as
//!   init, the virtio modules it loads, its port and disk found): `skiff-shim vm` from spawn to
//!   `ready` (the agent answered over virtio-serial).
//! - **task**: a FARGATE task of one busybox `sleep` container through skiffd's API, `POST
//!   /v1/tasks?wait=running`: provisioning (the image's overlay, its ext4 disk by mkfs.ext4 -d),
//!   the VM's boot, the container started in it.
//! - **memory**: with the task running, the VMM's RSS and PSS, and the resident part of its
//!   mapping of guest RAM (`/proc/PID/smaps`): the VMM's overhead is the RSS beyond the guest's
//!   own memory. What the guest counts in use (MemTotal - MemAvailable) is shown beside it.
//!
//! The accelerator is `BENCH_ACCEL` (default `tcg`: this machine's /dev/kvm does not boot
//! stock kernels); under TCG every figure is emulation's. `BENCH_ROUNDS` (default 10) rounds
//! each. Needs root: when not root it says why and exits 0, or 1 under
//! `SKIFF_REQUIRE_PRIVILEGED=1`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use hyper::Method;
use serde_json::{Value, json};
use skiff_runtime::client::Client;
use skiff_runtime::vm;
use skiff_tests::{
    BUSYBOX, Skiffd, bench_main, env_num, percentile, stop_and_remove, workspace_bin,
};

const RERUN: &str =
    "cargo build --release --workspace && cargo bench -p skiff-tests --bench microvm";

fn stats(v: &[f64]) -> String {
    format!(
        "p50 {:.0} ms, p99 {:.0} ms (n = {})",
        percentile(v, 0.5),
        percentile(v, 0.99),
        v.len()
    )
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The guest kernel and Skiff's initramfs.
fn assets(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let out = Command::new(repo().join("packaging/vm-assets.sh"))
        .arg("--agent")
        .arg(workspace_bin("skiff-agent"))
        .arg("--out")
        .arg(dir)
        .output()?;
    ensure!(out.status.success(), "vm-assets.sh: {out:?}");
    Ok((dir.join("vmlinuz"), dir.join("initrd.img")))
}

/// An initramfs whose init prints `FLOOR-INIT` and powers off.
fn bare_initrd(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("bare");
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    std::fs::write(
        root.join("init"),
        "#!/bin/busybox sh\necho FLOOR-INIT > /dev/console\n/bin/busybox poweroff -f\n",
    )?;
    let out = dir.join("bare.img");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "chmod 755 {r}/init && cd {r} && find . | cpio -o -H newc --quiet | gzip -1 > {o}",
            r = root.display(),
            o = out.display()
        ))
        .status()?;
    ensure!(status.success(), "making the bare initramfs");
    Ok(out)
}

/// The node's VM of one vCPU and 256 MiB booting `initrd`.
fn spec(kernel: &Path, initrd: &Path, accel: &str) -> vm::VmSpec {
    vm::VmSpec {
        vmm: "/usr/bin/qemu-system-x86_64".into(),
        kernel: kernel.to_owned(),
        initrd: initrd.to_owned(),
        accel: if accel == "kvm" {
            vm::Resolved::Kvm
        } else {
            vm::Resolved::Tcg {
                tsc_khz: vm::tsc_khz(),
            }
        },
        cpus: 1,
        memory_mib: 256,
        disks: Vec::new(),
        boot_timeout_ms: 120_000,
        network: None,
        shares: Vec::new(),
        virtiofsd: PathBuf::new(),
    }
}

/// Spawn to `FLOOR-INIT` on the console, ms: the same machine with a bare initramfs.
fn floor(kernel: &Path, initrd: &Path, accel: &str) -> Result<f64> {
    let t0 = Instant::now();
    let mut q = vm::Qemu::machine(&spec(kernel, initrd, accel))
        .args(["-serial", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut ms = None;
    for line in BufReader::new(q.stdout.take().context("stdout")?).lines() {
        if line?.contains("FLOOR-INIT") {
            ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
            break;
        }
    }
    q.wait()?;
    ms.context("the bare VM never reached its init")
}

/// `skiff-shim vm` from spawn to `ready`, ms.
fn agent(kernel: &Path, initrd: &Path, accel: &str, dir: &Path) -> Result<f64> {
    let vm = dir.join("vm");
    std::fs::create_dir_all(&vm)?;
    let mut spec = spec(kernel, initrd, accel);
    spec.disks = vec![("c0".into(), vm.join("c0.ext4"))];
    std::fs::write(&spec.disks[0].1, vec![0u8; 1 << 20])?;
    std::fs::write(vm.join("spec.json"), serde_json::to_vec(&spec)?)?;
    let t0 = Instant::now();
    let mut shim = Command::new(workspace_bin("skiff-shim"))
        .args(["vm", "--dir"])
        .arg(&vm)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(shim.stdout.take().context("stdout")?).read_line(&mut line)?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    ensure!(line.starts_with("ready "), "skiff-shim vm: {line:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    shim.wait()?;
    Ok(ms)
}

fn kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The resident part (kB) of the VMM's mapping of guest RAM: its one mapping of `size_kib`.
fn guest_ram_rss(pid: i64, size_kib: u64) -> Result<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut in_ram = false;
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Size:") {
            in_ram = v.trim().trim_end_matches(" kB").parse::<u64>() == Ok(size_kib);
        } else if in_ram && let Some(v) = line.strip_prefix("Rss:") {
            return Ok(v.trim().trim_end_matches(" kB").parse()?);
        }
    }
    anyhow::bail!("no mapping of {size_kib} kB in /proc/{pid}/smaps")
}

fn run() -> Result<()> {
    let rounds = env_num("BENCH_ROUNDS", 10)?;
    let accel = std::env::var("BENCH_ACCEL").unwrap_or_else(|_| "tcg".into());
    let dir = tempfile::tempdir()?;
    let (kernel, initrd) = assets(dir.path())?;
    let bare = bare_initrd(dir.path())?;
    let node = Skiffd::start(&format!(
        "[vm]\nkernel = {kernel:?}\ninitrd = {initrd:?}\naccel = {accel:?}\nboot_timeout = \"120s\"\n[network.awsvpc]\nmode = \"routed\"\nsubnet = \"10.251.0.0/24\"\n"
    ));
    let rt = tokio::runtime::Runtime::new()?;
    let client = Client::new(&node.socket());
    let def = |mode: &str| {
        Bytes::from(
            json!({"family": "bench", "requiresCompatibilities": ["FARGATE"], "networkMode": mode,
                "cpu": "1024", "memory": "256", "containerDefinitions": [{"name": "app", "image": BUSYBOX,
                "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]}]})
            .to_string(),
        )
    };
    let (none, awsvpc) = (def("none"), def("awsvpc"));
    let (mut floors, mut agents, mut tasks, mut networked) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut memory = String::new();
    for i in 0..rounds {
        floors.push(floor(&kernel, &bare, &accel)?);
        agents.push(agent(&kernel, &initrd, &accel, dir.path())?);
        let t0 = Instant::now();
        let rec: Value =
            rt.block_on(client.call(Method::POST, "/v1/tasks?wait=running", none.clone()))?;
        tasks.push(t0.elapsed().as_secs_f64() * 1000.0);
        ensure!(rec["lastStatus"] == "RUNNING", "{rec}");
        let id = rec["taskId"].as_str().context("task id")?.to_owned();
        if i == 0 {
            let vmm = rec["vm"]["vmmPid"].as_i64().context("the VMM's pid")?;
            let status = std::fs::read_to_string(format!("/proc/{vmm}/status"))?;
            let rollup = std::fs::read_to_string(format!("/proc/{vmm}/smaps_rollup"))?;
            let meminfo = String::from_utf8(
                node.cmd(&["exec", &id, "app", "--", "cat", "/proc/meminfo"])
                    .output()?
                    .stdout,
            )?;
            let used = kib(&meminfo, "MemTotal:") - kib(&meminfo, "MemAvailable:");
            let rss = kib(&status, "VmRSS:");
            let guest = guest_ram_rss(vmm, 256 << 10)?;
            memory = format!(
                "VM of 256 MiB: VMM RSS {} MiB (PSS {} MiB), of which guest RAM {} MiB (the guest counts {} MiB in use, the rest its page cache); VMM overhead {} MiB",
                rss >> 10,
                kib(&rollup, "Pss:") >> 10,
                guest >> 10,
                used >> 10,
                rss.saturating_sub(guest) >> 10
            );
        }
        stop_and_remove(&rt, &client, &id)?;
        // The same with the task's own address: netd's namespace, the tap, the guest's eth0.
        let t0 = Instant::now();
        let rec: Value =
            rt.block_on(client.call(Method::POST, "/v1/tasks?wait=running", awsvpc.clone()))?;
        networked.push(t0.elapsed().as_secs_f64() * 1000.0);
        ensure!(rec["lastStatus"] == "RUNNING", "{rec}");
        stop_and_remove(&rt, &client, rec["taskId"].as_str().context("task id")?)?;
    }
    println!("accelerator: {accel}");
    println!("floor, QEMU to a bare init:        {}", stats(&floors));
    println!("skiff-shim vm to the agent ready:  {}", stats(&agents));
    println!("FARGATE task to container running: {}", stats(&tasks));
    println!("the same, networkMode awsvpc:      {}", stats(&networked));
    println!("{memory}");
    println!("rerun: {RERUN}");
    Ok(())
}

fn main() -> ExitCode {
    bench_main("the microVM benchmark", run)
}
