//! Berth's two nftables tables, written through nfnetlink in one atomic batch. `ip berth`:
//! port mappings (DNAT for traffic to a local address, from outside or from the host itself),
//! outbound NAT for the bridge subnet, and the guard of the host's loopback addresses. `bridge
//! berth`: the guard of the bridge's ports (each container sends with its own MAC and IPv4
//! address only, and only IPv4 and ARP). Both are replaced on every change, so they always
//! match the persisted allocations.

use super::netlink::{Message, Socket, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};
use super::{PortMapping, Protocol};
use std::io;
use std::net::Ipv4Addr;

pub const TABLE: &str = "berth";
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_BRIDGE: u8 = 7;
/// The bridge family's input hook (a frame as it enters the bridge from a port, before the
/// bridge learns its source MAC address).
const NF_BR_PRE_ROUTING: u32 = 0;
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const ETH_P_ARP: [u8; 2] = [0x08, 0x06];

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;
/// Filter chains at this priority see packets after connection tracking (-200) and before
/// destination NAT (-100).
const PRIORITY_GUARD: i32 = -150;
const NF_INET_POST_ROUTING: u32 = 4;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NFT_REG_VERDICT: u32 = 0;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const REG1: u32 = 1;
const REG2: u32 = 2;

/// One nftables expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `meta KEY` into a register.
    Meta {
        key: u32,
        dreg: u32,
    },
    /// Packet bytes (base: 1 network header, 2 transport header) into a register.
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `reg = reg & mask` (xor 0).
    Mask {
        reg: u32,
        mask: Vec<u8>,
    },
    /// Compare a register with bytes (op 0 eq, 1 neq).
    Cmp {
        sreg: u32,
        op: u32,
        data: Vec<u8>,
    },
    /// Address type of the destination (`fib daddr type`) into a register.
    FibDaddrType {
        dreg: u32,
    },
    Immediate {
        dreg: u32,
        data: Vec<u8>,
    },
    /// Connection tracking `KEY` (the state bits, say) into a register.
    Ct {
        key: u32,
        dreg: u32,
    },
    /// The verdict: drop the packet.
    Drop,
    /// DNAT to the address in `addr` and the port in `port`.
    Dnat {
        addr: u32,
        port: u32,
    },
    Masquerade,
}

const META_L4PROTO: u32 = 16;
const META_IIFNAME: u32 = 6;
const META_OIFNAME: u32 = 7;
const CT_STATE: u32 = 0;
const CT_STATUS: u32 = 2;
/// `ct status` bit: the connection's destination was translated (`IPS_DST_NAT`).
const CT_STATUS_DNAT: u32 = 1 << 5;
/// `ct state` bits: established, related.
const CT_STATE_ESTABLISHED: u32 = 1 << 1;
const CT_STATE_RELATED: u32 = 1 << 2;
const RTN_LOCAL: u32 = 2;

fn value(m: Message, typ: u16, data: &[u8]) -> Message {
    m.begin(typ).attr(NFTA_DATA_VALUE, data).end()
}

