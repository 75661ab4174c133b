//! System extensions: further erofs images in a root slot, after the root erofs and inside
//! the data area its dm-verity tree covers, so they are verified, updated and rolled back
//! together with the root.
//!
//! Slot data layout:
//! `[root erofs][header][ext erofs][header][ext erofs]...` then the verity superblock and tree.
//! The first header starts at the root erofs's size (from its superblock) rounded up to 4096.
//! A header is [`HEADER_SIZE`] bytes, ASCII text padded with NULs:
//! `berth-extension 1\nname=<name>\nsize=<bytes>\n`. The extension's erofs follows its header;
//! the next header follows the erofs. Anything else where a header could be ends the list.

use std::collections::BTreeSet;

/// The size of one header, and the alignment of everything in the chain.
pub const HEADER_SIZE: u64 = 4096;

/// At most this many extensions are read from one slot.
pub const MAX_EXTENSIONS: usize = 16;

/// Longest extension name.
pub const MAX_NAME: usize = 32;

/// The first line of a header without its version.
const MAGIC: &str = "berth-extension ";
const VERSION: &str = "1";

/// Where the erofs superblock sits, and its fields (little-endian).
const EROFS_SB_OFFSET: u64 = 1024;
const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
const EROFS_SB_BLKSZBITS: usize = 12;
const EROFS_SB_BLOCKS: usize = 36;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("extension name {0:?} must match [a-z0-9][a-z0-9-]{{0,31}}")]
    Name(String),
    #[error("extension size {0} must be a non-zero multiple of 4096")]
    Size(u64),
    #[error("unsupported extension header version {0:?} (this build reads version 1)")]
    Version(String),
    #[error("extension header is not ASCII text padded with NULs")]
    NotText,
    #[error("extension header line {0:?} is not understood")]
    Line(String),
    #[error("extension header has no {0} line")]
    Missing(&'static str),
    #[error("extension header has two {0} lines")]
    Twice(&'static str),
    #[error("extension header text is longer than {HEADER_SIZE} bytes")]
    TooLong,
}

/// Errors reading the chain, with the byte offset (in the slot's data) they concern.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("cannot read the root erofs superblock: {0}")]
    ReadSuperblock(#[source] std::io::Error),
    #[error("the root is not an erofs image (magic {0:#010x})")]
    NotErofs(u32),
    #[error("the root erofs has an unsupported block size 2^{0}")]
    BlockSize(u8),
    #[error("the root erofs ({root} bytes) is larger than the device ({device} bytes)")]
    RootTooBig { root: u64, device: u64 },
    #[error("cannot read the extension header at offset {offset}: {source}")]
    Read {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("bad extension header at offset {offset}: {source}")]
    Header {
        offset: u64,
        #[source]
        source: HeaderError,
    },
    #[error("extension {name} at offset {offset}: {size} bytes run past the device's end ({device} bytes)")]
    PastEnd {
        name: String,
        offset: u64,
        size: u64,
        device: u64,
    },
    #[error(
        "extension {name} at offset {offset}: the name is already used by an earlier extension"
    )]
    Duplicate { name: String, offset: u64 },
    #[error(
        "more than {MAX_EXTENSIONS} extensions: the one at offset {offset} and after are ignored"
    )]
    TooMany { offset: u64 },
}

/// One extension's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    /// The erofs image's size in bytes.
    pub size: u64,
}

/// Whether `name` is a valid extension name: `[a-z0-9][a-z0-9-]{0,31}`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    let ok =
        |c: &u8, dash: bool| c.is_ascii_lowercase() || c.is_ascii_digit() || (dash && *c == b'-');
    !b.is_empty() && b.len() <= MAX_NAME && ok(&b[0], false) && b[1..].iter().all(|c| ok(c, true))
}

fn check_size(size: u64) -> Result<(), HeaderError> {
    if size == 0 || size % HEADER_SIZE != 0 {
        return Err(HeaderError::Size(size));
    }
    Ok(())
}

