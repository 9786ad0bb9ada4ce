use super::*;

/// A task definition with `volumes` and `containers` (JSON arrays' contents).
fn task(volumes: &str, containers: &str) -> TaskDefinition {
    TaskDefinition::from_json(&format!(
        r#"{{"family":"t","memory":"128","volumes":[{volumes}],"containerDefinitions":[{containers}]}}"#
    ))
    .unwrap()
}

struct Dirs {
    _tmp: tempfile::TempDir,
    dirs: VolumeDirs,
    host: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = VolumeDirs {
        task_dir: tmp.path().join("tasks/t-1"),
        node_volumes: tmp.path().join("volumes"),
    };
    let host = tmp.path().join("host");
    Dirs {
        _tmp: tmp,
        dirs,
        host,
    }
}

/// (destination, source, options) of each mount.
fn summary(mounts: &[Mount]) -> Vec<(String, PathBuf, String)> {
    mounts
        .iter()
        .map(|m| {
            assert_eq!(m.typ().as_deref(), Some("bind"));
            (
                m.destination().display().to_string(),
                m.source().clone().unwrap(),
                m.options().clone().unwrap().join(","),
            )
        })
        .collect()
}

#[test]
fn every_kind_of_volume_gets_its_directory() {
    let d = dirs();
    let host = d.host.join("deep/src");
    let def = task(
        &format!(
            r#"{{"name":"bind","host":{{"sourcePath":"{}"}}}},
               {{"name":"scratch","host":{{}}}},
               {{"name":"bare"}},
               {{"name":"taskvol","dockerVolumeConfiguration":{{"scope":"task","driver":"local","labels":{{"a":"b"}}}}}},
               {{"name":"sharedvol","dockerVolumeConfiguration":{{"scope":"shared","autoprovision":true,"labels":{{"team":"x"}}}}}}"#,
            host.display()
        ),
        r#"{"name":"c","image":"i","mountPoints":[
            {"sourceVolume":"bind","containerPath":"/bind"},
            {"sourceVolume":"scratch","containerPath":"/scratch","readOnly":true},
            {"sourceVolume":"bare","containerPath":"/bare","readOnly":false},
            {"sourceVolume":"taskvol","containerPath":"/taskvol"},
            {"sourceVolume":"sharedvol","containerPath":"/shared"}]}"#,
    );
    let prepared = prepare(&def, &d.dirs).unwrap();
    let vols = d.dirs.task_dir.join("volumes");
    let shared = d.dirs.node_volumes.join("sharedvol");
    let expect = [
        ("bind", host.clone()),
        ("scratch", vols.join("scratch/_data")),
        ("bare", vols.join("bare/_data")),
        ("taskvol", vols.join("taskvol/_data")),
        ("sharedvol", shared.join("_data")),
    ];
    for (name, path) in &expect {
        assert_eq!(prepared.host_path(name), Some(path.as_path()), "{name}");
        assert!(path.is_dir(), "{} created", path.display());
    }
    let labels = fs::read_to_string(shared.join(LABELS_FILE)).unwrap();
    assert_eq!(
        serde_json::from_str::<BTreeMap<String, String>>(&labels).unwrap(),
        BTreeMap::from([("team".to_owned(), "x".to_owned())])
    );
    assert!(
        fs::read_dir(&d.dirs.node_volumes)
            .unwrap()
            .all(|e| e.unwrap().file_name() == "sharedvol"),
        "no temporary directory left"
    );

    let mounts = prepared
        .mounts_for(&def, &def.container_definitions[0])
        .unwrap();
    let rw = "rbind,rprivate".to_owned();
    let ro = "rbind,rprivate,ro".to_owned();
    assert_eq!(
        summary(&mounts),
        [
            ("/bind".into(), expect[0].1.clone(), rw.clone()),
            ("/scratch".into(), expect[1].1.clone(), ro),
            ("/bare".into(), expect[2].1.clone(), rw.clone()),
            ("/taskvol".into(), expect[3].1.clone(), rw.clone()),
            ("/shared".into(), expect[4].1.clone(), rw),
        ]
    );

    // Removing the task's volumes leaves the host directory and the shared volume.
    remove_task_volumes(&d.dirs).unwrap();
    assert!(!vols.exists());
    assert!(host.is_dir());
    assert!(shared.join("_data").is_dir());
    remove_task_volumes(&d.dirs).expect("removing twice is fine");

    // A second task reuses the shared volume, and its content, when the labels agree.
    fs::write(shared.join("_data/kept"), "x").unwrap();
    let again = prepare(&def, &d.dirs).unwrap();
    assert!(again.host_path("sharedvol").unwrap().join("kept").exists());
}

