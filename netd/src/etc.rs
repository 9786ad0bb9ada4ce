//! A task's /etc/hosts and /etc/resolv.conf, as Docker writes them for its containers.
//!
//! hosts: loopback, then the task's address (or loopback without one) for its hostname and each
//! container's name, so containers of a task find each other by name as ECS's links let them.
//! resolv.conf: the configured servers, else the node's; loopback resolvers of the node
//! (systemd-resolved's 127.0.0.53, a local dnsmasq) cannot be reached from a task's namespace,
//! so systemd-resolved's upstream file is preferred and loopback servers are dropped, as Docker
//! does.

use std::net::Ipv4Addr;

/// The hosts file of a task.
pub fn hosts(address: Option<Ipv4Addr>, names: &[&str]) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    let mut uniq: Vec<&str> = Vec::new();
    for n in names {
        if !n.is_empty() && !uniq.contains(n) {
            uniq.push(n);
        }
    }
    if !uniq.is_empty() {
        let a = address.unwrap_or(Ipv4Addr::LOCALHOST);
        s.push_str(&format!("{a}\t{}\n", uniq.join(" ")));
    }
    s
}

/// The resolv.conf of a task: `servers`/`search` when given, else what `node` (the node's
/// resolv.conf text) says, loopback servers dropped.
pub fn resolv_conf(node: &str, servers: &[Ipv4Addr], search: &[String]) -> String {
    let mut ns: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
    let mut sr: Vec<String> = search.to_vec();
    let mut options = Vec::new();
    for line in node.lines().map(str::trim) {
        let mut w = line.split_whitespace();
        match (w.next(), servers.is_empty(), search.is_empty()) {
            (Some("nameserver"), true, _) => {
                if let Some(a) = w.next().filter(|a| !is_loopback(a)) {
                    ns.push(a.to_owned());
                }
            }
            (Some("search" | "domain"), _, true) => sr.extend(w.map(str::to_owned)),
            (Some("options"), _, _) => options.extend(w.map(str::to_owned)),
            _ => {}
        }
    }
    let mut s = String::new();
    if !sr.is_empty() {
        s.push_str(&format!("search {}\n", sr.join(" ")));
    }
    for n in ns {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !options.is_empty() {
        s.push_str(&format!("options {}\n", options.join(" ")));
    }
    s
}

fn is_loopback(a: &str) -> bool {
    a.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// The node's resolv.conf: systemd-resolved's upstream list when it runs, else /etc's.
pub fn node_resolv_conf() -> String {
    ["/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_names_the_task_and_its_containers_once() {
        let h = hosts(
            Some(Ipv4Addr::new(172, 30, 0, 5)),
            &["web", "sidecar", "web"],
        );
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("172.30.0.5\tweb sidecar\n"), "{h}");
        assert!(hosts(None, &["a"]).ends_with("127.0.0.1\ta\n"));
    }

    #[test]
    fn resolv_conf_drops_loopback_and_honours_settings() {
        let node = "# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch lan\noptions edns0 trust-ad\n";
        assert_eq!(
            resolv_conf(node, &[], &[]),
            "search lan\nnameserver 10.0.0.2\noptions edns0 trust-ad\n"
        );
        assert_eq!(
            resolv_conf(node, &[Ipv4Addr::new(9, 9, 9, 9)], &["corp".into()]),
            "search corp\nnameserver 9.9.9.9\noptions edns0 trust-ad\n"
        );
    }
}
