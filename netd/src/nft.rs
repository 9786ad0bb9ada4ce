//! Packet filtering and NAT: one nftables table that Skiff owns (family `ip`, name from the
//! configuration), nothing else touched.
//!
//! The table is rendered whole from the lease table and replaced in one `nft -f` transaction at
//! start and whenever an incremental change cannot be applied, so it can never drift from the
//! leases; a task's port mappings are elements of two verdict maps (`tcp_ports`, `udp_ports`:
//! host port -> task address . container port), added and deleted in one transaction each, so
//! the rules themselves never change while tasks come and go. Rules:
//! - DNAT of the maps' ports on every local address, in `prerouting` (other hosts, tasks) and
//!   `output` (the node itself, localhost included: `route_localnet` is set on the bridge);
//! - masquerade of the bridge subnet leaving by another interface (egress), of loopback sources
//!   entering the bridge (localhost -> hostPort), and of DNAT'd traffic between two tasks of the
//!   bridge (hairpin: a task reaching another through a host port);
//! - the metadata address accepted only from loopback, the bridge and Skiff's task links.
//!
//! The seam is [`Firewall`]: the real one runs Debian's `nft`, tests record the scripts.

use std::fmt::Write as _;
use std::future::Future;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::ipam::{Lease, PortLease, Protocol};

/// Errors of the firewall.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// nftables refused the script (or `nft` could not be run).
    #[error("nft refused the change to table {table}: {stderr}")]
    Refused {
        /// The table.
        table: String,
        /// What nft said.
        stderr: String,
    },
}

/// Applies nftables scripts, each one transaction.
pub trait Firewall: Send + Sync + 'static {
    /// Applies `script` to `table` atomically (all or nothing).
    fn apply(
        &self,
        table: &str,
        script: String,
    ) -> impl Future<Output = Result<(), NftError>> + Send;
}

/// The real firewall: libnftables in-process (one context for the daemon's life) when it loads,
/// else the `nft` command, one process per change.
#[derive(Debug)]
pub struct Nft {
    lib: Option<std::sync::Mutex<crate::sys::Libnftables>>,
}

impl Nft {
    /// libnftables if it loads, else the command. The library's netlink socket is opened here,
    /// in the calling thread's network namespace, and changes go to that namespace's tables.
    pub fn new() -> Self {
        match crate::sys::Libnftables::open() {
            Ok(lib) => Self {
                lib: Some(std::sync::Mutex::new(lib)),
            },
            Err(e) => {
                tracing::warn!(error = %e, "libnftables not loaded: firewall changes run the nft command");
                Self::command()
            }
        }
    }

    /// Always the `nft` command.
    pub fn command() -> Self {
        Self { lib: None }
    }

    async fn run_command(script: String) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        let nft = ["/usr/sbin/nft", "/sbin/nft"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nft");
        let mut child = tokio::process::Command::new(nft)
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("running {nft}: {e}"))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let written = stdin.write_all(script.as_bytes()).await;
        drop(stdin);
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| format!("running {nft}: {e}"))?;
        match (out.status.success(), written) {
            (true, Ok(())) => Ok(()),
            (_, Err(e)) => Err(format!("writing to {nft}: {e}")),
            (false, _) => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        }
    }
}

impl Default for Nft {
    fn default() -> Self {
        Self::new()
    }
}

impl Firewall for Nft {
    async fn apply(&self, table: &str, script: String) -> Result<(), NftError> {
        // A change takes well under a millisecond in-process: no need to leave the worker.
        let done = match &self.lib {
            Some(lib) => lib.lock().expect("nft context").run(&script),
            None => Self::run_command(script).await,
        };
        done.map_err(|stderr| NftError::Refused {
            table: table.to_owned(),
            stderr,
        })
    }
}

/// What the table's rules depend on.
#[derive(Clone, Debug)]
pub struct TableSpec<'a> {
    /// The table's name.
    pub table: &'a str,
    /// The bridge.
    pub bridge: &'a str,
    /// Its subnet.
    pub subnet: Ipv4Net,
    /// The metadata endpoint's address.
    pub metadata: Ipv4Addr,
}

/// The port skiffd serves the metadata endpoint on (the ECS agent's, 51679); tasks ask port 80
/// of the metadata address and are DNAT'd to it, so a node service listening on port 80 of every
/// address does not keep the endpoint from binding.
pub const METADATA_PORT: u16 = 51679;

/// Prefix of every host-side link Skiff makes for a task (`sk` + kind letter + task id).
pub const LINK_PREFIX: &str = "sk";

fn map_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp_ports",
        Protocol::Udp => "udp_ports",
    }
}

fn elements(address: Ipv4Addr, ports: &[PortLease], p: Protocol) -> Vec<String> {
    ports
        .iter()
        .filter(|m| m.protocol == p)
        .map(|m| format!("{} : {address} . {}", m.host_port, m.container_port))
        .collect()
}

