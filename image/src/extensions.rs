//! System extensions in the root slot: each extension's erofs image goes after the root erofs,
//! behind a header (see `berth_formats::extension`), before the verity tree is built, so the
//! one tree covers the root and every extension.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use berth_formats::extension::{
    self, ChainError, Header, HeaderError, HEADER_SIZE, MAX_EXTENSIONS,
};
use serde::{Deserialize, Serialize};

use crate::derive;
use crate::host::HostError;

#[derive(Debug, thiserror::Error)]
pub enum ExtensionError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("extension {name}: {source}")]
    Header {
        name: String,
        #[source]
        source: HeaderError,
    },
    #[error("{path}: {source}")]
    Erofs {
        path: String,
        #[source]
        source: ChainError,
    },
    #[error("{path} is {size} bytes, its erofs superblock says {erofs}")]
    SizeMismatch { path: String, size: u64, erofs: u64 },
    #[error("extension {0} given twice")]
    Duplicate(String),
    #[error("{0} extensions given; a slot holds at most {MAX_EXTENSIONS}")]
    TooMany(usize),
    #[error("--extension {0:?}: expected NAME=PATH")]
    Syntax(String),
}

/// An extension to put into the slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionSource {
    pub name: String,
    /// An erofs image whose size is a multiple of 4096.
    pub image: PathBuf,
}

impl ExtensionSource {
    /// Parses `NAME=PATH` (the `--extension` option).
    pub fn parse(spec: &str) -> Result<ExtensionSource, ExtensionError> {
        let (name, path) = spec
            .split_once('=')
            .filter(|(n, p)| !n.is_empty() && !p.is_empty())
            .ok_or_else(|| ExtensionError::Syntax(spec.into()))?;
        Ok(ExtensionSource {
            name: name.into(),
            image: PathBuf::from(path),
        })
    }
}

/// An extension as placed in the slot (recorded in the manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtensionEntry {
    pub name: String,
    /// Offset of the erofs image in the slot's data (its header is 4096 bytes before).
    pub offset: u64,
    pub size: u64,
    pub sha256: String,
}

fn erofs_size(path: &Path) -> Result<u64, ExtensionError> {
    let mut sb = Vec::with_capacity(2048);
    File::open(path)
        .and_then(|f| f.take(2048).read_to_end(&mut sb))
        .map_err(HostError::io(path))?;
    extension::erofs_size(&sb).map_err(|source| ExtensionError::Erofs {
        path: path.display().to_string(),
        source,
    })
}

