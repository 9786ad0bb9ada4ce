//! Pulls from a real registry (Debian's docker-registry) with images pushed by skopeo: layer
//! formats, interop with umoci, platforms, auth, TLS, mirrors, concurrency, resume, crashes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use skiff_tests::*;

fn insecure(reg: &Registry) -> String {
    format!("[registries.\"{}\"]\ninsecure = true\n", reg.host())
}

fn with_creds(reg: &Registry, user: &str, pass: &str) -> String {
    format!(
        "{}username = \"{user}\"\npassword = \"{pass}\"\n",
        insecure(reg)
    )
}

/// A three-layer image exercising every entry kind, bottom first; the middle layer compressed
/// with `middle` (umoci 0.4 reads no zstd, so the interop test uses gzip there).
fn sample_layers(middle_compression: Compression) -> Vec<(Vec<u8>, Compression)> {
    let base = Layer::new()
        .busybox()
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
            0o644,
        )
        .dir("data", 0o755)
        .file("data/old-a", b"a", 0o644)
        .file("data/old-b", b"b", 0o644)
        .file("doomed", b"to be whited out", 0o644)
        .finish();
    let middle = Layer::new()
        .dir("opt", 0o755)
        .file_owned(
            "opt/suid",
            b"#!/bin/sh\n",
            0o4755,
            1000,
            1000,
            1_600_000_000,
        )
        .hardlink("opt/suid-link", "opt/suid")
        .symlink("opt/abs", "/etc/passwd")
        .fifo("opt/pipe")
        .file("opt/big", &vec![7u8; 3 << 20], 0o600)
        .finish();
    let top = Layer::new()
        .whiteout("doomed")
        .dir("data", 0o750)
        .opaque("data")
        .file("data/new", b"fresh", 0o640)
        .file("etc/motd", b"hello from the top layer\n", 0o644)
        .finish();
    vec![
        (base, Compression::Gzip),
        (middle, middle_compression),
        (top, Compression::None),
    ]
}

fn push_sample(reg: &Registry, repo: &str, tag: &str, creds: Option<(&str, &str)>) -> String {
    push_sample_with(reg, repo, tag, creds, Compression::Zstd)
}

fn push_sample_with(
    reg: &Registry,
    repo: &str,
    tag: &str,
    creds: Option<(&str, &str)>,
    middle: Compression,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let digest = write_layout(
        dir.path(),
        tag,
        &[ImageSpec {
            arch: "amd64".into(),
            variant: None,
            layers: sample_layers(middle),
        }],
    )
    .unwrap();
    reg.push_layout(dir.path(), tag, repo, creds).unwrap();
    digest
}

/// One platform's image whose file `arch` names it; on busybox when `base`.
fn arch_spec(arch: &str, variant: Option<&str>, base: bool) -> ImageSpec {
    let mut layers = Vec::new();
    if base {
        layers.push((Layer::new().busybox().finish(), Compression::Gzip));
    }
    layers.push((
        Layer::new().file("arch", arch.as_bytes(), 0o644).finish(),
        Compression::Gzip,
    ));
    ImageSpec {
        arch: arch.into(),
        variant: variant.map(Into::into),
        layers,
    }
}

/// Mounts `reference`'s rootfs, hands it to `f`, and unmounts.
fn with_rootfs(skiff: &Skiff, reference: &str, id: &str, f: impl FnOnce(&Path)) {
    let path = skiff.ok(&["mount", reference, id]);
    let path = Path::new(path.trim()).to_owned();
    f(&path);
    skiff.ok(&["unmount", id]);
    assert!(!path.exists(), "unmount removes the mount point");
}

