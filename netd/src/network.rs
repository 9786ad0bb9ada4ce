//! The node's task networking: what skiffd calls to give a task its network and take it back.
//!
//! Every task with a network of its own (bridge, awsvpc) gets one network namespace, shared by
//! all its containers (as the ECS agent's pause container holds it), bind-mounted at
//! `<netns_dir>/<task id>`, attached by one of:
//! - **bridge**: a veth (`skb<id>`) on the node's bridge, an address of the bridge subnet, the
//!   bridge as gateway, egress masqueraded, host ports DNAT'd to it;
//! - **awsvpc routed**: a veth (`skr<id>`) that the node routes the task's address (/32) to;
//!   inside, the metadata address is the on-link gateway (the node answers for it), so no
//!   address is spent on the node's side. A LAN router sends the awsvpc subnet to the node;
//! - **awsvpc macvlan/ipvlan**: a sub-interface of the uplink with a LAN address and the LAN's
//!   gateway. The node cannot talk to its own macvlan children through the uplink, so a second,
//!   link-local veth (`skm<id>`, `meta0` inside) carries the metadata endpoint only, as ECS's
//!   `ecs-eth0` does.
//!
//! Order, for crash safety: the lease is persisted first, then the kernel objects are made;
//! teardown removes them and forgets the lease last. A failure half-way runs the same teardown,
//! so nothing is left: no namespace, link, rule, port or address.

use std::cell::RefCell;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Mutex;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::config::{AwsvpcConfig, NetConfig, NetConfigError};
use crate::ipam::{
    Attachment, Ipam, IpamError, Lease, Pool, PoolRange, PortLease, PortRequest, Protocol,
};
use crate::kernel::{IfAddr, Kernel, KernelError, NsSetup, Route, SubLink};
use crate::nft::{self, Firewall, NftError, TableSpec};
use crate::ports::{self, HeldPorts};

/// The link-local pool of metadata links (as ECS's `ecs-bridge`, 169.254.172.0/22).
const META_POOL: RangeInclusive<Ipv4Addr> =
    Ipv4Addr::new(169, 254, 172, 2)..=Ipv4Addr::new(169, 254, 175, 254);

/// Errors of task networking.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The settings are not valid.
    #[error(transparent)]
    Config(#[from] NetConfigError),
    /// Addresses or ports.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// A kernel operation failed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The firewall refused a change.
    #[error(transparent)]
    Nft(#[from] NftError),
    /// The node is not set up for what the task asks.
    #[error("{0}")]
    Unsupported(String),
}

/// The network mode of a task that has a network of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The node's bridge, with port mappings.
    Bridge,
    /// An address of its own.
    Awsvpc,
}

/// What a task asks for.
#[derive(Clone, Debug)]
pub struct TaskRequest {
    /// The task's id.
    pub task_id: String,
    /// The mode.
    pub mode: Mode,
    /// Port mappings (bridge mode maps them; awsvpc exposes them at the task's address).
    pub ports: Vec<PortRequest>,
}

/// What a task got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskNetwork {
    /// The namespace its containers join.
    pub netns: PathBuf,
    /// How it is attached.
    pub attachment: Attachment,
    /// Its address.
    pub address: Ipv4Addr,
    /// Its subnet (the prefix of its address).
    pub subnet: Ipv4Net,
    /// Its default gateway.
    pub gateway: Ipv4Addr,
    /// The node-side link.
    pub host_link: String,
    /// The link-local address of its metadata link (`meta0`; macvlan and ipvlan only): the
    /// source of its requests to the metadata endpoint, which does not come from `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_address: Option<Ipv4Addr>,
    /// Host ports mapped to it (bridge mode).
    pub ports: Vec<PortLease>,
}

/// A task's network as its microVM takes it ([`Network::attach_vm`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetwork {
    /// The interfaces, in the namespace's order.
    pub nics: Vec<GuestNic>,
    /// Their addresses.
    pub addrs: Vec<IfAddr>,
    /// The routes.
    pub routes: Vec<Route>,
}

/// One interface of a task's namespace, as a VM's network device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNic {
    /// Its name in the namespace, which the guest gives it too (`eth0`, `meta0`).
    pub name: String,
    /// The tap standing in for it, for the VMM.
    pub tap: String,
    /// Its MAC address, the guest interface's.
    pub mac: [u8; 6],
    /// Its MTU, the guest interface's.
    pub mtu: u32,
}

