//! The input of an import as a set of named files: a directory, or a tar file indexed once so
//! that any member can be read by seeking to it (a gzip-compressed tar is first decompressed
//! into the cache's temp directory). Names are `/`-separated and relative to the input's root;
//! `..` may not climb above it.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::{io_err, ImageError, Result};
use crate::progress::Progress;

/// Where symlinks inside an input tar may lead through, at most.
const MAX_LINK_HOPS: usize = 16;

pub(crate) struct Source {
    input: PathBuf,
    kind: Kind,
}

enum Kind {
    Dir(PathBuf),
    Tar {
        /// The tar to read members from: the input itself, or its decompressed copy.
        file: PathBuf,
        /// Keeps the decompressed copy alive; it is removed on drop.
        _decompressed: Option<NamedTempFile>,
        members: HashMap<String, Member>,
    },
}

enum Member {
    File { offset: u64, size: u64 },
    Symlink(String),
    HardLink(String),
    Other,
}

impl Source {
    /// Opens a directory as it is, or indexes a tar file (decompressing it first when it is
    /// gzip-compressed, into `tmp_dir`).
    pub(crate) fn open(input: &Path, tmp_dir: &Path, progress: &dyn Fn(&Progress)) -> Result<Self> {
        let meta = fs::metadata(input).map_err(io_err(input))?;
        if meta.is_dir() {
            return Ok(Source {
                input: input.to_path_buf(),
                kind: Kind::Dir(input.to_path_buf()),
            });
        }
        let mut file = File::open(input).map_err(io_err(input))?;
        let mut magic = [0u8; 2];
        let gzipped = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
        file.rewind().map_err(io_err(input))?;

        let (tar_path, decompressed) = if gzipped {
            progress(&Progress::Decompressing {
                input: input.to_path_buf(),
            });
            let mut tmp = tempfile::Builder::new()
                .prefix("archive-")
                .suffix(".tar")
                .tempfile_in(tmp_dir)
                .map_err(io_err(tmp_dir))?;
            let mut decoder = flate2::read::MultiGzDecoder::new(BufReader::new(file));
            io::copy(&mut decoder, tmp.as_file_mut()).map_err(|e| ImageError::Invalid {
                input: input.to_path_buf(),
                what: format!("gzip-compressed archive: {e}"),
            })?;
            (tmp.path().to_path_buf(), Some(tmp))
        } else {
            (input.to_path_buf(), None)
        };

        let members = index_tar(&tar_path).map_err(|e| ImageError::UnknownFormat {
            input: input.to_path_buf(),
            reason: format!("not a directory nor a readable tar: {e}"),
        })?;
        if members.is_empty() {
            return Err(ImageError::UnknownFormat {
                input: input.to_path_buf(),
                reason: "an empty or unreadable tar".into(),
            });
        }
        Ok(Source {
            input: input.to_path_buf(),
            kind: Kind::Tar {
                file: tar_path,
                _decompressed: decompressed,
                members,
            },
        })
    }

    /// The path given to the import, for messages.
    pub(crate) fn input(&self) -> &Path {
        &self.input
    }

    pub(crate) fn exists(&self, name: &str) -> bool {
        matches!(self.locate(name), Ok(Some(_)))
    }

    /// Opens the file `name`, returning a reader and its size, or `None` when it is absent.
    pub(crate) fn open_file(&self, name: &str) -> Result<Option<(Box<dyn Read + Send>, u64)>> {
        let Some(location) = self.locate(name)? else {
            return Ok(None);
        };
        match location {
            Location::Path(path) => {
                let file = File::open(&path).map_err(io_err(&path))?;
                let size = file.metadata().map_err(io_err(&path))?.len();
                Ok(Some((Box::new(BufReader::new(file)), size)))
            }
            Location::Range { file, offset, size } => {
                let mut f = File::open(file).map_err(io_err(file))?;
                f.seek(SeekFrom::Start(offset)).map_err(io_err(file))?;
                Ok(Some((Box::new(BufReader::new(f).take(size)), size)))
            }
        }
    }

    /// The size of the file `name`, or `None` when it is absent.
    pub(crate) fn size_of(&self, name: &str) -> Result<Option<u64>> {
        match self.locate(name)? {
            None => Ok(None),
            Some(Location::Range { size, .. }) => Ok(Some(size)),
            Some(Location::Path(path)) => {
                Ok(Some(fs::metadata(&path).map_err(io_err(&path))?.len()))
            }
        }
    }