impl Expr {
    fn encode(&self, m: Message) -> Message {
        let (name, m) = match self {
            Expr::Meta { .. } => ("meta", m),
            Expr::Payload { .. } => ("payload", m),
            Expr::Mask { .. } => ("bitwise", m),
            Expr::Cmp { .. } => ("cmp", m),
            Expr::FibDaddrType { .. } => ("fib", m),
            Expr::Immediate { .. } | Expr::Drop => ("immediate", m),
            Expr::Ct { .. } => ("ct", m),
            Expr::Dnat { .. } => ("nat", m),
            Expr::Masquerade => ("masq", m),
        };
        let m = m.begin(NFTA_LIST_ELEM).attr_str(NFTA_EXPR_NAME, name);
        let m = match self {
            Expr::Masquerade => m,
            _ => {
                let d = m.begin(NFTA_EXPR_DATA);
                let d = match self {
                    Expr::Meta { key, dreg } => d.attr_be32(1, *dreg).attr_be32(2, *key),
                    Expr::Payload {
                        base,
                        offset,
                        len,
                        dreg,
                    } => d
                        .attr_be32(1, *dreg)
                        .attr_be32(2, *base)
                        .attr_be32(3, *offset)
                        .attr_be32(4, *len),
                    Expr::Mask { reg, mask } => {
                        let d = d
                            .attr_be32(1, *reg)
                            .attr_be32(2, *reg)
                            .attr_be32(3, mask.len() as u32);
                        let d = value(d, 4, mask);
                        value(d, 5, &vec![0u8; mask.len()])
                    }
                    Expr::Cmp { sreg, op, data } => {
                        value(d.attr_be32(1, *sreg).attr_be32(2, *op), 3, data)
                    }
                    // result: address type; flags: look at the destination address.
                    Expr::FibDaddrType { dreg } => {
                        d.attr_be32(1, *dreg).attr_be32(2, 3).attr_be32(3, 1 << 1)
                    }
                    Expr::Immediate { dreg, data } => value(d.attr_be32(1, *dreg), 2, data),
                    Expr::Ct { key, dreg } => d.attr_be32(1, *dreg).attr_be32(2, *key),
                    Expr::Drop => d
                        .attr_be32(1, NFT_REG_VERDICT)
                        .begin(2)
                        .begin(NFTA_DATA_VERDICT)
                        .attr_be32(NFTA_VERDICT_CODE, NF_DROP)
                        .end()
                        .end(),
                    Expr::Dnat { addr, port } => d
                        .attr_be32(1, 1)
                        .attr_be32(2, u32::from(NFPROTO_IPV4))
                        .attr_be32(3, *addr)
                        .attr_be32(5, *port),
                    Expr::Masquerade => d,
                };
                d.end()
            }
        };
        m.end()
    }
}

/// An interface name as nftables compares it: 16 bytes, NUL padded.
fn ifname(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.resize(libc::IFNAMSIZ, 0);
    v
}

fn netmask(prefix: u8) -> [u8; 4] {
    let bits: u32 = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    bits.to_be_bytes()
}

/// What the tables express.
#[derive(Debug, Clone)]
pub struct NatConfig {
    pub bridge: String,
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    /// Each mapping with the container address it goes to.
    pub ports: Vec<(PortMapping, Ipv4Addr)>,
    /// Each container on the bridge.
    pub members: Vec<Member>,
}

/// A container on the bridge: its port (the host end of its veth pair), the address and MAC
/// address of its `eth0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub port: String,
    pub address: Ipv4Addr,
    pub mac: [u8; 6],
}

const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
/// Payload bases: the link-layer, network and transport headers.
const LL: u32 = 0;
const NH: u32 = 1;
const TH: u32 = 2;

/// `REG1 == value` (`op` CMP_EQ) or `!=` (CMP_NEQ).
fn cmp(op: u32, value: &[u8]) -> Expr {
    Expr::Cmp {
        sreg: REG1,
        op,
        data: value.to_vec(),
    }
}

/// The `value.len()` bytes at `offset` of header `base` compared with `value`.
fn payload(base: u32, offset: u32, op: u32, value: &[u8]) -> [Expr; 2] {
    [
        Expr::Payload {
            base,
            offset,
            len: value.len() as u32,
            dreg: REG1,
        },
        cmp(op, value),
    ]
}

/// The IPv4 address at `offset` of the network header, in (`op` CMP_EQ) or out of (CMP_NEQ)
/// `net`/`prefix`.
fn address_in(offset: u32, net: Ipv4Addr, prefix: u8, op: u32) -> [Expr; 3] {
    [
        Expr::Payload {
            base: NH,
            offset,
            len: 4,
            dreg: REG1,
        },
        Expr::Mask {
            reg: REG1,
            mask: netmask(prefix).to_vec(),
        },
        cmp(op, &net.octets()),
    ]
}

/// The input (`key` META_IIFNAME) or output (META_OIFNAME) interface compared with `name`.
fn interface(key: u32, op: u32, name: &str) -> [Expr; 2] {
    [Expr::Meta { key, dreg: REG1 }, cmp(op, &ifname(name))]
}

/// One rule from its parts, in order.
fn rule(parts: &[&[Expr]]) -> Vec<Expr> {
    parts.iter().flat_map(|p| p.iter().cloned()).collect()
}

