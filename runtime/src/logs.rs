//! Container logs: Docker's `json-file` format (one JSON object per line: `log`, `stream`,
//! `time`), so that existing tooling reads them, rotated by size, and readable while written.
//!
//! The shim owns the writer: it reads the container's stdout and stderr pipes and appends each
//! line with the time it arrived and its stream. A line without a newline is flushed as a
//! partial line once 16 KiB have accumulated (Docker does the same), so a program that never
//! writes a newline cannot make the shim grow without bound. Rotation renames `container.log`
//! to `container.log.1` (shifting older files up to `max_files - 1`) when the next line would
//! pass `max_size`; readers follow by inode and finish the old file before switching, so a
//! rotation while following loses nothing, unless two rotations happen within one poll (100 ms):
//! the file in between is then skipped, as with Docker's follow.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The current log file's name.
pub const LOG_FILE: &str = "container.log";
const MAX_PARTIAL: usize = 16 * 1024;

/// Log errors.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}")]
pub struct LogError {
    op: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

fn err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LogError {
    let path = path.to_owned();
    move |source| LogError { op, path, source }
}

/// Which output a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One log entry, as Docker's json-file writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The text, with its newline unless it was a partial line.
    pub log: String,
    /// stdout or stderr.
    pub stream: Stream,
    /// RFC 3339 UTC with nanoseconds.
    pub time: String,
}

/// Rotation settings (`logConfiguration.options` `max-size` and `max-file`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Bytes before rotating.
    pub max_size: u64,
    /// Files kept, the current one included.
    pub max_files: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            max_size: 10 << 20,
            max_files: 3,
        }
    }
}

impl Rotation {
    /// From Docker's options: `max-size` like `10m`, `512k`, `1g`; `max-file` a count.
    pub fn from_options(max_size: Option<&str>, max_file: Option<&str>) -> Option<Self> {
        let d = Self::default();
        let size = match max_size {
            None => d.max_size,
            Some(s) => {
                let s = s.trim().to_ascii_lowercase();
                let (num, mult) = match s.chars().last()? {
                    'k' => (&s[..s.len() - 1], 1u64 << 10),
                    'm' => (&s[..s.len() - 1], 1 << 20),
                    'g' => (&s[..s.len() - 1], 1 << 30),
                    _ => (&s[..], 1),
                };
                num.parse::<u64>()
                    .ok()?
                    .checked_mul(mult)
                    .filter(|v| *v > 0)?
            }
        };
        let files = match max_file {
            None => d.max_files,
            Some(f) => f.trim().parse().ok().filter(|v| *v > 0)?,
        };
        Some(Self {
            max_size: size,
            max_files: files,
        })
    }
}

/// Appends container output to a rotated json-file log.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    rotation: Rotation,
    file: File,
    size: u64,
    partial: [Vec<u8>; 2],
}

impl LogWriter {
    /// Opens (appending) the log in `dir`.
    pub fn open(dir: &Path, rotation: Rotation) -> Result<Self, LogError> {
        fs::create_dir_all(dir).map_err(err("create", dir))?;
        let path = dir.join(LOG_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err("open", &path))?;
        let size = file.metadata().map_err(err("stat", &path))?.len();
        Ok(Self {
            dir: dir.to_owned(),
            rotation,
            file,
            size,
            partial: [Vec::new(), Vec::new()],
        })
    }

    /// Adds bytes read from `stream`; complete lines are written, the rest kept for later.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> Result<(), LogError> {
        let idx = stream as usize;
        self.partial[idx].extend_from_slice(data);
        while let Some(nl) = self.partial[idx].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial[idx].drain(..=nl).collect();
            self.entry(stream, &line)?;
        }
        if self.partial[idx].len() >= MAX_PARTIAL {
            let line = std::mem::take(&mut self.partial[idx]);
            self.entry(stream, &line)?;
        }
        Ok(())
    }

    /// Writes what is left of unterminated lines (the streams have closed).
    pub fn flush(&mut self) -> Result<(), LogError> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(&mut self.partial[stream as usize]);
            if !line.is_empty() {
                self.entry(stream, &line)?;
            }
        }
        Ok(())
    }

    fn entry(&mut self, stream: Stream, line: &[u8]) -> Result<(), LogError> {
        let entry = LogLine {
            log: String::from_utf8_lossy(line).into_owned(),
            stream,
            time: rfc3339(SystemTime::now()),
        };
        let mut json = serde_json::to_vec(&entry).expect("log lines serialize");
        json.push(b'\n');
        if self.size > 0 && self.size + json.len() as u64 > self.rotation.max_size {
            self.rotate()?;
        }
        let path = self.dir.join(LOG_FILE);
        self.file.write_all(&json).map_err(err("write", &path))?;
        self.size += json.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        let name = |i: u32| {
            if i == 0 {
                self.dir.join(LOG_FILE)
            } else {
                self.dir.join(format!("{LOG_FILE}.{i}"))
            }
        };
        let keep = self.rotation.max_files.saturating_sub(1);
        if keep == 0 {
            let path = name(0);
            self.file.set_len(0).map_err(err("truncate", &path))?;
            self.size = 0;
            return Ok(());
        }
        for i in (0..keep).rev() {
            let from = name(i);
            if from.exists() {
                fs::rename(&from, name(i + 1)).map_err(err("rotate", &from))?;
            }
        }
        let path = name(0);
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err("open", &path))?;
        self.size = 0;
        Ok(())
    }
}

