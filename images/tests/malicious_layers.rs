//! A corpus of malicious layer tars fed to the unpacker, each of which must be refused with the
//! offending entry named and nothing outside the layer directory touched; and the semantics an
//! honest layer relies on (whiteouts, hard links, owners, modes, devices, mtimes, xattrs).
//!
//! The tars are written here header by header (raw 512-byte ustar blocks), because the `tar`
//! crate's builder refuses exactly the paths an attacker would use (`..`, absolute paths).
//!
//! Every test works in a sandbox directory of its own under /tmp:
//!
//! ```text
//! /tmp/skiff-malicious-XXXX/          <- absolute-path attacks aim here (`/tmp/.../abs`)
//!   host/                             <- the canary: symlinks in the layers point here
//!     victim                          <- a file whiteouts and hard links try to reach
//!     a/b/                            <- `link -> ..` from a layer lands here, `../../` in a/
//!       layer/, l1/, l2/              <- layer (snapshot) directories
//! ```
//!
//! Everything outside the layer directories (names, types, modes, owners, sizes, mtimes, link
//! counts, xattrs) is recorded before each unpack and must be identical after it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use skiff_images::config::Limits;
use skiff_images::unpack::{
    Compression, EntryProblem, UnpackError, Unpacked, unpack_layer, unpack_tar,
};

/// Whether this test may run: true as root. Otherwise it prints why it cannot and is skipped,
/// or fails when `SKIFF_REQUIRE_PRIVILEGED=1` (CI runs that must not skip silently).
fn privileged() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    let why = "unpacking a layer chowns every entry to the owner in the tar, creates devices and \
               whiteouts with mknod and sets trusted.* xattrs, which needs root (CAP_CHOWN, \
               CAP_MKNOD, CAP_SYS_ADMIN)";
    if std::env::var("SKIFF_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!(
            "{test} needs root and runs as uid {}: {why}",
            rustix::process::geteuid().as_raw()
        );
    }
    // Straight to stderr, past the test harness's capture, so that a skip is seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: not running as root; {why} (SKIFF_REQUIRE_PRIVILEGED=1 makes this a failure)"
    );
    false
}

// ---------------------------------------------------------------------------------------------
// Raw tar writing.

const REGULAR: u8 = b'0';
const HARDLINK: u8 = b'1';
const SYMLINK: u8 = b'2';
const CHAR: u8 = b'3';
const DIRECTORY: u8 = b'5';
const FIFO: u8 = b'6';
const PAX: u8 = b'x';

/// Default mtime of the entries written here.
const MTIME: u64 = 1_600_000_000;

/// One ustar header, as written byte by byte.
#[derive(Clone, Debug)]
struct Header {
    name: Vec<u8>,
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Vec<u8>,
    dev: (u32, u32),
}

impl Header {
    fn new(name: impl AsRef<[u8]>, kind: u8) -> Self {
        Self {
            name: name.as_ref().to_vec(),
            kind,
            mode: if kind == DIRECTORY { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            mtime: MTIME,
            link: Vec::new(),
            dev: (0, 0),
        }
    }

    fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    fn mtime(mut self, mtime: u64) -> Self {
        self.mtime = mtime;
        self
    }

    fn link(mut self, target: impl AsRef<[u8]>) -> Self {
        self.link = target.as_ref().to_vec();
        self
    }

    fn dev(mut self, major: u32, minor: u32) -> Self {
        self.dev = (major, minor);
        self
    }

    /// The 512 bytes of this header for an entry of `size` bytes.
    fn block(&self, size: u64) -> [u8; 512] {
        let mut h = [0u8; 512];
        assert!(
            self.name.len() <= 100,
            "use a PAX path record for long names"
        );
        assert!(
            self.link.len() <= 100,
            "use a PAX linkpath record for long targets"
        );
        h[..self.name.len()].copy_from_slice(&self.name);
        octal(&mut h[100..108], u64::from(self.mode));
        octal(&mut h[108..116], self.uid);
        octal(&mut h[116..124], self.gid);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], self.mtime);
        h[156] = self.kind;
        h[157..157 + self.link.len()].copy_from_slice(&self.link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        octal(&mut h[329..337], u64::from(self.dev.0));
        octal(&mut h[337..345], u64::from(self.dev.1));
        checksum(&mut h);
        h
    }
}

/// Writes `value` as zero-padded octal followed by a NUL, filling `field`.
fn octal(field: &mut [u8], value: u64) {
    let digits = format!("{value:0width$o}", width = field.len() - 1);
    assert_eq!(digits.len(), field.len() - 1, "{value} does not fit");
    field[..digits.len()].copy_from_slice(digits.as_bytes());
    field[digits.len()] = 0;
}

/// Fills in the header checksum: the sum of all bytes with the checksum field as spaces.
fn checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// One PAX record, `"<len> key=value\n"`, where `<len>` counts the whole record.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while body + len.to_string().len() != len {
        len = body + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    assert_eq!(out.len(), len);
    out
}

/// A tar stream under construction.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn new() -> Self {
        Self::default()
    }

    /// Appends `header` followed by `data`, padded to whole blocks.
    fn entry(mut self, header: &Header, data: &[u8]) -> Self {
        self.0.extend_from_slice(&header.block(data.len() as u64));
        self.data(data)
    }

    fn data(mut self, data: &[u8]) -> Self {
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    /// Appends a PAX extended header applying `records` to the next entry.
    fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        self.entry(&Header::new("PaxHeaders.0/next", PAX), &data)
    }

    fn file(self, name: impl AsRef<[u8]>, data: &[u8]) -> Self {
        self.entry(&Header::new(name, REGULAR), data)
    }

    fn dir(self, name: impl AsRef<[u8]>) -> Self {
        self.entry(&Header::new(name, DIRECTORY), b"")
    }

    fn symlink(self, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        self.entry(&Header::new(name, SYMLINK).link(target), b"")
    }

    fn hardlink(self, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        self.entry(&Header::new(name, HARDLINK).link(target), b"")
    }

    /// The tar with its end-of-archive marker (two zero blocks).
    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

