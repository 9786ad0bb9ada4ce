//! Unpacking one layer into its snapshot directory: a security boundary.
//!
//! Layer tars come from registries we do not control, and every runtime has had a CVE here
//! (runc CVE-2019-5736 made a malicious image overwrite the host's runc; Docker CVE-2014-6407
//! and CVE-2019-14271, containerd CVE-2021-32760, moby's tar-split symlink races). The rules:
//!
//! - Entry paths are relative and never contain `..`; absolute paths are refused, not rewritten.
//! - Every entry is created with `*at` calls relative to a directory fd that was opened with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: no path the kernel walks on our behalf
//!   may cross a symlink or leave the layer directory, whatever an earlier entry planted.
//! - A parent directory that this layer does not create itself must not be a symlink in the
//!   layers below either (it would be followed once the layers are stacked): refused.
//! - Hard links must point at a file this layer already unpacked, resolved the same way.
//! - `trusted.overlay.*` xattrs from the tar are dropped: they would let a layer forge
//!   overlayfs metadata (redirects, opaque markers) of its own.
//! - Entry count, path length and total bytes are bounded (decompression bombs).
//!
//! Whiteouts become overlayfs whiteouts, as the OCI image spec's layer changesets describe:
//! `.wh.<name>` a 0:0 character device, `.wh..wh..opq` the `trusted.overlay.opaque` xattr on
//! its directory. Ownership, modes (setuid included), xattrs and mtimes are applied as in the
//! tar; directory mtimes last, since creating children changes them.
//!
//! The caller unpacks into a fresh directory and discards it on any error, so a bad layer never
//! leaves a partial snapshot.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;
use tar::EntryType;

use crate::config::Limits;
use crate::digest::{Digest, HashingReader};

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (one or more members).
    Gzip,
    /// zstd.
    Zstd,
}

/// Why an entry was refused or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EntryProblem {
    /// `/etc/passwd`.
    #[error("absolute path")]
    Absolute,
    /// `a/../../etc`.
    #[error("path contains '..'")]
    DotDot,
    /// Longer than the configured limit.
    #[error("path or link target of {len} bytes exceeds the {limit}-byte limit")]
    PathTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A parent component is a symlink in this layer.
    #[error("a parent directory is a symlink (writing through symlinks is refused)")]
    ThroughSymlink,
    /// A parent component is a symlink planted by a lower layer.
    #[error(
        "parent {parent:?} is a symlink in a lower layer (writing through symlinks is refused)"
    )]
    ThroughLowerSymlink {
        /// The parent path.
        parent: String,
    },
    /// A parent component exists and is not a directory.
    #[error("a parent is not a directory")]
    ParentNotDirectory,
    /// A hard link to something this layer does not hold.
    #[error("hard link target {target:?} is not a file unpacked earlier in this layer")]
    HardlinkTarget {
        /// The link target.
        target: String,
    },
    /// Character type we do not unpack.
    #[error("unsupported tar entry type {0:?}")]
    UnsupportedType(EntryType),
    /// uid or gid out of range.
    #[error("owner {uid}:{gid} out of range")]
    BadOwner {
        /// uid.
        uid: u64,
        /// gid.
        gid: u64,
    },
    /// A whiteout naming nothing.
    #[error("malformed whiteout")]
    BadWhiteout,
    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// The call.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// Errors unpacking a layer.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// One entry was refused or failed.
    #[error("entry {path:?}: {problem}")]
    Entry {
        /// The entry's path as the tar gives it.
        path: String,
        /// What was wrong.
        problem: EntryProblem,
    },
    /// The stream could not be read or decompressed, or is not a tar.
    #[error("reading the layer stream")]
    Read(#[source] io::Error),
    /// The destination could not be opened.
    #[error("opening {path}")]
    Dest {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// More entries than allowed.
    #[error("layer has more than {limit} entries (entry {entry:?} is one too many)")]
    TooManyEntries {
        /// The limit.
        limit: u64,
        /// The first entry past it.
        entry: String,
    },
    /// More bytes than allowed.
    #[error("image unpacks to more than {limit} bytes{}", at_entry(entry))]
    TooLarge {
        /// The limit.
        limit: u64,
        /// The entry that crossed it, when one did (a reused snapshot has none).
        entry: Option<String>,
    },
}

fn at_entry(entry: &Option<String>) -> String {
    entry
        .as_ref()
        .map(|e| format!(" (at entry {e:?})"))
        .unwrap_or_default()
}

/// The outcome of unpacking one layer.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Entries processed.
    pub entries: u64,
}

