//! Device-mapper through `/dev/mapper/control` (no libdevmapper, no dmsetup): just enough to
//! read a device's table and create read-only devices (a copy of a table, a linear slice).
//! The ioctl buffers are built and parsed here and handed to a [`DmControl`], so their
//! encoding is tested without root.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::errno::Errno;

pub const CONTROL: &str = "/dev/mapper/control";

/// `struct dm_ioctl` (linux/dm-ioctl.h): the header of every request.
pub const DM_IOCTL_SIZE: usize = 312;
/// `struct dm_target_spec`, followed by the target's NUL-terminated parameters.
pub const DM_TARGET_SPEC_SIZE: usize = 40;
const DM_NAME_LEN: usize = 128;
const DM_MAX_TYPE_NAME: usize = 16;

/// Interface version 4.0.0: the kernel accepts any request of major 4 whose minor is not newer
/// than its own.
const VERSION: [u32; 3] = [4, 0, 0];

pub const DM_READONLY_FLAG: u32 = 1 << 0;
pub const DM_SUSPEND_FLAG: u32 = 1 << 1;
/// DM_TABLE_STATUS: the table's parameters rather than the targets' status.
pub const DM_STATUS_TABLE_FLAG: u32 = 1 << 4;
pub const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;

/// `_IOWR(0xfd, cmd, struct dm_ioctl)`.
const fn dm_iowr(cmd: u64) -> u64 {
    (3 << 30) | ((DM_IOCTL_SIZE as u64) << 16) | (0xfd << 8) | cmd
}
pub const DM_DEV_CREATE: u64 = dm_iowr(3);
pub const DM_DEV_REMOVE: u64 = dm_iowr(4);
pub const DM_DEV_SUSPEND: u64 = dm_iowr(6);
pub const DM_TABLE_LOAD: u64 = dm_iowr(9);
pub const DM_TABLE_STATUS: u64 = dm_iowr(12);

/// Room for a table read back: a verity table is about 300 bytes.
const STATUS_BUFFER: usize = 16 * 1024;

// Field offsets in struct dm_ioctl.
const OFF_DATA_SIZE: usize = 12;
const OFF_DATA_START: usize = 16;
const OFF_TARGET_COUNT: usize = 20;
const OFF_FLAGS: usize = 28;
const OFF_TARGET_NEXT: usize = 20;
const OFF_DEV: usize = 40;
const OFF_NAME: usize = 48;

#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error("cannot open {CONTROL}: {0}")]
    Open(#[source] std::io::Error),
    #[error("device-mapper name {0:?} is empty, too long or not printable")]
    Name(String),
    #[error("DM_TABLE_STATUS of {dev}: {what}")]
    Status { dev: DevNum, what: &'static str },
    #[error("target parameters {0:?} contain a NUL or do not fit")]
    Params(String),
    #[error("{op} {name}: {errno}")]
    Ioctl {
        op: &'static str,
        name: String,
        errno: Errno,
    },
}

/// Where requests go: the control device, or a recorder in tests.
pub trait DmControl {
    /// Issues `request` with `buf` (a dm_ioctl and its data); the kernel writes its answer
    /// back into `buf`.
    fn ioctl(&mut self, request: u64, buf: &mut [u8]) -> Result<(), Errno>;
}

/// `/dev/mapper/control`.
pub struct ControlDevice(File);

impl ControlDevice {
    pub fn open() -> Result<ControlDevice, DmError> {
        File::options()
            .read(true)
            .write(true)
            .open(Path::new(CONTROL))
            .map(ControlDevice)
            .map_err(DmError::Open)
    }
}

impl DmControl for ControlDevice {
    fn ioctl(&mut self, request: u64, buf: &mut [u8]) -> Result<(), Errno> {
        if buf.len() < DM_IOCTL_SIZE {
            return Err(Errno::EINVAL);
        }
        // SAFETY: every DM ioctl reads and writes at most `data_size` bytes from the start of
        // the buffer, and data_size (set by `header`) never exceeds buf.len().
        let rc =
            unsafe { libc::ioctl(self.0.as_raw_fd(), request as libc::Ioctl, buf.as_mut_ptr()) };
        Errno::result(rc).map(drop)
    }
}

/// A block device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl std::fmt::Display for DevNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl DevNum {
    /// From the kernel's `huge_encode_dev` (the `dev` field of dm_ioctl).
    pub fn decode(dev: u64) -> DevNum {
        DevNum {
            major: ((dev >> 8) & 0xfff) as u32,
            minor: ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32,
        }
    }

    pub fn encode(self) -> u64 {
        let (ma, mi) = (u64::from(self.major), u64::from(self.minor));
        (mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12)
    }
}

