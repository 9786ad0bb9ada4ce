//! Placement without a database: strategies, chaining, constraints, the query language.

use super::*;

fn inst(id: &str, cpu: i64, memory: i64, attrs: &[(&str, &str)]) -> Candidate {
    Candidate {
        id: id.into(),
        ec2_instance_id: format!("sk-{id}"),
        status: "ACTIVE".into(),
        agent_connected: true,
        agent_version: "1.2.10".into(),
        attributes: attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Some((*v).to_owned())))
            .collect(),
        cpu,
        memory,
        ports: BTreeSet::from([22]),
        groups: BTreeMap::new(),
    }
}

fn needs(cpu: i64, memory: i64) -> Needs {
    Needs {
        cpu,
        memory,
        ports: Vec::new(),
        arch: None,
        requires: Vec::new(),
        group: "family:web".into(),
    }
}

fn ids(c: &[Candidate], p: &Placement) -> Vec<String> {
    p.placed.iter().map(|&i| c[i].id.clone()).collect()
}

fn strategies(s: &[(&str, Option<&str>)]) -> Vec<Strategy> {
    s.iter()
        .map(|(k, f)| Strategy::parse(k, *f).unwrap())
        .collect()
}

#[test]
fn strategies_and_their_chaining() {
    // a: most memory, zone z1; b and c share zone z2, b with the least memory.
    let fleet = || {
        vec![
            inst("a", 4096, 4000, &[("zone", "z1")]),
            inst("b", 4096, 2000, &[("zone", "z2")]),
            inst("c", 4096, 3000, &[("zone", "z2")]),
        ]
    };
    type Case = (
        &'static str,
        &'static [(&'static str, Option<&'static str>)],
        usize,
        &'static [&'static str],
    );
    let cases: &[Case] = &[
        (
            "binpack memory fills the fullest first",
            &[("binpack", Some("memory"))],
            3,
            &["b", "b", "b"],
        ),
        (
            "spread by instance, binpack breaks ties",
            &[("spread", Some("instanceId")), ("binpack", Some("memory"))],
            3,
            &["b", "c", "a"],
        ),
        (
            "spread by zone, binpack breaks ties",
            &[
                ("spread", Some("attribute:zone")),
                ("binpack", Some("memory")),
            ],
            3,
            &["b", "a", "b"],
        ),
        (
            "binpack cpu, ties by memory",
            &[("binpack", Some("cpu")), ("binpack", Some("memory"))],
            2,
            &["b", "b"],
        ),
    ];
    for (name, s, count, want) in cases {
        let mut c = fleet();
        let p = place(&mut c, &needs(256, 500), *count, &strategies(s), &[], 7);
        assert_eq!(ids(&c, &p), *want, "{name}");
        assert!(p.failures.is_empty(), "{name}");
    }
    // random: every instance gets some of many tasks, and a seed repeats its choices.
    let run = |seed| {
        let mut c = fleet();
        let p = place(&mut c, &needs(1, 1), 60, &[Strategy::Random], &[], seed);
        ids(&c, &p)
    };
    let r = run(3);
    assert_eq!(r, run(3));
    for id in ["a", "b", "c"] {
        assert!(r.iter().any(|x| x == id), "{r:?}");
    }
}

#[test]
fn strategy_and_constraint_parsing() {
    assert_eq!(
        Strategy::parse("spread", Some("attribute:ecs.availability-zone")),
        Ok(Strategy::Spread(Some("ecs.availability-zone".into())))
    );
    assert_eq!(
        Strategy::parse("binpack", Some("MEMORY")),
        Ok(Strategy::Binpack(Resource::Memory))
    );
    for (k, f) in [
        ("binpack", None),
        ("binpack", Some("disk")),
        ("random", Some("cpu")),
        ("spread", Some("attribute:")),
        ("pack", Some("cpu")),
    ] {
        assert!(
            matches!(Strategy::parse(k, f), Err(PlacementError::Invalid(_))),
            "{k} {f:?}"
        );
    }
    assert!(Constraint::parse("distinctInstance", Some("x == y")).is_err());
    assert!(Constraint::parse("memberOf", None).is_err());
    assert!(Constraint::parse("sameInstance", None).is_err());
}

