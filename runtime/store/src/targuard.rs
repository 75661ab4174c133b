//! A reader that follows the framing of a tar stream as it passes and fails it as soon as a
//! GNU long name (`L`), long link (`K`) or PAX (`x`, `g`) header claims more than
//! [`MAX_EXTENSION_HEADER`] bytes.
//!
//! The `tar` crate reads the body of these headers whole into memory, whatever size they
//! claim: a few kilobytes of gzip can announce gigabytes. Checked here, the claim is refused
//! once its header has arrived, before any of its body is read or buffered.
//!
//! The framing mirrors the `tar` crate's reader so both always agree on where a header is:
//! header sizes in octal or base-256 (parsed by `tar` itself), data padded to 512 bytes, a PAX
//! `size` record overriding the size of the entry it describes, GNU sparse extension blocks
//! between a sparse header and its data, and the end at the first all-zero block.

use std::io::{self, Read};

use tar::{EntryType, Header};

/// Largest body a long name, long link or PAX header may have. Paths are at most
/// `PATH_MAX` (4096) bytes; PAX records also carry xattrs, whose values Linux caps at 64 KiB.
pub const MAX_EXTENSION_HEADER: u64 = 1 << 20;

const BLOCK: usize = 512;
/// Offset of the `isextended` flag in a GNU sparse extension block (after 21 entries of 24).
const EXT_IS_EXTENDED: usize = 504;

/// An extension header that claims more than [`MAX_EXTENSION_HEADER`] bytes.
#[derive(Debug, thiserror::Error)]
#[error(
    "tar {kind} header claims {size} bytes, more than the {limit} Berth accepts",
    limit = MAX_EXTENSION_HEADER
)]
pub struct OversizedHeader {
    /// What the header is: "GNU long name", "PAX", ...
    pub kind: &'static str,
    pub size: u64,
}

enum State {
    /// Collecting a header block (`filled` bytes so far).
    Header { filled: usize },
    /// Collecting a GNU sparse extension block; `data` bytes of the entry follow the last one.
    SparseExt { filled: usize, data: u64 },
    /// Inside an entry's data and padding; `pax` collects the body of a PAX header, whose
    /// `size` record changes where the next header is.
    Body {
        remaining: u64,
        pax: Option<Vec<u8>>,
    },
    /// After the end-of-archive block: nothing more is parsed.
    End,
}

/// Wraps a tar stream; see the module documentation.
pub struct TarGuard<R> {
    inner: R,
    state: State,
    header: Header,
    ext: [u8; BLOCK],
    /// A PAX header was read: its `size` record (if any) applies to the next entry.
    pax_pending: Option<Option<u64>>,
}

impl<R: Read> TarGuard<R> {
    pub fn new(inner: R) -> Self {
        TarGuard {
            inner,
            state: State::Header { filled: 0 },
            header: Header::new_old(),
            ext: [0; BLOCK],
            pax_pending: None,
        }
    }

