//! `skiff image ...`: the node's content store (pull, load, list, mount, prune, verify), over
//! the `skiff_images` library.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use skiff_images::platform::Platform;
use skiff_images::progress::{Event, Progress};
use skiff_images::store::{ImageRecord, PrunePolicy, PruneReport};
use skiff_images::{Images, ImagesConfig, PullOptions, PullPolicy, Store};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Pull an image from its registry.
    Pull {
        /// Platform to pull (os/arch[/variant]); default: this machine's.
        #[arg(long)]
        platform: Option<Platform>,
        /// default, always, once or prefer-cached (as ECS_IMAGE_PULL_BEHAVIOR).
        #[arg(long, default_value = "always")]
        policy: PullPolicy,
        /// Image reference, e.g. busybox, localhost:5000/team/app:1.0.
        reference: String,
    },
    /// Load images from an OCI layout directory or a `docker save` tarball.
    Load {
        /// Name for images that carry none (a bare tag is appended).
        #[arg(long)]
        name: Option<String>,
        /// Platform to load from multi-platform images.
        #[arg(long)]
        platform: Option<Platform>,
        /// The directory or tarball.
        path: PathBuf,
    },
    /// List stored images.
    Ls,
    /// Show an image's record and config as JSON.
    Inspect {
        /// Image reference.
        reference: String,
    },
    /// Remove an image and the content only it uses.
    Rm {
        /// Image reference.
        reference: String,
    },
    /// Remove images by cleanup rules, then unreferenced content.
    Prune {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Keep at most N images per repository, most recently used first.
        #[arg(long)]
        keep: Option<usize>,
        /// Remove images unused for longer than this (e.g. 30d, 12h).
        #[arg(long, value_parser = humantime::parse_duration)]
        unused_for: Option<Duration>,
    },
    /// Mount a container root filesystem from an image; prints its path.
    Mount {
        /// Image reference.
        reference: String,
        /// Root filesystem id.
        id: String,
    },
    /// Unmount and delete a root filesystem.
    Unmount {
        /// Root filesystem id.
        id: String,
    },
    /// Re-hash every blob and check every record; non-zero exit on a problem.
    Verify,
}

