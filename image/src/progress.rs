//! Progress of an import's long steps, for a CLI to show.

use std::fmt;
use std::path::PathBuf;

use crate::digest::Digest;

/// One step of an import. `index` counts from 1 up to `count`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// A gzip-compressed archive is being decompressed into the cache's temp directory.
    Decompressing { input: PathBuf },
    /// A layer is being verified and unpacked; `size` is its blob's size in bytes.
    Unpacking {
        index: usize,
        count: usize,
        layer: Digest,
        size: u64,
    },
    /// A layer was unpacked: `entries` tar entries into `bytes` bytes of file data.
    Unpacked {
        index: usize,
        count: usize,
        layer: Digest,
        entries: u64,
        bytes: u64,
    },
    /// A layer was already in the cache and is not unpacked again.
    Cached {
        index: usize,
        count: usize,
        layer: Digest,
    },
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Progress::Decompressing { input } => write!(f, "decompressing {}", input.display()),
            Progress::Unpacking {
                index,
                count,
                layer,
                size,
            } => write!(
                f,
                "unpacking layer {index}/{count} {} ({})",
                layer.short(),
                human_size(*size)
            ),
            Progress::Unpacked {
                index,
                count,
                layer,
                entries,
                bytes,
            } => write!(
                f,
                "unpacked layer {index}/{count} {}: {entries} entries, {}",
                layer.short(),
                human_size(*bytes)
            ),
            Progress::Cached {
                index,
                count,
                layer,
            } => write!(
                f,
                "layer {index}/{count} {} already unpacked",
                layer.short()
            ),
        }
    }
}

/// `1536` -> `1.5 KiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_progress_lines() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 * 1024 * 1024 + 200 * 1024), "3.2 MiB");
        let layer = Digest::of(b"x");
        let p = Progress::Unpacking {
            index: 1,
            count: 2,
            layer: layer.clone(),
            size: 2048,
        };
        assert_eq!(
            p.to_string(),
            format!("unpacking layer 1/2 {} (2.0 KiB)", layer.short())
        );
    }
}
