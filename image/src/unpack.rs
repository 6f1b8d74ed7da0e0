//! Unpacks one layer tar stream into an empty directory, safely: no entry may write outside it.
//!
//! - Entry paths are made relative (a leading `/` is dropped, as docker does); a `..`
//!   component is rejected.
//! - Every parent directory of an entry is checked with `symlink_metadata`, component by
//!   component, and created when missing; a parent that is a symlink (or not a directory) is
//!   rejected, so `a -> /` followed by `a/etc/passwd` cannot write to the host.
//! - The final component is never followed: whatever is there is removed first and the new
//!   file is created with `O_EXCL` (files), `symlink`, `link` or `mknod`.
//! - Hard links must point at an existing non-directory inside the layer, reached the same way.
//! - Whiteouts become overlayfs whiteouts (see `whiteout.rs`); `trusted.overlay.*` xattrs from
//!   the tar are dropped, other `SCHILY.xattr.*` records are applied.
//!
//! Owner, mode and mtime come from the tar; directory mtimes are set after all entries, since
//! creating children changes them. Nothing here cleans up after a failure: the caller unpacks
//! into a temporary directory and removes it on error.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::whiteout::{self, Whiteout};

/// What one layer held.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct UnpackStats {
    /// Tar entries, whiteouts included (pax and GNU long-name headers not counted).
    pub entries: u64,
    /// Bytes of regular file data written.
    pub bytes: u64,
    /// `.wh.<name>` entries turned into character devices 0/0.
    pub whiteouts: u64,
    /// `.wh..wh..opq` entries turned into the opaque xattr.
    pub opaque_dirs: u64,
}

