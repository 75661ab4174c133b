//! The per-slot boot configuration (`/A/boot.cfg`, `/B/boot.cfg` on the ESP), sourced by
//! grub.cfg: written by the image builder for a new disk and by berth-init for an update.

/// A value GRUB would mangle inside the double quotes of its script.
#[derive(Debug, thiserror::Error)]
#[error("boot argument {0:?} contains a character GRUB would mangle (\", $, \\ or newline)")]
pub struct Unquotable(pub String);

/// The configuration of one slot: the verity table and the kernel arguments of the root in
/// that slot.
pub fn slot_config(dm_create: &str, args: &str) -> Result<String, Unquotable> {
    for value in [dm_create, args] {
        if value.contains(['"', '$', '\\', '\n']) {
            return Err(Unquotable(value.into()));
        }
    }
    Ok(format!(
        "# Written by berth-image; replaced as a whole by updates.\n\
         set berth_dm=\"{dm_create}\"\n\
         set berth_args=\"{args}\"\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_config_refuses_what_grub_would_mangle() {
        let cfg = slot_config("berth-root,,,ro,0 8 verity 1 a b", "ro quiet").unwrap();
        assert!(cfg.contains("set berth_dm=\"berth-root,,,ro,0 8 verity 1 a b\"\n"));
        assert!(slot_config("x", "init=$evil").is_err());
        assert!(slot_config("a\"b", "").is_err());
    }
}