/// The uid and gid this test runs as: entries owned by them unpack without privileges.
fn own_uid() -> u64 {
    rustix::process::geteuid().as_raw().into()
}

fn own_gid() -> u64 {
    rustix::process::getegid().as_raw().into()
}

fn bytes_of(path: &Path) -> Vec<u8> {
    path.as_os_str().as_encoded_bytes().to_vec()
}

/// A sandbox with one layer directory, for tests that need root (None: skipped, as `privileged`
/// says).
fn root_sandbox() -> Option<(Sandbox, PathBuf)> {
    if !privileged() {
        return None;
    }
    let mut sb = Sandbox::new();
    let dest = sb.layer("layer");
    Some((sb, dest))
}

// ---------------------------------------------------------------------------------------------
// The sandbox and what "untouched" means.

struct Sandbox {
    tmp: tempfile::TempDir,
    /// Layer directories: their contents are the unpacker's to write, the rest is the host.
    layers: Vec<PathBuf>,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("skiff-malicious-")
            .tempdir_in("/tmp")
            .expect("creating the sandbox under /tmp");
        fs::create_dir_all(tmp.path().join("host/a/b")).unwrap();
        fs::write(tmp.path().join("host/victim"), b"precious").unwrap();
        Self {
            tmp,
            layers: Vec::new(),
        }
    }

    /// The unique directory under /tmp this test owns.
    fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// The canary directory that symlinks in the layers point at.
    fn outside(&self) -> PathBuf {
        self.root().join("host")
    }

    /// A fresh, empty layer directory.
    fn layer(&mut self, name: &str) -> PathBuf {
        let dir = self.root().join("host/a/b").join(name);
        fs::create_dir(&dir).unwrap();
        self.layers.push(dir.clone());
        dir
    }

    /// Everything outside the layer directories, with the metadata an escape would change.
    fn host(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        self.walk(self.root(), &mut out);
        out
    }

    fn walk(&self, path: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let rel = path.strip_prefix(self.root()).unwrap().to_owned();
        if self.layers.iter().any(|l| l == path) {
            out.insert(rel, "layer directory".into());
            return;
        }
        let md = fs::symlink_metadata(path).unwrap();
        let mut names = [0u8; 1024];
        let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap_or(0);
        out.insert(
            rel,
            format!(
                "{:?} mode={:o} owner={}:{} size={} mtime={}.{} nlink={} xattrs={:?}",
                md.file_type(),
                md.mode(),
                md.uid(),
                md.gid(),
                md.size(),
                md.mtime(),
                md.mtime_nsec(),
                md.nlink(),
                String::from_utf8_lossy(&names[..n]),
            ),
        );
        if md.is_dir() {
            for e in fs::read_dir(path).unwrap() {
                self.walk(&e.unwrap().path(), out);
            }
        }
    }

    /// Unpacks `tar` into a fresh layer directory and checks that it is refused at `entry`
    /// with a problem `want` accepts, and that nothing outside the layer directories changed.
    /// Returns the layer directory.
    #[track_caller]
    fn refuse(
        &mut self,
        tar: &[u8],
        lowers: &[PathBuf],
        entry: &str,
        want: fn(&EntryProblem) -> bool,
    ) -> PathBuf {
        let dest = self.layer(&format!("layer{}", self.layers.len()));
        let before = self.host();
        let limits = Limits::default();
        let mut budget = limits.max_image_bytes;
        let result = unpack_tar(tar, &dest, lowers, &limits, &mut budget);
        assert_entry_refused(result, entry, want);
        assert_eq!(before, self.host(), "the host changed outside the layer");
        dest
    }
}

/// Checks that `result` is a refusal of the entry `entry` for a problem `want` accepts, and
/// that the error message names the entry.
#[track_caller]
fn assert_entry_refused(
    result: Result<Unpacked, UnpackError>,
    entry: &str,
    want: fn(&EntryProblem) -> bool,
) {
    let err = match result {
        Ok(u) => panic!("entry {entry:?} was not refused: {u:?}"),
        Err(e) => e,
    };
    let message = err.to_string();
    match &err {
        UnpackError::Entry { path, problem } => {
            assert_eq!(path, entry, "the error names the wrong entry: {message}");
            assert!(want(problem), "refused for the wrong reason: {message}");
        }
        other => panic!("expected entry {entry:?} to be refused, got {other:?}"),
    }
    assert!(
        message.contains(entry),
        "the message does not name the entry: {message}"
    );
}

fn default_budget() -> (Limits, u64) {
    let limits = Limits::default();
    let budget = limits.max_image_bytes;
    (limits, budget)
}

/// Unpacks `tar` into `dest`, which must succeed.
#[track_caller]
fn unpack_ok(tar: &[u8], dest: &Path, lowers: &[PathBuf]) -> Unpacked {
    let (limits, mut budget) = default_budget();
    unpack_tar(tar, dest, lowers, &limits, &mut budget)
        .unwrap_or_else(|e| panic!("unpacking failed: {e} ({e:?})"))
}

/// The value of xattr `name` on `path` itself (not following a symlink), if it has one.
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("getxattr {name} on {}: {e}", path.display()),
    }
}

