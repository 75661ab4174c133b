//! A position in a unit's captured output, read forward as a connection's socket drains.
//!
//! Nothing of the log is held in memory: a [`LogCursor`] opens the log file and its rotated
//! predecessors, and the connection reads it in blocks of [`BLOCK`] bytes. A plain request
//! gets the backlog (Content-Length, sizes fixed when the files were opened); with `follow`
//! the answer is chunked and goes on with what the unit writes next, across rotations. A
//! reader that falls so far behind that rotation deleted the file after its own skips to the
//! oldest file left and is told how much it lost.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;

use crate::unit_logs::LogPolicy;

/// The `Content-Type` of a log stream.
pub const CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Most bytes of backlog one request reads, across the current and rotated files.
pub const MAX_BACKLOG: u64 = 2 << 20;

/// Bytes read from a log file at a time: what one connection holds of a log at most.
pub const BLOCK: usize = 16 * 1024;

/// Identity of a file (device, inode): a rotated file keeps it under its new name.
type FileId = (u64, u64);

struct Segment {
    file: File,
    id: FileId,
    /// Next byte to read.
    pos: u64,
    /// Where to stop; `None` for the file a follower reads as it grows.
    end: Option<u64>,
}

impl Segment {
    fn open(path: &std::path::Path) -> io::Result<Option<(Segment, u64)>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let seg = Segment {
            file,
            id: (meta.dev(), meta.ino()),
            pos: 0,
            end: None,
        };
        Ok(Some((seg, meta.len())))
    }
}

/// What [`LogCursor::read`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// This many bytes were read into the buffer.
    Data(usize),
    /// Following: nothing new yet.
    Wait,
    /// Not following: the backlog is out.
    End,
    /// Following: rotation deleted output this reader had not read yet; it goes on with the
    /// oldest file left. About this many bytes were lost.
    Gap(u64),
}

/// A position in a unit's log, read forward block by block.
pub struct LogCursor {
    unit: String,
    policy: LogPolicy,
    /// Open files still to read, oldest first.
    files: VecDeque<Segment>,
    follow: bool,
    /// Bytes in the log past the position, as far as known (for the size of a gap).
    unread: u64,
    /// Bytes of backlog (the body length of a plain request).
    backlog: u64,
}

impl LogCursor {
    /// The last `lines` lines of `unit`'s log (everything within [`MAX_BACKLOG`] when
    /// `None`; a line cut by that limit is left out), and with `follow` what comes after.
    pub fn open(
        policy: &LogPolicy,
        unit: &str,
        lines: Option<usize>,
        follow: bool,
    ) -> io::Result<LogCursor> {
        let mut cursor = LogCursor {
            unit: unit.to_string(),
            policy: policy.clone(),
            files: VecDeque::new(),
            follow,
            unread: 0,
            backlog: 0,
        };
        let mut files: Vec<(Segment, u64)> = Vec::new();
        for path in cursor.chain() {
            if let Some(found) = Segment::open(&path)? {
                files.push(found);
            }
        }
        let total: u64 = files.iter().map(|(_, len)| len).sum();
        let start = start_offset(&files, total, lines)?;
        // Keep the files from the one holding `start` on, each read up to its size now.
        let mut offset = 0;
        let count = files.len();
        for (i, (mut seg, len)) in files.into_iter().enumerate() {
            if offset + len > start || i + 1 == count {
                seg.pos = start.saturating_sub(offset);
                seg.end = Some(len);
                cursor.files.push_back(seg);
            }
            offset += len;
        }
        if follow {
            // The newest file is read as it grows; rotation is noticed by its identity.
            if let Some(last) = cursor.files.back_mut() {
                last.end = None;
            }
        }
        cursor.backlog = total - start;
        cursor.unread = cursor.backlog;
        Ok(cursor)
    }

    /// Bytes of backlog this cursor started with.
    pub fn backlog(&self) -> u64 {
        self.backlog
    }

    pub fn unit(&self) -> &str {
        &self.unit
    }

    pub fn follows(&self) -> bool {
        self.follow
    }

    /// The unit wrote `n` more bytes to its log.
    pub fn notify(&mut self, n: usize) {
        self.unread = self.unread.saturating_add(n as u64);
    }

    /// The log files, oldest first: `<unit>.log.<keep>` … `<unit>.log.1`, `<unit>.log`.
    fn chain(&self) -> Vec<PathBuf> {
        (1..=self.policy.keep)
            .rev()
            .map(|n| self.policy.rotated(&self.unit, n))
            .chain(std::iter::once(self.policy.path_of(&self.unit)))
            .collect()
    }

