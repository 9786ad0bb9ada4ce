//! netd against the real kernel, as root: a "node" network namespace and a "LAN" namespace made
//! by the test (never the host's), real links, real nftables, real TCP and UDP traffic.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use skiff_netd::kernel::Kernel;
use skiff_netd::{
    AwsvpcConfig, LanPool, Mode, NetConfig, NetDirs, Netlink, Nft, NodeNetwork, PortRequest,
    Protocol, TaskRequest,
};

fn privileged() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("SKIFF_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
        "needs root (network namespaces), and SKIFF_REQUIRE_PRIVILEGED=1 forbids skipping"
    );
    eprintln!("SKIP: needs root (network namespaces, nftables)");
    false
}

/// Runs `f` on a thread inside the namespace at `ns`.
fn in_ns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = std::fs::File::open(ns).unwrap();
    std::thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// A TCP server in `ns` on `port` that answers each connection with the peer's address.
fn serve_tcp(ns: &Path, port: u16) {
    let l = in_ns(ns, move || TcpListener::bind(("0.0.0.0", port)).unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(s.peer_addr().unwrap().ip().to_string().as_bytes());
        }
    });
}

/// A UDP server in `ns` on `port` that answers each datagram with the peer's address.
fn serve_udp(ns: &Path, port: u16) {
    let u = in_ns(ns, move || UdpSocket::bind(("0.0.0.0", port)).unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, peer)) = u.recv_from(&mut buf) {
            let _ = u.send_to(peer.ip().to_string().as_bytes(), peer);
        }
    });
}

/// From `ns`, what the TCP server at `to` saw as our address.
fn ask_tcp(ns: &Path, to: &str) -> String {
    let to: SocketAddr = to.parse().unwrap();
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect {to}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
}

fn ask_udp(ns: &Path, to: &str) -> String {
    let to: SocketAddr = to.parse().unwrap();
    in_ns(ns, move || {
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        u.send_to(b"?", to).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = u
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("udp {to}: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
}

fn cannot_reach(ns: &Path, to: &str) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    in_ns(ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_millis(500)).is_err()
    })
}

fn sh(ns: &Path, cmd: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["sh", "-c", cmd])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Site {
    tmp: tempfile::TempDir,
    node: PathBuf,
    lan: PathBuf,
}

impl Site {
    /// A node namespace with an uplink to a LAN namespace (192.168.77.0/24, node .1, LAN .2),
    /// the LAN routing the awsvpc subnet to the node.
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let k = kernel_for_files();
        let (node, lan) = (tmp.path().join("node"), tmp.path().join("lan"));
        k.create_netns(&node).unwrap();
        k.create_netns(&lan).unwrap();
        sh(
            &node,
            &format!(
                "ip link set lo up && ip link add uplink0 type veth peer name lan0 netns {} && ip addr add 192.168.77.1/24 dev uplink0 && ip link set uplink0 up",
                lan.display()
            ),
        );
        sh(
            &lan,
            "ip link set lo up && ip addr add 192.168.77.2/24 dev lan0 && ip link set lan0 up && ip route add 10.124.0.0/24 via 192.168.77.1",
        );
        Self { tmp, node, lan }
    }

    fn dirs(&self) -> NetDirs {
        NetDirs {
            netns_dir: self.tmp.path().join("netns"),
            leases: self.tmp.path().join("state/leases.json"),
        }
    }

    /// Runs `f` with a network of `cfg` applying firewall changes with what `nft` makes (in the
    /// node namespace: libnftables opens its socket where its context is made), inside the node
    /// namespace, on a runtime of its own.
    fn with_network<T: Send + 'static>(
        &self,
        cfg: NetConfig,
        nft: fn() -> Nft,
        f: impl AsyncFnOnce(&NodeNetwork) -> T + Send + 'static,
    ) -> T {
        let dirs = self.dirs();
        in_ns(&self.node, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let net = NodeNetwork::init(cfg, dirs, Netlink::open().unwrap(), nft())
                    .await
                    .unwrap();
                f(&net).await
            })
        })
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let k = kernel_for_files();
        for e in std::fs::read_dir(self.tmp.path().join("netns"))
            .into_iter()
            .flatten()
            .flatten()
        {
            k.remove_netns(&e.path());
        }
        k.remove_netns(&self.lan);
        k.remove_netns(&self.node);
    }
}

