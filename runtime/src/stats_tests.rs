use std::fs;

use super::*;

/// Writes `files` (path relative to `root`, content) into a fresh tempdir.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let p = root.path().join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
    root
}

const REL: &str = "/skiff/t1/web";

#[test]
fn v1_reads_each_controller() {
    let root = tree(&[
        ("cpuacct/skiff/t1/web/cpuacct.usage", "2500000000\n"),
        ("cpuacct/skiff/t1/web/cpuacct.usage_user", "2000000000\n"),
        ("cpuacct/skiff/t1/web/cpuacct.usage_sys", "500000000\n"),
        (
            "cpu/skiff/t1/web/cpu.stat",
            "nr_periods 10\nnr_throttled 3\nthrottled_time 4000000\n",
        ),
        ("memory/skiff/t1/web/memory.usage_in_bytes", "10485760\n"),
        (
            "memory/skiff/t1/web/memory.limit_in_bytes",
            "9223372036854771712\n",
        ),
        (
            "memory/skiff/t1/web/memory.max_usage_in_bytes",
            "20971520\n",
        ),
        (
            "memory/skiff/t1/web/memory.stat",
            "cache 4096\ninactive_file 1\ntotal_inactive_file 4194304\n",
        ),
        ("pids/skiff/t1/web/pids.current", "3\n"),
        ("pids/skiff/t1/web/pids.max", "max\n"),
    ]);
    let layout = Layout::detect(root.path());
    assert!(matches!(layout, Layout::V1 { .. }));
    let s = read(&layout, Path::new(REL)).unwrap();
    assert_eq!(
        s.cpu,
        CpuStats {
            usage_ns: Some(2_500_000_000),
            user_ns: Some(2_000_000_000),
            system_ns: Some(500_000_000),
            periods: Some(10),
            throttled_periods: Some(3),
            throttled_ns: Some(4_000_000),
        }
    );
    assert_eq!(
        s.memory,
        MemoryStats {
            usage: Some(10 << 20),
            limit: None,
            max_usage: Some(20 << 20),
            inactive_file: Some(4 << 20),
        }
    );
    assert_eq!(s.memory.working_set(), Some(6 << 20));
    assert_eq!(
        s.pids,
        PidsStats {
            current: Some(3),
            limit: None
        }
    );
}

#[test]
fn v2_reads_one_directory() {
    let root = tree(&[
        ("cgroup.controllers", "cpu memory pids"),
        (
            "skiff/t1/web/cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\nnr_throttled 1\nthrottled_usec 20\n",
        ),
        ("skiff/t1/web/memory.current", "8192\n"),
        ("skiff/t1/web/memory.max", "67108864\n"),
        (
            "skiff/t1/web/memory.stat",
            "anon 4096\ninactive_file 12288\n",
        ),
        ("skiff/t1/web/pids.current", "2\n"),
        ("skiff/t1/web/pids.max", "64\n"),
    ]);
    let layout = Layout::detect(root.path());
    assert!(matches!(layout, Layout::V2 { .. }));
    // Without the leading slash too.
    let s = read(&layout, Path::new("skiff/t1/web")).unwrap();
    assert_eq!(
        s.cpu,
        CpuStats {
            usage_ns: Some(1_500_000),
            user_ns: Some(1_000_000),
            system_ns: Some(500_000),
            periods: Some(4),
            throttled_periods: Some(1),
            throttled_ns: Some(20_000),
        }
    );
    assert_eq!(
        s.memory,
        MemoryStats {
            usage: Some(8192),
            limit: Some(64 << 20),
            max_usage: None, // no memory.peak before Linux 5.19
            inactive_file: Some(12288),
        }
    );
    assert_eq!(s.memory.working_set(), Some(0), "never below zero");
    assert_eq!(
        s.pids,
        PidsStats {
            current: Some(2),
            limit: Some(64)
        }
    );
}