/// The rules that hold container `m` to its own addresses, all for frames entering the bridge
/// from its port: a forged source MAC would teach the bridge to send a neighbour's frames to
/// it, a forged ARP sender would take a neighbour's (or the gateway's) address in the host's
/// and the neighbours' ARP caches, a forged IPv4 source would impersonate a neighbour. Other
/// protocols (IPv6 with its router advertisements, say) have no use on an IPv4 bridge.
fn port_guard(m: &Member) -> Vec<Vec<Expr>> {
    let port = interface(META_IIFNAME, CMP_EQ, &m.port);
    let ip = m.address.octets();
    let is_ip = payload(LL, 12, CMP_EQ, &ETH_P_IP);
    let is_arp = payload(LL, 12, CMP_EQ, &ETH_P_ARP);
    let drop = [Expr::Drop];
    vec![
        rule(&[&port, &payload(LL, 6, CMP_NEQ, &m.mac), &drop]),
        rule(&[&port, &is_ip, &payload(NH, 12, CMP_NEQ, &ip), &drop]),
        // ARP: the sender's MAC at 8, its IPv4 address at 14.
        rule(&[&port, &is_arp, &payload(NH, 8, CMP_NEQ, &m.mac), &drop]),
        rule(&[&port, &is_arp, &payload(NH, 14, CMP_NEQ, &ip), &drop]),
        rule(&[
            &port,
            &payload(LL, 12, CMP_NEQ, &ETH_P_IP),
            &payload(LL, 12, CMP_NEQ, &ETH_P_ARP),
            &drop,
        ]),
    ]
}

/// Port mapping rule: to a local address, this protocol and port → container address:port.
fn dnat_rule(p: &PortMapping, to: Ipv4Addr) -> Vec<Expr> {
    let proto = match p.protocol {
        Protocol::Tcp => libc::IPPROTO_TCP as u8,
        Protocol::Udp => libc::IPPROTO_UDP as u8,
    };
    rule(&[
        &[
            Expr::FibDaddrType { dreg: REG1 },
            cmp(CMP_EQ, &RTN_LOCAL.to_ne_bytes()),
            Expr::Meta {
                key: META_L4PROTO,
                dreg: REG1,
            },
            cmp(CMP_EQ, &[proto]),
        ],
        &payload(TH, 2, CMP_EQ, &p.host_port.to_be_bytes()),
        &[
            Expr::Immediate {
                dreg: REG1,
                data: to.octets().to_vec(),
            },
            Expr::Immediate {
                dreg: REG2,
                data: p.container_port.to_be_bytes().to_vec(),
            },
            Expr::Dnat {
                addr: REG1,
                port: REG2,
            },
        ],
    ])
}

/// `ip saddr NET/PREFIX oifname [!=|==] BRIDGE masquerade`.
fn masquerade(net: Ipv4Addr, prefix: u8, bridge: &str, oif_op: u32) -> Vec<Expr> {
    rule(&[
        &address_in(12, net, prefix, CMP_EQ),
        &interface(META_OIFNAME, oif_op, bridge),
        &[Expr::Masquerade],
    ])
}

/// `ct status dnat ip saddr NET/PREFIX oifname BRIDGE masquerade`: a container's connection
/// to a mapped port of the host's addresses that the mapping sends back onto the bridge (to a
/// neighbour, or to the container itself). Without it the answer would go from container to
/// container directly, untranslated, and the connection would hang; masqueraded to the
/// bridge's address, it comes back through the host.
fn hairpin(net: Ipv4Addr, prefix: u8, bridge: &str) -> Vec<Expr> {
    rule(&[
        &[
            Expr::Ct {
                key: CT_STATUS,
                dreg: REG1,
            },
            Expr::Mask {
                reg: REG1,
                mask: CT_STATUS_DNAT.to_ne_bytes().to_vec(),
            },
            cmp(CMP_NEQ, &0u32.to_ne_bytes()),
        ],
        &address_in(12, net, prefix, CMP_EQ),
        &interface(META_OIFNAME, CMP_EQ, bridge),
        &[Expr::Masquerade],
    ])
}