impl Header {
    pub fn new(name: &str, size: u64) -> Result<Header, HeaderError> {
        if !valid_name(name) {
            return Err(HeaderError::Name(name.into()));
        }
        check_size(size)?;
        Ok(Header {
            name: name.into(),
            size,
        })
    }

    /// The 4096-byte block written before the extension's erofs.
    pub fn encode(&self) -> Vec<u8> {
        let mut block =
            format!("{MAGIC}{VERSION}\nname={}\nsize={}\n", self.name, self.size).into_bytes();
        // A valid name keeps the text far below the block size.
        block.resize(HEADER_SIZE as usize, 0);
        block
    }

    /// Parses a header block. `Ok(None)`: the block is not a header (the end of the list).
    pub fn parse(block: &[u8]) -> Result<Option<Header>, HeaderError> {
        if !block.starts_with(MAGIC.as_bytes()) {
            return Ok(None);
        }
        if block.len() > HEADER_SIZE as usize {
            return Err(HeaderError::TooLong);
        }
        let text_len = block.iter().position(|&b| b == 0).unwrap_or(block.len());
        if block[text_len..].iter().any(|&b| b != 0) {
            return Err(HeaderError::NotText);
        }
        let text = std::str::from_utf8(&block[..text_len])
            .ok()
            .filter(|t| t.is_ascii())
            .ok_or(HeaderError::NotText)?;
        let mut lines = text.split_terminator('\n');
        let version = lines
            .next()
            .and_then(|l| l.strip_prefix(MAGIC))
            .unwrap_or_default();
        if version != VERSION {
            return Err(HeaderError::Version(version.into()));
        }
        let (mut name, mut size) = (None, None);
        for line in lines {
            let (slot, field, value) = if let Some(v) = line.strip_prefix("name=") {
                (&mut name, "name", v)
            } else if let Some(v) = line.strip_prefix("size=") {
                (&mut size, "size", v)
            } else {
                return Err(HeaderError::Line(line.into()));
            };
            if slot.replace(value).is_some() {
                return Err(HeaderError::Twice(field));
            }
        }
        if !text.ends_with('\n') {
            return Err(HeaderError::Line(
                text.rsplit('\n').next().unwrap_or_default().into(),
            ));
        }
        let name = name.ok_or(HeaderError::Missing("name"))?;
        let size = size.ok_or(HeaderError::Missing("size"))?;
        // Digits only: no sign, no spaces.
        let size = match size.bytes().all(|b| b.is_ascii_digit()) {
            true => size.parse::<u64>().ok(),
            false => None,
        }
        .ok_or_else(|| HeaderError::Line(format!("size={size}")))?;
        Header::new(name, size).map(Some)
    }
}

/// Positioned reads from a device or an in-memory image.
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// The byte size of an erofs image from its superblock (`sb` holds at least the image's
/// first 1024 + 64 bytes).
pub fn erofs_size(sb: &[u8]) -> Result<u64, ChainError> {
    let eof = || ChainError::ReadSuperblock(std::io::ErrorKind::UnexpectedEof.into());
    let at = EROFS_SB_OFFSET as usize;
    let le32 = |off: usize| -> Result<u32, ChainError> {
        let b = sb.get(at + off..at + off + 4).ok_or_else(eof)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let magic = le32(0)?;
    if magic != EROFS_MAGIC {
        return Err(ChainError::NotErofs(magic));
    }
    let bits = *sb.get(at + EROFS_SB_BLKSZBITS).ok_or_else(eof)?;
    if !(9..=16).contains(&bits) {
        return Err(ChainError::BlockSize(bits));
    }
    Ok(u64::from(le32(EROFS_SB_BLOCKS)?) << bits)
}

/// Where the first extension header goes after a root erofs of `root_size` bytes.
pub fn first_header_offset(root_size: u64) -> u64 {
    root_size.div_ceil(HEADER_SIZE) * HEADER_SIZE
}

/// One extension found in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub name: String,
    /// Offset of its header in the slot's data; the erofs starts [`HEADER_SIZE`] later.
    pub header_offset: u64,
    /// The erofs image's size.
    pub size: u64,
}

