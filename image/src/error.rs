//! The one error type of the crate. Every variant names what it is about: the input file, the
//! blob or layer digest, the tar entry, or the cache path.

use std::io;
use std::path::PathBuf;

use crate::digest::Digest;

/// What went wrong while importing, unpacking or managing images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file or directory of the input or of the cache could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The input is neither an OCI image layout (directory or tar) nor a docker archive.
    #[error("{}: not an OCI image layout nor a docker archive ({reason})", input.display())]
    UnknownFormat { input: PathBuf, reason: String },

    /// The input is of a known kind but malformed (bad JSON, counts that do not match, ...).
    #[error("{}: {what}", input.display())]
    Invalid { input: PathBuf, what: String },

    /// A blob that a manifest or index names is not in the input.
    #[error("{}: blob {blob} is missing", input.display())]
    BlobMissing { input: PathBuf, blob: String },

    /// A blob's sha256 is not the digest it is addressed by.
    #[error("{blob}: sha256 mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        blob: String,
        expected: Digest,
        actual: Digest,
    },

    /// A blob's size is not the size its descriptor says.
    #[error("{blob}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        blob: String,
        expected: u64,
        actual: u64,
    },

    /// Something this crate does not handle (zstd layers, other digest algorithms, other
    /// platforms, ...).
    #[error("{subject}: unsupported: {what}")]
    Unsupported { subject: String, what: String },

    /// A string that should be `sha256:<64 lowercase hex digits>`.
    #[error("invalid digest {value:?}: {reason}")]
    InvalidDigest { value: String, reason: &'static str },

    /// The input holds no linux/amd64 image (or none with the requested name).
    #[error("{}: no {wanted} image in it (found: {})", input.display(), found.join(", "))]
    NoMatchingImage {
        input: PathBuf,
        wanted: String,
        found: Vec<String>,
    },

    /// The input holds several images and no name was given to pick one.
    #[error("{}: holds several images, name one of: {}", input.display(), names.join(", "))]
    AmbiguousImage { input: PathBuf, names: Vec<String> },

    /// A layer tar entry that would write outside the layer, or that cannot be represented.
    #[error("layer {layer}: entry {entry:?} rejected: {reason}")]
    UnsafeEntry {
        layer: Digest,
        entry: String,
        reason: String,
    },

    /// Reading a layer tar entry or creating it on disk failed.
    #[error("layer {layer}: entry {entry:?}: {source}")]
    Entry {
        layer: Digest,
        entry: String,
        #[source]
        source: io::Error,
    },

    /// The layer tar stream itself is broken (bad header, truncated, bad gzip).
    #[error("layer {layer}: {source}")]
    LayerStream {
        layer: Digest,
        #[source]
        source: io::Error,
    },

    /// No image with this id has been imported into the store.
    #[error("image {id} is not in the store")]
    ImageNotFound { id: String },

    /// An imported image's unpacked layer is gone from the cache (removed by hand?).
    #[error("image {image}: layer {layer} is missing from the cache at {}", path.display())]
    LayerMissing {
        image: Digest,
        layer: Digest,
        path: PathBuf,
    },

    /// A reference holder name that cannot be stored.
    #[error("invalid reference holder {holder:?}: {reason}")]
    InvalidHolder {
        holder: String,
        reason: &'static str,
    },

    /// A JSON record of the cache could not be parsed or written.
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// Adds the path to an `io::Error`: `fs::read(p).map_err(io_err(p))`.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io { path, source }
}
