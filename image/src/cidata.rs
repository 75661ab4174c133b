//! First-boot config drives: a small FAT image labelled `cidata` holding a TOML `user-data`,
//! as clouds attach them. Used by `make run` and the QEMU tests; read by berth-init.

use std::path::Path;

use crate::esp::{EspContents, EspError, Stamp};

/// The label berth-init looks for.
pub const LABEL: &str = "cidata";
const SIZE: u64 = 1 << 20;

/// Writes a config drive holding `user_data` (the file's content) to `out`.
pub fn build(user_data: &Path, out: &Path) -> Result<(), EspError> {
    let mut files = EspContents::default();
    files.add(user_data, "/user-data")?;
    // A config drive is made per machine; a fixed stamp keeps it a function of its content.
    let stamp = Stamp {
        volume_id: 0x6369_6461, // "cida"
        epoch: 0,               // FAT's first day, 1980-01-01
    };
    files.build(out, SIZE, LABEL, stamp)
}
