//! Pull benchmark: `skiff image pull` against the reference pair `skopeo copy` + `umoci unpack`,
//! side by side in one run, on a ~200 MB (compressed) five-layer gzip image served by Debian's
//! docker-registry on loopback. The goal it checks: pulling and unpacking an image with Skiff is
//! no slower than doing the same with skopeo and umoci.
//!
//! Run it with the release `skiff` built first: the bench drives the binary next to its own
//! executable's directory (`target/release/`, since bench executables live in
//! `target/release/deps/`), and `cargo bench -p skiff-tests` does not build other packages'
//! binaries:
//!
//! ```text
//! cargo build --release --workspace && cargo bench -p skiff-tests --bench pull
//! ```
//!
//! `BENCH_ROUNDS` (default 3) sets the number of rounds. Each round measures, alternating which
//! tool goes first:
//!
//! - cold: Skiff pulls into a fresh, empty `--root`; the peer copies into a fresh OCI layout
//!   with skopeo and unpacks it into a fresh bundle with umoci (the two summed);
//! - warm (blobs already present): a second `skiff image pull` into the same root; the peer
//!   copies into the same layout again (skopeo skips the blobs it has) and unpacks into a fresh
//!   bundle.
//!
//! Every command runs under GNU time (`/usr/bin/time -f '%e %U %S %M'`) for wall time, user+sys
//! CPU time and peak RSS. `sync` runs (untimed for the command, reported separately) before and
//! after each measured command, so that no command pays for the write-back of another: Skiff
//! makes its content durable itself (fsync, syncfs) while skopeo and umoci leave dirty pages
//! behind, which the "sync after" column shows. The output is a Markdown table with the medians
//! (max for RSS) and the range of wall times, the machine and the command to rerun; each round's
//! figures go to stderr.
//!
//! Every store, layout and bundle is kept until the last measurement and removed only then: on
//! ext4 without a journal (as on the VM of docs/benchmarks.md), allocating an inode skips, one
//! buffer lookup each, the free inodes deleted in the last 60 s (360 s if their inode table
//! block is dirty again), so a tool that runs just after another tool's tree was deleted would
//! pay for it. For the same reason, leave a few minutes between two runs of the benchmark.
//!
//! Needs root (Skiff's unpack chowns files, umoci unpacks as root): when not root it says why and
//! exits 0, or 1 under `SKIFF_REQUIRE_PRIVILEGED=1`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Instant;

use skiff_tests::{
    Auth, Compression, ImageSpec, Layer, Registry, Skiff, bench_may_run, sh, workspace_bin,
    write_layout,
};
use tempfile::TempDir;

const RERUN: &str = "cargo build --release --workspace && cargo bench -p skiff-tests --bench pull";
const LAYERS: usize = 5;
/// Uncompressed file bytes per layer; with 30% random bytes and gzip level 1 on the text, a
/// layer compresses to about 40 MB.
const LAYER_FILE_BYTES: usize = 63 << 20;
/// Share of a layer's file bytes that are incompressible.
const RANDOM_SHARE: f64 = 0.3;
const REPO: &str = "bench/pull";
const TAG: &str = "1.0";

fn main() -> ExitCode {
    if let Err(code) = bench_may_run("pull benchmark") {
        return code;
    }
    let skiff_bin = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join("skiff")));
    if !skiff_bin.as_deref().is_some_and(Path::is_file) {
        eprintln!("pull benchmark: the release skiff binary is missing; run `{RERUN}`");
        return ExitCode::FAILURE;
    }
    let rounds = match std::env::var("BENCH_ROUNDS") {
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("pull benchmark: BENCH_ROUNDS={v:?} is not a positive number");
                return ExitCode::FAILURE;
            }
        },
        Err(_) => 3,
    };
    match run(rounds) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pull benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// xorshift64: fast, deterministic, good enough to defeat gzip.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Text that compresses like source code or configuration: lines of words from a small
/// vocabulary, indented.
fn text(rng: &mut XorShift, vocab: &[Vec<u8>], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let indent = rng.below(4) as usize * 4;
        out.extend(std::iter::repeat_n(b' ', indent));
        for w in 0..3 + rng.below(9) {
            if w > 0 {
                out.push(if rng.below(8) == 0 { b'_' } else { b' ' });
            }
            out.extend_from_slice(&vocab[rng.below(vocab.len() as u64) as usize]);
        }
        out.extend_from_slice(if rng.below(3) == 0 { b";\n" } else { b"\n" });
    }
    out.truncate(len);
    out
}

