use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use super::*;
use crate::testutil::{is_root, LayerTar, MTIME};
use crate::whiteout::{is_opaque, is_whiteout};

fn layer() -> Digest {
    Digest::of(b"test layer")
}

fn unpack(tar: &[u8]) -> (tempfile::TempDir, Result<UnpackStats>) {
    let dir = tempfile::tempdir().unwrap();
    let result = unpack_layer(tar, dir.path(), &layer());
    (dir, result)
}

fn rejected(result: Result<UnpackStats>, entry: &str) {
    match result {
        Err(ImageError::UnsafeEntry {
            entry: e,
            layer: l,
            reason,
        }) => {
            assert_eq!(e, entry, "reason: {reason}");
            assert_eq!(l, layer());
        }
        other => panic!("expected {entry} to be rejected, got {other:?}"),
    }
}

#[test]
fn unpacks_files_dirs_symlinks_and_metadata() {
    let tar = LayerTar::new()
        .dir("./", 0o755)
        .dir("./usr/", 0o750)
        .file("./usr/tool", b"#!/bin/sh\n", 0o4755)
        .file_owned("/etc/secret", b"s3cret", 1234, 5678)
        .symlink("usr/abs-link", "/etc/passwd")
        .symlink("usr/rel-link", "../etc/secret")
        .fifo("usr/fifo")
        .finish();
    let (dir, result) = unpack(&tar);
    let stats = result.unwrap();
    let root = dir.path();
    assert_eq!(stats.entries, 7);
    assert_eq!(stats.bytes, 16);

    let tool = fs::metadata(root.join("usr/tool")).unwrap();
    assert_eq!(tool.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(tool.mtime(), MTIME as i64);
    assert_eq!(fs::read(root.join("usr/tool")).unwrap(), b"#!/bin/sh\n");
    let usr = fs::metadata(root.join("usr")).unwrap();
    assert_eq!(usr.permissions().mode() & 0o7777, 0o750);
    assert_eq!(
        usr.mtime(),
        MTIME as i64,
        "directory mtime is set after its children"
    );
    assert_eq!(
        fs::metadata(root).unwrap().permissions().mode() & 0o777,
        0o755
    );

    // Symlink targets are kept as they are, never resolved.
    assert_eq!(
        fs::read_link(root.join("usr/abs-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(root.join("usr/rel-link")).unwrap(),
        Path::new("../etc/secret")
    );
    assert_eq!(
        fs::symlink_metadata(root.join("usr/abs-link"))
            .unwrap()
            .mtime(),
        MTIME as i64
    );
    assert!(fs::symlink_metadata(root.join("usr/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());

    // The leading "/" is dropped; the implicit parent "etc" is created 0755.
    let secret = fs::metadata(root.join("etc/secret")).unwrap();
    assert_eq!(
        fs::metadata(root.join("etc")).unwrap().permissions().mode() & 0o777,
        0o755
    );
    if is_root() {
        assert_eq!((secret.uid(), secret.gid()), (1234, 5678));
    }
}

#[test]
fn converts_whiteouts_and_opaque_dirs() {
    assert!(
        is_root(),
        "whiteouts need root (mknod, trusted.* xattrs): run the tests as root, as CI does"
    );
    let tar = LayerTar::new()
        .dir("etc", 0o755)
        .file("etc/.wh.hosts", b"", 0o644)
        .dir("var/cache", 0o755)
        .file("var/cache/.wh..wh..opq", b"", 0o644)
        .file("var/cache/new", b"n", 0o644)
        .file("gone/.wh.deep", b"", 0o644)
        .file("etc/.wh..wh.plnk", b"", 0o644)
        .finish();
    let (dir, result) = unpack(&tar);
    let stats = result.unwrap();
    assert_eq!((stats.whiteouts, stats.opaque_dirs), (2, 1));
    let root = dir.path();
    let hosts = fs::symlink_metadata(root.join("etc/hosts")).unwrap();
    assert!(hosts.file_type().is_char_device() && is_whiteout(&hosts));
    assert!(is_whiteout(
        &fs::symlink_metadata(root.join("gone/deep")).unwrap()
    ));
    assert!(!root.join("etc/.wh.hosts").exists());
    assert!(!root.join("etc/.wh..wh.plnk").exists());
    assert!(is_opaque(&root.join("var/cache")).unwrap());
    assert!(!is_opaque(&root.join("etc")).unwrap());
    assert!(!root.join("var/cache/.wh..wh..opq").exists());
    assert_eq!(fs::read(root.join("var/cache/new")).unwrap(), b"n");
}

#[test]
fn unpacks_hard_links_and_devices() {
    let tar = LayerTar::new()
        .file("bin/busybox", b"bb", 0o755)
        .hard_link("bin/ls", "bin/busybox")
        .hard_link("bin/cat", "/bin/busybox")
        .finish();
    let (dir, result) = unpack(&tar);
    result.unwrap();
    let bb = fs::metadata(dir.path().join("bin/busybox")).unwrap();
    let ls = fs::metadata(dir.path().join("bin/ls")).unwrap();
    let cat = fs::metadata(dir.path().join("bin/cat")).unwrap();
    assert_eq!((bb.ino(), bb.nlink()), (ls.ino(), 3));
    assert_eq!(cat.ino(), bb.ino());

    if is_root() {
        let (dir, result) = unpack(&LayerTar::new().char_device("dev/null", 1, 3).finish());
        result.unwrap();
        let null = fs::symlink_metadata(dir.path().join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
        assert_eq!(null.permissions().mode() & 0o777, 0o666);
    }
}

#[test]
fn rejects_dot_dot() {
    let (_dir, result) = unpack(&LayerTar::new().file("../x", b"x", 0o644).finish());
    rejected(result, "../x");
    let (_dir, result) = unpack(&LayerTar::new().file("a/../../x", b"x", 0o644).finish());
    rejected(result, "a/../../x");
}

#[test]
fn does_not_write_through_a_symlink() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().display().to_string();
    // A symlink to a host directory, then entries below it.
    let tar = LayerTar::new()
        .symlink("a", &target)
        .file("a/passwd", b"pwned", 0o644)
        .finish();
    let (_dir, result) = unpack(&tar);
    rejected(result, "a/passwd");
    assert!(!outside.path().join("passwd").exists());

    // The classic: a -> / then a/etc/passwd.
    let tar = LayerTar::new()
        .symlink("a", "/")
        .file("a/etc/passwd", b"pwned", 0o644)
        .finish();
    let (dir, result) = unpack(&tar);
    rejected(result, "a/etc/passwd");
    assert!(!dir.path().join("etc").exists());

    // A symlink replaced by a file is replaced, not written through.
    let victim = outside.path().join("victim");
    fs::write(&victim, "keep").unwrap();
    let tar = LayerTar::new()
        .symlink("f", victim.to_str().unwrap())
        .file("f", b"new", 0o644)
        .finish();
    let (dir, result) = unpack(&tar);
    result.unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"keep");
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"new");
}

#[test]
fn rejects_hard_links_that_leave_the_layer() {
    let (_dir, result) = unpack(&LayerTar::new().hard_link("x", "../../etc/passwd").finish());
    rejected(result, "x");
    // An absolute target means the layer's own /etc/passwd, which is not there.
    let (_dir, result) = unpack(&LayerTar::new().hard_link("x", "/etc/passwd").finish());
    rejected(result, "x");
    // Through a symlink to the host.
    let tar = LayerTar::new()
        .symlink("etc", "/etc")
        .hard_link("x", "etc/passwd")
        .finish();
    let (_dir, result) = unpack(&tar);
    rejected(result, "x");
    // To a directory.
    let tar = LayerTar::new().dir("d", 0o755).hard_link("x", "d").finish();
    let (_dir, result) = unpack(&tar);
    rejected(result, "x");
}

#[test]
fn later_entries_replace_earlier_ones() {
    let tar = LayerTar::new()
        .file("x", b"file", 0o644)
        .dir("x", 0o700)
        .file("x/inner", b"i", 0o644)
        .file("x", b"file again", 0o600)
        .finish();
    let (dir, result) = unpack(&tar);
    result.unwrap();
    assert_eq!(fs::read(dir.path().join("x")).unwrap(), b"file again");
}

#[test]
fn handles_long_names_and_pax_headers() {
    let long = format!("{}/file", "d".repeat(150));
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(3);
    h.set_mtime(5);
    h.set_cksum();
    builder
        .append_pax_extensions([
            ("mtime", &b"1234567890.5"[..]),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        ])
        .unwrap();
    builder
        .append_data(&mut h, "pax-file", &b"pax"[..])
        .unwrap();
    let mut tar = builder.into_inner().unwrap();
    // Strip the end-of-archive blocks and append a GNU long-name entry.
    tar.truncate(tar.len() - 1024);
    let gnu = LayerTar::new().long_name_file(&long, b"long").finish();
    tar.extend_from_slice(&gnu);

    let (dir, result) = unpack(&tar);
    let stats = result.unwrap();
    assert_eq!(stats.entries, 2);
    assert_eq!(fs::read(dir.path().join(&long)).unwrap(), b"long");
    let pax = dir.path().join("pax-file");
    assert_eq!(fs::metadata(&pax).unwrap().mtime(), 1_234_567_890);
    assert_eq!(fs::metadata(&pax).unwrap().mtime_nsec(), 500_000_000);
    // An overlay xattr from the tar is dropped, never applied.
    if is_root() {
        assert!(!is_opaque(&pax).unwrap());
    }
}

#[test]
fn broken_stream_is_a_layer_error() {
    let mut tar = LayerTar::new().file("x", &[7u8; 4000], 0o644).finish();
    tar.truncate(1200);
    let (_dir, result) = unpack(&tar);
    assert!(
        matches!(
            result,
            Err(ImageError::Entry { .. }) | Err(ImageError::LayerStream { .. })
        ),
        "{result:?}"
    );
}

#[test]
fn parses_pax_times() {
    assert_eq!(parse_pax_time("12"), Some(TimeSpec::new(12, 0)));
    assert_eq!(
        parse_pax_time("12.25"),
        Some(TimeSpec::new(12, 250_000_000))
    );
    assert_eq!(parse_pax_time("x"), None);
}