#[test]
fn pulled_image_unpacks_like_skopeo_and_umoci() {
    if !privileged("pulled_image_unpacks_like_skopeo_and_umoci") {
        return;
    }
    let reg = Registry::start(Auth::None).unwrap();
    push_sample_with(&reg, "team/app", "1.0", None, Compression::Gzip);
    let skiff = Skiff::new(&insecure(&reg));
    let out = skiff.ok(&["pull", &format!("{}/team/app:1.0", reg.host())]);
    assert!(out.contains("team/app:1.0"), "{out}");
    let ls = skiff.ok(&["ls"]);
    assert!(ls.contains(&format!("{}/team/app:1.0", reg.host())), "{ls}");

    // The reference pair: skopeo copy + umoci unpack of the same image.
    let peer = tempfile::tempdir().unwrap();
    let layout = peer.path().join("layout");
    sh(Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{}/team/app:1.0", reg.host()))
        .arg(format!("oci:{}:1.0", layout.display())))
    .unwrap();
    let bundle = peer.path().join("bundle");
    sh(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:1.0", layout.display()))
        .arg(&bundle))
    .unwrap();
    let theirs = tree(&bundle.join("rootfs"));

    with_rootfs(
        &skiff,
        &format!("{}/team/app:1.0", reg.host()),
        "interop",
        |root| {
            let ours = tree(root);
            let diff = diff_trees(&ours, &theirs);
            assert!(
                diff.is_empty(),
                "skiff and umoci trees differ:\n{}",
                diff.join("\n")
            );
            // And the semantics the layers ask for, explicitly.
            assert!(
                !root.join("doomed").exists(),
                "whiteout hides the lower file"
            );
            assert!(
                !root.join("data/old-a").exists(),
                "opaque directory hides lower entries"
            );
            assert_eq!(std::fs::read(root.join("data/new")).unwrap(), b"fresh");
            let suid = &ours["opt/suid"];
            assert_eq!((suid.mode, suid.uid, suid.gid), (0o4755, 1000, 1000));
            assert_eq!(ours["opt/abs"].content, "/etc/passwd");
            let out = Command::new("chroot")
                .arg(root)
                .args(["/bin/sh", "-c", "cat /etc/motd"])
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "hello from the top layer\n"
            );
        },
    );
    skiff.assert_consistent();
}

