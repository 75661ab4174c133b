//! HTTPS pulls: a registry with a certificate from a test CA is trusted only through the
//! configured CA bundle; plain HTTP is used only for registries marked insecure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;

use berth_store::pull::{self, PullOptions};
use berth_store::registry::{self, Client, Reference, RegistriesConfig};
use berth_store::{Error, Image, Result, Store};
use support::{make_certs, push, ImageBuilder, Registry, TempDir};

fn pull_with(store: &Store, registry: &str, config: RegistriesConfig) -> Result<Image> {
    pull::pull(
        store,
        &Client::new(config),
        &Reference::parse(&format!("{registry}/tls/app:1")).unwrap(),
        &PullOptions::default(),
        &|_: &str| {},
    )
}

#[test]
fn https_with_a_test_ca() {
    let work = TempDir::new("tls");
    let (ca, cert, key) = make_certs(&work);
    let reg = Registry::start_with_tls(Some((&cert, &key)));
    let layout = work.join("layout");
    let b = ImageBuilder::new(&layout, "t");
    b.add_busybox();
    b.write("tls.txt", "over https\n");
    b.repack();
    push(&layout, "t", &reg.addr, "tls/app:1", &[]);
    let store = Store::open(work.join("images")).unwrap();

    // The system bundle does not know the test CA: refused.
    let err = pull_with(&store, &reg.addr, RegistriesConfig::default()).unwrap_err();
    assert!(
        matches!(err, Error::Registry(registry::Error::Transport { .. })),
        "{err:?}"
    );
    let text = format!("{err:?} {err}").to_lowercase();
    assert!(
        text.contains("issuer") || text.contains("certificate"),
        "{err}"
    );

    // A bundle that does not exist: said so.
    let missing = RegistriesConfig {
        ca_bundle: Some(work.join("nope.pem")),
        ..Default::default()
    };
    let err = pull_with(&store, &reg.addr, missing).unwrap_err();
    assert!(
        matches!(err, Error::Registry(registry::Error::CaBundle { .. })),
        "{err:?}"
    );

    // Plain HTTP to an HTTPS registry (wrongly marked insecure) fails too.
    let insecure = RegistriesConfig {
        insecure: vec![reg.addr.clone()],
        ..Default::default()
    };
    assert!(pull_with(&store, &reg.addr, insecure).is_err());
    assert!(store.list().unwrap().is_empty());

    // The test CA as bundle: trusted.
    let trusted = RegistriesConfig {
        ca_bundle: Some(ca),
        ..Default::default()
    };
    let image = pull_with(&store, &reg.addr, trusted).unwrap();
    assert_eq!(
        std::fs::read_to_string(image.layers.last().unwrap().join("tls.txt")).unwrap(),
        "over https\n"
    );
}

/// `openssl s_server -HTTP` on 127.0.0.1 with the test certificate, serving files of `root`
/// as complete HTTP answers (status line and headers included); killed when dropped.
struct StaticTls {
    child: std::process::Child,
    addr: String,
}

impl StaticTls {
    fn start(root: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> StaticTls {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-HTTP", "-accept", &addr])
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .current_dir(root)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut server = StaticTls { child, addr };
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(&server.addr).is_err() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "openssl s_server did not listen"
            );
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("openssl s_server exited: {status}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        server
    }
}

impl Drop for StaticTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_registry_cannot_send_requests_or_credentials_to_plain_http() {
    let work = TempDir::new("tls-downgrade");
    let (ca, cert, key) = make_certs(&work);
    let root = work.join("www");
    let manifests = root.join("v2/tls/app/manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let answer = |text: &str| std::fs::write(manifests.join("1"), text).unwrap();
    let store = Store::open(work.join("images")).unwrap();
    let mut config = RegistriesConfig {
        ca_bundle: Some(ca),
        ..Default::default()
    };

    // A redirect from HTTPS to plain HTTP is not followed.
    answer("HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:9/v2/x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let server = StaticTls::start(&root, &cert, &key);
    let err = pull_with(&store, &server.addr, config.clone()).unwrap_err();
    assert!(
        matches!(err, Error::Registry(registry::Error::Redirect { .. })),
        "{err:?}"
    );
    drop(server);

    // A challenge naming a plain-HTTP token realm: the credentials stay home.
    answer("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:9/token\",service=\"x\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let server = StaticTls::start(&root, &cert, &key);
    config.auth.insert(
        server.addr.clone(),
        serde_json::from_value(serde_json::json!({"username": "u", "password": "p"})).unwrap(),
    );
    let err = pull_with(&store, &server.addr, config).unwrap_err();
    assert!(
        matches!(err, Error::Registry(registry::Error::Token { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("not HTTPS"), "{err}");
    assert!(store.list().unwrap().is_empty());
}
