//! rtnetlink requests: links (bridge, veth), addresses, routes.

use super::netlink::{Message, Socket, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use std::io;
use std::net::Ipv4Addr;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;
const RTA_OIF: u16 = 4;
const IFF_UP: u32 = 1;

/// struct ifinfomsg.
fn ifinfo(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

pub fn new_bridge(name: &str) -> Message {
    Message::new(
        RTM_NEWLINK,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )
    .raw(&ifinfo(0, 0, 0))
    .attr_str(IFLA_IFNAME, name)
    .begin(IFLA_LINKINFO)
    .attr_str(IFLA_INFO_KIND, "bridge")
    .end()
}

/// A veth pair: `host` here, a port of the bridge `master`, and `peer` with the MAC address
/// `peer_mac`, created directly in the namespace open at `netns_fd`; both down, so the caller
/// can configure them (no IPv6) before anything runs on them.
pub fn new_veth(host: &str, peer: &str, peer_mac: [u8; 6], netns_fd: i32, master: i32) -> Message {
    let mut peer_msg = Vec::from(ifinfo(0, 0, 0));
    // The peer is an ifinfomsg followed by its own attributes, inside VETH_INFO_PEER.
    let sub = Message::new(0, 0)
        .attr_str(IFLA_IFNAME, peer)
        .attr(IFLA_ADDRESS, &peer_mac)
        .attr_u32(IFLA_NET_NS_FD, netns_fd as u32)
        .finish(0);
    peer_msg.extend_from_slice(&sub[super::netlink::NLMSG_HDRLEN..]);
    Message::new(
        RTM_NEWLINK,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )
    .raw(&ifinfo(0, 0, 0))
    .attr_str(IFLA_IFNAME, host)
    .attr_u32(IFLA_MASTER, master as u32)
    .begin(IFLA_LINKINFO)
    .attr_str(IFLA_INFO_KIND, "veth")
    .begin(IFLA_INFO_DATA)
    .attr(VETH_INFO_PEER, &peer_msg)
    .end()
    .end()
}

pub fn set_up(index: i32) -> Message {
    Message::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK).raw(&ifinfo(index, IFF_UP, IFF_UP))
}

pub fn del_link(index: i32) -> Message {
    Message::new(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK).raw(&ifinfo(index, 0, 0))
}

pub fn add_addr(index: i32, addr: Ipv4Addr, prefix: u8) -> Message {
    let mut ifa = [0u8; 8];
    ifa[0] = libc::AF_INET as u8;
    ifa[1] = prefix;
    ifa[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
    Message::new(
        RTM_NEWADDR,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )
    .raw(&ifa)
    .attr(IFA_LOCAL, &addr.octets())
    .attr(IFA_ADDRESS, &addr.octets())
}

pub fn add_default_route(gateway: Ipv4Addr, oif: i32) -> Message {
    // struct rtmsg: family, dst_len, src_len, tos, table (main), protocol (boot), scope
    // (universe), type (unicast), flags.
    let rt = [libc::AF_INET as u8, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
    Message::new(
        RTM_NEWROUTE,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )
    .raw(&rt)
    .attr(RTA_GATEWAY, &gateway.octets())
    .attr_u32(RTA_OIF, oif as u32)
}

/// An rtnetlink socket in the calling thread's network namespace, numbering its requests.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> io::Result<Rtnl> {
        Ok(Rtnl {
            sock: Socket::open(libc::NETLINK_ROUTE)?,
            seq: 1,
        })
    }

    pub fn run(&mut self, m: Message) -> io::Result<()> {
        self.seq += 1;
        self.sock.transact(&[m.finish(self.seq)])
    }

    /// Like `run`, but "already exists" is success.
    pub fn ensure(&mut self, m: Message) -> io::Result<()> {
        match self.run(m) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }
}

/// The index of an interface in the calling thread's network namespace.
pub fn index(name: &str) -> io::Result<i32> {
    let c =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i as i32),
    }
}

#[cfg(test)]
mod tests {
    use super::super::netlink::{attrs, header, NLMSG_HDRLEN};
    use super::*;

    #[test]
    fn veth_is_created_down_on_the_bridge_with_its_peer_in_the_namespace() {
        let mac = [2, 0x42, 10, 89, 0, 2];
        let m = new_veth("vb1234", "eth0", mac, 7, 4).finish(1);
        let (_, typ, flags, _) = header(&m);
        assert_eq!(typ, RTM_NEWLINK);
        assert_eq!(
            flags & (NLM_F_CREATE | NLM_F_EXCL),
            NLM_F_CREATE | NLM_F_EXCL
        );
        let down = ifinfo(0, 0, 0);
        assert_eq!(&m[NLMSG_HDRLEN..NLMSG_HDRLEN + 16], &down[..]);
        let top = attrs(&m[NLMSG_HDRLEN + 16..]);
        assert_eq!(top[0], (IFLA_IFNAME, &b"vb1234\0"[..]));
        assert_eq!(top[1], (IFLA_MASTER, &4u32.to_ne_bytes()[..]));
        let info = attrs(top[2].1);
        assert_eq!(info[0], (IFLA_INFO_KIND, &b"veth\0"[..]));
        let data = attrs(info[1].1);
        let peer = data[0].1;
        assert_eq!(&peer[..16], &ifinfo(0, 0, 0)[..]);
        let peer_attrs = attrs(&peer[16..]);
        assert_eq!(peer_attrs[0], (IFLA_IFNAME, &b"eth0\0"[..]));
        assert_eq!(peer_attrs[1], (IFLA_ADDRESS, &mac[..]));
        assert_eq!(peer_attrs[2], (IFLA_NET_NS_FD, &7u32.to_ne_bytes()[..]));
    }

    #[test]
    fn address_and_route_encoding() {
        let m = add_addr(3, Ipv4Addr::new(10, 89, 0, 2), 24).finish(2);
        assert_eq!(m[NLMSG_HDRLEN + 1], 24);
        let a = attrs(&m[NLMSG_HDRLEN + 8..]);
        assert_eq!(a[0], (IFA_LOCAL, &[10u8, 89, 0, 2][..]));
        let r = add_default_route(Ipv4Addr::new(10, 89, 0, 1), 3).finish(3);
        let a = attrs(&r[NLMSG_HDRLEN + 12..]);
        assert_eq!(a[0], (RTA_GATEWAY, &[10u8, 89, 0, 1][..]));
    }
}
