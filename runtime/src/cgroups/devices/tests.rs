//! The device program, run by the test interpreter against the reference semantics and
//! against what a container must and must not be able to open; one program pinned byte by
//! byte with its disassembly.

use super::*;
use crate::bpf::interp;
use oci_spec::runtime::LinuxDeviceCgroupBuilder;

/// `struct bpf_cgroup_dev_ctx` for one request.
fn ctx(kind: DeviceKind, major: u32, minor: u32, access: Access) -> Vec<u8> {
    let mut c = Vec::with_capacity(12);
    c.extend_from_slice(&((access.bits() << 16) | kind as u32).to_le_bytes());
    c.extend_from_slice(&major.to_le_bytes());
    c.extend_from_slice(&minor.to_le_bytes());
    c
}

fn runs(prog: &[Insn], kind: DeviceKind, major: u32, minor: u32, access: Access) -> bool {
    match interp::run(prog, &ctx(kind, major, minor, access)) {
        Ok(1) => true,
        Ok(0) => false,
        other => panic!("program returned {other:?}"),
    }
}

fn rule(
    allow: bool,
    kind: Option<DeviceKind>,
    major: Option<u32>,
    minor: Option<u32>,
    access: &str,
) -> DeviceRule {
    DeviceRule {
        allow,
        kind,
        major,
        minor,
        access: Access::parse(access).unwrap(),
    }
}

use DeviceKind::{Block, Char};

const DENY_ALL: DeviceRule = DeviceRule {
    allow: false,
    kind: None,
    major: None,
    minor: None,
    access: Access::ALL,
};

/// Rule sets covering wildcards, types, partial access, deny after allow and allow after deny.
fn rule_sets() -> Vec<DeviceRules> {
    vec![
        DeviceRules::default(),
        DeviceRules::container_default(),
        DeviceRules::new(vec![rule(true, None, None, None, "rwm")]),
        DeviceRules::new(vec![
            DENY_ALL,
            rule(true, Some(Char), Some(1), Some(11), "r"),
        ]),
        DeviceRules::new(vec![
            rule(true, None, None, None, "rwm"),
            rule(false, Some(Char), Some(1), Some(11), "w"),
            rule(false, Some(Block), None, None, "rw"),
        ]),
        DeviceRules::new(vec![
            DENY_ALL,
            rule(true, Some(Block), Some(8), None, "r"),
            rule(true, Some(Block), Some(8), None, "w"),
            rule(false, Some(Block), Some(8), Some(0), "w"),
            rule(true, Some(Char), None, Some(7), "rw"),
        ]),
        // A deny of a default device: the defaults come after and win, as in runc.
        DeviceRules::new(vec![rule(false, Some(Char), Some(1), Some(3), "rwm")]),
        DeviceRules::new(vec![rule(
            true,
            Some(Char),
            Some(u32::MAX),
            Some(u32::MAX),
            "m",
        )]),
    ]
}