impl Extension {
    /// Offset of the erofs image in the slot's data.
    pub fn data_offset(&self) -> u64 {
        self.header_offset + HEADER_SIZE
    }
}

/// What [`walk`] found.
#[derive(Debug)]
pub struct Chain {
    /// The root erofs's size.
    pub root_size: u64,
    /// In chain order: each extension, or the error that made it unusable. An error that
    /// hides where the next header is (a broken header, a size past the end) is last.
    pub entries: Vec<Result<Extension, ChainError>>,
}

/// Walks the extension headers of a slot's data area (`device_size` bytes). Fails only when
/// the root erofs's superblock cannot be read; problems with one extension are in the list.
pub fn walk<D: ReadAt + ?Sized>(device: &D, device_size: u64) -> Result<Chain, ChainError> {
    let mut sb = [0u8; 1024 + 64];
    device
        .read_exact_at(&mut sb, 0)
        .map_err(ChainError::ReadSuperblock)?;
    let root_size = erofs_size(&sb)?;
    if root_size > device_size {
        return Err(ChainError::RootTooBig {
            root: root_size,
            device: device_size,
        });
    }
    let mut entries = Vec::new();
    let mut names = BTreeSet::new();
    let mut found = 0;
    let mut offset = first_header_offset(root_size);
    let mut block = vec![0u8; HEADER_SIZE as usize];
    while offset
        .checked_add(HEADER_SIZE)
        .is_some_and(|end| end <= device_size)
    {
        if let Err(source) = device.read_exact_at(&mut block, offset) {
            entries.push(Err(ChainError::Read { offset, source }));
            break;
        }
        let header = match Header::parse(&block) {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(source) => {
                entries.push(Err(ChainError::Header { offset, source }));
                break;
            }
        };
        if found == MAX_EXTENSIONS {
            entries.push(Err(ChainError::TooMany { offset }));
            break;
        }
        found += 1;
        let end = (offset + HEADER_SIZE).checked_add(header.size);
        let Some(end) = end.filter(|&e| e <= device_size) else {
            entries.push(Err(ChainError::PastEnd {
                name: header.name,
                offset,
                size: header.size,
                device: device_size,
            }));
            break;
        };
        if names.insert(header.name.clone()) {
            entries.push(Ok(Extension {
                name: header.name,
                header_offset: offset,
                size: header.size,
            }));
        } else {
            entries.push(Err(ChainError::Duplicate {
                name: header.name,
                offset,
            }));
        }
        offset = end;
    }
    Ok(Chain { root_size, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "containerd", "0", "a-b-9", &"x".repeat(32)] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "-a", "A", "a_b", "a.b", "a b", "é", &"x".repeat(33)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn encode_then_parse() {
        let h = Header::new("containerd", 8192).unwrap();
        let block = h.encode();
        assert_eq!(block.len(), 4096);
        assert!(block.starts_with(b"berth-extension 1\nname=containerd\nsize=8192\n\0"));
        assert!(block[45..].iter().all(|&b| b == 0));
        assert_eq!(Header::parse(&block), Ok(Some(h)));
    }

    #[test]
    fn new_refuses_bad_fields() {
        assert_eq!(
            Header::new("Bad", 4096),
            Err(HeaderError::Name("Bad".into()))
        );
        assert_eq!(Header::new("ok", 0), Err(HeaderError::Size(0)));
        assert_eq!(Header::new("ok", 4097), Err(HeaderError::Size(4097)));
    }

    fn block(text: &str) -> Vec<u8> {
        let mut b = text.as_bytes().to_vec();
        b.resize(4096, 0);
        b
    }

    #[test]
    fn not_a_header_ends_the_list() {
        assert_eq!(Header::parse(&[0u8; 4096]), Ok(None));
        assert_eq!(Header::parse(&block("garbage")), Ok(None));
        assert_eq!(Header::parse(&block("verity\0\0")), Ok(None));
        assert_eq!(Header::parse(b""), Ok(None));
    }

    #[test]
    fn each_bad_field_is_an_error() {
        let err = |t: &str| Header::parse(&block(t)).unwrap_err();
        assert_eq!(
            err("berth-extension 2\nname=a\nsize=4096\n"),
            HeaderError::Version("2".into())
        );
        assert_eq!(
            err("berth-extension 1\nname=A\nsize=4096\n"),
            HeaderError::Name("A".into())
        );
        assert_eq!(
            err("berth-extension 1\nname=a\nsize=4095\n"),
            HeaderError::Size(4095)
        );
        assert_eq!(
            err("berth-extension 1\nname=a\nsize=0\n"),
            HeaderError::Size(0)
        );
        assert_eq!(
            err("berth-extension 1\nname=a\nsize=+4096\n"),
            HeaderError::Line("size=+4096".into())
        );
        assert_eq!(
            err("berth-extension 1\nname=a\nsize=99999999999999999999999\n"),
            HeaderError::Line("size=99999999999999999999999".into())
        );
        assert_eq!(
            err("berth-extension 1\nname=a\n"),
            HeaderError::Missing("size")
        );
        assert_eq!(
            err("berth-extension 1\nsize=4096\n"),
            HeaderError::Missing("name")
        );
        assert_eq!(
            err("berth-extension 1\nname=a\nname=b\nsize=4096\n"),
            HeaderError::Twice("name")
        );
        assert_eq!(
            err("berth-extension 1\nname=a\nsize=4096\nextra=1\n"),
            HeaderError::Line("extra=1".into())
        );
        assert_eq!(
            err("berth-extension 1\nname=a\nsize=4096"),
            HeaderError::Line("size=4096".into())
        );
        let mut b = block("berth-extension 1\nname=a\nsize=4096\n");
        b[4000] = 1;
        assert_eq!(Header::parse(&b), Err(HeaderError::NotText));
        assert_eq!(
            err("berth-extension 1\nname=\u{e9}\nsize=4096\n"),
            HeaderError::NotText
        );
    }

    /// A fake erofs of `blocks` 4 KiB blocks: only the superblock fields the walk reads.
    fn erofs(blocks: u32, fill: u8) -> Vec<u8> {
        let mut img = vec![fill; blocks as usize * 4096];
        img[1024..1028].copy_from_slice(&EROFS_MAGIC.to_le_bytes());
        img[1024 + 12] = 12;
        img[1024 + 36..1024 + 40].copy_from_slice(&blocks.to_le_bytes());
        img
    }

    fn with_ext(mut dev: Vec<u8>, name: &str, blocks: u32) -> Vec<u8> {
        dev.extend(
            Header::new(name, u64::from(blocks) * 4096)
                .unwrap()
                .encode(),
        );
        dev.extend(erofs(blocks, 0xee));
        dev
    }

    fn ok(chain: &Chain) -> Vec<(String, u64, u64)> {
        chain
            .entries
            .iter()
            .filter_map(|e| e.as_ref().ok())
            .map(|e| (e.name.clone(), e.data_offset(), e.size))
            .collect()
    }

    fn walk_all(dev: &[u8]) -> Chain {
        walk(dev, dev.len() as u64).unwrap()
    }

    #[test]
    fn superblock_size() {
        assert_eq!(erofs_size(&erofs(3, 0)).unwrap(), 3 * 4096);
        let mut small = erofs(3, 0);
        small[1024 + 12] = 9;
        assert_eq!(erofs_size(&small).unwrap(), 3 * 512);
        assert_eq!(first_header_offset(3 * 512), 4096);
        assert!(matches!(
            erofs_size(&[0u8; 2048]),
            Err(ChainError::NotErofs(0))
        ));
        assert!(matches!(
            erofs_size(&[0u8; 100]),
            Err(ChainError::ReadSuperblock(_))
        ));
    }

    #[test]
    fn no_extension() {
        let dev = erofs(4, 0xaa);
        let chain = walk_all(&dev);
        assert_eq!(chain.root_size, 4 * 4096);
        assert!(chain.entries.is_empty());
        // The verity superblock (or zeros) after the data is not a header either.
        let mut dev = erofs(4, 0);
        dev.extend(block("verity\0\x01\0"));
        assert!(walk_all(&dev).entries.is_empty());
    }

    #[test]
    fn one_and_two_extensions() {
        let dev = with_ext(erofs(4, 0), "hello", 2);
        let chain = walk_all(&dev);
        assert_eq!(ok(&chain), [("hello".to_string(), 5 * 4096, 2 * 4096)]);
        assert_eq!(chain.entries.len(), 1);

        let dev = with_ext(with_ext(erofs(4, 0), "hello", 2), "containerd", 3);
        let chain = walk_all(&dev);
        assert_eq!(
            ok(&chain),
            [
                ("hello".to_string(), 5 * 4096, 2 * 4096),
                ("containerd".to_string(), 8 * 4096, 3 * 4096)
            ]
        );
    }

    #[test]
    fn garbage_or_zeros_after_end_the_list() {
        let mut dev = with_ext(erofs(4, 0), "hello", 2);
        dev.extend(block("not a header"));
        dev.extend(Header::new("hidden", 4096).unwrap().encode());
        dev.extend(erofs(1, 0));
        let chain = walk_all(&dev);
        assert_eq!(chain.entries.len(), 1);
        let mut dev = with_ext(erofs(4, 0), "hello", 2);
        dev.extend([0u8; 8192]);
        assert_eq!(walk_all(&dev).entries.len(), 1);
    }

    #[test]
    fn truncated() {
        // The erofs runs past the end: an error for it.
        let mut dev = with_ext(erofs(4, 0), "hello", 2);
        dev.truncate(dev.len() - 4096);
        let chain = walk_all(&dev);
        assert!(matches!(
            &chain.entries[..],
            [Err(ChainError::PastEnd { name, offset: 16384, .. })] if name == "hello"
        ));
        // A header cut short is the end of the data, not a header.
        let mut dev = with_ext(erofs(4, 0), "hello", 2);
        dev.extend(&Header::new("cut", 4096).unwrap().encode()[..100]);
        assert_eq!(ok(&walk_all(&dev)).len(), 1);
        // The device is smaller than the root.
        let dev = erofs(4, 0);
        assert!(matches!(
            walk(&dev[..], 4096),
            Err(ChainError::RootTooBig { .. })
        ));
        assert!(matches!(
            walk(&dev[..100], 100),
            Err(ChainError::ReadSuperblock(_))
        ));
    }

    #[test]
    fn a_bad_extension_leaves_the_others() {
        // Duplicate name: an error for the second, the third still found.
        let dev = with_ext(with_ext(with_ext(erofs(1, 0), "a", 1), "a", 1), "b", 1);
        let chain = walk_all(&dev);
        assert_eq!(chain.entries.len(), 3);
        assert!(matches!(
            &chain.entries[1],
            Err(ChainError::Duplicate { name, offset: 12288 }) if name == "a"
        ));
        assert_eq!(
            ok(&chain).iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        // A broken header after a good one: the good one stays.
        let mut dev = with_ext(erofs(1, 0), "a", 1);
        dev.extend(block("berth-extension 1\nname=Bad\nsize=4096\n"));
        dev.extend(erofs(1, 0));
        let chain = walk_all(&dev);
        assert_eq!(ok(&chain).len(), 1);
        assert!(matches!(
            &chain.entries[1],
            Err(ChainError::Header {
                offset: 12288,
                source: HeaderError::Name(_)
            })
        ));
    }

    #[test]
    fn at_most_sixteen() {
        let mut dev = erofs(1, 0);
        for i in 0..17 {
            dev = with_ext(dev, &format!("e{i}"), 1);
        }
        let chain = walk_all(&dev);
        assert_eq!(ok(&chain).len(), 16);
        assert!(matches!(
            chain.entries.last(),
            Some(Err(ChainError::TooMany { .. }))
        ));
    }
}