/// Where networking keeps its files.
#[derive(Clone, Debug)]
pub struct NetDirs {
    /// Task namespaces (bind mounts): a runtime directory, gone with a reboot.
    pub netns_dir: PathBuf,
    /// The lease table: persistent.
    pub leases: PathBuf,
}

/// The node's task networking.
#[derive(Debug)]
pub struct Network<K: Kernel, F: Firewall> {
    cfg: NetConfig,
    dirs: NetDirs,
    kernel: K,
    fw: F,
    ipam: Mutex<Ipam>,
    held: Mutex<HeldPorts>,
    /// Serialises firewall changes, so a table rewrite never races an element change.
    nft: tokio::sync::Mutex<()>,
    ports: RangeInclusive<u16>,
}

/// The name of task `task_id`'s node-side link of kind `kind` (`b`, `r`, `m`): 15 characters.
fn link_name(kind: char, task_id: &str) -> String {
    format!(
        "{}{kind}{}",
        nft::LINK_PREFIX,
        &task_id[..task_id.len().min(12)]
    )
}

/// Whether `name` is a task link of Skiff's (`sk` + kind + 12 hex digits).
fn is_task_link(name: &str) -> bool {
    let b = name.as_bytes();
    name.len() == 15
        && name.starts_with(nft::LINK_PREFIX)
        && matches!(b[2], b'b' | b'r' | b'm')
        && b[3..].iter().all(u8::is_ascii_hexdigit)
}

fn host_links(task_id: &str, a: Attachment) -> Vec<String> {
    match a {
        Attachment::Bridge => vec![link_name('b', task_id)],
        Attachment::Routed => vec![link_name('r', task_id)],
        Attachment::Macvlan | Attachment::Ipvlan => vec![link_name('m', task_id)],
    }
}

/// The hosts of `net` but its network, first (gateway) and broadcast addresses.
fn hosts_after_gateway(net: Ipv4Net) -> RangeInclusive<Ipv4Addr> {
    Ipv4Addr::from(u32::from(net.network()) + 2)..=Ipv4Addr::from(u32::from(net.broadcast()) - 1)
}

impl<K: Kernel, F: Firewall> Network<K, F> {
    /// Checks the settings and sets the node up: forwarding, the bridge, the metadata address,
    /// Skiff's table (from the persisted leases), and the host ports of existing leases held
    /// again. Idempotent: a restarted skiffd finds what it made.
    pub async fn init(cfg: NetConfig, dirs: NetDirs, kernel: K, fw: F) -> Result<Self, NetError> {
        cfg.validate()?;
        let ports = cfg.dynamic_port_range()?;
        kernel.sysctl("net/ipv4/ip_forward", "1")?;
        let gw = Ipv4Net::new(cfg.bridge_gateway(), cfg.bridge_subnet.prefix_len())
            .expect("a prefix of the subnet");
        // The bridge also holds the metadata address (/32): tasks of every mode reach it through
        // the node, and it exists wherever skiffd runs (no dummy module needed).
        kernel
            .ensure_bridge(&cfg.bridge, &[gw, Ipv4Net::from(cfg.metadata_address)])
            .await?;
        // localhost -> hostPort: DNAT'd loopback traffic must be routable onto the bridge.
        kernel.sysctl(&format!("net/ipv4/conf/{}/route_localnet", cfg.bridge), "1")?;
        std::fs::create_dir_all(&dirs.netns_dir).map_err(|source| KernelError::Sys {
            op: "create",
            path: dirs.netns_dir.clone(),
            source,
        })?;
        let ipam = Ipam::open(&dirs.leases)?;
        let mut held = HeldPorts::default();
        for (task, lease) in ipam.leases() {
            let fds = lease
                .ports
                .iter()
                .filter_map(|p| {
                    let fd = ports::bind(p.protocol, p.host_port);
                    if fd.is_none() {
                        tracing::warn!(task, port = p.host_port, protocol = %p.protocol, "a mapped host port was taken while skiffd was down");
                    }
                    fd
                })
                .collect();
            held.hold(task, fds);
        }
        let net = Self {
            cfg,
            dirs,
            kernel,
            fw,
            ipam: Mutex::new(ipam),
            held: Mutex::new(held),
            nft: tokio::sync::Mutex::new(()),
            ports,
        };
        net.rewrite_table().await?;
        Ok(net)
    }

