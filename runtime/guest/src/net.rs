//! The guest's network, made to be the task namespace's: the host joined each interface of the
//! task's namespace to a tap that is one of this VM's virtio-net devices, with that interface's
//! MAC address; the agent finds each device by its MAC address, gives it the interface's name,
//! addresses and routes, and brings it up. The wire then cannot tell the guest from the
//! namespace: bridge, routed awsvpc, macvlan and port mappings work unchanged.
//!
//! rtnetlink, spoken over a plain blocking socket: the agent has no async runtime, no `ip`
//! binary, and only a handful of requests to make, once, at boot.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::proto::{NetworkConfig, RouteConfig};

/// Why the guest's network could not be set up; each names the interface or route.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A request to the guest kernel failed.
    #[error("{op} {object}: {source}")]
    Kernel {
        /// What was being done.
        op: &'static str,
        /// The interface, address or route.
        object: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// No device has the MAC address of an interface the host attached.
    #[error("no network device with MAC address {mac} (interface {name})")]
    NoDevice {
        /// The address.
        mac: String,
        /// The interface's name.
        name: String,
    },
}

fn kernel(op: &'static str, object: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let object = object.into();
    move |source| NetError::Kernel { op, object, source }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// `sys/class/net/<name>` of the device whose MAC address is `mac`, if it exists yet.
pub fn find_nic(sys: &Path, mac: &[u8; 6]) -> Option<PathBuf> {
    let want = mac_string(mac);
    std::fs::read_dir(sys.join("class/net"))
        .ok()?
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("address"))
                .is_ok_and(|a| a.trim().eq_ignore_ascii_case(&want))
        })
        .map(|e| e.path())
}

/// Sets the guest's network up as `cfg` says; `nic` finds a device by MAC address (waiting for
/// it to probe). Loopback comes up in any case.
pub fn configure(
    cfg: &NetworkConfig,
    nic: impl Fn(&[u8; 6]) -> Option<PathBuf>,
) -> Result<(), NetError> {
    let rtnl = Rtnl::open()?;
    rtnl.up(index_of("lo")?, "lo")?;
    let mut indexes = Vec::new();
    for i in &cfg.interfaces {
        let dev = nic(&i.mac).ok_or_else(|| NetError::NoDevice {
            mac: mac_string(&i.mac),
            name: i.name.clone(),
        })?;
        indexes.push(read_index(&dev)?);
    }
    // Renamed while down (the kernel refuses to rename a running device), in two steps: the
    // kernel may have named one device what another is to be called (devices probe in no
    // fixed order).
    for (n, &index) in indexes.iter().enumerate() {
        rtnl.rename(index, &format!("skiffnic{n}"))?;
    }
    for (i, &index) in cfg.interfaces.iter().zip(&indexes) {
        rtnl.rename(index, &i.name)?;
        if i.mtu > 0 {
            rtnl.set_mtu(index, i.mtu, &i.name)?;
        }
        for a in &i.addresses {
            rtnl.add_address(index, a.address.into(), a.prefix_len, &i.name)?;
        }
        rtnl.up(index, &i.name)?;
    }
    for r in &cfg.routes {
        rtnl.add_route(r, index_of(&r.dev)?)?;
    }
    Ok(())
}

fn index_of(name: &str) -> Result<u32, NetError> {
    read_index(&Path::new("/sys/class/net").join(name))
}

fn read_index(dev: &Path) -> Result<u32, NetError> {
    let path = dev.join("ifindex");
    std::fs::read_to_string(&path)
        .map_err(kernel("read", path.display().to_string()))?
        .trim()
        .parse()
        .map_err(|e| kernel("parse", path.display().to_string())(std::io::Error::other(e)))
}

/// A route netlink socket, one request at a time.
struct Rtnl {
    socket: Socket,
}

impl Rtnl {
    fn open() -> Result<Self, NetError> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(kernel("open", "a route netlink socket"))?;
        socket
            .bind_auto()
            .map_err(kernel("bind", "a route netlink socket"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(kernel("connect", "a route netlink socket"))?;
        Ok(Self { socket })
    }

    /// Sends `msg` and waits for the kernel's acknowledgement.
    fn request(&self, msg: RouteNetlinkMessage, flags: u16) -> std::io::Result<()> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = 1;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut reply = vec![0; 8192];
        let n = self.socket.recv(&mut &mut reply[..], 0)?;
        let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..n])
            .map_err(std::io::Error::other)?;
        match answer.payload {
            NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
            NetlinkPayload::Error(_) => Ok(()),
            other => Err(std::io::Error::other(format!(
                "unexpected answer {:?}",
                other.message_type()
            ))),
        }
    }

    /// Brings link `index` (`what`) up.
    fn up(&self, index: u32, what: &str) -> Result<(), NetError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(m), 0)
            .map_err(kernel("set up", what))
    }

    fn set_mtu(&self, index: u32, mtu: u32, what: &str) -> Result<(), NetError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.request(RouteNetlinkMessage::SetLink(m), 0)
            .map_err(kernel("set the MTU of", what))
    }

    fn rename(&self, index: u32, name: &str) -> Result<(), NetError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.request(RouteNetlinkMessage::SetLink(m), 0)
            .map_err(kernel("rename device to", name))
    }

    fn add_address(
        &self,
        index: u32,
        address: IpAddr,
        prefix_len: u8,
        dev: &str,
    ) -> Result<(), NetError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix_len;
        m.header.index = index;
        m.attributes = vec![
            AddressAttribute::Local(address),
            AddressAttribute::Address(address),
        ];
        self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(kernel(
            "add address",
            format!("{address}/{prefix_len} to {dev}"),
        ))
    }

    fn add_route(&self, r: &RouteConfig, index: u32) -> Result<(), NetError> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = r.destination.prefix_len;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
        m.header.scope = if r.via.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if r.destination.prefix_len > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(
                    r.destination.address,
                )));
        }
        m.attributes.extend(
            r.via
                .map(|gw| RouteAttribute::Gateway(RouteAddress::Inet(gw))),
        );
        m.attributes.push(RouteAttribute::Oif(index));
        m.attributes.extend(
            r.source
                .map(|s| RouteAttribute::PrefSource(RouteAddress::Inet(s))),
        );
        self.request(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(kernel(
                "add route",
                format!(
                    "{}/{} dev {}",
                    r.destination.address, r.destination.prefix_len, r.dev
                ),
            ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_found_by_mac_address() {
        let sys = tempfile::tempdir().unwrap();
        for (name, mac) in [
            ("eth0", "02:00:00:00:00:0a\n"),
            ("eth1", "02:00:00:00:00:0B\n"),
        ] {
            let d = sys.path().join("class/net").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("address"), mac).unwrap();
        }
        let eth1 = find_nic(sys.path(), &[2, 0, 0, 0, 0, 0x0b]).unwrap();
        assert_eq!(eth1.file_name().unwrap(), "eth1");
        assert!(find_nic(sys.path(), &[2, 0, 0, 0, 0, 1]).is_none());
        assert_eq!(mac_string(&[2, 0xab, 0, 0, 0, 1]), "02:ab:00:00:00:01");
    }
}