    /// Reads the next bytes of the log into `buf`.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<Next> {
        // Bounded: each pass either returns or drops one file (at most keep + 1 are open),
        // and moving to another file returns at the next pass unless it has data.
        for _ in 0..(self.policy.keep as usize + 4) * 2 {
            let Some(seg) = self.files.front_mut() else {
                if !self.follow {
                    return Ok(Next::End);
                }
                // Nothing existed when the request came: every file there now is new output.
                match self.oldest_file()? {
                    Some(seg) => {
                        self.files.push_back(seg);
                        continue;
                    }
                    None => return Ok(Next::Wait),
                }
            };
            let want = match seg.end {
                Some(end) => buf.len().min(end.saturating_sub(seg.pos) as usize),
                None => buf.len(),
            };
            if want > 0 {
                let n = read_at(&seg.file, &mut buf[..want], seg.pos)?;
                if n > 0 {
                    seg.pos += n as u64;
                    self.unread = self.unread.saturating_sub(n as u64);
                    return Ok(Next::Data(n));
                }
            }
            if seg.end.is_some() {
                self.files.pop_front();
                continue;
            }
            // A follower read everything of its file: the log may have moved on.
            let id = seg.id;
            match self.successor(id)? {
                Successor::Same => return Ok(Next::Wait),
                Successor::Next(next) => {
                    self.files.pop_front();
                    self.files.push_back(next);
                }
                Successor::Jump(next, lost) => {
                    self.files.pop_front();
                    self.files.push_back(next);
                    return Ok(Next::Gap(lost));
                }
            }
        }
        Ok(if self.follow { Next::Wait } else { Next::End })
    }

    /// The oldest log file there is now, read from its start as it grows.
    fn oldest_file(&self) -> io::Result<Option<Segment>> {
        for path in self.chain() {
            if let Some((seg, _)) = Segment::open(&path)? {
                return Ok(Some(seg));
            }
        }
        Ok(None)
    }

    /// Where a follower that read all of file `id` goes on.
    fn successor(&mut self, id: FileId) -> io::Result<Successor> {
        let stat = |p: &PathBuf| {
            std::fs::metadata(p)
                .ok()
                .map(|m| ((m.dev(), m.ino()), m.len()))
        };
        // The common case, one stat: still the current file.
        let current = stat(&self.policy.path_of(&self.unit));
        if current.is_some_and(|(cur, _)| cur == id) {
            return Ok(Successor::Same);
        }
        let chain = self.chain();
        let found: Vec<Option<(FileId, u64)>> = chain.iter().map(stat).collect();
        match found.iter().position(|f| f.is_some_and(|(f, _)| f == id)) {
            Some(mine) => {
                // Rotated: the next newer file holds what came after.
                for path in &chain[mine + 1..] {
                    if let Some((seg, _)) = Segment::open(path)? {
                        return Ok(Successor::Next(seg));
                    }
                }
                Ok(Successor::Same)
            }
            None => {
                // Rotated away: what was between this file and the oldest left is lost.
                let Some(oldest) = found.iter().position(Option::is_some) else {
                    return Ok(Successor::Same);
                };
                let Some((seg, _)) = Segment::open(&chain[oldest])? else {
                    return Ok(Successor::Same);
                };
                let left: u64 = found[oldest..].iter().flatten().map(|(_, len)| len).sum();
                let lost = self.unread.saturating_sub(left);
                self.unread = left;
                Ok(Successor::Jump(seg, lost))
            }
        }
    }
}

enum Successor {
    /// Nothing newer (yet).
    Same,
    Next(Segment),
    /// The next file is gone; the oldest one left, and about how many bytes were lost.
    Jump(Segment, u64),
}

