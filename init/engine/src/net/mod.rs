//! Container networking for the supervisor: the `berth0` bridge, a veth pair per container,
//! addresses allocated from the bridge subnet and persisted on disk, host port mappings and
//! outbound NAT in nftables. Everything goes through netlink (no `ip` or `nft` binaries).
//!
//! The network namespace is the calling thread's: a test can unshare one for a thread and
//! get a private "host".

mod ipam;
pub mod link;
pub mod netlink;
pub mod nft;

pub use ipam::{Allocation, Allocations};

use berth_runtime::trace;
use nix::sched::CloneFlags;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub const DEFAULT_BRIDGE: &str = "berth0";
/// The bridge subnet: 10.89.0.0/24, the bridge is .1.
pub const DEFAULT_SUBNET: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 0);
pub const DEFAULT_PREFIX: u8 = 24;
/// The container's end of its veth pair.
pub const CONTAINER_IFNAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("port mapping `{0}`: expected HOST:CONTAINER[/tcp|/udp] with ports 1-65535")]
    BadPort(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the subnet {subnet}/{prefix} has no free address")]
    Exhausted { subnet: Ipv4Addr, prefix: u8 },
    #[error("host port {port}/{protocol} is already mapped for container `{owner}`")]
    PortTaken {
        port: u16,
        protocol: Protocol,
        owner: String,
    },
    #[error("{path}: corrupt allocation state: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Io { what, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// `8080:80/tcp`: host port 8080 to container port 80.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl FromStr for PortMapping {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = || NetError::BadPort(s.to_string());
        let (ports, protocol) = match s.split_once('/') {
            None => (s, Protocol::Tcp),
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some(_) => return Err(bad()),
        };
        let (h, c) = ports.split_once(':').ok_or_else(bad)?;
        let port = |v: &str| v.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
        Ok(PortMapping {
            host_port: port(h)?,
            container_port: port(c)?,
            protocol,
        })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

/// Runs `f` with the calling thread in the network namespace at `netns`, then returns.
pub fn in_netns<T>(netns: &Path, f: impl FnOnce() -> Result<T, NetError>) -> Result<T, NetError> {
    let own =
        File::open("/proc/thread-self/ns/net").map_err(io_err("open own network namespace"))?;
    let target = File::open(netns).map_err(io_err(format!("open {}", netns.display())))?;
    nix::sched::setns(&target, CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Io {
        what: format!("enter {}", netns.display()),
        source: e.into(),
    })?;
    let r = f();
    nix::sched::setns(&own, CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Io {
        what: "return to own network namespace".into(),
        source: e.into(),
    })?;
    r
}

fn sysctl(path: &str, value: &str) -> Result<(), NetError> {
    std::fs::write(path, value).map_err(io_err(format!("write {path}")))
}

/// Turns IPv6 off on `ifname` in the calling thread's network namespace, before the link is
/// up. The bridge network is IPv4 only, and with IPv6 on, its links would accept router
/// advertisements: any container (CAP_NET_RAW is in the default set) could then give the host
/// (through the bridge) and its neighbours IPv6 routes through itself. Off, the kernel drops
/// every IPv6 packet on the link and never starts address autoconfiguration there. A
/// kernel without IPv6 has nothing to turn off.
fn disable_ipv6(ifname: &str) -> Result<(), NetError> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && !Path::new("/proc/sys/net/ipv6").exists() =>
        {
            Ok(())
        }
        r => r.map_err(io_err(format!("write {path}"))),
    }
}

/// A container's place on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    /// The host end of the veth pair.
    pub host_ifname: String,
}

/// The bridge network, with its allocations persisted in `dir`.
#[derive(Debug, Clone)]
pub struct BridgeNetwork {
    pub dir: PathBuf,
    pub bridge: String,
    pub subnet: Ipv4Addr,
    pub prefix: u8,
}