/// Appends the extensions to the root erofs `root_img` (padded to 4096 first) and returns
/// where each went. `root_img` must hold only the erofs.
pub fn append(
    root_img: &Path,
    extensions: &[ExtensionSource],
) -> Result<Vec<ExtensionEntry>, ExtensionError> {
    if extensions.len() > MAX_EXTENSIONS {
        return Err(ExtensionError::TooMany(extensions.len()));
    }
    // Check everything before the root image is touched.
    let mut headers = Vec::new();
    for (i, ext) in extensions.iter().enumerate() {
        if extensions[..i].iter().any(|e| e.name == ext.name) {
            return Err(ExtensionError::Duplicate(ext.name.clone()));
        }
        let size = std::fs::metadata(&ext.image)
            .map_err(HostError::io(&ext.image))?
            .len();
        let header = Header::new(&ext.name, size).map_err(|source| ExtensionError::Header {
            name: ext.name.clone(),
            source,
        })?;
        let erofs = erofs_size(&ext.image)?;
        if erofs > size {
            return Err(ExtensionError::SizeMismatch {
                path: ext.image.display().to_string(),
                size,
                erofs,
            });
        }
        headers.push(header);
    }
    if extensions.is_empty() {
        return Ok(Vec::new());
    }

    // PID 1 finds the first header from the root's superblock, not from the file's length.
    let root_size = erofs_size(root_img)?;
    let mut root = File::options()
        .read(true)
        .write(true)
        .open(root_img)
        .map_err(HostError::io(root_img))?;
    let file_size = root.metadata().map_err(HostError::io(root_img))?.len();
    let mut offset = extension::first_header_offset(root_size);
    if file_size > offset {
        return Err(ExtensionError::SizeMismatch {
            path: root_img.display().to_string(),
            size: file_size,
            erofs: root_size,
        });
    }
    root.set_len(offset).map_err(HostError::io(root_img))?;
    root.seek(SeekFrom::Start(offset))
        .map_err(HostError::io(root_img))?;
    let mut entries = Vec::new();
    for (ext, header) in extensions.iter().zip(headers) {
        root.write_all(&header.encode())
            .map_err(HostError::io(root_img))?;
        let mut image = File::open(&ext.image).map_err(HostError::io(&ext.image))?;
        let copied = std::io::copy(&mut image, &mut root).map_err(HostError::io(root_img))?;
        if copied != header.size {
            // The image changed size between the check and the copy.
            return Err(ExtensionError::Header {
                name: ext.name.clone(),
                source: HeaderError::Size(copied),
            });
        }
        entries.push(ExtensionEntry {
            name: header.name,
            offset: offset + HEADER_SIZE,
            size: header.size,
            sha256: derive::sha256_file(&ext.image)?,
        });
        offset += HEADER_SIZE + header.size;
    }
    root.sync_all().map_err(HostError::io(root_img))?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A fake erofs image: only the superblock fields the chain walk reads.
    fn erofs(path: &Path, blocks: u32, bits: u8, len: u64) {
        let mut img = vec![0u8; len as usize];
        img[1024..1028].copy_from_slice(&0xE0F5_E1E2u32.to_le_bytes());
        img[1024 + 12] = bits;
        img[1024 + 36..1024 + 40].copy_from_slice(&blocks.to_le_bytes());
        std::fs::write(path, img).unwrap();
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-ext-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn src(name: &str, image: &Path) -> ExtensionSource {
        ExtensionSource {
            name: name.into(),
            image: image.into(),
        }
    }

    #[test]
    fn appended_chain_is_what_pid1_walks() {
        let dir = scratch("chain");
        let root = dir.join("root.img");
        // A root in 512-byte blocks whose size is not a multiple of 4096: padded.
        erofs(&root, 9, 9, 9 * 512);
        let (a, b) = (dir.join("a.img"), dir.join("b.img"));
        erofs(&a, 2, 12, 2 * 4096);
        erofs(&b, 1, 12, 4096);
        let entries = append(&root, &[src("a", &a), src("bee", &b)]).unwrap();
        assert_eq!(
            entries
                .iter()
                .map(|e| (e.name.as_str(), e.offset, e.size))
                .collect::<Vec<_>>(),
            [("a", 12288, 8192), ("bee", 24576, 4096)]
        );
        assert_eq!(entries[0].sha256, derive::sha256_file(&a).unwrap());
        let data = std::fs::read(&root).unwrap();
        assert_eq!(data.len(), 28672);
        assert_eq!(&data[24576..28672], &std::fs::read(&b).unwrap()[..]);
        let chain = extension::walk(&data[..], data.len() as u64).unwrap();
        let found: Vec<_> = chain
            .entries
            .iter()
            .map(|e| {
                e.as_ref()
                    .map(|e| (e.name.clone(), e.data_offset(), e.size))
                    .unwrap()
            })
            .collect();
        assert_eq!(
            found,
            [
                ("a".to_string(), 12288, 8192),
                ("bee".to_string(), 24576, 4096)
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_extension_leaves_the_root_alone() {
        let dir = scratch("none");
        let root = dir.join("root.img");
        erofs(&root, 9, 9, 9 * 512);
        assert!(append(&root, &[]).unwrap().is_empty());
        assert_eq!(std::fs::metadata(&root).unwrap().len(), 9 * 512);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_extensions_are_refused_before_writing() {
        let dir = scratch("bad");
        let root = dir.join("root.img");
        erofs(&root, 1, 12, 4096);
        let good = dir.join("good.img");
        erofs(&good, 1, 12, 4096);
        let odd = dir.join("odd.img");
        erofs(&odd, 1, 12, 4096 + 512);
        let short = dir.join("short.img");
        erofs(&short, 3, 12, 8192);
        let notfs = dir.join("notfs.img");
        std::fs::write(&notfs, vec![0u8; 4096]).unwrap();
        let err = |exts: &[ExtensionSource]| append(&root, exts).unwrap_err().to_string();
        assert!(err(&[src("Bad", &good)]).contains("must match"));
        assert!(err(&[src("odd", &odd)]).contains("multiple of 4096"));
        assert!(err(&[src("short", &short)]).contains("superblock says 12288"));
        assert!(err(&[src("notfs", &notfs)]).contains("not an erofs"));
        assert!(err(&[src("a", &good), src("a", &good)]).contains("given twice"));
        assert!(err(&[src("gone", &dir.join("nope"))]).contains("nope"));
        let many: Vec<_> = (0..17).map(|i| src(&format!("e{i}"), &good)).collect();
        assert!(err(&many).contains("at most 16"));
        assert_eq!(std::fs::metadata(&root).unwrap().len(), 4096);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parse_option() {
        assert_eq!(
            ExtensionSource::parse("hello=/x/h.erofs").unwrap(),
            src("hello", Path::new("/x/h.erofs"))
        );
        assert!(ExtensionSource::parse("hello").is_err());
        assert!(ExtensionSource::parse("=x").is_err());
        assert!(ExtensionSource::parse("a=").is_err());
    }
}