/// `iifname BRIDGE ip daddr 127.0.0.0/8 ct state != { established, related } drop`.
///
/// The bridge has `route_localnet` on, so that the host's own connections to 127.0.0.1:PORT
/// can be sent on to a container and answered. It would also let a container reach whatever
/// listens on the host's loopback addresses (a packet to 127.0.0.1 sent to the bridge's MAC
/// is taken as local): only the answers of connections the host made pass.
fn loopback_guard(bridge: &str) -> Vec<Expr> {
    rule(&[
        &interface(META_IIFNAME, CMP_EQ, bridge),
        &address_in(16, Ipv4Addr::new(127, 0, 0, 0), 8, CMP_EQ),
        &[
            Expr::Ct {
                key: CT_STATE,
                dreg: REG1,
            },
            Expr::Mask {
                reg: REG1,
                mask: (CT_STATE_ESTABLISHED | CT_STATE_RELATED)
                    .to_ne_bytes()
                    .to_vec(),
            },
            cmp(CMP_EQ, &0u32.to_ne_bytes()),
            Expr::Drop,
        ],
    ])
}

/// A base chain of the table: name, type, hook, priority, rules.
pub struct Chain {
    pub name: &'static str,
    pub kind: &'static str,
    pub hook: u32,
    pub priority: i32,
    pub rules: Vec<Vec<Expr>>,
}

/// The `bridge berth` table's one chain.
pub fn bridge_chains(c: &NatConfig) -> Vec<Chain> {
    vec![Chain {
        name: "ports",
        kind: "filter",
        hook: NF_BR_PRE_ROUTING,
        priority: -200,
        rules: c.members.iter().flat_map(port_guard).collect(),
    }]
}

/// The `ip berth` table's chains and their rules.
pub fn chains(c: &NatConfig) -> Vec<Chain> {
    let dnat: Vec<Vec<Expr>> = c.ports.iter().map(|(p, ip)| dnat_rule(p, *ip)).collect();
    let outbound = masquerade(c.subnet, c.prefix, &c.bridge, CMP_NEQ);
    // Connections from the host's loopback address to a mapped port: the container must
    // answer an address it can route back to.
    let from_loopback = masquerade(Ipv4Addr::new(127, 0, 0, 0), 8, &c.bridge, CMP_EQ);
    let nat = |name, hook, priority, rules| Chain {
        name,
        kind: "nat",
        hook,
        priority,
        rules,
    };
    vec![
        nat("prerouting", NF_INET_PRE_ROUTING, -100, dnat.clone()),
        nat("output", NF_INET_LOCAL_OUT, -100, dnat),
        nat(
            "postrouting",
            NF_INET_POST_ROUTING,
            100,
            vec![
                outbound,
                from_loopback,
                hairpin(c.subnet, c.prefix, &c.bridge),
            ],
        ),
        Chain {
            name: "guard",
            kind: "filter",
            hook: NF_INET_PRE_ROUTING,
            priority: PRIORITY_GUARD,
            rules: vec![loopback_guard(&c.bridge)],
        },
    ]
}

fn nfgen(family: u8, res_id: u16) -> [u8; 4] {
    let r = res_id.to_be_bytes();
    [family, 0, r[0], r[1]]
}

fn nft(family: u8, cmd: u16, flags: u16) -> Message {
    Message::new((NFNL_SUBSYS_NFTABLES << 8) | cmd, NLM_F_REQUEST | flags).raw(&nfgen(family, 0))
}

/// The batch that replaces both tables: each added (so that delete cannot fail), deleted,
/// recreated.
pub fn batch(c: &NatConfig, mut seq: u32) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut push = |m: Message, out: &mut Vec<Vec<u8>>| {
        seq += 1;
        out.push(m.finish(seq));
    };
    push(
        Message::new(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST).raw(&nfgen(0, NFNL_SUBSYS_NFTABLES)),
        &mut out,
    );
    for (family, chains) in [
        (NFPROTO_IPV4, chains(c)),
        (NFPROTO_BRIDGE, bridge_chains(c)),
    ] {
        table(family, chains, &mut |m| push(m, &mut out));
    }
    push(
        Message::new(NFNL_MSG_BATCH_END, NLM_F_REQUEST).raw(&nfgen(0, NFNL_SUBSYS_NFTABLES)),
        &mut out,
    );
    out
}

