//! Skiff's image layer: pulls OCI and Docker images from registries (OCI distribution API) and
//! air-gapped sources into a crash-safe content store, unpacks their layers safely into
//! snapshots shared between images, and mounts container root filesystems over them.
//!
//! The entry point is [`Images`]; `docs/design.md` explains how this fits into Skiff.
//!
//! ```no_run
//! # async fn demo() -> Result<(), skiff_images::ImageError> {
//! use skiff_images::{Images, ImagesConfig, PullOptions, Store};
//! let images = Images::new(Store::open("/var/lib/skiff")?, ImagesConfig::default());
//! let image = images.pull("localhost:5000/team/app:1.0", &PullOptions::default()).await?;
//! let rootfs = images.create_rootfs("web-1", &image.name)?;
//! println!("container root at {}", rootfs.path.display());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod digest;
mod images;
pub mod local;
pub mod platform;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

pub use config::ImagesConfig;
pub use images::{ImageError, Images, PullOptions, PullPolicy, compression_of};
pub use store::{Store, StoreError};