    /// Advances the framing over `data`, bytes the caller is about to receive.
    fn scan(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match &mut self.state {
                State::End => return Ok(()),
                State::Header { filled } => {
                    let n = (BLOCK - *filled).min(data.len());
                    self.header.as_mut_bytes()[*filled..*filled + n].copy_from_slice(&data[..n]);
                    *filled += n;
                    data = &data[n..];
                    if *filled == BLOCK {
                        self.state = self.header_done()?;
                    }
                }
                State::SparseExt { filled, data: size } => {
                    let n = (BLOCK - *filled).min(data.len());
                    self.ext[*filled..*filled + n].copy_from_slice(&data[..n]);
                    *filled += n;
                    data = &data[n..];
                    if *filled == BLOCK {
                        let size = *size;
                        self.state = if self.ext[EXT_IS_EXTENDED] == 1 {
                            State::SparseExt {
                                filled: 0,
                                data: size,
                            }
                        } else {
                            body(size, None)?
                        };
                    }
                }
                State::Body { remaining, pax } => {
                    let n = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(data.len());
                    if let Some(pax) = pax {
                        // The body proper (its padding is zeros past the claimed size, which
                        // is at most MAX_EXTENSION_HEADER, so this never grows past it).
                        let room = (MAX_EXTENSION_HEADER as usize).saturating_sub(pax.len());
                        pax.extend_from_slice(&data[..n.min(room)]);
                    }
                    *remaining -= n as u64;
                    data = &data[n..];
                    if *remaining == 0 {
                        if let State::Body { pax: Some(pax), .. } = &self.state {
                            let size = tar_size_record(pax, self.header.entry_size()?);
                            self.pax_pending = Some(size);
                        }
                        self.state = State::Header { filled: 0 };
                    }
                }
            }
        }
        Ok(())
    }

    /// The state after a complete header block.
    fn header_done(&mut self) -> io::Result<State> {
        let h = &self.header;
        if h.as_bytes().iter().all(|b| *b == 0) {
            return Ok(State::End);
        }
        let kind = h.entry_type();
        let size = h.entry_size()?;
        let extension = match kind {
            EntryType::GNULongName => Some("GNU long name"),
            EntryType::GNULongLink => Some("GNU long link"),
            EntryType::XHeader => Some("PAX"),
            EntryType::XGlobalHeader => Some("PAX global"),
            _ => None,
        };
        if let Some(kind) = extension {
            if size > MAX_EXTENSION_HEADER {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    OversizedHeader { kind, size },
                ));
            }
        }
        // As `tar` does: only ustar and GNU headers are extensions; an old-style one is an
        // ordinary entry, which takes the pending PAX records with it.
        let recognized = h.as_gnu().is_some() || h.as_ustar().is_some();
        let continues = recognized
            && matches!(
                kind,
                EntryType::GNULongName | EntryType::GNULongLink | EntryType::XHeader
            );
        if recognized && kind == EntryType::XHeader {
            return body(size, Some(Vec::new()));
        }
        let pax_size = if continues {
            None
        } else {
            self.pax_pending.take().flatten()
        };
        let size = match pax_size {
            Some(s) if extension.is_none() => s,
            _ => size,
        };
        if kind.is_gnu_sparse() && h.as_gnu().is_some_and(|g| g.is_extended()) {
            return Ok(State::SparseExt {
                filled: 0,
                data: size,
            });
        }
        body(size, None)
    }
}

/// The state for `size` bytes of entry data and their padding.
fn body(size: u64, pax: Option<Vec<u8>>) -> io::Result<State> {
    let padded = size
        .checked_add(BLOCK as u64 - 1)
        .map(|s| s & !(BLOCK as u64 - 1))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "tar entry size overflows"))?;
    Ok(if padded == 0 {
        match pax {
            // An empty PAX header still counts as one (with no size record).
            Some(_) => State::Body { remaining: 0, pax },
            None => State::Header { filled: 0 },
        }
    } else {
        State::Body {
            remaining: padded,
            pax,
        }
    })
}