    /// The settings.
    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// Where task `task_id`'s namespace is bound.
    pub fn netns_path(&self, task_id: &str) -> PathBuf {
        self.dirs.netns_dir.join(task_id)
    }

    fn spec(&self) -> TableSpec<'_> {
        TableSpec {
            table: &self.cfg.table,
            bridge: &self.cfg.bridge,
            subnet: self.cfg.bridge_subnet,
            metadata: self.cfg.metadata_address,
        }
    }

    async fn rewrite_table(&self) -> Result<(), NetError> {
        let _g = self.nft.lock().await;
        let script = {
            let ipam = self.ipam.lock().expect("ipam");
            nft::table_script(&self.spec(), ipam.leases().values())
        };
        Ok(self.fw.apply(&self.cfg.table, script).await?)
    }

    /// Gives a task its network. On error nothing of it is left.
    pub async fn setup(&self, req: &TaskRequest) -> Result<TaskNetwork, NetError> {
        let (attachment, pool, subnet, gateway) = match (req.mode, &self.cfg.awsvpc) {
            (Mode::Bridge, _) => (
                Attachment::Bridge,
                hosts_after_gateway(self.cfg.bridge_subnet),
                self.cfg.bridge_subnet,
                self.cfg.bridge_gateway(),
            ),
            (Mode::Awsvpc, None) => {
                return Err(NetError::Unsupported(
                    "networkMode awsvpc needs [network.awsvpc] in skiffd.toml (mode routed, macvlan or ipvlan)".into(),
                ));
            }
            (Mode::Awsvpc, Some(AwsvpcConfig::Routed { subnet })) => (
                Attachment::Routed,
                Ipv4Addr::from(u32::from(subnet.network()) + 1)
                    ..=Ipv4Addr::from(u32::from(subnet.broadcast()) - 1),
                *subnet,
                self.cfg.metadata_address,
            ),
            (Mode::Awsvpc, Some(AwsvpcConfig::Macvlan(p) | AwsvpcConfig::Ipvlan(p))) => {
                let a = if matches!(self.cfg.awsvpc, Some(AwsvpcConfig::Macvlan(_))) {
                    Attachment::Macvlan
                } else {
                    Attachment::Ipvlan
                };
                (a, p.first..=p.last, p.subnet, p.gateway)
            }
        };
        let lease = self.lease(req, attachment, pool)?;
        let net = TaskNetwork {
            netns: self.netns_path(&req.task_id),
            attachment,
            address: lease.address,
            subnet,
            gateway,
            host_link: host_links(&req.task_id, attachment).remove(0),
            meta_address: lease.meta_address,
            ports: lease.ports.clone(),
        };
        if let Err(e) = self.plumb(&req.task_id, &lease, &net).await {
            if let Err(t) = self.teardown(&req.task_id).await {
                tracing::warn!(task = %req.task_id, error = %t, "cleaning up after a failed network setup");
            }
            return Err(e);
        }
        Ok(net)
    }

    /// Whether bridge mappings `ports` could be placed now: no host port held by another task or
    /// a process of the node, dynamic ones available. Nothing is taken ([`Network::setup`]
    /// checks again when it takes them); callers refuse a task up front with its error.
    pub fn check_ports(&self, ports: &[PortRequest]) -> Result<(), NetError> {
        let ipam = self.ipam.lock().expect("ipam");
        ipam.ports(ports, &self.ports, |p, port| ports::bind(p, port).is_some())?;
        Ok(())
    }

    /// Takes an address (and ports) for the task and persists the lease.
    fn lease(
        &self,
        req: &TaskRequest,
        attachment: Attachment,
        range: RangeInclusive<Ipv4Addr>,
    ) -> Result<Lease, NetError> {
        let mut ipam = self.ipam.lock().expect("ipam");
        let pool = match attachment {
            Attachment::Bridge => Pool::Bridge,
            _ => Pool::Awsvpc,
        };
        let address = ipam.free_address(&PoolRange { pool, range })?;
        let meta_address = match attachment {
            Attachment::Macvlan | Attachment::Ipvlan => Some(ipam.free_address(&PoolRange {
                pool: Pool::Meta,
                range: META_POOL,
            })?),
            _ => None,
        };
        // Only the bridge maps host ports; awsvpc exposes container ports at the task's own
        // address, as ECS does.
        let bound = RefCell::new(Vec::new());
        let ports = if attachment == Attachment::Bridge {
            ipam.ports(&req.ports, &self.ports, |p, port| {
                ports::bind(p, port)
                    .map(|fd| bound.borrow_mut().push(((p, port), fd)))
                    .is_some()
            })?
        } else {
            Vec::new()
        };
        let chosen: HashSet<(Protocol, u16)> =
            ports.iter().map(|p| (p.protocol, p.host_port)).collect();
        let fds = bound
            .into_inner()
            .into_iter()
            .filter(|(k, _)| chosen.contains(k))
            .map(|(_, fd)| fd)
            .collect();
        let lease = Lease {
            attachment,
            address,
            meta_address,
            ports,
        };
        ipam.insert(&req.task_id, lease.clone())?;
        self.held
            .lock()
            .expect("held ports")
            .hold(&req.task_id, fds);
        Ok(lease)
    }

    async fn plumb(&self, task: &str, lease: &Lease, net: &TaskNetwork) -> Result<(), NetError> {
        let k = &self.kernel;
        let ns = &net.netns;
        k.create_netns(ns)?;
        match lease.attachment {
            Attachment::Bridge => {
                k.add_veth(&net.host_link, Some(&self.cfg.bridge), ns, "eth0")
                    .await?;
            }
            Attachment::Routed => {
                k.add_veth(&net.host_link, None, ns, "eth0").await?;
                k.add_host_route(lease.address, &net.host_link).await?;
            }
            Attachment::Macvlan | Attachment::Ipvlan => {
                let Some(AwsvpcConfig::Macvlan(p) | AwsvpcConfig::Ipvlan(p)) = &self.cfg.awsvpc
                else {
                    return Err(NetError::Unsupported(format!(
                        "task {task} has a LAN lease but the node has no LAN pool configured"
                    )));
                };
                let kind = if lease.attachment == Attachment::Macvlan {
                    SubLink::Macvlan
                } else {
                    SubLink::Ipvlan
                };
                let meta_addr = lease
                    .meta_address
                    .expect("LAN leases have a metadata address");
                k.add_sublink(kind, &p.parent, ns, "eth0").await?;
                k.add_veth(&net.host_link, None, ns, "meta0").await?;
                k.add_host_route(meta_addr, &net.host_link).await?;
            }
        }
        k.configure_ns(ns, &self.inside(net)).await?;
        if let Some(script) = nft::add_ports(&self.cfg.table, lease) {
            let _g = self.nft.lock().await;
            self.fw.apply(&self.cfg.table, script).await?;
        }
        Ok(())
    }

    /// What the inside of a task's namespace gets: its interfaces' addresses and its routes.
    fn inside(&self, net: &TaskNetwork) -> NsSetup {
        let eth0 = |prefix: u8| IfAddr {
            dev: "eth0".into(),
            addr: Ipv4Net::new(net.address, prefix).expect("a valid prefix"),
        };
        let on_link = |dest: Ipv4Addr, dev: &str, src: Option<Ipv4Addr>| Route {
            dest: Ipv4Net::from(dest),
            via: None,
            dev: dev.into(),
            src,
        };
        let default_via = |gw: Ipv4Addr| Route {
            dest: Ipv4Net::default(),
            via: Some(gw),
            dev: "eth0".into(),
            src: None,
        };
        let meta = self.cfg.metadata_address;
        match (net.attachment, net.meta_address) {
            (Attachment::Bridge, _) => NsSetup {
                addrs: vec![eth0(net.subnet.prefix_len())],
                routes: vec![default_via(net.gateway)],
            },
            (Attachment::Routed, _) => NsSetup {
                addrs: vec![eth0(32)],
                routes: vec![on_link(meta, "eth0", None), default_via(meta)],
            },
            (Attachment::Macvlan | Attachment::Ipvlan, meta_addr) => {
                let meta_addr = meta_addr.expect("LAN leases have a metadata address");
                NsSetup {
                    addrs: vec![
                        eth0(net.subnet.prefix_len()),
                        IfAddr {
                            dev: "meta0".into(),
                            addr: Ipv4Net::from(meta_addr),
                        },
                    ],
                    routes: vec![
                        on_link(meta, "meta0", Some(meta_addr)),
                        default_via(net.gateway),
                    ],
                }
            }
        }
    }

    /// Hands a task's network, set up by [`Network::setup`], to a microVM: each interface of
    /// the task's namespace gets a tap (`tap0`, `tap1`, ...) that its VMM opens from inside the
    /// namespace, joined to it by tc redirects (as Kata Containers' `tcfilter` mode does), so
    /// that the guest, given the interface's MAC address, addresses and routes, is on the wire
    /// where the namespace's interface was: bridge, routed, macvlan and ipvlan alike, port
    /// mappings and the node's routes unchanged. The taps go with the namespace at teardown.
    pub async fn attach_vm(&self, net: &TaskNetwork) -> Result<GuestNetwork, NetError> {
        let NsSetup { addrs, routes } = self.inside(net);
        let mut nics: Vec<GuestNic> = Vec::new();
        for a in &addrs {
            if nics.iter().any(|n| n.name == a.dev) {
                continue;
            }
            let tap = format!("tap{}", nics.len());
            let link = self
                .kernel
                .add_tap_redirect(&net.netns, &a.dev, &tap)
                .await?;
            nics.push(GuestNic {
                name: a.dev.clone(),
                tap,
                mac: link.mac,
                mtu: link.mtu,
            });
        }
        Ok(GuestNetwork {
            nics,
            addrs,
            routes,
        })
    }

    /// Takes a task's network back: links, namespace, port mappings, held ports, lease.
    /// Idempotent; a task without a lease has nothing left but maybe its namespace file.
    pub async fn teardown(&self, task_id: &str) -> Result<(), NetError> {
        let lease = self
            .ipam
            .lock()
            .expect("ipam")
            .leases()
            .get(task_id)
            .cloned();
        let Some(lease) = lease else {
            self.kernel.remove_netns(&self.netns_path(task_id));
            return Ok(());
        };
        for link in host_links(task_id, lease.attachment) {
            self.kernel.delete_link(&link).await?;
        }
        self.kernel.remove_netns(&self.netns_path(task_id));
        if let Some(script) = nft::delete_ports(&self.cfg.table, &lease) {
            let applied = {
                let _g = self.nft.lock().await;
                self.fw.apply(&self.cfg.table, script).await
            };
            if let Err(e) = applied {
                // An element already missing fails the transaction: the table is rewritten
                // from the leases without this task's instead.
                tracing::debug!(task = task_id, error = %e, "deleting port mappings; rewriting the table");
                self.ipam.lock().expect("ipam").remove(task_id)?;
                self.held.lock().expect("held ports").release(task_id);
                return self.rewrite_table().await;
            }
        }
        self.held.lock().expect("held ports").release(task_id);
        self.ipam.lock().expect("ipam").remove(task_id)?;
        Ok(())
    }

    /// Removes what belongs to no task in `live`: leases with their links and namespaces, task
    /// links and namespace files nobody leases; then rewrites the table from what is left.
    pub async fn reconcile(&self, live: &HashSet<String>) -> Result<(), NetError> {
        let stale: Vec<String> = {
            let ipam = self.ipam.lock().expect("ipam");
            ipam.leases()
                .keys()
                .filter(|t| !live.contains(*t))
                .cloned()
                .collect()
        };
        for t in &stale {
            tracing::info!(task = %t, "removing the network of a task that is gone");
            self.teardown(t).await?;
        }
        let (links, leased): (HashSet<String>, HashSet<String>) = {
            let ipam = self.ipam.lock().expect("ipam");
            (
                ipam.leases()
                    .iter()
                    .flat_map(|(t, l)| host_links(t, l.attachment))
                    .collect(),
                ipam.leases().keys().cloned().collect(),
            )
        };
        for name in self.kernel.links().await? {
            if is_task_link(&name) && !links.contains(&name) {
                tracing::info!(link = %name, "removing a task link of no task");
                self.kernel.delete_link(&name).await?;
            }
        }
        for e in std::fs::read_dir(&self.dirs.netns_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !leased.contains(&name) {
                self.kernel.remove_netns(&e.path());
            }
        }
        self.rewrite_table().await
    }

    /// The leases' task ids (what reconciliation keeps).
    pub fn leased_tasks(&self) -> Vec<String> {
        self.ipam
            .lock()
            .expect("ipam")
            .leases()
            .keys()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
#[path = "network_tests.rs"]
mod tests;