/// Namespace files need no netlink connection; a runtime only for Netlink::open.
fn kernel_for_files() -> Netlink {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    Netlink::open().unwrap()
}

fn cfg(awsvpc: Option<AwsvpcConfig>) -> NetConfig {
    NetConfig {
        bridge: "sktest0".into(),
        bridge_subnet: "10.123.0.0/24".parse().unwrap(),
        dynamic_ports: "40000-40010".into(),
        table: "skiff_test".into(),
        awsvpc,
        ..NetConfig::default()
    }
}

fn port(container_port: u16, host_port: Option<u16>, protocol: Protocol) -> PortRequest {
    PortRequest {
        container_name: "web".into(),
        container_port,
        host_port,
        protocol,
    }
}

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const C: &str = "cccccccccccccccccccccccccccccccc";

#[test]
fn bridge_port_mappings_nat_and_routed_awsvpc_with_real_traffic() {
    if !privileged() {
        return;
    }
    let site = Site::new();
    let (node, lan) = (site.node.clone(), site.lan.clone());
    let routed = Some(AwsvpcConfig::Routed {
        subnet: "10.124.0.0/24".parse().unwrap(),
    });
    site.with_network(cfg(routed), Nft::new, async move |net: &NodeNetwork| {
        let req = |id: &str, mode, ports| TaskRequest {
            task_id: id.into(),
            mode,
            ports,
        };
        let a = net
            .setup(&req(
                A,
                Mode::Bridge,
                vec![
                    port(80, Some(8080), Protocol::Tcp),
                    port(53, Some(5353), Protocol::Udp),
                    port(81, None, Protocol::Tcp),
                ],
            ))
            .await
            .unwrap();
        let b = net.setup(&req(B, Mode::Bridge, vec![])).await.unwrap();
        let c = net.setup(&req(C, Mode::Awsvpc, vec![])).await.unwrap();
        assert_eq!(a.address.to_string(), "10.123.0.2");
        let dynamic = a.ports[2].host_port;
        assert!((40000..=40010).contains(&dynamic));
        let (na, nb, nc) = (a.netns.clone(), b.netns.clone(), c.netns.clone());
        serve_tcp(&na, 80);
        serve_tcp(&na, 81);
        serve_udp(&na, 53);
        serve_tcp(&nc, 80);
        serve_tcp(&lan, 9000);
        // Other host -> node hostPort -> task: the task sees the real client.
        assert_eq!(ask_tcp(&lan, "192.168.77.1:8080"), "192.168.77.2");
        assert_eq!(ask_udp(&lan, "192.168.77.1:5353"), "192.168.77.2");
        assert_eq!(
            ask_tcp(&lan, &format!("192.168.77.1:{dynamic}")),
            "192.168.77.2"
        );
        // The node itself, localhost included.
        assert_eq!(ask_tcp(&node, "127.0.0.1:8080"), "10.123.0.1");
        assert_eq!(ask_tcp(&node, "192.168.77.1:8080"), "192.168.77.1");
        // Task <-> task over the bridge, directly and through the host port (hairpin).
        assert_eq!(ask_tcp(&nb, "10.123.0.2:80"), "10.123.0.3");
        assert_eq!(ask_tcp(&nb, "192.168.77.1:8080"), "10.123.0.1");
        // Egress through NAT: the LAN sees the node's address.
        assert_eq!(ask_tcp(&na, "192.168.77.2:9000"), "192.168.77.1");
        // The routed awsvpc task at its own address, from the LAN, and its own egress.
        assert_eq!(c.address.to_string(), "10.124.0.1");
        assert_eq!(ask_tcp(&lan, "10.124.0.1:80"), "192.168.77.2");
        assert_eq!(ask_tcp(&nc, "192.168.77.2:9000"), "10.124.0.1");
        // Namespaces are the tasks' own: A's port 80 is not B's.
        assert!(cannot_reach(&nb, "127.0.0.1:80"));
        // The metadata address answers tasks only through Skiff's links (nothing listens: a
        // refusal, not a timeout, from a task; silence from the LAN).
        let meta = "169.254.170.2:80";
        in_ns(&nb, move || {
            let e = TcpStream::connect_timeout(&meta.parse().unwrap(), Duration::from_secs(2))
                .unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        });
        sh(&lan, "ip route add 169.254.170.2 via 192.168.77.1");
        in_ns(&lan, move || {
            let e = TcpStream::connect_timeout(&meta.parse().unwrap(), Duration::from_secs(1))
                .unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        });
        // Handed to a microVM: C's eth0 is joined to a tap both ways, and its namespace's own
        // stack no longer answers (with no VMM on the tap, nothing does).
        let guest = net.attach_vm(&c).await.unwrap();
        assert_eq!(guest.nics.len(), 1);
        assert_eq!(
            (guest.nics[0].name.as_str(), guest.nics[0].tap.as_str()),
            ("eth0", "tap0")
        );
        let mac = guest.nics[0].mac.map(|b| format!("{b:02x}")).join(":");
        assert!(sh(&nc, "ip -o link show eth0").contains(&mac));
        for (dev, to) in [("eth0", "tap0"), ("tap0", "eth0")] {
            let f = sh(&nc, &format!("tc filter show dev {dev} ingress"));
            assert!(f.contains("protocol all"), "{f}");
            assert!(
                f.contains(&format!("Egress Redirect to device {to}")),
                "{f}"
            );
        }
        assert!(cannot_reach(&lan, "10.124.0.1:80"));
        // Teardown leaves nothing.
        for t in [A, B, C] {
            net.teardown(t).await.unwrap();
        }
        net.reconcile(&HashSet::new()).await.unwrap();
        let links = sh(&node, "ip -o link show");
        assert!(
            !links.contains(": sk")
                || links
                    .lines()
                    .all(|l| !l.contains(": skb") && !l.contains(": skr")),
            "{links}"
        );
        let table = sh(&node, "nft list table ip skiff_test");
        assert!(!table.contains("elements"), "{table}");
        assert!(
            std::fs::read_dir(na.parent().unwrap())
                .unwrap()
                .next()
                .is_none()
        );
        assert!(net.leased_tasks().is_empty());
    });
}

