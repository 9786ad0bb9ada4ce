//! Address and host-port management, persisted so that a crash never gives an address or a port
//! twice and never loses one.
//!
//! One table of leases, one per task, written atomically (temporary file, fsync, rename, fsync
//! of the directory) *before* any kernel object of the task is made, and forgotten only after
//! they are all gone: after a crash at any point, the table names every address, port, link and
//! namespace that may exist, and reconciliation at start removes those of tasks that are no
//! longer alive. Addresses are handed out round-robin from a cursor per pool (as CNI's
//! host-local does), so a freed address is not reused at once while stale ARP entries and
//! conntrack flows may still point at it.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of address and port management.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The lease table could not be read or written.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The lease table is not valid JSON of the expected shape.
    #[error("lease table {path} is corrupt: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// Every address of the pool is leased.
    #[error("no free address in {pool} ({first}-{last})")]
    PoolExhausted {
        /// The pool.
        pool: Pool,
        /// Its first address.
        first: Ipv4Addr,
        /// Its last.
        last: Ipv4Addr,
    },
    /// Another task holds the host port.
    #[error("hostPort {port}/{protocol} is already mapped by task {task}")]
    PortLeased {
        /// The port.
        port: u16,
        /// Its protocol.
        protocol: Protocol,
        /// The task holding it.
        task: String,
    },
    /// A process of the node uses the host port.
    #[error("hostPort {port}/{protocol} is in use on the node")]
    PortInUse {
        /// The port.
        port: u16,
        /// Its protocol.
        protocol: Protocol,
    },
    /// The task asks for the same host port twice.
    #[error("hostPort {port}/{protocol} is mapped twice in the task")]
    PortTwice {
        /// The port.
        port: u16,
        /// Its protocol.
        protocol: Protocol,
    },
    /// No dynamic port is free.
    #[error("no free {protocol} host port in the dynamic range {first}-{last}")]
    PortsExhausted {
        /// The protocol.
        protocol: Protocol,
        /// The range's first port.
        first: u16,
        /// Its last.
        last: u16,
    },
    /// The task already has a lease.
    #[error("task {0} already has a network lease")]
    Exists(String),
}

/// A transport protocol of a port mapping (ECS `portMappings[].protocol`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// The address pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// The bridge subnet.
    Bridge,
    /// awsvpc addresses (routed subnet, or the LAN range).
    Awsvpc,
    /// Link-local addresses of the metadata links of LAN-attached (macvlan/ipvlan) tasks.
    Meta,
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bridge => "the bridge subnet",
            Self::Awsvpc => "the awsvpc pool",
            Self::Meta => "the metadata link pool",
        })
    }
}

/// The link a task's namespace is attached by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attachment {
    /// A veth on the node's bridge.
    Bridge,
    /// A veth routed by the node (awsvpc routed).
    Routed,
    /// A macvlan sub-interface of the uplink, plus a veth for the metadata endpoint.
    Macvlan,
    /// An ipvlan sub-interface of the uplink, plus a veth for the metadata endpoint.
    Ipvlan,
}

/// A host port mapped to a container port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortLease {
    /// The container.
    pub container_name: String,
    /// Its port.
    pub container_port: u16,
    /// The node's port.
    pub host_port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

/// What a task holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// How it is attached.
    pub attachment: Attachment,
    /// Its address.
    pub address: Ipv4Addr,
    /// The link-local address of its metadata link (macvlan and ipvlan only).
    pub meta_address: Option<Ipv4Addr>,
    /// Its port mappings.
    pub ports: Vec<PortLease>,
}

impl Lease {
    fn pool(&self) -> Pool {
        match self.attachment {
            Attachment::Bridge => Pool::Bridge,
            _ => Pool::Awsvpc,
        }
    }
}

/// A range of addresses to hand out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRange {
    /// Which pool.
    pub pool: Pool,
    /// The addresses.
    pub range: RangeInclusive<Ipv4Addr>,
}

/// A port mapping asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRequest {
    /// The container.
    pub container_name: String,
    /// Its port.
    pub container_port: u16,
    /// The node's port; None for a dynamic one.
    pub host_port: Option<u16>,
    /// The protocol.
    pub protocol: Protocol,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Table {
    leases: BTreeMap<String, Lease>,
    /// Where the next search of each pool starts.
    cursors: BTreeMap<Pool, Ipv4Addr>,
    /// Where the next dynamic port search starts.
    port_cursor: Option<u16>,
}

/// The persisted lease table.
#[derive(Debug)]
pub struct Ipam {
    path: PathBuf,
    table: Table,
}

