//! Harness for Skiff's end-to-end tests: real components started on loopback and torn down on
//! drop (Debian's `docker-registry`, a bearer-token service signing with openssl), test images
//! built from Debian's busybox-static and pushed with skopeo, and the `skiff` binary itself.
//!
//! Tests that need root say so and fail when `SKIFF_REQUIRE_PRIVILEGED=1` (CI sets it), rather
//! than passing green without running.

#![allow(missing_debug_implementations)] // test fixtures, never printed

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

/// Whether the test may run privileged steps; if not, says why, and panics under CI's
/// `SKIFF_REQUIRE_PRIVILEGED=1` so that a skip is never silent there.
pub fn privileged(test: &str) -> bool {
    if rustix_is_root() {
        return true;
    }
    let msg = format!("{test}: needs root (mounts, chown, mknod); not running as root");
    if std::env::var("SKIFF_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{msg}, and SKIFF_REQUIRE_PRIVILEGED=1 forbids skipping");
    }
    eprintln!("SKIP {msg}");
    false
}

fn rustix_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Path of a binary of this workspace (built by `cargo build --workspace` / `cargo test`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} not built: run `cargo build --workspace` first",
        bin.display()
    );
    bin
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// The SHA-256 digest string of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A `skiff` CLI bound to a private root and config file.
pub struct Skiff {
    /// Scratch directory holding the root and config.
    pub dir: TempDir,
    /// The store root.
    pub root: PathBuf,
    /// The config file.
    pub config: PathBuf,
}

impl Skiff {
    /// A fresh store with `config` as images.toml.
    pub fn new(config: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("skiff-e2e-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().join("root");
        let cfg = dir.path().join("images.toml");
        fs::write(&cfg, config).expect("write config");
        Self {
            root,
            config: cfg,
            dir,
        }
    }

    /// Replaces the config file.
    pub fn set_config(&self, config: &str) {
        fs::write(&self.config, config).expect("write config");
    }

    /// A command running `skiff image <args>` on this store.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(workspace_bin("skiff"));
        c.arg("image")
            .args(args)
            .arg("--root")
            .arg(&self.root)
            .arg("--config")
            .arg(&self.config)
            .env("HOME", self.dir.path())
            .env_remove("DOCKER_CONFIG");
        c
    }

    /// Runs `skiff image <args>`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run skiff")
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "skiff image {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and expects failure; returns stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "skiff image {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Asserts `skiff image verify` finds the store consistent.
    pub fn assert_consistent(&self) {
        self.ok(&["verify"]);
    }
}

impl Drop for Skiff {
    /// A test that failed half-way may leave root filesystems mounted: unmount them, so the
    /// scratch directory can go and the host keeps no mount of ours.
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir(self.root.join("rootfs")) else {
            return;
        };
        for e in entries.flatten() {
            let merged = e.path().join("merged");
            if merged.is_dir() {
                let _ = Command::new("umount").arg("-l").arg(&merged).output();
            }
        }
    }
}

/// Runs a command, failing with its output on error.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A self-signed RSA certificate (PEM) and its key, valid two days, made with openssl.
fn self_signed(key: &Path, cert: &Path, cn: &str) -> Result<()> {
    sh(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-subj")
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert))
    .map(|_| ())
}

/// A CA and a server certificate for 127.0.0.1, made with openssl.
pub struct Tls {
    /// The CA certificate (PEM) clients must trust.
    pub ca: PathBuf,
    /// Server certificate.
    pub cert: PathBuf,
    /// Server key.
    pub key: PathBuf,
}

impl Tls {
    /// Generates into `dir`.
    pub fn generate(dir: &Path) -> Result<Self> {
        let p = |n: &str| dir.join(n);
        self_signed(&p("ca.key"), &p("ca.pem"), "skiff-test-ca")?;
        sh(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .arg("-keyout")
            .arg(p("server.key"))
            .arg("-out")
            .arg(p("server.csr")))?;
        fs::write(
            p("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )?;
        sh(Command::new("openssl")
            .args(["x509", "-req", "-days", "1", "-CAcreateserial"])
            .arg("-in")
            .arg(p("server.csr"))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-extfile")
            .arg(p("ext.cnf"))
            .arg("-out")
            .arg(p("server.pem")))?;
        Ok(Self {
            ca: p("ca.pem"),
            cert: p("server.pem"),
            key: p("server.key"),
        })
    }
}

/// How a test registry authenticates.
pub enum Auth<'a> {
    /// Anonymous.
    None,
    /// htpasswd basic auth.
    Basic(&'a str, &'a str),
    /// The bearer-token flow against a [`TokenServer`].
    Token(&'a TokenServer),
}

/// Debian's docker-registry (distribution 2.8) on a loopback port.
pub struct Registry {
    child: Child,
    /// Its port.
    pub port: u16,
    /// Its scratch directory (storage, config, log).
    pub dir: TempDir,
    /// TLS material when it serves HTTPS.
    pub tls: Option<Tls>,
}

impl Registry {
    /// Starts a registry over plain HTTP.
    pub fn start(auth: Auth<'_>) -> Result<Self> {
        Self::start_with(auth, false)
    }

    /// Starts a registry, with HTTPS if `tls`.
    pub fn start_with(auth: Auth<'_>, tls: bool) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("skiff-registry-")
            .tempdir()?;
        let port = free_port();
        let tls = if tls {
            Some(Tls::generate(dir.path())?)
        } else {
            None
        };
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some(t) = &tls {
            cfg += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                t.cert.display(),
                t.key.display()
            );
        }
        match auth {
            Auth::None => {}
            Auth::Basic(user, pass) => {
                let line = sh(Command::new("htpasswd").args(["-Bbn", user, pass]))?;
                let file = dir.path().join("htpasswd");
                fs::write(&file, line.trim())?;
                cfg += &format!(
                    "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                    file.display()
                );
            }
            Auth::Token(ts) => {
                cfg += &format!(
                    "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    ts.port,
                    TokenServer::SERVICE,
                    TokenServer::ISSUER,
                    ts.cert.display()
                );
            }
        }
        let cfg_path = dir.path().join("config.yml");
        fs::write(&cfg_path, cfg)?;
        let log = fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start docker-registry (apt-get install docker-registry)")?;
        let reg = Self {
            child,
            port,
            dir,
            tls,
        };
        wait_for_port(port)?;
        Ok(reg)
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many times the blob `digest` was fetched (GET) from this registry.
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(&format!("/blobs/{digest} ")))
            .count()
    }

