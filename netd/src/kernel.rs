//! The seam in front of the kernel: network namespaces, links, addresses, routes and sysctls.
//!
//! [`Network`](crate::Network) decides what to make and in which order; a [`Kernel`] makes it.
//! The real one, [`Netlink`], speaks rtnetlink. Namespace work follows the rule that setns is
//! per thread and that a netlink socket stays in the namespace it was opened in: a throw-away
//! std thread enters the task's namespace, opens the socket there and returns it; the requests
//! then run on tokio like any other, and no tokio worker ever changes namespace. Unit tests use
//! a fake that records what was asked.

use std::future::Future;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use nix::sched::{CloneFlags, setns};
use rtnetlink::packet_route::link::{IpVlanMode, LinkAttribute, MacVlanMode};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{
    Handle, LinkBridge, LinkIpVlan, LinkMacVlan, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

/// Errors of kernel operations; each names the object.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A netlink request failed.
    #[error("{op} {object}: {source}")]
    Netlink {
        /// What was being done.
        op: &'static str,
        /// The link, address or route.
        object: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A link has no MAC address or MTU to give a guest.
    #[error("link {dev} reports no MAC address or MTU")]
    NoLinkAddress {
        /// The link.
        dev: String,
    },
    /// A system call or file operation failed.
    #[error("{op} {path}")]
    Sys {
        /// What was being done.
        op: &'static str,
        /// The namespace file or sysctl.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What a guest takes from a namespace interface it stands in for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Its MTU.
    pub mtu: u32,
}

/// A sub-interface kind of the awsvpc LAN modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubLink {
    /// macvlan, bridge mode.
    Macvlan,
    /// ipvlan, L2 mode.
    Ipvlan,
}

/// An address on an interface of a task namespace.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IfAddr {
    /// The interface.
    pub dev: String,
    /// The address and prefix.
    pub addr: Ipv4Net,
}

/// A route of a task namespace.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Route {
    /// Destination.
    pub dest: Ipv4Net,
    /// Next hop; none: on-link (scope link).
    pub via: Option<Ipv4Addr>,
    /// Output interface.
    pub dev: String,
    /// Preferred source.
    pub src: Option<Ipv4Addr>,
}

/// What a task namespace gets inside: loopback up, addresses (their interfaces up), routes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NsSetup {
    /// Addresses, in order.
    pub addrs: Vec<IfAddr>,
    /// Routes, in order.
    pub routes: Vec<Route>,
}

