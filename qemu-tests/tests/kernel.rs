//! The image's kernel: its bzImage from the ESP, unpacked and disassembled; its build's config
//! and System.map from the kernel cache; and a boot of it with QEMU's translation log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use berth_qemu_tests::{disk, disk_or_skip, image_or_skip, Fixture, Vm};

/// Inline byte-wise string instructions left in the kernel's code: the assembly that uses them
/// on purpose (~40 sites). At -Os without configs/kernel/patches/0002, GCC adds ~1,300 of its
/// own for memset() and memcpy() of unknown size.
const MAX_BYTE_LOOPS: usize = 100;

/// Kernel code blocks QEMU translates again between PID 1's start and the demo container's,
/// with the kernel in one stack segment: ~130 (4,300-5,300 without configs/kernel/patches/0003,
/// every path reached both from a system call and from an interrupt or exception in user
/// mode).
const MAX_RETRANSLATED: usize = 1_000;

/// LOCK-prefixed instructions among the kernel code translated between PID 1's start and the
/// demo container's: ~400 (~30 when the kernel patched them into DS prefixes for one CPU,
/// which left ~350 DS-prefixed ones; ~1 otherwise).
const MIN_LOCKED: usize = 150;
const MAX_DS_PREFIXED: usize = 50;

/// The compressed kernel inside a bzImage: the setup header's payload_offset and
/// payload_length (boot protocol 2.08+), relative to the protected-mode code, which follows
/// the setup sectors.
fn payload(bz: &[u8]) -> &[u8] {
    let le32 = |at: usize| u32::from_le_bytes(bz[at..at + 4].try_into().unwrap()) as usize;
    assert_eq!(&bz[0x202..0x206], b"HdrS", "not a bzImage");
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + le32(0x248);
    &bz[start..start + le32(0x24c)]
}

/// Unpacks an LZ4 payload (the legacy frame `lz4 -l` writes, followed by the kernel build's
/// 4-byte uncompressed size) into the kernel ELF at `vmlinux`.
fn unpack_lz4(payload: &[u8], vmlinux: &Path) {
    assert_eq!(
        &payload[..4],
        &[0x02, 0x21, 0x4c, 0x18],
        "the kernel is not LZ4-compressed (configs/kernel/berth.config sets KERNEL_LZ4)"
    );
    let packed = vmlinux.with_extension("lz4");
    std::fs::write(&packed, &payload[..payload.len() - 4]).unwrap();
    let status = Command::new("lz4")
        .args(["-d", "-f", "-q"])
        .arg(&packed)
        .arg(vmlinux)
        .status()
        .expect("lz4 (scripts/install-deps.sh installs it)");
    assert!(status.success(), "lz4 -d: {status}");
    let mut magic = [0u8; 4];
    std::fs::File::open(vmlinux)
        .unwrap()
        .read_exact(&mut magic)
        .unwrap();
    assert_eq!(&magic, b"\x7fELF", "the payload is not an ELF kernel");
}

#[test]
fn kernel_calls_memset_and_memcpy_instead_of_inline_byte_loops() {
    let Some(image) = image_or_skip("kernel_string_ops") else {
        return;
    };
    let bz = disk::esp_file(&image, "/A/vmlinuz").unwrap();
    let fx = Fixture::new("kernel_string_ops").unwrap();
    let vmlinux = fx.path("vmlinux");
    unpack_lz4(payload(&bz), &vmlinux);

    // QEMU's TCG runs `rep stosb` and `rep movsb` one byte per iteration: zeroing the dentry
    // and inode hash tables inline took ~65 ms of the kernel's boot.
    let mut objdump = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(&vmlinux)
        .stdout(Stdio::piped())
        .spawn()
        .expect("objdump (binutils)");
    let mut instructions = 0usize;
    let mut byte_loops = 0usize;
    for line in BufReader::new(objdump.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("ffffffff") {
            instructions += 1;
            if line.contains("rep stos %al,") || line.contains("rep movsb") {
                byte_loops += 1;
            }
        }
    }
    assert!(objdump.wait().unwrap().success());
    // A disassembly that found no code would pass the count for nothing.
    assert!(instructions > 500_000, "{instructions} instructions");
    assert!(
        byte_loops <= MAX_BYTE_LOOPS,
        "{byte_loops} inline rep stosb/movsb in the kernel (at most {MAX_BYTE_LOOPS})"
    );
}

/// What a QEMU translation log (`-d in_asm`) shows of the kernel's code from PID 1's start on.
#[derive(Debug, Default)]
struct KernelTranslation {
    /// Code blocks translated.
    blocks: usize,
    /// Of those, blocks at an address the kernel had translated before.
    again: usize,
    /// Instructions translated with a LOCK prefix.
    locked: usize,
    /// Instructions translated with a DS prefix, which the kernel writes over a LOCK prefix
    /// when it patches itself for one CPU.
    ds_prefixed: usize,
    /// Where each of those blocks begins.
    starts: HashSet<u64>,
}

