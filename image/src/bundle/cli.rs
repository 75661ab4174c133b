//! `berth-image keygen`, `bundle` and `verify-bundle`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::keys::{self, TrustedKeys};
use super::{CreateOptions, VerityInfo};

pub const USAGE: &str = "  berth-image keygen --out DIR [--name NAME]
      (an ed25519 key pair DIR/NAME.key, DIR/NAME.pub; NAME defaults to berth)
  berth-image bundle --key KEY --root ROOTIMG --kernel BZIMAGE --manifest MANIFEST.json \\
      --cmdline FILE [--build-id ID] [--min-from VERSION] [--version V] --out FILE
      (ROOTIMG: erofs + verity tree; MANIFEST.json: the image build's, for the version,
      kernel release and verity parameters)
  berth-image verify-bundle --keys DIR FILE";

fn options(args: &[String], known: &[&str]) -> Result<HashMap<String, String>, String> {
    crate::args::options(args, known, &format!("usage:\n{USAGE}"))
}

fn required<'a>(opts: &'a HashMap<String, String>, k: &str) -> Result<&'a str, String> {
    opts.get(k)
        .map(String::as_str)
        .ok_or_else(|| format!("--{k} is required\nusage:\n{USAGE}"))
}

pub fn keygen(args: &[String]) -> Result<(), String> {
    let opts = options(args, &["out", "name"])?;
    let name = opts.get("name").map(String::as_str).unwrap_or("berth");
    let (secret, public) =
        keys::generate(Path::new(required(&opts, "out")?), name).map_err(|e| e.to_string())?;
    println!("secret key {}", secret.display());
    println!("public key {}", public.display());
    Ok(())
}

/// The kernel arguments of a cmdline file: its lines without comments, joined.
pub fn cmdline_args(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn bundle(args: &[String]) -> Result<(), String> {
    let opts = options(
        args,
        &[
            "key", "root", "kernel", "manifest", "cmdline", "build-id", "min-from", "version",
            "out",
        ],
    )?;
    let path = |k: &str| required(&opts, k).map(PathBuf::from);
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let manifest_path = path("manifest")?;
    let built: serde_json::Value = serde_json::from_str(&read(&manifest_path)?)
        .map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    let text = |v: &serde_json::Value, what: &str| {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{}: no {what}", manifest_path.display()))
    };
    let number = |v: &serde_json::Value, what: &str| {
        v.as_u64()
            .ok_or_else(|| format!("{}: no {what}", manifest_path.display()))
    };
    let root = &built["root"];
    let version = match opts.get("version") {
        Some(v) => v.clone(),
        None => text(&built["version"], "version")?,
    };
    let o = CreateOptions {
        key: path("key")?,
        root: path("root")?,
        kernel: path("kernel")?,
        min_from_version: opts
            .get("min-from")
            .cloned()
            .unwrap_or_else(|| "0.0.0".into()),
        os_version: version,
        build_id: opts
            .get("build-id")
            .cloned()
            .unwrap_or_else(|| "unknown".into()),
        kernel_release: text(&built["kernel_release"], "kernel_release")?,
        verity: VerityInfo {
            hash: crate::verity::HASH.into(),
            data_blocks: number(&root["data_blocks"], "root.data_blocks")?,
            hash_offset_blocks: number(&root["hash_offset_blocks"], "root.hash_offset_blocks")?,
            root_hash: text(&root["root_hash"], "root.root_hash")?,
            salt: text(&root["salt"], "root.salt")?,
        },
        boot_args: cmdline_args(&read(&path("cmdline")?)?),
        out: path("out")?,
    };
    let m = super::create(&o).map_err(|e| e.to_string())?;
    let size = std::fs::metadata(&o.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}: Berth {} ({}), root {} bytes, kernel {} bytes, bundle {:.1} MiB",
        o.out.display(),
        m.os_version,
        m.build_id,
        m.root().size,
        m.kernel().size,
        size as f64 / 1048576.0
    );
    Ok(())
}

pub fn verify(args: &[String]) -> Result<(), String> {
    let (file, rest) = args
        .split_last()
        .ok_or_else(|| format!("a bundle file is required\nusage:\n{USAGE}"))?;
    let opts = options(rest, &["keys"])?;
    let keys = TrustedKeys::load(Path::new(required(&opts, "keys")?)).map_err(|e| e.to_string())?;
    let m = super::verify_file(Path::new(file), &keys).map_err(|e| format!("{file}: {e}"))?;
    println!(
        "{file}: valid, Berth {} ({}), kernel {}, root hash {}",
        m.os_version, m.build_id, m.kernel_release, m.verity.root_hash
    );
    Ok(())
}

/// `berth-image disk --key A.pub[,B.pub...]`: puts the public keys into the root tree's
/// trusted keys directory, after checking that each is a public key (never a secret one).
pub fn embed_keys(rootfs: &Path, list: &str) -> Result<(), String> {
    let dir = rootfs.join(keys::TRUSTED_KEYS_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for key in list.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        let src = Path::new(key);
        let name = src
            .file_name()
            .filter(|_| src.extension().is_some_and(|e| e == "pub"))
            .ok_or_else(|| format!("--key {key}: a public key file NAME.pub is expected"))?;
        keys::load_public(src).map_err(|e| format!("--key {e}"))?;
        let dest = dir.join(name);
        std::fs::copy(src, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    }
    TrustedKeys::load(&dir).map_err(|e| e.to_string())?;
    Ok(())
}
