//! berth-image: assembles Berth's bootable disk images, and holds the on-disk formats that
//! berth-init shares with the builder.
//!
//! Shared with berth-init: [`gpt`] (read and grow the partition table), [`grubenv`] (the A/B
//! boot state), [`guid`]. Host-only: [`layout`], [`verity`], [`grub`], [`esp`], [`ext4`],
//! [`convert`], [`manifest`], [`assemble`] (which calls the distribution's mkfs tools).

pub mod args;
pub mod assemble;
pub mod bundle;
pub mod cidata;
pub mod convert;
pub mod derive;
pub mod esp;
pub mod ext4;
pub mod gpt;
pub mod grub;
pub mod grubenv;
pub mod guid;
pub mod kernel;
pub mod layout;
pub mod manifest;
pub mod sbom;
pub mod tool;
pub mod verity;
