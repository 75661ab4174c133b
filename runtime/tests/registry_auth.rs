//! Registry authentication against a real registry behind a small front on loopback that
//! demands a bearer token (issued by a token server the test runs) or basic credentials.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Mutex};

use berth_store::pull::{self, PullOptions};
use berth_store::registry::config::Credentials;
use berth_store::registry::{self, Client, Reference, RegistriesConfig};
use berth_store::{Error, Image, Result, Store};
use support::http::{forward, Request, Response, Server};
use support::{push, ImageBuilder, Registry, TempDir};

const TOKEN: &str = "berth-test-token-6f1c";
const SERVICE: &str = "berth test registry";

/// A real registry with a small busybox image at `auth/app:1`.
fn registry_with_image(work: &TempDir) -> Registry {
    let reg = Registry::start();
    let layout = work.join("layout");
    let b = ImageBuilder::new(&layout, "a");
    b.add_busybox();
    b.write("secret.txt", "only with a token\n");
    b.repack();
    push(&layout, "a", &reg.addr, "auth/app:1", &[]);
    reg
}

fn creds(user: &str, pass: &str) -> Credentials {
    Credentials {
        username: user.into(),
        password: pass.into(),
    }
}

fn pull_from(store: &Store, host: &str, auth: Option<Credentials>) -> Result<Image> {
    let mut config = RegistriesConfig {
        insecure: vec![host.to_string()],
        ..Default::default()
    };
    if let Some(c) = auth {
        config.auth.insert(host.to_string(), c);
    }
    pull::pull(
        store,
        &Client::new(config),
        &Reference::parse(&format!("{host}/auth/app:1")).unwrap(),
        &PullOptions::default(),
        &|_: &str| {},
    )
}

/// A token server: records requests; with `require` it wants that basic header.
fn token_server(seen: Arc<Mutex<Vec<Request>>>, require: Option<String>) -> Server {
    Server::start(move |r| {
        seen.lock().unwrap().push(r.clone());
        if !r.path.starts_with("/token?") {
            return Response::new(404, "");
        }
        if let Some(want) = &require {
            if r.header("Authorization") != Some(want.as_str()) {
                return Response::new(401, r#"{"details":"bad credentials"}"#);
            }
        }
        Response::new(200, format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#))
    })
}

/// The front: forwards to the registry only with the right bearer token.
fn bearer_front(upstream: String, realm: String, seen: Arc<Mutex<Vec<Request>>>) -> Server {
    Server::start(move |r| {
        seen.lock().unwrap().push(r.clone());
        if r.header("Authorization") == Some(&format!("Bearer {TOKEN}")) {
            return forward(&upstream, r);
        }
        Response::new(
            401,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        )
        .header(
            "WWW-Authenticate",
            &format!(
                r#"Bearer realm="{realm}",service="{SERVICE}",scope="repository:auth/app:pull""#
            ),
        )
    })
}

#[test]
fn anonymous_bearer_token_flow() {
    let work = TempDir::new("auth-bearer");
    let reg = registry_with_image(&work);
    let token_log = Arc::new(Mutex::new(Vec::new()));
    let tokens = token_server(token_log.clone(), None);
    let front_log = Arc::new(Mutex::new(Vec::new()));
    let front = bearer_front(
        reg.addr.clone(),
        format!("http://{}/token", tokens.host()),
        front_log.clone(),
    );

    let store = Store::open(work.join("images")).unwrap();
    let image = pull_from(&store, &front.host(), None).unwrap();
    assert_eq!(
        std::fs::read_to_string(image.layers.last().unwrap().join("secret.txt")).unwrap(),
        "only with a token\n"
    );
    let token_requests = token_log.lock().unwrap().clone();
    assert_eq!(
        token_requests.len(),
        1,
        "token fetched once and reused: {token_requests:?}"
    );
    let path = &token_requests[0].path;
    assert!(path.contains("service=berth%20test%20registry"), "{path}");
    assert!(path.contains("scope=repository:auth/app:pull"), "{path}");
    assert_eq!(token_requests[0].header("Authorization"), None, "anonymous");
    let front_requests = front_log.lock().unwrap().clone();
    assert_eq!(front_requests[0].header("Authorization"), None);
    assert!(front_requests[1..]
        .iter()
        .all(|r| r.header("Authorization") == Some(&format!("Bearer {TOKEN}"))));
}

#[test]
fn bearer_token_with_credentials_from_machine_config() {
    let work = TempDir::new("auth-bearer-creds");
    let reg = registry_with_image(&work);
    let token_log = Arc::new(Mutex::new(Vec::new()));
    // base64("berth:hunter2")
    let tokens = token_server(token_log.clone(), Some("Basic YmVydGg6aHVudGVyMg==".into()));
    let front = bearer_front(
        reg.addr.clone(),
        format!("http://{}/token", tokens.host()),
        Arc::default(),
    );
    let store = Store::open(work.join("images")).unwrap();

    let err = pull_from(&store, &front.host(), None).unwrap_err();
    assert!(
        matches!(err, Error::Registry(registry::Error::Token { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("HTTP 401"), "{err}");
    let err = pull_from(&store, &front.host(), Some(creds("berth", "wrong"))).unwrap_err();
    assert!(
        matches!(err, Error::Registry(registry::Error::Token { .. })),
        "{err:?}"
    );
    assert!(store.list().unwrap().is_empty());

    pull_from(&store, &front.host(), Some(creds("berth", "hunter2"))).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn basic_auth_registry() {
    let work = TempDir::new("auth-basic");
    let reg = registry_with_image(&work);
    let upstream = reg.addr.clone();
    let front = Server::start(move |r| {
        // base64("admin:s3cret")
        if r.header("Authorization") == Some("Basic YWRtaW46czNjcmV0") {
            return forward(&upstream, r);
        }
        Response::new(401, "").header("WWW-Authenticate", r#"Basic realm="Berth Test""#)
    });
    let store = Store::open(work.join("images")).unwrap();

    let err = pull_from(&store, &front.host(), None).unwrap_err();
    assert!(
        matches!(err, Error::Registry(registry::Error::Unauthorized { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("[registries.auth]"), "{err}");
    let err = pull_from(&store, &front.host(), Some(creds("admin", "nope"))).unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(store.list().unwrap().is_empty());

    pull_from(&store, &front.host(), Some(creds("admin", "s3cret"))).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
}