/// One target of a table: `length` sectors from `start` of the device, mapped by `kind`
/// (`linear`, `verity`, ...) with `params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub start: u64,
    pub length: u64,
    pub kind: String,
    pub params: String,
}

impl Target {
    /// `length` sectors of `backing` from its sector `offset`.
    pub fn linear(backing: DevNum, offset: u64, length: u64) -> Target {
        Target {
            start: 0,
            length,
            kind: "linear".into(),
            params: format!("{backing} {offset}"),
        }
    }
}

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn get32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at + 4)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn get64(buf: &[u8], at: usize) -> Option<u64> {
    let b = buf.get(at..at + 8)?;
    let mut x = [0u8; 8];
    x.copy_from_slice(b);
    Some(u64::from_ne_bytes(x))
}

fn check_name(name: &str) -> Result<(), DmError> {
    if name.is_empty()
        || name.len() >= DM_NAME_LEN
        || !name.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
    {
        return Err(DmError::Name(name.into()));
    }
    Ok(())
}

/// A dm_ioctl header for device `name` in a zeroed buffer of `size` bytes (>= 312).
fn header(name: &str, size: usize, flags: u32) -> Vec<u8> {
    let mut buf = vec![0u8; size];
    for (i, v) in VERSION.iter().enumerate() {
        put32(&mut buf, 4 * i, *v);
    }
    put32(&mut buf, OFF_DATA_SIZE, size as u32);
    put32(&mut buf, OFF_DATA_START, DM_IOCTL_SIZE as u32);
    put32(&mut buf, OFF_FLAGS, flags);
    buf[OFF_NAME..OFF_NAME + name.len()].copy_from_slice(name.as_bytes());
    buf
}

/// DM_DEV_CREATE's buffer.
pub fn create_request(name: &str) -> Result<Vec<u8>, DmError> {
    check_name(name)?;
    Ok(header(name, DM_IOCTL_SIZE, 0))
}

/// DM_TABLE_LOAD's buffer: `targets`, read-only.
pub fn table_load_request(name: &str, targets: &[Target]) -> Result<Vec<u8>, DmError> {
    check_name(name)?;
    let mut specs = Vec::new();
    for t in targets {
        if t.params.contains('\0')
            || t.kind.is_empty()
            || t.kind.len() >= DM_MAX_TYPE_NAME
            || t.kind.contains('\0')
        {
            return Err(DmError::Params(format!("{} {}", t.kind, t.params)));
        }
        // The spec and its NUL-terminated parameters, padded so the next spec is aligned;
        // `next` counts from this spec to the next one.
        let len = (DM_TARGET_SPEC_SIZE + t.params.len() + 1).next_multiple_of(8);
        let mut spec = vec![0u8; len];
        spec[0..8].copy_from_slice(&t.start.to_ne_bytes());
        spec[8..16].copy_from_slice(&t.length.to_ne_bytes());
        // status (16..20) is the kernel's.
        put32(&mut spec, OFF_TARGET_NEXT, len as u32);
        spec[24..24 + t.kind.len()].copy_from_slice(t.kind.as_bytes());
        spec[DM_TARGET_SPEC_SIZE..DM_TARGET_SPEC_SIZE + t.params.len()]
            .copy_from_slice(t.params.as_bytes());
        specs.extend(spec);
    }
    let size = DM_IOCTL_SIZE + specs.len();
    if u32::try_from(size).is_err() {
        return Err(DmError::Params(format!("{} targets", targets.len())));
    }
    let mut buf = header(name, size, DM_READONLY_FLAG);
    put32(&mut buf, OFF_TARGET_COUNT, targets.len() as u32);
    buf[DM_IOCTL_SIZE..].copy_from_slice(&specs);
    Ok(buf)
}

/// DM_TABLE_STATUS's buffer asking for the table of device `dev` (no name: looked up by
/// number).
pub fn table_status_request(dev: DevNum) -> Vec<u8> {
    let mut buf = header("", STATUS_BUFFER, DM_STATUS_TABLE_FLAG);
    buf[OFF_DEV..OFF_DEV + 8].copy_from_slice(&dev.encode().to_ne_bytes());
    buf
}

