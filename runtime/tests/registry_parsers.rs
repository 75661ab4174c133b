//! Property tests of what a registry sends that Berth parses: manifests, indexes, token
//! answers and `WWW-Authenticate` challenges. Arbitrary bytes and structurally mutated JSON
//! never panic, and no single allocation grows beyond a small multiple of the input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use berth_store::pull::verify_manifest;
use berth_store::registry::auth::{token_from_json, token_url, Challenge};
use berth_store::registry::client::ManifestResponse;
use berth_store::spec::{Index, Manifest, Platform};
use berth_store::Digest;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Records the largest allocation of the current thread (proptest runs cases on it).
struct Largest;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        // SAFETY: same layout, same contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(new_size)));
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// Runs `f` on `input` and checks its largest allocation stayed proportionate to the input.
fn bounded(input: &[u8], f: impl FnOnce(&[u8])) {
    LARGEST.with(|l| l.set(0));
    f(input);
    let largest = LARGEST.with(Cell::get);
    // Parsers copy strings and grow vectors by doubling: a few times the input, plus slack
    // for fixed buffers (error messages, formatting).
    let bound = 16 * input.len() + (64 << 10);
    assert!(
        largest <= bound,
        "an allocation of {largest} bytes for {} bytes of input",
        input.len()
    );
}

/// Every parser a registry answer reaches.
fn parse_everything(body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    for media_type in [None, Some("application/json".to_string())] {
        let response = ManifestResponse {
            body: body.to_vec(),
            media_type,
            digest: Some(text.chars().take(80).collect()),
        };
        let _ = verify_manifest(&response, None, "fuzz");
    }
    if let Ok(index) = serde_json::from_slice::<Index>(body) {
        let _ = index.select(&Platform::host());
        let _ = index.platforms();
    }
    let _ = serde_json::from_slice::<Manifest>(body);
    let _ = token_from_json(body);
    if let Some(c) = Challenge::parse(&text) {
        let _ = token_url(&c, "repository:x:pull");
    }
    let _ = Digest::parse(&text);
}

fn digest_of(s: &str) -> String {
    Digest::of_bytes(s.as_bytes()).to_string()
}

/// Well-formed documents that mutations start from.
fn seeds() -> Vec<Value> {
    let layer = json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": digest_of("l"), "size": 10});
    vec![
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                          "digest": digest_of("c"), "size": 5},
               "layers": [layer.clone(), layer]}),
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
               "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                              "digest": digest_of("m"), "size": 7,
                              "platform": {"architecture": "amd64", "os": "linux"}},
                             {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                              "digest": digest_of("n"), "size": 7,
                              "platform": {"architecture": "arm64", "os": "linux",
                                           "variant": "v8"}}]}),
        json!({"token": "abc", "access_token": "def", "expires_in": 300}),
    ]
}

/// A JSON value of bounded size and depth.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("sha256:../../etc/passwd")),
        Just(json!(u64::MAX)),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the value at the `pick`-th node (depth first) of `doc` with `with`.
fn replace_node(doc: &mut Value, pick: &mut usize, with: &Value) -> bool {
    if *pick == 0 {
        *doc = with.clone();
        return true;
    }
    *pick -= 1;
    match doc {
        Value::Array(items) => items.iter_mut().any(|v| replace_node(v, pick, with)),
        Value::Object(map) => map.values_mut().any(|v| replace_node(v, pick, with)),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..4096)) {
        bounded(&body, parse_everything);
    }

    #[test]
    fn mutated_documents_never_panic(
        seed in 0usize..3,
        node in 0usize..40,
        with in any_json(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut doc = seeds()[seed].clone();
        let mut pick = node;
        replace_node(&mut doc, &mut pick, &with);
        let whole = serde_json::to_vec(&doc).unwrap();
        bounded(&whole, parse_everything);
        // The same document cut short, and with one byte changed.
        let short = &whole[..cut.index(whole.len() + 1)];
        bounded(short, parse_everything);
        let mut flipped = whole.clone();
        let at = flip.index(flipped.len());
        flipped[at] = byte;
        bounded(&flipped, parse_everything);
    }

    #[test]
    fn challenges_never_panic(header in "(Bearer|Basic|bearer|X-?) ?[a-z=\",\\\\ ]{0,60}.{0,20}") {
        bounded(header.as_bytes(), parse_everything);
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    bounded(deep.as_bytes(), parse_everything);
    let deep_obj = format!("{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    bounded(deep_obj.as_bytes(), parse_everything);
}
