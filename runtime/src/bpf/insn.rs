//! eBPF instructions and a small assembler with forward labels.
//!
//! An instruction is 8 bytes: opcode, destination and source register (4 bits each), a signed
//! 16-bit offset (jump distance or memory offset) and a signed 32-bit immediate. Jumps are
//! relative to the next instruction; [`Asm`] resolves them from labels when the program is
//! finished, so generators can jump forward without counting.

use std::fmt;

// Instruction classes (low 3 bits of the opcode).
pub(crate) const CLASS_LDX: u8 = 0x01;
pub(crate) const CLASS_ALU: u8 = 0x04;
pub(crate) const CLASS_JMP: u8 = 0x05;
pub(crate) const CLASS_JMP32: u8 = 0x06;
pub(crate) const CLASS_ALU64: u8 = 0x07;
/// Memory mode of a load.
pub(crate) const MODE_MEM: u8 = 0x60;
/// Source bit: operand is the source register (else the immediate).
pub(crate) const SRC_REG: u8 = 0x08;
pub(crate) const OP_JA: u8 = 0x00;
pub(crate) const OP_EXIT: u8 = 0x90;

/// A register: r0 (return value), r1-r5 (arguments; r1 holds the context), r6-r9
/// (callee-saved), r10 (read-only frame pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reg {
    R0 = 0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    R10,
}

/// Arithmetic operations (the opcode's high 4 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Alu {
    Add = 0x00,
    Sub = 0x10,
    Or = 0x40,
    And = 0x50,
    Lsh = 0x60,
    Rsh = 0x70,
    Xor = 0xa0,
    Mov = 0xb0,
}

/// Jump conditions (the opcode's high 4 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cond {
    Eq = 0x10,
    Gt = 0x20,
    Ge = 0x30,
    /// `dst & operand != 0`
    Set = 0x40,
    Ne = 0x50,
    Lt = 0xa0,
    Le = 0xb0,
}

/// Width of a memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Size {
    /// 32 bits
    W = 0x00,
    /// 16 bits
    H = 0x08,
    /// 8 bits
    B = 0x10,
    /// 64 bits
    DW = 0x18,
}

/// One instruction, as `struct bpf_insn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// The kernel's byte layout (little-endian, x86_64): code, dst | src << 4, off, imm.
    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.dst & 0x0f) | (self.src << 4);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }

    pub fn decode(b: [u8; 8]) -> Insn {
        Insn {
            code: b[0],
            dst: b[1] & 0x0f,
            src: b[1] >> 4,
            off: i16::from_le_bytes([b[2], b[3]]),
            imm: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    pub(crate) fn class(&self) -> u8 {
        self.code & 0x07
    }
}

/// Readable assembly, for test failures and debugging (`r2 >>= 16`, `if w3 != 2 goto +4`).
impl fmt::Display for Insn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = self.code & 0xf0;
        let operand = if self.code & SRC_REG != 0 {
            format!("r{}", self.src)
        } else {
            self.imm.to_string()
        };
        match self.class() {
            CLASS_LDX => write!(
                f,
                "r{} = *(u{} *)(r{} {:+})",
                self.dst,
                match self.code & 0x18 {
                    0x00 => 32,
                    0x08 => 16,
                    0x10 => 8,
                    _ => 64,
                },
                self.src,
                self.off
            ),
            CLASS_ALU | CLASS_ALU64 => {
                let r = if self.class() == CLASS_ALU64 {
                    'r'
                } else {
                    'w'
                };
                let sym = match op {
                    0x00 => "+=",
                    0x10 => "-=",
                    0x40 => "|=",
                    0x50 => "&=",
                    0x60 => "<<=",
                    0x70 => ">>=",
                    0xa0 => "^=",
                    0xb0 => "=",
                    _ => "?=",
                };
                write!(f, "{r}{} {sym} {operand}", self.dst)
            }
            CLASS_JMP | CLASS_JMP32 => {
                let r = if self.class() == CLASS_JMP { 'r' } else { 'w' };
                let sym = match op {
                    OP_JA => return write!(f, "goto {:+}", self.off),
                    OP_EXIT => return f.write_str("exit"),
                    0x10 => "==",
                    0x20 => ">",
                    0x30 => ">=",
                    0x40 => "&",
                    0x50 => "!=",
                    0xa0 => "<",
                    0xb0 => "<=",
                    _ => "?",
                };
                write!(f, "if {r}{} {sym} {operand} goto {:+}", self.dst, self.off)
            }
            _ => write!(f, "insn {:#04x}", self.code),
        }
    }
}

/// A jump target, bound to a position with [`Asm::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    #[error("eBPF assembly: label {0} is jumped to but never bound")]
    UnboundLabel(usize),
    #[error("eBPF assembly: a jump of {0} instructions does not fit the 16-bit offset")]
    JumpTooFar(usize),
    #[error("eBPF assembly: jumps must go forward (instruction {at} to {target})")]
    BackwardJump { at: usize, target: usize },
}

/// Emits instructions; jumps name labels, resolved by [`Asm::finish`].
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    /// (instruction index, label) of every jump.
    jumps: Vec<(usize, Label)>,
}