/// The targets in a DM_TABLE_STATUS answer. The kernel writes the first spec at
/// `data_start`, each `next` counting from `data_start`.
pub fn parse_table_status(dev: DevNum, buf: &[u8]) -> Result<Vec<Target>, DmError> {
    let bad = |what| DmError::Status { dev, what };
    let flags = get32(buf, OFF_FLAGS).ok_or_else(|| bad("short answer"))?;
    if flags & DM_BUFFER_FULL_FLAG != 0 {
        return Err(bad("table larger than the buffer"));
    }
    let count = get32(buf, OFF_TARGET_COUNT).ok_or_else(|| bad("short answer"))?;
    let data_start = get32(buf, OFF_DATA_START).ok_or_else(|| bad("short answer"))? as usize;
    let mut targets = Vec::new();
    let mut at = data_start;
    for _ in 0..count {
        let start = get64(buf, at).ok_or_else(|| bad("target past the answer"))?;
        let length = get64(buf, at + 8).ok_or_else(|| bad("target past the answer"))?;
        let next = get32(buf, at + OFF_TARGET_NEXT).ok_or_else(|| bad("target past the answer"))?;
        let text = |from: usize, max: usize| -> Result<String, DmError> {
            let field = buf
                .get(from..(from + max).min(buf.len()))
                .ok_or_else(|| bad("target past the answer"))?;
            let end = field
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| bad("unterminated string"))?;
            String::from_utf8(field[..end].to_vec()).map_err(|_| bad("string not UTF-8"))
        };
        targets.push(Target {
            start,
            length,
            kind: text(at + 24, DM_MAX_TYPE_NAME)?,
            params: text(at + DM_TARGET_SPEC_SIZE, buf.len())?,
        });
        at = data_start + next as usize;
    }
    if targets.is_empty() {
        return Err(bad("no table loaded"));
    }
    Ok(targets)
}

/// The live table of device `dev`.
pub fn table_of(ctl: &mut dyn DmControl, dev: DevNum) -> Result<Vec<Target>, DmError> {
    let mut buf = table_status_request(dev);
    call(
        ctl,
        "DM_TABLE_STATUS",
        DM_TABLE_STATUS,
        &dev.to_string(),
        &mut buf,
    )?;
    parse_table_status(dev, &buf)
}

/// DM_DEV_SUSPEND without DM_SUSPEND_FLAG: resume, making the loaded table live.
pub fn resume_request(name: &str) -> Result<Vec<u8>, DmError> {
    check_name(name)?;
    Ok(header(name, DM_IOCTL_SIZE, 0))
}

/// DM_DEV_REMOVE's buffer.
pub fn remove_request(name: &str) -> Result<Vec<u8>, DmError> {
    check_name(name)?;
    Ok(header(name, DM_IOCTL_SIZE, 0))
}

fn call(
    ctl: &mut dyn DmControl,
    op: &'static str,
    request: u64,
    name: &str,
    buf: &mut [u8],
) -> Result<(), DmError> {
    ctl.ioctl(request, buf).map_err(|errno| DmError::Ioctl {
        op,
        name: name.into(),
        errno,
    })
}

