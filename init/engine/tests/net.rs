//! Bridge, veth, address, port mapping and NAT, inside a network namespace the test creates
//! for one thread (its private "host"); the container gets its own as usual. No traffic
//! leaves these namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The runtime's host test fixtures, shared: these tests run its binary.
#[path = "../../../runtime/tests/common/mod.rs"]
mod common;
use berth_engine::net::{host_ifname, link, BridgeNetwork, PortMapping};
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
        let host = host_ifname(&bundle_id);
        let host = output("ip", &["-o", "link", "show", "dev", &host]);
        assert!(
            host.contains("master berth0") && host.contains(",UP,LOWER_UP"),
            "{host}"
        );
        let net_arg = format!("--net={}", netns.display());
        let eth0 = output(
            "nsenter",
            &[&net_arg, "ip", "-o", "link", "show", "dev", "eth0"],
        );
        assert!(eth0.contains(",UP,LOWER_UP"), "{eth0}");
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
        assert!(!rules.contains("dnat"), "{rules}");
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
