//! Assembles a small disk with the real tools and checks what it holds: a GPT sgdisk accepts,
//! a root that veritysetup verifies against the manifest's root hash (and rejects once a byte
//! is flipped), GRUB for BIOS and UEFI, a fresh boot state with slot A good and slot B empty.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_image::assemble::{self, DiskInputs, GrubDirs, RootSource};
use berth_image::convert::Format;
use berth_image::gpt::Gpt;
use berth_image::grubenv::{BootState, Slot};
use berth_image::layout::Layout;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn extract(disk: &Path, offset: u64, size: u64, out: &Path) {
    let d = File::open(disk).unwrap();
    let mut buf = vec![0u8; size as usize];
    d.read_exact_at(&mut buf, offset).unwrap();
    std::fs::write(out, buf).unwrap();
}

#[test]
fn assembled_disk_holds_verified_root_grub_and_fresh_boot_state() {
    let dir = std::env::temp_dir().join(format!("berth-disk-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rootfs = dir.join("rootfs");
    let state = dir.join("state");
    std::fs::create_dir_all(rootfs.join("sbin")).unwrap();
    std::fs::create_dir_all(state.join("units")).unwrap();
    std::fs::write(rootfs.join("sbin/init"), vec![0x7fu8; 3 * 4096 + 17]).unwrap();
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/os-release"), "NAME=Berth\nBUILD_ID=b1d\n").unwrap();
    let kernel = dir.join("bzImage");
    std::fs::write(&kernel, b"not really a kernel").unwrap();

    let inputs = DiskInputs {
        layout: Layout::load(&repo().join("configs/layout/disk.toml")).unwrap(),
        grub_cfg: repo().join("configs/grub/grub.cfg"),
        cmdline: "console=ttyS0".into(),
        kernel,
        kernel_release: "test".into(),
        root: RootSource::Tree(rootfs),
        extensions: Vec::new(),
        state,
        version: "0.0.0-test".into(),
        epoch: 0,
        grub: GrubDirs::default(),
        recorded_inputs: Default::default(),
        source_commit: None,
    };
    let out = dir.join("out");
    let manifest = assemble::build(
        &inputs,
        &dir.join("work"),
        &out,
        &[Format::Raw, Format::Qcow2],
    )
    .unwrap();
    let disk = out.join("berth.img");
    assert!(out.join("berth.qcow2").is_file());
    assert!(out.join("manifest.json").is_file());

    // GPT: what the layout says, and sgdisk finds no problem.
    let gpt = Gpt::read(&mut File::open(&disk).unwrap()).unwrap();
    let names: Vec<&str> = gpt.partitions.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "bios-boot",
            "berth-boot",
            "berth-root-a",
            "berth-root-b",
            "berth-state"
        ]
    );
    let check = run(Command::new("sgdisk").arg("-v").arg(&disk));
    assert!(String::from_utf8_lossy(&check.stdout).contains("No problems found"));

    // Root A verifies against the manifest's hash; a flipped data byte does not.
    let root_a = gpt.find("berth-root-a").unwrap();
    let root_img = dir.join("root-a");
    extract(&disk, root_a.offset(), manifest.root.total_size, &root_img);
    let verify = |img: &Path| {
        Command::new("veritysetup")
            .arg("verify")
            .arg(format!(
                "--hash-offset={}",
                manifest.root.data_blocks * 4096
            ))
            .arg(img)
            .arg(img)
            .arg(&manifest.root.root_hash)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(verify(&root_img));
    assert!(manifest
        .dm_create
        .contains(&format!("PARTUUID={}", root_a.guid)));
    let f = File::options().write(true).open(&root_img).unwrap();
    f.write_all_at(&[0x55], 4096 + 7).unwrap();
    assert!(!verify(&root_img), "tampered root still verifies");

    // Slot B is empty.
    let root_b = gpt.find("berth-root-b").unwrap();
    let mut b = vec![0u8; 1 << 20];
    File::open(&disk)
        .unwrap()
        .read_exact_at(&mut b, root_b.offset())
        .unwrap();
    assert!(b.iter().all(|&x| x == 0));

    // ESP: GRUB EFI, grub.cfg, fresh grubenv (A good and first, B not bootable), slot A only.
    let esp = gpt.find("berth-boot").unwrap();
    let img = format!("{}@@{}", disk.display(), esp.offset());
    let listing = run(Command::new("mdir").args(["-/", "-b", "-i", &img, "::/"]));
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in [
        "::/EFI/BOOT/BOOTX64.EFI",
        "::/grub/grub.cfg",
        "::/grub/grubenv",
        "::/grub/grubenv2",
        "::/A/vmlinuz",
        "::/A/boot.cfg",
        "::/A/release.json",
    ] {
        assert!(
            listing.lines().any(|l| l.eq_ignore_ascii_case(f)),
            "{f} missing:\n{listing}"
        );
    }
    assert!(!listing.to_lowercase().contains("::/b/vmlinuz"));
    let env = run(Command::new("mtype").args(["-i", &img, "::/grub/grubenv"])).stdout;
    let env2 = run(Command::new("mtype").args(["-i", &img, "::/grub/grubenv2"])).stdout;
    let (state, copy) = BootState::newest([Some(&env), Some(&env2)]).unwrap();
    assert_eq!(copy, 0);
    assert_eq!(BootState::parse(&env2).unwrap().order(), state.order());
    assert_eq!(state.next_boot(), Some(Slot::A));
    assert!(!state.is_ok(Slot::B));
    let slot_cfg = run(Command::new("mtype").args(["-i", &img, "::/A/boot.cfg"])).stdout;
    let slot_cfg = String::from_utf8_lossy(&slot_cfg);
    assert!(slot_cfg.contains(&manifest.root.root_hash), "{slot_cfg}");
    let release = run(Command::new("mtype").args(["-i", &img, "::/A/release.json"])).stdout;
    let release: serde_json::Value = serde_json::from_slice(&release).unwrap();
    assert_eq!(
        release,
        serde_json::json!({"version": "0.0.0-test", "build_id": "b1d"})
    );

    // BIOS: the MBR's boot code points at the core image in the bios-boot partition.
    let bios = gpt.find("bios-boot").unwrap();
    let mut mbr = [0u8; 512];
    File::open(&disk)
        .unwrap()
        .read_exact_at(&mut mbr, 0)
        .unwrap();
    assert_eq!(&mbr[0x5c..0x64], &bios.first_lba.to_le_bytes());
    assert_eq!(&mbr[510..], &[0x55, 0xaa]);

    std::fs::remove_dir_all(&dir).unwrap();
}

/// A system extension lands after the root erofs, behind its header, under the one verity
/// tree: the manifest's `data_blocks` covers it, veritysetup verifies the whole slot, PID 1's
/// chain walk finds it, and an update bundle of that slot is accepted.
#[test]
fn extension_follows_the_root_under_its_verity_tree() {
    use berth_image::bundle::{self, keys, VerityInfo};
    use berth_image::extensions::ExtensionSource;

    let dir = std::env::temp_dir().join(format!("berth-disk-ext-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rootfs = dir.join("rootfs");
    let state = dir.join("state");
    let ext_tree = dir.join("ext-tree");
    std::fs::create_dir_all(rootfs.join("sbin")).unwrap();
    std::fs::create_dir_all(state.join("units")).unwrap();
    std::fs::create_dir_all(ext_tree.join("units")).unwrap();
    std::fs::write(rootfs.join("sbin/init"), vec![0x7fu8; 3 * 4096 + 17]).unwrap();
    std::fs::write(
        ext_tree.join("units/hello.toml"),
        "command = [\"/bin/sh\", \"-c\", \"echo hello-ext\"]\n",
    )
    .unwrap();
    let ext_img = dir.join("hello.erofs");
    berth_image::verity::mkfs_erofs(&ext_tree, &ext_img, 0).unwrap();
    let kernel = dir.join("bzImage");
    std::fs::write(&kernel, b"not really a kernel").unwrap();

    let inputs = DiskInputs {
        layout: Layout::load(&repo().join("configs/layout/disk.toml")).unwrap(),
        grub_cfg: repo().join("configs/grub/grub.cfg"),
        cmdline: "console=ttyS0".into(),
        kernel: kernel.clone(),
        kernel_release: "test".into(),
        root: RootSource::Tree(rootfs),
        extensions: vec![ExtensionSource {
            name: "hello".into(),
            image: ext_img.clone(),
        }],
        state,
        version: "0.0.0-test".into(),
        epoch: 0,
        grub: GrubDirs::default(),
        recorded_inputs: Default::default(),
        source_commit: None,
    };
    let out = dir.join("out");
    let work = dir.join("work");
    let manifest = assemble::build(&inputs, &work, &out, &[Format::Raw]).unwrap();

    let ext_size = std::fs::metadata(&ext_img).unwrap().len();
    assert_eq!(manifest.extensions.len(), 1);
    let entry = &manifest.extensions[0];
    assert_eq!((entry.name.as_str(), entry.size), ("hello", ext_size));
    assert_eq!(
        manifest.root.data_blocks * 4096,
        entry.offset + entry.size,
        "the verity data ends with the extension"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(json["extensions"][0]["name"], "hello");

    // The slot as written to the disk: verifies as a whole, and the walk finds the extension.
    let disk = out.join("berth.img");
    let gpt = Gpt::read(&mut File::open(&disk).unwrap()).unwrap();
    let root_a = gpt.find("berth-root-a").unwrap();
    let slot = dir.join("slot-a");
    extract(&disk, root_a.offset(), manifest.root.total_size, &slot);
    let verify = run(Command::new("veritysetup")
        .arg("verify")
        .arg(format!(
            "--hash-offset={}",
            manifest.root.data_blocks * 4096
        ))
        .arg(&slot)
        .arg(&slot)
        .arg(&manifest.root.root_hash));
    assert!(verify.status.success());
    let data = std::fs::read(&slot).unwrap();
    let data = &data[..(manifest.root.data_blocks * 4096) as usize];
    let chain = berth_formats::extension::walk(data, data.len() as u64).unwrap();
    let found: Vec<_> = chain
        .entries
        .iter()
        .map(|e| e.as_ref().unwrap().clone())
        .collect();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, "hello");
    assert_eq!(found[0].data_offset(), entry.offset);
    let placed = &data[entry.offset as usize..(entry.offset + entry.size) as usize];
    assert!(placed == std::fs::read(&ext_img).unwrap());

    // An update bundle of this slot: its tree check covers the extension too.
    keys::generate(&dir.join("keys"), "test").unwrap();
    let verity = &manifest.root;
    bundle::create(&bundle::CreateOptions {
        key: dir.join("keys/test.key"),
        root: work.join("root-a.img"),
        kernel,
        os_version: "0.0.1".into(),
        build_id: "b".into(),
        min_from_version: "0.0.0".into(),
        kernel_release: "test".into(),
        verity: VerityInfo {
            hash: berth_image::verity::HASH.into(),
            data_blocks: verity.data_blocks,
            hash_offset_blocks: verity.hash_offset_blocks,
            root_hash: verity.root_hash.clone(),
            salt: verity.salt.clone(),
        },
        boot_args: "console=ttyS0".into(),
        out: dir.join("u.bundle"),
    })
    .unwrap();

    std::fs::remove_dir_all(&dir).unwrap();
}
