//! The serial console: everything QEMU's serial port prints, read by a thread into a channel,
//! searched for markers with timeouts.

use std::io::Read;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Console output received so far, and how far markers have been consumed.
pub struct Console {
    rx: Receiver<Vec<u8>>,
    reader: Option<JoinHandle<()>>,
    text: Vec<u8>,
    cursor: usize,
    closed: bool,
}

impl Console {
    pub fn new<R: Read + Send + 'static>(mut source: R) -> Console {
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match source.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Console {
            rx,
            reader: Some(reader),
            text: Vec::new(),
            cursor: 0,
            closed: false,
        }
    }

    /// Everything printed so far (lossy UTF-8).
    pub fn transcript(&self) -> String {
        String::from_utf8_lossy(&self.text).into_owned()
    }

    /// The last `n` lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let t = self.transcript();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Waits until `find` matches the unconsumed output (or `deadline` passes). `find` returns
    /// the match's (start, end); the output up to `end` is consumed. Returns the text from the
    /// old cursor to the match start, and the match itself.
    pub fn wait_match(
        &mut self,
        deadline: Instant,
        find: &dyn Fn(&str) -> Option<(usize, usize)>,
    ) -> Option<(String, String)> {
        loop {
            let pending = String::from_utf8_lossy(&self.text[self.cursor..]).into_owned();
            if let Some((start, end)) = find(&pending) {
                // Byte offsets into the lossy copy equal those in the raw text unless it held
                // invalid UTF-8; advance by the matched prefix's raw length in either case.
                let consumed = pending[..end].len().min(self.text.len() - self.cursor);
                self.cursor += consumed;
                return Some((
                    pending[..start].to_string(),
                    pending[start..end].to_string(),
                ));
            }
            if self.closed {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            match self.rx.recv_timeout(deadline - now) {
                Ok(chunk) => self.text.extend_from_slice(&chunk),
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
    }

    /// Drains whatever arrived without waiting.
    pub fn pump(&mut self) {
        while let Ok(chunk) = self.rx.try_recv() {
            self.text.extend_from_slice(&chunk);
        }
    }

    /// Waits for the reader thread after the source closed (QEMU exited).
    pub fn finish(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.closed && Instant::now() < deadline {
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(chunk) => self.text.extend_from_slice(&chunk),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
        if self.closed {
            if let Some(r) = self.reader.take() {
                let _ = r.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_consumed_in_order() {
        let data = b"boot\nA ready\nB ready\n".to_vec();
        let mut c = Console::new(std::io::Cursor::new(data));
        let deadline = Instant::now() + Duration::from_secs(5);
        let find = |m: &'static str| move |s: &str| s.find(m).map(|i| (i, i + m.len()));
        let (before, hit) = c.wait_match(deadline, &find("A ready")).unwrap();
        assert_eq!((before.as_str(), hit.as_str()), ("boot\n", "A ready"));
        assert!(c.wait_match(deadline, &find("boot")).is_none());
        assert!(c.wait_match(deadline, &find("B ready")).is_some());
        assert!(c.is_closed());
        assert!(c.tail(1).contains("B ready"));
    }
}
