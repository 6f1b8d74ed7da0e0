//! References that keep images alive: one empty file per holder at
//! `<cache>/refs/<image id hex>/<holder>`, the holder name percent-encoded so that any string
//! (a pod UID, a container id, `cli:busybox`) is one safe file name.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{io_err, ImageError, Result};

/// The longest encoded holder name (a file name is at most 255 bytes).
const MAX_ENCODED: usize = 255;

pub(crate) struct Refs {
    dir: PathBuf,
}

impl Refs {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Refs { dir }
    }

    fn image_dir(&self, image: &Digest) -> PathBuf {
        self.dir.join(image.hex())
    }

    /// Records `holder` as holding `image`; holding it twice is the same as once.
    pub(crate) fn add(&self, image: &Digest, holder: &str) -> Result<()> {
        let dir = self.image_dir(image);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(encode(holder)?);
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(())
    }

    /// Drops `holder`'s reference; whether it had one. Empty directories are left to gc.
    pub(crate) fn remove(&self, image: &Digest, holder: &str) -> Result<bool> {
        let path = self.image_dir(image).join(encode(holder)?);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(path)(e)),
        }
    }

    /// The holders of `image`, sorted.
    pub(crate) fn list(&self, image: &Digest) -> Result<Vec<String>> {
        let dir = self.image_dir(image);
        let mut holders: Vec<String> = read_dir_names(&dir)?
            .iter()
            .filter_map(|n| decode(n))
            .collect();
        holders.sort();
        Ok(holders)
    }

    /// Removes every reference to `image`.
    pub(crate) fn forget(&self, image: &Digest) -> Result<()> {
        let dir = self.image_dir(image);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(dir)(e)),
            _ => Ok(()),
        }
    }

    /// Images that have a reference directory (possibly empty).
    pub(crate) fn images(&self) -> Result<Vec<Digest>> {
        Ok(read_dir_names(&self.dir)?
            .iter()
            .filter_map(|n| Digest::from_hex(n).ok())
            .collect())
    }
}

/// The names in `dir` (none when it does not exist).
pub(crate) fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// Percent-encodes everything but `[A-Za-z0-9_.:@+=-]`, and a leading `.`.
fn encode(holder: &str) -> Result<String> {
    let invalid = |reason| ImageError::InvalidHolder {
        holder: holder.to_string(),
        reason,
    };
    if holder.is_empty() {
        return Err(invalid("empty"));
    }
    let mut out = String::with_capacity(holder.len());
    for (i, b) in holder.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b"_.:@+=-".contains(&b);
        if plain && !(i == 0 && b == b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > MAX_ENCODED {
        return Err(invalid("too long"));
    }
    Ok(out)
}

fn decode(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_names_round_trip() {
        for holder in [
            "pod-1234",
            "cli:busybox:latest",
            "a/b",
            "..",
            ".hidden",
            "ü x%",
        ] {
            let encoded = encode(holder).unwrap();
            assert!(
                !encoded.contains('/') && !encoded.starts_with('.'),
                "{encoded}"
            );
            assert_eq!(decode(&encoded).as_deref(), Some(holder));
        }
        assert!(encode("").is_err());
        assert!(encode(&"/".repeat(100)).is_err());
    }

    #[test]
    fn adds_lists_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let refs = Refs::new(dir.path().to_path_buf());
        let image = Digest::of(b"image");
        refs.add(&image, "b").unwrap();
        refs.add(&image, "a/1").unwrap();
        refs.add(&image, "b").unwrap();
        assert_eq!(refs.list(&image).unwrap(), ["a/1", "b"]);
        assert!(refs.remove(&image, "b").unwrap());
        assert!(!refs.remove(&image, "b").unwrap());
        assert_eq!(refs.list(&image).unwrap(), ["a/1"]);
        assert_eq!(refs.images().unwrap(), std::slice::from_ref(&image));
        refs.forget(&image).unwrap();
        assert!(refs.list(&image).unwrap().is_empty());
    }
}