/// Total size of the regular files under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = e.path().symlink_metadata().unwrap();
        if md.is_dir() {
            total += bytes_under(&e.path());
        } else if md.is_file() {
            total += md.len();
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Paths that leave the layer.

#[test]
fn dot_dot_escape_is_refused() {
    let mut sb = Sandbox::new();
    let tar = Tar::new().file("../escape", b"pwned").finish();
    sb.refuse(&tar, &[], "../escape", |p| {
        matches!(p, EntryProblem::DotDot)
    });
    assert!(!sb.root().join("host/a/b/escape").exists());
}

#[test]
fn dot_dot_inside_path_is_refused() {
    let mut sb = Sandbox::new();
    // `a/` is a real directory, so the kernel would resolve `a/..`; owned by whoever runs
    // the test, so that no privilege is needed to chown it.
    let a = Header::new("a/", DIRECTORY).owner(own_uid(), own_gid());
    let tar = Tar::new()
        .entry(&a, b"")
        .file("a/../../escape", b"pwned")
        .finish();
    sb.refuse(&tar, &[], "a/../../escape", |p| {
        matches!(p, EntryProblem::DotDot)
    });
    assert!(!sb.root().join("host/a/b/escape").exists());
}

#[test]
fn dot_dot_directory_and_symlink_entries_are_refused() {
    let mut sb = Sandbox::new();
    let tar = Tar::new().dir("../../escaped-dir/").finish();
    sb.refuse(&tar, &[], "../../escaped-dir/", |p| {
        matches!(p, EntryProblem::DotDot)
    });
    let tar = Tar::new().symlink("x/../../sl", "/").finish();
    sb.refuse(&tar, &[], "x/../../sl", |p| {
        matches!(p, EntryProblem::DotDot)
    });
}

#[test]
fn absolute_path_is_refused() {
    let mut sb = Sandbox::new();
    let target = sb.root().join("abs");
    let name = String::from_utf8(bytes_of(&target)).unwrap();
    let tar = Tar::new().file(&name, b"pwned").finish();
    sb.refuse(&tar, &[], &name, |p| matches!(p, EntryProblem::Absolute));
    assert!(!target.exists());
}

// ---------------------------------------------------------------------------------------------
// Writing through symlinks.

#[test]
fn write_through_absolute_symlink_in_same_layer_is_refused() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new();
    let tar = Tar::new()
        .symlink("link", bytes_of(&sb.outside()))
        .file("link/pwned", b"pwned")
        .finish();
    let dest = sb.refuse(&tar, &[], "link/pwned", |p| {
        matches!(p, EntryProblem::ThroughSymlink)
    });
    assert!(!sb.outside().join("pwned").exists());
    // The symlink itself was created as-is, pointing out of the layer, and never followed.
    assert_eq!(fs::read_link(dest.join("link")).unwrap(), sb.outside());
}

#[test]
fn write_through_dot_dot_symlinks_is_refused() {
    if !privileged() {
        return;
    }
    for target in ["..", "../../", "../..", "./.."] {
        let mut sb = Sandbox::new();
        let tar = Tar::new()
            .symlink("link", target)
            .file("link/x", b"pwned")
            .finish();
        sb.refuse(&tar, &[], "link/x", |p| {
            matches!(p, EntryProblem::ThroughSymlink)
        });
        assert!(!sb.root().join("host/a/b/x").exists(), "{target}");
        assert!(!sb.root().join("host/a/x").exists(), "{target}");
    }
}

#[test]
fn write_through_symlink_inside_the_layer_is_refused() {
    if !privileged() {
        return;
    }
    // Even a symlink that stays inside the layer is never walked: what it points at depends on
    // the layers stacked below, so the entry is refused rather than written through it.
    // The symlink as the last component of the parent, and in the middle of it.
    for (target, entry) in [
        ("real", "link/x"),
        ("real", "link/sub/x"),
        ("./real/", "link/sub/x"),
        (".", "link/real/sub/x"),
    ] {
        let mut sb = Sandbox::new();
        let tar = Tar::new()
            .dir("real/")
            .dir("real/sub/")
            .symlink("link", target)
            .file(entry, b"x")
            .finish();
        let dest = sb.refuse(&tar, &[], entry, |p| {
            matches!(p, EntryProblem::ThroughSymlink)
        });
        assert!(!dest.join("real/x").exists(), "{target} {entry}");
        assert!(!dest.join("real/sub/x").exists(), "{target} {entry}");
    }
}

#[test]
fn symlink_chain_and_nested_writes_are_refused() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new();
    // A relative symlink to a symlink that leaves, then a directory and a file beneath it.
    let tar = Tar::new()
        .symlink("out", bytes_of(&sb.outside()))
        .symlink("hop", "out")
        .dir("hop/sub/")
        .finish();
    sb.refuse(&tar, &[], "hop/sub/", |p| {
        matches!(p, EntryProblem::ThroughSymlink)
    });
    let tar = Tar::new()
        .dir("d/")
        .symlink("d/link", bytes_of(&sb.outside()))
        .file("d/link/deeper/pwned", b"pwned")
        .finish();
    sb.refuse(&tar, &[], "d/link/deeper/pwned", |p| {
        matches!(p, EntryProblem::ThroughSymlink)
    });
    assert!(!sb.outside().join("sub").exists());
    assert!(!sb.outside().join("deeper").exists());
}

#[test]
fn whiteout_through_symlink_is_refused() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new();
    // Would delete host/victim and put a 0:0 device in its place.
    let tar = Tar::new()
        .symlink("link", bytes_of(&sb.outside()))
        .file("link/.wh.victim", b"")
        .finish();
    sb.refuse(&tar, &[], "link/.wh.victim", |p| {
        matches!(p, EntryProblem::ThroughSymlink)
    });
    assert_eq!(fs::read(sb.outside().join("victim")).unwrap(), b"precious");
}

