//! Task networking for skiffd: ECS's `bridge` network mode with port mappings, and `awsvpc`
//! (a network namespace per task with an address of its own, routed or on the LAN through
//! macvlan/ipvlan), which ECS Anywhere cannot give an edge box.
//!
//! [`Network`] is the whole API: `init` sets the node up, `setup`/`teardown` give a task its
//! network and take it back, `reconcile` removes what belongs to no live task after a crash.
//! Links, addresses and routes go through rtnetlink behind the [`Kernel`] seam; NAT and port
//! mappings through one nftables table Skiff owns ([`nft`]); addresses and host ports are leased
//! in a persisted table ([`ipam`]). [`etc`] writes a task's hosts and resolv.conf.
#![warn(missing_docs)]

pub mod config;
pub mod etc;
pub mod ipam;
pub mod kernel;
mod network;
pub mod nft;
pub mod nsfs;
pub mod ports;
mod sys;

pub use config::{AwsvpcConfig, LanPool, NetConfig};
pub use ipam::{Attachment, PortLease, PortRequest, Protocol};
pub use kernel::{IfAddr, Kernel, LinkInfo, Netlink, Route};
pub use network::{
    GuestNetwork, GuestNic, Mode, NetDirs, NetError, Network, TaskNetwork, TaskRequest,
};
pub use nft::{Firewall, METADATA_PORT, Nft};

/// The networking skiffd runs: rtnetlink and `nft`.
pub type NodeNetwork = Network<Netlink, Nft>;