/// Runs one image command on the store at `root` configured by `config`.
pub fn run(root: &Path, config: &Path, command: ImageCommand) -> anyhow::Result<()> {
    let config = ImagesConfig::load(config)?;
    let images = Images::new(Store::open(root)?, config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match command {
        ImageCommand::Pull {
            platform,
            policy,
            reference,
        } => {
            let (progress, bars) = progress_sink();
            let opts = PullOptions {
                platform,
                policy,
                progress: Some(progress),
            };
            let rec = rt.block_on(images.pull(&reference, &opts));
            bars.finish();
            let rec = rec?;
            println!("{} {} {}", rec.name, rec.manifest_digest, rec.platform);
        }
        ImageCommand::Load {
            name,
            platform,
            path,
        } => {
            let (progress, bars) = progress_sink();
            let opts = PullOptions {
                platform,
                policy: PullPolicy::Always,
                progress: Some(progress),
            };
            let recs = rt.block_on(images.load(&path, name.as_deref(), &opts));
            bars.finish();
            for rec in recs? {
                println!(
                    "loaded {} {} {}",
                    rec.name, rec.manifest_digest, rec.platform
                );
            }
        }
        ImageCommand::Ls => print_list(&images.list()?),
        ImageCommand::Inspect { reference } => {
            let rec = images.find(&reference)?;
            let config = images.config_of(&rec)?;
            let out = serde_json::json!({ "image": rec, "config": config });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ImageCommand::Rm { reference } => {
            let report = images.remove(&reference)?;
            print_report(&report);
        }
        ImageCommand::Prune {
            dry_run,
            keep,
            unused_for,
        } => {
            let report = images.prune(&PrunePolicy {
                keep_per_repository: keep,
                unused_for,
                dry_run,
            })?;
            print_report(&report);
        }
        ImageCommand::Mount { reference, id } => {
            let m = images.create_rootfs(&id, &reference)?;
            println!("{}", m.path.display());
        }
        ImageCommand::Unmount { id } => images.store().remove_rootfs(&id)?,
        ImageCommand::Verify => {
            let problems = images.store().verify()?;
            if !problems.is_empty() {
                for p in &problems {
                    println!("{p}");
                }
                anyhow::bail!(
                    "{} problem(s) in the store at {}",
                    problems.len(),
                    root.display()
                );
            }
            println!("store at {} is consistent", root.display());
        }
    }
    Ok(())
}

fn short(d: &impl std::fmt::Display) -> String {
    let s = d.to_string();
    s.chars().take(19).collect()
}

fn human(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn print_list(recs: &[ImageRecord]) {
    println!(
        "{:<50} {:<20} {:<16} {:>10}  SOURCE",
        "NAME", "DIGEST", "PLATFORM", "SIZE"
    );
    for r in recs {
        println!(
            "{:<50} {:<20} {:<16} {:>10}  {}",
            r.name,
            short(&r.manifest_digest),
            r.platform.to_string(),
            human(r.unpacked_bytes),
            r.source
        );
    }
}

fn print_report(r: &PruneReport) {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    for (name, why) in &r.images {
        println!("{verb} image {name} ({why})");
    }
    println!(
        "{verb} {} blob(s), {} snapshot(s), {}",
        r.blobs.len(),
        r.snapshots.len(),
        human(r.bytes)
    );
}

/// Renders events: bars on a terminal, one plain line per step elsewhere.
struct Bars {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    fn finish(&self) {
        if let Ok(bars) = self.bars.lock() {
            for b in bars.values() {
                b.finish();
            }
        }
    }

    fn on(&self, ev: Event) {
        let Some(multi) = &self.multi else {
            plain(&ev);
            return;
        };
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        let style = ProgressStyle::with_template("{prefix} {bar:30} {bytes}/{total_bytes} {msg}")
            .expect("valid template");
        let mut bar = |d: &skiff_images::digest::Digest, total: u64| {
            bars.entry(d.to_string())
                .or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(total));
                    b.set_style(style.clone());
                    b.set_prefix(short(d));
                    b
                })
                .clone()
        };
        match ev {
            Event::Resolved { layers, .. } => {
                for (d, size) in layers {
                    bar(&d, size).set_message("waiting");
                }
            }
            Event::LayerCached { digest } => bar(&digest, 0).set_message("cached"),
            Event::LayerStarted {
                digest,
                offset,
                size,
            } => {
                let b = bar(&digest, size);
                b.set_position(offset);
                b.set_message(if offset > 0 {
                    "resuming"
                } else {
                    "downloading"
                });
            }
            Event::LayerProgress {
                digest,
                done,
                total,
            } => bar(&digest, total).set_position(done),
            Event::LayerDownloaded { digest } => bar(&digest, 0).set_message("downloaded"),
            Event::LayerUnpacked { digest, fresh } => {
                let b = bar(&digest, 0);
                b.finish_with_message(if fresh { "unpacked" } else { "present" });
            }
            Event::Retrying { .. } => {
                let _ = multi.println(plain_line(&ev).unwrap_or_default());
            }
        }
    }
}

fn plain_line(ev: &Event) -> Option<String> {
    Some(match ev {
        Event::Resolved {
            name,
            digest,
            platform,
            layers,
        } => format!(
            "resolved {name} to {digest} ({platform}, {} layers)",
            layers.len()
        ),
        Event::LayerCached { digest } => format!("layer {} cached", short(digest)),
        Event::LayerStarted {
            digest,
            offset,
            size,
        } if *offset > 0 => {
            format!(
                "layer {} resuming at {} of {}",
                short(digest),
                human(*offset),
                human(*size)
            )
        }
        Event::LayerStarted { digest, size, .. } => {
            format!("layer {} downloading {}", short(digest), human(*size))
        }
        Event::LayerProgress { .. } => return None,
        Event::LayerDownloaded { digest } => format!("layer {} downloaded", short(digest)),
        Event::LayerUnpacked { digest, fresh } => {
            format!(
                "layer {} {}",
                short(digest),
                if *fresh { "unpacked" } else { "present" }
            )
        }
        Event::Retrying {
            what,
            host,
            attempt,
            error,
            delay,
        } => {
            format!("retrying {what} from {host} in {delay:?} (attempt {attempt} failed: {error})")
        }
    })
}

fn plain(ev: &Event) {
    if let Some(line) = plain_line(ev) {
        eprintln!("{line}");
    }
}

fn progress_sink() -> (Progress, std::sync::Arc<Bars>) {
    let bars = std::sync::Arc::new(Bars {
        multi: std::io::stderr().is_terminal().then(MultiProgress::new),
        bars: Mutex::new(HashMap::new()),
    });
    let b = bars.clone();
    (Progress::new(move |ev| b.on(ev)), bars)
}
