//! `GET /v1/units/{name}/logs[?tail=N][&follow=1]`: a unit's captured output, newest last.
//! The backlog comes from the log file and its rotated predecessors (bounded); with `follow`
//! the connection stays open and the event loop sends every new write of the unit as a chunk.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use super::http::{Request, Response};
use super::routes::{param, ApiContext, Params, Reply};
use crate::logs::LogPolicy;

pub const CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Most bytes of backlog one request reads, across the current and rotated files.
pub const MAX_BACKLOG: usize = 2 << 20;

pub fn get(req: &Request, params: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    let name = param(params, "name");
    if !ctx.supervisor.contains(name) {
        return Response::error(404, "unknown unit", name).into();
    }
    let lines = match req.query_param("tail") {
        None | Some("all") => None,
        Some(n) => match n.parse::<usize>() {
            Ok(n) => Some(n),
            Err(_) => {
                let detail = format!("tail={n}: a number of lines, or `all`");
                return Response::error(400, "bad query", &detail).into();
            }
        },
    };
    let backlog = match backlog(ctx.supervisor.log_policy(), name, lines) {
        Ok(b) => b,
        Err(e) => return Response::error(500, "cannot read the log", &e.to_string()).into(),
    };
    if req.flag("follow") {
        Reply::Follow {
            unit: name.to_string(),
            backlog,
        }
    } else {
        Response::text(200, CONTENT_TYPE, backlog).into()
    }
}

/// The last `lines` lines of `unit`'s log (everything within [`MAX_BACKLOG`] when `None`),
/// reading rotated files from newest to oldest as far as needed.
pub fn backlog(policy: &LogPolicy, unit: &str, lines: Option<usize>) -> io::Result<Vec<u8>> {
    if lines == Some(0) {
        return Ok(Vec::new());
    }
    let files = std::iter::once(policy.path_of(unit))
        .chain((1..=policy.keep).map(|n| policy.rotated(unit, n)));
    let mut data = Vec::new();
    let mut truncated = false;
    for path in files {
        let room = MAX_BACKLOG - data.len();
        if room == 0 {
            truncated = true;
            break;
        }
        let (mut older, cut) = read_end(&path, room)?;
        truncated = cut;
        older.extend_from_slice(&data);
        data = older;
        if cut || lines.is_some_and(|n| count_lines(&data) > n) {
            break;
        }
    }
    let start = match lines {
        Some(n) => start_of_last_lines(&data, n),
        // A line cut by the byte limit is left out.
        None if truncated => data.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1),
        None => 0,
    };
    data.drain(..start);
    Ok(data)
}

/// The last `max` bytes of `path` (nothing when it does not exist), and whether it had more.
fn read_end(path: &Path, max: usize) -> io::Result<(Vec<u8>, bool)> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let skip = len.saturating_sub(max as u64);
    file.seek(SeekFrom::Start(skip))?;
    let mut out = Vec::new();
    file.take(max as u64).read_to_end(&mut out)?;
    Ok((out, skip > 0))
}

/// Lines in `data`, a last line without newline included.
fn count_lines(data: &[u8]) -> usize {
    let newlines = data.iter().filter(|&&b| b == b'\n').count();
    newlines + usize::from(data.last().is_some_and(|&b| b != b'\n'))
}

/// Offset where the last `n` lines of `data` begin.
fn start_of_last_lines(data: &[u8], n: usize) -> usize {
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0;
    for (i, &b) in body.iter().enumerate().rev() {
        if b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(tag: &str) -> LogPolicy {
        LogPolicy::new(crate::testutil::scratch_dir(&format!("tail-{tag}")))
    }

    #[test]
    fn tails_across_rotated_files() {
        let p = policy("rotated");
        std::fs::write(p.rotated("u", 2), "1\n2\n").unwrap();
        std::fs::write(p.rotated("u", 1), "3\n4\n").unwrap();
        std::fs::write(p.path_of("u"), "5\n6").unwrap();
        let tail = |n| String::from_utf8(backlog(&p, "u", n).unwrap()).unwrap();
        assert_eq!(tail(Some(1)), "6");
        assert_eq!(tail(Some(2)), "5\n6");
        assert_eq!(tail(Some(3)), "4\n5\n6");
        assert_eq!(tail(Some(5)), "2\n3\n4\n5\n6");
        assert_eq!(tail(Some(50)), "1\n2\n3\n4\n5\n6");
        assert_eq!(tail(None), "1\n2\n3\n4\n5\n6");
        assert_eq!(tail(Some(0)), "");
        assert_eq!(backlog(&p, "none", Some(3)).unwrap(), b"");
        std::fs::remove_dir_all(&p.dir).unwrap();
    }

    proptest! {
        #[test]
        fn last_lines_are_a_suffix_with_at_most_n_lines(
            data in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'x')], 0..64),
            n in 0usize..8,
        ) {
            let start = start_of_last_lines(&data, n.max(1));
            let tail = &data[start..];
            prop_assert!(count_lines(tail) <= n.max(1));
            prop_assert!(start == 0 || data[start - 1] == b'\n');
        }
    }
}