#[test]
fn volumes_from_brings_the_source_mounts_with_its_read_only_override() {
    let d = dirs();
    let def = task(
        r#"{"name":"a"},{"name":"b"}"#,
        r#"{"name":"writer","image":"i","mountPoints":[
               {"sourceVolume":"a","containerPath":"/a"},
               {"sourceVolume":"b","containerPath":"/b","readOnly":true}]},
           {"name":"inherit","image":"i","volumesFrom":[{"sourceContainer":"writer"}]},
           {"name":"ro","image":"i","volumesFrom":[{"sourceContainer":"writer","readOnly":true}]},
           {"name":"rw","image":"i","volumesFrom":[{"sourceContainer":"writer","readOnly":false}]},
           {"name":"own","image":"i","mountPoints":[{"sourceVolume":"b","containerPath":"/a"}],
            "volumesFrom":[{"sourceContainer":"writer"}]},
           {"name":"nested","image":"i","volumesFrom":[{"sourceContainer":"ro"}]}"#,
    );
    let prepared = prepare(&def, &d.dirs).unwrap();
    let (a, b) = (
        prepared.host_path("a").unwrap().to_owned(),
        prepared.host_path("b").unwrap().to_owned(),
    );
    let modes = |name: &str| -> Vec<(String, PathBuf, String)> {
        let c = def
            .container_definitions
            .iter()
            .find(|c| c.name == name)
            .unwrap();
        summary(&prepared.mounts_for(&def, c).unwrap())
    };
    let m = |dest: &str, src: &PathBuf, opts: &str| (dest.to_owned(), src.clone(), opts.to_owned());
    let (rw, ro) = ("rbind,rprivate", "rbind,rprivate,ro");
    assert_eq!(modes("inherit"), [m("/a", &a, rw), m("/b", &b, ro)]);
    assert_eq!(modes("ro"), [m("/a", &a, ro), m("/b", &b, ro)]);
    assert_eq!(modes("rw"), [m("/a", &a, rw), m("/b", &b, rw)]);
    assert_eq!(
        modes("own"),
        [m("/a", &b, rw), m("/b", &b, ro)],
        "a container's own mount point wins over volumesFrom"
    );
    assert_eq!(
        modes("nested"),
        [m("/a", &a, ro), m("/b", &b, ro)],
        "transitively, with the override of the inner volumesFrom"
    );
}

