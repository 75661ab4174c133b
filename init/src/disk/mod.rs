//! Berth's disk as PID 1 sees it: finding partitions by label and type (`blockdev`), the state
//! partition (`statefs`: mount, and growth to the end of the disk on first boot) and the first-boot
//! config drive (`configdrive`). The boot phases that use them are in `crate::boot::storage`.

pub mod blockdev;
pub mod configdrive;
pub mod statefs;
