//! berth-store: OCI images on a Berth machine: the local store, registry pulls, layer
//! unpacking, import/export, garbage collection, and OS update fetches over the same HTTP
//! client. It knows nothing of containers: the OCI runtime (berth-runtime) does not depend on
//! it, and berth-init's engine mounts what it stores.
//!
//! # Library API
//!
//! berth-init never pulls in its own process (a pull starts threads): it looks the unit's
//! image up with [`Store::resolve_reference`] and, when missing, runs
//! `berth-runtime image pull`, which does this:
//!
//! ```no_run
//! use berth_store::{pull, Store};
//! use berth_store::registry::{Client, Reference, RegistriesConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::open("/var/lib/berth/images")?;
//! let config = RegistriesConfig::load("/var/lib/berth/machine.toml".as_ref())?;
//! let reference = Reference::parse("nginx:alpine")?; // docker.io/library/nginx:alpine
//! let image = pull::pull(&store, &Client::new(config), &reference, &Default::default(),
//!                        &|line: &str| println!("{line}"))?;
//! // When the image is known to be there: let image = store.resolve_reference(&reference)?;
//! let cfg = &image.config.config;       // Entrypoint, Cmd, Env, User, WorkingDir, ExposedPorts
//! let lower = image.lowerdir();          // "layers/<top>:…:layers/<bottom>" for overlayfs
//! store.lease("web", &image)?;           // GC keeps this image's layers while "web" exists
//! // … mount overlay(lowerdir=lower, upperdir=…, workdir=…) and start the container …
//! store.release("web")?;                 // when the container is deleted
//! # let _ = (cfg, lower); Ok(()) }
//! ```
//!
//! - [`Store`] ([`store`]): the OCI image layout under `images/` with content-addressed blobs,
//!   references in `index.json`, and unpacked layers in `layers/<diff id>/`, shared by every
//!   image and container. Every blob is checked against its digest before it is used, every
//!   write is atomic (temp file, fsync, rename).
//! - [`pull`]: registry pulls ([`registry`] does the HTTP).
//! - [`osupdate`]: OS update bundles fetched from a URL or a registry.
//! - [`unpack`]: safe layer unpacking (whiteouts in overlayfs form, no path escapes).
//! - [`archive`]: `docker save` and OCI archive import and export.
//! - [`gc`]: removal of what no reference and no lease needs.
//!
//! Concurrency: pulls and imports hold the store's lock shared, GC holds it exclusive; the
//! `index.json` read-modify-write has its own lock. Leases are plain files, so they survive
//! reboots along with the containers that hold them.

pub mod archive;
pub mod digest;
mod error;
pub mod fsutil;
pub mod gc;
pub mod osupdate;
pub mod pull;
pub mod registry;
pub mod spec;
pub mod store;
pub mod targuard;
pub mod unpack;

pub use digest::Digest;
pub use error::{Error, Result};
pub use store::{Image, ImageSummary, Store};