/// The log files of `dir`, oldest first.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let n = name.strip_prefix(&format!("{LOG_FILE}."))?.parse().ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    rotated.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    out.push(dir.join(LOG_FILE));
    out
}

fn parse_lines(r: impl BufRead, out: &mut Vec<LogLine>) {
    for line in r.lines().map_while(Result::ok) {
        if let Ok(l) = serde_json::from_str(&line) {
            out.push(l);
        }
    }
}

/// Every line of the log in `dir` (rotated files included), or the last `tail`.
pub fn read(dir: &Path, tail: Option<usize>) -> Vec<LogLine> {
    let mut out = Vec::new();
    for f in files(dir) {
        if let Ok(file) = File::open(&f) {
            parse_lines(BufReader::new(file), &mut out);
        }
    }
    if let Some(n) = tail {
        let skip = out.len().saturating_sub(n);
        out.drain(..skip);
    }
    out
}

/// Reads complete lines from `r` to its end, handing each to `f`. Returns (read any, go on).
fn drain(r: &mut BufReader<File>, f: &mut impl FnMut(LogLine) -> bool) -> (bool, bool) {
    let mut buf = String::new();
    let mut progressed = false;
    loop {
        buf.clear();
        match r.read_line(&mut buf) {
            Ok(0) | Err(_) => return (progressed, true),
            Ok(n) if !buf.ends_with('\n') => {
                // A line still being written: come back for the rest.
                let _ = r.seek(SeekFrom::Current(-(n as i64)));
                return (progressed, true);
            }
            Ok(_) => {
                progressed = true;
                if let Ok(line) = serde_json::from_str(buf.trim_end())
                    && !f(line)
                {
                    return (progressed, false);
                }
            }
        }
    }
}