#[test]
fn opaque_marker_through_symlink_is_refused() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new();
    let tar = Tar::new()
        .symlink("link", bytes_of(&sb.outside()))
        .file("link/.wh..wh..opq", b"")
        .finish();
    sb.refuse(&tar, &[], "link/.wh..wh..opq", |p| {
        matches!(p, EntryProblem::ThroughSymlink)
    });
    assert_eq!(xattr(&sb.outside(), "trusted.overlay.opaque"), None);
}

#[test]
fn write_through_symlink_planted_by_lower_layer_is_refused() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new();
    let l1 = sb.layer("l1");
    let layer1 = Tar::new().symlink("etc", bytes_of(&sb.outside())).finish();
    unpack_ok(&layer1, &l1, &[]);
    assert_eq!(fs::read_link(l1.join("etc")).unwrap(), sb.outside());

    let layer2 = Tar::new().file("etc/pwned", b"pwned").finish();
    let l2 = sb.refuse(
        &layer2,
        std::slice::from_ref(&l1),
        "etc/pwned",
        |p| matches!(p, EntryProblem::ThroughLowerSymlink { parent } if parent == "etc"),
    );
    assert!(!sb.outside().join("pwned").exists());
    assert!(
        !l2.join("etc").exists(),
        "nothing was created for the refused entry"
    );

    // Whiteouts and opaque markers beneath the lower symlink are refused the same way.
    let layer2 = Tar::new().file("etc/.wh.victim", b"").finish();
    sb.refuse(
        &layer2,
        std::slice::from_ref(&l1),
        "etc/.wh.victim",
        |p| matches!(p, EntryProblem::ThroughLowerSymlink { parent } if parent == "etc"),
    );
    let layer2 = Tar::new().file("etc/.wh..wh..opq", b"").finish();
    sb.refuse(
        &layer2,
        std::slice::from_ref(&l1),
        "etc/.wh..wh..opq",
        |p| matches!(p, EntryProblem::ThroughLowerSymlink { parent } if parent == "etc"),
    );
}

#[test]
fn lower_symlink_below_a_real_directory_is_refused() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new();
    let l1 = sb.layer("l1");
    let l2 = sb.layer("l2");
    unpack_ok(
        &Tar::new()
            .dir("usr/")
            .symlink("usr/lib", bytes_of(&sb.outside()))
            .finish(),
        &l1,
        &[],
    );
    // A middle layer that does not touch usr/lib.
    unpack_ok(
        &Tar::new().dir("usr/").file("usr/x", b"").finish(),
        &l2,
        std::slice::from_ref(&l1),
    );
    // Even with an explicit usr/ of its own, usr/lib is still the lower symlink.
    let layer3 = Tar::new()
        .dir("usr/")
        .file("usr/lib/pwned", b"pwned")
        .finish();
    sb.refuse(
        &layer3,
        &[l2, l1],
        "usr/lib/pwned",
        |p| matches!(p, EntryProblem::ThroughLowerSymlink { parent } if parent == "usr/lib"),
    );
    assert!(!sb.outside().join("pwned").exists());
}

#[test]
fn directory_entry_replaces_lower_symlink() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new();
    let l1 = sb.layer("l1");
    let l2 = sb.layer("l2");
    unpack_ok(
        &Tar::new().symlink("etc", bytes_of(&sb.outside())).finish(),
        &l1,
        &[],
    );
    let before = sb.host();
    // With an explicit directory entry the layer's etc/ replaces the symlink, as in Docker.
    let layer2 = Tar::new()
        .dir("etc/")
        .file("etc/pwned", b"harmless")
        .finish();
    unpack_ok(&layer2, &l2, std::slice::from_ref(&l1));
    assert!(
        fs::symlink_metadata(l2.join("etc")).unwrap().is_dir(),
        "etc/ is a directory in the new layer"
    );
    assert_eq!(fs::read(l2.join("etc/pwned")).unwrap(), b"harmless");
    assert!(!sb.outside().join("pwned").exists());
    assert_eq!(before, sb.host(), "the host changed outside the layers");
}

#[test]
fn same_layer_entries_replace_symlinks_without_following_them() {
    let Some((sb, dest)) = root_sandbox() else {
        return;
    };
    let before = sb.host();
    let victim = bytes_of(&sb.outside().join("victim"));
    let tar = Tar::new()
        // A file entry over a symlink to a host file replaces the link, not the file.
        .symlink("x", &victim)
        .file("x", b"pwned")
        // A directory entry over a symlink to a host directory replaces the link.
        .symlink("d", bytes_of(&sb.outside()))
        .dir("d/")
        .file("d/pwned", b"pwned")
        // So does a hard link entry.
        .symlink("h", &victim)
        .hardlink("h", "x")
        .finish();
    unpack_ok(&tar, &dest, &[]);
    assert!(fs::symlink_metadata(dest.join("x")).unwrap().is_file());
    assert!(fs::symlink_metadata(dest.join("d")).unwrap().is_dir());
    assert_eq!(fs::read(dest.join("h")).unwrap(), b"pwned");
    assert_eq!(fs::read(sb.outside().join("victim")).unwrap(), b"precious");
    assert!(!sb.outside().join("pwned").exists());
    assert_eq!(before, sb.host(), "the host changed outside the layer");
}

// ---------------------------------------------------------------------------------------------
// Hard links.

