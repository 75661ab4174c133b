//! Device-mapper through `/dev/mapper/control` (no libdevmapper, no dmsetup): just enough to
//! create a read-only linear device over part of another block device. The ioctl buffers are
//! built here and handed to a [`DmControl`], so their encoding is tested without root.

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

/// `_IOWR(0xfd, cmd, struct dm_ioctl)`.
const fn dm_iowr(cmd: u64) -> u64 {
    (3 << 30) | ((DM_IOCTL_SIZE as u64) << 16) | (0xfd << 8) | cmd
}
pub const DM_DEV_CREATE: u64 = dm_iowr(3);
pub const DM_DEV_REMOVE: u64 = dm_iowr(4);
pub const DM_DEV_SUSPEND: u64 = dm_iowr(6);
pub const DM_TABLE_LOAD: u64 = dm_iowr(9);

// Field offsets in struct dm_ioctl.
const OFF_DATA_SIZE: usize = 12;
const OFF_DATA_START: usize = 16;
const OFF_TARGET_COUNT: usize = 20;
const OFF_FLAGS: usize = 28;
const OFF_DEV: usize = 40;
const OFF_NAME: usize = 48;

#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error("cannot open {CONTROL}: {0}")]
    Open(#[source] std::io::Error),
    #[error("device-mapper name {0:?} is empty, too long or not printable")]
    Name(String),
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

/// A linear target: `length` sectors of `backing` starting at sector `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linear {
    pub backing: DevNum,
    pub start: u64,
    pub length: u64,
}

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
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

/// DM_TABLE_LOAD's buffer: one read-only linear target.
pub fn table_load_request(name: &str, t: &Linear) -> Result<Vec<u8>, DmError> {
    check_name(name)?;
    let params = format!("{} {}", t.backing, t.start);
    // The spec and its NUL-terminated parameters, padded so a next spec would be aligned.
    let spec_len = (DM_TARGET_SPEC_SIZE + params.len() + 1).next_multiple_of(8);
    let mut buf = header(name, DM_IOCTL_SIZE + spec_len, DM_READONLY_FLAG);
    put32(&mut buf, OFF_TARGET_COUNT, 1);
    let spec = &mut buf[DM_IOCTL_SIZE..];
    spec[0..8].copy_from_slice(&0u64.to_ne_bytes());
    spec[8..16].copy_from_slice(&t.length.to_ne_bytes());
    // status (16..20) is the kernel's; next: from this spec to the (absent) next one.
    put32(spec, 20, spec_len as u32);
    spec[24..24 + "linear".len()].copy_from_slice(b"linear");
    debug_assert!("linear".len() < DM_MAX_TYPE_NAME);
    spec[DM_TARGET_SPEC_SIZE..DM_TARGET_SPEC_SIZE + params.len()]
        .copy_from_slice(params.as_bytes());
    Ok(buf)
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

/// Creates device `name` mapping `t` read-only and makes it live; returns its device number.
/// A device created but not made live is removed again.
pub fn create_linear(ctl: &mut dyn DmControl, name: &str, t: &Linear) -> Result<DevNum, DmError> {
    let mut buf = create_request(name)?;
    let mut load = table_load_request(name, t)?;
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
    }

    #[test]
    fn table_load_buffer_bytes() {
        let t = Linear {
            backing: DevNum {
                major: 252,
                minor: 0,
            },
            start: 2568,
            length: 16,
        };
        let b = table_load_request("berth-ext-hello", &t).unwrap();
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
        let t = Linear {
            backing: DevNum {
                major: 252,
                minor: 0,
            },
            start: 8,
            length: 8,
        };
        let dev = create_linear(&mut r, "berth-ext-a", &t).unwrap();
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
        let t = Linear {
            backing: DevNum { major: 1, minor: 2 },
            start: 0,
            length: 8,
        };
        let err = create_linear(&mut r, "berth-ext-a", &t).unwrap_err();
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