fn read_at(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    loop {
        match file.read_at(buf, pos) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Reads byte `offset` onwards of the files taken as one log (oldest first), filling `buf`
/// unless the log ends first.
fn read_joined(files: &[(Segment, u64)], offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let at = offset + filled as u64;
        let mut base = 0;
        let mut got = 0;
        for (seg, len) in files {
            if at < base + len {
                let want = (buf.len() - filled).min((base + len - at) as usize);
                got = read_at(&seg.file, &mut buf[filled..filled + want], at - base)?;
                break;
            }
            base += len;
        }
        if got == 0 {
            break;
        }
        filled += got;
    }
    Ok(filled)
}

/// Where the backlog starts in the joined files of `total` bytes: the last `lines` lines
/// within the last [`MAX_BACKLOG`] bytes; a line cut by that limit is left out.
fn start_offset(files: &[(Segment, u64)], total: u64, lines: Option<usize>) -> io::Result<u64> {
    if lines == Some(0) {
        return Ok(total);
    }
    let window = total.saturating_sub(MAX_BACKLOG);
    let mut buf = vec![0u8; BLOCK];
    if let Some(n) = lines {
        // Backwards from the end, counting newlines (a newline ending the log ends its last
        // line, it does not start another one).
        let mut seen = 0;
        let mut end = total.saturating_sub(1);
        while end > window {
            let from = end.saturating_sub(BLOCK as u64).max(window);
            let len = (end - from) as usize;
            let got = read_joined(files, from, &mut buf[..len])?;
            if got < len {
                // A file shrank under us: no better start than the window's.
                break;
            }
            let block = &buf[..got];
            if let Some(i) = nth_newline_from_end(block, n - seen) {
                return Ok(from + i as u64 + 1);
            }
            seen += block.iter().filter(|&&b| b == b'\n').count();
            end = from;
        }
    }
    if window == 0 {
        return Ok(0);
    }
    // Skip the line the limit cut (unless it is the only one).
    let mut at = window;
    while at < total {
        let got = read_joined(files, at, &mut buf)?;
        if got == 0 {
            break;
        }
        if let Some(i) = buf[..got].iter().position(|&b| b == b'\n') {
            return Ok(at + i as u64 + 1);
        }
        at += got as u64;
    }
    Ok(window)
}

/// Index of the `n`th newline of `block` counting from its end.
fn nth_newline_from_end(block: &[u8], n: usize) -> Option<usize> {
    let mut seen = 0;
    for (i, &b) in block.iter().enumerate().rev() {
        if b == b'\n' {
            seen += 1;
            if seen == n {
                return Some(i);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(tag: &str) -> LogPolicy {
        LogPolicy::new(crate::testutil::scratch_dir(&format!("tail-{tag}")))
    }

    /// Everything a cursor gives until it waits or ends.
    fn drain(c: &mut LogCursor) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 3];
        loop {
            match c.read(&mut buf).unwrap() {
                Next::Data(n) => out.extend_from_slice(&buf[..n]),
                Next::Gap(n) => out.extend_from_slice(format!("<gap {n}>").as_bytes()),
                Next::Wait | Next::End => break,
            }
        }
        String::from_utf8(out).unwrap()
    }

    fn tail(p: &LogPolicy, n: Option<usize>) -> String {
        drain(&mut LogCursor::open(p, "u", n, false).unwrap())
    }

    #[test]
    fn tails_across_rotated_files() {
        let p = policy("rotated");
        std::fs::write(p.rotated("u", 2), "1\n2\n").unwrap();
        std::fs::write(p.rotated("u", 1), "3\n4\n").unwrap();
        std::fs::write(p.path_of("u"), "5\n6").unwrap();
        assert_eq!(tail(&p, Some(1)), "6");
        assert_eq!(tail(&p, Some(2)), "5\n6");
        assert_eq!(tail(&p, Some(3)), "4\n5\n6");
        assert_eq!(tail(&p, Some(5)), "2\n3\n4\n5\n6");
        assert_eq!(tail(&p, Some(50)), "1\n2\n3\n4\n5\n6");
        assert_eq!(tail(&p, None), "1\n2\n3\n4\n5\n6");
        assert_eq!(tail(&p, Some(0)), "");
        let c = LogCursor::open(&p, "u", Some(3), false).unwrap();
        assert_eq!(c.backlog(), 5);
        let mut none = LogCursor::open(&p, "none", Some(3), false).unwrap();
        assert_eq!(drain(&mut none), "");
        std::fs::remove_dir_all(&p.dir).unwrap();
    }

    #[test]
    fn the_byte_limit_cuts_whole_lines() {
        let p = policy("limit");
        let line = "x".repeat(999) + "\n";
        let big = line.repeat(1200); // 1.2 MB per file, 3.6 MB in all
        for path in [p.rotated("u", 2), p.rotated("u", 1), p.path_of("u")] {
            std::fs::write(path, &big).unwrap();
        }
        let all = tail(&p, None);
        assert!(all.len() as u64 <= MAX_BACKLOG && all.len() as u64 > MAX_BACKLOG - 1000);
        assert!(all.starts_with('x') && all.len() % 1000 == 0);
        assert_eq!(tail(&p, Some(1500)).len(), 1500 * 1000);
        // More lines than the limit holds: as many whole lines as fit.
        assert_eq!(tail(&p, Some(3000)), all);
        std::fs::remove_dir_all(&p.dir).unwrap();
    }

    /// A unit log written the way the supervisor writes it.
    fn write(
        p: &LogPolicy,
        log: &mut crate::unit_logs::UnitLog,
        text: &str,
        c: &mut [&mut LogCursor],
    ) {
        assert_eq!(log.write(p, text.as_bytes()), None, "the log write failed");
        for c in c {
            c.notify(text.len());
        }
    }

    #[test]
    fn a_follower_goes_on_across_rotations_in_order() {
        let mut p = policy("follow");
        p.max_bytes = 10;
        let mut log = crate::unit_logs::UnitLog::new(&p, "u");
        let mut c = LogCursor::open(&p, "u", None, true).unwrap();
        assert_eq!(c.read(&mut [0u8; 8]).unwrap(), Next::Wait);
        let mut got = String::new();
        let mut expect = String::new();
        for i in 0..40 {
            let line = format!("line {i}\n");
            write(&p, &mut log, &line, &mut [&mut c]);
            expect.push_str(&line);
            // Reading after every second write: rotation never outruns this reader.
            if i % 2 == 1 {
                got.push_str(&drain(&mut c));
            }
        }
        assert_eq!(got, expect);
        // A follower that starts later gets the backlog, then what follows.
        let mut late = LogCursor::open(&p, "u", Some(2), true).unwrap();
        assert_eq!(drain(&mut late), "line 38\nline 39\n");
        write(&p, &mut log, "more\n", &mut [&mut late]);
        assert_eq!(drain(&mut late), "more\n");
        std::fs::remove_dir_all(&p.dir).unwrap();
    }

    #[test]
    fn a_follower_left_behind_by_rotation_is_told_what_it_lost() {
        let mut p = policy("behind");
        p.max_bytes = 10;
        p.keep = 2;
        let mut log = crate::unit_logs::UnitLog::new(&p, "u");
        write(&p, &mut log, "aaaaaaaaa\n", &mut []);
        let mut c = LogCursor::open(&p, "u", None, true).unwrap();
        // Ten lines of 10 bytes: each its own file; only the last three are kept.
        for i in 0..10 {
            write(&p, &mut log, &format!("line {i:04}\n"), &mut [&mut c]);
        }
        assert_eq!(
            drain(&mut c),
            "aaaaaaaaa\n<gap 70>line 0007\nline 0008\nline 0009\n"
        );
        std::fs::remove_dir_all(&p.dir).unwrap();
    }

    #[test]
    fn a_plain_request_ends_where_the_log_ended_when_it_came() {
        let p = policy("plain");
        let mut log = crate::unit_logs::UnitLog::new(&p, "u");
        write(&p, &mut log, "one\n", &mut []);
        let mut c = LogCursor::open(&p, "u", None, false).unwrap();
        write(&p, &mut log, "two\n", &mut []);
        assert_eq!(drain(&mut c), "one\n");
        assert_eq!(c.read(&mut [0u8; 4]).unwrap(), Next::End);
        std::fs::remove_dir_all(&p.dir).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the files and the tail, the backlog is a suffix of the log: whole lines
        /// (but the first one when there are fewer lines than asked), at most `n` of them.
        #[test]
        fn tails_are_suffixes_with_at_most_n_lines(
            files in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'x')], 0..40), 1..4),
            n in 0usize..12,
        ) {
            let p = policy("prop");
            let paths = [p.rotated("u", 3), p.rotated("u", 2), p.rotated("u", 1), p.path_of("u")];
            let mut joined = Vec::new();
            for (path, data) in paths[4 - files.len()..].iter().zip(&files) {
                std::fs::write(path, data).unwrap();
                joined.extend_from_slice(data);
            }
            let got = tail(&p, Some(n)).into_bytes();
            prop_assert!(joined.ends_with(&got));
            let start = joined.len() - got.len();
            prop_assert!(got.is_empty() || start == 0 || joined[start - 1] == b'\n');
            let body = got.strip_suffix(b"\n").unwrap_or(&got);
            let lines = if got.is_empty() { 0 } else { body.iter().filter(|&&b| b == b'\n').count() + 1 };
            prop_assert!(lines <= n);
            std::fs::remove_dir_all(&p.dir).unwrap();
        }
    }
}