/// Follows the log in `dir`: first what is there (the last `tail` lines, all when None), then
/// each new line as it is written, across rotations, calling `f` for each, until `f` returns
/// false or `stop` says so (checked between polls). The backlog's end and the follow's start
/// are one position of one open file, so a line written meanwhile is delivered exactly once.
pub fn follow(
    dir: &Path,
    tail: Option<usize>,
    mut f: impl FnMut(LogLine) -> bool,
    stop: impl Fn() -> bool,
) {
    use std::os::unix::fs::MetadataExt;
    let path = dir.join(LOG_FILE);
    let open = || File::open(&path).ok().map(BufReader::new);
    let ino = || fs::metadata(&path).map(|m| m.ino()).unwrap_or(0);
    let mut reader = open();
    let mut inode = ino();
    let mut backlog = Vec::new();
    for rotated in files(dir).iter().filter(|p| **p != path) {
        if let Ok(file) = File::open(rotated) {
            parse_lines(BufReader::new(file), &mut backlog);
        }
    }
    if let Some(r) = reader.as_mut() {
        drain(r, &mut |l| {
            backlog.push(l);
            true
        });
    }
    let skip = tail.map_or(0, |n| backlog.len().saturating_sub(n));
    for line in backlog.into_iter().skip(skip) {
        if !f(line) {
            return;
        }
    }
    loop {
        let (progressed, go_on) = reader.as_mut().map_or((false, true), |r| drain(r, &mut f));
        if !go_on {
            return;
        }
        let now = ino();
        if now != inode {
            // Rotated: finish the old file (lines written just before the rename), then switch.
            if let Some(r) = reader.as_mut()
                && !drain(r, &mut f).1
            {
                return;
            }
            inode = now;
            reader = open();
            continue;
        }
        if stop() {
            return;
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// RFC 3339 UTC with nanoseconds (`2026-11-22T05:14:03.123456789Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_795_324_443, 5);
        assert_eq!(rfc3339(t), "2026-11-22T05:14:03.000000005Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
    }

    #[test]
    fn lines_streams_partials_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let rot = Rotation {
            max_size: 300,
            max_files: 3,
        };
        let mut w = LogWriter::open(dir.path(), rot).unwrap();
        w.write(Stream::Stdout, b"one\ntw").unwrap();
        w.write(Stream::Stderr, b"err\n").unwrap();
        w.write(Stream::Stdout, b"o\n").unwrap();
        let got: Vec<(String, Stream)> = read(dir.path(), None)
            .into_iter()
            .map(|l| (l.log, l.stream))
            .collect();
        assert_eq!(
            got,
            vec![
                ("one\n".into(), Stream::Stdout),
                ("err\n".into(), Stream::Stderr),
                ("two\n".into(), Stream::Stdout)
            ]
        );
        for i in 0..20 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        w.write(Stream::Stdout, b"no newline").unwrap();
        w.flush().unwrap();
        let all = read(dir.path(), None);
        assert!(dir.path().join("container.log.2").exists());
        assert!(
            !dir.path().join("container.log.3").exists(),
            "at most max_files files"
        );
        assert_eq!(all.last().unwrap().log, "no newline");
        let tail = read(dir.path(), Some(2));
        assert_eq!(tail[0].log, "line 19\n");
        // Older lines beyond the kept files are gone, the newest are all there, in order.
        let nums: Vec<usize> = all
            .iter()
            .filter_map(|l| {
                l.log
                    .strip_prefix("line ")
                    .and_then(|n| n.trim().parse().ok())
            })
            .collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
        assert_eq!(*nums.last().unwrap(), 19);
    }

    #[test]
    fn a_line_without_newline_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), Rotation::default()).unwrap();
        w.write(Stream::Stdout, &vec![b'x'; MAX_PARTIAL + 10])
            .unwrap();
        let lines = read(dir.path(), None);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].log.len(), MAX_PARTIAL + 10);
    }

    #[test]
    fn follow_sees_new_lines_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let rot = Rotation {
            max_size: 200,
            max_files: 2,
        };
        let mut w = LogWriter::open(dir.path(), rot).unwrap();
        w.write(Stream::Stdout, b"before\n").unwrap();
        let d = dir.path().to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut n = 0;
            follow(
                &d,
                Some(0),
                |l| {
                    tx.send(l.log).unwrap();
                    n += 1;
                    n < 10
                },
                || false,
            );
        });
        // Each line is written once the previous one was seen, so every rotation (one every
        // two lines) happens while the reader holds the old file.
        std::thread::sleep(Duration::from_millis(150));
        for i in 0..10 {
            w.write(Stream::Stdout, format!("after {i}\n").as_bytes())
                .unwrap();
            let seen = rx
                .recv_timeout(Duration::from_secs(5))
                .expect("follow delivers the line");
            assert_eq!(seen, format!("after {i}\n"));
        }
        reader.join().unwrap();
        assert!(
            dir.path().join("container.log.1").exists(),
            "rotation happened"
        );
    }

    #[test]
    fn follow_starts_with_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let rot = Rotation {
            max_size: 30,
            max_files: 3,
        };
        let mut w = LogWriter::open(dir.path(), rot).unwrap();
        for i in 0..4 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        w.flush().unwrap();
        let collect = |tail| {
            let mut seen = Vec::new();
            follow(
                dir.path(),
                tail,
                |l| {
                    seen.push(l.log);
                    true
                },
                || true,
            );
            seen
        };
        // What `read` gives (rotated files oldest first, then the current one), the same lines.
        let all: Vec<String> = read(dir.path(), None).into_iter().map(|l| l.log).collect();
        assert!(all.len() > 1 && dir.path().join("container.log.1").exists());
        assert_eq!(collect(None), all);
        assert_eq!(collect(Some(1)), ["line 3\n"]);
        assert!(collect(Some(0)).is_empty());
    }

    #[test]
    fn docker_rotation_options() {
        assert_eq!(
            Rotation::from_options(Some("10m"), Some("5")),
            Some(Rotation {
                max_size: 10 << 20,
                max_files: 5
            })
        );
        assert_eq!(
            Rotation::from_options(Some("512k"), None).unwrap().max_size,
            512 << 10
        );
        assert_eq!(Rotation::from_options(Some("lots"), None), None);
        assert_eq!(Rotation::from_options(None, Some("0")), None);
    }
}