#[test]
fn the_program_agrees_with_the_reference_semantics_everywhere() {
    let majors = [0, 1, 4, 5, 8, 10, 136, 4095, u32::MAX];
    let minors = [0, 1, 2, 3, 5, 7, 8, 9, 11, 200, 1 << 19, u32::MAX];
    for rules in rule_sets() {
        let prog = rules.program().unwrap();
        assert!(
            interp::unreachable(&prog).is_empty(),
            "unreachable code for {:?}",
            rules.rules()
        );
        for kind in [Block, Char] {
            for major in majors {
                for minor in minors {
                    for bits in 1..=7 {
                        let access = Access(bits);
                        assert_eq!(
                            runs(&prog, kind, major, minor, access),
                            rules.allows(kind, major, minor, access),
                            "{kind:?} {major}:{minor} {access} under {:?}",
                            rules.rules()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn container_default_allows_the_usual_devices_and_nothing_else() {
    let prog = DeviceRules::container_default().program().unwrap();
    let rw = Access::READ | Access::WRITE;
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 2),
        (136, 0),
        (136, 42),
    ] {
        assert!(runs(&prog, Char, major, minor, rw), "c {major}:{minor}");
        assert!(
            runs(&prog, Char, major, minor, Access::ALL),
            "c {major}:{minor}"
        );
    }
    // Anything may be created, nothing else used.
    assert!(runs(&prog, Block, 8, 0, Access::MKNOD));
    assert!(runs(&prog, Char, 1, 11, Access::MKNOD));
    assert!(!runs(&prog, Block, 8, 0, Access::READ));
    assert!(!runs(&prog, Char, 1, 11, Access::READ)); // /dev/kmsg
    assert!(!runs(&prog, Char, 1, 1, Access::WRITE)); // /dev/mem
    assert!(!runs(&prog, Char, 10, 229, rw)); // /dev/fuse
    assert!(!runs(&prog, Char, 5, 1, rw)); // the host's console
    assert!(!runs(&prog, Block, 1, 3, Access::READ), "type matters");
}

#[test]
fn allow_all_allows_every_device() {
    let rules = DeviceRules::allow_all();
    let prog = rules.program().unwrap();
    for kind in [Block, Char] {
        for (major, minor) in [(1, 1), (1, 11), (7, 0), (8, 0), (10, 237), (u32::MAX, 0)] {
            assert!(
                runs(&prog, kind, major, minor, Access::ALL),
                "{major}:{minor}"
            );
        }
    }
    // It survives the trip through the spec.
    assert_eq!(DeviceRules::from_oci(&rules.to_oci()).unwrap(), rules);
}

#[test]
fn spec_rules_come_first_and_access_bits_are_separate() {
    let kmsg_read = DeviceRules::new(vec![
        DENY_ALL,
        rule(true, Some(Char), Some(1), Some(11), "r"),
    ]);
    let prog = kmsg_read.program().unwrap();
    assert!(runs(&prog, Char, 1, 11, Access::READ));
    assert!(!runs(&prog, Char, 1, 11, Access::WRITE));
    assert!(!runs(&prog, Char, 1, 11, Access::READ | Access::WRITE));
    assert!(
        runs(&prog, Char, 1, 11, Access::MKNOD),
        "mknod stays allowed"
    );

    let no_null = DeviceRules::new(vec![rule(false, Some(Char), Some(1), Some(3), "rwm")]);
    assert!(runs(&no_null.program().unwrap(), Char, 1, 3, Access::WRITE));

    let all_but = DeviceRules::new(vec![
        rule(true, None, None, None, "rwm"),
        rule(false, Some(Char), Some(1), Some(11), "w"),
    ]);
    let prog = all_but.program().unwrap();
    assert!(runs(&prog, Char, 1, 11, Access::READ));
    assert!(!runs(&prog, Char, 1, 11, Access::WRITE));
    assert!(runs(&prog, Block, 8, 0, Access::ALL));

    // No rule at all for a bit: denied.
    let empty = DeviceRules::default().program().unwrap();
    assert!(!runs(&empty, Char, 4, 1, Access::READ));
    assert!(runs(&empty, Char, 1, 3, Access::READ));
}

#[test]
fn rules_after_a_catch_all_are_not_emitted_and_repeats_collapse() {
    let with_tail = DeviceRules::new(vec![
        rule(true, Some(Char), Some(4), Some(1), "r"),
        rule(false, None, None, None, "r"),
    ]);
    let without = DeviceRules::new(vec![rule(false, None, None, None, "r")]);
    assert_eq!(with_tail.program().unwrap(), without.program().unwrap());

    let twice = DeviceRules::new(DEFAULT_ALLOWED.to_vec());
    assert_eq!(twice.effective(), DEFAULT_ALLOWED.to_vec());
    assert_eq!(
        DeviceRules::container_default().effective().len(),
        DEFAULT_ALLOWED.len() + 1
    );
}

/// The smallest interesting program, pinned: one rule (allow c 1:3 rw) and no defaults.
#[test]
fn golden_program_for_one_rule() {
    let prog = compile(&[rule(true, Some(Char), Some(1), Some(3), "rw")]).unwrap();
    let listing: Vec<String> = prog.iter().map(|i| i.to_string()).collect();
    assert_eq!(
        listing,
        [
            // Unpack the context: r2 access bits, r3 type, r4 major, r5 minor.
            "r2 = *(u32 *)(r1 +0)",
            "r3 = r2",
            "r3 &= 65535",
            "r2 >>= 16",
            "r4 = *(u32 *)(r1 +4)",
            "r5 = *(u32 *)(r1 +8)",
            // mknod asked? No rule names it: deny.
            "r6 = r2",
            "r6 &= 1",
            "if w6 == 0 goto +1",
            "goto +18",
            // read asked? c 1:3 allows it; anything else: deny.
            "r6 = r2",
            "r6 &= 2",
            "if w6 == 0 goto +5",
            "if w3 != 2 goto +3",
            "if w4 != 1 goto +2",
            "if w5 != 3 goto +1",
            "goto +1",
            "goto +10",
            // write asked? The same.
            "r6 = r2",
            "r6 &= 4",
            "if w6 == 0 goto +5",
            "if w3 != 2 goto +3",
            "if w4 != 1 goto +2",
            "if w5 != 3 goto +1",
            "goto +1",
            "goto +2",
            // Every asked bit allowed.
            "r0 = 1",
            "exit",
            // deny:
            "r0 = 0",
            "exit",
        ]
    );
    let bytes = crate::bpf::to_bytes(&prog);
    assert_eq!(bytes.len(), 8 * 30);
    // A few encodings spelled out: LDX|MEM|W r2 <- r1+0; ALU64|AND|K r3 0xffff;
    // JMP32|JNE|K w4 != 1 skip 2; JMP|JA +10; ALU64|MOV|K r0 = 1; JMP|EXIT.
    assert_eq!(bytes[0..8], [0x61, 0x12, 0, 0, 0, 0, 0, 0]);
    assert_eq!(bytes[16..24], [0x57, 0x03, 0, 0, 0xff, 0xff, 0, 0]);
    assert_eq!(bytes[8 * 14..8 * 15], [0x56, 0x04, 2, 0, 1, 0, 0, 0]);
    assert_eq!(bytes[8 * 17..8 * 18], [0x05, 0x00, 10, 0, 0, 0, 0, 0]);
    assert_eq!(bytes[8 * 26..8 * 27], [0xb7, 0x00, 0, 0, 1, 0, 0, 0]);
    assert_eq!(bytes[8 * 27..8 * 28], [0x95, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn oci_rules_are_checked_and_round_trip() {
    let oci = |json: &str| -> Vec<LinuxDeviceCgroup> { serde_json::from_str(json).unwrap() };
    let rules = DeviceRules::from_oci(&oci(r#"[{"allow":false,"access":"rwm"},
            {"allow":true,"type":"c","major":1,"minor":11,"access":"r"},
            {"allow":true,"type":"b","major":-1,"access":""},
            {"allow":true,"type":"u","major":4}]"#))
    .unwrap();
    let text: Vec<String> = rules.rules().iter().map(|r| r.to_string()).collect();
    assert_eq!(
        text,
        [
            "deny a *:* rwm",
            "allow c 1:11 r",
            "allow b *:* rwm",
            "allow c 4:* rwm"
        ]
    );
    assert_eq!(DeviceRules::from_oci(&rules.to_oci()).unwrap(), rules);

    let err = |json: &str| DeviceRules::from_oci(&oci(json)).unwrap_err().to_string();
    let e = err(r#"[{"allow":true},{"allow":true,"type":"c","access":"rx"}]"#);
    assert!(
        e.contains("linux.resources.devices[1].access") && e.contains("`x`"),
        "{e}"
    );
    let e = err(r#"[{"allow":true,"type":"c","major":-5}]"#);
    assert!(e.contains("devices[0].major") && e.contains("-5"), "{e}");
    let e = err(r#"[{"allow":true,"type":"c","minor":4294967296}]"#);
    assert!(e.contains("devices[0].minor"), "{e}");
    let e = err(r#"[{"allow":true,"type":"p"}]"#);
    assert!(e.contains("devices[0].type"), "{e}");

    let built = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(LinuxDeviceType::C)
        .major(10)
        .minor(200)
        .access("rw")
        .build()
        .unwrap();
    assert_eq!(
        DeviceRules::from_oci(&[built]).unwrap().rules()[0].to_string(),
        "allow c 10:200 rw"
    );
}

#[test]
fn default_program_size() {
    let n = DeviceRules::container_default().program().unwrap().len();
    // bench/devices.sh reads this line.
    println!("default device program: {n} instructions");
    assert!(n < 256, "{n} instructions for eleven rules");
}
