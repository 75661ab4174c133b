//! The A/B boot state, stored in GRUB's environment blocks on the ESP.
//!
//! A block is exactly 1024 bytes: a header line, `key=value` lines, `#` padding. GRUB's
//! `save_env` rewrites a block in place, so a power cut can leave it torn: a prefix of the new
//! block over the rest of the old one. Two copies (`/grub/grubenv`, `/grub/grubenv2`) make that
//! harmless:
//!
//! - every block has the same layout with one-character values (`ORDER` three), so a torn
//!   block still parses, its bytes beyond the variables are padding in both versions;
//! - `SEQ` opens the variables and `END` closes them with the same value (0, 1, 2, stepping
//!   cyclically): a block torn between them has `SEQ != END` and is invalid;
//! - writers (GRUB's script and berth-init alike) read the newest valid copy (of two valid
//!   copies the one whose SEQ is the other's successor) and overwrite the *other* one. A torn
//!   write therefore only ever damages the copy that did not hold the current state.
//!
//! Per slot: `X_OK` (holds a bootable system), `X_NEW` (installed by an update and not yet
//! marked good) and `X_LEFT` (boot attempts left while new). GRUB boots the first slot in
//! `ORDER` with OK=1 that is either good (NEW=0: never counted, so power cuts while booting a
//! good system never roll it back) or new with LEFT>0 (LEFT steps down first). A new slot with
//! no attempts left is retired (OK=0) and the next slot in ORDER boots. berth-init marks the
//! booted slot good (NEW=0) once every critical unit is healthy.
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
    #[error("neither copy of the boot state could be read")]
    NoCopy,
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

/// Boot attempts a newly installed slot gets before it is retired.
pub const DEFAULT_TRIES: u8 = 3;
/// The largest attempt count GRUB's script can step down (its `if` chain goes from 9).
pub const MAX_TRIES: u8 = 9;
/// The two copies of the boot state, in the ESP's `/grub` directory.
pub const ENV_FILES: [&str; 2] = ["grubenv", "grubenv2"];

/// What a slot holds, as far as booting is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Nothing bootable (`OK=0`): empty, being written, or retired.
    Empty,
    /// Installed by an update and not marked good yet, with this many boot attempts left.
    New { tries_left: u8 },
    /// Booted and marked good.
    Good,
}

/// The A/B boot state: boot order and each slot's state, plus the copy sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootState {
    order: [Slot; 2],
    a: SlotState,
    b: SlotState,
    /// 0, 1 or 2: the sequence number of the copy this state was read from (or written to).
    seq: u8,
}

impl BootState {
    /// A fresh image: slot A good and first, slot B empty.
    pub fn fresh() -> BootState {
        BootState {
            order: [Slot::A, Slot::B],
            a: SlotState::Good,
            b: SlotState::Empty,
            seq: 0,
        }
    }