/// Unpacks the (uncompressed) tar stream `reader` into `dest`, an existing directory.
/// `layer` names the layer in errors.
pub(crate) fn unpack_layer(reader: impl Read, dest: &Path, layer: &Digest) -> Result<UnpackStats> {
    let mut unpacker = Unpacker {
        dest,
        layer,
        stats: UnpackStats::default(),
        dir_times: Vec::new(),
    };
    let stream_err = |source| ImageError::LayerStream {
        layer: layer.clone(),
        source,
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(stream_err)? {
        let mut entry = entry.map_err(stream_err)?;
        unpacker.entry(&mut entry)?;
    }
    unpacker.finish()
}

/// Owner, permissions, time and xattrs of an entry.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Unpacker<'a> {
    dest: &'a Path,
    layer: &'a Digest,
    stats: UnpackStats,
    /// Directories whose mtime is set once every entry is in.
    dir_times: Vec<(PathBuf, TimeSpec)>,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let raw_name = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_name).into_owned();
        let rel = relative_path(&raw_name).map_err(|reason| self.unsafe_entry(&name, reason))?;
        self.stats.entries += 1;

        let Some(file_name) = rel.file_name() else {
            // The layer root itself ("./" or "/").
            if kind != EntryType::Directory {
                return Err(self.unsafe_entry(&name, "the layer root must be a directory"));
            }
            let meta = self.meta(entry, &name)?;
            return self.apply_meta(self.dest, &meta, kind, &name);
        };

        match whiteout::classify(file_name) {
            Whiteout::None => {}
            Whiteout::AufsMeta => return Ok(()),
            Whiteout::Opaque => {
                let dir = self.ensure_parent(&rel, &name)?;
                whiteout::mark_opaque(&dir).map_err(|e| self.entry_err(&name, e))?;
                self.stats.opaque_dirs += 1;
                return Ok(());
            }
            Whiteout::Remove(hidden) => {
                if hidden.is_empty()
                    || hidden == "."
                    || hidden == ".."
                    || hidden.as_bytes().contains(&b'/')
                {
                    return Err(self.unsafe_entry(&name, "whiteout of an invalid name"));
                }
                let path = self.ensure_parent(&rel, &name)?.join(hidden);
                self.clear(&path, &name)?;
                whiteout::make_whiteout(&path).map_err(|e| self.entry_err(&name, e))?;
                self.stats.whiteouts += 1;
                return Ok(());
            }
        }

        let path = self.ensure_parent(&rel, &name)?.join(file_name);
        let meta = self.meta(entry, &name)?;
        match kind {
            EntryType::Directory => match fs::symlink_metadata(&path) {
                Ok(existing) if existing.is_dir() => {}
                _ => {
                    self.clear(&path, &name)?;
                    fs::create_dir(&path).map_err(|e| self.entry_err(&name, e))?;
                }
            },
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.clear(&path, &name)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| self.entry_err(&name, e))?;
                self.stats.bytes +=
                    io::copy(entry, &mut file).map_err(|e| self.entry_err(&name, e))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&name, "symlink without a target"))?
                    .into_owned();
                self.clear(&path, &name)?;
                symlink(OsStr::from_bytes(&target), &path).map_err(|e| self.entry_err(&name, e))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&name, "hard link without a target"))?
                    .into_owned();
                let source = self.hard_link_source(&target, &name)?;
                self.clear(&path, &name)?;
                fs::hard_link(&source, &path).map_err(|e| self.entry_err(&name, e))?;
                // A hard link shares its target's inode: its metadata is already set.
                return Ok(());
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let file_type = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                self.clear(&path, &name)?;
                mknod(
                    &path,
                    file_type,
                    Mode::from_bits_truncate(0o600),
                    makedev(major.into(), minor.into()),
                )
                .map_err(|e| self.entry_err(&name, e.into()))?;
            }
            other => {
                return Err(
                    self.unsafe_entry(&name, &format!("unsupported tar entry type {other:?}"))
                );
            }
        }
        self.apply_meta(&path, &meta, kind, &name)
    }

    /// Sets every directory's mtime, now that nothing is created in them any more.
    fn finish(self) -> Result<UnpackStats> {
        for (dir, mtime) in &self.dir_times {
            set_mtime(dir, mtime).map_err(|e| ImageError::Entry {
                layer: self.layer.clone(),
                entry: dir
                    .strip_prefix(self.dest)
                    .unwrap_or(dir)
                    .display()
                    .to_string(),
                source: e,
            })?;
        }
        Ok(self.stats)
    }

    /// Makes sure every parent directory of `rel` exists as a real directory (not a symlink)
    /// inside the layer, creating missing ones; returns the parent's path.
    fn ensure_parent(&self, rel: &Path, name: &str) -> Result<PathBuf> {
        let mut dir = self.dest.to_path_buf();
        for component in rel.parent().into_iter().flat_map(Path::components) {
            dir.push(component);
            match fs::symlink_metadata(&dir) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(self.unsafe_entry(name, &self.through_symlink(&dir)));
                }
                Ok(_) => {
                    return Err(self.unsafe_entry(name, "a parent path is not a directory"));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&dir).map_err(|e| self.entry_err(name, e))?;
                    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                        .map_err(|e| self.entry_err(name, e))?;
                }
                Err(e) => return Err(self.entry_err(name, e)),
            }
        }
        Ok(dir)
    }

    /// The existing file a hard link entry points at: inside the layer, reached without
    /// symlinks, not a directory.
    fn hard_link_source(&self, target: &[u8], name: &str) -> Result<PathBuf> {
        let rel = relative_path(target)
            .map_err(|reason| self.unsafe_entry(name, &format!("hard link target {reason}")))?;
        if rel.as_os_str().is_empty() {
            return Err(self.unsafe_entry(name, "hard link to the layer root"));
        }
        let mut path = self.dest.to_path_buf();
        let components: Vec<Component<'_>> = rel.components().collect();
        for (i, component) in components.iter().enumerate() {
            path.push(component);
            let last = i + 1 == components.len();
            match fs::symlink_metadata(&path) {
                Ok(meta) if last && meta.is_dir() => {
                    return Err(self.unsafe_entry(name, "hard link to a directory"));
                }
                Ok(_) if last => {}
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(self.unsafe_entry(name, &self.through_symlink(&path)));
                }
                Ok(_) | Err(_) => {
                    return Err(self.unsafe_entry(
                        name,
                        &format!(
                            "hard link target {:?} is not in the layer",
                            rel.display().to_string()
                        ),
                    ));
                }
            }
        }
        Ok(path)
    }

    /// Removes whatever is at `path` (a directory with its contents), never following it.
    fn clear(&self, path: &Path, name: &str) -> Result<()> {
        let result = match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
            Ok(_) => fs::remove_file(path),
        };
        result.map_err(|e| self.entry_err(name, e))
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta> {
        let header = entry.header();
        let invalid =
            |what: &str| self.unsafe_entry(name, &format!("invalid {what} in the tar header"));
        // Blank numeric fields read as 0, as Go's archive/tar (which wrote most images) does.
        let old = header.as_old();
        let number = |value: io::Result<u64>, raw: &[u8], what: &str| match value {
            Ok(n) => Ok(n),
            Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
            Err(_) => Err(invalid(what)),
        };
        let mode = header.mode().map_err(|_| invalid("mode"))? & 0o7777;
        let uid = number(header.uid(), &old.uid, "uid")?;
        let uid = u32::try_from(uid).map_err(|_| invalid("uid"))?;
        let gid = number(header.gid(), &old.gid, "gid")?;
        let gid = u32::try_from(gid).map_err(|_| invalid("gid"))?;
        let mtime = number(header.mtime(), &old.mtime, "mtime")?;
        let mut mtime = TimeSpec::new(i64::try_from(mtime).map_err(|_| invalid("mtime"))?, 0);
        let mut xattrs = Vec::new();
        let pax = entry
            .pax_extensions()
            .map_err(|e| self.entry_err(name, e))?;
        for ext in pax.into_iter().flatten() {
            let ext = ext.map_err(|e| self.entry_err(name, e))?;
            let key = ext.key_bytes();
            if key == b"mtime" {
                if let Some(t) = std::str::from_utf8(ext.value_bytes())
                    .ok()
                    .and_then(parse_pax_time)
                {
                    mtime = t;
                }
            } else if let Some(attr) = key.strip_prefix(b"SCHILY.xattr.") {
                if !attr.starts_with(whiteout::OVERLAY_XATTR_PREFIX) {
                    xattrs.push((attr.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    fn apply_meta(&mut self, path: &Path, meta: &Meta, kind: EntryType, name: &str) -> Result<()> {
        let err = |e: io::Error| self.entry_err(name, e);
        lchown(path, Some(meta.uid), Some(meta.gid)).map_err(err)?;
        let is_symlink = kind == EntryType::Symlink;
        if !is_symlink {
            // After chown, which clears set-id bits.
            fs::set_permissions(path, fs::Permissions::from_mode(meta.mode)).map_err(err)?;
        }
        for (attr, value) in &meta.xattrs {
            if let Err(e) = whiteout::set_xattr_nofollow(path, attr, value) {
                // Filesystems without xattrs, and user.* on symlinks, are not worth failing on.
                let ignorable = e.raw_os_error() == Some(libc::ENOTSUP)
                    || (is_symlink && e.raw_os_error() == Some(libc::EPERM));
                if !ignorable {
                    return Err(err(e));
                }
            }
        }
        if kind == EntryType::Directory {
            self.dir_times.push((path.to_path_buf(), meta.mtime));
            Ok(())
        } else {
            set_mtime(path, &meta.mtime).map_err(err)
        }
    }

    fn through_symlink(&self, at: &Path) -> String {
        let rel = at.strip_prefix(self.dest).unwrap_or(at);
        format!(
            "its path goes through the symlink {:?} inside the layer",
            rel.display().to_string()
        )
    }

    fn unsafe_entry(&self, name: &str, reason: &str) -> ImageError {
        ImageError::UnsafeEntry {
            layer: self.layer.clone(),
            entry: name.to_string(),
            reason: reason.to_string(),
        }
    }

    fn entry_err(&self, name: &str, source: io::Error) -> ImageError {
        ImageError::Entry {
            layer: self.layer.clone(),
            entry: name.to_string(),
            source,
        }
    }
}

/// The entry path relative to the layer root: empty components, `.` and a leading `/` are
/// dropped; `..` is an error.
fn relative_path(raw: &[u8]) -> std::result::Result<PathBuf, &'static str> {
    let mut rel = PathBuf::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("a `..` component would leave the layer"),
            p => rel.push(OsStr::from_bytes(p)),
        }
    }
    Ok(rel)
}

/// A pax time, `seconds[.fraction]`.
fn parse_pax_time(value: &str) -> Option<TimeSpec> {
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos = if digits.is_empty() {
        0
    } else {
        digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32)
    };
    Some(TimeSpec::new(secs, if secs < 0 { 0 } else { nanos }))
}

fn set_mtime(path: &Path, mtime: &TimeSpec) -> io::Result<()> {
    utimensat(None, path, mtime, mtime, UtimensatFlags::NoFollowSymlink)?;
    Ok(())
}

#[cfg(test)]
mod tests;
