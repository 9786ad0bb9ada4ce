//! Stats of a real task cgroup on this kernel: a busy process moved into a container cgroup of
//! a task is seen by `skiff_runtime::stats` in both the container's and the task's figures.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_runtime::cgroups::{CGROUP_ROOT, Layout, TaskCgroup, TaskLimits};
use skiff_runtime::stats::{cpu_percent, read};
use skiff_tests::privileged;

/// The `cgroup.procs` files a process joins to be in cgroup `rel` for cpu, memory and pids.
fn procs_files(layout: &Layout, rel: &Path) -> Vec<PathBuf> {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    match layout {
        Layout::V2 { root } => vec![root.join(rel).join("cgroup.procs")],
        Layout::V1 { root } => ["cpu", "cpuacct", "memory", "pids"]
            .iter()
            .map(|c| root.join(c).join(rel).join("cgroup.procs"))
            .collect(),
    }
}

#[test]
fn a_busy_process_shows_in_container_and_task_stats() {
    if !privileged("a_busy_process_shows_in_container_and_task_stats") {
        return;
    }
    let layout = Layout::detect(Path::new(CGROUP_ROOT));
    let limits = TaskLimits {
        memory_bytes: Some(256 << 20),
        cpu_units: None,
        pids: Some(100),
    };
    let task = TaskCgroup::create(layout.clone(), "skiff-e2e-stats", limits).unwrap();
    let container = task.container_path("c");
    let files = procs_files(&layout, &container);
    for f in &files {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    }
    // Waits to be moved, then allocates ~4 MB (charged to its new memcg) and spins.
    let mut child = Command::new("/bin/sh")
        .args([
            "-c",
            "read go; x=$(head -c 4000000 /dev/zero | tr '\\0' a); while :; do :; done",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let outcome = std::panic::catch_unwind(|| {
        for f in &files {
            std::fs::write(f, child.id().to_string()).unwrap();
        }
        writeln!(child.stdin.as_ref().unwrap(), "go").unwrap();
        let first = read(&layout, &container).unwrap();
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        // Polled rather than timed: the allocation and the spinning are scheduled, not instant.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (later, task_stats) = loop {
            let later = read(&layout, &container).unwrap();
            let task_stats = read(&layout, Path::new("/skiff/skiff-e2e-stats")).unwrap();
            let grown = later.cpu.usage_ns > first.cpu.usage_ns
                && later.memory.usage.unwrap_or(0) > 1 << 20;
            if grown || Instant::now() > deadline {
                break (later, task_stats);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            later.cpu.usage_ns.unwrap() > first.cpu.usage_ns.unwrap(),
            "{first:?} -> {later:?}"
        );
        assert!(cpu_percent(&first, &later, started.elapsed()).unwrap() > 0.0);
        assert!(later.memory.usage.unwrap() > 0, "{later:?}");
        assert!(later.memory.working_set().unwrap() > 0, "{later:?}");
        assert!(later.pids.current.unwrap() >= 1, "{later:?}");
        // The task's figures include its container's, and carry its limits.
        assert!(
            task_stats.cpu.usage_ns >= later.cpu.usage_ns,
            "{task_stats:?}"
        );
        assert!(task_stats.pids.current >= later.pids.current);
        assert_eq!(task_stats.memory.limit, Some(256 << 20));
        assert_eq!(task_stats.pids.limit, Some(100));
    });
    child.kill().unwrap();
    child.wait().unwrap();
    task.remove().unwrap();
    for f in &files {
        let task_dir = f.parent().unwrap().parent().unwrap();
        assert!(!task_dir.exists(), "{} removed", task_dir.display());
        // Skiff's parent cgroup too, once no other test's task is in it.
        let _ = std::fs::remove_dir(task_dir.parent().unwrap());
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