/// File sizes between 4 KiB and 1 MiB: many small files, some large ones.
fn file_size(rng: &mut XorShift) -> usize {
    let (lo, hi) = match rng.below(10) {
        0..=5 => (4 << 10, 32 << 10),
        6..=8 => (32 << 10, 256 << 10),
        _ => (256 << 10, 1 << 20),
    };
    // Log-uniform within the class.
    (lo as f64 * (hi as f64 / lo as f64).powf(rng.unit())) as usize
}

struct LayerStats {
    files: usize,
    bytes: usize,
}

/// One layer's tar: busybox in the first, then a tree of ~600 files.
fn build_layer(index: usize, rng: &mut XorShift, vocab: &[Vec<u8>]) -> (Vec<u8>, LayerStats) {
    let mut l = if index == 0 {
        Layer::new().busybox()
    } else {
        Layer::new()
    };
    let base = format!("opt/bench/layer{index}");
    l = l
        .dir("opt", 0o755)
        .dir("opt/bench", 0o755)
        .dir(&base, 0o755);
    let dirs = 16;
    for d in 0..dirs {
        l = l.dir(&format!("{base}/d{d:02}"), 0o755);
    }
    let (mut bytes, mut random, mut files) = (0usize, 0usize, 0usize);
    while bytes < LAYER_FILE_BYTES {
        let size = file_size(rng);
        let incompressible = (random as f64) < RANDOM_SHARE * (bytes + size) as f64;
        let (data, ext) = if incompressible {
            let mut b = vec![0u8; size];
            rng.fill(&mut b);
            random += size;
            (b, "bin")
        } else {
            (text(rng, vocab, size), "txt")
        };
        let dir = rng.below(dirs);
        l = l.file(
            &format!("{base}/d{dir:02}/f{files:05}.{ext}"),
            &data,
            if files % 7 == 0 { 0o755 } else { 0o644 },
        );
        bytes += size;
        files += 1;
    }
    (l.finish(), LayerStats { files, bytes })
}

/// What GNU time reports for one command.
#[derive(Clone, Copy, Default)]
struct Sample {
    wall: f64,
    cpu: f64,
    rss_kib: u64,
    /// A `sync` right after: write-back the command left behind.
    sync_after: f64,
}

impl std::ops::Add for Sample {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            wall: self.wall + o.wall,
            cpu: self.cpu + o.cpu,
            rss_kib: self.rss_kib.max(o.rss_kib),
            sync_after: self.sync_after + o.sync_after,
        }
    }
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} s wall, {:.2} s CPU, {:.0} MiB, sync {:.2} s",
            self.wall,
            self.cpu,
            self.rss_kib as f64 / 1024.0,
            self.sync_after
        )
    }
}

fn sync() -> anyhow::Result<f64> {
    let t = Instant::now();
    sh(&mut Command::new("sync"))?;
    Ok(t.elapsed().as_secs_f64())
}

/// Runs `cmd` under `/usr/bin/time`, failing with its output if it fails.
fn timed(cmd: &Command, scratch: &Path) -> anyhow::Result<Sample> {
    let report = scratch.join("time.out");
    let mut t = Command::new("/usr/bin/time");
    t.args(["-f", "%e %U %S %M", "-o"])
        .arg(&report)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        t.current_dir(d);
    }
    sh(&mut t)?;
    let out = fs::read_to_string(&report)?;
    let last = out.lines().last().unwrap_or_default();
    let f: Vec<f64> = last
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("GNU time wrote {out:?}: {e}"))?;
    let [wall, user, sys, rss] = f[..] else {
        anyhow::bail!("GNU time wrote {out:?}");
    };
    Ok(Sample {
        wall,
        cpu: user + sys,
        rss_kib: rss as u64,
        sync_after: 0.0,
    })
}

/// Runs a command under time, then `sync`, recording how long that took.
fn measure(cmd: &Command, scratch: &Path) -> anyhow::Result<Sample> {
    let mut s = timed(cmd, scratch)?;
    s.sync_after = sync()?;
    Ok(s)
}

fn skopeo_copy(reference: &str, layout: &Path) -> Command {
    let mut c = Command::new("skopeo");
    c.args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:{TAG}", layout.display()));
    c
}

fn umoci_unpack(layout: &Path, bundle: &Path) -> Command {
    let mut c = Command::new("umoci");
    c.args(["unpack", "--image"])
        .arg(format!("{}:{TAG}", layout.display()))
        .arg(bundle);
    c
}