/// The `size` record of a PAX body, read the way `tar` reads it (the first `size` record; an
/// unparsable record list or value counts as none).
fn tar_size_record(pax: &[u8], claimed: u64) -> Option<u64> {
    let body = &pax[..usize::try_from(claimed)
        .unwrap_or(usize::MAX)
        .min(pax.len())];
    for ext in tar::PaxExtensions::new(body) {
        let ext = ext.ok()?;
        if ext.key() != Ok("size") {
            continue;
        }
        return ext.value().ok()?.parse().ok();
    }
    None
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.scan(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A ustar header of `kind` for `path` with `size` written as `tar` writes it.
    fn header(kind: EntryType, path: &str, size: u64) -> Header {
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.set_path(path).unwrap();
        h.set_mode(0o644);
        h.set_size(size);
        h.set_cksum();
        h
    }

    /// Everything read through a guard, or its error.
    fn through_guard(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        // Small reads: headers arrive split across calls.
        let mut guard = TarGuard::new(io::BufReader::with_capacity(7, data));
        let mut buf = [0u8; 100];
        loop {
            let n = guard.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn oversized(result: io::Result<Vec<u8>>) -> OversizedHeader {
        let e = result.expect_err("an oversized header must fail the stream");
        *e.into_inner()
            .unwrap()
            .downcast::<OversizedHeader>()
            .unwrap()
    }

    /// A header claiming a huge body, with none of the body behind it.
    fn huge(kind: EntryType) -> Vec<u8> {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_path("././@LongLink").unwrap();
        h.set_size(2 << 30);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    #[test]
    fn refuses_oversized_extension_headers() {
        for (kind, name) in [
            (EntryType::GNULongName, "GNU long name"),
            (EntryType::GNULongLink, "GNU long link"),
            (EntryType::XHeader, "PAX"),
            (EntryType::XGlobalHeader, "PAX global"),
        ] {
            let e = oversized(through_guard(&huge(kind)));
            assert_eq!((e.kind, e.size), (name, 2 << 30));
        }
        // At the limit is fine; one byte more is not.
        let mut at_limit = header(EntryType::GNULongName, "x", MAX_EXTENSION_HEADER)
            .as_bytes()
            .to_vec();
        at_limit.resize(BLOCK + MAX_EXTENSION_HEADER as usize, b'a');
        assert!(through_guard(&at_limit).is_ok());
        let over = header(EntryType::GNULongName, "x", MAX_EXTENSION_HEADER + 1);
        assert_eq!(
            oversized(through_guard(over.as_bytes())).size,
            (1 << 20) + 1
        );
    }

    #[test]
    fn reads_sizes_in_base_256() {
        let mut h = header(EntryType::XHeader, "x", 0);
        // 2^40 as a GNU base-256 number: high bit set, big-endian value.
        let field = &mut h.as_mut_bytes()[124..136];
        field.fill(0);
        field[0] = 0x80;
        field[6] = 1;
        h.set_cksum();
        assert_eq!(oversized(through_guard(h.as_bytes())).size, 1 << 40);
    }

    /// An archive of every framing case, then a huge long name: the guard passes all of it
    /// unchanged and stops at the last header, which it only finds if it followed each
    /// entry's size exactly.
    #[test]
    fn follows_the_framing_to_the_last_header() {
        let mut b = tar::Builder::new(Vec::new());
        // An entry whose data holds what looks like a huge long-name header.
        let decoy = huge(EntryType::GNULongName);
        b.append(&header(EntryType::Regular, "decoy", 512), &decoy[..])
            .unwrap();
        // GNU long name and long link (written by `tar` for long paths).
        let long = "d/".repeat(80) + "file";
        let mut h = Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(4);
        b.append_data(&mut h, &long, &b"long"[..]).unwrap();
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "hard", &long).unwrap();
        // PAX records: xattrs, and a size that overrides the header's.
        b.append_pax_extensions([("SCHILY.xattr.user.a", &b"1"[..])])
            .unwrap();
        b.append(&header(EntryType::Regular, "xattr", 3), &b"abc"[..])
            .unwrap();
        b.append_pax_extensions([("size", &b"700"[..])]).unwrap();
        b.append(&header(EntryType::Regular, "paxsize", 0), &[7u8; 700][..])
            .unwrap();
        // A global PAX header and an empty local one.
        let g = b"20 comment=berth ok\n";
        b.append(
            &header(EntryType::XGlobalHeader, "g", g.len() as u64),
            &g[..],
        )
        .unwrap();
        b.append(&header(EntryType::XHeader, "x", 0), &[][..])
            .unwrap();
        b.append(&header(EntryType::Regular, "after-empty-pax", 1), &b"z"[..])
            .unwrap();
        // A sparse file with more chunks than the GNU header holds: extension blocks.
        let sparse_path =
            std::env::temp_dir().join(format!("berth-targuard-sparse-{}", std::process::id()));
        let mut f = std::fs::File::create(&sparse_path).unwrap();
        for i in 0..30u64 {
            use std::io::Seek;
            f.seek(io::SeekFrom::Start(i << 16)).unwrap();
            f.write_all(&[i as u8 + 1; 4096]).unwrap();
        }
        drop(f);
        b.append_path_with_name(&sparse_path, "sparse").unwrap();
        std::fs::remove_file(&sparse_path).unwrap();
        let mut archive = b.into_inner().unwrap();
        assert!(
            archive
                .chunks(BLOCK)
                .any(|blk| blk[156] == b'S' && blk[482] == 1),
            "the archive must have a GNU sparse entry with extension blocks"
        );

        // The whole archive (with its end blocks) passes unchanged, and `tar` reads it.
        assert_eq!(through_guard(&archive).unwrap(), archive);
        let mut names = Vec::new();
        let mut reader = tar::Archive::new(TarGuard::new(&archive[..]));
        for entry in reader.entries().unwrap() {
            let mut entry = entry.unwrap();
            names.push(String::from_utf8_lossy(&entry.path_bytes()).into_owned());
            io::copy(&mut entry, &mut io::sink()).unwrap();
        }
        assert_eq!(names.len(), 8, "{names:?}");

        // Without the end blocks, a huge long name after all of it is found.
        archive.truncate(archive.len() - 2 * BLOCK);
        archive.extend_from_slice(&huge(EntryType::GNULongName));
        assert_eq!(oversized(through_guard(&archive)).size, 2 << 30);
    }

    #[test]
    fn stops_parsing_at_the_end_of_the_archive() {
        let mut data = vec![0u8; BLOCK];
        data.extend_from_slice(&huge(EntryType::GNULongName));
        assert_eq!(through_guard(&data).unwrap(), data);
    }
}