    /// Pushes an OCI layout tag here with skopeo (all platforms of an index).
    pub fn push_layout(
        &self,
        layout: &Path,
        tag: &str,
        repo: &str,
        creds: Option<(&str, &str)>,
    ) -> Result<()> {
        self.push_layout_as(layout, tag, repo, creds, "oci")
    }

    /// Pushes as `push_layout`, converting to `format` (`oci` or Docker's `v2s2`).
    pub fn push_layout_as(
        &self,
        layout: &Path,
        tag: &str,
        repo: &str,
        creds: Option<(&str, &str)>,
        format: &str,
    ) -> Result<()> {
        let mut c = Command::new("skopeo");
        c.args([
            "copy",
            "--all",
            "--dest-tls-verify=false",
            "--format",
            format,
        ]);
        if let Some((u, p)) = creds {
            c.arg(format!("--dest-creds={u}:{p}"));
        }
        c.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.host()));
        sh(&mut c).map(|_| ())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listening on 127.0.0.1:{port} after 20 s")
}

/// A bearer-token service as the distribution token spec describes: checks basic credentials,
/// and answers with an RS256 JWT whose `x5c` certificate the registry trusts.
pub struct TokenServer {
    /// Its port.
    pub port: u16,
    /// The certificate the registry is configured to trust.
    pub cert: PathBuf,
    _dir: TempDir,
    stop: Arc<AtomicBool>,
}

impl TokenServer {
    /// The `service` the registry and tokens name.
    pub const SERVICE: &'static str = "skiff-test-registry";
    /// The issuer.
    pub const ISSUER: &'static str = "skiff-test-issuer";

    /// Starts a token service that grants pull and push to `user:pass` only.
    pub fn start(user: &str, pass: &str) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("skiff-token-").tempdir()?;
        let key = dir.path().join("token.key");
        let cert = dir.path().join("token.pem");
        self_signed(&key, &cert, "skiff-test-token")?;
        let der = sh_bytes(
            Command::new("openssl")
                .args(["x509", "-outform", "der", "-in"])
                .arg(&cert),
        )?;
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = serve_token(conn, &want, &key, &x5c);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Self {
            port,
            cert,
            _dir: dir,
            stop,
        })
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn sh_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

fn serve_token(conn: TcpStream, want_auth: &str, key: &Path, x5c: &str) -> Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorized = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
            && v.trim() == want_auth
        {
            authorized = true;
        }
    }
    let mut conn = conn;
    if !authorized {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
        write!(
            conn,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut access = Vec::new();
    for pair in query.split('&') {
        if let Some(scope) = pair.strip_prefix("scope=") {
            let scope = scope
                .replace("%3A", ":")
                .replace("%2F", "/")
                .replace("%2C", ",");
            let parts: Vec<&str> = scope.split(':').collect();
            if let [kind, name, actions] = parts.as_slice() {
                access.push(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}));
            }
        }
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": TokenServer::ISSUER, "sub": "tester", "aud": TokenServer::SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", std::process::id()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(signing_input.as_bytes())?;
    let sig = child.wait_with_output()?.stdout;
    let token = format!("{signing_input}.{}", b64(&sig));
    let body =
        serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string();
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

/// How a test layer is compressed.
#[derive(Clone, Copy, Debug)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    fn media_type(self) -> &'static str {
        match self {
            Self::None => "application/vnd.oci.image.layer.v1.tar",
            Self::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Self::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::None => data.to_vec(),
            Self::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).expect("gzip");
                e.finish().expect("gzip")
            }
            Self::Zstd => zstd::encode_all(data, 3).expect("zstd"),
        }
    }
}

/// Builds one layer tar.
pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    /// An empty layer.
    pub fn new() -> Self {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Complete);
        Self { builder }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn data(mut self, kind: tar::EntryType, mode: u32, path: &str, data: &[u8]) -> Self {
        let mut h = Self::header(kind, mode, data.len() as u64);
        self.builder
            .append_data(&mut h, path, data)
            .expect("tar entry");
        self
    }

    fn link(mut self, kind: tar::EntryType, mode: u32, path: &str, target: &str) -> Self {
        let mut h = Self::header(kind, mode, 0);
        self.builder
            .append_link(&mut h, path, target)
            .expect("tar link");
        self
    }

    /// A regular file.
    pub fn file(self, path: &str, data: &[u8], mode: u32) -> Self {
        self.data(tar::EntryType::Regular, mode, path, data)
    }

    /// A regular file with owner and mtime.
    pub fn file_owned(
        mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        self.builder
            .append_data(&mut h, path, data)
            .expect("tar file");
        self
    }

    /// A directory.
    pub fn dir(self, path: &str, mode: u32) -> Self {
        self.data(tar::EntryType::Directory, mode, path, &[])
    }

    /// A symlink.
    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.link(tar::EntryType::Symlink, 0o777, path, target)
    }

    /// A hard link to an earlier entry.
    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.link(tar::EntryType::Link, 0o644, path, target)
    }

    /// A FIFO.
    pub fn fifo(self, path: &str) -> Self {
        self.data(tar::EntryType::Fifo, 0o600, path, &[])
    }

    /// A whiteout of `path` (the OCI `.wh.` form).
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = path
            .rsplit_once('/')
            .map(|(d, n)| (format!("{d}/"), n))
            .unwrap_or((String::new(), path));
        self.file(&format!("{dir}.wh.{name}"), b"", 0o644)
    }

    /// An opaque marker for directory `dir`.
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    /// busybox-static at /bin/busybox with its applet links in /bin.
    pub fn busybox(self) -> Self {
        let data = fs::read("/bin/busybox")
            .expect("busybox-static installed (apt-get install busybox-static)");
        let mut l = self.dir("bin", 0o755).file("bin/busybox", &data, 0o755);
        for applet in [
            "sh", "echo", "cat", "ls", "sleep", "true", "false", "env", "id",
        ] {
            l = l.symlink(&format!("bin/{applet}"), "busybox");
        }
        l
    }

    /// The tar bytes.
    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("tar finish")
    }
}