#[test]
fn hardlink_to_absolute_host_path_is_refused() {
    let mut sb = Sandbox::new();
    let passwd = fs::metadata("/etc/passwd")
        .ok()
        .map(|m| (m.ino(), m.nlink()));
    let tar = Tar::new().hardlink("hl", "/etc/passwd").finish();
    let dest = sb.refuse(&tar, &[], "hl", |p| matches!(p, EntryProblem::Absolute));
    assert!(fs::symlink_metadata(dest.join("hl")).is_err());
    assert_eq!(
        passwd,
        fs::metadata("/etc/passwd")
            .ok()
            .map(|m| (m.ino(), m.nlink()))
    );
    // The same to a file in the sandbox, whose link count we own.
    let victim = sb.outside().join("victim");
    let tar = Tar::new().hardlink("hl", bytes_of(&victim)).finish();
    sb.refuse(&tar, &[], "hl", |p| matches!(p, EntryProblem::Absolute));
    assert_eq!(fs::metadata(&victim).unwrap().nlink(), 1);
}

#[test]
fn hardlink_with_dot_dot_target_is_refused() {
    let mut sb = Sandbox::new();
    let tar = Tar::new().hardlink("hl", "../../etc/passwd").finish();
    let dest = sb.refuse(&tar, &[], "hl", |p| matches!(p, EntryProblem::DotDot));
    assert!(fs::symlink_metadata(dest.join("hl")).is_err());
    // host/a/b/layerN/../../../victim is host/victim.
    let tar = Tar::new().hardlink("hl", "../../../victim").finish();
    sb.refuse(&tar, &[], "hl", |p| matches!(p, EntryProblem::DotDot));
    assert_eq!(
        fs::metadata(sb.outside().join("victim")).unwrap().nlink(),
        1
    );
}

#[test]
fn hardlink_to_missing_target_is_refused() {
    let mut sb = Sandbox::new();
    let tar = Tar::new().hardlink("hl", "not-in-this-layer").finish();
    sb.refuse(
        &tar,
        &[],
        "hl",
        |p| matches!(p, EntryProblem::HardlinkTarget { target } if target == "not-in-this-layer"),
    );
    let tar = Tar::new().hardlink("hl", "").finish();
    sb.refuse(&tar, &[], "hl", |p| {
        matches!(p, EntryProblem::HardlinkTarget { .. })
    });
}

#[test]
fn hardlink_through_symlink_or_to_directory_is_refused() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new();
    // l -> host/, hl => l/victim would link the host's file into the layer.
    let tar = Tar::new()
        .symlink("l", bytes_of(&sb.outside()))
        .hardlink("hl", "l/victim")
        .finish();
    sb.refuse(
        &tar,
        &[],
        "hl",
        |p| matches!(p, EntryProblem::HardlinkTarget { target } if target == "l/victim"),
    );
    assert_eq!(
        fs::metadata(sb.outside().join("victim")).unwrap().nlink(),
        1
    );
    // A hard link to a directory.
    let tar = Tar::new().dir("d/").hardlink("hl", "d").finish();
    sb.refuse(
        &tar,
        &[],
        "hl",
        |p| matches!(p, EntryProblem::HardlinkTarget { target } if target == "d"),
    );
    // A target in a lower layer is not "this layer's" either.
    let l1 = sb.layer("l1");
    unpack_ok(&Tar::new().file("base", b"lower").finish(), &l1, &[]);
    let tar = Tar::new().hardlink("hl", "base").finish();
    sb.refuse(
        &tar,
        &[l1],
        "hl",
        |p| matches!(p, EntryProblem::HardlinkTarget { target } if target == "base"),
    );
}

// ---------------------------------------------------------------------------------------------
// Structure.

#[test]
fn file_below_a_regular_file_is_refused() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new();
    let tar = Tar::new().file("f", b"data").file("f/x", b"pwned").finish();
    sb.refuse(&tar, &[], "f/x", |p| {
        matches!(p, EntryProblem::ParentNotDirectory)
    });
    let tar = Tar::new()
        .file("f", b"data")
        .file("f/sub/x", b"pwned")
        .finish();
    sb.refuse(&tar, &[], "f/sub/x", |p| {
        matches!(p, EntryProblem::ParentNotDirectory)
    });
}

#[test]
fn malformed_whiteouts_are_refused() {
    for name in [".wh.", ".wh...", ".wh..", "d/.wh.", "d/.wh..."] {
        let mut sb = Sandbox::new();
        let tar = Tar::new().file(name, b"").finish();
        sb.refuse(&tar, &[], name, |p| matches!(p, EntryProblem::BadWhiteout));
    }
}

#[test]
fn overlay_xattrs_from_the_tar_are_dropped() {
    let Some((_sandbox, dest)) = root_sandbox() else {
        return;
    };
    let tar = Tar::new()
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.kept", b"yes"),
        ])
        .file("f", b"data")
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/"),
        ])
        .dir("d/")
        .finish();
    unpack_ok(&tar, &dest, &[]);
    for path in [dest.join("f"), dest.join("d")] {
        assert_eq!(xattr(&path, "trusted.overlay.redirect"), None, "{path:?}");
        assert_eq!(xattr(&path, "trusted.overlay.opaque"), None, "{path:?}");
    }
    // The other xattrs of the same entry are applied: PAX records are read at all.
    assert_eq!(
        xattr(&dest.join("f"), "user.kept").as_deref(),
        Some(&b"yes"[..])
    );
}

// ---------------------------------------------------------------------------------------------
// Limits.

/// A gzip or zstd blob of `tar` in an anonymous file, rewound.
fn compressed(tar: &[u8], compression: Compression) -> fs::File {
    let mut file = tempfile::tempfile().unwrap();
    match compression {
        Compression::Gzip => {
            // Fast is enough for runs of one byte, and the dev profile's zlib is slow at best.
            let mut gz = flate2::write::GzEncoder::new(&mut file, flate2::Compression::fast());
            gz.write_all(tar).unwrap();
            gz.finish().unwrap();
        }
        Compression::Zstd => zstd::stream::copy_encode(tar, &mut file, 3).unwrap(),
        Compression::None => file.write_all(tar).unwrap(),
    }
    file.rewind().unwrap();
    file
}