/// Unpacks the layer in `blob` into the empty directory `dest`.
///
/// `lowers` are the snapshot directories below this layer, topmost first; `budget` is what is
/// left of the image's byte limit and is reduced by what this layer writes.
pub fn unpack_layer(
    blob: File,
    compression: Compression,
    dest: &Path,
    lowers: &[PathBuf],
    limits: &Limits,
    budget: &mut u64,
) -> Result<Unpacked, UnpackError> {
    let reader = io::BufReader::with_capacity(256 * 1024, blob);
    let stream: Box<dyn Read> = match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(reader).map_err(UnpackError::Read)?)
        }
    };
    unpack_tar(stream, dest, lowers, limits, budget)
}

/// Unpacks an uncompressed tar stream into `dest`; see [`unpack_layer`].
pub fn unpack_tar(
    stream: impl Read,
    dest: &Path,
    lowers: &[PathBuf],
    limits: &Limits,
    budget: &mut u64,
) -> Result<Unpacked, UnpackError> {
    let root = rustix::fs::open(
        dest,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Dest {
        path: dest.to_owned(),
        source: e.into(),
    })?;
    let mut u = Unpacker {
        root,
        lowers,
        limits,
        budget,
        image_limit: limits.max_image_bytes,
        explicit_dirs: HashSet::new(),
        checked_lower: HashSet::new(),
        dir_times: Vec::new(),
        bytes: 0,
    };
    let allowance = Rc::new(Cell::new(None));
    let mut archive = tar::Archive::new(HashingReader::new(HeaderGuard {
        inner: stream,
        allowance: Rc::clone(&allowance),
    }));
    let mut entries = 0u64;
    let mut iter = archive.entries().map_err(UnpackError::Read)?;
    loop {
        // Whatever the tar reader consumes to reach the next entry is bounded; the entry's
        // content, read below, is bounded by the byte budget instead.
        allowance.set(Some(MAX_HEADER_BYTES));
        let next = iter.next();
        allowance.set(None);
        let Some(entry) = next else { break };
        let mut entry = entry.map_err(UnpackError::Read)?;
        entries += 1;
        let raw = entry.path_bytes().into_owned();
        if entries > limits.max_layer_entries {
            return Err(UnpackError::TooManyEntries {
                limit: limits.max_layer_entries,
                entry: String::from_utf8_lossy(&raw).into_owned(),
            });
        }
        u.entry(&raw, &mut entry).map_err(|e| match e {
            Failure::Entry(problem) => UnpackError::Entry {
                path: String::from_utf8_lossy(&raw).into_owned(),
                problem,
            },
            Failure::Layer(e) => e,
        })?;
    }
    u.finish_dirs();
    let (diff_id, _) = archive.into_inner().finish().map_err(UnpackError::Read)?;
    Ok(Unpacked {
        diff_id,
        bytes: u.bytes,
        entries,
    })
}

/// Most bytes the tar reader may consume between two entries: the next entry's headers, PAX
/// records and GNU long names, which the `tar` crate reads into memory whole, and the data of
/// a non-file entry, skipped. Without a bound a few kilobytes of gzip could declare a PAX
/// header of gigabytes and exhaust memory before any entry is seen.
const MAX_HEADER_BYTES: u64 = 16 << 20;

/// Fails reads past `allowance` while it is set.
struct HeaderGuard<R> {
    inner: R,
    allowance: Rc<Cell<Option<u64>>>,
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.allowance.get() else {
            return self.inner.read(buf);
        };
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::other(format!(
                "tar headers of one entry exceed {MAX_HEADER_BYTES} bytes"
            )));
        }
        let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.allowance.set(Some(left - n as u64));
        Ok(n)
    }
}

enum Failure {
    Entry(EntryProblem),
    Layer(UnpackError),
}

impl From<EntryProblem> for Failure {
    fn from(p: EntryProblem) -> Self {
        Self::Entry(p)
    }
}

fn sys(op: &'static str) -> impl FnOnce(Errno) -> Failure {
    move |e| {
        Failure::Entry(EntryProblem::Io {
            op,
            source: e.into(),
        })
    }
}

/// A validated relative path: its components, none empty, `.` or `..`.
fn components(raw: &[u8], limit: usize) -> Result<Vec<&OsStr>, EntryProblem> {
    if raw.len() > limit {
        return Err(EntryProblem::PathTooLong {
            len: raw.len(),
            limit,
        });
    }
    // A bare "/" is the layer's root directory, as umoci writes it; anything below it
    // written absolutely is refused rather than silently re-rooted.
    if raw.starts_with(b"/") && !raw.split(|b| *b == b'/').all(|p| p.is_empty() || p == b".") {
        return Err(EntryProblem::Absolute);
    }
    let mut out = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(EntryProblem::DotDot),
            p => out.push(OsStr::from_bytes(p)),
        }
    }
    Ok(out)
}