/// The kernel operations task networking needs.
pub trait Kernel: Send + Sync + 'static {
    /// Makes a network namespace held by a bind mount at `path`; on error nothing is left.
    fn create_netns(&self, path: &Path) -> Result<(), KernelError>;
    /// Unmounts and removes `path` (missing: nothing to do).
    fn remove_netns(&self, path: &Path);
    /// Writes a sysctl of the node's namespace (`net/ipv4/ip_forward`).
    fn sysctl(&self, key: &str, value: &str) -> Result<(), KernelError>;
    /// Makes bridge `name` if missing, with `addrs` on it, up.
    fn ensure_bridge(
        &self,
        name: &str,
        addrs: &[Ipv4Net],
    ) -> impl Future<Output = Result<(), KernelError>> + Send;
    /// A veth pair: `host` on the node, up, on bridge `master` if given; its peer `peer` in the
    /// namespace at `ns`.
    fn add_veth(
        &self,
        host: &str,
        master: Option<&str>,
        ns: &Path,
        peer: &str,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;
    /// A `kind` sub-interface of the node's `parent`, made in the namespace at `ns` as `name`.
    fn add_sublink(
        &self,
        kind: SubLink,
        parent: &str,
        ns: &Path,
        name: &str,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;
    /// Configures the inside of the namespace at `ns`.
    fn configure_ns(
        &self,
        ns: &Path,
        setup: &NsSetup,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;
    /// Routes `dest`/32 to node link `dev`.
    fn add_host_route(
        &self,
        dest: Ipv4Addr,
        dev: &str,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;
    /// A persistent tap `tap` in the namespace at `ns`, up, that stands in for `dev` to a VM:
    /// tc redirects everything arriving on either to the other's egress, so `dev`'s traffic is
    /// the guest's. Returns `dev`'s MAC address and MTU, which the guest's interface takes (the
    /// tap takes the MTU too).
    fn add_tap_redirect(
        &self,
        ns: &Path,
        dev: &str,
        tap: &str,
    ) -> impl Future<Output = Result<LinkInfo, KernelError>> + Send;
    /// Deletes node link `name`; false if there was none.
    fn delete_link(&self, name: &str) -> impl Future<Output = Result<bool, KernelError>> + Send;
    /// The names of the node's links.
    fn links(&self) -> impl Future<Output = Result<Vec<String>, KernelError>> + Send;
}

/// The real kernel, over rtnetlink from skiffd's own namespace.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

fn nl(op: &'static str, object: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    let object = object.into();
    move |source| KernelError::Netlink { op, object, source }
}

fn sys(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + use<> {
    let path = path.to_owned();
    move |source| KernelError::Sys { op, path, source }
}

/// Whether a netlink error is the kernel's `errno`.
fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

impl Netlink {
    /// A netlink connection in the calling thread's namespace (skiffd never changes its own).
    pub fn open() -> Result<Self, KernelError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(sys("open netlink socket", Path::new("NETLINK_ROUTE")))?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// A connection inside the namespace at `ns`, opened by a thread that entered it.
    async fn in_ns(ns: &Path) -> Result<Handle, KernelError> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = on_ns_thread(ns, move || {
            let _guard = rt.enter();
            rtnetlink::new_connection()
        })
        .map_err(sys("open netlink socket in", ns))?;
        tokio::spawn(conn);
        Ok(handle)
    }

    async fn index(h: &Handle, name: &str) -> Result<u32, KernelError> {
        let msg = h
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_next()
            .await
            .map_err(nl("find link", name))?;
        msg.map(|m| m.header.index)
            .ok_or_else(|| nl("find link", name)(rtnetlink::Error::RequestFailed))
    }

    async fn add_addr(h: &Handle, index: u32, dev: &str, addr: Ipv4Net) -> Result<(), KernelError> {
        match h
            .address()
            .add(index, addr.addr().into(), addr.prefix_len())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc_eexist()) => Ok(()),
            Err(e) => Err(nl("add address", format!("{addr} on {dev}"))(e)),
        }
    }

    async fn up(h: &Handle, name: &str) -> Result<(), KernelError> {
        h.link()
            .set(LinkUnspec::new_with_name(name).up().build())
            .execute()
            .await
            .map_err(nl("set up", name))
    }

    async fn add_route(h: &Handle, r: &Route, index: u32) -> Result<(), KernelError> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.dest.addr(), r.dest.prefix_len())
            .output_interface(index);
        b = match r.via {
            Some(gw) => b.gateway(gw),
            None => b.scope(RouteScope::Link),
        };
        if let Some(src) = r.src {
            b = b.pref_source(src);
        }
        match h.route().add(b.build()).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc_eexist()) => Ok(()),
            Err(e) => Err(nl("add route", format!("{} dev {}", r.dest, r.dev))(e)),
        }
    }
}

/// Runs `f` on a throw-away thread that entered the network namespace at `ns` (setns is per
/// thread; sockets and devices it makes stay in that namespace).
fn on_ns_thread<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let path = ns.to_owned();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path)?;
        setns(&file, CloneFlags::CLONE_NEWNET)?;
        f()
    })
    .join()
    .expect("netns thread")
}

/// `protocol all` of a tc filter (the kernel takes it in network byte order).
const ETH_P_ALL: u16 = 0x0003;

const fn libc_eexist() -> i32 {
    nix::errno::Errno::EEXIST as i32
}

impl Kernel for Netlink {
    fn create_netns(&self, path: &Path) -> Result<(), KernelError> {
        crate::nsfs::bind_new(CloneFlags::CLONE_NEWNET, path)
            .map_err(sys("unshare and bind a network namespace at", path))
    }

    fn remove_netns(&self, path: &Path) {
        crate::nsfs::unbind(path);
    }

    fn sysctl(&self, key: &str, value: &str) -> Result<(), KernelError> {
        let path = Path::new("/proc/sys").join(key);
        std::fs::write(&path, value).map_err(sys("write", &path))
    }