#[test]
fn decompression_bomb_is_refused() {
    const MIB: u64 = 1 << 20;
    let tar = Tar::new()
        .file("zeros", &vec![0u8; 10 * MIB as usize])
        .finish();
    for compression in [Compression::Gzip, Compression::Zstd] {
        let mut sb = Sandbox::new();
        let dest = sb.layer("layer");
        let blob = compressed(&tar, compression);
        assert!(blob.metadata().unwrap().len() < MIB, "a bomb is small");
        let before = sb.host();
        let limits = Limits {
            max_image_bytes: MIB,
            ..Limits::default()
        };
        let mut budget = limits.max_image_bytes;
        let err = unpack_layer(blob, compression, &dest, &[], &limits, &mut budget).unwrap_err();
        assert!(
            matches!(err, UnpackError::TooLarge { limit, .. } if limit == MIB),
            "{compression:?}: {err:?}"
        );
        assert!(
            bytes_under(&dest) <= MIB,
            "{compression:?}: wrote past the limit"
        );
        assert_eq!(budget, MIB, "nothing of the refused file was written");
        assert_eq!(before, sb.host());
    }
}

#[test]
fn image_budget_spans_files_and_layers() {
    if !privileged() {
        return;
    }
    const KIB: usize = 1024;
    let mut sb = Sandbox::new();
    let l1 = sb.layer("l1");
    let l2 = sb.layer("l2");
    let limits = Limits {
        max_image_bytes: 1024 * 1024,
        ..Limits::default()
    };
    let mut budget = limits.max_image_bytes;
    // Three 512 KiB files: the first two fit exactly, the third does not.
    let tar = Tar::new()
        .file("a", &vec![1u8; 512 * KIB])
        .file("b", &vec![2u8; 512 * KIB])
        .file("c", &vec![3u8; 512 * KIB])
        .finish();
    let blob = compressed(&tar, Compression::Gzip);
    let err = unpack_layer(blob, Compression::Gzip, &l1, &[], &limits, &mut budget).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err:?}");
    assert_eq!(bytes_under(&l1), limits.max_image_bytes);
    assert_eq!(budget, 0);
    assert!(!l1.join("c").exists());

    // The budget is per image: what one layer used is gone for the next.
    let mut budget = limits.max_image_bytes;
    let one = Tar::new().file("a", &vec![1u8; 768 * KIB]).finish();
    fs::remove_dir_all(&l1).unwrap();
    fs::create_dir(&l1).unwrap();
    let u = unpack_tar(&one[..], &l1, &[], &limits, &mut budget).unwrap();
    assert_eq!(u.bytes, 768 * KIB as u64);
    let two = Tar::new().file("b", &vec![2u8; 512 * KIB]).finish();
    let err = unpack_tar(
        &two[..],
        &l2,
        std::slice::from_ref(&l1),
        &limits,
        &mut budget,
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err:?}");
    assert_eq!(bytes_under(&l2), 0);
}

#[test]
fn sparse_file_bomb_is_refused() {
    // A GNU sparse file that expands 512 bytes of data to 10 MiB.
    const REAL: u64 = 10 << 20;
    let mut h = [0u8; 512];
    h[..6].copy_from_slice(b"sparse");
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], 512);
    octal(&mut h[136..148], MTIME);
    h[156] = b'S';
    h[257..263].copy_from_slice(b"ustar ");
    h[263..265].copy_from_slice(b" \0");
    octal(&mut h[386..398], REAL - 512); // first sparse block: offset
    octal(&mut h[398..410], 512); //                            length
    octal(&mut h[483..495], REAL); // real size
    checksum(&mut h);
    let mut tar = h.to_vec();
    tar.extend_from_slice(&[b'A'; 512]);
    tar.extend_from_slice(&[0u8; 1024]);

    let mut sb = Sandbox::new();
    let dest = sb.layer("layer");
    let before = sb.host();
    let limits = Limits {
        max_image_bytes: 1 << 20,
        ..Limits::default()
    };
    let mut budget = limits.max_image_bytes;
    let err = unpack_tar(&tar[..], &dest, &[], &limits, &mut budget).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err:?}");
    assert_eq!(bytes_under(&dest), 0);
    assert_eq!(before, sb.host());
}

#[test]
fn oversized_tar_headers_are_refused_before_they_are_read_whole() {
    // The tar reader holds a PAX header or a GNU long name in memory whole, and gzip shrinks
    // them a thousandfold: a 4 MiB blob could declare 4 GiB and take the daemon down. 20 MiB,
    // over the unpacker's 16 MiB bound, must fail while being read, not be allocated whole.
    // The image byte budget does not count them: it is 1 MiB here to show it is not what
    // stops them.
    const BIG: usize = 20 << 20;
    let pax = Tar::new()
        .pax(&[("comment", &vec![b'a'; BIG])])
        .file("f", b"x")
        .finish();
    let mut name = vec![b'n'; BIG];
    name.push(0);
    let long_name = Tar::new()
        .entry(&Header::new("././@LongLink", b'L'), &name)
        .file("f", b"x")
        .finish();
    for (what, tar) in [("pax", pax), ("long name", long_name)] {
        let mut sb = Sandbox::new();
        let dest = sb.layer("layer");
        let before = sb.host();
        let limits = Limits {
            max_image_bytes: 1 << 20,
            ..Limits::default()
        };
        let mut budget = limits.max_image_bytes;
        // Uncompressed, to keep the test fast: the dev profile's zlib is slow, and the guard
        // sits below decompression anyway.
        let err = unpack_tar(&tar[..], &dest, &[], &limits, &mut budget).expect_err(what);
        assert!(
            matches!(&err, UnpackError::Read(e) if e.to_string().contains("tar headers")),
            "{what}: {err:?}"
        );
        assert_eq!(bytes_under(&dest), 0, "{what}");
        assert_eq!(before, sb.host(), "{what}");
    }

    // Headers of an ordinary size still pass: a 1 MiB PAX record.
    let mut sb = Sandbox::new();
    let dest = sb.layer("layer");
    let tar = Tar::new()
        .pax(&[("comment", &vec![b'a'; 1 << 20])])
        .entry(&Header::new("f", REGULAR).owner(own_uid(), own_gid()), b"x")
        .finish();
    let (limits, mut budget) = default_budget();
    unpack_tar(&tar[..], &dest, &[], &limits, &mut budget).unwrap();
    assert_eq!(fs::read(dest.join("f")).unwrap(), b"x");
}

