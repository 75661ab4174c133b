//! Where the image under test comes from, and whether QEMU tests must run.
//!
//! `BERTH_IMAGE` names the raw image (default: `out/berth.img` in the workspace) and
//! `BERTH_NODE_IMAGE` the node profile's (default: `out/node/berth.img`). The tests are skipped
//! only when their image is absent and `BERTH_REQUIRE_QEMU` is unset; `make test` builds both
//! images and sets both, so there they always run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{io_err, HarnessError, Result};

pub fn default_image() -> PathBuf {
    match std::env::var_os("BERTH_IMAGE") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../out/berth.img"),
    }
}

/// The node profile's image (`make image PROFILE=node`): containerd as a system extension.
pub fn node_image() -> PathBuf {
    match std::env::var_os("BERTH_NODE_IMAGE") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../out/node/berth.img"),
    }
}

/// The image to test, or `None` (after saying so) when the test should be skipped.
/// Panics when the image is missing but QEMU tests are required.
pub fn image_or_skip(test: &str) -> Option<PathBuf> {
    existing_or_skip(test, default_image(), "make image")
}

/// The node profile's image, or `None` when the test should be skipped (as [`image_or_skip`]).
pub fn node_image_or_skip(test: &str) -> Option<PathBuf> {
    existing_or_skip(test, node_image(), "make image PROFILE=node")
}

#[allow(clippy::panic)]
fn existing_or_skip(test: &str, image: PathBuf, make: &str) -> Option<PathBuf> {
    if image.is_file() {
        return Some(image);
    }
    if std::env::var_os("BERTH_REQUIRE_QEMU").is_some() {
        panic!(
            "{test}: BERTH_REQUIRE_QEMU is set but {} does not exist (run: {make})",
            image.display()
        );
    }
    eprintln!(
        "{test}: skipped: no image at {} (run: {make})",
        image.display()
    );
    None
}

/// The scratch directory of `test` with a private copy of the image as `disk.img` (grown to
/// `size` bytes when given), or `None` when the image is missing and the test is skipped.
/// Panics (failing the test) when the copy cannot be made.
#[allow(clippy::panic)]
pub fn disk_or_skip(test: &str, size: Option<u64>) -> Option<(Fixture, PathBuf)> {
    let image = image_or_skip(test)?;
    let fx = match Fixture::new(test) {
        Ok(fx) => fx,
        Err(e) => panic!("{test}: {e}"),
    };
    let disk = fx.path("disk.img");
    if let Err(e) = crate::disk::copy_raw(&image, &disk, size) {
        panic!("{test}: {e}");
    }
    Some((fx, disk))
}

/// A per-test scratch directory, removed on drop unless the test is failing.
pub struct Fixture {
    pub dir: PathBuf,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Fixture {
    pub fn new(name: &str) -> Result<Fixture> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("berth-qemu-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io_err(dir.display().to_string()))?;
        Ok(Fixture { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Builds a `cidata` config drive holding `user_data`.
    pub fn config_drive(&self, user_data: &str) -> Result<PathBuf> {
        let src = self.path("user-data");
        std::fs::write(&src, user_data).map_err(io_err("write user-data"))?;
        let out = self.path("cidata.img");
        berth_image::cidata::build(&src, &out).map_err(|e| HarnessError::Setup(e.to_string()))?;
        Ok(out)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound to port 0, then released for QEMU to take).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("bind 127.0.0.1:0"))?;
    Ok(l.local_addr().map_err(io_err("local_addr"))?.port())
}