#[test]
fn macvlan_awsvpc_task_on_the_lan_and_its_metadata_link() {
    if !privileged() {
        return;
    }
    let site = Site::new();
    let lan = site.lan.clone();
    let pool = LanPool {
        parent: "uplink0".into(),
        subnet: "192.168.77.0/24".parse().unwrap(),
        first: Ipv4Addr::new(192, 168, 77, 100),
        last: Ipv4Addr::new(192, 168, 77, 120),
        gateway: Ipv4Addr::new(192, 168, 77, 2),
    };
    // ipvlan takes the same path with another link kind; this kernel has no CONFIG_IPVLAN.
    let lan_mode = AwsvpcConfig::Macvlan(pool);
    {
        let lan = lan.clone();
        let node = site.node.clone();
        // The nft command, where libnftables is missing.
        site.with_network(
            cfg(Some(lan_mode)),
            Nft::command,
            async move |net: &NodeNetwork| {
                let t = net
                    .setup(&TaskRequest {
                        task_id: A.into(),
                        mode: Mode::Awsvpc,
                        ports: vec![],
                    })
                    .await
                    .unwrap();
                assert_eq!(t.address.to_string(), "192.168.77.100");
                serve_tcp(&t.netns, 80);
                serve_tcp(&lan, 9000);
                serve_tcp(&node, 80);
                // The LAN reaches the task at its own address, on the same segment.
                assert_eq!(ask_tcp(&lan, "192.168.77.100:80"), "192.168.77.2");
                assert_eq!(ask_tcp(&t.netns, "192.168.77.2:9000"), "192.168.77.100");
                // The node answers the metadata address over the metadata link.
                let meta_listener =
                    in_ns(&node, || TcpListener::bind("169.254.170.2:8099").unwrap());
                std::thread::spawn(move || {
                    let (mut s, peer) = meta_listener.accept().unwrap();
                    let _ = s.write_all(peer.ip().to_string().as_bytes());
                });
                assert_eq!(ask_tcp(&t.netns, "169.254.170.2:8099"), "169.254.172.2");
                net.teardown(A).await.unwrap();
                assert!(!t.netns.exists());
            },
        );
    }
}
