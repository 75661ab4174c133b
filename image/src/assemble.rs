//! Assembles the bootable disk: every filesystem is built as a file and placed at its offset
//! in the raw image (nothing is loop-mounted), then the GPT and GRUB's BIOS boot code go on top.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::convert::{self, ConvertError, Format};
use crate::derive::{self, Seed};
use crate::esp::{EspContents, EspError, Stamp};
use crate::ext4::{self, Ext4Error};
use crate::extensions::{self, ExtensionError, ExtensionSource};
use crate::gpt::{GptError, SECTOR};
use crate::grub::{self, GrubError};
use crate::grubenv::{BootState, GrubEnvError, Slot, ENV_FILES};
use crate::guid::GuidError;
use crate::host::HostError;
use crate::layout::{Layout, Placed, Role};
use crate::manifest::{Manifest, OutputEntry, PartitionEntry};
use crate::verity::{self, VerityError};

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error(transparent)]
    Guid(#[from] GuidError),
    #[error(transparent)]
    Gpt(#[from] GptError),
    #[error(transparent)]
    Grub(#[from] GrubError),
    #[error(transparent)]
    GrubEnv(#[from] GrubEnvError),
    #[error(transparent)]
    Esp(#[from] EspError),
    #[error(transparent)]
    Verity(#[from] VerityError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Ext4(#[from] Ext4Error),
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error(transparent)]
    Extension(#[from] ExtensionError),
    #[error("{what} is {size} bytes; partition {partition:?} holds {room}")]
    TooBig {
        what: String,
        size: u64,
        partition: String,
        room: u64,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AssembleError + '_ {
    move |source| HostError::io(path)(source).into()
}

/// The root filesystem of slot A.
#[derive(Debug, Clone)]
pub enum RootSource {
    /// A directory tree, made into erofs here (`make image`).
    Tree(PathBuf),
    /// An erofs image built elsewhere (Buildroot's rootfs.erofs, made under fakeroot);
    /// copied, never modified.
    Image(PathBuf),
}

/// Where grub-mkimage finds GRUB's modules for each platform (and i386-pc's boot.img).
#[derive(Debug, Clone)]
pub struct GrubDirs {
    pub pc: PathBuf,
    pub efi: PathBuf,
}

impl Default for GrubDirs {
    fn default() -> GrubDirs {
        GrubDirs {
            pc: PathBuf::from(grub::PC_DIR),
            efi: PathBuf::from(grub::EFI_DIR),
        }
    }
}

/// Everything a disk is made of.
#[derive(Debug, Clone)]
pub struct DiskInputs {
    pub layout: Layout,
    /// The boot-counting script (configs/grub/grub.cfg).
    pub grub_cfg: PathBuf,
    /// Kernel arguments shared by every slot (configs/grub/cmdline).
    pub cmdline: String,
    pub kernel: PathBuf,
    pub kernel_release: String,
    pub root: RootSource,
    /// System extensions placed after the root erofs in slot A, in this order.
    pub extensions: Vec<ExtensionSource>,
    /// The initial content of the state partition.
    pub state: PathBuf,
    pub version: String,
    /// Timestamp of every file and filesystem (reproducible builds: the source commit's time).
    pub epoch: u64,
    pub grub: GrubDirs,
    /// What the build was made from, recorded in the manifest: name to SHA-256 (kernel
    /// config, busybox config, Cargo.lock, ...), and the source commit.
    pub recorded_inputs: BTreeMap<String, String>,
    pub source_commit: Option<String>,
}

/// The release record of the image's slot: its version, and the build id of the root tree's
/// `/etc/os-release` (`unknown` for a prebuilt root image or a tree without one).
pub fn slot_release(inputs: &DiskInputs) -> String {
    let build_id = match &inputs.root {
        RootSource::Tree(tree) => std::fs::read_to_string(tree.join("etc/os-release"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("BUILD_ID="))
                    .map(|v| v.trim().trim_matches('"').to_string())
            })
            .filter(|v| !v.is_empty()),
        RootSource::Image(_) => None,
    };
    serde_json::json!({
        "version": inputs.version,
        "build_id": build_id.unwrap_or_else(|| "unknown".into()),
    })
    .to_string()
}

/// Builds `out_dir/berth.img` (using `work_dir` for intermediate files), converts it into
/// `formats`, and writes `out_dir/manifest.json`.
///
/// Reproducible: nothing comes from the clock or the random pool. Times are `epoch`; the verity
/// salt and UUID derive from the root's bytes; GUIDs, filesystem UUIDs and volume IDs derive
/// from a seed over the version, the epoch, the kernel, the root hash and the boot files. The
/// same inputs give the same bytes in every output.
pub fn build(
    inputs: &DiskInputs,
    work_dir: &Path,
    out_dir: &Path,
    formats: &[Format],
) -> Result<Manifest, AssembleError> {
    std::fs::create_dir_all(work_dir).map_err(io(work_dir))?;
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;

    // Root A: erofs, then the extensions (each behind its header), then one hash tree over
    // all of it in the same file.
    let root_img = work_dir.join("root-a.img");
    let root_size = match &inputs.root {
        RootSource::Tree(tree) => verity::mkfs_erofs(tree, &root_img, inputs.epoch)?,
        RootSource::Image(image) => {
            verity::data_size(image)?;
            let _ = std::fs::remove_file(&root_img);
            std::fs::copy(image, &root_img).map_err(io(image))?;
            verity::data_size(&root_img)?
        }
    };
    let extension_entries = extensions::append(&root_img, &inputs.extensions)?;
    let data_size = match extension_entries.last() {
        Some(last) => last.offset + last.size,
        None => root_size,
    };
    let root_data = Seed::new(["verity", &derive::sha256_file(&root_img)?]);
    let verity = verity::format(
        &root_img,
        data_size,
        &root_data.hex("salt", 32),
        &root_data.guid("uuid").to_string(),
    )?;

    let layout_text: String = inputs
        .layout
        .partitions
        .iter()
        .map(|p| format!("{} {:?} {} {:?};", p.name, p.role, p.size, p.label))
        .collect();
    let seed = Seed::new([
        "berth-image disk 1",
        &inputs.version,
        &inputs.epoch.to_string(),
        &derive::sha256_file(&inputs.kernel)?,
        &verity.root_hash,
        &derive::sha256_file(&inputs.grub_cfg)?,
        &inputs.cmdline,
        &layout_text,
    ]);
    let (gpt, placed) = inputs.layout.gpt(&seed)?;
    let part = |role| -> &Placed {
        // The layout was validated to hold every role exactly once.
        placed
            .iter()
            .find(|p| p.spec.role == role)
            .unwrap_or(&placed[0])
    };
    let partuuid = |role| {
        let number = part(role).number;
        gpt.partitions
            .iter()
            .find(|p| p.number == number)
            .map(|p| p.guid.to_string())
            .unwrap_or_default()
    };
    let slot_what = match extension_entries.is_empty() {
        true => "root filesystem + hash tree",
        false => "root filesystem + extensions + hash tree",
    };
    fits(slot_what, verity.total_size, part(Role::RootA))?;
    let root_dev = format!("PARTUUID={}", partuuid(Role::RootA));
    let dm_create = verity.dm_create(&root_dev);
    let args = format!(
        "root=/dev/dm-0 ro rootfstype=erofs dm-mod.waitfor={root_dev} {}",
        inputs.cmdline.trim()
    );

    // GRUB images and the ESP.
    let esp_label = part(Role::Esp)
        .spec
        .label
        .clone()
        .unwrap_or_else(|| "BERTH-BOOT".into());
    let embed = work_dir.join("embed.cfg");
    write(&embed, grub::embedded_config(&esp_label).as_bytes())?;
    let core_img = work_dir.join("core.img");
    grub::mkimage_bios(&embed, &core_img, &inputs.grub.pc)?;
    let efi_img = work_dir.join("BOOTX64.EFI");
    grub::mkimage_efi(&embed, &efi_img, &inputs.grub.efi)?;
    let slot_cfg = work_dir.join("A-boot.cfg");
    write(
        &slot_cfg,
        grub::slot_config(&dm_create, &args)
            .map_err(GrubError::from)?
            .as_bytes(),
    )?;
    // What slot A holds, as an update records it for the slot it writes (`release.json`).
    let release = work_dir.join("A-release.json");
    write(&release, slot_release(inputs).as_bytes())?;
    // Both copies of the boot state (see grubenv): a power cut while one is rewritten
    // leaves the other.
    let mut grubenvs = Vec::new();
    for (name, block) in ENV_FILES.iter().zip(BootState::fresh().initial_blocks()?) {
        let path = work_dir.join(name);
        write(&path, &block)?;
        grubenvs.push((path, format!("/grub/{name}")));
    }

    let mut esp = EspContents::default();
    esp.add(&efi_img, "/EFI/BOOT/BOOTX64.EFI")?;
    esp.add(&inputs.grub_cfg, "/grub/grub.cfg")?;
    for (path, dest) in &grubenvs {
        esp.add(path, dest)?;
    }
    esp.add(&inputs.kernel, &format!("/{}/vmlinuz", Slot::A))?;
    esp.add(&slot_cfg, &format!("/{}/boot.cfg", Slot::A))?;
    esp.add(&release, &format!("/{}/release.json", Slot::A))?;
    esp.add_dir(&format!("/{}", Slot::B))?;
    let esp_img = work_dir.join("esp.img");
    let stamp = Stamp {
        volume_id: seed.u32("esp volume id"),
        epoch: inputs.epoch,
    };
    esp.build(&esp_img, part(Role::Esp).size(), &esp_label, stamp)?;

    // State: ext4 preloaded with what the first boot needs.
    let state_img = work_dir.join("state.img");
    let state = part(Role::State);
    let state_label = state
        .spec
        .label
        .clone()
        .unwrap_or_else(|| "berth-state".into());
    ext4::mkfs_from_tree(
        &inputs.state,
        &state_img,
        state.size(),
        &state_label,
        &seed.guid("state filesystem").to_string(),
        inputs.epoch,
        work_dir,
    )?;

    // The raw disk.
    let raw = out_dir.join(format!("berth.{}", Format::Raw.extension()));
    let _ = std::fs::remove_file(&raw);
    let disk = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&raw)
        .map_err(io(&raw))?;
    let disk_size = inputs.layout.disk_size();
    disk.set_len(disk_size).map_err(io(&raw))?;
    place(&disk, &esp_img, part(Role::Esp))?;
    place(&disk, &root_img, part(Role::RootA))?;
    place(&disk, &state_img, state)?;
    let bios = part(Role::BiosBoot);
    let core = grub::read(&core_img)?;
    let boot = grub::read(&inputs.grub.pc.join("boot.img"))?;
    grub::install_bios(&disk, &boot, &core, bios.first_lba, bios.size())?;
    gpt.write(&mut &disk, disk_size / SECTOR)?;
    disk.sync_all().map_err(io(&raw))?;
    drop(disk);

    let mut outputs = vec![output(&raw, Format::Raw)?];
    for &format in formats.iter().filter(|f| **f != Format::Raw) {
        let out = out_dir.join(format!("berth.{}", format.extension()));
        convert::convert(&raw, &out, format, &seed)?;
        outputs.push(output(&out, format)?);
    }

    let manifest = Manifest {
        version: inputs.version.clone(),
        kernel_release: inputs.kernel_release.clone(),
        epoch: inputs.epoch,
        source_commit: inputs.source_commit.clone(),
        inputs: inputs.recorded_inputs.clone(),
        disk_guid: gpt.disk_guid.to_string(),
        disk_size,
        root_image_sha256: derive::sha256_file(&root_img)?,
        root: verity,
        extensions: extension_entries,
        kernel_args: args,
        dm_create,
        partitions: placed
            .iter()
            .map(|p| PartitionEntry {
                number: p.number,
                name: p.spec.name.clone(),
                partuuid: partuuid(p.spec.role),
                offset: p.offset(),
                size: p.size(),
            })
            .collect(),
        outputs,
    };
    let path = out_dir.join("manifest.json");
    write(&path, manifest.to_json().as_bytes())?;
    Ok(manifest)
}

fn output(path: &Path, format: Format) -> Result<OutputEntry, AssembleError> {
    let sha256 = derive::sha256_file(path)?;
    OutputEntry::of(path, format, sha256).map_err(io(path))
}

fn fits(what: &str, size: u64, part: &Placed) -> Result<(), AssembleError> {
    if size > part.size() {
        return Err(AssembleError::TooBig {
            what: what.into(),
            size,
            partition: part.spec.name.clone(),
            room: part.size(),
        });
    }
    Ok(())
}

fn write(path: &Path, data: &[u8]) -> Result<(), AssembleError> {
    std::fs::write(path, data).map_err(io(path))
}

/// Copies `image` to its partition, skipping all-zero chunks so the raw disk stays sparse.
fn place(disk: &File, image: &Path, part: &Placed) -> Result<(), AssembleError> {
    let mut f = File::open(image).map_err(io(image))?;
    let size = f.metadata().map_err(io(image))?.len();
    fits(&image.display().to_string(), size, part)?;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut at = 0u64;
    loop {
        buf.clear();
        let n = (&mut f)
            .take(1 << 20)
            .read_to_end(&mut buf)
            .map_err(io(image))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if chunk.iter().any(|&b| b != 0) {
            disk.write_all_at(chunk, part.offset() + at)
                .map_err(|source| HostError::Io {
                    path: "disk image".into(),
                    source,
                })?;
        }
        at += n as u64;
    }
    Ok(())
}
