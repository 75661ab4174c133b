//! Remote administration over mutual TLS: the API's TCP listener serves berthctl with a
//! client certificate from the configured CA, and refuses a client without a certificate,
//! one with a certificate from another CA, and plain HTTP; peers that never finish a handshake
//! lock no one out. Certificates are made with `openssl` for each run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use berth_init::api::{MAX_CONNECTIONS, MAX_REMOTE_CONNECTIONS, MAX_REMOTE_PER_PEER};
use berth_qemu_tests::pki::Pki;
use common::{temp_dir, Host};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// berth-init with `[api]` on 127.0.0.1 (port chosen by the kernel), and the PKI:
/// `ca`/`server`/`client` plus an unrelated `other-ca`/`intruder`.
fn start_remote(tag: &str) -> (Host, PathBuf, String) {
    let dir = temp_dir(tag);
    let tls = dir.join("state/tls");
    Pki::create(&tls).unwrap();
    std::fs::write(
        dir.join("state/machine.toml"),
        "[api]\nlisten = \"127.0.0.1:0\"\ncert = \"tls/server.crt\"\nkey = \"tls/server.key\"\nclient_ca = \"tls/ca.crt\"\n",
    )
    .unwrap();
    let host = Host::start_in(
        dir,
        &[(
            "echo",
            "[container]\ncommand = [\"sh\", \"-c\", \"echo remote hello; exec sleep 300\"]\n",
        )],
    );
    let addr = host.try_get("/v1/system").unwrap()["remote_api"]
        .as_str()
        .unwrap_or_else(|| panic!("no remote API:\n{}", host.log()))
        .to_string();
    (host, tls, addr)
}

