//! Harness for booting Berth images under QEMU.