    /// Parses one copy. A torn copy (`SEQ` and `END` differ) is an error like any other.
    pub fn parse(block: &[u8]) -> Result<BootState, GrubEnvError> {
        let env = GrubEnv::parse(block)?;
        let get = |key: &str| -> Result<&str, GrubEnvError> {
            env.get(key).ok_or_else(|| GrubEnvError::Value {
                key: key.into(),
                value: String::new(),
                problem: "missing",
            })
        };
        let bad = |key: &str, value: &str, problem| GrubEnvError::Value {
            key: key.into(),
            value: value.into(),
            problem,
        };
        let seq_text = get("SEQ")?;
        let seq = match seq_text {
            "0" => 0,
            "1" => 1,
            "2" => 2,
            other => return Err(bad("SEQ", other, "sequence numbers are 0, 1 or 2")),
        };
        let end = get("END")?;
        if end != seq_text {
            return Err(bad(
                "END",
                end,
                "differs from SEQ: the block was torn by a write",
            ));
        }
        let order_text = get("ORDER")?;
        let order = match order_text {
            "A B" => [Slot::A, Slot::B],
            "B A" => [Slot::B, Slot::A],
            other => return Err(bad("ORDER", other, "is \"A B\" or \"B A\"")),
        };
        let mut slots = [SlotState::Empty; 2];
        for (i, slot) in Slot::ALL.into_iter().enumerate() {
            let flag = |name: &str| -> Result<bool, GrubEnvError> {
                let key = format!("{slot}_{name}");
                match get(&key)? {
                    "0" => Ok(false),
                    "1" => Ok(true),
                    other => Err(bad(&key, other, "flags are 0 or 1")),
                }
            };
            let ok = flag("OK")?;
            let new = flag("NEW")?;
            let key = format!("{slot}_LEFT");
            let left_text = get(&key)?;
            let left = match left_text.as_bytes() {
                [d @ b'0'..=b'9'] => d - b'0',
                _ => return Err(bad(&key, left_text, "attempts are one digit, 0 to 9")),
            };
            slots[i] = match (ok, new) {
                (false, _) => SlotState::Empty,
                (true, false) => SlotState::Good,
                (true, true) => SlotState::New { tries_left: left },
            };
        }
        Ok(BootState {
            order,
            a: slots[0],
            b: slots[1],
            seq,
        })
    }

    /// The current state from the two copies (`None`: unreadable or missing), and the index
    /// of the copy it came from: the newest valid one.
    pub fn newest(copies: [Option<&[u8]>; 2]) -> Result<(BootState, usize), GrubEnvError> {
        let parsed = copies.map(|c| c.map(BootState::parse));
        match parsed {
            [Some(Ok(a)), Some(Ok(b))] => {
                if b.seq == (a.seq + 1) % 3 {
                    Ok((b, 1))
                } else {
                    Ok((a, 0))
                }
            }
            [Some(Ok(a)), _] => Ok((a, 0)),
            [_, Some(Ok(b))] => Ok((b, 1)),
            [Some(Err(e)), _] | [None, Some(Err(e))] => Err(e),
            [None, None] => Err(GrubEnvError::NoCopy),
        }
    }

    /// The block written when this state is stored with sequence number `seq`.
    pub fn to_block_with_seq(&self, seq: u8) -> Result<[u8; BLOCK_SIZE], GrubEnvError> {
        let seq = (seq % 3).to_string();
        let mut env = GrubEnv::default();
        let order = format!("{} {}", self.order[0], self.order[1]);
        let mut vars: Vec<(String, String)> =
            vec![("SEQ".into(), seq.clone()), ("ORDER".into(), order)];
        for slot in Slot::ALL {
            let (ok, new, left) = match self.state(slot) {
                SlotState::Empty => (0, 0, 0),
                SlotState::Good => (1, 0, DEFAULT_TRIES),
                SlotState::New { tries_left } => (1, 1, tries_left.min(MAX_TRIES)),
            };
            vars.push((format!("{slot}_OK"), ok.to_string()));
            vars.push((format!("{slot}_NEW"), new.to_string()));
            vars.push((format!("{slot}_LEFT"), left.to_string()));
        }
        vars.push(("END".into(), seq));
        for (k, v) in vars {
            env.set(&k, &v)?;
        }
        env.to_block()
    }

    /// The block with this state's own sequence number.
    pub fn to_block(&self) -> Result<[u8; BLOCK_SIZE], GrubEnvError> {
        self.to_block_with_seq(self.seq)
    }

    /// The two copies of a new image: copy 0 (sequence 1) is the newer, both hold `self`.
    pub fn initial_blocks(&self) -> Result<[[u8; BLOCK_SIZE]; 2], GrubEnvError> {
        Ok([self.to_block_with_seq(1)?, self.to_block_with_seq(0)?])
    }

    /// Reads the newest valid copy in `dir` (the ESP's `/grub`).
    pub fn load(dir: &Path) -> Result<BootState, GrubEnvError> {
        let blocks = ENV_FILES.map(|name| std::fs::read(dir.join(name)).ok());
        let (state, _) = BootState::newest([blocks[0].as_deref(), blocks[1].as_deref()])?;
        Ok(state)
    }