/// The whole table, replacing any previous one in the same transaction.
pub fn table_script<'l>(
    spec: &TableSpec<'_>,
    leases: impl IntoIterator<Item = &'l Lease> + Clone,
) -> String {
    let TableSpec {
        table,
        bridge,
        subnet,
        metadata,
    } = spec;
    let mut s = format!("table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{\n");
    for p in [Protocol::Tcp, Protocol::Udp] {
        let els: Vec<String> = leases
            .clone()
            .into_iter()
            .flat_map(|l| elements(l.address, &l.ports, p))
            .collect();
        let _ = writeln!(
            s,
            "  map {} {{\n    type inet_service : ipv4_addr . inet_service;",
            map_name(p)
        );
        if !els.is_empty() {
            let _ = writeln!(s, "    elements = {{ {} }}", els.join(", "));
        }
        s.push_str("  }\n");
    }
    let dnat = format!(
        "    ip daddr {metadata} tcp dport 80 dnat ip to {metadata}:{METADATA_PORT}\n    fib daddr type local dnat ip to tcp dport map @tcp_ports\n    fib daddr type local dnat ip to udp dport map @udp_ports\n"
    );
    let _ = write!(
        s,
        "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{dnat}  }}\n\
         \x20 chain output {{\n    type nat hook output priority -100; policy accept;\n{dnat}  }}\n\
         \x20 chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   ip saddr {subnet} oifname != \"{bridge}\" masquerade\n\
         \x20   oifname \"{bridge}\" ip saddr 127.0.0.0/8 masquerade\n\
         \x20   oifname \"{bridge}\" ct status dnat ip saddr {subnet} masquerade\n  }}\n\
         \x20 chain input {{\n    type filter hook input priority filter; policy accept;\n\
         \x20   ip daddr {metadata} iifname \"lo\" accept\n\
         \x20   ip daddr {metadata} iifname \"{bridge}\" accept\n\
         \x20   ip daddr {metadata} iifname \"{LINK_PREFIX}*\" accept\n\
         \x20   ip daddr {metadata} drop\n  }}\n}}\n"
    );
    s
}

/// Adds a task's port mappings; None when it has none.
pub fn add_ports(table: &str, lease: &Lease) -> Option<String> {
    ports_script("add", table, &lease.ports, |p| {
        elements(lease.address, &lease.ports, p)
    })
}

/// Deletes a task's port mappings; None when it has none. Fails if one is missing (nft 1.0.6 has
/// no `destroy`): the caller then rewrites the table.
pub fn delete_ports(table: &str, lease: &Lease) -> Option<String> {
    ports_script("delete", table, &lease.ports, |p| {
        lease
            .ports
            .iter()
            .filter(|m| m.protocol == p)
            .map(|m| m.host_port.to_string())
            .collect()
    })
}

fn ports_script(
    verb: &str,
    table: &str,
    ports: &[PortLease],
    els: impl Fn(Protocol) -> Vec<String>,
) -> Option<String> {
    let mut s = String::new();
    for p in [Protocol::Tcp, Protocol::Udp] {
        let e = els(p);
        if !e.is_empty() {
            let _ = writeln!(
                s,
                "{verb} element ip {table} {} {{ {} }}",
                map_name(p),
                e.join(", ")
            );
        }
    }
    (!ports.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::Attachment;

    fn lease() -> Lease {
        Lease {
            attachment: Attachment::Bridge,
            address: Ipv4Addr::new(172, 30, 0, 2),
            meta_address: None,
            ports: vec![
                PortLease {
                    container_name: "web".into(),
                    container_port: 80,
                    host_port: 8080,
                    protocol: Protocol::Tcp,
                },
                PortLease {
                    container_name: "dns".into(),
                    container_port: 53,
                    host_port: 5353,
                    protocol: Protocol::Udp,
                },
            ],
        }
    }

    fn spec() -> TableSpec<'static> {
        TableSpec {
            table: "skiff",
            bridge: "skiff0",
            subnet: "172.30.0.0/16".parse().unwrap(),
            metadata: Ipv4Addr::new(169, 254, 170, 2),
        }
    }

    #[test]
    fn the_table_is_replaced_whole_with_the_leases_as_map_elements() {
        let l = lease();
        let s = table_script(&spec(), [&l]);
        assert!(s.starts_with("table ip skiff {}\ndelete table ip skiff\ntable ip skiff {\n"));
        assert!(s.contains("elements = { 8080 : 172.30.0.2 . 80 }"), "{s}");
        assert!(s.contains("elements = { 5353 : 172.30.0.2 . 53 }"), "{s}");
        assert!(s.contains("ip saddr 172.30.0.0/16 oifname != \"skiff0\" masquerade"));
        assert!(s.contains("ip daddr 169.254.170.2 drop"));
        assert!(s.contains("ip daddr 169.254.170.2 tcp dport 80 dnat ip to 169.254.170.2:51679"));
        let empty = table_script(&spec(), []);
        assert!(!empty.contains("elements"));
    }

    #[tokio::test]
    async fn both_ways_to_nftables_report_what_it_refused() {
        for nft in [Nft::new(), Nft::command()] {
            let err = nft
                .apply("skiff", "add element ip skiff ports { bogus".into())
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("nft refused the change to table skiff: "),
                "{err}"
            );
            assert!(err.contains("syntax error"), "{nft:?}: {err}");
        }
        assert!(
            Nft::new().lib.is_some(),
            "libnftables loads on this machine"
        );
    }

    #[test]
    fn port_changes_are_element_operations() {
        let l = lease();
        assert_eq!(
            add_ports("skiff", &l).unwrap(),
            "add element ip skiff tcp_ports { 8080 : 172.30.0.2 . 80 }\nadd element ip skiff udp_ports { 5353 : 172.30.0.2 . 53 }\n"
        );
        assert_eq!(
            delete_ports("skiff", &l).unwrap(),
            "delete element ip skiff tcp_ports { 8080 }\ndelete element ip skiff udp_ports { 5353 }\n"
        );
        let none = Lease { ports: vec![], ..l };
        assert!(add_ports("skiff", &none).is_none());
    }
}