/// One platform's image in a test layout.
pub struct ImageSpec {
    /// e.g. "amd64".
    pub arch: String,
    /// e.g. Some("v8").
    pub variant: Option<String>,
    /// Layers (tar bytes and compression), bottom first.
    pub layers: Vec<(Vec<u8>, Compression)>,
}

/// Writes an OCI image layout at `dir` with `tag` pointing at a manifest (one spec) or an index
/// (several). Returns the digest of what the tag points at.
pub fn write_layout(dir: &Path, tag: &str, specs: &[ImageSpec]) -> Result<String> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let put = |data: &[u8]| -> Result<(String, usize)> {
        let d = sha256(data);
        fs::write(blobs.join(&d[7..]), data)?;
        Ok((d, data.len()))
    };
    let mut manifests = Vec::new();
    for spec in specs {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (tar, comp) in &spec.layers {
            diff_ids.push(sha256(tar));
            let (d, size) = put(&comp.compress(tar))?;
            layers.push(
                serde_json::json!({"mediaType": comp.media_type(), "digest": d, "size": size}),
            );
        }
        let mut config = serde_json::json!({
            "architecture": spec.arch, "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if let Some(v) = &spec.variant {
            config["variant"] = serde_json::json!(v);
        }
        let (cd, cs) = put(config.to_string().as_bytes())?;
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": layers,
        });
        let (md, ms) = put(manifest.to_string().as_bytes())?;
        let mut platform = serde_json::json!({"architecture": spec.arch, "os": "linux"});
        if let Some(v) = &spec.variant {
            platform["variant"] = serde_json::json!(v);
        }
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms, "platform": platform,
        }));
    }
    let top = if manifests.len() == 1 {
        let mut m = manifests.remove(0);
        m.as_object_mut().expect("object").remove("platform");
        m
    } else {
        let index = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests,
        });
        let (d, s) = put(index.to_string().as_bytes())?;
        serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": s})
    };
    let digest = top["digest"].as_str().expect("digest").to_owned();
    let mut entry = top;
    entry["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [entry]});
    fs::write(dir.join("index.json"), index.to_string())?;
    Ok(digest)
}

/// What a file system entry looks like, for comparing trees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// "file", "dir", "symlink", "fifo", "char", "block".
    pub kind: &'static str,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Content digest (files), link target (symlinks), device number (devices).
    pub content: String,
    /// Modification time (None for directories, whose mtimes tools handle differently).
    pub mtime: Option<i64>,
}

/// Walks `root` without following symlinks.
pub fn tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
    let mut entries: Vec<_> = fs::read_dir(dir).expect("read dir").flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let m = fs::symlink_metadata(&path).expect("lstat");
        let ft = m.file_type();
        let rel = path
            .strip_prefix(root)
            .expect("under root")
            .display()
            .to_string();
        let (kind, content) = if ft.is_dir() {
            ("dir", String::new())
        } else if ft.is_symlink() {
            (
                "symlink",
                fs::read_link(&path)
                    .expect("readlink")
                    .display()
                    .to_string(),
            )
        } else if ft.is_file() {
            let mut h = Sha256::new();
            let mut f = fs::File::open(&path).expect("open");
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            ("file", hex::encode(h.finalize()))
        } else if ft.is_fifo() {
            ("fifo", String::new())
        } else if ft.is_char_device() {
            ("char", m.rdev().to_string())
        } else {
            ("block", m.rdev().to_string())
        };
        out.insert(
            rel,
            Node {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                content,
                mtime: (!ft.is_dir()).then(|| m.mtime()),
            },
        );
        if ft.is_dir() {
            walk(root, &path, out);
        }
    }
}

/// Differences between two trees, one line each (empty when equal).
pub fn diff_trees(a: &BTreeMap<String, Node>, b: &BTreeMap<String, Node>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => out.push(format!("only in first: {k}")),
            Some(w) if w != v => out.push(format!("{k}: {v:?} != {w:?}")),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        out.push(format!("only in second: {k}"));
    }
    out
}

/// /etc/passwd and /etc/group of the test images: root and an `app` user (1000) in `staff`.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
/// See [`PASSWD`].
pub const GROUP: &str = "root:x:0:\napp:x:1000:\nstaff:x:50:app\n";

/// The busybox test image's single layer: busybox, /etc/passwd and group, /tmp.
pub fn busybox_layer() -> Vec<u8> {
    Layer::new()
        .busybox()
        .dir("etc", 0o755)
        .file("etc/passwd", PASSWD.as_bytes(), 0o644)
        .file("etc/group", GROUP.as_bytes(), 0o644)
        .dir("tmp", 0o1777)
        .finish()
}

/// `skiff-shim run` of container `id` from `bundle` (its exit file and logs inside it), with
/// libcontainer's state in `state` and `stop_timeout` seconds before SIGKILL; output piped.
pub fn shim_run(id: &str, bundle: &Path, state: &Path, stop_timeout: u64) -> Command {
    let mut c = Command::new(workspace_bin("skiff-shim"));
    c.args(["run", "--id", id])
        .arg("--bundle")
        .arg(bundle)
        .arg("--state-root")
        .arg(state)
        .arg("--exit-file")
        .arg(bundle.join("exit"))
        .arg("--log-dir")
        .arg(bundle.join("logs"))
        .args(["--stop-timeout", &stop_timeout.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Removes cgroup `parent` and its descendants (empty ones: their processes must be gone) from
/// every hierarchy, v1 and v2.
pub fn remove_cgroup_parent(parent: &str) {
    fn remove(dir: &Path) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove(&e.path());
            }
        }
        let _ = fs::remove_dir(dir);
    }
    for ctrl in fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = ctrl.path().join(parent);
        if p.is_dir() {
            remove(&p);
        }
    }
}

