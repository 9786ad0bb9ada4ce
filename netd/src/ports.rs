//! Host ports held while a task maps them.
//!
//! DNAT happens before any socket lookup, so a process of the node listening on a mapped port
//! would silently never see a packet. Skiff therefore binds every mapped host port itself (on
//! the wildcard address, TCP or UDP, without listening), as Kubernetes' hostport manager does:
//! a port some process already uses is refused at placement (the bind fails), and no process
//! can take a mapped port while the task lives. A skiffd restart binds its live tasks' ports
//! again.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;

use rustix::net::{AddressFamily, SocketType};

use crate::ipam::Protocol;

/// Binds `port` for `protocol` on the wildcard address; None if the node already uses it.
pub fn bind(protocol: Protocol, port: u16) -> Option<OwnedFd> {
    let ty = match protocol {
        Protocol::Tcp => SocketType::STREAM,
        Protocol::Udp => SocketType::DGRAM,
    };
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        ty,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .ok()?;
    rustix::net::bind(&fd, &SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).ok()?;
    Some(fd)
}

/// The sockets holding each task's ports.
#[derive(Debug, Default)]
pub struct HeldPorts {
    by_task: HashMap<String, Vec<OwnedFd>>,
}

impl HeldPorts {
    /// Keeps `fds` for `task`.
    pub fn hold(&mut self, task: &str, fds: Vec<OwnedFd>) {
        self.by_task.entry(task.to_owned()).or_default().extend(fds);
    }

    /// Lets `task`'s ports go.
    pub fn release(&mut self, task: &str) {
        self.by_task.remove(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_port_is_refused_to_the_next_binder() {
        let fd = bind(Protocol::Tcp, 0).unwrap();
        let port = match rustix::net::getsockname(&fd).unwrap().try_into() {
            Ok(std::net::SocketAddr::V4(a)) => a.port(),
            other => panic!("{other:?}"),
        };
        assert!(bind(Protocol::Tcp, port).is_none());
        assert!(std::net::TcpListener::bind(("0.0.0.0", port)).is_err());
        drop(fd);
        assert!(bind(Protocol::Tcp, port).is_some());
        let u = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        assert!(bind(Protocol::Udp, u.local_addr().unwrap().port()).is_none());
    }
}