fn ctl(addr: &str, tls: &Path, who: &str, args: &[&str]) -> Output {
    Command::new(common::berthctl_bin())
        .args(["--host", addr])
        .arg("--ca")
        .arg(tls.join("ca.crt"))
        .arg("--cert")
        .arg(tls.join(format!("{who}.crt")))
        .arg("--key")
        .arg(tls.join(format!("{who}.key")))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One request over TLS with the given client config; the response text, or the error.
fn tls_request(addr: &str, config: rustls::ClientConfig) -> Result<String, std::io::Error> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(b"GET /v1/system HTTP/1.1\r\nHost: t\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn client_config(tls: &Path, cert: Option<&str>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(tls.join("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match cert {
        None => builder.with_no_client_auth(),
        Some(who) => {
            let certs = CertificateDer::pem_file_iter(tls.join(format!("{who}.crt")))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key =
                rustls::pki_types::PrivateKeyDer::from_pem_file(tls.join(format!("{who}.key")))
                    .unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
    }
}

#[test]
fn berthctl_administers_over_mutual_tls() {
    let (host, tls, addr) = start_remote("remote-ok");
    let status = stdout(&ctl(&addr, &tls, "client", &["status"]));
    assert!(status.contains(&format!("remote API  {addr}")), "{status}");
    host.wait_state("echo", &["running"]);
    let units = stdout(&ctl(&addr, &tls, "client", &["--json", "units"]));
    let units: serde_json::Value = serde_json::from_str(&units).unwrap();
    assert_eq!(units[0]["name"], "echo");
    let unit = host.dir.join("remote.toml");
    std::fs::write(&unit, "[container]\ncommand = [\"sleep\", \"300\"]\n").unwrap();
    let applied = stdout(&ctl(
        &addr,
        &tls,
        "client",
        &["apply", unit.to_str().unwrap()],
    ));
    assert!(applied.contains("unit remote: created"), "{applied}");
    assert!(applied.contains("remote: running"), "{applied}");
    let logs = stdout(&ctl(
        &addr,
        &tls,
        "client",
        &["logs", "--tail", "1", "echo"],
    ));
    assert_eq!(logs, "remote hello\n");
    let metrics = stdout(&ctl(&addr, &tls, "client", &["restart", "remote"]));
    assert!(metrics.contains("remote: running (pid"), "{metrics}");
    // The same through the environment.
    let out = Command::new(common::berthctl_bin())
        .env("BERTH_HOST", &addr)
        .env("BERTH_CA", tls.join("ca.crt"))
        .env("BERTH_CERT", tls.join("client.crt"))
        .env("BERTH_KEY", tls.join("client.key"))
        .args(["show", "remote"])
        .output()
        .unwrap();
    assert!(stdout(&out).contains("state        running"));
}

#[test]
fn clients_without_a_certificate_from_the_ca_are_refused() {
    let (host, tls, addr) = start_remote("remote-refuse");
    // The good client, directly with rustls, for comparison.
    let ok = tls_request(&addr, client_config(&tls, Some("client"))).unwrap();
    assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
    // No certificate at all.
    match tls_request(&addr, client_config(&tls, None)) {
        Ok(text) => assert!(
            !text.contains("HTTP/1.1"),
            "served without a certificate: {text}"
        ),
        Err(e) => assert!(e.to_string().contains("CertificateRequired"), "{e}"),
    }
    // A certificate from another CA.
    match tls_request(&addr, client_config(&tls, Some("intruder"))) {
        Ok(text) => assert!(!text.contains("HTTP/1.1"), "served an intruder: {text}"),
        Err(e) => assert!(e.to_string().contains("UnknownCA"), "{e}"),
    }
    let intruder = ctl(&addr, &tls, "intruder", &["status"]);
    assert_eq!(intruder.status.code(), Some(1));
    let why = String::from_utf8_lossy(&intruder.stderr);
    assert!(
        why.contains("UnknownCA") || why.contains("unknown"),
        "{why}"
    );
    assert!(String::from_utf8_lossy(&intruder.stdout).is_empty());
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(&addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    plain
        .write_all(b"GET /v1/system HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1"));
    // A client that connects and never speaks does not hold anyone up.
    let _silent = TcpStream::connect(&addr).unwrap();
    let ok = tls_request(&addr, client_config(&tls, Some("client"))).unwrap();
    assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
    assert!(host.try_get("/v1/system").is_some());
    // The refusals are the server's doing: it says why.
    let log = host.log();
    assert!(log.contains("TLS handshake refused"), "{log}");
    assert!(
        log.contains("UnknownCA") || log.contains("UnknownIssuer"),
        "{log}"
    );
}

#[test]
fn a_broken_tls_configuration_leaves_the_local_api_up() {
    let dir = temp_dir("remote-broken");
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::write(
        dir.join("state/machine.toml"),
        "[api]\nlisten = \"127.0.0.1:0\"\ncert = \"missing.crt\"\nkey = \"missing.key\"\nclient_ca = \"missing-ca.crt\"\n",
    )
    .unwrap();
    let host = Host::start_in(dir, &[]);
    let sys = host.try_get("/v1/system").unwrap();
    assert!(sys["remote_api"].is_null());
    let log = host.log();
    assert!(
        log.contains("remote API unavailable: client CA") && log.contains("missing-ca.crt"),
        "{log}"
    );
}

/// A TCP connection to `to` from loopback address `from` (all of 127.0.0.0/8 is local), that
/// never says a word.
fn connect_from(from: Ipv4Addr, to: SocketAddrV4) -> TcpStream {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(from, 0)),
    )
    .unwrap();
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).unwrap();
    TcpStream::from(fd)
}

/// `per` silent connections from each of 127.0.0.`hosts`.
fn hold(to: SocketAddrV4, hosts: std::ops::Range<u8>, per: usize) -> Vec<TcpStream> {
    hosts
        .flat_map(|h| (0..per).map(move |_| connect_from(Ipv4Addr::new(127, 0, 0, h), to)))
        .collect()
}

/// What the server did with a silent connection, without waiting: `None` while it keeps it
/// open without a word, else what it sent before closing (or so far).
fn answer_now(s: &TcpStream) -> Option<Vec<u8>> {
    s.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match (&*s).read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    s.set_nonblocking(false).unwrap();
    (closed || !got.is_empty()).then_some(got)
}

/// Waits (bounded) until the server closed `s`; what it sent first.
fn answer_at_close(s: &TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let mut got = Vec::new();
    match (&*s).read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server kept a silent connection open: {e}"),
    }
    got
}