/// A benchmark binary's `main`: `run` when it may run (see [`bench_may_run`]); its error,
/// printed, fails the binary.
pub fn bench_main(what: &str, run: impl FnOnce() -> anyhow::Result<()>) -> std::process::ExitCode {
    if let Err(code) = bench_may_run(what) {
        return code;
    }
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The start of a benchmark binary: Ok when it may run (root), else the exit code to return
/// (0 when it says why it cannot run, 1 under `SKIFF_REQUIRE_PRIVILEGED=1`).
pub fn bench_may_run(what: &str) -> std::result::Result<(), std::process::ExitCode> {
    match std::panic::catch_unwind(|| privileged(what)) {
        Ok(true) => Ok(()),
        Ok(false) => Err(std::process::ExitCode::SUCCESS),
        Err(_) => Err(std::process::ExitCode::FAILURE),
    }
}

/// A benchmark knob: the positive number in environment variable `name`, else `default`.
pub fn env_num(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => anyhow::bail!("{name}={v:?} is not a positive number"),
        },
        Err(_) => Ok(default),
    }
}

/// The `p` quantile (0..=1) of `v` by the nearest-rank method.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The first line of `cmd args`'s output, trimmed; `?` when it cannot run (a version for a
/// benchmark's report).
pub fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

/// Writes the busybox test image ([`busybox_layer`]) as an OCI layout at `dir`, tag `1`.
pub fn write_busybox_layout(dir: &Path) {
    write_layout(
        dir,
        "1",
        &[ImageSpec {
            arch: "amd64".into(),
            variant: None,
            layers: vec![(busybox_layer(), Compression::Gzip)],
        }],
    )
    .expect("write image layout");
}

/// A skiffd of its own (state, socket, cgroup parent) started from the workspace's binary,
/// with the busybox test image loaded as `local/bb:1`. On drop it stops its tasks, kills skiffd
/// and removes what is left (the cgroup parent), so tests leave nothing behind.
pub struct Skiffd {
    /// Scratch directory holding root, run dir and config.
    pub dir: TempDir,
    /// The state root (image store, task records).
    pub root: PathBuf,
    /// The run dir (socket, libcontainer state).
    pub run_dir: PathBuf,
    /// The node config file.
    pub config: PathBuf,
    /// Parent of its task cgroups.
    pub cgroup_parent: String,
    /// The network namespace it runs in, standing in for the node's (its bridge, links and
    /// nftables table live there, never in the host's).
    pub netns: PathBuf,
    child: Option<Child>,
}

/// The image every daemon test runs.
pub const BUSYBOX: &str = "local/bb:1";

impl Skiffd {
    /// Starts a skiffd with `extra` appended to its config.
    pub fn start(extra: &str) -> Self {
        let mut d = Self::prepare(extra);
        d.spawn();
        d
    }

    /// A node ready to start (its namespace, config and the test image), not started yet.
    pub fn prepare(extra: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("skiffd-e2e-")
            .tempdir()
            .expect("tempdir");
        let (root, run_dir) = (dir.path().join("root"), dir.path().join("run"));
        let cgroup_parent = format!(
            "skiff-test-{}",
            dir.path().file_name().unwrap().to_string_lossy()
        );
        let images = dir.path().join("images.toml");
        fs::write(&images, "").expect("write images.toml");
        let config = dir.path().join("skiffd.toml");
        fs::write(
            &config,
            format!(
                "root = {root:?}\nrun_dir = {run_dir:?}\nimages_config = {images:?}\ncgroup_parent = {cgroup_parent:?}\nimage_pull_behavior = \"prefer-cached\"\ncredentials_dir = {creds:?}\n{extra}\n",
                creds = dir.path().join("creds"),
            ),
        )
        .expect("write skiffd.toml");
        let netns = dir.path().join("node.netns");
        skiff_netd::nsfs::bind_new(nix::sched::CloneFlags::CLONE_NEWNET, &netns)
            .expect("make the node's network namespace");
        let d = Self {
            dir,
            root,
            run_dir,
            config,
            cgroup_parent,
            netns,
            child: None,
        };
        d.sh("ip link set lo up");
        let layout = d.dir.path().join("layout");
        write_busybox_layout(&layout);
        let out = Command::new(workspace_bin("skiff"))
            .args(["image", "load", "--name", "local/bb"])
            .arg(&layout)
            .arg("--root")
            .arg(&d.root)
            .arg("--config")
            .arg(&images)
            .output()
            .expect("run skiff image load");
        assert!(out.status.success(), "load: {out:?}");
        d
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("skiffd.sock")
    }

    /// (Re)starts the daemon and waits for its socket.
    pub fn spawn(&mut self) {
        let _ = fs::remove_file(self.socket());
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("skiffd.log"))
            .expect("skiffd log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(workspace_bin("skiffd"))
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn skiffd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "skiffd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `sh -c script` in the node's network namespace, asserting success; returns stdout.
    pub fn sh(&self, script: &str) -> String {
        ns_sh(&self.netns, script)
    }

    /// skiffd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("skiffd.log")).unwrap_or_default()
    }