impl Ipam {
    /// Opens the table at `path` (a missing file is an empty table).
    pub fn open(path: &Path) -> Result<Self, IpamError> {
        let table = match std::fs::read(path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|e| IpamError::Corrupt {
                path: path.to_owned(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Table::default(),
            Err(source) => {
                return Err(IpamError::Io {
                    op: "read",
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Ok(Self {
            path: path.to_owned(),
            table,
        })
    }

    /// Every lease, by task id.
    pub fn leases(&self) -> &BTreeMap<String, Lease> {
        &self.table.leases
    }

    /// A free address of `pool`, from its cursor on. Not yet leased: [`Ipam::insert`] does that.
    pub fn free_address(&self, pool: &PoolRange) -> Result<Ipv4Addr, IpamError> {
        let used: std::collections::HashSet<Ipv4Addr> = self
            .table
            .leases
            .values()
            .flat_map(|l| match pool.pool {
                Pool::Meta => l.meta_address,
                p if p == l.pool() => Some(l.address),
                _ => None,
            })
            .collect();
        let (first, last) = (u32::from(*pool.range.start()), u32::from(*pool.range.end()));
        let size = last - first + 1;
        let start = self
            .table
            .cursors
            .get(&pool.pool)
            .map(|&a| u32::from(a))
            .filter(|a| (first..=last).contains(a))
            .unwrap_or(first);
        (0..size)
            .map(|i| Ipv4Addr::from(first + (start - first + i) % size))
            .find(|a| !used.contains(a))
            .ok_or(IpamError::PoolExhausted {
                pool: pool.pool,
                first: *pool.range.start(),
                last: *pool.range.end(),
            })
    }

    /// Host ports for `requests`: the fixed ones checked against other tasks' leases and
    /// `is_free` (a process of the node may hold one), the dynamic ones searched in `range`.
    pub fn ports(
        &self,
        requests: &[PortRequest],
        range: &RangeInclusive<u16>,
        is_free: impl Fn(Protocol, u16) -> bool,
    ) -> Result<Vec<PortLease>, IpamError> {
        let mut taken: BTreeMap<(Protocol, u16), &str> = BTreeMap::new();
        for (task, l) in &self.table.leases {
            for p in &l.ports {
                taken.insert((p.protocol, p.host_port), task);
            }
        }
        let mut mine = std::collections::BTreeSet::new();
        let mut out = Vec::with_capacity(requests.len());
        for r in requests.iter().filter(|r| r.host_port.is_some()) {
            let port = r.host_port.expect("fixed ports only");
            if let Some(task) = taken.get(&(r.protocol, port)) {
                return Err(IpamError::PortLeased {
                    port,
                    protocol: r.protocol,
                    task: (*task).to_owned(),
                });
            }
            if !mine.insert((r.protocol, port)) {
                return Err(IpamError::PortTwice {
                    port,
                    protocol: r.protocol,
                });
            }
            if !is_free(r.protocol, port) {
                return Err(IpamError::PortInUse {
                    port,
                    protocol: r.protocol,
                });
            }
            out.push(lease_of(r, port));
        }
        let (first, last) = (*range.start(), *range.end());
        let size = u32::from(last - first) + 1;
        let mut cursor = self
            .table
            .port_cursor
            .filter(|p| range.contains(p))
            .unwrap_or(first);
        for r in requests.iter().filter(|r| r.host_port.is_none()) {
            let found = (0..size)
                .map(|i| (u32::from(cursor - first) + i) % size + u32::from(first))
                .map(|p| u16::try_from(p).expect("inside a u16 range"))
                .find(|&p| {
                    !taken.contains_key(&(r.protocol, p))
                        && !mine.contains(&(r.protocol, p))
                        && is_free(r.protocol, p)
                })
                .ok_or(IpamError::PortsExhausted {
                    protocol: r.protocol,
                    first,
                    last,
                })?;
            mine.insert((r.protocol, found));
            cursor = if found == last { first } else { found + 1 };
            out.push(lease_of(r, found));
        }
        Ok(out)
    }

    /// Records `lease` for `task` and persists the table; the cursors move past what it took.
    pub fn insert(&mut self, task: &str, lease: Lease) -> Result<(), IpamError> {
        if self.table.leases.contains_key(task) {
            return Err(IpamError::Exists(task.to_owned()));
        }
        let next = |a: Ipv4Addr| Ipv4Addr::from(u32::from(a).wrapping_add(1));
        self.table.cursors.insert(lease.pool(), next(lease.address));
        if let Some(m) = lease.meta_address {
            self.table.cursors.insert(Pool::Meta, next(m));
        }
        if let Some(p) = lease.ports.iter().map(|p| p.host_port).max() {
            self.table.port_cursor = p.checked_add(1);
        }
        self.table.leases.insert(task.to_owned(), lease);
        self.save(true)
    }

    /// Forgets `task`'s lease and writes the table, atomically but without waiting for the
    /// disk: a removal lost in a crash leaves a lease of a task that is gone, which
    /// reconciliation at start tears down again (nothing is given twice either way).
    pub fn remove(&mut self, task: &str) -> Result<Option<Lease>, IpamError> {
        let lease = self.table.leases.remove(task);
        if lease.is_some() {
            self.save(false)?;
        }
        Ok(lease)
    }

    /// Writes the table (temporary file, rename); `durable`: fsync'd, file and directory, before
    /// returning.
    fn save(&self, durable: bool) -> Result<(), IpamError> {
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| IpamError::Io { op, path, source }
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(&serde_json::to_vec_pretty(&self.table).expect("leases serialize"))
            .map_err(io("write", &tmp))?;
        if durable {
            f.sync_all().map_err(io("fsync", &tmp))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io("rename", &self.path))?;
        if !durable {
            return Ok(());
        }
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", dir))
    }
}

fn lease_of(r: &PortRequest, host_port: u16) -> PortLease {
    PortLease {
        container_name: r.container_name.clone(),
        container_port: r.container_port,
        host_port,
        protocol: r.protocol,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(a: [u8; 4], b: [u8; 4]) -> PoolRange {
        PoolRange {
            pool: Pool::Bridge,
            range: Ipv4Addr::from(a)..=Ipv4Addr::from(b),
        }
    }

    fn bridge(address: Ipv4Addr, ports: Vec<PortLease>) -> Lease {
        Lease {
            attachment: Attachment::Bridge,
            address,
            meta_address: None,
            ports,
        }
    }

    fn req(port: Option<u16>, protocol: Protocol) -> PortRequest {
        PortRequest {
            container_name: "web".into(),
            container_port: 80,
            host_port: port,
            protocol,
        }
    }

    #[test]
    fn addresses_round_robin_and_are_never_given_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("leases.json");
        let mut ipam = Ipam::open(&path).unwrap();
        let p = pool([10, 0, 0, 2], [10, 0, 0, 4]);
        let mut got = Vec::new();
        for t in ["a", "b", "c"] {
            let a = ipam.free_address(&p).unwrap();
            ipam.insert(t, bridge(a, vec![])).unwrap();
            got.push(a);
        }
        assert_eq!(
            got,
            [[10, 0, 0, 2], [10, 0, 0, 3], [10, 0, 0, 4]].map(Ipv4Addr::from)
        );
        assert!(matches!(
            ipam.free_address(&p),
            Err(IpamError::PoolExhausted { .. })
        ));
        // Freed addresses come back only after the cursor wraps; the table survives a reopen.
        ipam.remove("b").unwrap();
        let mut again = Ipam::open(&path).unwrap();
        assert_eq!(again.free_address(&p).unwrap(), Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(again.leases().len(), 2);
        assert!(matches!(
            again.insert("a", bridge(Ipv4Addr::new(10, 0, 0, 3), vec![])),
            Err(IpamError::Exists(_))
        ));
    }

    #[test]
    fn host_ports_fixed_and_dynamic() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::open(&tmp.path().join("l.json")).unwrap();
        let range = 50000..=50002;
        let free = |_: Protocol, p: u16| p != 50001;
        let got = ipam
            .ports(
                &[
                    req(Some(8080), Protocol::Tcp),
                    req(None, Protocol::Tcp),
                    req(None, Protocol::Tcp),
                ],
                &range,
                free,
            )
            .unwrap();
        assert_eq!(
            got.iter().map(|p| p.host_port).collect::<Vec<_>>(),
            [8080, 50000, 50002]
        );
        ipam.insert("a", bridge(Ipv4Addr::new(10, 0, 0, 2), got))
            .unwrap();
        // Same port, other protocol: fine. Same port and protocol: named.
        ipam.ports(&[req(Some(8080), Protocol::Udp)], &range, free)
            .unwrap();
        let err = ipam
            .ports(&[req(Some(8080), Protocol::Tcp)], &range, free)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "hostPort 8080/tcp is already mapped by task a"
        );
        let err = ipam
            .ports(&[req(Some(9090), Protocol::Tcp)], &range, |_, p| p != 9090)
            .unwrap_err();
        assert_eq!(err.to_string(), "hostPort 9090/tcp is in use on the node");
        let err = ipam
            .ports(
                &[
                    req(Some(9090), Protocol::Udp),
                    req(Some(9090), Protocol::Udp),
                ],
                &range,
                free,
            )
            .unwrap_err();
        assert!(matches!(err, IpamError::PortTwice { port: 9090, .. }));
        let err = ipam
            .ports(&[req(None, Protocol::Tcp)], &range, free)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free tcp host port in the dynamic range 50000-50002"
        );
    }

    #[test]
    fn a_corrupt_table_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("l.json");
        std::fs::write(&path, "{").unwrap();
        let err = Ipam::open(&path).unwrap_err().to_string();
        assert!(err.contains("l.json is corrupt"), "{err}");
    }
}