fn insn(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        dst: dst as u8,
        src: src as u8,
        off,
        imm,
    }
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    /// A new, unbound label.
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Binds `label` to the next instruction emitted.
    pub fn bind(&mut self, label: Label) {
        if let Some(slot) = self.labels.get_mut(label.0) {
            *slot = Some(self.insns.len());
        }
    }

    /// Whether some jump targets `label` (code behind an unused label is unreachable, which
    /// the verifier rejects).
    pub fn is_used(&self, label: Label) -> bool {
        self.jumps.iter().any(|(_, l)| *l == label)
    }

    /// Instructions emitted so far.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// `dst op= imm` on 64 bits.
    pub fn alu64_imm(&mut self, op: Alu, dst: Reg, imm: i32) {
        self.insns
            .push(insn(CLASS_ALU64 | op as u8, dst, Reg::R0, 0, imm));
    }

    /// `dst op= src` on 64 bits.
    pub fn alu64_reg(&mut self, op: Alu, dst: Reg, src: Reg) {
        self.insns
            .push(insn(CLASS_ALU64 | op as u8 | SRC_REG, dst, src, 0, 0));
    }

    /// `dst = *(size *)(base + off)`, zero-extended.
    pub fn load(&mut self, size: Size, dst: Reg, base: Reg, off: i16) {
        self.insns
            .push(insn(CLASS_LDX | MODE_MEM | size as u8, dst, base, off, 0));
    }

    /// `if (u32)dst cond (u32)imm goto target`: a 32-bit compare, so every u32 value can be
    /// an immediate without sign-extension surprises.
    pub fn jump32_imm(&mut self, cond: Cond, dst: Reg, imm: u32, target: Label) {
        self.jumps.push((self.insns.len(), target));
        self.insns.push(insn(
            CLASS_JMP32 | cond as u8,
            dst,
            Reg::R0,
            0,
            i32::from_ne_bytes(imm.to_ne_bytes()),
        ));
    }

    /// `goto target`.
    pub fn goto(&mut self, target: Label) {
        self.jumps.push((self.insns.len(), target));
        self.insns
            .push(insn(CLASS_JMP | OP_JA, Reg::R0, Reg::R0, 0, 0));
    }

    /// `r0 = value; exit`.
    pub fn ret(&mut self, value: i32) {
        self.alu64_imm(Alu::Mov, Reg::R0, value);
        self.insns
            .push(insn(CLASS_JMP | OP_EXIT, Reg::R0, Reg::R0, 0, 0));
    }

    /// Resolves the jumps. Only forward jumps are emitted (eBPF programs of this kind have no
    /// loops), which this checks too.
    pub fn finish(mut self) -> Result<Vec<Insn>, AsmError> {
        for (at, label) in &self.jumps {
            let target = self
                .labels
                .get(label.0)
                .copied()
                .flatten()
                .ok_or(AsmError::UnboundLabel(label.0))?;
            if target <= *at {
                return Err(AsmError::BackwardJump { at: *at, target });
            }
            let distance = target - at - 1;
            let off = i16::try_from(distance).map_err(|_| AsmError::JumpTooFar(distance))?;
            self.insns[*at].off = off;
        }
        Ok(self.insns)
    }
}

/// The program as the bytes `BPF_PROG_LOAD` takes.
pub fn to_bytes(insns: &[Insn]) -> Vec<u8> {
    insns.iter().flat_map(Insn::encode).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_matches_the_kernel_layout() {
        // r2 = *(u32 *)(r1 + 4): LDX|MEM|W = 0x61, dst 2, src 1, off 4.
        let i = insn(0x61, Reg::R2, Reg::R1, 4, 0);
        assert_eq!(i.encode(), [0x61, 0x12, 4, 0, 0, 0, 0, 0]);
        assert_eq!(Insn::decode(i.encode()), i);
        // r0 = -1: ALU64|MOV|K = 0xb7, imm little-endian.
        let i = insn(0xb7, Reg::R0, Reg::R0, 0, -1);
        assert_eq!(i.encode(), [0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn labels_resolve_to_relative_offsets() {
        let mut a = Asm::new();
        let end = a.label();
        let unused = a.label();
        a.jump32_imm(Cond::Ne, Reg::R3, 0xffff_fff0, end); // 0: skips 1 and 2
        a.alu64_imm(Alu::Mov, Reg::R0, 1); // 1
        a.goto(end); // 2: falls through to 3
        a.bind(end);
        a.ret(0); // 3, 4
        assert!(a.is_used(end) && !a.is_used(unused));
        let p = a.finish().unwrap();
        assert_eq!(p.len(), 5);
        assert_eq!((p[0].off, p[2].off), (2, 0));
        assert_eq!(p[0].imm, -16, "u32 immediates keep their bits");
        assert_eq!(p[0].to_string(), "if w3 != -16 goto +2");
        assert_eq!(p[3].to_string(), "r0 = 0");
        assert_eq!(p[4].to_string(), "exit");
    }

    #[test]
    fn unbound_and_backward_labels_are_errors() {
        let mut a = Asm::new();
        let l = a.label();
        a.goto(l);
        assert_eq!(a.finish(), Err(AsmError::UnboundLabel(0)));

        let mut a = Asm::new();
        let l = a.label();
        a.bind(l);
        a.goto(l);
        assert!(matches!(a.finish(), Err(AsmError::BackwardJump { .. })));
    }

    #[test]
    fn jumps_beyond_the_offset_range_are_errors() {
        let mut a = Asm::new();
        let l = a.label();
        a.goto(l);
        for _ in 0..40_000 {
            a.alu64_imm(Alu::Add, Reg::R1, 1);
        }
        a.bind(l);
        a.ret(1);
        assert_eq!(a.finish(), Err(AsmError::JumpTooFar(40_000)));
    }
}