    /// skiffd's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` skiffd (its tasks' shims live on).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A `skiff` command talking to this skiffd.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(workspace_bin("skiff"));
        c.args(args).env("SKIFF_SOCKET", self.socket());
        c
    }

    /// Runs `skiff <args>`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("run skiff");
        assert!(
            out.status.success(),
            "skiff {args:?} failed: {}\n{}\nskiffd log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `skiff task run -f` on a definition whose containers are `containers` (a JSON
    /// array's contents; `networkMode` none, image [`BUSYBOX`] unless given); returns the id.
    pub fn run(&self, containers: &str, detach: bool) -> String {
        self.run_def(&format!(
            r#"{{"family":"test","networkMode":"none","memory":"256","containerDefinitions":[{containers}]}}"#
        ), detach)
    }

    /// Runs `skiff task run -f` on a whole task definition; returns the task id.
    pub fn run_def(&self, def: &str, detach: bool) -> String {
        let file = self
            .dir
            .path()
            .join(format!("def-{}.json", sha256(def.as_bytes())));
        fs::write(&file, def).expect("write task definition");
        let mut args = vec!["task", "run", "-f", file.to_str().unwrap()];
        if detach {
            args.push("--detach");
        }
        let out = self.cmd(&args).output().expect("run skiff");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let id = stdout.lines().next().unwrap_or("").trim().to_owned();
        assert_eq!(
            id.len(),
            32,
            "skiff task run: {stdout}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        id
    }

    /// The task's record as `skiff task describe` prints it.
    pub fn describe(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["task", "describe", id])).expect("describe JSON")
    }

    /// Waits until the task is STOPPED; returns its record.
    pub fn wait_stopped(&self, id: &str) -> serde_json::Value {
        let _ = self
            .cmd(&["task", "wait", id])
            .output()
            .expect("skiff task wait");
        let rec = self.describe(id);
        assert_eq!(rec["lastStatus"], "STOPPED", "{rec:#}");
        rec
    }

    /// Polls the task's record until `f` holds (at most `secs`).
    pub fn wait_for(
        &self,
        id: &str,
        secs: u64,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let rec = self.describe(id);
            if f(&rec) {
                return rec;
            }
            assert!(
                Instant::now() < deadline,
                "timed out; task: {rec:#}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Container `name` of a task record.
    pub fn container<'a>(rec: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
        rec["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("no container {name} in {rec:#}"))
    }

    /// What of this node exists on the host: task cgroups, mounts under the root, libcontainer
    /// state, root filesystem leases. Empty when nothing is left.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        for ctrl in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = ctrl.path().join(&self.cgroup_parent);
            for e in fs::read_dir(&p).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    found.push(format!("cgroup {}", e.path().display()));
                }
            }
        }
        // Mounts under the state root (root filesystems) or the run dir (task namespaces).
        let (root, run) = (
            self.root.display().to_string(),
            self.run_dir.display().to_string(),
        );
        for line in fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
        {
            if line
                .split_whitespace()
                .nth(4)
                .is_some_and(|m| m.starts_with(&root) || m.starts_with(&run))
            {
                found.push(format!("mount {line}"));
            }
        }
        for e in fs::read_dir(self.run_dir.join("containers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            found.push(format!("container state {}", e.path().display()));
        }
        for e in fs::read_dir(self.root.join("rootfs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            found.push(format!("rootfs {}", e.path().display()));
        }
        // Networking: task namespace files, task links, port mappings, leases.
        for e in fs::read_dir(self.run_dir.join("netns"))
            .into_iter()
            .flatten()
            .flatten()
        {
            found.push(format!("netns {}", e.path().display()));
        }
        for line in self.sh("ip -o link show").lines() {
            let name = line
                .split(": ")
                .nth(1)
                .unwrap_or("")
                .split('@')
                .next()
                .unwrap_or("");
            if name.len() == 15 && name.starts_with("sk") {
                found.push(format!("link {name}"));
            }
        }
        let table = self.sh("nft list table ip skiff 2>/dev/null || true");
        if table.contains("elements") {
            found.push(format!("port mappings {table}"));
        }
        let leases = fs::read_to_string(self.root.join("network/leases.json")).unwrap_or_default();
        let leases: serde_json::Value = serde_json::from_str(&leases).unwrap_or_default();
        if leases["leases"].as_object().is_some_and(|l| !l.is_empty()) {
            found.push(format!("leases {}", leases["leases"]));
        }
        found
    }
}

impl Drop for Skiffd {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Ok(out) = self.cmd(&["task", "ls", "-q"]).output()
        {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = self.cmd(&["task", "stop", id]).output();
            }
        }
        self.kill9();
        remove_cgroup_parent(&self.cgroup_parent);
        // Task namespaces of tasks that did not stop, then the node's.
        for e in fs::read_dir(self.run_dir.join("netns"))
            .into_iter()
            .flatten()
            .flatten()
        {
            skiff_netd::nsfs::unbind(&e.path());
        }
        skiff_netd::nsfs::unbind(&self.netns);
    }
}

/// Runs `shim` (a `skiff-shim exec --tty`, or `skiff exec -t`) with a new pty of 40 rows and 100 columns as its
/// stdio, types `input`, and returns its exit code and everything it wrote (without the
/// terminal's carriage returns). Checks that the shim restored the terminal's settings.
pub fn in_pty(mut shim: Command, input: &str) -> (i32, String) {
    use nix::pty::{Winsize, openpty};
    use nix::sys::termios::tcgetattr;
    use std::io::{Read, Write};

    let size = Winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).unwrap();
    let before = tcgetattr(&pty.master).unwrap();
    shim.stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(pty.slave);
    let mut child = shim.spawn().unwrap();
    // Without the test's copies of the slave, the master reads EIO once the shim is gone.
    drop(shim);
    let mut master = std::fs::File::from(pty.master);
    master.write_all(input.as_bytes()).unwrap();
    let mut reader = master.try_clone().unwrap();
    let output = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out); // ends with EIO
        out
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = String::from_utf8_lossy(&output.join().unwrap()).replace('\r', "");
    let after = tcgetattr(&master).unwrap();
    assert_eq!(
        after.local_flags, before.local_flags,
        "terminal restored: {out}"
    );
    assert_eq!(
        after.input_flags, before.input_flags,
        "terminal restored: {out}"
    );
    (status.code().unwrap_or(-1), out)
}

/// Stops task `id` through skiffd's API, waiting until it is stopped, and removes it: what the
/// benchmarks do between rounds.
pub fn stop_and_remove(
    rt: &tokio::runtime::Runtime,
    client: &skiff_runtime::client::Client,
    id: &str,
) -> Result<()> {
    use bytes::Bytes;
    use hyper::Method;
    let _: serde_json::Value = rt.block_on(client.call(
        Method::POST,
        &format!("/v1/tasks/{id}/stop?wait=stopped"),
        Bytes::new(),
    ))?;
    let _: serde_json::Value =
        rt.block_on(client.call(Method::DELETE, &format!("/v1/tasks/{id}"), Bytes::new()))?;
    Ok(())
}