#[test]
fn platform_is_selected_from_a_multi_arch_index() {
    let reg = Registry::start(Auth::None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = |arch, variant| arch_spec(arch, variant, false);
    write_layout(
        dir.path(),
        "multi",
        &[spec("amd64", None), spec("arm64", Some("v8"))],
    )
    .unwrap();
    reg.push_layout(dir.path(), "multi", "team/multi", None)
        .unwrap();
    let skiff = Skiff::new(&insecure(&reg));
    let name = format!("{}/team/multi:multi", reg.host());

    let out = skiff.ok(&["pull", "--platform", "linux/arm64", &name]);
    assert!(out.contains("linux/arm64/v8"), "{out}");
    let inspect = skiff.ok(&["inspect", &name]);
    assert!(inspect.contains("\"architecture\": \"arm64\""), "{inspect}");

    let out = skiff.ok(&["pull", "--platform", "linux/amd64", &name]);
    assert!(out.contains("linux/amd64"), "{out}");

    let err = skiff.fail(&["pull", "--platform", "linux/s390x", &name]);
    assert!(
        err.contains("no image for platform linux/s390x")
            && err.contains("linux/amd64")
            && err.contains("linux/arm64/v8"),
        "the error lists what the image has: {err}"
    );
    skiff.assert_consistent();
}

#[test]
fn basic_auth_from_skiff_config_and_docker_config() {
    let reg = Registry::start(Auth::Basic("alice", "wonderland")).unwrap();
    push_sample(&reg, "private/app", "v1", Some(("alice", "wonderland")));
    let name = format!("{}/private/app:v1", reg.host());

    let skiff = Skiff::new(&insecure(&reg));
    let err = skiff.fail(&["pull", &name]);
    assert!(err.contains("uthorized"), "{err}");

    skiff.set_config(&with_creds(&reg, "alice", "wrong"));
    let err = skiff.fail(&["pull", &name]);
    assert!(err.contains("uthorized"), "{err}");

    skiff.set_config(&with_creds(&reg, "alice", "wonderland"));
    skiff.ok(&["pull", &name]);

    // The same through a docker config.json, as `docker login` writes it.
    let other = Skiff::new(&insecure(&reg));
    let docker_dir = other.dir.path().join(".docker");
    std::fs::create_dir_all(&docker_dir).unwrap();
    let auth = base64_encode("alice:wonderland");
    std::fs::write(
        docker_dir.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host()),
    )
    .unwrap();
    other.ok(&["pull", &name]);

    // And through a credential helper (how ECR and cloud registries hand out short-lived
    // credentials): docker's protocol, server URL on stdin, JSON on stdout.
    let helper = Skiff::new(&insecure(&reg));
    let bin = helper.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("docker-credential-skifftest");
    std::fs::write(
        &script,
        "#!/bin/sh\nread server\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"wonderland\"}' \"$server\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let docker_dir = helper.dir.path().join(".docker");
    std::fs::create_dir_all(&docker_dir).unwrap();
    std::fs::write(
        docker_dir.join("config.json"),
        format!(r#"{{"credHelpers":{{"{}":"skifftest"}}}}"#, reg.host()),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = helper
        .cmd(&["pull", &name])
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn bearer_token_flow() {
    let tokens = TokenServer::start("bob", "builder").unwrap();
    let reg = Registry::start(Auth::Token(&tokens)).unwrap();
    push_sample(&reg, "tok/app", "v1", Some(("bob", "builder")));
    let name = format!("{}/tok/app:v1", reg.host());

    let skiff = Skiff::new(&with_creds(&reg, "bob", "nope"));
    let err = skiff.fail(&["pull", &name]);
    assert!(err.contains("refused the credentials"), "{err}");

    skiff.set_config(&with_creds(&reg, "bob", "builder"));
    skiff.ok(&["pull", &name]);
    skiff.assert_consistent();
}

#[test]
fn https_needs_the_configured_ca_and_http_needs_insecure() {
    let reg = Registry::start_with(Auth::None, true).unwrap();
    push_sample(&reg, "tls/app", "v1", None);
    let name = format!("{}/tls/app:v1", reg.host());

    let skiff = Skiff::new("");
    let err = skiff.fail(&["pull", &name]);
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );

    let ca = reg.tls.as_ref().unwrap().ca.display().to_string();
    skiff.set_config(&format!(
        "[registries.\"{}\"]\nca = [\"{ca}\"]\n",
        reg.host()
    ));
    skiff.ok(&["pull", &name]);

    // A plain-HTTP registry is not spoken to over HTTP unless configured insecure.
    let plain = Registry::start(Auth::None).unwrap();
    push_sample(&plain, "plain/app", "v1", None);
    let err = Skiff::new("").fail(&["pull", &format!("{}/plain/app:v1", plain.host())]);
    assert!(!err.is_empty());
}

#[test]
fn mirrors_first_with_fallback() {
    let origin = Registry::start(Auth::None).unwrap();
    push_sample(&origin, "mir/app", "v1", None);
    let name = format!("{}/mir/app:v1", origin.host());

    // A mirror that is down: the origin serves.
    let dead = free_port();
    let skiff = Skiff::new(&format!(
        "[registries.\"{o}\"]\ninsecure = true\nmirrors = [\"127.0.0.1:{dead}\"]\n[registries.\"127.0.0.1:{dead}\"]\ninsecure = true\n",
        o = origin.host()
    ));
    skiff.ok(&["pull", &name]);

    // A mirror that has the image while the origin is down: the mirror serves.
    let mirror = Registry::start(Auth::None).unwrap();
    push_sample(&mirror, "mir/app", "v1", None);
    let origin_host = origin.host();
    drop(origin);
    let skiff = Skiff::new(&format!(
        "[registries.\"{origin_host}\"]\ninsecure = true\nmirrors = [\"{m}\"]\n[registries.\"{m}\"]\ninsecure = true\n",
        m = mirror.host()
    ));
    skiff.ok(&["pull", &name]);
    assert!(
        mirror.log().contains("GET /v2/mir/app/manifests/v1?ns="),
        "the mirror was asked with containerd's ns parameter"
    );
}

#[test]
fn concurrent_pulls_fetch_each_blob_once() {
    if !privileged("concurrent_pulls_fetch_each_blob_once") {
        return;
    }
    let reg = Registry::start(Auth::None).unwrap();
    push_sample(&reg, "conc/app", "v1", None);
    let name = format!("{}/conc/app:v1", reg.host());
    let skiff = Skiff::new(&insecure(&reg));
    let children: Vec<_> = (0..3)
        .map(|_| skiff.cmd(&["pull", &name]).spawn().unwrap())
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let inspect: serde_json::Value = serde_json::from_str(&skiff.ok(&["inspect", &name])).unwrap();
    for layer in inspect["image"]["layers"].as_array().unwrap() {
        let d = layer["digest"].as_str().unwrap();
        assert_eq!(
            reg.blob_gets(d),
            1,
            "layer {d} downloaded once across three concurrent pulls"
        );
    }
    skiff.assert_consistent();
}

/// A TCP proxy that cuts the first `cuts` connections carrying a blob after `after` bytes.
struct CuttingProxy {
    port: u16,
    ranges: Arc<std::sync::Mutex<Vec<String>>>,
}

impl CuttingProxy {
    fn start(upstream: u16, cuts: usize, after: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ranges = Arc::new(std::sync::Mutex::new(Vec::new()));
        let left = Arc::new(AtomicUsize::new(cuts));
        let seen = ranges.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (left, seen) = (left.clone(), seen.clone());
                std::thread::spawn(move || relay(conn, upstream, left, after, seen));
            }
        });
        Self { port, ranges }
    }
}

