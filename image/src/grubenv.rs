//! The A/B boot state, stored in GRUB's environment block (`/grub/grubenv` on the ESP).
//!
//! The block is exactly 1024 bytes: a header line, `key=value` lines, `#` padding. GRUB's
//! `save_env` rewrites it in place, so its size never changes. Boot counting (RAUC-style):
//! `ORDER="A B"`, per slot `X_OK` (bootable) and `X_TRY` (booted but not yet marked good). GRUB
//! boots the first slot in ORDER with OK=1 and TRY=0 and sets its TRY=1 first; a slot found with
//! OK=1 and TRY=1 failed its last boot and is retired (OK=0). berth-init sets TRY=0 once every
//! critical unit is healthy.

use std::fmt;
use std::path::Path;

pub const BLOCK_SIZE: usize = 1024;
const HEADER: &str = "# GRUB Environment Block\n";

#[derive(Debug, thiserror::Error)]
pub enum GrubEnvError {
    #[error("grubenv is {0} bytes, expected exactly 1024")]
    Size(usize),
    #[error("grubenv does not start with {HEADER:?}")]
    Header,
    #[error("grubenv line {line}: {problem}")]
    Line { line: usize, problem: String },
    #[error("grubenv variable {key:?}={value:?}: {problem}")]
    Value {
        key: String,
        value: String,
        problem: &'static str,
    },
    #[error("grubenv entries take {0} bytes, more than fit in 1024")]
    Full(usize),
    #[error("grubenv {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The raw environment block: ordered `key=value` pairs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrubEnv {
    vars: Vec<(String, String)>,
}

impl GrubEnv {
    pub fn parse(block: &[u8]) -> Result<GrubEnv, GrubEnvError> {
        if block.len() != BLOCK_SIZE {
            return Err(GrubEnvError::Size(block.len()));
        }
        let text = block
            .strip_prefix(HEADER.as_bytes())
            .ok_or(GrubEnvError::Header)?;
        let mut env = GrubEnv::default();
        for (i, line) in logical_lines(text).into_iter().enumerate() {
            if line.is_empty() || line[0] == b'#' {
                continue;
            }
            let line_no = i + 2;
            let line = std::str::from_utf8(line).map_err(|_| GrubEnvError::Line {
                line: line_no,
                problem: "not UTF-8".into(),
            })?;
            let (key, value) = line.split_once('=').ok_or_else(|| GrubEnvError::Line {
                line: line_no,
                problem: format!("{line:?} has no '='"),
            })?;
            env.vars.push((key.to_string(), unescape(value)));
        }
        Ok(env)
    }

    pub fn to_block(&self) -> Result<[u8; BLOCK_SIZE], GrubEnvError> {
        let mut text = String::from(HEADER);
        for (k, v) in &self.vars {
            text.push_str(k);
            text.push('=');
            text.push_str(&escape(v));
            text.push('\n');
        }
        if text.len() > BLOCK_SIZE {
            return Err(GrubEnvError::Full(text.len()));
        }
        let mut block = [b'#'; BLOCK_SIZE];
        block[..text.len()].copy_from_slice(text.as_bytes());
        Ok(block)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, key: &str, value: &str) -> Result<(), GrubEnvError> {
        let valid_key =
            !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_key {
            return Err(GrubEnvError::Value {
                key: key.into(),
                value: value.into(),
                problem: "keys are letters, digits and '_'",
            });
        }
        match self.vars.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.to_string(),
            None => self.vars.push((key.to_string(), value.to_string())),
        }
        Ok(())
    }
}