/// Runs `f` on a thread of its own inside the network namespace bound at `ns` (sockets it opens
/// stay in that namespace).
pub fn in_netns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = fs::File::open(ns).expect("open network namespace");
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// Runs `sh -c script` in the network namespace bound at `ns`, asserting success; returns stdout.
pub fn ns_sh(ns: &Path, script: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["sh", "-c", script])
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The LAN: a namespace on the other end of the node's uplink (`uplink0`, 192.168.77.1/24; the
/// LAN is .2), routing the awsvpc subnet to the node.
pub struct Lan {
    /// The LAN's namespace.
    pub ns: PathBuf,
}

impl Lan {
    /// Attaches a LAN to node `d`.
    pub fn attach(d: &Skiffd) -> Self {
        let ns = d.dir.path().join("lan.netns");
        skiff_netd::nsfs::bind_new(nix::sched::CloneFlags::CLONE_NEWNET, &ns).unwrap();
        d.sh(&format!(
            "ip link add uplink0 type veth peer name lan0 netns {} && ip addr add 192.168.77.1/24 dev uplink0 && ip link set uplink0 up",
            ns.display()
        ));
        ns_sh(
            &ns,
            "ip link set lo up && ip addr add 192.168.77.2/24 dev lan0 && ip link set lan0 up && ip route add 10.201.0.0/24 via 192.168.77.1",
        );
        Self { ns }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        skiff_netd::nsfs::unbind(&self.ns);
    }
}

/// GET / at `to` from namespace `ns`: the body, or the error.
pub fn get(ns: &Path, to: &str) -> Result<String, String> {
    let to: SocketAddr = to.parse().unwrap();
    in_netns(ns, move || {
        let mut s =
            TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_owned())
    })
}

/// A TCP server in `ns` on `port` answering each connection with the peer's address.
pub fn serve_peer(ns: &Path, port: u16) {
    let l = in_netns(ns, move || TcpListener::bind(("0.0.0.0", port)).unwrap());
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let peer = s.peer_addr().unwrap().ip().to_string();
            // Read the request first: closing a socket with unread data resets the connection,
            // and the client may then lose the answer.
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match std::io::Read::read(&mut s, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(format!("HTTP/1.0 200 OK\r\n\r\n{peer}\n").as_bytes());
        }
    });
}

/// An apid of its own for a test: config, database and log in a scratch directory, the ECS API
/// and the node channel on free loopback ports, and an access key made with `skiff-apid keys create`.
/// Killed on drop.
pub struct Apid {
    /// Scratch directory (config, database, log).
    pub dir: TempDir,
    /// The config file.
    pub config: PathBuf,
    /// The ECS API's port.
    pub port: u16,
    /// The node channel's port.
    pub node_port: u16,
    /// The node channel's address.
    pub node_addr: String,
    /// The access key (id, secret).
    pub key: (String, String),
    /// The operator API's TLS files, when it serves TLS.
    pub tls: Option<Tls>,
    child: Child,
}

impl Apid {
    /// Starts one on a SQLite store and waits until both ports accept connections.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts one with more settings (TOML lines: `database = "postgres://..."`,
    /// `heartbeat_seconds = 2`, ...), which take precedence over the fixture's.
    pub fn start_with(settings: &str) -> Self {
        Self::start_in(settings, false)
    }

    /// Starts one whose operator API serves TLS with a certificate for 127.0.0.1 from a test CA
    /// (`tls.ca`, which the aws CLI is given as `--ca-bundle`).
    pub fn start_tls() -> Self {
        Self::start_in("", true)
    }

    /// Starts one whose node channel listens on `node_addr` (the control network's address,
    /// which nodes in their own namespaces reach), with more settings.
    pub fn start_for_nodes(node_addr: &str, settings: &str) -> Self {
        Self::start_on(node_addr, settings, false)
    }

    fn start_in(settings: &str, tls: bool) -> Self {
        Self::start_on("127.0.0.1", settings, tls)
    }