    /// Stores the state in `dir`: over the copy that does not hold the newest valid state, in
    /// place (GRUB needs the file's sectors to stay where they are), with the next sequence
    /// number, synced. A power cut during the write leaves the other copy in charge.
    pub fn store(&mut self, dir: &Path) -> Result<(), GrubEnvError> {
        let pending = self.prepare_store(dir)?;
        self.commit(pending)
    }

    /// The first half of [`BootState::store`]: which copy gets which block (when neither copy
    /// is valid, copy 0 is rewritten first so that the new state has an older one to follow).
    pub fn prepare_store(&self, dir: &Path) -> Result<PendingStore, GrubEnvError> {
        let blocks = ENV_FILES.map(|name| std::fs::read(dir.join(name)).ok());
        let (target, seq) = match BootState::newest([blocks[0].as_deref(), blocks[1].as_deref()]) {
            Ok((current, i)) => (1 - i, (current.seq + 1) % 3),
            Err(_) => {
                let path = dir.join(ENV_FILES[0]);
                write_block(&path, &self.to_block_with_seq(0)?)?;
                (1, 1)
            }
        };
        Ok(PendingStore {
            path: dir.join(ENV_FILES[target]),
            block: self.to_block_with_seq(seq)?,
            seq,
        })
    }

    /// The second half of [`BootState::store`]: the block written over its copy, synced.
    pub fn commit(&mut self, pending: PendingStore) -> Result<(), GrubEnvError> {
        write_block(&pending.path, &pending.block)?;
        self.seq = pending.seq;
        Ok(())
    }

    pub fn state(&self, slot: Slot) -> SlotState {
        match slot {
            Slot::A => self.a,
            Slot::B => self.b,
        }
    }

    fn set_state(&mut self, slot: Slot, state: SlotState) {
        match slot {
            Slot::A => self.a = state,
            Slot::B => self.b = state,
        }
    }

    pub fn order(&self) -> [Slot; 2] {
        self.order
    }

    /// The slot holds a bootable system (`X_OK=1`).
    pub fn is_ok(&self, slot: Slot) -> bool {
        self.state(slot) != SlotState::Empty
    }

    /// The slot was installed by an update and is not marked good yet (`X_NEW=1`).
    pub fn is_trying(&self, slot: Slot) -> bool {
        matches!(self.state(slot), SlotState::New { .. })
    }

    /// What GRUB's script does at boot: picks the first slot in ORDER that is good, or new
    /// with attempts left (using one), retiring new slots without attempts on the way.
    /// `None`: nothing bootable (GRUB then makes a rescue boot without counting).
    pub fn grub_boot(&mut self) -> Option<Slot> {
        for slot in self.order {
            match self.state(slot) {
                SlotState::Empty => {}
                SlotState::Good => return Some(slot),
                SlotState::New { tries_left } if tries_left > 0 => {
                    self.set_state(
                        slot,
                        SlotState::New {
                            tries_left: tries_left.min(MAX_TRIES) - 1,
                        },
                    );
                    return Some(slot);
                }
                SlotState::New { .. } => self.set_state(slot, SlotState::Empty),
            }
        }
        None
    }

    /// The slot GRUB boots next.
    pub fn next_boot(&self) -> Option<Slot> {
        self.clone().grub_boot()
    }

    /// Marks the running slot's boot good.
    pub fn mark_good(&mut self, slot: Slot) {
        self.set_state(slot, SlotState::Good);
    }

    /// Makes a freshly written slot the first to boot, as a new slot with `tries` attempts.
    pub fn install(&mut self, slot: Slot, tries: u8) {
        self.set_state(
            slot,
            SlotState::New {
                tries_left: tries.clamp(1, MAX_TRIES),
            },
        );
        self.order = [slot, slot.other()];
    }

    /// Puts `slot` first in the boot order (a rollback to a good slot).
    pub fn prefer(&mut self, slot: Slot) {
        self.order = [slot, slot.other()];
    }