/// The messages that replace table `berth` of `family` with `chains`.
fn table(family: u8, chains: Vec<Chain>, push: &mut dyn FnMut(Message)) {
    let nft = |cmd, flags| nft(family, cmd, flags);
    push(nft(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_ACK).attr_str(NFTA_TABLE_NAME, TABLE));
    push(nft(NFT_MSG_DELTABLE, NLM_F_ACK).attr_str(NFTA_TABLE_NAME, TABLE));
    push(nft(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_ACK).attr_str(NFTA_TABLE_NAME, TABLE));
    for chain in chains {
        let m = nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_ACK)
            .attr_str(NFTA_CHAIN_TABLE, TABLE)
            .attr_str(NFTA_CHAIN_NAME, chain.name)
            .begin(NFTA_CHAIN_HOOK)
            .attr_be32(NFTA_HOOK_HOOKNUM, chain.hook)
            .attr_be32(NFTA_HOOK_PRIORITY, chain.priority as u32)
            .end()
            .attr_be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
            .attr_str(NFTA_CHAIN_TYPE, chain.kind);
        push(m);
        for rule in chain.rules {
            let mut m = nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK)
                .attr_str(NFTA_RULE_TABLE, TABLE)
                .attr_str(NFTA_RULE_CHAIN, chain.name)
                .begin(NFTA_RULE_EXPRESSIONS);
            for e in &rule {
                m = e.encode(m);
            }
            push(m.end());
        }
    }
}

/// Replaces both tables in the calling thread's network namespace.
pub fn apply(c: &NatConfig) -> io::Result<()> {
    let sock = Socket::open(libc::NETLINK_NETFILTER)?;
    sock.transact(&batch(c, 0))
}

#[cfg(test)]
mod tests {
    use super::super::netlink::header;
    use super::*;

    #[test]
    fn batch_is_framed_and_replaces_both_tables() {
        let c = NatConfig {
            bridge: "berth0".into(),
            subnet: Ipv4Addr::new(10, 89, 0, 0),
            prefix: 24,
            ports: vec![(
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                },
                Ipv4Addr::new(10, 89, 0, 2),
            )],
            members: vec![Member {
                port: "vb1234".into(),
                address: Ipv4Addr::new(10, 89, 0, 2),
                mac: [2, 0x42, 10, 89, 0, 2],
            }],
        };
        let b = batch(&c, 0);
        let types: Vec<u16> = b.iter().map(|m| header(m).1).collect();
        let t = |cmd: u16| (NFNL_SUBSYS_NFTABLES << 8) | cmd;
        assert_eq!(
            types[..4],
            [
                NFNL_MSG_BATCH_BEGIN,
                t(NFT_MSG_NEWTABLE),
                t(NFT_MSG_DELTABLE),
                t(NFT_MSG_NEWTABLE)
            ]
        );
        assert_eq!(*types.last().unwrap(), NFNL_MSG_BATCH_END);
        let family = |m: &Vec<u8>| m[super::super::netlink::NLMSG_HDRLEN];
        let tables: Vec<u8> = b
            .iter()
            .filter(|m| header(m).1 == t(NFT_MSG_DELTABLE))
            .map(family)
            .collect();
        assert_eq!(tables, [NFPROTO_IPV4, NFPROTO_BRIDGE]);
        // ip: 4 chains, 1 rule in each DNAT chain, 3 in postrouting, 1 in the guard; bridge:
        // 1 chain, 5 rules per member.
        let count = |cmd: u16, fam: u8| {
            b.iter()
                .filter(|m| header(m).1 == t(cmd) && family(m) == fam)
                .count()
        };
        assert_eq!(count(NFT_MSG_NEWCHAIN, NFPROTO_IPV4), 4);
        assert_eq!(count(NFT_MSG_NEWRULE, NFPROTO_IPV4), 6);
        assert_eq!(count(NFT_MSG_NEWCHAIN, NFPROTO_BRIDGE), 1);
        assert_eq!(count(NFT_MSG_NEWRULE, NFPROTO_BRIDGE), 5);
        let seqs: Vec<u32> = b.iter().map(|m| header(m).3).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(netmask(24), [255, 255, 255, 0]);
        assert_eq!(netmask(8), [255, 0, 0, 0]);
    }
}
