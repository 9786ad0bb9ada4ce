//! The store through the CLI: pull policies, air-gapped loads, cleanup rules, deep images.

use std::process::Command;

use skiff_tests::*;

fn insecure(host: &str) -> String {
    format!("attempts = 1\n[registries.\"{host}\"]\ninsecure = true\n")
}

fn small_image(dir: &std::path::Path, tag: &str, marker: &str) {
    write_layout(
        dir,
        tag,
        &[ImageSpec {
            arch: "amd64".into(),
            variant: None,
            layers: vec![
                (Layer::new().busybox().finish(), Compression::Gzip),
                // gzip: docker archives cannot carry zstd layers
                (
                    Layer::new()
                        .file("marker", marker.as_bytes(), 0o644)
                        .finish(),
                    Compression::Gzip,
                ),
            ],
        }],
    )
    .unwrap();
}

#[test]
fn pull_policies_behave_as_the_ecs_agent_defines_them() {
    let reg = Registry::start(Auth::None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    small_image(dir.path(), "v1", "one");
    reg.push_layout(dir.path(), "v1", "pol/app", None).unwrap();
    let host = reg.host();
    let name = format!("{host}/pol/app:v1");
    let skiff = Skiff::new(&insecure(&host));
    skiff.ok(&["pull", "--policy", "prefer-cached", &name]);
    let inspect: serde_json::Value = serde_json::from_str(&skiff.ok(&["inspect", &name])).unwrap();
    assert_eq!(
        inspect["image"]["keep"], true,
        "prefer-cached images are exempt from cleanup"
    );

    drop(reg); // the registry is gone from here on
    skiff.ok(&["pull", "--policy", "once", &name]);
    skiff.ok(&["pull", "--policy", "prefer-cached", &name]);
    skiff.ok(&["pull", "--policy", "default", &name]);
    let err = skiff.fail(&["pull", "--policy", "always", &name]);
    assert!(
        err.contains("manifest of"),
        "always must reach the registry: {err}"
    );
    let err = skiff.fail(&[
        "pull",
        "--policy",
        "default",
        &format!("{host}/pol/other:v1"),
    ]);
    assert!(
        err.contains("pol/other"),
        "default without a cached copy fails: {err}"
    );
    let err = skiff.fail(&["pull", "--policy", "sometimes", &name]);
    assert!(err.contains("unknown pull policy"), "{err}");
}

#[test]
fn load_from_oci_layout_and_docker_archive() {
    if !privileged("load_from_oci_layout_and_docker_archive") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    small_image(&layout, "v2", "from-layout");

    // An OCI layout whose index names only a tag needs a repository name.
    let skiff = Skiff::new("");
    let err = skiff.fail(&["load", layout.to_str().unwrap()]);
    assert!(err.contains("--name"), "{err}");
    let out = skiff.ok(&["load", "--name", "offline/app", layout.to_str().unwrap()]);
    assert!(out.contains("docker.io/offline/app:v2"), "{out}");

    // A docker-save tarball written by skopeo, with its RepoTags.
    let archive = dir.path().join("app.tar");
    sh(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:v2", layout.display()))
        .arg(format!(
            "docker-archive:{}:registry.local/team/saved:v3",
            archive.display()
        )))
    .unwrap();
    let out = skiff.ok(&["load", archive.to_str().unwrap()]);
    assert!(out.contains("registry.local/team/saved:v3"), "{out}");

    // Both unpack to the same files, and share the snapshots (same diff ids, same chain ids).
    let a = skiff.ok(&["mount", "offline/app:v2", "a"]);
    let b = skiff.ok(&["mount", "registry.local/team/saved:v3", "b"]);
    let (ta, tb) = (
        tree(std::path::Path::new(a.trim())),
        tree(std::path::Path::new(b.trim())),
    );
    assert_eq!(diff_trees(&ta, &tb), Vec::<String>::new());
    assert_eq!(
        std::fs::read(std::path::Path::new(a.trim()).join("marker")).unwrap(),
        b"from-layout"
    );
    skiff.ok(&["unmount", "a"]);
    skiff.ok(&["unmount", "b"]);
    let snapshots = std::fs::read_dir(skiff.root.join("snapshots/sha256"))
        .unwrap()
        .count();
    assert_eq!(
        snapshots, 2,
        "two images with the same layers share two snapshots"
    );

    let err = skiff.fail(&["load", dir.path().join("missing").to_str().unwrap()]);
    assert!(err.contains("missing"), "{err}");
    skiff.assert_consistent();
}

#[test]
fn prune_keeps_recent_spares_used_and_dry_runs() {
    if !privileged("prune_keeps_recent_spares_used_and_dry_runs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let skiff = Skiff::new("");
    for (i, tag) in ["t1", "t2", "t3", "t4"].iter().enumerate() {
        let layout = dir.path().join(tag);
        small_image(&layout, tag, &format!("marker {i}"));
        skiff.ok(&["load", "--name", "local/app", layout.to_str().unwrap()]);
        std::thread::sleep(std::time::Duration::from_millis(1100)); // distinct pull times
    }
    // t1 is the oldest pull, but mounting it makes it the most recently used (and in use).
    skiff.ok(&["mount", "local/app:t1", "busy"]);

    let dry = skiff.ok(&["prune", "--dry-run", "--keep", "2"]);
    assert!(
        dry.contains("would remove image docker.io/local/app:t2"),
        "{dry}"
    );
    assert!(
        dry.contains("would remove image docker.io/local/app:t3"),
        "{dry}"
    );
    assert!(!dry.contains("app:t1") && !dry.contains("app:t4"), "{dry}");
    assert_eq!(
        skiff.ok(&["ls"]).matches("local/app").count(),
        4,
        "a dry run removes nothing"
    );

    let out = skiff.ok(&["prune", "--keep", "2"]);
    assert!(
        out.contains("removed image docker.io/local/app:t2"),
        "{out}"
    );
    let ls = skiff.ok(&["ls"]);
    assert!(
        ls.contains("app:t1")
            && ls.contains("app:t4")
            && !ls.contains("app:t2")
            && !ls.contains("app:t3"),
        "{ls}"
    );

    let err = skiff.fail(&["rm", "local/app:t1"]);
    assert!(err.contains("in use by root filesystem busy"), "{err}");
    skiff.ok(&["unmount", "busy"]);

    // Use times are kept in whole seconds: let one pass since t1 was last used.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = skiff.ok(&["prune", "--unused-for", "1ms"]);
    assert!(out.contains("unused for more than"), "{out}");
    assert_eq!(skiff.ok(&["ls"]).matches("local/app").count(), 0);
    assert_eq!(
        std::fs::read_dir(skiff.root.join("snapshots/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(skiff.root.join("content/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    skiff.assert_consistent();
}

#[test]
fn deep_images_mount_past_the_option_length_limit() {
    if !privileged("deep_images_mount_past_the_option_length_limit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut layers = vec![(Layer::new().busybox().finish(), Compression::Gzip)];
    for i in 0..149 {
        layers.push((
            Layer::new()
                .file(&format!("layer-{i:03}"), format!("{i}").as_bytes(), 0o644)
                .finish(),
            Compression::None,
        ));
    }
    write_layout(
        dir.path(),
        "deep",
        &[ImageSpec {
            arch: "amd64".into(),
            variant: None,
            layers,
        }],
    )
    .unwrap();
    // A long root makes the absolute lowerdir list far longer than a page.
    let skiff = Skiff::new("");
    let out = skiff.ok(&["load", "--name", "local/deep", dir.path().to_str().unwrap()]);
    assert!(out.contains("local/deep:deep"), "{out}");
    let path = skiff.ok(&["mount", "local/deep:deep", "deep"]);
    let root = std::path::Path::new(path.trim());
    for i in [0, 74, 148] {
        assert_eq!(
            std::fs::read_to_string(root.join(format!("layer-{i:03}"))).unwrap(),
            i.to_string()
        );
    }
    assert!(root.join("bin/busybox").is_file());
    skiff.ok(&["unmount", "deep"]);
    skiff.assert_consistent();
}

#[test]
fn bad_input_gets_a_clear_error() {
    let skiff = Skiff::new("");
    let err = skiff.fail(&["pull", "Not A Reference"]);
    assert!(
        err.contains("invalid image reference \"Not A Reference\""),
        "{err}"
    );
    let err = skiff.fail(&["pull", "--platform", "linux", "busybox"]);
    assert!(err.contains("invalid platform"), "{err}");
    let err = skiff.fail(&["inspect", "nothing/here:1"]);
    assert!(
        err.contains("no image") || err.contains("not in the store"),
        "{err}"
    );
    skiff.set_config("[registries.x]\ninsecur = true\n");
    let err = skiff.fail(&["ls"]);
    assert!(
        err.contains("insecur") && err.contains("images.toml"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}
