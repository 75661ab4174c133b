//! Links berth-init with the code of its boot path first, in the order it first runs, when
//! `BERTH_BOOT_ORDER` names a symbol list (scripts/build.sh passes `init/boot.order`, which
//! bench/boot-order.sh writes from a traced boot). Boot runs about a fifth of the executable's
//! code, spread over all of it: every 4 KiB page that holds one function of it is read and
//! verified through dm-verity, and faulted in. Packed together, that code is a few hundred
//! contiguous pages that read-ahead fetches in sequence. Symbols the list names that the
//! build does not have are skipped; without a list (other linkers, other builds) the layout
//! is the compiler's. `BERTH_LINK_MAP` asks the linker for a map of the layout, with the
//! symbols' raw (mangled) names.

fn main() {
    unit_schema();
    println!("cargo:rerun-if-env-changed=BERTH_BOOT_ORDER");
    println!("cargo:rerun-if-env-changed=BERTH_LINK_MAP");
    if let Some(list) = std::env::var_os("BERTH_BOOT_ORDER") {
        let list = std::path::PathBuf::from(list);
        println!("cargo:rerun-if-changed={}", list.display());
        println!(
            "cargo:rustc-link-arg-bin=berth-init=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bin=berth-init=-Wl,--no-warn-symbol-ordering");
    }
    if let Some(map) = std::env::var_os("BERTH_LINK_MAP") {
        let map = std::path::PathBuf::from(map);
        println!(
            "cargo:rustc-link-arg-bin=berth-init=-Wl,-Map={}",
            map.display()
        );
        // Symbol names as the ordering list needs them (the map demangles by default).
        println!("cargo:rustc-link-arg-bin=berth-init=-Wl,--no-demangle");
    }
}

/// `BERTH_UNIT_SCHEMA`: a hash of the code that turns a unit file into a unit (src/unit/,
/// src/tomlfile.rs) and of the dependencies' versions (Cargo.lock). The unit cache
/// (src/unit/cache.rs) keeps units only for the build whose schema wrote it.
fn unit_schema() {
    use std::hash::{Hash, Hasher};
    let mut files = vec![
        std::path::PathBuf::from("src/tomlfile.rs"),
        std::path::PathBuf::from("../Cargo.lock"),
    ];
    println!("cargo:rerun-if-changed=src/unit");
    if let Ok(entries) = std::fs::read_dir("src/unit") {
        files.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
    }
    files.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        file.hash(&mut hasher);
        std::fs::read(file).unwrap_or_default().hash(&mut hasher);
    }
    println!("cargo:rustc-env=BERTH_UNIT_SCHEMA={:016x}", hasher.finish());
}