#[test]
fn resources_exhaustion_becomes_failures() {
    type Case = (
        &'static str,
        Needs,
        usize,
        usize,
        &'static [(&'static str, Reason)],
    );
    let ported = Needs {
        ports: vec![8080],
        ..needs(10, 10)
    };
    let arm = Needs {
        arch: Some("arm64".into()),
        ..needs(10, 10)
    };
    let cases: Vec<Case> = vec![
        (
            "memory runs out after 2",
            needs(100, 1500),
            3,
            2,
            &[("a", Reason::Memory), ("b", Reason::Memory)],
        ),
        (
            "cpu never fits",
            needs(8192, 10),
            2,
            0,
            &[("a", Reason::Cpu), ("b", Reason::Cpu)],
        ),
        (
            "one fixed port per instance",
            ported,
            3,
            2,
            &[("a", Reason::Ports), ("b", Reason::Ports)],
        ),
        (
            "the architecture is required",
            arm,
            1,
            0,
            &[("a", Reason::Attribute), ("b", Reason::Attribute)],
        ),
    ];
    for (name, n, count, placed, failures) in cases {
        let mut c = vec![
            inst("a", 4096, 2000, &[("ecs.cpu-architecture", "x86_64")]),
            inst("b", 4096, 2000, &[("ecs.cpu-architecture", "x86_64")]),
        ];
        let p = place(
            &mut c,
            &n,
            count,
            &strategies(&[("spread", Some("instanceId"))]),
            &[],
            1,
        );
        assert_eq!(p.placed.len(), placed, "{name}");
        let want: Vec<(String, Reason)> = failures
            .iter()
            .map(|(i, r)| ((*i).to_owned(), *r))
            .collect();
        assert_eq!(p.failures, want, "{name}");
    }
    // The node's own ports count too, and a DRAINING instance is never a candidate.
    let mut c = vec![inst("a", 4096, 2000, &[]), inst("b", 4096, 2000, &[])];
    c[1].status = "DRAINING".into();
    let p = place(
        &mut c,
        &Needs {
            ports: vec![22],
            ..needs(1, 1)
        },
        1,
        &[],
        &[],
        1,
    );
    assert_eq!(p.failures, [("a".to_owned(), Reason::Ports)]);
    let p = place(&mut c, &needs(1, 1), 2, &[], &[], 1);
    assert_eq!(ids(&c, &p), ["a", "a"]);
}