#[test]
fn bad_references_are_errors_naming_them() {
    let d = dirs();
    let mut def = task(
        r#"{"name":"a"}"#,
        r#"{"name":"x","image":"i","volumesFrom":[{"sourceContainer":"y"}]},
           {"name":"y","image":"i","mountPoints":[{"sourceVolume":"a","containerPath":"/a"}]}"#,
    );
    let prepared = prepare(&def, &d.dirs).unwrap();
    let err = |def: &TaskDefinition, i: usize| {
        prepared
            .mounts_for(def, &def.container_definitions[i])
            .unwrap_err()
            .to_string()
    };

    // Validation refuses these in a parsed definition; mounts_for refuses them in any.
    let mut unknown = def.clone();
    unknown.container_definitions[1].mount_points[0].source_volume = "nope".into();
    assert_eq!(
        err(&unknown, 0),
        r#"container y: mountPoints: no volume "nope" in the task"#
    );
    let mut unknown = def.clone();
    unknown.container_definitions[0].volumes_from[0].source_container = "z".into();
    assert_eq!(
        err(&unknown, 0),
        r#"container x: volumesFrom: no container "z" in the task"#
    );
    let mut dup = def.clone();
    let again = dup.container_definitions[1].mount_points[0].clone();
    dup.container_definitions[1].mount_points.push(again);
    assert_eq!(err(&dup, 0), "container y: two mountPoints at /a");

    def.container_definitions[1].volumes_from = def.container_definitions[0].volumes_from.clone();
    def.container_definitions[1].volumes_from[0].source_container = "x".into();
    assert_eq!(
        err(&def, 0),
        r#"container y: volumesFrom "x" closes a cycle"#
    );
}

#[test]
fn a_missing_shared_volume_without_autoprovision_fails_and_undoes_the_rest() {
    let d = dirs();
    let host = d.host.join("made/for/it");
    let def = task(
        &format!(
            r#"{{"name":"bind","host":{{"sourcePath":"{}"}}}},
               {{"name":"scratch"}},
               {{"name":"early","dockerVolumeConfiguration":{{"scope":"shared","autoprovision":true}}}},
               {{"name":"data","dockerVolumeConfiguration":{{"scope":"shared"}}}}"#,
            host.display()
        ),
        r#"{"name":"c","image":"i"}"#,
    );
    let err = prepare(&def, &d.dirs).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "volume data: shared volume {} does not exist and autoprovision is off",
            d.dirs.node_volumes.join("data").display()
        )
    );
    for gone in [&d.host, &d.dirs.task_dir, &d.dirs.node_volumes] {
        assert!(!gone.exists(), "{} removed again", gone.display());
    }

    // Once it exists, the same definition is fine.
    fs::create_dir_all(d.dirs.node_volumes.join("data/_data")).unwrap();
    let prepared = prepare(&def, &d.dirs).unwrap();
    assert_eq!(
        prepared.host_path("data"),
        Some(d.dirs.node_volumes.join("data/_data").as_path())
    );
}

#[test]
fn an_existing_shared_volume_must_have_the_same_labels() {
    let d = dirs();
    let def = |labels: &str| {
        task(
            &format!(
                r#"{{"name":"s","dockerVolumeConfiguration":{{"scope":"shared","autoprovision":true,"labels":{labels}}}}}"#
            ),
            r#"{"name":"c","image":"i"}"#,
        )
    };
    prepare(&def(r#"{"k":"1"}"#), &d.dirs).unwrap();
    prepare(&def(r#"{"k":"1"}"#), &d.dirs).unwrap();
    let err = prepare(&def(r#"{"k":"2"}"#), &d.dirs)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("volume s: existing shared volume") && err.contains(r#""k": "2""#),
        "{err}"
    );
    assert!(
        d.dirs.node_volumes.join("s/_data").is_dir(),
        "a failed task never removes a shared volume it did not create"
    );
}

#[test]
fn only_the_local_driver_is_accepted() {
    let d = dirs();
    let mut def = task(
        r#"{"name":"v","dockerVolumeConfiguration":{"scope":"task","driver":"local"}}"#,
        r#"{"name":"c","image":"i"}"#,
    );
    // Validation refuses it when parsing; prepare refuses it in any definition.
    def.volumes[0]
        .docker_volume_configuration
        .as_mut()
        .unwrap()
        .driver = Some("rexray/ebs".into());
    assert_eq!(
        prepare(&def, &d.dirs).unwrap_err().to_string(),
        r#"volume v: driver "rexray/ebs" is not supported (local only)"#
    );
    assert!(!d.dirs.task_dir.exists());
}