/// Reads a translation log: each block is an "IN:" line followed by its instructions
/// ("0x<address>:  <bytes>  <mnemonic>"). PID 1's start is the first block in user space after
/// the kernel's first block.
fn kernel_translation(log: &Path) -> KernelTranslation {
    /// The kernel's mapping (firmware, GRUB and user space are below it).
    const KERNEL: u64 = 0xffff_ffff_8000_0000;
    // Above the lowest page and below the end of user space's half of the address space.
    let in_user_space = |a: u64| (0x1000..1 << 47).contains(&a);
    let file = std::fs::File::open(log).unwrap();
    let mut seen: HashSet<u64> = HashSet::new();
    let (mut kernel_started, mut pid1_started) = (false, false);
    let mut out = KernelTranslation::default();
    let mut block_starts = false;
    for line in BufReader::new(file).lines() {
        let line = line.unwrap();
        if line.starts_with("IN:") {
            block_starts = true;
            continue;
        }
        let Some((hex, rest)) = line.strip_prefix("0x").and_then(|l| l.split_once(':')) else {
            continue;
        };
        let Ok(address) = u64::from_str_radix(hex, 16) else {
            continue;
        };
        let first = std::mem::take(&mut block_starts);
        if address < KERNEL {
            if first && kernel_started && in_user_space(address) {
                pid1_started = true;
            }
            continue;
        }
        kernel_started = true;
        let new = !first || seen.insert(address);
        if !pid1_started {
            continue;
        }
        if first {
            out.blocks += 1;
            out.again += usize::from(!new);
            out.starts.insert(address);
        }
        match rest.split_whitespace().next() {
            Some("f0") => out.locked += 1,
            Some("3e") => out.ds_prefixed += 1,
            _ => {}
        }
    }
    out
}

/// The image's boot (BIOS, 1 vCPU) with QEMU's translation log until the demo container has
/// started, read once for every test that looks at it; `None` when QEMU tests are skipped.
fn translated_boot() -> Option<&'static KernelTranslation> {
    static BOOT: OnceLock<Option<KernelTranslation>> = OnceLock::new();
    BOOT.get_or_init(|| {
        let (fx, disk_path) = disk_or_skip("kernel_translation", None)?;
        let log = fx.path("translated.log");
        Vm::trace_boot(disk_path, log.clone(), &fx.dir).unwrap();
        let t = kernel_translation(&log);
        // A log without PID 1's start would pass for nothing.
        assert!(
            t.blocks > 10_000,
            "{} kernel blocks translated after PID 1 started",
            t.blocks
        );
        Some(t)
    })
    .as_ref()
}

#[test]
fn the_kernel_runs_with_one_stack_segment() {
    // QEMU keys translated code on the stack segment's size bit, in 64-bit mode too: a kernel
    // that runs with SS null after an interrupt or exception from user mode and __KERNEL_DS
    // after a system call has its common paths translated twice (~11% of the kernel code
    // translated by the demo's start).
    let Some(t) = translated_boot() else {
        return;
    };
    assert!(
        t.again <= MAX_RETRANSLATED,
        "{} of the {} kernel code blocks translated after PID 1 started had been translated \
         before (at most {MAX_RETRANSLATED})",
        t.again,
        t.blocks
    );
}

#[test]
fn the_kernel_keeps_its_lock_prefixes_on_one_cpu() {
    // On a machine with one CPU the kernel would rewrite every LOCK prefix of its code
    // (text_poke() per site, each switching page tables twice: ~100 ms of the boot under
    // QEMU TCG). configs/grub/cmdline's `noreplace-smp` keeps them.
    let Some(t) = translated_boot() else {
        return;
    };
    assert!(
        t.locked >= MIN_LOCKED && t.ds_prefixed <= MAX_DS_PREFIXED,
        "kernel code translated after PID 1 started: {} LOCK-prefixed instructions (at least \
         {MIN_LOCKED}), {} DS-prefixed (at most {MAX_DS_PREFIXED})",
        t.locked,
        t.ds_prefixed
    );
}

/// Functions that only build netlink notifications (bridge port, forwarding entry, ethtool,
/// IPv6 interface): with configs/kernel/patches/0004 the kernel skips them when no socket
/// listens, as none does while PID 1 sets up the demo container.
const NOTIFICATION_BUILDERS: &[&str] = &[
    "br_port_fill_attrs",
    "fdb_fill_info",
    "ethnl_fill_reply_header",
    "inet6_fill_ifinfo",
];

/// The cache directory of the kernel build whose bzImage `bz` is: scripts/build-kernel.sh
/// keeps the bzImage, its config and its System.map in `$BERTH_CACHE/kernel-<hash>/`.
fn build_dir_of(bz: &[u8]) -> Option<std::path::PathBuf> {
    let cache = std::env::var_os("BERTH_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/berth")))?;
    std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("kernel-"))
        .map(|e| e.path())
        .find(|dir| std::fs::read(dir.join("bzImage")).is_ok_and(|b| b == bz))
}

