//! OCI/AUFS whiteouts in layer tars, converted to what overlayfs reads in a lower directory:
//! `.wh.<name>` becomes a character device 0/0 named `<name>`, and `.wh..wh..opq` in a
//! directory becomes the xattr `trusted.overlay.opaque=y` on that directory.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

/// The prefix of every whiteout file name.
const PREFIX: &[u8] = b".wh.";
/// The name marking its directory opaque: nothing below the layer shows through it.
const OPAQUE: &[u8] = b".wh..wh..opq";
/// The xattr overlayfs reads to find an opaque directory.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The prefix of the xattrs overlayfs owns; a layer tar may not set them.
pub(crate) const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";

/// What a tar entry's file name says, as a whiteout.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Whiteout<'a> {
    /// Not a whiteout: an ordinary entry.
    None,
    /// `.wh..wh..opq`: the directory holding it is opaque.
    Opaque,
    /// `.wh.<name>`: `<name>` is removed from the layers below.
    Remove(&'a OsStr),
    /// Another `.wh..wh.` name (AUFS bookkeeping such as `.wh..wh.plnk`): nothing to do.
    AufsMeta,
}

pub(crate) fn classify(file_name: &OsStr) -> Whiteout<'_> {
    let bytes = file_name.as_bytes();
    if bytes == OPAQUE {
        Whiteout::Opaque
    } else if bytes.starts_with(b".wh..wh.") {
        Whiteout::AufsMeta
    } else if let Some(name) = bytes.strip_prefix(PREFIX) {
        Whiteout::Remove(OsStr::from_bytes(name))
    } else {
        Whiteout::None
    }
}

/// Creates the overlayfs whiteout for `path`: a character device 0/0 (needs CAP_MKNOD).
pub(crate) fn make_whiteout(path: &Path) -> io::Result<()> {
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))?;
    Ok(())
}

/// Marks `dir` opaque for overlayfs (needs CAP_SYS_ADMIN for the `trusted.` namespace).
pub(crate) fn mark_opaque(dir: &Path) -> io::Result<()> {
    set_xattr_nofollow(dir, OPAQUE_XATTR.as_bytes(), b"y")
}

/// Whether `meta` is an overlayfs whiteout (character device 0/0).
pub fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether `dir` carries `trusted.overlay.opaque=y`.
pub fn is_opaque(dir: &Path) -> io::Result<bool> {
    let path = cstring(dir.as_os_str())?;
    let name = cstring(OsStr::new(OPAQUE_XATTR))?;
    let mut value = [0u8; 8];
    // SAFETY: `path` and `name` are NUL-terminated strings that outlive the call, and `value`
    // is a writable buffer of the length passed; lgetxattr writes at most that many bytes.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENODATA) => Ok(false),
            _ => Err(err),
        };
    }
    Ok(&value[..n as usize] == b"y")
}

/// Sets an extended attribute on `path` itself (a symlink is not followed).
pub(crate) fn set_xattr_nofollow(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let path = cstring(path.as_os_str())?;
    let name = cstring(OsStr::from_bytes(name))?;
    // SAFETY: `path` and `name` are NUL-terminated strings that outlive the call, and `value`
    // points to `value.len()` readable bytes; lsetxattr only reads them.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_names() {
        assert_eq!(classify(OsStr::new("file")), Whiteout::None);
        assert_eq!(classify(OsStr::new(".wh..wh..opq")), Whiteout::Opaque);
        assert_eq!(classify(OsStr::new(".wh..wh.plnk")), Whiteout::AufsMeta);
        assert_eq!(
            classify(OsStr::new(".wh.gone")),
            Whiteout::Remove(OsStr::new("gone"))
        );
        assert_eq!(classify(OsStr::new(".whx")), Whiteout::None);
    }

    #[test]
    fn makes_whiteouts_and_opaque_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let wh = dir.path().join("gone");
        make_whiteout(&wh).unwrap();
        assert!(is_whiteout(&std::fs::symlink_metadata(&wh).unwrap()));
        assert!(!is_opaque(dir.path()).unwrap());
        mark_opaque(dir.path()).unwrap();
        assert!(is_opaque(dir.path()).unwrap());
    }
}
