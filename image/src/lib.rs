//! berth-image: disk image and update bundle formats.