fn join(parts: &[&OsStr]) -> PathBuf {
    parts.iter().collect()
}

struct Unpacker<'a> {
    root: OwnedFd,
    lowers: &'a [PathBuf],
    limits: &'a Limits,
    budget: &'a mut u64,
    image_limit: u64,
    /// Directories this layer creates by an entry of its own.
    explicit_dirs: HashSet<PathBuf>,
    /// Parent paths already checked against the lower layers.
    checked_lower: HashSet<PathBuf>,
    /// Directory mtimes, applied once all entries are in.
    dir_times: Vec<(PathBuf, i64)>,
    bytes: u64,
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Opens the directory `rel` beneath `root` without crossing a symlink.
fn open_dir_beneath(root: &OwnedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    rustix::fs::openat2(
        root,
        rel,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        BENEATH,
    )
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, raw: &[u8], entry: &mut tar::Entry<'_, R>) -> Result<(), Failure> {
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        let parts = components(raw, self.limits.max_path_bytes)?;
        let Some((name, parents)) = parts.split_last() else {
            // The layer's root directory itself.
            return self.root_metadata(entry);
        };
        let name_bytes = name.as_bytes();
        // Whiteouts.
        if name_bytes == b".wh..wh..opq" {
            let dir = self.parent(parents)?;
            return set_xattr(&dir, "trusted.overlay.opaque", b"y");
        }
        if name_bytes.starts_with(b".wh..wh.") {
            return Ok(()); // AUFS bookkeeping (.wh..wh.plnk and friends)
        }
        if let Some(hidden) = name_bytes.strip_prefix(b".wh.") {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(EntryProblem::BadWhiteout.into());
            }
            let dir = self.parent(parents)?;
            let hidden = OsStr::from_bytes(hidden);
            self.clear(&dir, parents, hidden, false)?;
            return rustix::fs::mknodat(&dir, hidden, FileType::CharacterDevice, Mode::empty(), 0)
                .map_err(sys("mknod whiteout"));
        }

        let header = entry.header();
        let (uid, gid) = owner(header)?;
        let mode = Mode::from_raw_mode(header.mode().map_err(io_problem("mode"))? & 0o7777);
        let mtime = header.mtime().map_err(io_problem("mtime"))? as i64;
        let dir = self.parent(parents)?;
        let is_dir = matches!(kind, EntryType::Directory);
        self.clear(&dir, parents, name, is_dir)?;

        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let size = entry.size();
                if size > *self.budget {
                    return Err(Failure::Layer(UnpackError::TooLarge {
                        limit: self.image_limit,
                        entry: Some(String::from_utf8_lossy(raw).into_owned()),
                    }));
                }
                let fd = rustix::fs::openat(
                    &dir,
                    *name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(sys("create"))?;
                let mut file = File::from(fd);
                let written = io::copy(&mut entry.by_ref().take(size), &mut file)
                    .map_err(|e| Failure::Layer(UnpackError::Read(e)))?;
                *self.budget -= written;
                self.bytes += written;
                rustix::fs::fchown(&file, Some(uid), Some(gid)).map_err(sys("chown"))?;
                rustix::fs::fchmod(&file, mode).map_err(sys("chmod"))?;
                self.xattrs(entry, &file)?;
                rustix::fs::futimens(&file, &times(mtime)).map_err(sys("utimens"))
            }
            EntryType::Directory => {
                match rustix::fs::mkdirat(&dir, *name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(sys("mkdir")(e)),
                }
                let rel = join(&parts);
                let fd = open_dir_beneath(&self.root, &rel).map_err(sys("open directory"))?;
                rustix::fs::fchown(&fd, Some(uid), Some(gid)).map_err(sys("chown"))?;
                rustix::fs::fchmod(&fd, mode).map_err(sys("chmod"))?;
                self.xattrs(entry, &fd)?;
                self.explicit_dirs.insert(rel.clone());
                self.dir_times.push((rel, mtime));
                Ok(())
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or(EntryProblem::BadWhiteout)
                    .map_err(|_| EntryProblem::Io {
                        op: "symlink",
                        source: io::Error::other("symlink without a target"),
                    })?;
                if target.len() > self.limits.max_path_bytes {
                    return Err(EntryProblem::PathTooLong {
                        len: target.len(),
                        limit: self.limits.max_path_bytes,
                    }
                    .into());
                }
                // The target is never followed here; it is resolved inside the container.
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &dir, *name)
                    .map_err(sys("symlink"))?;
                rustix::fs::chownat(&dir, *name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(sys("chown"))?;
                rustix::fs::utimensat(&dir, *name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(sys("utimens"))
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                let shown = || String::from_utf8_lossy(&target).into_owned();
                let tparts = components(&target, self.limits.max_path_bytes)?;
                let Some((tname, tparents)) = tparts.split_last() else {
                    return Err(EntryProblem::HardlinkTarget { target: shown() }.into());
                };
                let tdir = open_dir_beneath(&self.root, &join(tparents))
                    .map_err(|_| EntryProblem::HardlinkTarget { target: shown() })?;
                match rustix::fs::statat(&tdir, *tname, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {}
                    _ => return Err(EntryProblem::HardlinkTarget { target: shown() }.into()),
                }
                rustix::fs::linkat(&tdir, *tname, &dir, *name, AtFlags::empty())
                    .map_err(sys("link"))
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (ft, dev) = match kind {
                    EntryType::Fifo => (FileType::Fifo, 0),
                    _ => {
                        let major = header
                            .device_major()
                            .map_err(io_problem("device"))?
                            .unwrap_or(0);
                        let minor = header
                            .device_minor()
                            .map_err(io_problem("device"))?
                            .unwrap_or(0);
                        let ft = if kind == EntryType::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (ft, rustix::fs::makedev(major, minor))
                    }
                };
                rustix::fs::mknodat(&dir, *name, ft, mode, dev).map_err(sys("mknod"))?;
                rustix::fs::chownat(&dir, *name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(sys("chown"))?;
                rustix::fs::chmodat(&dir, *name, mode, AtFlags::empty()).map_err(sys("chmod"))?;
                rustix::fs::utimensat(&dir, *name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(sys("utimens"))
            }
            other => Err(EntryProblem::UnsupportedType(other).into()),
        }
    }

    fn root_metadata<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), Failure> {
        let header = entry.header();
        if header.entry_type() != EntryType::Directory {
            return Err(EntryProblem::ParentNotDirectory.into());
        }
        let (uid, gid) = owner(header)?;
        let mode = Mode::from_raw_mode(header.mode().map_err(io_problem("mode"))? & 0o7777);
        let mtime = header.mtime().map_err(io_problem("mtime"))? as i64;
        let root = self.root.try_clone().map_err(|e| EntryProblem::Io {
            op: "dup",
            source: e,
        })?;
        rustix::fs::fchown(&root, Some(uid), Some(gid)).map_err(sys("chown"))?;
        rustix::fs::fchmod(&root, mode).map_err(sys("chmod"))?;
        self.dir_times.push((PathBuf::new(), mtime));
        Ok(())
    }

    /// Opens (creating as needed) the parent directory of an entry, refusing symlinks.
    fn parent(&mut self, parents: &[&OsStr]) -> Result<OwnedFd, Failure> {
        let rel = join(parents);
        match open_dir_beneath(&self.root, &rel) {
            Ok(fd) => {
                self.check_lowers(parents)?;
                return Ok(fd);
            }
            Err(Errno::NOENT | Errno::LOOP | Errno::XDEV | Errno::NOTDIR) => {}
            Err(e) => return Err(sys("open parent")(e)),
        }
        // Walk down, creating what is missing, one component at a time.
        self.check_lowers(parents)?;
        let mut cur = self.root.try_clone().map_err(|e| EntryProblem::Io {
            op: "dup",
            source: e,
        })?;
        for part in parents {
            let open = |cur: &OwnedFd| open_dir_beneath(cur, Path::new(part));
            cur = match open(&cur) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(&cur, *part, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(sys("mkdir")(e)),
                    }
                    open(&cur).map_err(sys("open parent"))?
                }
                // O_DIRECTORY|O_NOFOLLOW on a symlink gives ENOTDIR or ELOOP: tell them apart.
                Err(Errno::LOOP | Errno::XDEV | Errno::NOTDIR) => {
                    return Err(
                        match rustix::fs::statat(&cur, *part, AtFlags::SYMLINK_NOFOLLOW) {
                            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                                EntryProblem::ThroughSymlink
                            }
                            _ => EntryProblem::ParentNotDirectory,
                        }
                        .into(),
                    );
                }
                Err(e) => return Err(sys("open parent")(e)),
            };
        }
        Ok(cur)
    }

    /// Refuses a parent path that this layer does not create as a directory of its own while a
    /// lower layer has a symlink there: stacked, the entry would be written through it.
    fn check_lowers(&mut self, parents: &[&OsStr]) -> Result<(), Failure> {
        if self.lowers.is_empty() {
            return Ok(());
        }
        for depth in 1..=parents.len() {
            let prefix = join(&parents[..depth]);
            if self.explicit_dirs.contains(&prefix) || self.checked_lower.contains(&prefix) {
                continue;
            }
            for lower in self.lowers {
                match lower_kind(lower, &prefix) {
                    Some(FileType::Symlink) => {
                        return Err(EntryProblem::ThroughLowerSymlink {
                            parent: prefix.display().to_string(),
                        }
                        .into());
                    }
                    Some(_) => break, // the topmost layer that has the path decides
                    None => continue,
                }
            }
            self.checked_lower.insert(prefix);
        }
        Ok(())
    }

    /// Removes what a previous entry of this layer left at `name`, except a directory that a
    /// directory entry merges into.
    fn clear(
        &mut self,
        dir: &OwnedFd,
        parents: &[&OsStr],
        name: &OsStr,
        keep_dir: bool,
    ) -> Result<(), Failure> {
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(sys("stat")(e)),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            if keep_dir {
                return Ok(());
            }
            // The parent chain was just resolved without symlinks, so this path stays inside.
            let mut rel = join(parents);
            rel.push(name);
            let path = PathBuf::from(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&self.root)
            ))
            .join(&rel);
            std::fs::remove_dir_all(&path).map_err(|e| EntryProblem::Io {
                op: "remove",
                source: e,
            })?;
            self.explicit_dirs.retain(|d| !d.starts_with(&rel));
            self.checked_lower.retain(|d| !d.starts_with(&rel));
            return Ok(());
        }
        rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(sys("unlink"))
    }

    fn xattrs<R: Read>(&self, entry: &mut tar::Entry<'_, R>, fd: impl AsFd) -> Result<(), Failure> {
        let Some(exts) = entry.pax_extensions().map_err(io_problem("pax"))? else {
            return Ok(());
        };
        for ext in exts {
            let ext = ext.map_err(io_problem("pax"))?;
            let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            if name.starts_with(b"trusted.overlay.") {
                tracing::warn!(xattr = %String::from_utf8_lossy(name), "dropping overlayfs xattr from layer");
                continue;
            }
            set_xattr(&fd, OsStr::from_bytes(name), ext.value_bytes())?;
        }
        Ok(())
    }

    /// Directory mtimes, deepest first, once nothing more is created inside them. Best effort:
    /// a directory a later entry removed is simply gone.
    fn finish_dirs(&mut self) {
        self.dir_times
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (rel, mtime) in &self.dir_times {
            if let Ok(fd) = open_dir_beneath(&self.root, rel) {
                let _ = rustix::fs::futimens(&fd, &times(*mtime));
            }
        }
    }
}

