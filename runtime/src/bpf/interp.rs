//! A tiny eBPF interpreter for tests: runs the instructions [`super::Asm`] emits against a
//! context buffer, and checks the two things the kernel verifier would refuse first (reads of
//! unset registers, unreachable instructions), so generated programs are tested without root.

use super::insn::{
    Insn, CLASS_ALU, CLASS_ALU64, CLASS_JMP, CLASS_JMP32, CLASS_LDX, MODE_MEM, OP_EXIT, OP_JA,
    SRC_REG,
};

/// Where r1 points: the context lives at this pretend address.
const CTX_BASE: u64 = 0x1000_0000;
const MAX_STEPS: usize = 100_000;

/// Runs `prog` with r1 pointing at `ctx`; returns r0 at `exit`.
pub fn run(prog: &[Insn], ctx: &[u8]) -> Result<u64, String> {
    let mut regs: [Option<u64>; 11] = [None; 11];
    regs[1] = Some(CTX_BASE);
    regs[10] = Some(0);
    let mut pc = 0usize;
    for _ in 0..MAX_STEPS {
        let i = *prog
            .get(pc)
            .ok_or_else(|| format!("pc {pc} runs off the end"))?;
        let get = |r: u8, regs: &[Option<u64>; 11]| {
            regs.get(usize::from(r))
                .copied()
                .flatten()
                .ok_or_else(|| format!("pc {pc}: r{r} read before it is set ({i})"))
        };
        let operand = |regs: &[Option<u64>; 11]| -> Result<u64, String> {
            if i.code & SRC_REG != 0 {
                get(i.src, regs)
            } else {
                // Immediates are sign-extended to 64 bits.
                Ok(i64::from(i.imm) as u64)
            }
        };
        match i.class() {
            CLASS_LDX => {
                if i.code & 0xe0 != MODE_MEM {
                    return Err(format!("pc {pc}: unsupported load mode ({i})"));
                }
                let addr = get(i.src, &regs)?.wrapping_add(i64::from(i.off) as u64);
                let width = match i.code & 0x18 {
                    0x00 => 4,
                    0x08 => 2,
                    0x10 => 1,
                    _ => 8,
                };
                let start = addr
                    .checked_sub(CTX_BASE)
                    .and_then(|o| usize::try_from(o).ok())
                    .filter(|o| o + width <= ctx.len())
                    .ok_or_else(|| format!("pc {pc}: load outside the context ({i})"))?;
                let mut bytes = [0u8; 8];
                bytes[..width].copy_from_slice(&ctx[start..start + width]);
                regs[usize::from(i.dst)] = Some(u64::from_le_bytes(bytes));
                pc += 1;
            }
            class @ (CLASS_ALU | CLASS_ALU64) => {
                let op = i.code & 0xf0;
                let b = operand(&regs)?;
                let a = if op == 0xb0 { 0 } else { get(i.dst, &regs)? };
                let wide = class == CLASS_ALU64;
                let (a, b) = if wide {
                    (a, b)
                } else {
                    (a & 0xffff_ffff, b & 0xffff_ffff)
                };
                let shift_mask = if wide { 63 } else { 31 };
                let r = match op {
                    0x00 => a.wrapping_add(b),
                    0x10 => a.wrapping_sub(b),
                    0x40 => a | b,
                    0x50 => a & b,
                    0x60 => a << (b & shift_mask),
                    0x70 => a >> (b & shift_mask),
                    0xa0 => a ^ b,
                    0xb0 => b,
                    _ => return Err(format!("pc {pc}: unsupported ALU op ({i})")),
                };
                regs[usize::from(i.dst)] = Some(if wide { r } else { r & 0xffff_ffff });
                pc += 1;
            }
            class @ (CLASS_JMP | CLASS_JMP32) => {
                let op = i.code & 0xf0;
                if op == OP_EXIT && class == CLASS_JMP {
                    return get(0, &regs);
                }
                let taken = if op == OP_JA && class == CLASS_JMP {
                    true
                } else {
                    let (mut a, mut b) = (get(i.dst, &regs)?, operand(&regs)?);
                    if class == CLASS_JMP32 {
                        a &= 0xffff_ffff;
                        b &= 0xffff_ffff;
                    }
                    match op {
                        0x10 => a == b,
                        0x20 => a > b,
                        0x30 => a >= b,
                        0x40 => a & b != 0,
                        0x50 => a != b,
                        0xa0 => a < b,
                        0xb0 => a <= b,
                        _ => return Err(format!("pc {pc}: unsupported jump ({i})")),
                    }
                };
                pc = if taken {
                    usize::try_from(pc as i64 + 1 + i64::from(i.off))
                        .map_err(|_| format!("pc {pc}: jump before the start"))?
                } else {
                    pc + 1
                };
            }
            _ => return Err(format!("pc {pc}: unsupported instruction ({i})")),
        }
    }
    Err("no exit within the step limit".into())
}

/// Indices of instructions no path from the first one reaches (the verifier's
/// "unreachable insn").
pub fn unreachable(prog: &[Insn]) -> Vec<usize> {
    let mut seen = vec![false; prog.len()];
    let mut todo = vec![0usize];
    while let Some(pc) = todo.pop() {
        let Some(i) = prog.get(pc) else { continue };
        if std::mem::replace(&mut seen[pc], true) {
            continue;
        }
        let class = i.class();
        let op = i.code & 0xf0;
        let jump = class == CLASS_JMP || class == CLASS_JMP32;
        let target = (pc as i64 + 1 + i64::from(i.off)) as usize;
        if jump && class == CLASS_JMP && op == OP_EXIT {
            continue;
        }
        if jump && class == CLASS_JMP && op == OP_JA {
            todo.push(target);
            continue;
        }
        if jump {
            todo.push(target);
        }
        todo.push(pc + 1);
    }
    seen.iter()
        .enumerate()
        .filter(|(_, s)| !**s)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{Alu, Asm, Cond, Reg, Size};
    use super::*;

    #[test]
    fn runs_loads_alu_and_jumps() {
        let mut a = Asm::new();
        let big = a.label();
        a.load(Size::W, Reg::R2, Reg::R1, 4);
        a.alu64_imm(Alu::Rsh, Reg::R2, 8);
        a.jump32_imm(Cond::Gt, Reg::R2, 10, big);
        a.ret(0);
        a.bind(big);
        a.ret(1);
        let p = a.finish().unwrap();
        let ctx = |v: u32| {
            let mut c = vec![0u8; 8];
            c[4..].copy_from_slice(&v.to_le_bytes());
            c
        };
        assert_eq!(run(&p, &ctx(10 << 8)), Ok(0));
        assert_eq!(run(&p, &ctx(11 << 8)), Ok(1));
        assert!(unreachable(&p).is_empty());
    }

    #[test]
    fn refuses_what_the_verifier_refuses() {
        let mut a = Asm::new();
        a.alu64_reg(Alu::Mov, Reg::R0, Reg::R6);
        a.ret(0);
        let p = a.finish().unwrap();
        assert!(run(&p, &[]).unwrap_err().contains("r6 read before"));

        let mut a = Asm::new();
        a.load(Size::W, Reg::R2, Reg::R1, 12);
        a.ret(0);
        let p = a.finish().unwrap();
        assert!(run(&p, &[0; 12])
            .unwrap_err()
            .contains("outside the context"));

        let mut a = Asm::new();
        a.ret(0);
        a.ret(1);
        assert_eq!(unreachable(&a.finish().unwrap()), vec![2, 3]);
    }
}
