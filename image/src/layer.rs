//! Puts one layer into the cache: reads its blob from the input, detects gzip by its magic
//! bytes (zstd is refused), unpacks it into a fresh temporary directory of the cache while
//! hashing both the blob and the uncompressed tar, checks both digests, and only then renames
//! the directory to `layers/sha256/<diff_id hex>` with `RENAME_NOREPLACE`. If another import
//! got there first the rename fails with `EEXIST`/`ENOTEMPTY` and its copy is kept. On any
//! error the temporary directory is removed (`TempDir`'s drop), so nothing partial remains.

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags};

use crate::digest::HashingReader;
use crate::error::{io_err, ImageError, Result};
use crate::plan::PlannedLayer;
use crate::source::Source;
use crate::unpack::{unpack_layer, UnpackStats};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// How a layer blob is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub(crate) fn detect(head: &[u8]) -> Compression {
        if head.starts_with(GZIP_MAGIC) {
            Compression::Gzip
        } else if head.starts_with(ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What became of a layer.
#[derive(Debug)]
pub(crate) enum Installed {
    /// This import unpacked it.
    Unpacked(UnpackStats),
    /// It was in the cache already (or a concurrent import put it there first).
    Cached,
}

/// The cache directories a layer goes through.
pub(crate) struct LayerDirs<'a> {
    /// `<cache>/layers/sha256`.
    pub layers: &'a Path,
    /// `<cache>/tmp`, on the same filesystem.
    pub tmp: &'a Path,
    /// Flush the filesystem before publishing the layer.
    pub durable: bool,
}

/// Makes sure `layer` is unpacked in the cache, reading it from `source` if it is not.
pub(crate) fn install(
    source: &Source,
    layer: &PlannedLayer,
    dirs: &LayerDirs<'_>,
) -> Result<Installed> {
    let target = dirs.layers.join(layer.diff_id.hex());
    if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
        return Ok(Installed::Cached);
    }
    let (blob, size) = source
        .open_file(&layer.file)?
        .ok_or_else(|| ImageError::BlobMissing {
            input: source.input().to_path_buf(),
            blob: format!("layer {} ({})", layer.name(), layer.file),
        })?;
    if let Some(expected) = layer.size.filter(|s| *s != size) {
        return Err(ImageError::SizeMismatch {
            blob: blob_label(source, layer),
            expected,
            actual: size,
        });
    }

    let tmp = tempfile::Builder::new()
        .prefix(&format!("layer-{}-", layer.diff_id.short()))
        .tempdir_in(dirs.tmp)
        .map_err(io_err(dirs.tmp))?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))
        .map_err(io_err(tmp.path()))?;
    let stats = unpack_verified(blob, tmp.path(), source, layer)?;
    if dirs.durable {
        let dir = fs::File::open(tmp.path()).map_err(io_err(tmp.path()))?;
        nix::unistd::syncfs(dir.as_raw_fd()).map_err(|e| ImageError::Io {
            path: tmp.path().to_path_buf(),
            source: e.into(),
        })?;
    }
    match renameat2(
        None,
        tmp.path(),
        None,
        &target,
        RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => {
            // The directory now lives at `target`; there is nothing left to remove.
            let _ = tmp.keep();
            Ok(Installed::Unpacked(stats))
        }
        // Someone else published the same layer meanwhile: theirs stays, ours is dropped.
        Err(Errno::EEXIST | Errno::ENOTEMPTY) => Ok(Installed::Cached),
        Err(e) => Err(ImageError::Io {
            path: target,
            source: e.into(),
        }),
    }
}

/// Unpacks `blob` into `dest` and checks the blob's digest (when known) and the diff_id.
/// A digest mismatch is reported in preference to the unpack error it may have caused.
fn unpack_verified(
    blob: impl Read,
    dest: &Path,
    source: &Source,
    layer: &PlannedLayer,
) -> Result<UnpackStats> {
    let mut compressed = HashingReader::new(blob);
    let unpacked = (|| {
        let mut buffered = BufReader::with_capacity(256 << 10, &mut compressed);
        let head = buffered
            .fill_buf()
            .map_err(io_err(source.input().join(&layer.file)))?;
        let decoded: Box<dyn Read + '_> = match Compression::detect(head) {
            Compression::None => Box::new(&mut buffered),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut buffered)),
            Compression::Zstd => {
                return Err(ImageError::Unsupported {
                    subject: format!("layer {}", layer.name()),
                    what: "zstd-compressed layers".into(),
                })
            }
        };
        let mut tar = HashingReader::new(decoded);
        let stats = unpack_layer(&mut tar, dest, &layer.diff_id)?;
        // The rest of the tar (end-of-archive blocks, padding) counts for the diff_id.
        let diff = tar.finish().map_err(|source| ImageError::LayerStream {
            layer: layer.name().clone(),
            source,
        })?;
        Ok((stats, diff.0))
    })();

    let (blob_digest, blob_len) = compressed
        .finish()
        .map_err(io_err(source.input().join(&layer.file)))?;
    if let Some(expected) = &layer.blob_digest {
        if blob_digest != *expected {
            return Err(ImageError::DigestMismatch {
                blob: blob_label(source, layer),
                expected: expected.clone(),
                actual: blob_digest,
            });
        }
    }
    if let Some(expected) = layer.size.filter(|s| *s != blob_len) {
        return Err(ImageError::SizeMismatch {
            blob: blob_label(source, layer),
            expected,
            actual: blob_len,
        });
    }
    let (stats, diff_id) = unpacked?;
    if diff_id != layer.diff_id {
        return Err(ImageError::DigestMismatch {
            blob: format!(
                "{}: uncompressed layer {} (diff_id)",
                source.input().display(),
                layer.name()
            ),
            expected: layer.diff_id.clone(),
            actual: diff_id,
        });
    }
    Ok(stats)
}

fn blob_label(source: &Source, layer: &PlannedLayer) -> String {
    format!("{}: layer {}", source.input().display(), layer.name())
}

/// Removes a cached layer: renamed into `tmp` first, so that a crash midway never leaves a
/// half-deleted directory under its published name.
pub(crate) fn remove(layer_dir: &Path, tmp: &Path) -> Result<()> {
    let doomed = tempfile::Builder::new()
        .prefix("gc-")
        .tempdir_in(tmp)
        .map_err(io_err(tmp))?;
    let moved = doomed.path().join("layer");
    match fs::rename(layer_dir, &moved) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(layer_dir)(e)),
    }
    doomed.close().map_err(io_err(moved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_compression_by_magic() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"etc/\0\0\0"), Compression::None);
        assert_eq!(Compression::detect(&[]), Compression::None);
    }
}
