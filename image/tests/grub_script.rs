//! configs/grub/grub.cfg run by GRUB itself (grub-emu, with the ESP as a FAT image on a
//! emulated disk): for every boot state it picks the slot the Rust model (`BootState::grub_boot`)
//! picks, and saves the same state, into the copy that was not read; a torn copy is ignored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_image::grubenv::{BootState, Slot, DEFAULT_TRIES, ENV_FILES};

struct Esp {
    dir: PathBuf,
}

impl Drop for Esp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    out.stdout
}

impl Esp {
    /// A FAT image like the ESP: grub.cfg, both grubenv copies, a kernel and boot.cfg per slot.
    fn new(name: &str, copies: [[u8; 1024]; 2]) -> Option<Esp> {
        let emu_modules = Path::new("/usr/lib/grub/x86_64-emu");
        if !(have("grub-emu") && have("mkfs.vfat") && have("mcopy") && emu_modules.is_dir()) {
            eprintln!("grub-emu, dosfstools or mtools not installed; skipping");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("berth-grubcfg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("prefix")).unwrap();
        let esp = Esp { dir };
        let img = esp.img();
        ok(Command::new("mkfs.vfat")
            .args(["-C", "-n", "BERTH-BOOT"])
            .arg(&img)
            .arg("8192"));
        ok(Command::new("mmd")
            .arg("-i")
            .arg(&img)
            .args(["::/grub", "::/A", "::/B"]));
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/grub/grub.cfg");
        esp.put(&cfg, "/grub/grub.cfg");
        for (name, block) in ENV_FILES.iter().zip(copies) {
            let f = esp.dir.join(name);
            std::fs::write(&f, block).unwrap();
            esp.put(&f, &format!("/grub/{name}"));
        }
        for slot in ["A", "B"] {
            let k = esp.dir.join("k");
            std::fs::write(&k, format!("kernel {slot}")).unwrap();
            esp.put(&k, &format!("/{slot}/vmlinuz"));
            let c = esp.dir.join("c");
            std::fs::write(&c, "set berth_dm=\"dm\"\nset berth_args=\"args\"\n").unwrap();
            esp.put(&c, &format!("/{slot}/boot.cfg"));
        }
        // GRUB's own prefix: run the ESP's script, then leave (grub-emu's reboot exits).
        std::fs::write(
            esp.dir.join("prefix/grub.cfg"),
            "set root=(hd0)\nsource (hd0)/grub/grub.cfg\necho berth-test: end\nreboot\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(emu_modules, esp.dir.join("prefix/x86_64-emu")).unwrap();
        std::fs::write(
            esp.dir.join("device.map"),
            format!("(hd0) {}\n", img.display()),
        )
        .unwrap();
        Some(esp)
    }

    fn img(&self) -> PathBuf {
        self.dir.join("esp.img")
    }

    fn put(&self, src: &Path, dest: &str) {
        ok(Command::new("mcopy")
            .args(["-o", "-i"])
            .arg(self.img())
            .arg(src)
            .arg(format!("::{dest}")));
    }

    fn copies(&self) -> [Vec<u8>; 2] {
        ENV_FILES.map(|n| {
            ok(Command::new("mtype")
                .arg("-i")
                .arg(self.img())
                .arg(format!("::/grub/{n}")))
        })
    }

    /// Boots once; the slot GRUB chose (from its console).
    fn boot(&self) -> Option<Slot> {
        let out = Command::new("timeout")
            .arg("60")
            .arg("grub-emu")
            .arg("-d")
            .arg(self.dir.join("prefix"))
            .arg("-m")
            .arg(self.dir.join("device.map"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.contains("berth-test: end"),
            "grub-emu did not finish:\n{text}"
        );
        assert!(!text.contains("syntax error"), "{text}");
        let slot = text
            .split("berth: booting slot ")
            .nth(1)
            .and_then(|rest| Slot::parse(&rest[..1]));
        if text.contains("rescue boot") {
            return None;
        }
        slot
    }

    fn state(&self) -> (BootState, usize) {
        let [a, b] = self.copies();
        BootState::newest([Some(&a), Some(&b)]).unwrap()
    }
}

fn same(a: &BootState, b: &BootState) -> bool {
    a.order() == b.order() && Slot::ALL.iter().all(|&s| a.state(s) == b.state(s))
}

#[test]
fn a_good_slot_boots_without_writing() {
    let Some(esp) = Esp::new("good", BootState::fresh().initial_blocks().unwrap()) else {
        return;
    };
    let before = esp.copies();
    for _ in 0..2 {
        assert_eq!(esp.boot(), Some(Slot::A));
    }
    assert_eq!(esp.copies(), before, "GRUB wrote grubenv for a good slot");
}

#[test]
fn a_new_slot_counts_down_then_is_retired_like_the_model() {
    let mut model = BootState::fresh();
    model.install(Slot::B, DEFAULT_TRIES);
    let Some(esp) = Esp::new("countdown", model.initial_blocks().unwrap()) else {
        return;
    };
    let mut written = Vec::new();
    for round in 0..DEFAULT_TRIES + 2 {
        let (_, read_from) = esp.state();
        let expected = model.grub_boot();
        assert_eq!(esp.boot(), expected, "round {round}");
        let (got, newest) = esp.state();
        assert!(
            same(&got, &model),
            "round {round}: GRUB saved {got:?}, model {model:?}"
        );
        if newest != read_from {
            written.push(newest);
        }
    }
    // Attempts 3 → 2 → 1 → 0, then the retirement: four writes, alternating copies; the
    // good slot A after that is never written again.
    assert_eq!(written, [1, 0, 1, 0]);
    assert_eq!(model.next_boot(), Some(Slot::A));
}

#[test]
fn a_torn_copy_is_ignored() {
    // Copy 0 is the newer one but torn (SEQ != END): GRUB uses copy 1 (B new, 2 attempts).
    let mut older = BootState::fresh();
    older.install(Slot::B, 2);
    let newer = BootState::fresh();
    let good = older.to_block_with_seq(0).unwrap();
    let mut torn = newer.to_block_with_seq(1).unwrap();
    let end = torn.windows(6).position(|w| w == b"END=1\n").unwrap();
    torn[end + 4] = b'0';
    let Some(esp) = Esp::new("torn", [torn, good]) else {
        return;
    };
    assert_eq!(esp.boot(), Some(Slot::B));
    // Saved into copy 0 (the one not read), which is now the newest and intact.
    let (got, newest) = esp.state();
    assert_eq!(newest, 0);
    let mut model = older.clone();
    model.grub_boot();
    assert!(same(&got, &model), "{got:?}");
}

#[test]
fn nothing_bootable_is_a_rescue_boot_without_writing() {
    let mut s = BootState::fresh();
    s.disable(Slot::A);
    let Some(esp) = Esp::new("rescue", s.initial_blocks().unwrap()) else {
        return;
    };
    let before = esp.copies();
    assert_eq!(esp.boot(), None);
    assert_eq!(esp.copies(), before);
}
