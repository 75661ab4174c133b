//! The image's berth-init is linked with its boot path first (init/boot.order, init/build.rs):
//! checked on the release build's linker map, which scripts/build.sh writes beside the
//! executable. A build that lost the ordering, or a list too stale to matter, fails here.

use std::collections::HashMap;
use std::path::Path;

/// A function of the map's `.text`: where it starts, and its size.
struct Placed {
    address: u64,
    size: u64,
}

/// The symbols of `.text` in an lld map ("VMA LMA size align name" lines: output sections,
/// their input sections "file:(section)", and the symbols of those, alignment 1).
fn text_symbols(map: &str) -> HashMap<String, Placed> {
    let mut out = HashMap::new();
    let mut section = "";
    for line in map.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 5 || f[4].contains(":(") {
            continue;
        }
        if f[4].starts_with('.') {
            section = f[4];
        } else if section == ".text" && f[3] == "1" {
            let hex = |s: &str| u64::from_str_radix(s, 16).ok();
            if let (Some(address), Some(size)) = (hex(f[0]), hex(f[2])) {
                out.entry(f[4].to_string())
                    .or_insert(Placed { address, size });
            }
        }
    }
    out
}

/// The list's function names, without comments.
fn listed(order: &str) -> Vec<&str> {
    order
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The release build's linker map (scripts/build.sh writes it), or `None` without a release
/// build (then the test is skipped, unless QEMU tests are required).
fn release_map() -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let map_path = root.join("target/x86_64-unknown-linux-gnu/release/berth-init.map");
    let map = std::fs::read_to_string(&map_path).ok();
    if map.is_none() {
        assert!(
            std::env::var_os("BERTH_REQUIRE_QEMU").is_none(),
            "no linker map at {} (scripts/build.sh writes it)",
            map_path.display()
        );
        eprintln!("skipped: no release build (run: make image)");
    }
    map
}

#[test]
fn the_boot_path_is_packed_at_the_front_of_berth_init() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let order = std::fs::read_to_string(root.join("init/boot.order")).unwrap();
    let names = listed(&order);
    assert_eq!(
        names.first(),
        Some(&"_start"),
        "PID 1's first function leads"
    );
    let Some(map) = release_map() else {
        return;
    };
    let symbols = text_symbols(&map);
    let found: Vec<&Placed> = names.iter().filter_map(|n| symbols.get(*n)).collect();
    // Renamed and removed functions drop out as the code changes; below this share the list
    // no longer describes the boot (renew it: scripts/boot-order.sh).
    assert!(
        found.len() * 4 >= names.len() * 3,
        "only {} of {} functions of init/boot.order are in berth-init: run scripts/boot-order.sh",
        found.len(),
        names.len()
    );
    // All of them together, from the start of .text: no more than their own sizes apart
    // (plus alignment, and the C library's objects, which are placed whole).
    let start = found.iter().map(|p| p.address).min().unwrap();
    let end = found.iter().map(|p| p.address + p.size).max().unwrap();
    let packed: u64 = found.iter().map(|p| p.size).sum();
    assert!(
        end - start <= packed + packed / 4 + 256 * 1024,
        "the boot path spans {} KiB of berth-init for {} KiB of code: the order was not applied",
        (end - start) / 1024,
        packed / 1024
    );
    let text_start = symbols.values().map(|p| p.address).min().unwrap();
    assert_eq!(start, text_start, "the boot path begins .text");
}

/// The size of output section `name` in an lld map.
fn section_size(map: &str, name: &str) -> Option<u64> {
    map.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() == 5 && f[4] == name)
            .then(|| u64::from_str_radix(f[2], 16).ok())
            .flatten()
    })
}

#[test]
fn berth_init_relocates_itself_from_a_packed_table() {
    let Some(map) = release_map() else {
        return;
    };
    // ~12,500 relative relocations: 24 bytes each as RELA (~300 KiB, read through dm-verity
    // before PID 1's first instruction of its own), a few KiB as RELR bitmaps.
    let relr = section_size(&map, ".relr.dyn").unwrap_or(0);
    let rela = section_size(&map, ".rela.dyn").unwrap_or(0);
    assert!(
        relr > 0,
        "no .relr.dyn: built without -z pack-relative-relocs"
    );
    assert!(
        rela + relr < 64 * 1024,
        "relocations: RELA {rela}, RELR {relr} bytes"
    );
}

#[test]
fn the_map_reader_finds_text_symbols_only() {
    let map = "             VMA              LMA     Size Align Out     In      Symbol
           4a000            4a000    c4314  4096 .rodata
           4a000            4a000       14     1         x.o:(.rodata.a)
           4a000            4a000       14     1                 not_code
          199080           199080   401368    64 .text
          199080           199080       22    16         crt1.o:(.text)
          199080           199080       22     1                 _start
          1990b0           1990b0      100    16         a.o:(.text.main)
          1990b0           1990b0      100     1                 main
          59a3e8           59a3e8       17     4 .init
";
    let s = text_symbols(map);
    assert_eq!(s.len(), 2);
    assert_eq!(s["_start"].address, 0x199080);
    assert_eq!(s["main"].size, 0x100);
    assert!(!s.contains_key("not_code"));
    assert_eq!(listed("# comment\n_start\n\nmain\n"), ["_start", "main"]);
    assert_eq!(section_size(map, ".rodata"), Some(0xc4314));
    assert_eq!(section_size(map, ".relr.dyn"), None);
}