/// The System.map of the kernel build whose bzImage `bz` is.
fn system_map_of(bz: &[u8]) -> Option<std::path::PathBuf> {
    build_dir_of(bz)
        .map(|dir| dir.join("System.map"))
        .filter(|map| map.is_file())
}

/// Kernel self-protection (configs/kernel/berth.config): each option, and a function that
/// only a kernel built with it has (None: the option adds no function of its own).
const SELF_PROTECTION: &[(&str, Option<&str>)] = &[
    ("CONFIG_STACKPROTECTOR_STRONG", Some("__stack_chk_fail")),
    ("CONFIG_VMAP_STACK", Some("handle_stack_overflow")),
    ("CONFIG_HARDENED_USERCOPY", Some("__check_object_size")),
    ("CONFIG_FORTIFY_SOURCE", Some("__fortify_report")),
    ("CONFIG_LIST_HARDENED", Some("__list_add_valid_or_report")),
    ("CONFIG_BUG_ON_DATA_CORRUPTION", None),
    ("CONFIG_SCHED_STACK_END_CHECK", None),
    ("CONFIG_RANDOMIZE_KSTACK_OFFSET_DEFAULT", None),
    ("CONFIG_SECURITY_DMESG_RESTRICT", None),
];

#[test]
fn the_kernel_is_built_with_self_protection() {
    let Some(image) = image_or_skip("kernel_self_protection") else {
        return;
    };
    let bz = disk::esp_file(&image, "/A/vmlinuz").unwrap();
    let Some(dir) = build_dir_of(&bz).filter(|d| d.join("config").is_file()) else {
        eprintln!(
            "skipping kernel_self_protection: the kernel build cache has no config of this \
             image's kernel (scripts/build-kernel.sh keeps one beside each bzImage)"
        );
        return;
    };
    let config = std::fs::read_to_string(dir.join("config")).unwrap();
    let symbols: HashSet<String> = text_symbols(&dir.join("System.map"))
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    let mut missing = Vec::new();
    for (option, function) in SELF_PROTECTION {
        if !config.lines().any(|l| l == format!("{option}=y")) {
            missing.push(format!("{option} is not set"));
        }
        if let Some(function) = function {
            if !symbols.contains(*function) {
                missing.push(format!("no {function} ({option})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the image's kernel lacks self-protection: {}",
        missing.join(", ")
    );
}

/// The text symbols of a System.map, by address.
fn text_symbols(map: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(map).unwrap();
    let mut symbols: Vec<(u64, String)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let address = u64::from_str_radix(f.next()?, 16).ok()?;
            let kind = f.next()?;
            let name = f.next()?;
            matches!(kind, "t" | "T" | "W" | "w").then(|| (address, name.to_string()))
        })
        .collect();
    symbols.sort();
    symbols
}

/// The traced boot's KASLR offset: the multiple of the kernel's 2 MiB alignment that puts the
/// most function entries on translated block starts; and how many.
fn kaslr_offset(symbols: &[(u64, String)], starts: &HashSet<u64>) -> (u64, usize) {
    (0..512u64)
        .map(|k| k << 21)
        .map(|offset| {
            let hits = symbols
                .iter()
                .filter(|(a, _)| starts.contains(&(a + offset)))
                .count();
            (offset, hits)
        })
        .max_by_key(|&(_, hits)| hits)
        .unwrap()
}

#[test]
fn the_kernel_builds_no_notification_nobody_listens_to() {
    let Some(image) = image_or_skip("kernel_notifications") else {
        return;
    };
    let bz = disk::esp_file(&image, "/A/vmlinuz").unwrap();
    let Some(map) = system_map_of(&bz) else {
        eprintln!(
            "skipping kernel_notifications: the kernel build cache has no System.map of this \
             image's kernel (scripts/build-kernel.sh keeps one beside each bzImage)"
        );
        return;
    };
    let Some(t) = translated_boot() else {
        return;
    };
    let symbols = text_symbols(&map);
    let (offset, hits) = kaslr_offset(&symbols, &t.starts);
    assert!(
        hits > 1_000,
        "{} does not match the traced kernel: {hits} function entries at best",
        map.display()
    );
    let mut built = Vec::new();
    for name in NOTIFICATION_BUILDERS {
        let i = symbols
            .iter()
            .position(|(_, n)| n == name)
            .unwrap_or_else(|| panic!("no {name} in {}", map.display()));
        let (start, end) = (symbols[i].0 + offset, symbols[i + 1].0 + offset);
        let blocks = t
            .starts
            .iter()
            .filter(|a| (start..end).contains(*a))
            .count();
        if blocks > 0 {
            built.push(format!("{name}: {blocks} blocks"));
        }
    }
    assert!(
        built.is_empty(),
        "the kernel built notifications no socket listens to between PID 1's start and the \
         demo container's: {}",
        built.join(", ")
    );
}