    /// Marks a slot unbootable (retired, or about to be overwritten).
    pub fn disable(&mut self, slot: Slot) {
        self.set_state(slot, SlotState::Empty);
    }

    /// A rollback to `slot`: it boots next, only when it holds a good system (a slot that is
    /// new was never marked good, an empty one holds nothing GRUB boots). `Ok(false)` when
    /// it boots next already (nothing to write); otherwise the state that refuses it.
    pub fn roll_back_to(&mut self, slot: Slot) -> Result<bool, SlotState> {
        match self.state(slot) {
            SlotState::Good => {}
            other => return Err(other),
        }
        if self.next_boot() == Some(slot) {
            return Ok(false);
        }
        self.prefer(slot);
        Ok(true)
    }
}

/// A store decided but not written: the copy's path and the block that goes there.
#[derive(Debug, Clone)]
pub struct PendingStore {
    pub path: std::path::PathBuf,
    pub block: [u8; BLOCK_SIZE],
    seq: u8,
}

/// Rewrites a block file in place (no truncation) and syncs it.
fn write_block(path: &Path, block: &[u8]) -> Result<(), GrubEnvError> {
    use std::io::Write;
    let io = |source| GrubEnvError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    f.write_all(block).map_err(io)?;
    f.sync_all().map_err(io)
}
#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-grubenv-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn fresh_block_is_what_grub_editenv_writes() {
        let block = BootState::fresh().to_block_with_seq(1).unwrap();
        let text = String::from_utf8(block.to_vec()).unwrap();
        assert!(text.starts_with(
            "# GRUB Environment Block\nSEQ=1\nORDER=A B\nA_OK=1\nA_NEW=0\nA_LEFT=3\n\
             B_OK=0\nB_NEW=0\nB_LEFT=0\nEND=1\n###"
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
        let dir = scratch("editenv");
        let path = dir.join("env");
        write_block(&path, &BootState::fresh().to_block_with_seq(2).unwrap()).unwrap();
        let list = std::process::Command::new("grub-editenv")
            .arg(&path)
            .arg("list")
            .output()
            .unwrap();
        // GRUB's save_env edits values in place: same layout, still our state.
        let set = std::process::Command::new("grub-editenv")
            .arg(&path)
            .args(["set", "B_OK=1", "B_NEW=1", "B_LEFT=2"])
            .status()
            .unwrap();
        let reread = BootState::parse(&std::fs::read(&path).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&list.stdout),
            "SEQ=2\nORDER=A B\nA_OK=1\nA_NEW=0\nA_LEFT=3\nB_OK=0\nB_NEW=0\nB_LEFT=0\nEND=2\n"
        );
        assert!(set.success());
        assert_eq!(reread.state(Slot::B), SlotState::New { tries_left: 2 });
    }

    #[test]
    fn a_new_slot_gets_three_attempts_then_the_good_one_boots() {
        let mut s = BootState::fresh();
        assert_eq!(s.next_boot(), Some(Slot::A));
        // A good slot is never counted: any number of failed boots keep booting it.
        for _ in 0..10 {
            assert_eq!(s.grub_boot(), Some(Slot::A));
        }
        s.install(Slot::B, DEFAULT_TRIES);
        assert_eq!(s.order(), [Slot::B, Slot::A]);
        for left in (0..DEFAULT_TRIES).rev() {
            assert_eq!(s.grub_boot(), Some(Slot::B));
            assert_eq!(s.state(Slot::B), SlotState::New { tries_left: left });
        }
        // No attempt left: B is retired, A boots.
        assert_eq!(s.grub_boot(), Some(Slot::A));
        assert_eq!(s.state(Slot::B), SlotState::Empty);
        // A new slot marked good on its second attempt stays good.
        s.install(Slot::B, DEFAULT_TRIES);
        assert_eq!(s.grub_boot(), Some(Slot::B));
        assert_eq!(s.grub_boot(), Some(Slot::B));
        s.mark_good(Slot::B);
        for _ in 0..10 {
            assert_eq!(s.grub_boot(), Some(Slot::B));
        }
        s.prefer(Slot::A);
        assert_eq!(s.next_boot(), Some(Slot::A));
        s.disable(Slot::A);
        s.disable(Slot::B);
        assert_eq!(s.next_boot(), None);
    }

    #[test]
    fn roll_back_only_to_a_good_slot() {
        // B installed and not marked good yet: A (good) can be made next, B cannot.
        let mut s = BootState::fresh();
        s.install(Slot::B, DEFAULT_TRIES);
        assert_eq!(s.next_boot(), Some(Slot::B));
        assert_eq!(s.roll_back_to(Slot::A), Ok(true));
        assert_eq!(
            (s.order(), s.next_boot()),
            ([Slot::A, Slot::B], Some(Slot::A))
        );
        // B keeps its state: only the order changed.
        assert_eq!(s.state(Slot::B), SlotState::New { tries_left: 3 });
        assert_eq!(s.roll_back_to(Slot::A), Ok(false));
        assert_eq!(
            s.roll_back_to(Slot::B),
            Err(SlotState::New { tries_left: 3 })
        );
        // Both good (B was marked good after its update): either way round.
        s.install(Slot::B, DEFAULT_TRIES);
        s.mark_good(Slot::B);
        assert_eq!(s.roll_back_to(Slot::A), Ok(true));
        assert_eq!(s.next_boot(), Some(Slot::A));
        assert_eq!(s.roll_back_to(Slot::B), Ok(true));
        assert_eq!(s.next_boot(), Some(Slot::B));
        // Empty or retired: refused, nothing changes.
        s.disable(Slot::A);
        let before = s.clone();
        assert_eq!(s.roll_back_to(Slot::A), Err(SlotState::Empty));
        assert_eq!(s, before);
    }

    #[test]
    fn a_rollback_is_stored_and_read_back() {
        let dir = scratch("rollback");
        let [c0, c1] = BootState::fresh().initial_blocks().unwrap();
        std::fs::write(dir.join(ENV_FILES[0]), c0).unwrap();
        std::fs::write(dir.join(ENV_FILES[1]), c1).unwrap();
        let mut s = BootState::load(&dir).unwrap();
        s.install(Slot::B, DEFAULT_TRIES);
        s.mark_good(Slot::B);
        s.store(&dir).unwrap();
        let mut s = BootState::load(&dir).unwrap();
        assert_eq!(s.roll_back_to(Slot::A), Ok(true));
        s.store(&dir).unwrap();
        let read = BootState::load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read.order(), [Slot::A, Slot::B]);
        assert_eq!(read.next_boot(), Some(Slot::A));
        assert_eq!(read.state(Slot::B), SlotState::Good);
    }

    #[test]
    fn store_alternates_copies_and_load_reads_the_newest() {
        let dir = scratch("alternate");
        let [c0, c1] = BootState::fresh().initial_blocks().unwrap();
        std::fs::write(dir.join(ENV_FILES[0]), c0).unwrap();
        std::fs::write(dir.join(ENV_FILES[1]), c1).unwrap();
        let mut s = BootState::load(&dir).unwrap();
        assert_eq!(s.seq, 1);
        let mut written = Vec::new();
        for i in 0..6 {
            if i % 2 == 0 {
                s.install(Slot::B, DEFAULT_TRIES);
            } else {
                s.mark_good(Slot::B);
            }
            let before = ENV_FILES.map(|n| std::fs::read(dir.join(n)).unwrap());
            s.store(&dir).unwrap();
            let after = ENV_FILES.map(|n| std::fs::read(dir.join(n)).unwrap());
            let changed: Vec<usize> = (0..2).filter(|&c| before[c] != after[c]).collect();
            assert_eq!(changed.len(), 1);
            written.push(changed[0]);
            let loaded = BootState::load(&dir).unwrap();
            assert_eq!(loaded, s);
            assert_eq!(after[changed[0]].len(), BLOCK_SIZE);
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(written, [1, 0, 1, 0, 1, 0]);
    }

    /// Every prefix of a write over the older copy leaves the old or the new state in charge,
    /// never a mix, for every transition berth-init and GRUB make.
    #[test]
    fn a_torn_write_leaves_the_old_or_the_new_state() {
        let fresh = BootState::fresh();
        let mut states = vec![fresh.clone()];
        let mut s = fresh.clone();
        // An update installs B, GRUB uses its attempts, it is retired, installed again,
        // marked good, a rollback prefers A, A is overwritten by the next update.
        s.install(Slot::B, DEFAULT_TRIES);
        states.push(s.clone());
        for _ in 0..4 {
            s.grub_boot();
            states.push(s.clone());
        }
        s.install(Slot::B, DEFAULT_TRIES);
        states.push(s.clone());
        s.grub_boot();
        states.push(s.clone());
        s.mark_good(Slot::B);
        states.push(s.clone());
        s.prefer(Slot::A);
        states.push(s.clone());
        s.disable(Slot::B);
        states.push(s.clone());
        s.install(Slot::B, DEFAULT_TRIES);
        states.push(s.clone());

        let [mut c0, mut c1] = fresh.initial_blocks().unwrap();
        let mut cases = 0;
        for next in &states[1..] {
            let (current, i) = BootState::newest([Some(&c0), Some(&c1)]).unwrap();
            let new_block = next.to_block_with_seq((current.seq + 1) % 3).unwrap();
            let old_block = if i == 0 { c1 } else { c0 };
            let mut seen_new = false;
            for k in 0..=BLOCK_SIZE {
                let mut torn = old_block;
                torn[..k].copy_from_slice(&new_block[..k]);
                let copies = if i == 0 { [c0, torn] } else { [torn, c1] };
                let (got, _) = BootState::newest([Some(&copies[0]), Some(&copies[1])]).unwrap();
                let same =
                    |a: &BootState, b: &BootState| a.order == b.order && a.a == b.a && a.b == b.b;
                assert!(
                    same(&got, &current) || same(&got, next),
                    "prefix {k} of {next:?} over {current:?} reads as {got:?}"
                );
                if same(&got, next) && !same(next, &current) {
                    seen_new = true;
                }
                // Once the state is readable at all, GRUB finds a slot to boot.
                assert!(got.next_boot().is_some() || current.next_boot().is_none());
                cases += 1;
            }
            assert!(
                seen_new
                    || next.order == current.order && next.a == current.a && next.b == current.b
            );
            if i == 0 {
                c1 = new_block;
            } else {
                c0 = new_block;
            }
        }
        assert_eq!(cases, (states.len() - 1) * (BLOCK_SIZE + 1));
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
        let good = String::from_utf8(BootState::fresh().to_block().unwrap().to_vec()).unwrap();
        for (from, to, key) in [
            ("ORDER=A B", "ORDER=A C", "ORDER"),
            ("A_OK=1", "A_OK=y", "A_OK"),
            ("A_LEFT=3", "A_LEFT=x", "A_LEFT"),
            ("END=0", "END=1", "END"),
            ("SEQ=0", "SEQ=7", "SEQ"),
            ("B_NEW=0\n", "", "B_NEW"),
        ] {
            let text = good.replacen(from, to, 1);
            let mut block = [b'#'; BLOCK_SIZE];
            block[..text.len().min(BLOCK_SIZE)]
                .copy_from_slice(&text.as_bytes()[..text.len().min(BLOCK_SIZE)]);
            let err = BootState::parse(&block).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
        assert!(matches!(
            BootState::newest([None, None]),
            Err(GrubEnvError::NoCopy)
        ));
        let mut env = GrubEnv::default();
        assert!(env.set("bad key", "1").is_err());
        env.set("big", &"x".repeat(1100)).unwrap();
        assert!(matches!(env.to_block(), Err(GrubEnvError::Full(_))));
    }
}