/// Creates device `name` with `targets`, read-only, and makes it live; returns its device
/// number. A device created but not made live is removed again.
pub fn create(ctl: &mut dyn DmControl, name: &str, targets: &[Target]) -> Result<DevNum, DmError> {
    let mut buf = create_request(name)?;
    let mut load = table_load_request(name, targets)?;
    call(ctl, "DM_DEV_CREATE", DM_DEV_CREATE, name, &mut buf)?;
    let mut dev = [0u8; 8];
    dev.copy_from_slice(&buf[OFF_DEV..OFF_DEV + 8]);
    let dev = DevNum::decode(u64::from_ne_bytes(dev));
    let live = call(ctl, "DM_TABLE_LOAD", DM_TABLE_LOAD, name, &mut load).and_then(|()| {
        let mut resume = resume_request(name)?;
        call(
            ctl,
            "DM_DEV_SUSPEND (resume)",
            DM_DEV_SUSPEND,
            name,
            &mut resume,
        )
    });
    if let Err(e) = live {
        if let Ok(mut remove) = remove_request(name) {
            let _ = ctl.ioctl(DM_DEV_REMOVE, &mut remove);
        }
        return Err(e);
    }
    Ok(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        calls: Vec<(u64, Vec<u8>)>,
        dev: u64,
        fail: Option<(u64, Errno)>,
    }

    impl DmControl for Recorder {
        fn ioctl(&mut self, request: u64, buf: &mut [u8]) -> Result<(), Errno> {
            self.calls.push((request, buf.to_vec()));
            if let Some((r, e)) = self.fail {
                if r == request {
                    return Err(e);
                }
            }
            if request == DM_DEV_CREATE {
                buf[OFF_DEV..OFF_DEV + 8].copy_from_slice(&self.dev.to_ne_bytes());
            }
            Ok(())
        }
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_ne_bytes(x)
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        // Values of DM_DEV_CREATE etc. as the C macros expand on Linux.
        assert_eq!(DM_DEV_CREATE, 0xc138_fd03);
        assert_eq!(DM_DEV_REMOVE, 0xc138_fd04);
        assert_eq!(DM_DEV_SUSPEND, 0xc138_fd06);
        assert_eq!(DM_TABLE_LOAD, 0xc138_fd09);
        assert_eq!(DM_TABLE_STATUS, 0xc138_fd0c);
    }

    const VERITY: &str = "1 253:2 253:2 4096 4096 4066 4067 blake2b-512 e058c38b 4d1550d0";

    /// A DM_TABLE_STATUS answer laid out as the kernel's retrieve_status writes it.
    fn status_answer(targets: &[(u64, u64, &str, &str)]) -> Vec<u8> {
        let mut b = table_status_request(DevNum {
            major: 253,
            minor: 0,
        });
        put32(&mut b, OFF_TARGET_COUNT, targets.len() as u32);
        let mut out = 0usize;
        for (start, len, kind, params) in targets {
            let at = DM_IOCTL_SIZE + out;
            b[at..at + 8].copy_from_slice(&start.to_ne_bytes());
            b[at + 8..at + 16].copy_from_slice(&len.to_ne_bytes());
            b[at + 24..at + 24 + kind.len()].copy_from_slice(kind.as_bytes());
            let p = at + 40;
            b[p..p + params.len()].copy_from_slice(params.as_bytes());
            b[p + params.len()] = 0;
            out = (out + 40 + params.len() + 1).next_multiple_of(8);
            put32(&mut b, at + 20, out as u32);
        }
        b
    }

    #[test]
    fn table_status_request_and_answer() {
        let dev = DevNum {
            major: 253,
            minor: 0,
        };
        let req = table_status_request(dev);
        assert_eq!(req.len(), STATUS_BUFFER);
        assert_eq!(u32_at(&req, 12), STATUS_BUFFER as u32, "data_size");
        assert_eq!(u32_at(&req, 16), 312, "data_start");
        assert_eq!(u32_at(&req, 28), DM_STATUS_TABLE_FLAG);
        assert_eq!(u64_at(&req, 40), 0xfd00, "dev, looked up by number");
        assert!(req[48..312].iter().all(|&x| x == 0), "no name, no uuid");

        let answer = status_answer(&[(0, 32528, "verity", VERITY)]);
        let targets = parse_table_status(dev, &answer).unwrap();
        assert_eq!(
            targets,
            [Target {
                start: 0,
                length: 32528,
                kind: "verity".into(),
                params: VERITY.into()
            }]
        );
        // Two targets: `next` counts from data_start.
        let answer = status_answer(&[(0, 8, "linear", "8:1 0"), (8, 16, "zero", "")]);
        let targets = parse_table_status(dev, &answer).unwrap();
        assert_eq!(targets[1].kind, "zero");
        assert_eq!((targets[1].start, targets[1].length), (8, 16));

        let mut full = status_answer(&[(0, 8, "verity", VERITY)]);
        put32(&mut full, OFF_FLAGS, DM_BUFFER_FULL_FLAG);
        assert!(parse_table_status(dev, &full).is_err());
        assert!(parse_table_status(dev, &status_answer(&[])).is_err());
        assert!(parse_table_status(dev, &answer[..330]).is_err());
    }

    #[test]
    fn a_copied_table_loads_as_it_was_read() {
        let t = Target {
            start: 0,
            length: 32528,
            kind: "verity".into(),
            params: VERITY.into(),
        };
        let b = table_load_request("berth-extensions", &[t]).unwrap();
        let spec = &b[312..];
        assert_eq!(u64_at(spec, 8), 32528);
        assert_eq!(&spec[24..31], b"verity\0");
        assert_eq!(&spec[40..40 + VERITY.len()], VERITY.as_bytes());
        assert_eq!(spec[40 + VERITY.len()], 0);
        assert_eq!(u32_at(spec, 20) as usize, spec.len());
        let bad = Target {
            kind: "a-type-name-too-long".into(),
            ..Target::linear(DevNum { major: 1, minor: 1 }, 0, 8)
        };
        assert!(table_load_request("x", &[bad]).is_err());
    }

    #[test]
    fn table_load_buffer_bytes() {
        let t = Target::linear(
            DevNum {
                major: 252,
                minor: 0,
            },
            2568,
            16,
        );
        let b = table_load_request("berth-ext-hello", &[t]).unwrap();
        // Params "252:0 2568" + NUL = 11 bytes; 40 + 11 = 51, padded to 56.
        assert_eq!(b.len(), 312 + 56);
        assert_eq!([u32_at(&b, 0), u32_at(&b, 4), u32_at(&b, 8)], [4, 0, 0]);
        assert_eq!(u32_at(&b, 12), 368, "data_size");
        assert_eq!(u32_at(&b, 16), 312, "data_start");
        assert_eq!(u32_at(&b, 20), 1, "target_count");
        assert_eq!(u32_at(&b, 28), DM_READONLY_FLAG, "flags");
        assert_eq!(u64_at(&b, 40), 0, "dev");
        assert_eq!(&b[48..63], b"berth-ext-hello");
        assert!(b[63..312].iter().all(|&x| x == 0), "name, uuid, padding");
        let spec = &b[312..];
        assert_eq!(u64_at(spec, 0), 0, "sector_start");
        assert_eq!(u64_at(spec, 8), 16, "length");
        assert_eq!(u32_at(spec, 16), 0, "status");
        assert_eq!(u32_at(spec, 20), 56, "next");
        assert_eq!(&spec[24..40], b"linear\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(&spec[40..], b"252:0 2568\0\0\0\0\0\0");
    }

    #[test]
    fn create_load_resume_in_order() {
        let mut r = Recorder {
            dev: DevNum {
                major: 252,
                minor: 3,
            }
            .encode(),
            ..Default::default()
        };
        let t = Target::linear(
            DevNum {
                major: 252,
                minor: 0,
            },
            8,
            8,
        );
        let dev = create(&mut r, "berth-ext-a", &[t]).unwrap();
        assert_eq!(dev.to_string(), "252:3");
        let reqs: Vec<u64> = r.calls.iter().map(|c| c.0).collect();
        assert_eq!(reqs, [DM_DEV_CREATE, DM_TABLE_LOAD, DM_DEV_SUSPEND]);
        for (_, buf) in &r.calls {
            assert_eq!(&buf[48..60], b"berth-ext-a\0");
        }
        // Create and resume: a bare header, no flags (so DM_DEV_SUSPEND resumes).
        for i in [0, 2] {
            let buf = &r.calls[i].1;
            assert_eq!(buf.len(), 312);
            assert_eq!(u32_at(buf, 12), 312);
            assert_eq!(u32_at(buf, 28), 0);
            assert_eq!(u32_at(buf, 28) & DM_SUSPEND_FLAG, 0);
        }
    }

    #[test]
    fn a_failed_load_removes_the_device() {
        let mut r = Recorder {
            fail: Some((DM_TABLE_LOAD, Errno::EINVAL)),
            ..Default::default()
        };
        let t = Target::linear(DevNum { major: 1, minor: 2 }, 0, 8);
        let err = create(&mut r, "berth-ext-a", &[t]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "DM_TABLE_LOAD berth-ext-a: EINVAL: Invalid argument"
        );
        let reqs: Vec<u64> = r.calls.iter().map(|c| c.0).collect();
        assert_eq!(reqs, [DM_DEV_CREATE, DM_TABLE_LOAD, DM_DEV_REMOVE]);
    }

    #[test]
    fn dev_numbers_round_trip_like_the_kernel() {
        for (ma, mi) in [(252, 0), (8, 17), (259, 70000), (4095, 0xfffff)] {
            let d = DevNum {
                major: ma,
                minor: mi,
            };
            assert_eq!(DevNum::decode(d.encode()), d);
        }
        // new_encode_dev(MKDEV(252, 1)) = 0xfc01.
        assert_eq!(
            DevNum::decode(0xfc01),
            DevNum {
                major: 252,
                minor: 1
            }
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(create_request("").is_err());
        assert!(create_request("a/b").is_err());
        assert!(create_request(&"x".repeat(128)).is_err());
        assert!(create_request(&"x".repeat(127)).is_ok());
    }
}
