//! berth-image: assembles Berth's bootable disk images and signs update bundles on the build
//! host (it calls the distribution's mkfs, veritysetup, grub-mkimage and qemu-img).
//!
//! The on-disk formats it writes and berth-init reads live in `berth_formats` and are
//! re-exported here: [`gpt`], [`grubenv`], [`guid`], and the reading side of [`bundle`].
//! Host-only: [`layout`], [`verity`], [`extensions`], [`grub`], [`esp`], [`ext4`], [`convert`],
//! [`manifest`], [`assemble`], [`sbom`], bundle creation and signing; [`host`] is their
//! shared error for running a tool and touching a file.

pub use berth_formats::{gpt, grubenv, guid};

pub mod args;
pub mod assemble;
pub mod bundle;
pub mod cidata;
pub mod convert;
pub mod derive;
pub mod esp;
pub mod ext4;
pub mod extensions;
pub mod grub;
pub mod host;
pub mod kernel;
pub mod layout;
pub mod manifest;
pub mod sbom;
pub mod verity;
