//! Task networking end to end, as root: skiffd (in a network namespace of its own standing in for
//! the node) runs bridge and awsvpc tasks, and real TCP and UDP traffic flows between them, a
//! stand-in "LAN"/"other host" namespace made by the test, and the node itself. No traffic
//! leaves the namespaces the test made.

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use skiff_tests::{BUSYBOX, Lan, Skiffd, get, in_netns, privileged, serve_peer};

fn bb(name: &str, extra: &str) -> String {
    format!(r#"{{"name":"{name}","image":"{BUSYBOX}",{extra}}}"#)
}

/// A container serving `text` over HTTP on `port` (busybox httpd).
fn web(name: &str, text: &str, listen: &str, extra: &str) -> String {
    bb(
        name,
        &format!(
            r#""command":["sh","-c","mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p {listen} -h /www"],"stopTimeout":2{extra}"#
        ),
    )
}

fn logs(d: &Skiffd, id: &str, container: &str) -> String {
    let out = d.cmd(&["logs", id, container]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn address(rec: &serde_json::Value) -> String {
    rec["containers"][0]["networkInterfaces"][0]["privateIpv4Address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address: {rec:#}"))
        .to_owned()
}

const BRIDGE: &str =
    "[network]\nbridge_subnet = \"10.200.0.0/24\"\ndynamic_ports = \"40000-40100\"\n";

#[test]
fn bridge_tasks_port_mappings_nat_and_names_with_real_traffic() {
    if !privileged("bridge_tasks_port_mappings_nat_and_names_with_real_traffic") {
        return;
    }
    let d = Skiffd::start(BRIDGE);
    let lan = Lan::attach(&d);
    serve_peer(&lan.ns, 9000);
    // A node process holding 8090: a mapping of it is refused, not silently shadowed.
    let _held = in_netns(&d.netns, || TcpListener::bind("0.0.0.0:8090").unwrap());

    let a = d.run_def(
        &format!(
            r#"{{"family":"web","networkMode":"bridge","memory":"128","containerDefinitions":[{},{},{},{}]}}"#,
            web("web", "A", "80", r#","portMappings":[{"containerPort":80,"hostPort":8080}]"#),
            web("private", "P", "127.0.0.1:7000", r#","essential":false"#),
            web("dyn", "D", "81", r#","essential":false,"portMappings":[{"containerPort":81}]"#),
            bb("udp", r#""essential":false,"stopTimeout":2,"portMappings":[{"containerPort":53,"hostPort":5353,"protocol":"udp"}],"command":["sleep","600"]"#),
        ),
        false,
    );
    let rec = d.describe(&a);
    let a_ip = address(&rec);
    assert!(a_ip.starts_with("10.200.0."), "{rec:#}");
    let binding = |c: &str| Skiffd::container(&rec, c)["networkBindings"][0].clone();
    assert_eq!(binding("web")["hostPort"], 8080, "{rec:#}");
    assert_eq!(binding("web")["bindIP"], "0.0.0.0");
    let dynamic = binding("dyn")["hostPort"].as_u64().unwrap();
    assert!((40000..=40100).contains(&dynamic), "{rec:#}");
    assert_eq!(rec["attachments"][0]["status"], "ATTACHED");

    // Other host -> node hostPort -> task, TCP (fixed and dynamic) and UDP.
    assert_eq!(get(&lan.ns, "192.168.77.1:8080").unwrap(), "A");
    assert_eq!(
        get(&lan.ns, &format!("192.168.77.1:{dynamic}")).unwrap(),
        "D"
    );
    // The node itself, its localhost included.
    assert_eq!(get(&d.netns, "127.0.0.1:8080").unwrap(), "A");
    assert_eq!(get(&d.netns, &format!("{a_ip}:80")).unwrap(), "A");
    // Loopback-bound services stay inside the task.
    assert!(get(&d.netns, &format!("{a_ip}:7000")).is_err());

    // Task B: to A by address and through the node's host port (hairpin), out to the other host
    // through NAT, and its /etc files.
    let b = d.run_def(
        &format!(
            r#"{{"family":"client","networkMode":"bridge","memory":"64","containerDefinitions":[{}]}}"#,
            bb("c", &format!(r#""command":["sh","-c","wget -qO- http://{a_ip}/; wget -qO- http://192.168.77.1:8080/; wget -qO- http://192.168.77.2:9000/; wget -T 2 -qO- http://{a_ip}:7000/ || echo private-refused; cat /etc/hosts /etc/resolv.conf; echo uri=$ECS_CONTAINER_METADATA_URI_V4"]"#)),
        ),
        false,
    );
    let rec_b = d.wait_stopped(&b);
    let out = logs(&d, &b, "c");
    let b_ip = address(&rec_b);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..4],
        ["A", "A", "192.168.77.1", "private-refused"],
        "{out}"
    );
    assert!(
        out.contains(&format!("{b_ip}\tc ip-{}", b_ip.replace('.', "-"))),
        "{out}"
    );
    assert!(out.contains("uri=http://169.254.170.2/v4/"), "{out}");
    // The containers of A share one namespace: by localhost and by name.
    let shared = d.ok(&[
        "exec",
        &a,
        "private",
        "--",
        "sh",
        "-c",
        "wget -qO- http://localhost:80/; wget -qO- http://web/; wget -qO- http://127.0.0.1:7000/",
    ]);
    assert_eq!(
        shared.lines().collect::<Vec<_>>(),
        ["A", "A", "P"],
        "{shared}"
    );
    // UDP from the other host reaches the task's namespace through the mapping. Busybox's nc has
    // no UDP, so the receiver is a socket of this test opened inside the task's namespace.
    let task_ns = PathBuf::from(rec["network"]["netns"].as_str().unwrap());
    let rx = in_netns(&task_ns, || UdpSocket::bind("0.0.0.0:53").unwrap());
    rx.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    in_netns(&lan.ns, || {
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        u.send_to(b"hello-udp", "192.168.77.1:5353").unwrap();
    });
    let mut buf = [0u8; 16];
    let (n, from) = rx
        .recv_from(&mut buf)
        .expect("the datagram reaches the task");
    assert_eq!(
        (&buf[..n], from.ip().to_string().as_str()),
        (&b"hello-udp"[..], "192.168.77.2")
    );

    // Host ports already taken, by another task or by a node process: refused at placement
    // with a clear reason, and no task is made.
    let clash = d.dir.path().join("clash.json");
    for (port, says) in [
        (
            8080,
            format!("hostPort 8080/tcp is already mapped by task {a}"),
        ),
        (8090, "hostPort 8090/tcp is in use on the node".to_owned()),
    ] {
        std::fs::write(
            &clash,
            format!(
                r#"{{"family":"clash","networkMode":"bridge","memory":"64","containerDefinitions":[{}]}}"#,
                bb("c", &format!(r#""command":["true"],"portMappings":[{{"containerPort":80,"hostPort":{port}}}]"#)),
            ),
        )
        .unwrap();
        let out = d
            .cmd(&["task", "run", "-f", clash.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(&says), "{err}");
    }
    assert_eq!(d.ok(&["task", "ls", "-a", "-q"]).lines().count(), 2);
    d.ok(&["task", "stop", &a]);
    d.ok(&["task", "rm", &a]);
    d.ok(&["task", "rm", &b]);
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
}

#[test]
fn awsvpc_tasks_have_their_own_address_routed_and_on_the_lan() {
    if !privileged("awsvpc_tasks_have_their_own_address_routed_and_on_the_lan") {
        return;
    }
    let def = format!(
        r#"{{"family":"eni","networkMode":"awsvpc","memory":"64","containerDefinitions":[{}]}}"#,
        web(
            "web",
            "E",
            "80",
            r#","portMappings":[{"containerPort":80}]"#
        )
    );
    // Routed: the LAN routes 10.201.0.0/24 to the node.
    let d = Skiffd::start(&format!(
        "{BRIDGE}[network.awsvpc]\nmode = \"routed\"\nsubnet = \"10.201.0.0/24\"\n"
    ));
    let lan = Lan::attach(&d);
    serve_peer(&lan.ns, 9000);
    let t = d.run_def(&def, false);
    let rec = d.describe(&t);
    let ip = address(&rec);
    assert!(ip.starts_with("10.201.0."), "{rec:#}");
    assert_eq!(rec["attachments"][0]["type"], "ElasticNetworkInterface");
    let binding = &rec["containers"][0]["networkBindings"][0];
    assert_eq!(
        (binding["bindIP"].as_str(), binding["hostPort"].as_u64()),
        (Some(ip.as_str()), Some(80))
    );
    assert_eq!(get(&lan.ns, &format!("{ip}:80")).unwrap(), "E");
    // Egress keeps the task's own address (no NAT), as an ENI's.
    let seen = d.ok(&[
        "exec",
        &t,
        "web",
        "--",
        "sh",
        "-c",
        "wget -qO- http://192.168.77.2:9000/",
    ]);
    assert_eq!(seen.trim(), ip);
    // Two awsvpc tasks: each its own namespace and address, reachable from each other.
    let t2 = d.run_def(&def.replace("echo E", "echo F"), false);
    let ip2 = address(&d.describe(&t2));
    assert_ne!(ip, ip2);
    let from2 = d.ok(&[
        "exec",
        &t2,
        "web",
        "--",
        "sh",
        "-c",
        &format!("wget -qO- http://{ip}/"),
    ]);
    assert_eq!(from2.trim(), "E");
    for id in [&t, &t2] {
        d.ok(&["task", "stop", id]);
    }
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
    drop(lan);
    drop(d);

    // macvlan: a LAN address from the pool, on the LAN's own segment.
    let d = Skiffd::start(&format!(
        "{BRIDGE}[network.awsvpc]\nmode = \"macvlan\"\nparent = \"uplink0\"\nsubnet = \"192.168.77.0/24\"\nfirst = \"192.168.77.100\"\nlast = \"192.168.77.110\"\ngateway = \"192.168.77.2\"\n"
    ));
    // The uplink must exist before the first task (it is the parent of the task's link).
    let lan = Lan::attach(&d);
    let t = d.run_def(&def, false);
    let ip = address(&d.describe(&t));
    assert_eq!(ip, "192.168.77.100");
    assert_eq!(get(&lan.ns, "192.168.77.100:80").unwrap(), "E");
    d.ok(&["task", "stop", &t]);
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
}

#[test]
fn kill_9_skiffd_keeps_running_networks_and_reconciles_the_rest() {
    if !privileged("kill_9_skiffd_keeps_running_networks_and_reconciles_the_rest") {
        return;
    }
    let mut d = Skiffd::start(BRIDGE);
    let lan = Lan::attach(&d);
    let def = |text: &str, port: u16| {
        format!(
            r#"{{"family":"web","networkMode":"bridge","memory":"64","containerDefinitions":[{}]}}"#,
            web(
                "web",
                text,
                "80",
                &format!(r#","portMappings":[{{"containerPort":80,"hostPort":{port}}}]"#)
            )
        )
    };
    let live = d.run_def(&def("LIVE", 8080), false);
    let dead = d.run_def(&def("DEAD", 8081), false);
    let dead_pid = Skiffd::container(&d.describe(&dead), "web")["pid"]
        .as_i64()
        .unwrap();
    d.kill9();
    // While skiffd is down: one task dies, and debris of no task appears (a crash mid-setup).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dead_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    d.sh("ip link add skb0123456789ab type veth peer name x0123");
    std::fs::write(d.run_dir.join("netns/0123456789abcdef0123456789abcdef"), "").unwrap();
    assert_eq!(
        get(&lan.ns, "192.168.77.1:8080").unwrap(),
        "LIVE",
        "traffic flows while skiffd is down"
    );
    d.spawn();
    let rec = d.wait_stopped(&dead);
    assert_eq!(Skiffd::container(&rec, "web")["exitCode"], 137);
    assert_eq!(get(&lan.ns, "192.168.77.1:8080").unwrap(), "LIVE");
    assert!(get(&lan.ns, "192.168.77.1:8081").is_err());
    let links = d.sh("ip -o link show");
    assert!(!links.contains("skb0123456789ab"), "{links}");
    assert!(
        !d.run_dir
            .join("netns/0123456789abcdef0123456789abcdef")
            .exists()
    );
    // The dead task's port is free again for a new task.
    let again = d.run_def(&def("AGAIN", 8081), false);
    assert_eq!(get(&lan.ns, "192.168.77.1:8081").unwrap(), "AGAIN");
    for id in [&live, &again] {
        d.ok(&["task", "stop", id]);
    }
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
}

#[test]
fn five_hundred_start_stop_cycles_leave_no_network_behind() {
    if !privileged("five_hundred_start_stop_cycles_leave_no_network_behind") {
        return;
    }
    let d = Skiffd::start(&format!(
        "{BRIDGE}[network.awsvpc]\nmode = \"routed\"\nsubnet = \"10.201.0.0/24\"\n"
    ));
    let bridge = d.dir.path().join("bridge.json");
    let awsvpc = d.dir.path().join("awsvpc.json");
    let c = bb(
        "c",
        r#""command":["true"],"portMappings":[{"containerPort":80}]"#,
    );
    std::fs::write(
        &bridge,
        format!(
            r#"{{"family":"b","networkMode":"bridge","memory":"32","containerDefinitions":[{c}]}}"#
        ),
    )
    .unwrap();
    std::fs::write(
        &awsvpc,
        format!(
            r#"{{"family":"a","networkMode":"awsvpc","memory":"32","containerDefinitions":[{c}]}}"#
        ),
    )
    .unwrap();
    // Four clients at once, half bridge (with a dynamic port) and half awsvpc: 500 in all.
    std::thread::scope(|s| {
        for w in 0..4 {
            let (d, def) = (&d, if w % 2 == 0 { &bridge } else { &awsvpc });
            s.spawn(move || {
                for _ in 0..125 {
                    let id = d
                        .ok(&["task", "run", "--detach", "-f", def.to_str().unwrap()])
                        .trim()
                        .to_owned();
                    let out = d.cmd(&["task", "wait", &id]).output().unwrap();
                    assert!(out.status.success(), "{id}: {}", d.log());
                    d.ok(&["task", "rm", &id]);
                }
            });
        }
    });
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
    let table = d.sh("nft list table ip skiff");
    assert!(!table.contains("elements"), "{table}");
}
