//! Container images from local files, unpacked once per layer into a content-addressed cache
//! and ready to be stacked with overlayfs.
//!
//! Inputs: an OCI image layout (a directory, or the same as a tar, possibly gzipped) and docker
//! archives (`docker save`, `skopeo copy ... docker-archive:`). No registry is contacted.
//!
//! ```no_run
//! use nutshell_image::{ImageStore, ImportOptions};
//!
//! let store = ImageStore::open("/var/lib/nutshell/images")?;
//! let image = store.import_with(
//!     "busybox.tar",
//!     &ImportOptions { holder: Some("pod-1234"), progress: Some(&|p| eprintln!("{p}")), ..Default::default() },
//! )?;
//! let lower = store.lower_dirs(&image)?; // top layer first, for overlayfs lowerdir=
//! # let _ = lower;
//! store.remove_ref(&image.id, "pod-1234")?;
//! store.gc()?;
//! # Ok::<(), nutshell_image::ImageError>(())
//! ```
//!
//! Every blob that the input addresses by digest (index, manifest, config, layer) is checked
//! against it, and every layer's uncompressed tar against its diff_id from the config. Layers
//! are unpacked as root: owners, modes, device nodes and whiteouts (as overlayfs character
//! devices 0/0 and `trusted.overlay.opaque` xattrs) need it.

mod digest;
mod docker_archive;
mod error;
mod image;
mod layer;
mod layout;
mod plan;
mod progress;
mod refs;
mod source;
mod store;
mod unpack;
mod whiteout;

#[cfg(test)]
mod testutil;

pub use digest::Digest;
pub use error::{ImageError, Result};
pub use image::{Image, LayerRef};
pub use oci_spec::image::ImageConfiguration;
pub use progress::{human_size, Progress};
pub use store::{GcReport, ImageStore, ImportOptions};
pub use whiteout::{is_opaque, is_whiteout, OPAQUE_XATTR};