type Results = BTreeMap<&'static str, Vec<Sample>>;

const SKIFF_COLD: &str = "1 skiff cold";
const PEER_COLD: &str = "2 peer cold";
const SKOPEO_COLD: &str = "3 skopeo cold";
const UMOCI_COLD: &str = "4 umoci cold";
const SKIFF_WARM: &str = "5 skiff warm";
const PEER_WARM: &str = "6 peer warm";
const SKOPEO_WARM: &str = "7 skopeo warm";
const UMOCI_WARM: &str = "8 umoci warm";

/// Scratch trees, removed only after the last measurement (see the module doc).
#[derive(Default)]
struct Scratch {
    skiffs: Vec<Skiff>,
    peers: Vec<TempDir>,
}

fn round_skiff(
    config: &str,
    reference: &str,
    res: &mut Results,
    keep: &mut Scratch,
) -> anyhow::Result<()> {
    let skiff = Skiff::new(config);
    let pull = skiff.cmd(&["pull", reference]);
    let cold = measure(&pull, skiff.dir.path())?;
    let ls = skiff.ok(&["ls"]);
    anyhow::ensure!(ls.contains(reference), "skiff lists no {reference}: {ls}");
    let warm = measure(&pull, skiff.dir.path())?;
    eprintln!("  skiff: cold {cold}; warm {warm}");
    res.entry(SKIFF_COLD).or_default().push(cold);
    res.entry(SKIFF_WARM).or_default().push(warm);
    keep.skiffs.push(skiff);
    Ok(())
}

fn round_peer(reference: &str, res: &mut Results, keep: &mut Scratch) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("skiff-bench-peer-")
        .tempdir()?;
    let layout = dir.path().join("layout");
    let (bundle1, bundle2) = (dir.path().join("bundle1"), dir.path().join("bundle2"));
    let copy = measure(&skopeo_copy(reference, &layout), dir.path())?;
    let unpack = measure(&umoci_unpack(&layout, &bundle1), dir.path())?;
    anyhow::ensure!(
        bundle1.join("rootfs/bin/busybox").is_file(),
        "umoci unpacked no busybox"
    );
    let copy2 = measure(&skopeo_copy(reference, &layout), dir.path())?;
    let unpack2 = measure(&umoci_unpack(&layout, &bundle2), dir.path())?;
    eprintln!(
        "  peer: cold {} (skopeo {copy}, umoci {unpack}); warm {} (skopeo {copy2}, umoci {unpack2})",
        copy + unpack,
        copy2 + unpack2
    );
    for (k, v) in [
        (PEER_COLD, copy + unpack),
        (SKOPEO_COLD, copy),
        (UMOCI_COLD, unpack),
        (PEER_WARM, copy2 + unpack2),
        (SKOPEO_WARM, copy2),
        (UMOCI_WARM, unpack2),
    ] {
        res.entry(k).or_default().push(v);
    }
    keep.peers.push(dir);
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "?".into())
}