    async fn ensure_bridge(&self, name: &str, addrs: &[Ipv4Net]) -> Result<(), KernelError> {
        let h = &self.handle;
        match h.link().add(LinkBridge::new(name).build()).execute().await {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc_eexist()) => {}
            Err(e) => return Err(nl("add bridge", name)(e)),
        }
        let index = Self::index(h, name).await?;
        for &addr in addrs {
            Self::add_addr(h, index, name, addr).await?;
        }
        Self::up(h, name).await
    }

    async fn add_veth(
        &self,
        host: &str,
        master: Option<&str>,
        ns: &Path,
        peer: &str,
    ) -> Result<(), KernelError> {
        let nsfile = std::fs::File::open(ns).map_err(sys("open", ns))?;
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_owned())
            .setns_by_fd(nsfile.as_raw_fd())
            .build();
        let mut b = LinkVeth::new(host, peer).up();
        b = b.set_info_data(rtnetlink::packet_route::link::InfoData::Veth(
            rtnetlink::packet_route::link::InfoVeth::Peer(peer_msg),
        ));
        if let Some(m) = master {
            let index = Self::index(&self.handle, m).await?;
            b = b.controller(index);
        }
        self.handle
            .link()
            .add(b.build())
            .execute()
            .await
            .map_err(nl("add veth", host))
    }

    async fn add_sublink(
        &self,
        kind: SubLink,
        parent: &str,
        ns: &Path,
        name: &str,
    ) -> Result<(), KernelError> {
        let nsfile = std::fs::File::open(ns).map_err(sys("open", ns))?;
        let index = Self::index(&self.handle, parent).await?;
        let msg = match kind {
            SubLink::Macvlan => LinkMacVlan::new(name, index, MacVlanMode::Bridge)
                .setns_by_fd(nsfile.as_raw_fd())
                .build(),
            SubLink::Ipvlan => LinkIpVlan::new(name, index, IpVlanMode::L2)
                .setns_by_fd(nsfile.as_raw_fd())
                .build(),
        };
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl("add sub-interface of", parent))
    }

    async fn configure_ns(&self, ns: &Path, setup: &NsSetup) -> Result<(), KernelError> {
        let h = Self::in_ns(ns).await?;
        Self::up(&h, "lo").await?;
        let mut indexes = std::collections::HashMap::new();
        for a in &setup.addrs {
            let index = Self::index(&h, &a.dev).await?;
            Self::add_addr(&h, index, &a.dev, a.addr).await?;
            Self::up(&h, &a.dev).await?;
            indexes.insert(a.dev.clone(), index);
        }
        for r in &setup.routes {
            let index = match indexes.get(&r.dev) {
                Some(&i) => i,
                None => Self::index(&h, &r.dev).await?,
            };
            Self::add_route(&h, r, index).await?;
        }
        Ok(())
    }

    async fn add_host_route(&self, dest: Ipv4Addr, dev: &str) -> Result<(), KernelError> {
        let index = Self::index(&self.handle, dev).await?;
        let r = Route {
            dest: Ipv4Net::from(dest),
            via: None,
            dev: dev.to_owned(),
            src: None,
        };
        Self::add_route(&self.handle, &r, index).await
    }

    async fn add_tap_redirect(
        &self,
        ns: &Path,
        dev: &str,
        tap: &str,
    ) -> Result<LinkInfo, KernelError> {
        let name = tap.to_owned();
        on_ns_thread(ns, move || crate::sys::make_persistent_tap(&name))
            .map_err(sys("make a tap in", ns))?;
        let h = Self::in_ns(ns).await?;
        let (di, ti) = (Self::index(&h, dev).await?, Self::index(&h, tap).await?);
        let msg = h
            .link()
            .get()
            .match_index(di)
            .execute()
            .try_next()
            .await
            .map_err(nl("find link", dev))?;
        let attrs: Vec<LinkAttribute> = msg.into_iter().flat_map(|m| m.attributes).collect();
        let mac = attrs.iter().find_map(|a| match a {
            LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
            _ => None,
        });
        let mtu = attrs.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        });
        let (Some(mac), Some(mtu)) = (mac, mtu) else {
            return Err(KernelError::NoLinkAddress {
                dev: dev.to_owned(),
            });
        };
        // The tap carries the interface's frames: the same MTU.
        h.link()
            .set(LinkUnspec::new_with_index(ti).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(nl("set up", tap))?;
        for (from, to, name) in [(di, ti, dev), (ti, di, tap)] {
            let from = i32::try_from(from).expect("an ifindex is positive");
            h.qdisc()
                .add(from)
                .ingress()
                .execute()
                .await
                .map_err(nl("add an ingress qdisc to", name))?;
            h.traffic_filter(from)
                .add()
                .ingress()
                .protocol(ETH_P_ALL.to_be())
                .redirect(to)
                .map_err(nl("build the redirect of", name))?
                .execute()
                .await
                .map_err(nl("redirect the ingress of", name))?;
        }
        Ok(LinkInfo { mac, mtu })
    }

    async fn delete_link(&self, name: &str) -> Result<bool, KernelError> {
        match self
            .handle
            .link()
            .del_with_message(LinkUnspec::new_with_name(name).build())
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, nix::errno::Errno::ENODEV as i32) => Ok(false),
            Err(e) => Err(nl("delete link", name)(e)),
        }
    }

    async fn links(&self) -> Result<Vec<String>, KernelError> {
        let mut out = Vec::new();
        let mut s = self.handle.link().get().execute();
        while let Some(m) = s.try_next().await.map_err(nl("list links", "*"))? {
            out.extend(m.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            }));
        }
        Ok(out)
    }
}