/// Splits at newlines that are not escaped by a backslash (GRUB escapes newlines in values).
fn logical_lines(text: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\\' => i += 2,
            b'\n' => {
                lines.push(&text[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    lines.push(&text[start.min(text.len())..]);
    lines
}

// GRUB escapes backslash and newline in values with a backslash.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\\n")
}

fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One of the two root slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "A" | "a" => Some(Slot::A),
            "B" | "b" => Some(Slot::B),
            _ => None,
        }
    }

    /// The GPT partition name of the slot's root.
    pub fn partition_name(self) -> &'static str {
        match self {
            Slot::A => "berth-root-a",
            Slot::B => "berth-root-b",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The A/B boot state over a [`GrubEnv`]; other variables in the block are kept as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootState {
    env: GrubEnv,
}

impl BootState {
    /// A fresh image: slot A good and first, slot B empty.
    pub fn fresh() -> BootState {
        let mut s = BootState {
            env: GrubEnv::default(),
        };
        s.set_order([Slot::A, Slot::B]);
        s.set_flag(Slot::A, "OK", true);
        s.set_flag(Slot::A, "TRY", false);
        s.set_flag(Slot::B, "OK", false);
        s.set_flag(Slot::B, "TRY", false);
        s
    }

    pub fn parse(block: &[u8]) -> Result<BootState, GrubEnvError> {
        let env = GrubEnv::parse(block)?;
        let state = BootState { env };
        // Reject states GRUB's script would misread, naming the variable.
        state.order()?;
        for slot in Slot::ALL {
            state.flag(slot, "OK")?;
            state.flag(slot, "TRY")?;
        }
        Ok(state)
    }

    pub fn load(path: &Path) -> Result<BootState, GrubEnvError> {
        let block = std::fs::read(path).map_err(|source| GrubEnvError::Io {
            path: path.display().to_string(),
            source,
        })?;
        BootState::parse(&block)
    }

    /// Rewrites the block in place (same size, no truncation: GRUB needs the file's sectors to
    /// stay where they are) and syncs it.
    pub fn store(&self, path: &Path) -> Result<(), GrubEnvError> {
        use std::io::Write;
        let io = |source| GrubEnvError::Io {
            path: path.display().to_string(),
            source,
        };
        let block = self.to_block()?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        f.write_all(&block).map_err(io)?;
        f.sync_all().map_err(io)
    }

    pub fn to_block(&self) -> Result<[u8; BLOCK_SIZE], GrubEnvError> {
        self.env.to_block()
    }

    pub fn order(&self) -> Result<Vec<Slot>, GrubEnvError> {
        let raw = self.env.get("ORDER").unwrap_or("");
        let bad = |problem| GrubEnvError::Value {
            key: "ORDER".into(),
            value: raw.into(),
            problem,
        };
        let mut order = Vec::new();
        for word in raw.split_whitespace() {
            let slot = Slot::parse(word).ok_or_else(|| bad("slots are A and B"))?;
            if order.contains(&slot) {
                return Err(bad("a slot is listed twice"));
            }
            order.push(slot);
        }
        if order.is_empty() {
            return Err(bad("no slot listed"));
        }
        Ok(order)
    }

    pub fn set_order(&mut self, order: [Slot; 2]) {
        let text = format!("{} {}", order[0], order[1]);
        // Keys are constants here, so set cannot fail.
        let _ = self.env.set("ORDER", &text);
    }

    /// The slot can be booted (`X_OK=1`).
    pub fn is_ok(&self, slot: Slot) -> bool {
        self.flag(slot, "OK").unwrap_or(false)
    }

    /// The slot was booted and has not been marked good yet (`X_TRY=1`).
    pub fn is_trying(&self, slot: Slot) -> bool {
        self.flag(slot, "TRY").unwrap_or(false)
    }

    /// The slot GRUB boots next: the first in ORDER with OK=1 and TRY=0.
    pub fn next_boot(&self) -> Option<Slot> {
        let order = self.order().ok()?;
        order
            .into_iter()
            .find(|&s| self.is_ok(s) && !self.is_trying(s))
    }

    /// Marks the running slot's boot good: clears its TRY flag.
    pub fn mark_good(&mut self, slot: Slot) {
        self.set_flag(slot, "TRY", false);
        self.set_flag(slot, "OK", true);
    }

    /// What GRUB does before booting `slot`: set TRY=1.
    pub fn begin_try(&mut self, slot: Slot) {
        self.set_flag(slot, "TRY", true);
    }

    /// Makes a freshly written slot the first to try on the next boot.
    pub fn prefer(&mut self, slot: Slot) {
        self.set_flag(slot, "OK", true);
        self.set_flag(slot, "TRY", false);
        self.set_order([slot, slot.other()]);
    }

    /// Marks a slot unbootable (e.g. while it is being overwritten).
    pub fn disable(&mut self, slot: Slot) {
        self.set_flag(slot, "OK", false);
        self.set_flag(slot, "TRY", false);
    }

    fn key(slot: Slot, flag: &str) -> String {
        format!("{}_{flag}", slot.name())
    }

    fn flag(&self, slot: Slot, flag: &str) -> Result<bool, GrubEnvError> {
        let key = Self::key(slot, flag);
        match self.env.get(&key) {
            None | Some("0") => Ok(false),
            Some("1") => Ok(true),
            Some(other) => Err(GrubEnvError::Value {
                key,
                value: other.into(),
                problem: "flags are 0 or 1",
            }),
        }
    }

    fn set_flag(&mut self, slot: Slot, flag: &str, on: bool) {
        let _ = self
            .env
            .set(&Self::key(slot, flag), if on { "1" } else { "0" });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_block_is_what_grub_editenv_writes() {
        let block = BootState::fresh().to_block().unwrap();
        let text = String::from_utf8(block.to_vec()).unwrap();
        assert!(text.starts_with(
            "# GRUB Environment Block\nORDER=A B\nA_OK=1\nA_TRY=0\nB_OK=0\nB_TRY=0\n###"
        ));
        assert_eq!(block.len(), 1024);
        assert!(text.ends_with('#'));
    }

    #[test]
    fn grub_editenv_reads_our_block() {
        let Ok(out) = std::process::Command::new("grub-editenv")
            .arg("--version")
            .output()
        else {
            eprintln!("grub-editenv not installed; skipping");
            return;
        };
        assert!(out.status.success());
        let path = std::env::temp_dir().join(format!("berth-grubenv-{}", std::process::id()));
        BootState::fresh().store(&path).unwrap();
        let list = std::process::Command::new("grub-editenv")
            .arg(&path)
            .arg("list")
            .output()
            .unwrap();
        // And our parser reads what grub-editenv writes.
        let set = std::process::Command::new("grub-editenv")
            .arg(&path)
            .args(["set", "A_TRY=1", "EXTRA=x"])
            .status()
            .unwrap();
        let reread = BootState::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&list.stdout),
            "ORDER=A B\nA_OK=1\nA_TRY=0\nB_OK=0\nB_TRY=0\n"
        );
        assert!(set.success());
        assert!(reread.is_trying(Slot::A));
        assert_eq!(reread.env.get("EXTRA"), Some("x"));
    }

    #[test]
    fn boot_counting_falls_back_to_the_other_slot() {
        let mut s = BootState::fresh();
        assert_eq!(s.next_boot(), Some(Slot::A));
        s.begin_try(Slot::A);
        // A was tried and never marked good: nothing bootable is left (B is empty).
        assert_eq!(s.next_boot(), None);
        s.mark_good(Slot::A);
        assert_eq!(s.next_boot(), Some(Slot::A));
        // An update wrote B and prefers it.
        s.prefer(Slot::B);
        assert_eq!(s.order().unwrap(), vec![Slot::B, Slot::A]);
        assert_eq!(s.next_boot(), Some(Slot::B));
        s.begin_try(Slot::B);
        // B failed its first boot: GRUB falls back to A.
        assert_eq!(s.next_boot(), Some(Slot::A));
        s.disable(Slot::B);
        assert!(!s.is_ok(Slot::B));
    }

    #[test]
    fn round_trip_keeps_unknown_variables_and_escapes() {
        let mut env = GrubEnv::default();
        env.set("saved_entry", "a\\b\nc").unwrap();
        env.set("ORDER", "B A").unwrap();
        let parsed = GrubEnv::parse(&env.to_block().unwrap()).unwrap();
        assert_eq!(parsed, env);
    }

    #[test]
    fn bad_blocks_are_rejected_with_the_reason() {
        assert!(matches!(
            BootState::parse(&[b'#'; 10]),
            Err(GrubEnvError::Size(10))
        ));
        assert!(matches!(
            BootState::parse(&[b'#'; 1024]),
            Err(GrubEnvError::Header)
        ));
        let mut env = GrubEnv::default();
        env.set("ORDER", "A C").unwrap();
        let err = BootState::parse(&env.to_block().unwrap()).unwrap_err();
        assert!(err.to_string().contains("ORDER"), "{err}");
        env.set("ORDER", "A B").unwrap();
        env.set("A_OK", "yes").unwrap();
        let err = BootState::parse(&env.to_block().unwrap()).unwrap_err();
        assert!(err.to_string().contains("A_OK"), "{err}");
        let mut env = GrubEnv::default();
        assert!(env.set("bad key", "1").is_err());
        env.set("big", &"x".repeat(1100)).unwrap();
        assert!(matches!(env.to_block(), Err(GrubEnvError::Full(_))));
    }
}