#[test]
fn too_many_entries_are_refused() {
    let Some((mut sb, dest)) = root_sandbox() else {
        return;
    };
    let mut tar = Tar::new();
    for i in 0..11 {
        tar = tar.file(format!("f{i}"), b"x");
    }
    let tar = tar.finish();
    let before = sb.host();
    let limits = Limits {
        max_layer_entries: 10,
        ..Limits::default()
    };
    let mut budget = limits.max_image_bytes;
    let err = unpack_tar(&tar[..], &dest, &[], &limits, &mut budget).unwrap_err();
    assert!(
        matches!(err, UnpackError::TooManyEntries { limit: 10, ref entry } if entry == "f10"),
        "{err:?}"
    );
    assert!(!dest.join("f10").exists(), "the 11th entry was not written");
    assert_eq!(before, sb.host());

    // Exactly at the limit is fine.
    let dest = sb.layer("exact");
    let mut tar = Tar::new();
    for i in 0..10 {
        tar = tar.file(format!("f{i}"), b"x");
    }
    let mut budget = limits.max_image_bytes;
    let u = unpack_tar(&tar.finish()[..], &dest, &[], &limits, &mut budget).unwrap();
    assert_eq!(u.entries, 10);
}

#[test]
fn path_longer_than_the_limit_is_refused() {
    let mut sb = Sandbox::new();
    let dest = sb.layer("layer");
    let name = "p".repeat(80);
    let tar = Tar::new().file(&name, b"x").finish();
    let limits = Limits {
        max_path_bytes: 50,
        ..Limits::default()
    };
    let mut budget = limits.max_image_bytes;
    let result = unpack_tar(&tar[..], &dest, &[], &limits, &mut budget);
    assert_entry_refused(result, &name, |p| {
        matches!(p, EntryProblem::PathTooLong { len: 80, limit: 50 })
    });
    assert!(!dest.join(&name).exists());

    // A PAX path beyond the default 4096-byte limit.
    let long = format!("{}/f", "d".repeat(5000));
    let tar = Tar::new()
        .pax(&[("path", long.as_bytes())])
        .file("short", b"x")
        .finish();
    sb.refuse(&tar, &[], &long, |p| {
        matches!(
            p,
            EntryProblem::PathTooLong {
                len: 5002,
                limit: 4096
            }
        )
    });
}

#[test]
fn symlink_target_longer_than_the_limit_is_refused() {
    let mut sb = Sandbox::new();
    let target = "t".repeat(5000);
    let tar = Tar::new()
        .pax(&[("linkpath", target.as_bytes())])
        .symlink("link", "short")
        .finish();
    let dest = sb.refuse(&tar, &[], "link", |p| {
        matches!(
            p,
            EntryProblem::PathTooLong {
                len: 5000,
                limit: 4096
            }
        )
    });
    assert!(fs::symlink_metadata(dest.join("link")).is_err());
}

// ---------------------------------------------------------------------------------------------
// What an honest layer gets.

#[test]
fn whiteout_becomes_a_0_0_character_device() {
    let Some((_sandbox, dest)) = root_sandbox() else {
        return;
    };
    let tar = Tar::new()
        .file(".wh.foo", b"")
        .file("d/.wh.bar", b"")
        .finish();
    unpack_ok(&tar, &dest, &[]);
    for path in [dest.join("foo"), dest.join("d/bar")] {
        let md = fs::symlink_metadata(&path).unwrap();
        assert!(md.file_type().is_char_device(), "{path:?}");
        assert_eq!(md.rdev(), 0, "{path:?}");
    }
    assert!(fs::symlink_metadata(dest.join(".wh.foo")).is_err());
    assert!(fs::symlink_metadata(dest.join("d/.wh.bar")).is_err());
}