#[test]
fn missing_files_are_none_and_a_missing_cgroup_an_error() {
    // v1 with only the memory controller joined.
    let root = tree(&[("memory/skiff/t1/web/memory.usage_in_bytes", "4096\n")]);
    let layout = Layout::detect(root.path());
    let s = read(&layout, Path::new(REL)).unwrap();
    assert_eq!(s.memory.usage, Some(4096));
    assert_eq!(s.memory.working_set(), Some(4096));
    assert_eq!(s.cpu, CpuStats::default());
    assert_eq!(s.pids, PidsStats::default());
    let err = read(&layout, Path::new("/skiff/t1/gone")).unwrap_err();
    assert!(matches!(err, StatsError::NotFound { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "cgroup skiff/t1/gone not found under {}",
            root.path().display()
        )
    );

    // An empty v2 cgroup directory.
    let root = tree(&[
        ("cgroup.controllers", ""),
        ("skiff/t1/web/cgroup.procs", ""),
    ]);
    let layout = Layout::detect(root.path());
    assert_eq!(
        read(&layout, Path::new(REL)).unwrap(),
        CgroupStats::default()
    );
    assert!(read(&layout, Path::new("/skiff/t2")).is_err());
}

#[test]
fn garbage_names_its_file() {
    let root = tree(&[
        ("cgroup.controllers", ""),
        ("skiff/t1/web/memory.current", "lots\n"),
    ]);
    let err = read(&Layout::detect(root.path()), Path::new(REL)).unwrap_err();
    let StatsError::Parse { path, content } = err else {
        panic!("{err}")
    };
    assert!(path.ends_with("skiff/t1/web/memory.current"));
    assert_eq!(content, "lots");
}

#[test]
fn interface_counters_leave_loopback_out() {
    let text = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0:    5321      41    1    2    0     0          0         0     2120      22    3    4    0     0       0          0
 meta0:      84       1    0    0    0     0          0         0       84       1    0    0    0     0       0          0
";
    let got = parse_net_dev(Path::new("/proc/1/net/dev"), text).unwrap();
    assert_eq!(
        got,
        vec![
            (
                "eth0".to_owned(),
                InterfaceStats {
                    rx_bytes: 5321,
                    rx_packets: 41,
                    rx_errors: 1,
                    rx_dropped: 2,
                    tx_bytes: 2120,
                    tx_packets: 22,
                    tx_errors: 3,
                    tx_dropped: 4,
                }
            ),
            (
                "meta0".to_owned(),
                InterfaceStats {
                    rx_bytes: 84,
                    rx_packets: 1,
                    tx_bytes: 84,
                    tx_packets: 1,
                    ..Default::default()
                }
            ),
        ]
    );
    let err = parse_net_dev(Path::new("/proc/1/net/dev"), "h\nh\neth0: 1 2 x\n").unwrap_err();
    assert!(matches!(err, StatsError::Parse { .. }), "{err}");
    // This process's own namespace reads.
    read_interfaces(std::process::id() as i32).unwrap();
}

#[test]
fn system_cpu_is_the_cpu_line_in_nanoseconds() {
    let text = "cpu  100 2 30 400 5 6 7 8 0 0\ncpu0 50 1 15 200 2 3 3 4 0 0\ncpu1 50 1 15 200 3 3 4 4 0 0\nintr 1 2\nctxt 99\n";
    assert_eq!(
        parse_proc_stat(Path::new("/proc/stat"), text).unwrap(),
        SystemCpu {
            // user..softirq (steal left out, as Docker does), at 100 ticks a second.
            usage_ns: 550 * 10_000_000,
            online_cpus: 2,
        }
    );
    assert!(parse_proc_stat(Path::new("/proc/stat"), "intr 1\n").is_err());
    let here = read_system_cpu().unwrap();
    assert!(here.online_cpus >= 1 && here.usage_ns > 0, "{here:?}");
}

#[test]
fn cpu_percent_is_relative_to_one_core() {
    let at = |ns| CgroupStats {
        cpu: CpuStats {
            usage_ns: Some(ns),
            ..Default::default()
        },
        ..Default::default()
    };
    let second = Duration::from_secs(1);
    assert_eq!(cpu_percent(&at(0), &at(500_000_000), second), Some(50.0));
    assert_eq!(cpu_percent(&at(0), &at(2_000_000_000), second), Some(200.0));
    assert_eq!(cpu_percent(&at(5), &at(1), second), None, "counter reset");
    assert_eq!(cpu_percent(&at(0), &at(1), Duration::ZERO), None);
    assert_eq!(cpu_percent(&CgroupStats::default(), &at(1), second), None);
}

#[test]
fn escaping() {
    assert_eq!(escape(r#"a\b"c"#), r#"a\\b\"c"#);
    assert_eq!(escape("l1\nl2"), r"l1\nl2");
    assert_eq!(escape("plain-ünïcode"), "plain-ünïcode");
}

#[test]
fn renders_the_text_format() {
    let stats = |usage_ns, mem| CgroupStats {
        cpu: CpuStats {
            usage_ns: Some(usage_ns),
            ..Default::default()
        },
        memory: MemoryStats {
            usage: Some(mem),
            limit: Some(1 << 30),
            inactive_file: Some(1024),
            ..Default::default()
        },
        pids: PidsStats {
            current: Some(2),
            limit: None,
        },
    };
    let samples = [
        TaskStats {
            task_id: "t1".into(),
            family: "web\"app".into(),
            revision: 3,
            task: stats(1_500_000_000, 4096),
            containers: vec![
                ("nginx".into(), stats(1_000_000_000, 3072)),
                ("side\\car\n".into(), stats(500_000_000, 1024)),
            ],
        },
        TaskStats {
            task_id: "t2".into(),
            family: "db".into(),
            revision: 1,
            task: stats(0, 0),
            containers: vec![],
        },
    ];
    let text = render(&samples);
    let expected_task_cpu = "\
# HELP skiff_task_cpu_usage_seconds_total Cumulative cpu time consumed of the task
# TYPE skiff_task_cpu_usage_seconds_total counter
skiff_task_cpu_usage_seconds_total{task_id=\"t1\",family=\"web\\\"app\",revision=\"3\"} 1.5
skiff_task_cpu_usage_seconds_total{task_id=\"t2\",family=\"db\",revision=\"1\"} 0
";
    assert!(text.starts_with(expected_task_cpu), "{text}");
    assert!(text.contains(
        "skiff_container_memory_working_set_bytes{task_id=\"t1\",family=\"web\\\"app\",revision=\"3\",container=\"nginx\"} 2048\n"
    ), "{text}");
    assert!(text.contains(
        "skiff_container_cpu_usage_seconds_total{task_id=\"t1\",family=\"web\\\"app\",revision=\"3\",container=\"side\\\\car\\n\"} 0.5\n"
    ), "{text}");
    assert!(text.contains(
        "skiff_task_memory_limit_bytes{task_id=\"t2\",family=\"db\",revision=\"1\"} 1073741824\n"
    ));
    assert!(text.contains("skiff_container_pids{"));
    // HELP and TYPE once per metric, before its samples; none for metrics without a value.
    for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
        assert_eq!(text.matches(&format!("{line}\n")).count(), 1, "{line}");
    }
    assert_eq!(
        text.matches("# TYPE").count(),
        text.matches("# HELP").count()
    );
    assert!(!text.contains("pids_limit"), "no limit, no metric");
    assert!(!text.contains("throttled"));
    // Every sample line is `name{labels} value` with a parseable value.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(
            series.starts_with("skiff_") && series.ends_with('}'),
            "{line}"
        );
        value.parse::<f64>().unwrap();
    }
    assert_eq!(render(&[]), "");
}
