//! The node's network settings: the `[network]` section of `skiffd.toml`.
//!
//! Bridge networking works out of the box with a private subnet; awsvpc needs the operator to
//! say how tasks get their own address on this site (`routed` needs a subnet the LAN's router
//! sends to the node, `macvlan`/`ipvlan` a parent interface and a pool of LAN addresses), so it is
//! off until configured, and a task asking for it is refused with a message naming the setting.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;
use serde::Deserialize;

/// Errors of the network settings; each names the key.
#[derive(Debug, thiserror::Error)]
pub enum NetConfigError {
    /// A setting is not valid.
    #[error("network.{key}: {message}")]
    Invalid {
        /// The key, under `network`.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: &'static str, message: impl Into<String>) -> NetConfigError {
    NetConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// The `[network]` section.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct NetConfig {
    /// The bridge of `networkMode: bridge` tasks.
    pub bridge: String,
    /// Its subnet; the node holds the first address (the tasks' gateway).
    pub bridge_subnet: Ipv4Net,
    /// Host ports given to mappings without a `hostPort` (ECS's default ephemeral range).
    pub dynamic_ports: String,
    /// The nftables table Skiff owns (family `ip`); nothing else is touched.
    pub table: String,
    /// Name servers for tasks' resolv.conf; empty: the node's own (loopback resolvers skipped).
    pub dns_servers: Vec<Ipv4Addr>,
    /// Search domains for tasks' resolv.conf; empty: the node's.
    pub dns_search: Vec<String>,
    /// Where skiffd serves the task metadata endpoint (port 80), reachable from tasks only.
    pub metadata_address: Ipv4Addr,
    /// How awsvpc tasks get an address of their own; none: awsvpc is refused.
    pub awsvpc: Option<AwsvpcConfig>,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            bridge: "skiff0".into(),
            bridge_subnet: "172.30.0.0/16".parse().expect("a valid default subnet"),
            dynamic_ports: "49153-65535".into(),
            table: "skiff".into(),
            dns_servers: Vec::new(),
            dns_search: Vec::new(),
            metadata_address: Ipv4Addr::new(169, 254, 170, 2),
            awsvpc: None,
        }
    }
}

/// `[network.awsvpc]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum AwsvpcConfig {
    /// A veth into each task's namespace; the node routes `subnet` to its tasks.
    Routed {
        /// The tasks' subnet: a route on the LAN's router points it at the node.
        subnet: Ipv4Net,
    },
    /// A macvlan sub-interface of `parent` in each task's namespace, with a LAN address.
    Macvlan(LanPool),
    /// An ipvlan (L2) sub-interface of `parent`: for uplinks that allow one MAC only.
    Ipvlan(LanPool),
}

/// Addresses on the node's LAN for sub-interface modes.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LanPool {
    /// The node's uplink.
    pub parent: String,
    /// The LAN (its prefix is the tasks' prefix).
    pub subnet: Ipv4Net,
    /// The first address of the range given to tasks.
    pub first: Ipv4Addr,
    /// The last.
    pub last: Ipv4Addr,
    /// The LAN's router.
    pub gateway: Ipv4Addr,
}

