//! The networking logic against a recording fake kernel and firewall: what is made, in which
//! order, and that a failure half-way or a teardown leaves nothing.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::*;
use crate::config::LanPool;

#[derive(Clone, Default)]
struct FakeKernel {
    calls: Arc<Mutex<Vec<String>>>,
    links: Arc<Mutex<HashSet<String>>>,
    fail_on: Arc<Mutex<Option<&'static str>>>,
}

impl FakeKernel {
    fn record(&self, op: &'static str, what: String) -> Result<(), KernelError> {
        self.calls.lock().unwrap().push(format!("{op} {what}"));
        if *self.fail_on.lock().unwrap() == Some(op) {
            return Err(KernelError::Netlink {
                op,
                object: what,
                source: rtnetlink::Error::RequestFailed,
            });
        }
        Ok(())
    }
    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl Kernel for FakeKernel {
    fn create_netns(&self, path: &std::path::Path) -> Result<(), KernelError> {
        self.record("netns", path.file_name().unwrap().to_string_lossy().into())?;
        std::fs::write(path, "").unwrap();
        Ok(())
    }
    fn remove_netns(&self, path: &std::path::Path) {
        let _ = std::fs::remove_file(path);
    }
    fn sysctl(&self, key: &str, value: &str) -> Result<(), KernelError> {
        self.record("sysctl", format!("{key}={value}"))
    }
    async fn ensure_bridge(&self, name: &str, addrs: &[Ipv4Net]) -> Result<(), KernelError> {
        let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        self.record("bridge", format!("{name} {}", addrs.join(",")))
    }
    async fn add_veth(
        &self,
        host: &str,
        master: Option<&str>,
        _ns: &std::path::Path,
        peer: &str,
    ) -> Result<(), KernelError> {
        self.record("veth", format!("{host} {master:?} {peer}"))?;
        self.links.lock().unwrap().insert(host.to_owned());
        Ok(())
    }
    async fn add_sublink(
        &self,
        kind: SubLink,
        parent: &str,
        _ns: &std::path::Path,
        name: &str,
    ) -> Result<(), KernelError> {
        self.record("sublink", format!("{kind:?} {parent} {name}"))
    }
    async fn configure_ns(&self, _ns: &std::path::Path, s: &NsSetup) -> Result<(), KernelError> {
        let addrs: Vec<String> = s
            .addrs
            .iter()
            .map(|a| format!("{}={}", a.dev, a.addr))
            .collect();
        let routes: Vec<String> = s
            .routes
            .iter()
            .map(|r| {
                format!(
                    "{}>{}@{}",
                    r.dest,
                    r.via.map(|v| v.to_string()).unwrap_or_default(),
                    r.dev
                )
            })
            .collect();
        self.record(
            "configure",
            format!("{} | {}", addrs.join(","), routes.join(",")),
        )
    }
    async fn add_host_route(&self, dest: Ipv4Addr, dev: &str) -> Result<(), KernelError> {
        self.record("route", format!("{dest} {dev}"))
    }
    async fn add_tap_redirect(
        &self,
        ns: &std::path::Path,
        dev: &str,
        tap: &str,
    ) -> Result<crate::kernel::LinkInfo, KernelError> {
        let ns = ns.file_name().unwrap().to_string_lossy();
        self.record("tap", format!("{ns} {dev}<->{tap}"))?;
        Ok(crate::kernel::LinkInfo {
            mac: [2, 0, 0, 0, 0, tap.len() as u8],
            mtu: 1500,
        })
    }
    async fn delete_link(&self, name: &str) -> Result<bool, KernelError> {
        self.record("delete", name.to_owned())?;
        Ok(self.links.lock().unwrap().remove(name))
    }
    async fn links(&self) -> Result<Vec<String>, KernelError> {
        Ok(self.links.lock().unwrap().iter().cloned().collect())
    }
}

#[derive(Clone, Default)]
struct FakeFirewall {
    scripts: Arc<Mutex<Vec<String>>>,
    refuse_deletes: bool,
}

impl Firewall for FakeFirewall {
    async fn apply(&self, table: &str, script: String) -> Result<(), NftError> {
        self.scripts.lock().unwrap().push(script.clone());
        if self.refuse_deletes && script.starts_with("delete element") {
            return Err(NftError::Refused {
                table: table.into(),
                stderr: "No such file or directory".into(),
            });
        }
        Ok(())
    }
}

const A: &str = "0123456789abcdef0123456789abcdef";
const B: &str = "fedcba9876543210fedcba9876543210";

struct Fixture {
    _tmp: tempfile::TempDir,
    dirs: NetDirs,
    kernel: FakeKernel,
    fw: FakeFirewall,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = NetDirs {
        netns_dir: tmp.path().join("netns"),
        leases: tmp.path().join("state/leases.json"),
    };
    Fixture {
        _tmp: tmp,
        dirs,
        kernel: FakeKernel::default(),
        fw: FakeFirewall::default(),
    }
}

async fn network(f: &Fixture, cfg: NetConfig) -> Network<FakeKernel, FakeFirewall> {
    Network::init(cfg, f.dirs.clone(), f.kernel.clone(), f.fw.clone())
        .await
        .unwrap()
}

fn web(host_port: Option<u16>) -> PortRequest {
    PortRequest {
        container_name: "web".into(),
        container_port: 80,
        host_port,
        protocol: Protocol::Tcp,
    }
}

fn req(id: &str, mode: Mode, ports: Vec<PortRequest>) -> TaskRequest {
    TaskRequest {
        task_id: id.into(),
        mode,
        ports,
    }
}

#[tokio::test]
async fn init_sets_the_node_up_and_writes_the_table() {
    let f = fixture();
    let _n = network(&f, NetConfig::default()).await;
    assert_eq!(
        f.kernel.calls(),
        [
            "sysctl net/ipv4/ip_forward=1",
            "bridge skiff0 172.30.0.1/16,169.254.170.2/32",
            "sysctl net/ipv4/conf/skiff0/route_localnet=1",
        ]
    );
    let scripts = f.fw.scripts.lock().unwrap().clone();
    assert_eq!(scripts.len(), 1);
    assert!(scripts[0].contains("delete table ip skiff"));
}

#[tokio::test]
async fn a_bridge_task_gets_a_veth_an_address_and_its_port_mappings() {
    let f = fixture();
    let n = network(&f, NetConfig::default()).await;
    f.kernel.calls();
    // A port free on this machine (bound and let go).
    let fixed = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let net = n
        .setup(&req(A, Mode::Bridge, vec![web(Some(fixed)), web(None)]))
        .await
        .unwrap();
    assert_eq!(net.address, Ipv4Addr::new(172, 30, 0, 2));
    assert_eq!(net.gateway, Ipv4Addr::new(172, 30, 0, 1));
    assert_eq!(net.host_link, "skb0123456789ab");
    assert_eq!(net.ports.len(), 2);
    assert_eq!(net.ports[0].host_port, fixed);
    assert!((49153..=65535).contains(&net.ports[1].host_port));
    assert_eq!(
        f.kernel.calls(),
        [
            format!("netns {A}"),
            "veth skb0123456789ab Some(\"skiff0\") eth0".into(),
            "configure eth0=172.30.0.2/16 | 0.0.0.0/0>172.30.0.1@eth0".into(),
        ]
    );
    let last = f.fw.scripts.lock().unwrap().last().cloned().unwrap();
    assert!(
        last.starts_with(&format!(
            "add element ip skiff tcp_ports {{ {fixed} : 172.30.0.2 . 80, "
        )),
        "{last}"
    );
    // The port is held: nobody else on the node can bind it.
    assert!(std::net::TcpListener::bind(("0.0.0.0", fixed)).is_err());
    // A second task asking for it gets a clear refusal, and nothing of it is left.
    let err = n
        .setup(&req(B, Mode::Bridge, vec![web(Some(fixed))]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("hostPort {fixed}/tcp is already mapped by task {A}")
    );
    assert_eq!(n.leased_tasks(), [A]);
    n.teardown(A).await.unwrap();
    assert_eq!(f.kernel.calls(), ["delete skb0123456789ab"]);
    assert!(
        f.fw.scripts
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .starts_with(&format!("delete element ip skiff tcp_ports {{ {fixed}, "))
    );
    assert!(n.leased_tasks().is_empty());
    assert!(!n.netns_path(A).exists());
    std::net::TcpListener::bind(("0.0.0.0", fixed)).unwrap();
    // Teardown is idempotent.
    n.teardown(A).await.unwrap();
}

#[tokio::test]
async fn a_failure_half_way_leaves_nothing() {
    let f = fixture();
    let n = network(&f, NetConfig::default()).await;
    f.kernel.calls();
    *f.kernel.fail_on.lock().unwrap() = Some("configure");
    let err = n
        .setup(&req(A, Mode::Bridge, vec![web(None)]))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("configure "), "{err}");
    let calls = f.kernel.calls();
    assert_eq!(calls.last().unwrap(), "delete skb0123456789ab", "{calls:?}");
    assert!(n.leased_tasks().is_empty());
    assert!(!n.netns_path(A).exists());
    assert!(f.kernel.links.lock().unwrap().is_empty());
}

#[tokio::test]
async fn awsvpc_routed_and_lan_modes() {
    let f = fixture();
    let n = network(&f, NetConfig::default()).await;
    let err = n.setup(&req(A, Mode::Awsvpc, vec![])).await.unwrap_err();
    assert!(err.to_string().contains("[network.awsvpc]"), "{err}");
    drop(n);

    let routed = NetConfig {
        awsvpc: Some(AwsvpcConfig::Routed {
            subnet: "10.99.0.0/24".parse().unwrap(),
        }),
        ..NetConfig::default()
    };
    let n = network(&f, routed).await;
    f.kernel.calls();
    let net = n
        .setup(&req(A, Mode::Awsvpc, vec![web(Some(80))]))
        .await
        .unwrap();
    assert_eq!(
        (net.address, net.gateway),
        (Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(169, 254, 170, 2))
    );
    assert!(net.ports.is_empty(), "awsvpc maps no host port");
    assert_eq!(
        net.meta_address, None,
        "the task's own address reaches the metadata endpoint"
    );
    assert_eq!(
        f.kernel.calls()[1..],
        [
            "veth skr0123456789ab None eth0",
            "route 10.99.0.1 skr0123456789ab",
            "configure eth0=10.99.0.1/32 | 169.254.170.2/32>@eth0,0.0.0.0/0>169.254.170.2@eth0",
        ]
    );
    n.teardown(A).await.unwrap();
    drop(n);

    let lan = NetConfig {
        awsvpc: Some(AwsvpcConfig::Macvlan(LanPool {
            parent: "eth9".into(),
            subnet: "192.168.50.0/24".parse().unwrap(),
            first: Ipv4Addr::new(192, 168, 50, 100),
            last: Ipv4Addr::new(192, 168, 50, 101),
            gateway: Ipv4Addr::new(192, 168, 50, 1),
        })),
        ..NetConfig::default()
    };
    let n = network(&f, lan).await;
    f.kernel.calls();
    let net = n.setup(&req(B, Mode::Awsvpc, vec![])).await.unwrap();
    assert_eq!(net.address, Ipv4Addr::new(192, 168, 50, 100));
    assert_eq!(net.meta_address, Some(Ipv4Addr::new(169, 254, 172, 2)));
    assert_eq!(
        f.kernel.calls()[1..],
        [
            "sublink Macvlan eth9 eth0",
            "veth skmfedcba987654 None meta0",
            "route 169.254.172.2 skmfedcba987654",
            "configure eth0=192.168.50.100/24,meta0=169.254.172.2/32 | 169.254.170.2/32>@meta0,0.0.0.0/0>192.168.50.1@eth0",
        ]
    );

    // A microVM takes the same network: a tap per interface, the same addresses and routes.
    let guest = n.attach_vm(&net).await.unwrap();
    assert_eq!(
        f.kernel.calls(),
        [
            format!("tap {B} eth0<->tap0"),
            format!("tap {B} meta0<->tap1")
        ]
    );
    let nics: Vec<(&str, &str)> = guest
        .nics
        .iter()
        .map(|n| (n.name.as_str(), n.tap.as_str()))
        .collect();
    assert_eq!(nics, [("eth0", "tap0"), ("meta0", "tap1")]);
    let inside = n.inside(&net);
    assert_eq!((guest.addrs, guest.routes), (inside.addrs, inside.routes));
}

#[tokio::test]
async fn reconcile_keeps_live_tasks_and_removes_the_rest() {
    let f = fixture();
    let n = network(&f, NetConfig::default()).await;
    n.setup(&req(A, Mode::Bridge, vec![])).await.unwrap();
    n.setup(&req(B, Mode::Bridge, vec![])).await.unwrap();
    // A link and a namespace file of no lease (a crash between lease removal and cleanup).
    f.kernel
        .links
        .lock()
        .unwrap()
        .insert("skr00000000000a".into());
    f.kernel.links.lock().unwrap().insert("eth0".into());
    std::fs::write(
        f.dirs.netns_dir.join("11111111111111111111111111111111"),
        "",
    )
    .unwrap();
    drop(n);
    // A restarted skiffd: the leases are read back.
    let n = network(&f, NetConfig::default()).await;
    f.kernel.calls();
    n.reconcile(&HashSet::from([A.to_owned()])).await.unwrap();
    let calls = f.kernel.calls();
    assert!(
        calls.contains(&"delete skbfedcba987654".to_owned()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"delete skr00000000000a".to_owned()),
        "{calls:?}"
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("skb0123456789ab") || c.contains("eth0")),
        "{calls:?}"
    );
    assert_eq!(n.leased_tasks(), [A]);
    let files: Vec<String> = std::fs::read_dir(&f.dirs.netns_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, [A]);
    assert!(
        f.fw.scripts
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .contains("delete table ip skiff")
    );
}

#[tokio::test]
async fn a_missing_element_at_teardown_rewrites_the_table() {
    let f = Fixture {
        fw: FakeFirewall {
            refuse_deletes: true,
            ..FakeFirewall::default()
        },
        ..fixture()
    };
    let n = network(&f, NetConfig::default()).await;
    n.setup(&req(A, Mode::Bridge, vec![web(None)]))
        .await
        .unwrap();
    n.teardown(A).await.unwrap();
    let scripts = f.fw.scripts.lock().unwrap().clone();
    assert!(scripts.last().unwrap().starts_with("table ip skiff {}"));
    assert!(!scripts.last().unwrap().contains("elements"));
    assert!(n.leased_tasks().is_empty());
}

#[test]
fn task_links_are_recognised_by_name() {
    assert!(is_task_link("skb0123456789ab"));
    assert!(is_task_link("skmfedcba987654"));
    assert!(!is_task_link("skiff0"));
    assert!(!is_task_link("skx0123456789ab"));
    assert!(!is_task_link("eth0"));
}
