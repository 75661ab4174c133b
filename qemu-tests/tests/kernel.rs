//! The image's kernel, as GRUB loads it from the ESP: checked on the real bzImage, unpacked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use berth_qemu_tests::{disk, image_or_skip, Fixture};

/// Inline byte-wise string instructions left in the kernel's code: the assembly that uses them
/// on purpose (~40 sites). At -Os without configs/kernel/patches/0002, GCC adds ~1,300 of its
/// own for memset() and memcpy() of unknown size.
const MAX_BYTE_LOOPS: usize = 100;

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

/// The kernel ELF from an LZ4 payload (the legacy frame `lz4 -l` writes, followed by the
/// kernel build's 4-byte uncompressed size).
fn unpack_lz4(payload: &[u8]) -> Vec<u8> {
    assert_eq!(
        &payload[..4],
        &[0x02, 0x21, 0x4c, 0x18],
        "the kernel is not LZ4-compressed (configs/kernel/berth.config sets KERNEL_LZ4)"
    );
    let stream = &payload[..payload.len() - 4];
    let mut lz4 = Command::new("lz4")
        .args(["-d", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("lz4 (scripts/install-deps.sh installs it)");
    let mut stdin = lz4.stdin.take().unwrap();
    let input = stream.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = lz4.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "lz4 -d: {}", out.status);
    assert_eq!(
        &out.stdout[..4],
        b"\x7fELF",
        "the payload is not an ELF kernel"
    );
    out.stdout
}

#[test]
fn kernel_calls_memset_and_memcpy_instead_of_inline_byte_loops() {
    let Some(image) = image_or_skip("kernel_string_ops") else {
        return;
    };
    let bz = disk::esp_file(&image, "/A/vmlinuz").unwrap();
    let elf = unpack_lz4(payload(&bz));
    let fx = Fixture::new("kernel_string_ops").unwrap();
    let vmlinux = fx.path("vmlinux");
    std::fs::write(&vmlinux, &elf).unwrap();

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