/// What `rel` is in the lower snapshot `lower`, resolving no symlink on the way.
fn lower_kind(lower: &Path, rel: &Path) -> Option<FileType> {
    let root = rustix::fs::open(
        lower,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let parent = open_dir_beneath(&root, rel.parent().unwrap_or(Path::new(""))).ok()?;
    let st = rustix::fs::statat(&parent, rel.file_name()?, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    let ft = FileType::from_raw_mode(st.st_mode);
    // A 0:0 character device is a whiteout: the path does not exist from here down.
    if ft == FileType::CharacterDevice && st.st_rdev == 0 {
        return Some(FileType::CharacterDevice);
    }
    Some(ft)
}

fn set_xattr(fd: impl AsFd, name: impl rustix::path::Arg, value: &[u8]) -> Result<(), Failure> {
    match rustix::fs::fsetxattr(fd, name, value, XattrFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::NOTSUP) => {
            tracing::debug!("filesystem does not support an xattr of the layer; skipped");
            Ok(())
        }
        Err(e) => Err(sys("setxattr")(e)),
    }
}

fn owner(header: &tar::Header) -> Result<(Uid, Gid), Failure> {
    let uid = header.uid().map_err(io_problem("uid"))?;
    let gid = header.gid().map_err(io_problem("gid"))?;
    let bad = || EntryProblem::BadOwner { uid, gid };
    let uid = u32::try_from(uid)
        .ok()
        .filter(|u| *u != u32::MAX)
        .ok_or_else(bad)?;
    let gid = u32::try_from(gid)
        .ok()
        .filter(|g| *g != u32::MAX)
        .ok_or_else(bad)?;
    Ok((Uid::from_raw(uid), Gid::from_raw(gid)))
}

fn io_problem(op: &'static str) -> impl FnOnce(io::Error) -> Failure {
    move |source| Failure::Entry(EntryProblem::Io { op, source })
}

fn times(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}