fn run(rounds: usize) -> anyhow::Result<()> {
    // 1. The image.
    let t = Instant::now();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let vocab: Vec<Vec<u8>> = (0..512)
        .map(|_| {
            (0..3 + rng.below(8))
                .map(|_| b'a' + rng.below(26) as u8)
                .collect()
        })
        .collect();
    let mut layers = Vec::new();
    let (mut files, mut bytes) = (0, 0);
    for i in 0..LAYERS {
        let (tar, stats) = build_layer(i, &mut rng, &vocab);
        files += stats.files;
        bytes += stats.bytes;
        layers.push((tar, Compression::Gzip));
    }
    let layout = tempfile::Builder::new()
        .prefix("skiff-bench-layout-")
        .tempdir()?;
    write_layout(
        layout.path(),
        TAG,
        &[ImageSpec {
            arch: "amd64".into(),
            variant: None,
            layers,
        }],
    )?;
    let compressed = layer_sizes(layout.path())?;
    let total: u64 = compressed.iter().sum();
    let reg = Registry::start(Auth::None)?;
    reg.push_layout(layout.path(), TAG, REPO, None)?;
    drop(layout);
    let reference = format!("{}/{REPO}:{TAG}", reg.host());
    let config = format!("[registries.\"{}\"]\ninsecure = true\n", reg.host());
    let image = format!(
        "{LAYERS} gzip layers, {:.1} MB compressed ({}), {files} files + busybox, {:.1} MB of \
         file content ({:.0}% pseudo-random)",
        total as f64 / 1e6,
        compressed
            .iter()
            .map(|s| format!("{:.1}", *s as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(" + "),
        bytes as f64 / 1e6,
        RANDOM_SHARE * 100.0
    );
    eprintln!(
        "built and pushed the image in {:.1} s: {image}",
        t.elapsed().as_secs_f64()
    );

    // 2. Rounds, alternating which tool goes first.
    let mut res = Results::new();
    let mut keep = Scratch::default();
    sync()?;
    for r in 0..rounds {
        eprintln!("round {}/{rounds}", r + 1);
        if r % 2 == 0 {
            round_skiff(&config, &reference, &mut res, &mut keep)?;
            round_peer(&reference, &mut res, &mut keep)?;
        } else {
            round_peer(&reference, &mut res, &mut keep)?;
            round_skiff(&config, &reference, &mut res, &mut keep)?;
        }
    }
    drop(keep);

    // 3. The report.
    let row = |key: &str, scenario: &str, tool: &str| {
        let v = &res[key];
        let walls: Vec<f64> = v.iter().map(|s| s.wall).collect();
        format!(
            "| {scenario} | {tool} | {:.2} | {:.2}–{:.2} | {:.2} | {:.0} | {:.2} |",
            median(walls.clone()),
            walls.iter().copied().fold(f64::INFINITY, f64::min),
            walls.iter().copied().fold(0.0, f64::max),
            median(v.iter().map(|s| s.cpu).collect()),
            v.iter().map(|s| s.rss_kib).max().unwrap_or(0) as f64 / 1024.0,
            median(v.iter().map(|s| s.sync_after).collect()),
        )
    };
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let tmp = std::env::temp_dir();
    let out = [
        format!("Image: {image}."),
        String::new(),
        format!(
            "Rounds: {rounds} (medians of wall and CPU time, max of peak RSS; the range is the \
             fastest and slowest round)."
        ),
        String::new(),
        "| scenario | tool | wall s | wall range s | CPU s (user+sys) | peak RSS MiB | sync after s |"
            .into(),
        "|---|---|---:|---:|---:|---:|---:|".into(),
        row(SKIFF_COLD, "cold", "skiff image pull"),
        row(PEER_COLD, "cold", "skopeo copy + umoci unpack"),
        row(SKOPEO_COLD, "cold", "↳ skopeo copy"),
        row(UMOCI_COLD, "cold", "↳ umoci unpack"),
        row(
            SKIFF_WARM,
            "warm (blobs present)",
            "skiff image pull (again)",
        ),
        row(
            PEER_WARM,
            "warm (blobs present)",
            "skopeo copy (again) + umoci unpack (fresh bundle)",
        ),
        row(SKOPEO_WARM, "warm (blobs present)", "↳ skopeo copy"),
        row(UMOCI_WARM, "warm (blobs present)", "↳ umoci unpack"),
        String::new(),
        format!(
            "Machine: {} CPUs ({cpu}), {:.1} GiB RAM, kernel {}, temp dirs on {} ({}).",
            first_line(&mut Command::new("nproc")),
            mem_gib(),
            first_line(Command::new("uname").arg("-r")),
            tmp.display(),
            first_line(
                Command::new("findmnt")
                    .args(["-no", "FSTYPE", "-T"])
                    .arg(&tmp)
            ),
        ),
        format!(
            "Tools: {}; {}; {}; docker-registry {}.",
            first_line(Command::new(workspace_bin("skiff")).arg("--version")),
            first_line(Command::new("skopeo").arg("--version")),
            first_line(Command::new("umoci").arg("--version")),
            first_line(Command::new("docker-registry").arg("--version"))
                .split_whitespace()
                .nth(2)
                .unwrap_or("?"),
        ),
        format!(
            "Date: {}.",
            first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        ),
        format!("Rerun: `{RERUN}` (BENCH_ROUNDS={rounds})."),
    ];
    println!("{}", out.join("\n"));
    drop(reg);
    Ok(())
}

/// Compressed layer sizes from a layout's manifest.
fn layer_sizes(layout: &Path) -> anyhow::Result<Vec<u64>> {
    let blob = |d: &str| layout.join("blobs/sha256").join(&d[7..]);
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json"))?)?;
    let md = index["manifests"][0]["digest"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no manifest in index.json"))?;
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(blob(md))?)?;
    Ok(manifest["layers"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l["size"].as_u64()).collect())
        .unwrap_or_default())
}

fn mem_gib() -> f64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / (1024.0 * 1024.0)
}