    fn start_on(node_addr: &str, settings: &str, tls: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("apid-e2e-")
            .tempdir()
            .expect("tempdir");
        let tls = tls.then(|| Tls::generate(dir.path()).expect("test certificates"));
        let (port, node_port) = (free_port(), free_port());
        let config = dir.path().join("apid.toml");
        let mut toml = format!(
            "listen = \"127.0.0.1:{port}\"\nnode_listen = \"{node_addr}:{node_port}\"\nnode_channel_names = [\"localhost\", \"127.0.0.1\", \"{node_addr}\"]\n"
        );
        if !settings.contains("database =") {
            toml.push_str(&format!("database = {:?}\n", dir.path().join("apid.db")));
        }
        if let Some(t) = &tls {
            toml.push_str(&format!(
                "tls_certificate = {:?}\ntls_key = {:?}\n",
                t.cert, t.key
            ));
        }
        toml.push_str(settings);
        fs::write(&config, toml).expect("write apid.toml");
        let k: serde_json::Value =
            serde_json::from_str(&apid_admin(&config, &["keys", "create"])).expect("key JSON");
        let key = (
            k["AccessKey"]["AccessKeyId"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            k["AccessKey"]["SecretAccessKey"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        let child = Self::spawn(&config, &dir.path().join("apid.log"));
        let a = Self {
            dir,
            config,
            port,
            node_port,
            node_addr: node_addr.to_owned(),
            key,
            tls,
            child,
        };
        a.wait_ready();
        a
    }

    fn spawn(config: &Path, log: &Path) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("apid log");
        Command::new(workspace_bin("skiff-apid"))
            .arg("--config")
            .arg(config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn apid")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
            || std::net::TcpStream::connect((self.node_addr.as_str(), self.node_port)).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "apid did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts it again on the same configuration and database (after [`Apid::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.config, &self.path("apid.log"));
        self.wait_ready();
    }

    /// A file in its scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The ECS API's URL.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `apid <args>` (an admin verb) on its config, asserting success; its stdout.
    pub fn admin(&self, args: &[&str]) -> String {
        apid_admin(&self.config, args)
    }

    /// `aws ecs <args>` (Debian's aws CLI) signed with `key`.
    pub fn aws_as(&self, key: (&str, &str), args: &[&str]) -> std::process::Output {
        Command::new("/usr/bin/aws")
            .arg("ecs")
            .args(args)
            .args([
                "--endpoint-url",
                &self.endpoint(),
                "--region",
                "us-east-1",
                "--output",
                "json",
            ])
            .args(
                self.tls
                    .iter()
                    .flat_map(|t| [OsStr::new("--ca-bundle"), t.ca.as_os_str()]),
            )
            .env("AWS_ACCESS_KEY_ID", key.0)
            .env("AWS_SECRET_ACCESS_KEY", key.1)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_PAGER", "")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .output()
            .expect("run the aws CLI (apt-get install awscli)")
    }

    /// `aws ecs <args>` with its key, asserting success; its JSON (null when empty).
    pub fn aws(&self, args: &[&str]) -> serde_json::Value {
        let out = self.aws_as((&self.key.0, &self.key.1), args);
        assert!(
            out.status.success(),
            "aws ecs {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// `aws ecs <args>` signed with `key`, expected to fail; its stderr.
    pub fn aws_err(&self, key: (&str, &str), args: &[&str]) -> String {
        let out = self.aws_as(key, args);
        assert!(!out.status.success(), "aws ecs {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.path("apid.log")).unwrap_or_default()
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Creates an activation for `cluster` good for `count` nodes and writes the CA to
    /// `ca.pem`; the activation's id and code.
    pub fn activation(&self, cluster: &str, count: u32) -> (String, String) {
        fs::write(self.path("ca.pem"), self.admin(&["ca-cert"])).expect("write ca.pem");
        let a: serde_json::Value = serde_json::from_str(&self.admin(&[
            "activations",
            "create",
            "--cluster",
            cluster,
            "--count",
            &count.to_string(),
            "--expires",
            "1h",
        ]))
        .expect("activation JSON");
        (
            a["ActivationId"].as_str().unwrap_or_default().to_owned(),
            a["ActivationCode"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

/// Simulated nodes (`apid/tests/simnode.py`) registered with an activation and syncing with one
/// or more apid replicas; killed on drop. See the script for the control files in `dir`.
pub struct SimNodes {
    /// The nodes' state directory (`node<K>/running`, `node<K>/offline`, `fail`).
    pub dir: PathBuf,
    /// The container instance id of each node.
    pub ids: Vec<String>,
    child: Child,
}

impl SimNodes {
    /// Registers `n` nodes with `activation` at `apids[0]` (trusting its `ca.pem`) and starts
    /// their sync loops against all of `apids`.
    pub fn start(apids: &[&Apid], activation: &(String, String), n: usize, dir: &Path) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../apid/tests/simnode.py");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(&script);
        for a in apids {
            cmd.arg("--endpoint")
                .arg(format!("https://127.0.0.1:{}", a.node_port));
        }
        let log = fs::File::create(dir.join("simnode.log")).expect("simnode log");
        let mut child = cmd
            .arg("--ca")
            .arg(apids[0].path("ca.pem"))
            .args(["--activation-id", &activation.0])
            .args(["--activation-code", &activation.1])
            .args(["--nodes", &n.to_string(), "--wait", "2"])
            .arg("--state")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("run simnode.py");
        let out = child.stdout.take().expect("piped");
        let mut ids = Vec::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)).take(n) {
            let v: serde_json::Value =
                serde_json::from_str(&line.expect("simnode output")).expect("simnode JSON");
            ids.push(
                v["containerInstanceId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        assert_eq!(
            ids.len(),
            n,
            "simnode.py: {}",
            fs::read_to_string(dir.join("simnode.log")).unwrap_or_default()
        );
        Self {
            dir: dir.to_owned(),
            ids,
            child,
        }
    }

    /// The tasks node `k` runs now.
    pub fn running(&self, k: usize) -> Vec<String> {
        fs::read_to_string(self.dir.join(format!("node{k}/running")))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Cuts node `k` off (it stops syncing) or brings it back.
    pub fn set_offline(&self, k: usize, offline: bool) {
        let f = self.dir.join(format!("node{k}/offline"));
        if offline {
            fs::write(f, "").expect("write offline");
        } else {
            let _ = fs::remove_file(f);
        }
    }

    /// Makes tasks of these task definitions (`family:revision`) fail to start.
    pub fn fail(&self, task_definitions: &[&str]) {
        fs::write(self.dir.join("fail"), task_definitions.join("\n")).expect("write fail");
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("simnode.log")).unwrap_or_default()
    }
}

impl Drop for SimNodes {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `skiff-apid --config <config> <args>`, asserting success; its stdout.
fn apid_admin(config: &Path, args: &[&str]) -> String {
    let out = Command::new(workspace_bin("skiff-apid"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run apid");
    assert!(out.status.success(), "apid {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for Apid {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The network between apid and nodes that run in namespaces of their own, standing in for the
/// LAN or WAN of separate boxes: a bridge in the host's namespace with `ADDR`/24, which apid's
/// node channel listens on, and one veth per node (`eth0` inside the node's namespace, its
/// default route through the bridge). Cutting a node off is `ip link set eth0 down` in its
/// namespace. Removed on drop.
pub struct ControlNet {
    bridge: String,
    links: std::sync::Mutex<Vec<String>>,
}

impl ControlNet {
    /// The bridge's (apid's) address.
    pub const ADDR: &'static str = "10.254.77.1";

    /// Makes the bridge.
    pub fn new() -> Self {
        let bridge = format!("skctl{}", std::process::id() % 100_000);
        let _ = Command::new("ip")
            .args(["link", "del", &bridge])
            .stderr(Stdio::null())
            .status();
        let script = format!(
            "ip link add {bridge} type bridge && ip addr add {}/24 dev {bridge} && ip link set {bridge} up",
            Self::ADDR
        );
        sh(Command::new("sh").args(["-c", &script])).expect("make the control bridge");
        Self {
            bridge,
            links: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Connects `node` as host number `k` (2..=250) of the control network.
    pub fn attach(&self, node: &Skiffd, k: u8) {
        let host_side = format!("{}v{k}", self.bridge);
        let script = format!(
            "ip link add {host_side} type veth peer name eth0 netns {ns} && ip link set {host_side} master {br} up",
            ns = node.netns.display(),
            br = self.bridge
        );
        sh(Command::new("sh").args(["-c", &script])).expect("attach a node");
        let prefix = Self::ADDR.rsplit_once('.').map_or("", |(p, _)| p);
        node.sh(&format!(
            "ip addr add {prefix}.{k}/24 dev eth0 && ip link set eth0 up && ip route add default via {}",
            Self::ADDR
        ));
        self.links.lock().expect("links").push(host_side);
    }
}

impl Default for ControlNet {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ControlNet {
    fn drop(&mut self) {
        for l in self.links.lock().expect("links").iter() {
            let _ = Command::new("ip")
                .args(["link", "del", l])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

impl Skiffd {
    /// `skiffd register` of this node with `apid` (whose `ca.pem` it trusts) and the
    /// activation, in the node's namespace; the command's output.
    pub fn register(&self, apid: &Apid, activation: &(String, String), more: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(workspace_bin("skiffd"))
            .arg("--config")
            .arg(&self.config)
            .arg("register")
            .arg("--endpoint")
            .arg(format!("https://{}:{}", apid.node_addr, apid.node_port))
            .arg("--ca-cert")
            .arg(apid.path("ca.pem"))
            .args(["--activation-id", &activation.0])
            .args(["--activation-code", &activation.1])
            .args(more)
            .output()
            .expect("run skiffd register")
    }

    /// A node registered with `apid`, attached to `net` as host `k`, started: it syncs.
    pub fn registered(
        net: &ControlNet,
        k: u8,
        apid: &Apid,
        activation: &(String, String),
        more: &[&str],
        extra: &str,
    ) -> Self {
        let mut d = Self::prepare(extra);
        net.attach(&d, k);
        let out = d.register(apid, activation, more);
        assert!(
            out.status.success(),
            "skiffd register: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        d.spawn();
        d
    }
}

/// ECS API helpers over the aws CLI, for the suites that drive apid (cluster `edge`).
pub mod ecs {
    use std::collections::BTreeSet;
    use std::time::{Duration, Instant};

    use serde_json::Value;

    use super::Apid;

    /// Polls `f` every 250 ms until it returns `Some`, for at most `secs`.
    pub fn until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn service(a: &Apid, name: &str) -> Value {
        a.aws(&["describe-services", "--cluster", "edge", "--services", name])["services"][0]
            .clone()
    }

    /// Waits until `name` is steady (one deployment, running = desired) with `desired` tasks, then
    /// checks the aws CLI's waiter agrees.
    pub fn stable(a: &Apid, name: &str, desired: i64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        let s = loop {
            let s = service(a, name);
            if s["deployments"].as_array().map(Vec::len) == Some(1)
                && s["runningCount"] == desired
                && s["desiredCount"] == desired
                && s["deployments"][0]["rolloutState"] == "COMPLETED"
            {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "service {name} not stable at {desired}: {s:#}\n{}",
                a.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        };
        a.aws(&[
            "wait",
            "services-stable",
            "--cluster",
            "edge",
            "--services",
            name,
        ]);
        s
    }

    /// The ids of the service's tasks that are meant to run.
    pub fn service_tasks(a: &Apid, name: &str) -> Vec<Value> {
        let arns = a.aws(&["list-tasks", "--cluster", "edge", "--service-name", name])["taskArns"]
            .as_array()
            .unwrap()
            .clone();
        if arns.is_empty() {
            return Vec::new();
        }
        let mut args = vec!["describe-tasks", "--cluster", "edge", "--tasks"];
        let arns: Vec<String> = arns
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        args.extend(arns.iter().map(String::as_str));
        a.aws(&args)["tasks"].as_array().unwrap().clone()
    }

    pub fn task_ids(tasks: &[Value]) -> BTreeSet<String> {
        tasks
            .iter()
            .map(|t| {
                t["taskArn"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    /// `aws ecs update-container-instances-state` of `instance`.
    pub fn set_state(a: &Apid, instance: &str, status: &str) {
        a.aws(&[
            "update-container-instances-state",
            "--cluster",
            "edge",
            "--container-instances",
            instance,
            "--status",
            status,
        ]);
    }

    /// `aws ecs create-service` in cluster edge, with more arguments.
    pub fn create_service(a: &Apid, name: &str, task_definition: &str, more: &[&str]) -> Value {
        let mut args = vec![
            "create-service",
            "--cluster",
            "edge",
            "--service-name",
            name,
            "--task-definition",
            task_definition,
        ];
        args.extend_from_slice(more);
        a.aws(&args)
    }

    /// Waits until task `arn` of cluster edge is `status` (`RUNNING`, `STOPPED`), then checks
    /// the aws CLI's waiter (`tasks-running`, `tasks-stopped`) agrees at once: its own retries
    /// come 6 s apart. A task that stops while `RUNNING` is awaited goes to the waiter at once,
    /// which fails on it.
    pub fn wait_task(a: &Apid, status: &str, arn: &str) {
        until(60, &format!("task {arn} {status}"), || {
            let t = a.aws(&["describe-tasks", "--cluster", "edge", "--tasks", arn]);
            let last = &t["tasks"][0]["lastStatus"];
            (last == status || last == "STOPPED").then_some(())
        });
        let waiter = format!("tasks-{}", status.to_ascii_lowercase());
        a.aws(&["wait", &waiter, "--cluster", "edge", "--tasks", arn]);
    }

    /// `aws ecs stop-task` of `arn` in cluster edge, waiting until it is STOPPED.
    pub fn stop_task(a: &Apid, arn: &str) {
        a.aws(&["stop-task", "--cluster", "edge", "--task", arn]);
        wait_task(a, "STOPPED", arn);
    }
}