#[test]
fn peers_that_never_finish_a_handshake_lock_no_one_out() {
    let (host, tls, addr) = start_remote("remote-flood");
    let to: SocketAddrV4 = addr.parse().unwrap();
    // More silent TCP connections than the local socket serves at once, from 13 addresses
    // (none over the per-peer cap).
    let per = MAX_REMOTE_PER_PEER;
    let hosts = 2..(2 + (MAX_CONNECTIONS + 40).div_ceil(per) as u8);
    let mut attempts = 0;
    let silent = loop {
        attempts += 1;
        let silent = hold(to, hosts.clone(), per);
        // berthctl comes after all of them (the kernel hands connections over in order):
        // over the remote limit, it is told so instead of being reset.
        let over = ctl(&addr, &tls, "client", &["status"]);
        let why = String::from_utf8_lossy(&over.stderr).into_owned();
        if why.contains("too many connections") {
            assert_eq!(over.status.code(), Some(1));
            assert!(why.contains("remote connections at once"), "{why}");
            break silent;
        }
        // Only acceptable when the handshake deadline already freed places meanwhile.
        let freed = silent
            .iter()
            .filter(|s| answer_now(s).is_some_and(|a| a.is_empty()))
            .count();
        assert!(
            freed > 0 && attempts < 5,
            "berthctl over the limit: {:?} {why}\n{}",
            over.status,
            host.log()
        );
    };
    // The local administrator is served all along.
    let units = host.try_get("/v1/units").expect("the unix socket answers");
    assert_eq!(units[0]["name"], "echo");
    // Over the limit: a plain 503 at once. Within it: closed when the handshake deadline
    // passes, without a word.
    let mut refused = 0;
    let mut held = 0;
    for s in &silent {
        let answer = String::from_utf8_lossy(&answer_at_close(s)).into_owned();
        if answer.is_empty() {
            held += 1;
        } else {
            assert!(
                answer.starts_with("HTTP/1.1 503 Service Unavailable"),
                "{answer}"
            );
            assert!(answer.contains("too many connections"), "{answer}");
            refused += 1;
        }
    }
    assert!(held <= MAX_REMOTE_CONNECTIONS, "{held} held");
    assert!(
        refused >= silent.len() - MAX_REMOTE_CONNECTIONS,
        "{refused} refused"
    );
    // Everyone is gone: remote administration works again.
    assert!(stdout(&ctl(&addr, &tls, "client", &["status"])).contains("remote API"));

    // One peer gets only so many connections; others are not held up by it.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let from = Ipv4Addr::new(127, 0, 0, 200);
        let mine = hold(to, 200..201, per);
        let extra = connect_from(from, to);
        let answer = answer_at_close(&extra);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if text.starts_with("HTTP/1.1 503") {
            assert!(text.contains(&format!("from {from}")), "{text}");
            assert!(stdout(&ctl(&addr, &tls, "client", &["status"])).contains("remote API"));
            break;
        }
        let freed = mine.iter().any(|s| answer_now(s).is_some());
        assert!(freed && attempts < 5, "one connection too many: {text:?}");
    }
}

/// The kernel's timer on the TCP socket from `local` to `remote` (ports), from
/// /proc/net/tcp: 0 none, 1 retransmit, 2 keepalive, 4 zero-window probe.
fn tcp_timer(local: u16, remote: u16) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
        (port(f[1])? == local && port(f[2])? == remote)
            .then(|| u8::from_str_radix(f[5].split(':').next()?, 16).ok())
            .flatten()
    })
}

#[test]
fn remote_connections_are_probed_with_keepalive() {
    let (host, tls, addr) = start_remote("remote-keepalive");
    // A log follower over TLS: a connection that stays open and quiet.
    let tcp = TcpStream::connect(&addr).unwrap();
    let mine = tcp.local_addr().unwrap().port();
    let server = tcp.peer_addr().unwrap().port();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn =
        rustls::ClientConnection::new(Arc::new(client_config(&tls, Some("client"))), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(b"GET /v1/units/echo/logs?follow=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // The server's end of it has the keepalive timer running.
    host.wait_for("keepalive on the server's socket", || {
        tcp_timer(server, mine) == Some(2)
    });
}
