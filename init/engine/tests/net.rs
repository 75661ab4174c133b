//! Bridge, veth, address, port mapping and NAT, inside a network namespace the test creates
//! for one thread (its private "host"); the container gets its own as usual. No traffic
//! leaves these namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The runtime's host test fixtures, shared: these tests run its binary.
#[path = "../../../runtime/tests/common/mod.rs"]
mod common;
use berth_engine::net::{container_mac, host_ifname, link, BridgeNetwork, PortMapping};
use common::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

fn http_get(addr: SocketAddr) -> String {
    for _ in 0..200 {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if !out.is_empty() {
                return out;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no answer from {addr}");
}

fn nft_list() -> String {
    let o = std::process::Command::new("nft")
        .args(["list", "table", "ip", "berth"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn bridge_port_mapping_and_nat_in_a_private_namespace() {
    let mut f = Fixture::new();
    std::fs::create_dir_all(f.rootfs().join("www")).unwrap();
    std::fs::write(f.rootfs().join("www/index.html"), "berth-net-ok\n").unwrap();
    std::os::unix::fs::symlink("busybox", f.rootfs().join("bin/httpd")).unwrap();
    f.args(&["httpd", "-f", "-p", "80", "-h", "/www"]);
    let id = unique("net");
    f.create(&id);
    let pid = f.state(&id)["pid"].as_i64().unwrap();
    let netns = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
    let state_dir = f.dir.join("network");
    let (root, bundle_id) = (f.root.clone(), id.clone());

    let result = std::thread::spawn(move || {
        // This thread alone moves to a new network namespace.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut rt = link::Rtnl::open().unwrap();
        rt.run(link::set_up(link::index("lo").unwrap())).unwrap();
        // An uplink with a default route, and no reverse path filter of the kernel's: what
        // the bridge's own guard must hold without.
        for conf in ["all", "default"] {
            std::fs::write(format!("/proc/sys/net/ipv4/conf/{conf}/rp_filter"), "0").unwrap();
        }
        // Berth's kernel has no bridge netfilter; where the host's has, bridged frames would
        // pass the IP hooks too, which Berth's rules must not count on.
        let bridge_nf = "/proc/sys/net/bridge/bridge-nf-call-iptables";
        if std::path::Path::new(bridge_nf).exists() {
            std::fs::write(bridge_nf, "0").unwrap();
        }
        for args in [
            &["link", "add", "up0", "type", "veth", "peer", "name", "up1"][..],
            &["addr", "add", "192.0.2.254/24", "dev", "up0"],
            &["link", "set", "up0", "up"],
            &["link", "set", "up1", "up"],
            &["route", "add", "default", "via", "192.0.2.1", "dev", "up0"],
        ] {
            let o = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        let net = BridgeNetwork::new(&state_dir);
        let ports: Vec<PortMapping> = vec!["18080:80/tcp".parse().unwrap()];
        let a = net.attach(&bundle_id, &netns, &ports).unwrap();
        assert_eq!(a.address, Ipv4Addr::new(10, 89, 0, 2));
        assert_eq!(a.gateway, Ipv4Addr::new(10, 89, 0, 1));
        // One request made the host end a port of the bridge and brought both ends up.
        let output = |program: &str, args: &[&str]| {
            let o = std::process::Command::new(program)
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let net_arg = format!("--net={}", netns.display());
        let host = host_ifname(&bundle_id);
        let host = output("ip", &["-o", "link", "show", "dev", &host]);
        assert!(
            host.contains("master berth0") && host.contains(",UP,LOWER_UP"),
            "{host}"
        );
        let eth0 = output(
            "nsenter",
            &[&net_arg, "ip", "-o", "link", "show", "dev", "eth0"],
        );
        assert!(eth0.contains(",UP,LOWER_UP"), "{eth0}");
        // IPv6 is off on every link of the (IPv4) bridge network, loopback in the container
        // aside; a router advertisement a container forges reaches no IPv6 stack.
        let sysctl = |ifname: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"))
                .unwrap()
        };
        assert_eq!(sysctl("berth0"), "1\n");
        assert_eq!(sysctl(&host_ifname(&bundle_id)), "1\n");
        let in_container = |path: &str| output("nsenter", &[&net_arg, "cat", path]);
        assert_eq!(
            in_container("/proc/sys/net/ipv6/conf/eth0/disable_ipv6"),
            "1\n"
        );
        assert_eq!(
            in_container("/proc/sys/net/ipv6/conf/lo/disable_ipv6"),
            "0\n"
        );
        let forger = Forger::new(&netns, a.gateway);
        // What reaches the bridge itself: the port guard lets no IPv6 frame on the bridge.
        let tap = PacketTap::on("berth0", libc::ETH_P_IPV6);
        let all_nodes = [0x33, 0x33, 0, 0, 0, 1];
        forger.send(to(libc::ETH_P_IPV6, all_nodes, router_advertisement()));
        let routes = output("ip", &["-6", "route", "show", "table", "all"]);
        assert!(!routes.contains("berth0"), "{routes}");
        assert_eq!(tap.frames(), 0, "an IPv6 frame crossed the bridge");
        // Nor does a datagram to 127.0.0.1 sent to the bridge (route_localnet is on there for
        // the host's own connections to mapped ports).
        let loopback = silent_socket(([127, 0, 0, 1], 0).into());
        let bridge_link = output("ip", &["-o", "link", "show", "dev", "berth0"]);
        let mac: Vec<u8> = bridge_link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap()
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        let mac: [u8; 6] = mac.try_into().unwrap();
        let packet = datagram(a.address, loopback.local_addr().unwrap());
        forger.send(to(libc::ETH_P_IP, mac, packet));
        assert_silent(&loopback, "a container reached 127.0.0.1");
        // Nor does one with a source address outside the bridge's subnet (it would have been
        // forwarded to the uplink unchanged, or answered to whoever has that address).
        let sink = silent_socket((a.gateway, 0).into());
        let sink_addr = sink.local_addr().unwrap();
        let packet = datagram(Ipv4Addr::new(198, 51, 100, 7), sink_addr);
        forger.send(to(libc::ETH_P_IP, mac, packet));
        assert_silent(&sink, "a forged source address passed");
        // The bridge's port guard: nor can it take a neighbour's address or MAC address.
        let neighbour = Ipv4Addr::new(10, 89, 0, 3);
        forger.send(to(libc::ETH_P_IP, mac, datagram(neighbour, sink_addr)));
        assert_silent(&sink, "a neighbour's address passed");
        let own_mac = container_mac(a.address);
        let request = arp_request(own_mac, neighbour, a.gateway);
        forger.send(to(libc::ETH_P_ARP, [0xff; 6], request));
        let learned = output("ip", &["neigh", "show", &neighbour.to_string()]);
        assert!(
            learned.trim().is_empty(),
            "ARP for a neighbour's address: {learned}"
        );
        let stranger = [0x02, 0, 0, 0, 0, 0x99];
        let mut frame = mac.to_vec();
        frame.extend_from_slice(&stranger);
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&datagram(a.address, sink_addr));
        forger.send(Frame::Raw(frame));
        let fdb = output("bridge", &["fdb", "show", "br", "berth0"]);
        assert!(
            !fdb.contains("02:00:00:00:00:99"),
            "a forged MAC address: {fdb}"
        );
        assert_silent(&sink, "a forged MAC address passed");
        // Nor tell the host its own address is at another MAC address.
        let request = arp_request(stranger, a.address, a.gateway);
        forger.send(to(libc::ETH_P_ARP, [0xff; 6], request));
        let learned = output("ip", &["neigh", "show", &a.address.to_string()]);
        assert!(
            !learned.contains("02:00:00:00:00:99"),
            "ARP with a forged MAC: {learned}"
        );
        // The allocation is on disk.
        let saved = std::fs::read_to_string(state_dir.join("allocations.json")).unwrap();
        assert!(
            saved.contains("10.89.0.2") && saved.contains("18080"),
            "{saved}"
        );
        // Start the container only now, as the supervisor does.
        let o = std::process::Command::new(BIN)
            .args(["--root", root.to_str().unwrap(), "start", &bundle_id])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

        let direct = http_get(SocketAddr::from((a.address, 80)));
        assert!(direct.contains("berth-net-ok"), "{direct}");
        let mapped = http_get(SocketAddr::from(([127, 0, 0, 1], 18080)));
        assert!(mapped.contains("berth-net-ok"), "{mapped}");
        // From a container through the host's addresses, as `host:published port` is used:
        // the mapping sends the connection back onto the bridge (here to the container
        // itself), and it is answered through the host.
        for host_addr in ["10.89.0.1", "192.0.2.254"] {
            let url = format!("http://{host_addr}:18080/");
            let args = [&net_arg, "curl", "-sS", "--max-time", "5", &url];
            let got = output("nsenter", &args);
            assert!(got.contains("berth-net-ok"), "{host_addr}: {got}");
        }
        let rules = nft_list();
        assert!(rules.contains("dnat to 10.89.0.2:80"), "{rules}");
        assert!(
            rules.contains("ip saddr 10.89.0.0/24 oifname != \"berth0\" masquerade"),
            "{rules}"
        );

        // A second attach of another container cannot take the same host port.
        let clash = net.attach("other", &netns, &ports).unwrap_err().to_string();
        assert!(
            clash.contains("18080") && clash.contains(&bundle_id),
            "{clash}"
        );

        net.detach(&bundle_id).unwrap();
        assert!(
            link::index(&host_ifname(&bundle_id)).is_err(),
            "veth removed"
        );
        let rules = nft_list();
        assert!(!rules.contains("dnat to"), "{rules}");
        assert!(!std::fs::read_to_string(state_dir.join("allocations.json"))
            .unwrap()
            .contains("10.89.0.2"));
        net.detach(&bundle_id).unwrap();
    })
    .join();
    let _ = f.cli(&["delete", "--force", &id]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|p| u32::from(u16::from_be_bytes([p[0], *p.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The router advertisement a hostile container with CAP_NET_RAW could send to all nodes:
/// "I am your default router" (lifetime 1800 s, high preference), from a link-local address.
/// A link with IPv6 on and forwarding off would install a default route through it.
fn router_advertisement() -> Vec<u8> {
    let src: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xba, 0xd0];
    let dst: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    // ICMPv6 type 134: hop limit 64, high router preference, lifetime 1800 s.
    let mut ra = vec![134u8, 0, 0, 0, 64, 0x08, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(ra.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&ra);
    let sum = checksum(&pseudo);
    ra[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&(ra.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[58, 255]);
    packet.extend_from_slice(&src);
    packet.extend_from_slice(&dst);
    packet.extend_from_slice(&ra);
    packet
}

/// A UDP datagram (IPv4 header and all) from `src` to `to`.
fn datagram(src: Ipv4Addr, to: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(to) = to else {
        panic!("{to}: IPv4 only")
    };
    let payload = b"from a container";
    let udp_len = 8 + payload.len() as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&to.ip().octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&40000u16.to_be_bytes());
    ip.extend_from_slice(&to.port().to_be_bytes());
    ip.extend_from_slice(&udp_len.to_be_bytes());
    ip.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    ip.extend_from_slice(payload);
    ip
}

/// What a container sends with a packet socket.
enum Frame {
    /// `packet` of EtherType `proto` to `mac`, from eth0's own MAC address.
    To {
        proto: i32,
        mac: [u8; 6],
        packet: Vec<u8>,
    },
    /// A whole Ethernet frame, its source MAC address included.
    Raw(Vec<u8>),
}

/// A packet socket of `kind` for EtherType `proto` in the calling thread's network
/// namespace, and its address on interface `index`.
fn packet_socket(kind: i32, proto: i32, index: i32) -> (std::os::fd::OwnedFd, libc::sockaddr_ll) {
    use std::os::fd::FromRawFd;
    let proto = (proto as u16).to_be();
    let fd = unsafe { libc::socket(libc::AF_PACKET, kind, i32::from(proto)) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    let mut at: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    at.sll_family = libc::AF_PACKET as u16;
    at.sll_protocol = proto;
    at.sll_ifindex = index;
    (unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }, at)
}

/// A packet socket on `ifname` of the calling thread's network namespace, for EtherType
/// `proto`: what the interface received.
struct PacketTap(std::os::fd::OwnedFd);

impl PacketTap {
    fn on(ifname: &str, proto: i32) -> PacketTap {
        use std::os::fd::AsRawFd;
        let kind = libc::SOCK_DGRAM | libc::SOCK_NONBLOCK;
        let (fd, at) = packet_socket(kind, proto, link::index(ifname).unwrap());
        let size = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&at as *const libc::sockaddr_ll).cast(),
                size,
            )
        };
        assert_eq!(bound, 0, "{}", std::io::Error::last_os_error());
        PacketTap(fd)
    }

    /// Frames received so far.
    fn frames(&self) -> usize {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) } >= 0
        {
            n += 1;
        }
        n
    }
}

/// An ARP request for `target` from `sender_ip` at `sender_mac`.
fn arp_request(sender_mac: [u8; 6], sender_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    arp.extend_from_slice(&sender_mac);
    arp.extend_from_slice(&sender_ip.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target.octets());
    arp
}

/// Sends forged frames from a container and waits until the kernel has handled each: a fence
/// datagram follows each frame to a socket on the host's bridge address.
struct Forger {
    netns: std::path::PathBuf,
    fence: std::net::UdpSocket,
}

impl Forger {
    fn new(netns: &std::path::Path, gateway: Ipv4Addr) -> Forger {
        let fence = std::net::UdpSocket::bind((gateway, 0)).unwrap();
        fence
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Forger {
            netns: netns.to_path_buf(),
            fence,
        }
    }

    fn send(&self, frame: Frame) {
        send_from_container(&self.netns, frame, self.fence.local_addr().unwrap());
        let mut buf = [0u8; 16];
        assert_eq!(self.fence.recv(&mut buf).unwrap(), 5);
    }
}

/// `packet` of EtherType `proto` to `mac`.
fn to(proto: i32, mac: [u8; 6], packet: Vec<u8>) -> Frame {
    Frame::To { proto, mac, packet }
}

/// A UDP socket at `addr` that reads without waiting.
fn silent_socket(addr: SocketAddr) -> std::net::UdpSocket {
    let s = std::net::UdpSocket::bind(addr).unwrap();
    s.set_nonblocking(true).unwrap();
    s
}

/// Nothing arrived on `socket`.
fn assert_silent(socket: &std::net::UdpSocket, what: &str) {
    let mut buf = [0u8; 64];
    let got = socket.recv_from(&mut buf);
    assert!(
        got.as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "{what}: {got:?}"
    );
}

/// Sends `frame` from the container's eth0 with a packet socket, then "fence" to `fence` over
/// UDP, both from one CPU: the fence takes the frame's way through the same queues after it,
/// so once it has arrived the kernel has handled the frame.
fn send_from_container(netns: &std::path::Path, frame: Frame, fence: SocketAddr) {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::sched_getaffinity(0, size, &mut allowed) }, 0);
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| unsafe { libc::CPU_ISSET(c, &allowed) })
            .unwrap();
        let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu, &mut one) };
        assert_eq!(unsafe { libc::sched_setaffinity(0, size, &one) }, 0);
        let ns = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let index = link::index("eth0").unwrap();
        let (kind, proto, mac, packet) = match frame {
            Frame::To { proto, mac, packet } => (libc::SOCK_DGRAM, proto, mac, packet),
            Frame::Raw(packet) => (libc::SOCK_RAW, libc::ETH_P_ALL, [0; 6], packet),
        };
        let (fd, mut to) = packet_socket(kind, proto, index);
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&mac);
        let sent = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            sent,
            packet.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
        drop(fd);
        let udp = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        udp.send_to(b"fence", fence).unwrap();
    })
    .join()
    .unwrap();
}