    /// Reads a small file (JSON) whole; `what` names it in errors. Absent: `BlobMissing`.
    pub(crate) fn read_small(&self, name: &str, limit: u64, what: &str) -> Result<Vec<u8>> {
        let (reader, size) = self
            .open_file(name)?
            .ok_or_else(|| ImageError::BlobMissing {
                input: self.input.clone(),
                blob: what.to_string(),
            })?;
        if size > limit {
            return Err(ImageError::Invalid {
                input: self.input.clone(),
                what: format!("{what} is {size} bytes, more than the {limit} allowed"),
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        reader
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(io_err(self.input.join(name)))?;
        Ok(bytes)
    }

    fn locate(&self, name: &str) -> Result<Option<Location<'_>>> {
        let mut current = normalize("", name).ok_or_else(|| self.escapes(name))?;
        match &self.kind {
            Kind::Dir(root) => {
                let path = root.join(&current);
                Ok(path.is_file().then_some(Location::Path(path)))
            }
            Kind::Tar { file, members, .. } => {
                for _ in 0..MAX_LINK_HOPS {
                    current = match members.get(&current) {
                        None | Some(Member::Other) => return Ok(None),
                        Some(&Member::File { offset, size }) => {
                            return Ok(Some(Location::Range { file, offset, size }))
                        }
                        Some(Member::HardLink(target)) => target.clone(),
                        Some(Member::Symlink(target)) => {
                            let parent = current.rsplit_once('/').map_or("", |(p, _)| p);
                            normalize(parent, target).ok_or_else(|| self.escapes(name))?
                        }
                    };
                }
                Err(ImageError::Invalid {
                    input: self.input.clone(),
                    what: format!("{name}: too many levels of links"),
                })
            }
        }
    }

    fn escapes(&self, name: &str) -> ImageError {
        ImageError::Invalid {
            input: self.input.clone(),
            what: format!("{name}: path leaves the archive"),
        }
    }
}

enum Location<'a> {
    Path(PathBuf),
    Range {
        file: &'a Path,
        offset: u64,
        size: u64,
    },
}

/// Joins `name` onto `base` lexically (`.` dropped, `..` pops, a leading `/` means the root);
/// `None` when `..` would climb above the root.
pub(crate) fn normalize(base: &str, name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    if !name.starts_with('/') {
        parts.extend(base.split('/').filter(|p| !p.is_empty() && *p != "."));
    }
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

fn index_tar(path: &Path) -> io::Result<HashMap<String, Member>> {
    let mut archive = tar::Archive::new(BufReader::new(File::open(path)?));
    let mut members = HashMap::new();
    for entry in archive.entries_with_seek()? {
        let entry = entry?;
        let Some(name) = normalize("", &String::from_utf8_lossy(&entry.path_bytes())) else {
            continue;
        };
        let link = || {
            entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default()
        };
        let member = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => Member::File {
                offset: entry.raw_file_position(),
                size: entry.size(),
            },
            tar::EntryType::Symlink => Member::Symlink(link()),
            tar::EntryType::Link => match normalize("", &link()) {
                Some(target) => Member::HardLink(target),
                None => Member::Other,
            },
            _ => Member::Other,
        };
        members.insert(name, member);
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_lexically() {
        assert_eq!(normalize("", "./a//b/./c").as_deref(), Some("a/b/c"));
        assert_eq!(normalize("x/y", "../z").as_deref(), Some("x/z"));
        assert_eq!(normalize("x/y", "/z").as_deref(), Some("z"));
        assert_eq!(normalize("x", "../../z"), None);
        assert_eq!(normalize("", "").as_deref(), Some(""));
    }

    #[test]
    fn tar_members_follow_links_inside_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let tar_path = dir.path().join("a.tar");
        let mut b = tar::Builder::new(File::create(&tar_path).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "one/layer.tar", &b"hello"[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "two/layer.tar", "../one/layer.tar")
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "evil", "../../etc/passwd").unwrap();
        b.into_inner().unwrap();

        let source = Source::open(&tar_path, dir.path(), &|_| {}).unwrap();
        let (mut r, size) = source.open_file("./two/layer.tar").unwrap().unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!((s.as_str(), size), ("hello", 5));
        assert!(source.exists("one/layer.tar"));
        assert!(!source.exists("three"));
        assert!(matches!(
            source.open_file("evil"),
            Err(ImageError::Invalid { .. })
        ));
    }
}
