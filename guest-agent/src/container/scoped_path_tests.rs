use std::ffi::CString;
use std::fs;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::*;

/// A fake rootfs: its canonical path and an O_PATH descriptor of it.
struct Rootfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
    fd: OwnedFd,
}

fn rootfs() -> Rootfs {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().canonicalize().unwrap();
    let fd = open_dir(&path);
    Rootfs {
        _dir: dir,
        path,
        fd,
    }
}

fn open_dir(path: &Path) -> OwnedFd {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: open on a NUL-terminated path; the descriptor is owned right away.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    assert!(fd >= 0, "open {}", path.display());
    // SAFETY: a descriptor just opened, owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn raw(fd: &OwnedFd) -> RawFd {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

/// Where an opened descriptor points, per /proc/self/fd.
fn target_of(fd: RawFd) -> PathBuf {
    // SAFETY: the descriptor came from open_in_root and is owned (closed) here.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fs::read_link(format!("/proc/self/fd/{}", raw(&owned))).unwrap()
}

fn open(root: &Rootfs, path: &str, create: Option<Leaf>) -> Result<PathBuf, i32> {
    open_in_root(raw(&root.fd), path.as_bytes(), create).map(target_of)
}

/// A name no test run shares with another, for checking nothing lands outside.
fn unique(what: &str) -> String {
    format!("nutshell-scoped-{what}-{}", std::process::id())
}

#[test]
fn absolute_links_stay_in_the_root() {
    let root = rootfs();
    fs::create_dir_all(root.path.join("var")).unwrap();
    fs::create_dir(root.path.join("run")).unwrap();
    symlink("/run", root.path.join("var/run")).unwrap();
    let name = unique("abs");
    let got = open(&root, &format!("/var/run/{name}/secrets"), Some(Leaf::Dir)).unwrap();
    assert_eq!(got, root.path.join(format!("run/{name}/secrets")));
    assert!(root.path.join(format!("run/{name}/secrets")).is_dir());
    assert!(!Path::new("/run").join(&name).exists());
    // Existing: resolved the same way without creating.
    let again = open(&root, &format!("var/run/{name}/secrets"), None).unwrap();
    assert_eq!(again, got);
}

#[test]
fn dotdot_links_stay_in_the_root() {
    let root = rootfs();
    symlink("../../..", root.path.join("up")).unwrap();
    fs::create_dir_all(root.path.join("a/b")).unwrap();
    symlink("../../../../../..", root.path.join("a/b/deep")).unwrap();
    let name = unique("up");
    let got = open(&root, &format!("up/{name}/x"), Some(Leaf::Dir)).unwrap();
    assert_eq!(got, root.path.join(format!("{name}/x")));
    let got = open(&root, &format!("/a/b/deep/up/../{name}/y"), Some(Leaf::Dir)).unwrap();
    assert_eq!(got, root.path.join(format!("{name}/y")));
    let got = open(&root, "/../../..", None).unwrap();
    assert_eq!(got, root.path);
    for dir in root.path.ancestors().skip(1) {
        assert!(!dir.join(&name).exists(), "{} outside", dir.display());
    }
}

#[test]
fn dangling_links_are_followed_inside() {
    let root = rootfs();
    fs::create_dir(root.path.join("var")).unwrap();
    let missing = unique("dangling");
    symlink(format!("/{missing}"), root.path.join("var/run")).unwrap();
    symlink("../data/here", root.path.join("var/rel")).unwrap();
    let got = open(&root, "var/run/kube/token", Some(Leaf::File)).unwrap();
    assert_eq!(got, root.path.join(format!("{missing}/kube/token")));
    assert!(root.path.join(format!("{missing}/kube/token")).is_file());
    assert!(!Path::new("/").join(&missing).exists());
    let got = open(&root, "var/rel/sub", Some(Leaf::Dir)).unwrap();
    assert_eq!(got, root.path.join("data/here/sub"));
    // A dangling last component of a file bind: the file is made where the link points.
    fs::create_dir(root.path.join("etc")).unwrap();
    symlink("../run2/resolv.conf", root.path.join("etc/resolv.conf")).unwrap();
    let got = open(&root, "/etc/resolv.conf", Some(Leaf::File)).unwrap();
    assert_eq!(got, root.path.join("run2/resolv.conf"));
    assert!(root.path.join("run2/resolv.conf").is_file());
}

#[test]
fn files_and_missing_paths() {
    let root = rootfs();
    let got = open(&root, "/etc/hosts", Some(Leaf::File)).unwrap();
    assert_eq!(got, root.path.join("etc/hosts"));
    let meta = fs::metadata(&got).unwrap();
    assert!(meta.is_file() && meta.len() == 0);
    assert!(root.path.join("etc").is_dir());
    // An existing file is opened, not truncated or replaced.
    fs::write(root.path.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    open(&root, "etc/hosts", Some(Leaf::File)).unwrap();
    assert_eq!(
        fs::read_to_string(root.path.join("etc/hosts")).unwrap(),
        "127.0.0.1 localhost\n"
    );
    // A file on the way is not a directory.
    assert_eq!(
        open(&root, "etc/hosts/x", Some(Leaf::Dir)),
        Err(libc::ENOTDIR)
    );
    // Without create nothing is made.
    assert_eq!(open(&root, "no/such", None), Err(libc::ENOENT));
    assert!(!root.path.join("no").exists());
    // The root itself.
    assert_eq!(open(&root, "/", None).unwrap(), root.path);
    assert_eq!(open(&root, "", Some(Leaf::Dir)).unwrap(), root.path);
}

#[test]
fn loops_and_magic_links_are_refused() {
    let root = rootfs();
    symlink("b", root.path.join("a")).unwrap();
    symlink("a", root.path.join("b")).unwrap();
    assert_eq!(open(&root, "a/x", Some(Leaf::Dir)), Err(libc::ELOOP));
    // /proc/self/root is a magic link: refused even below the real root.
    let real_root = open_dir(Path::new("/"));
    let magic = open_in_root(raw(&real_root), b"proc/self/root/etc", None);
    assert_eq!(magic.map(target_of), Err(libc::ELOOP));
}

#[test]
fn share_sources_never_follow_symlinks() {
    let share = tempfile::tempdir().unwrap();
    let base = share.path().canonicalize().unwrap();
    fs::create_dir_all(base.join("vol/sub")).unwrap();
    fs::write(base.join("vol/file"), "").unwrap();
    symlink("/", base.join("vol/root")).unwrap();
    symlink("sub", base.join("vol/alias")).unwrap();
    let base_c = CString::new(base.as_os_str().as_encoded_bytes()).unwrap();
    let open = |p: &str| {
        open_beneath_no_symlinks(&base_c, &CString::new(p).unwrap()).map(|fd| {
            // SAFETY: a descriptor just opened, owned here.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            (is_dir(raw(&owned)), target_of_owned(&owned))
        })
    };
    assert_eq!(open("vol/sub"), Ok((true, base.join("vol/sub"))));
    assert_eq!(open("vol/file"), Ok((false, base.join("vol/file"))));
    assert_eq!(open("."), Ok((true, base.clone())));
    assert_eq!(open("vol/root"), Err(libc::ELOOP));
    assert_eq!(open("vol/root/etc"), Err(libc::ELOOP));
    assert_eq!(open("vol/alias"), Err(libc::ELOOP));
    assert_eq!(open("../x"), Err(libc::EXDEV));
    assert_eq!(open("/etc"), Err(libc::EXDEV));
}

fn target_of_owned(fd: &OwnedFd) -> PathBuf {
    fs::read_link(format!("/proc/self/fd/{}", raw(fd))).unwrap()
}

#[test]
fn fd_paths_are_formatted() {
    assert_eq!(FdPath::new(0).as_c_str(), c"/proc/self/fd/0");
    assert_eq!(FdPath::new(7).as_c_str(), c"/proc/self/fd/7");
    assert_eq!(FdPath::new(1234).as_c_str(), c"/proc/self/fd/1234");
    assert_eq!(
        FdPath::new(i32::MAX).as_c_str(),
        c"/proc/self/fd/2147483647"
    );
}