#[test]
fn opaque_whiteout_sets_the_overlay_xattr() {
    let Some((_sandbox, dest)) = root_sandbox() else {
        return;
    };
    let tar = Tar::new()
        .dir("d/")
        .file("d/.wh..wh..opq", b"")
        .file("d/kept", b"x")
        .finish();
    unpack_ok(&tar, &dest, &[]);
    assert_eq!(
        xattr(&dest.join("d"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(fs::symlink_metadata(dest.join("d/.wh..wh..opq")).is_err());
    assert!(dest.join("d/kept").is_file());
    assert_eq!(xattr(&dest, "trusted.overlay.opaque"), None);
}

#[test]
fn hardlink_within_the_layer_shares_the_inode() {
    let Some((_sandbox, dest)) = root_sandbox() else {
        return;
    };
    let tar = Tar::new()
        .file("bin/busybox", b"#!busybox")
        .hardlink("bin/sh", "bin/busybox")
        .hardlink("usr/bin/env", "./bin/busybox")
        .finish();
    unpack_ok(&tar, &dest, &[]);
    let a = fs::metadata(dest.join("bin/busybox")).unwrap();
    let b = fs::metadata(dest.join("bin/sh")).unwrap();
    let c = fs::metadata(dest.join("usr/bin/env")).unwrap();
    assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
    assert_eq!((a.dev(), a.ino()), (c.dev(), c.ino()));
    assert_eq!(a.nlink(), 3);
    assert_eq!(fs::read(dest.join("usr/bin/env")).unwrap(), b"#!busybox");
}

#[test]
fn setuid_modes_and_owners_are_preserved() {
    let Some((_sandbox, dest)) = root_sandbox() else {
        return;
    };
    let tar = Tar::new()
        .entry(
            &Header::new("bin/su", REGULAR)
                .mode(0o4755)
                .owner(1000, 1000),
            b"su",
        )
        .entry(
            &Header::new("bin/wall", REGULAR).mode(0o2755).owner(0, 5),
            b"wall",
        )
        .entry(
            &Header::new("tmp/", DIRECTORY)
                .mode(0o1777)
                .owner(1000, 1000),
            b"",
        )
        .finish();
    unpack_ok(&tar, &dest, &[]);
    let su = fs::metadata(dest.join("bin/su")).unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755);
    assert_eq!((su.uid(), su.gid()), (1000, 1000));
    let wall = fs::metadata(dest.join("bin/wall")).unwrap();
    assert_eq!(wall.mode() & 0o7777, 0o2755);
    assert_eq!((wall.uid(), wall.gid()), (0, 5));
    let tmp = fs::metadata(dest.join("tmp")).unwrap();
    assert_eq!(tmp.mode() & 0o7777, 0o1777);
    assert_eq!((tmp.uid(), tmp.gid()), (1000, 1000));
}

#[test]
fn absolute_symlink_is_created_as_is() {
    let Some((sb, dest)) = root_sandbox() else {
        return;
    };
    let before = sb.host();
    let victim = sb.outside().join("victim");
    let tar = Tar::new()
        .entry(
            &Header::new("etc/alt", SYMLINK)
                .link(bytes_of(&victim))
                .owner(1000, 1000),
            b"",
        )
        .symlink("rel", "../../../victim")
        .finish();
    unpack_ok(&tar, &dest, &[]);
    let md = fs::symlink_metadata(dest.join("etc/alt")).unwrap();
    assert!(md.file_type().is_symlink());
    assert_eq!((md.uid(), md.gid()), (1000, 1000), "lchown, not chown");
    assert_eq!(fs::read_link(dest.join("etc/alt")).unwrap(), victim);
    assert_eq!(
        fs::read_link(dest.join("rel")).unwrap(),
        Path::new("../../../victim")
    );
    // Nothing was followed: the target kept its owner and content.
    let v = fs::metadata(&victim).unwrap();
    assert_eq!((v.uid(), v.gid()), (0, 0));
    assert_eq!(before, sb.host());
}

#[test]
fn fifo_and_character_device_are_created() {
    let Some((_sandbox, dest)) = root_sandbox() else {
        return;
    };
    let tar = Tar::new()
        .entry(&Header::new("run/fifo", FIFO).mode(0o620), b"")
        .entry(&Header::new("dev/null", CHAR).mode(0o666).dev(1, 3), b"")
        .finish();
    unpack_ok(&tar, &dest, &[]);
    let fifo = fs::symlink_metadata(dest.join("run/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o620);
    let null = fs::symlink_metadata(dest.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.mode() & 0o7777, 0o666);
    assert_eq!(
        (
            rustix::fs::major(null.rdev()),
            rustix::fs::minor(null.rdev())
        ),
        (1, 3)
    );
}

#[test]
fn mtimes_of_files_and_directories_are_preserved() {
    let Some((_sandbox, dest)) = root_sandbox() else {
        return;
    };
    let tar = Tar::new()
        .entry(&Header::new("d/", DIRECTORY).mtime(1_000_000_000), b"")
        .entry(&Header::new("d/f", REGULAR).mtime(1_234_567_890), b"x")
        // Created after d/'s entry: d/'s mtime must still be the tar's.
        .entry(&Header::new("d/e/", DIRECTORY).mtime(1_100_000_000), b"")
        .entry(&Header::new("d/e/g", REGULAR).mtime(1_200_000_000), b"y")
        .entry(
            &Header::new("d/l", SYMLINK).link("f").mtime(1_300_000_000),
            b"",
        )
        .finish();
    unpack_ok(&tar, &dest, &[]);
    let mtime = |p: &str| fs::symlink_metadata(dest.join(p)).unwrap().mtime();
    assert_eq!(mtime("d"), 1_000_000_000);
    assert_eq!(mtime("d/f"), 1_234_567_890);
    assert_eq!(mtime("d/e"), 1_100_000_000);
    assert_eq!(mtime("d/e/g"), 1_200_000_000);
    assert_eq!(mtime("d/l"), 1_300_000_000);
}

#[test]
fn user_xattr_from_pax_is_applied() {
    let Some((_sandbox, dest)) = root_sandbox() else {
        return;
    };
    let tar = Tar::new()
        .pax(&[("SCHILY.xattr.user.skiff", b"hello")])
        .file("f", b"x")
        .pax(&[("SCHILY.xattr.user.dir", b"d")])
        .dir("d/")
        .finish();
    unpack_ok(&tar, &dest, &[]);
    assert_eq!(
        xattr(&dest.join("f"), "user.skiff").as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(
        xattr(&dest.join("d"), "user.dir").as_deref(),
        Some(&b"d"[..])
    );
}