impl NetConfig {
    /// Checks the settings together.
    pub fn validate(&self) -> Result<(), NetConfigError> {
        if self.bridge.is_empty() || self.bridge.len() > 15 {
            return Err(invalid("bridge", "an interface name of 1 to 15 characters"));
        }
        if self.bridge_subnet.prefix_len() > 30 {
            return Err(invalid("bridge_subnet", "needs a /30 or larger"));
        }
        self.dynamic_port_range()?;
        if self.table.is_empty()
            || !self
                .table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid("table", "letters, digits, '_' and '-' only"));
        }
        match &self.awsvpc {
            Some(AwsvpcConfig::Routed { subnet }) => {
                if subnet.prefix_len() > 30 {
                    return Err(invalid("awsvpc.subnet", "needs a /30 or larger"));
                }
                if subnet.contains(&self.bridge_subnet.network())
                    || self.bridge_subnet.contains(&subnet.network())
                {
                    return Err(invalid("awsvpc.subnet", "overlaps bridge_subnet"));
                }
            }
            Some(AwsvpcConfig::Macvlan(p) | AwsvpcConfig::Ipvlan(p)) => {
                if !p.subnet.contains(&p.first) || !p.subnet.contains(&p.last) || p.first > p.last {
                    return Err(invalid(
                        "awsvpc.first",
                        format!("{}-{} is not a range inside {}", p.first, p.last, p.subnet),
                    ));
                }
                if !p.subnet.contains(&p.gateway) {
                    return Err(invalid(
                        "awsvpc.gateway",
                        format!("{} is not in {}", p.gateway, p.subnet),
                    ));
                }
                if p.parent.is_empty() || p.parent.len() > 15 {
                    return Err(invalid(
                        "awsvpc.parent",
                        "an interface name of 1 to 15 characters",
                    ));
                }
            }
            None => {}
        }
        Ok(())
    }

    /// The dynamic host port range.
    pub fn dynamic_port_range(&self) -> Result<RangeInclusive<u16>, NetConfigError> {
        let bad = || {
            invalid(
                "dynamic_ports",
                format!("{:?} is not a range like 49153-65535", self.dynamic_ports),
            )
        };
        let (a, b) = self.dynamic_ports.split_once('-').ok_or_else(bad)?;
        let (a, b): (u16, u16) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if a == 0 || a > b {
            return Err(bad());
        }
        Ok(a..=b)
    }

    /// The node's address on the bridge: the subnet's first.
    pub fn bridge_gateway(&self) -> Ipv4Addr {
        first_host(self.bridge_subnet)
    }
}

/// The first usable address of `net`.
pub(crate) fn first_host(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> NetConfig {
        #[derive(Deserialize)]
        struct File {
            network: NetConfig,
        }
        let f: File = toml::from_str(toml_text).unwrap();
        f.network
    }

    #[test]
    fn defaults_are_valid_and_awsvpc_is_off() {
        let c = NetConfig::default();
        c.validate().unwrap();
        assert_eq!(c.dynamic_port_range().unwrap(), 49153..=65535);
        assert_eq!(c.bridge_gateway(), Ipv4Addr::new(172, 30, 0, 1));
        assert!(c.awsvpc.is_none());
    }

    #[test]
    fn awsvpc_modes_parse() {
        let c = parse("[network.awsvpc]\nmode = \"routed\"\nsubnet = \"10.99.0.0/24\"\n");
        assert_eq!(
            c.awsvpc,
            Some(AwsvpcConfig::Routed {
                subnet: "10.99.0.0/24".parse().unwrap()
            })
        );
        let c = parse(
            "[network.awsvpc]\nmode = \"macvlan\"\nparent = \"eth0\"\nsubnet = \"192.168.1.0/24\"\nfirst = \"192.168.1.200\"\nlast = \"192.168.1.250\"\ngateway = \"192.168.1.1\"\n",
        );
        c.validate().unwrap();
        assert!(matches!(c.awsvpc, Some(AwsvpcConfig::Macvlan(_))));
    }

    #[test]
    fn bad_settings_name_their_key() {
        let cases = [
            (
                "[network]\ndynamic_ports = \"9-1\"\n",
                "network.dynamic_ports",
            ),
            (
                "[network]\nbridge = \"a-very-long-bridge-name\"\n",
                "network.bridge",
            ),
            ("[network]\ntable = \"x y\"\n", "network.table"),
            (
                "[network.awsvpc]\nmode = \"routed\"\nsubnet = \"172.30.1.0/24\"\n",
                "network.awsvpc.subnet",
            ),
            (
                "[network.awsvpc]\nmode = \"ipvlan\"\nparent = \"eth0\"\nsubnet = \"192.168.1.0/24\"\nfirst = \"192.168.2.1\"\nlast = \"192.168.2.9\"\ngateway = \"192.168.1.1\"\n",
                "network.awsvpc.first",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).validate().unwrap_err().to_string();
            assert!(err.starts_with(key), "{text}: {err}");
        }
    }
}