/// The MAC address of the container's `eth0` at `address`: locally administered, 02:42 and
/// the address's four bytes (as Docker's bridge does), so the bridge's port guard can name it
/// from the allocation alone.
pub fn container_mac(address: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = address.octets();
    [0x02, 0x42, a, b, c, d]
}

/// The host-side interface name of a container's veth pair (at most 15 bytes).
pub fn host_ifname(id: &str) -> String {
    // FNV-1a: stable across runs and versions, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("vb{h:08x}")
}

impl BridgeNetwork {
    /// Berth's default network with state in `dir` (`/var/lib/berth/network`).
    pub fn new(dir: impl Into<PathBuf>) -> BridgeNetwork {
        BridgeNetwork {
            dir: dir.into(),
            bridge: DEFAULT_BRIDGE.into(),
            subnet: DEFAULT_SUBNET,
            prefix: DEFAULT_PREFIX,
        }
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + 1)
    }

    fn allocations(&self) -> Allocations {
        Allocations::new(&self.dir, self.subnet, self.prefix)
    }

    /// Creates the bridge if needed, with its address and without IPv6, up, forwarding on.
    fn ensure_bridge(&self, rt: &mut link::Rtnl) -> Result<i32, NetError> {
        rt.ensure(link::new_bridge(&self.bridge))
            .map_err(io_err(format!("create bridge {}", self.bridge)))?;
        let index =
            link::index(&self.bridge).map_err(io_err(format!("find bridge {}", self.bridge)))?;
        disable_ipv6(&self.bridge)?;
        rt.ensure(link::add_addr(index, self.gateway(), self.prefix))
            .map_err(io_err(format!("address {}", self.bridge)))?;
        rt.run(link::set_up(index))
            .map_err(io_err(format!("bring up {}", self.bridge)))?;
        sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        // Lets DNAT send connections to 127.0.0.1:PORT on to the bridge.
        sysctl(
            &format!("/proc/sys/net/ipv4/conf/{}/route_localnet", self.bridge),
            "1",
        )?;
        Ok(index)
    }

    /// Attaches container `id`, whose network namespace is at `netns` (`/proc/PID/ns/net`),
    /// to the bridge and maps `ports`. Nothing is left behind on failure.
    pub fn attach(
        &self,
        id: &str,
        netns: &Path,
        ports: &[PortMapping],
    ) -> Result<Attachment, NetError> {
        let alloc = self.allocations().allocate(id, ports)?;
        trace::step("network: address");
        match self.plumb(id, netns, alloc.address) {
            Ok(a) => Ok(a),
            Err(e) => {
                let _ = self.detach(id);
                Err(e)
            }
        }
    }

    fn plumb(&self, id: &str, netns: &Path, address: Ipv4Addr) -> Result<Attachment, NetError> {
        // The guard (apply_nat) goes on before the container's end of the pair exists.
        self.apply_nat()?;
        trace::step("network: nftables");
        let mut rt = link::Rtnl::open().map_err(io_err("open rtnetlink"))?;
        let bridge = self.ensure_bridge(&mut rt)?;
        trace::step("network: bridge");
        let host = host_ifname(id);
        let ns = File::open(netns).map_err(io_err(format!("open {}", netns.display())))?;
        rt.run(link::new_veth(
            &host,
            CONTAINER_IFNAME,
            container_mac(address),
            ns.as_raw_fd(),
            bridge,
        ))
        .map_err(io_err(format!("create veth {host} on {}", self.bridge)))?;
        let host_index = link::index(&host).map_err(io_err(format!("find {host}")))?;
        disable_ipv6(&host)?;
        rt.run(link::set_up(host_index))
            .map_err(io_err(format!("bring up {host}")))?;
        trace::step("network: veth");
        let (gateway, prefix) = (self.gateway(), self.prefix);
        in_netns(netns, || {
            let mut rt = link::Rtnl::open().map_err(io_err("open rtnetlink in the container"))?;
            let lo = link::index("lo").map_err(io_err("find lo"))?;
            rt.run(link::set_up(lo)).map_err(io_err("bring up lo"))?;
            let eth = link::index(CONTAINER_IFNAME).map_err(io_err("find eth0"))?;
            disable_ipv6(CONTAINER_IFNAME)?;
            rt.run(link::add_addr(eth, address, prefix))
                .map_err(io_err(format!("address eth0 {address}")))?;
            rt.run(link::set_up(eth)).map_err(io_err("bring up eth0"))?;
            rt.run(link::add_default_route(gateway, eth))
                .map_err(io_err("default route"))
        })?;
        trace::step("network: container side");
        Ok(Attachment {
            address,
            gateway,
            prefix,
            host_ifname: host,
        })
    }

    /// Removes the container's veth pair (if its namespace still exists), releases its
    /// address and its port mappings. Detaching twice is fine.
    pub fn detach(&self, id: &str) -> Result<(), NetError> {
        let host = host_ifname(id);
        let mut attached = false;
        if let Ok(index) = link::index(&host) {
            attached = true;
            let mut rt = link::Rtnl::open().map_err(io_err("open rtnetlink"))?;
            match rt.run(link::del_link(index)) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                Err(e) => return Err(io_err(format!("delete {host}"))(e)),
            }
        }
        // The nftables table is rewritten only when this container was part of it.
        if self.allocations().release(id)? || attached {
            self.apply_nat()?;
        }
        Ok(())
    }

    /// Brings up loopback only (`network = "none"`).
    pub fn loopback_only(netns: &Path) -> Result<(), NetError> {
        in_netns(netns, || {
            let mut rt = link::Rtnl::open().map_err(io_err("open rtnetlink"))?;
            let lo = link::index("lo").map_err(io_err("find lo"))?;
            rt.run(link::set_up(lo)).map_err(io_err("bring up lo"))
        })?;
        trace::step("network: loopback");
        Ok(())
    }

    /// Rewrites the nftables tables from the persisted allocations, holding their lock until
    /// the commit is done (see [`ipam::Allocations::with_all`]).
    fn apply_nat(&self) -> Result<(), NetError> {
        self.allocations().with_all(|all| self.commit_nat(all))
    }

    fn commit_nat(&self, all: &BTreeMap<String, ipam::Allocation>) -> Result<(), NetError> {
        let ports = all
            .values()
            .flat_map(|a| a.ports.iter().map(move |p| (*p, a.address)))
            .collect();
        let members = all
            .iter()
            .map(|(id, a)| nft::Member {
                port: host_ifname(id),
                address: a.address,
                mac: container_mac(a.address),
            })
            .collect();
        let c = nft::NatConfig {
            bridge: self.bridge.clone(),
            subnet: self.subnet,
            prefix: self.prefix,
            ports,
            members,
        };
        nft::apply(&c).map_err(io_err("write nftables tables berth"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_parse_and_print() {
        assert_eq!(
            "8080:80/tcp".parse::<PortMapping>().unwrap(),
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp
            }
        );
        assert_eq!(
            "53:53/udp".parse::<PortMapping>().unwrap().protocol,
            Protocol::Udp
        );
        assert_eq!(
            "8080:80".parse::<PortMapping>().unwrap().to_string(),
            "8080:80/tcp"
        );
        for bad in ["80", "0:80", "70000:80", "a:b", "80:80/sctp", ""] {
            let e = bad.parse::<PortMapping>().unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn host_ifnames_fit_and_are_stable() {
        let n = host_ifname("a-very-long-container-identifier-that-goes-on");
        assert!(n.len() <= 15 && n.starts_with("vb"));
        assert_eq!(
            n,
            host_ifname("a-very-long-container-identifier-that-goes-on")
        );
        assert_ne!(host_ifname("a"), host_ifname("b"));
    }
}