fn relay(
    mut client: TcpStream,
    upstream: u16,
    left: Arc<AtomicUsize>,
    after: usize,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
) {
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let mut c2 = client.try_clone().unwrap();
    let mut s2 = server.try_clone().unwrap();
    let cut_this = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cut = cut_this.clone();
    let up = std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = c2.read(&mut buf) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buf[..n]);
            if text.contains("/blobs/") && text.contains("GET ") {
                if let Some(r) = text
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("range:"))
                {
                    seen.lock().unwrap().push(r.to_owned());
                }
                cut.store(true, Ordering::SeqCst);
            }
            if s2.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let mut sent = 0usize;
    let mut buf = [0u8; 16384];
    while let Ok(n) = server.read(&mut buf) {
        if n == 0 {
            break;
        }
        if cut_this.load(Ordering::SeqCst)
            && sent + n > after
            && left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                .is_ok()
        {
            let _ = client.write_all(&buf[..after.saturating_sub(sent)]);
            let _ = client.shutdown(std::net::Shutdown::Both);
            let _ = server.shutdown(std::net::Shutdown::Both);
            break;
        }
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
}

#[test]
fn interrupted_downloads_resume_with_range() {
    let reg = Registry::start(Auth::None).unwrap();
    push_sample(&reg, "res/app", "v1", None);
    let proxy = CuttingProxy::start(reg.port, 2, 256 * 1024);
    let host = format!("127.0.0.1:{}", proxy.port);
    let skiff = Skiff::new(&format!("[registries.\"{host}\"]\ninsecure = true\n"));
    let out = skiff.run(&["pull", &format!("{host}/res/app:v1")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("retrying blob"),
        "the cut was seen and retried: {stderr}"
    );
    let ranges = proxy.ranges.lock().unwrap().clone();
    assert!(
        ranges.iter().any(|r| !r.trim_end().ends_with("bytes=0-")),
        "a retry asked for the rest of the blob, not all of it: {ranges:?}"
    );
    skiff.assert_consistent();
}

#[test]
fn killed_pulls_leave_the_store_consistent() {
    if !privileged("killed_pulls_leave_the_store_consistent") {
        return;
    }
    let reg = Registry::start(Auth::None).unwrap();
    push_sample(&reg, "crash/app", "v1", None);
    let name = format!("{}/crash/app:v1", reg.host());
    let skiff = Skiff::new(&insecure(&reg));
    // Kill at spread-out points: during manifest fetch, downloads, unpacking, registration.
    let mut seed = std::process::id() as u64;
    for round in 0..12 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(5 + (seed >> 33) % 400);
        let mut child = skiff
            .cmd(&["pull", &name])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        let out = skiff.run(&["verify"]);
        assert!(
            out.status.success(),
            "round {round} (killed after {delay:?}): {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // A record that exists is complete: it mounts.
        if skiff.ok(&["ls"]).contains(&name) {
            skiff.ok(&["mount", &name, "probe"]);
            skiff.ok(&["unmount", "probe"]);
        }
    }
    skiff.ok(&["pull", &name]);
    skiff.assert_consistent();
}

#[test]
fn a_malicious_layer_fails_the_pull_and_leaves_nothing() {
    if !privileged("a_malicious_layer_fails_the_pull_and_leaves_nothing") {
        return;
    }
    let reg = Registry::start(Auth::None).unwrap();
    let canary = tempfile::tempdir().unwrap();
    let evil = Layer::new()
        .dir("ok", 0o755)
        .file("ok/fine", b"fine", 0o644)
        .symlink("escape", &canary.path().display().to_string())
        .file("escape/pwned", b"gotcha", 0o644)
        .finish();
    let dir = tempfile::tempdir().unwrap();
    write_layout(
        dir.path(),
        "evil",
        &[ImageSpec {
            arch: "amd64".into(),
            variant: None,
            layers: vec![
                (Layer::new().busybox().finish(), Compression::Gzip),
                (evil, Compression::Gzip),
            ],
        }],
    )
    .unwrap();
    reg.push_layout(dir.path(), "evil", "bad/app", None)
        .unwrap();
    let skiff = Skiff::new(&insecure(&reg));
    let name = format!("{}/bad/app:evil", reg.host());
    let err = skiff.fail(&["pull", &name]);
    assert!(
        err.contains(&name)
            && err.contains("layer sha256:")
            && err.contains("escape/pwned")
            && err.contains("symlink"),
        "the error names the image, the layer and the entry: {err}"
    );
    assert!(
        !canary.path().join("pwned").exists(),
        "nothing was written outside the layer"
    );
    assert!(
        !skiff.ok(&["ls"]).contains(&name),
        "no half-registered image"
    );
    let tmp: Vec<_> = std::fs::read_dir(skiff.root.join("snapshots/tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "no partial snapshot is left: {tmp:?}");
    skiff.assert_consistent();
}

#[test]
fn docker_schema2_manifests_and_manifest_lists() {
    let reg = Registry::start(Auth::None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = |arch, variant| arch_spec(arch, variant, true);
    write_layout(
        dir.path(),
        "list",
        &[spec("amd64", None), spec("arm64", Some("v8"))],
    )
    .unwrap();
    reg.push_layout_as(dir.path(), "list", "dock/multi", None, "v2s2")
        .unwrap();
    let single = tempfile::tempdir().unwrap();
    write_layout(single.path(), "one", &[spec("amd64", None)]).unwrap();
    reg.push_layout_as(single.path(), "one", "dock/single", None, "v2s2")
        .unwrap();

    let skiff = Skiff::new(&insecure(&reg));
    for (name, platform) in [
        (format!("{}/dock/multi:list", reg.host()), "linux/arm64/v8"),
        (format!("{}/dock/single:one", reg.host()), "linux/amd64"),
    ] {
        skiff.ok(&["pull", "--platform", platform, &name]);
        let inspect: serde_json::Value =
            serde_json::from_str(&skiff.ok(&["inspect", &name])).unwrap();
        assert_eq!(
            inspect["image"]["manifest_media_type"],
            "application/vnd.docker.distribution.manifest.v2+json",
            "{name} was served as Docker schema 2"
        );
        let layer_type = inspect["image"]["layers"][0]["media_type"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            layer_type,
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }
    skiff.assert_consistent();
}