#[test]
fn constraints_distinct_instance_and_member_of() {
    let fleet = || {
        vec![
            inst(
                "a",
                4096,
                4000,
                &[("ecs.cpu-architecture", "x86_64"), ("site", "lab")],
            ),
            inst(
                "b",
                4096,
                4000,
                &[("ecs.cpu-architecture", "arm64"), ("site", "shop")],
            ),
            inst("c", 4096, 4000, &[("ecs.cpu-architecture", "arm64")]),
        ]
    };
    let member = |e: &str| Constraint::parse("memberOf", Some(e)).unwrap();
    let mut c = fleet();
    let p = place(
        &mut c,
        &needs(1, 1),
        4,
        &[],
        &[Constraint::DistinctInstance],
        5,
    );
    let mut got = ids(&c, &p);
    got.sort();
    assert_eq!(got, ["a", "b", "c"]);
    assert!(
        p.failures
            .iter()
            .all(|(_, r)| *r == Reason::DistinctInstance),
        "{:?}",
        p.failures
    );
    type Case = (&'static str, &'static [&'static str]);
    let cases: &[Case] = &[
        ("attribute:ecs.cpu-architecture == arm64", &["b", "c"]),
        ("attribute:ecs.cpu-architecture != arm64", &["a"]),
        ("attribute:site exists", &["a", "b"]),
        ("attribute:site !exists", &["c"]),
        ("attribute:site not_exists", &["c"]),
        ("attribute:site in [lab, 'shop']", &["a", "b"]),
        ("attribute:site not_in [lab]", &["b", "c"]),
        ("attribute:site !in [lab]", &["b", "c"]),
        ("attribute:site =~ sh.*", &["b"]),
        ("attribute:site matches l.b", &["a"]),
        ("attribute:site !~ l.*", &["b", "c"]),
        (
            "attribute:ecs.cpu-architecture == arm64 and attribute:site exists",
            &["b"],
        ),
        (
            "attribute:ecs.cpu-architecture==arm64 && not (attribute:site == shop)",
            &["c"],
        ),
        (
            "attribute:site == lab or (attribute:site !exists && attribute:ecs.cpu-architecture == arm64)",
            &["a", "c"],
        ),
        ("!(attribute:site == lab || attribute:site == shop)", &["c"]),
        ("ec2InstanceId in ['sk-a', 'sk-c']", &["a", "c"]),
        (
            "agentVersion >= 1.2.9 and agentVersion < 1.10",
            &["a", "b", "c"],
        ),
        ("runningTasksCount == 0", &["a", "b", "c"]),
        ("agentConnected == true", &["a", "b", "c"]),
        ("not(task:group == family:web)", &["a", "b", "c"]),
    ];
    for (expr, want) in cases {
        let mut c = fleet();
        let p = place(
            &mut c,
            &needs(1, 1),
            6,
            &[Strategy::Spread(None)],
            &[member(expr)],
            5,
        );
        let mut got = ids(&c, &p);
        got.sort();
        got.dedup();
        assert_eq!(got, *want, "{expr}");
    }
    // task:group affinity: only where the group already runs.
    let mut c = fleet();
    c[1].groups.insert("family:db".into(), 1);
    let p = place(
        &mut c,
        &needs(1, 1),
        2,
        &[],
        &[member("task:group == family:db")],
        5,
    );
    assert_eq!(ids(&c, &p), ["b", "b"]);
    let p = place(
        &mut c,
        &needs(1, 1),
        1,
        &[],
        &[member("attribute:site == moon")],
        5,
    );
    assert_eq!(p.failures.len(), 3);
    assert!(
        p.failures
            .iter()
            .all(|(_, r)| r.as_str().starts_with("MemberOf"))
    );
}

#[test]
fn query_language_syntax_errors_name_the_position() {
    let cases: &[(&str, usize, &str)] = &[
        ("", 0, "subject"),
        ("attribute:site", 14, "operator"),
        ("attribute:site == ", 18, "value"),
        ("attribute:site in lab", 18, "'['"),
        ("attribute:site in [lab shop]", 23, "',' or ']'"),
        ("(attribute:site exists", 22, "')'"),
        ("attribute:site exists attribute:x exists", 22, "end"),
        ("cpu == 1", 0, "unknown subject"),
        ("attribute:site ~= x", 16, "unexpected"),
        ("attribute:site like x", 15, "unknown operator"),
        ("attribute:site == 'open", 18, "unterminated"),
        ("attribute:site =~ '('", 18, "bad pattern"),
        ("attribute:site exists and", 25, "subject"),
        ("attribute:a = b", 12, "unexpected"),
    ];
    for (text, pos, what) in cases {
        match Expr::parse(text) {
            Err(PlacementError::Syntax {
                position, message, ..
            }) => {
                assert_eq!(position, *pos, "{text:?}: {message}");
                assert!(message.contains(what), "{text:?}: {message}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
    // Any Unicode space separates; nothing loops or panics on odd input.
    assert!(Expr::parse("attribute:a\u{a0}exists").is_ok());
    for odd in [
        "é",
        "attribute:é == ü",
        "((((",
        "!!!",
        "[]",
        "'",
        "attribute:a in [",
        "&|",
    ] {
        let _ = Expr::parse(odd);
    }
    let e = Expr::parse("attribute:site in [a b]").unwrap_err();
    assert!(e.to_string().contains("at position 21"), "{e}");
}

#[test]
fn microvm_tasks_go_only_where_the_capability_is() {
    let mut c = vec![
        inst("a", 4096, 2000, &[]),
        inst(
            "b",
            4096,
            2000,
            &[(skiff_runtime::vm::CAPABILITY_ATTRIBUTE, "")],
        ),
    ];
    let n = Needs {
        requires: vec![skiff_runtime::vm::CAPABILITY_ATTRIBUTE.into()],
        ..needs(10, 10)
    };
    let p = place(
        &mut c,
        &n,
        2,
        &strategies(&[("spread", Some("instanceId"))]),
        &[],
        1,
    );
    assert_eq!(ids(&c, &p), ["b", "b"]);
    let mut none = vec![inst("a", 4096, 2000, &[])];
    let p = place(&mut none, &n, 1, &[], &[], 1);
    assert_eq!(p.failures, [("a".to_owned(), Reason::Attribute)]);
}
