//! `swap-race DIR TARGET SECONDS`: a symlink race against whoever serves DIR. One thread swaps
//! `DIR/x` (a directory holding `inside`) and `DIR/x.link` (a symlink to TARGET) with
//! renameat2(RENAME_EXCHANGE), as fast as it can; the main thread meanwhile reads
//! `DIR/x/inside` and lists `DIR/x`. Prints `swaps=N inside=M listed=L`, and one
//! `foreign: ...` line for every read or listing that showed something other than the inside
//! directory's own content. On virtio-fs the host resolves each name against the directory
//! the guest looked up, so TARGET (a host path) is never reached.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const INSIDE_TEXT: &str = "inside\n";

fn cstring(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| format!("NUL in {path:?}"))
}

pub fn swap_race(dir: &str, target: &str, seconds: u64) -> Result<(), String> {
    let dir = Path::new(dir);
    let (x, link) = (dir.join("x"), dir.join("x.link"));
    std::fs::create_dir_all(&x).map_err(|e| format!("mkdir {x:?}: {e}"))?;
    std::fs::write(x.join("inside"), INSIDE_TEXT).map_err(|e| format!("write inside: {e}"))?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(target, &link).map_err(|e| format!("symlink {link:?}: {e}"))?;
    let (cx, clink) = (cstring(&x)?, cstring(&link)?);
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<u64, String> {
            let mut swaps = 0;
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: renameat2 on two NUL-terminated paths that outlive the call.
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_renameat2,
                        libc::AT_FDCWD,
                        cx.as_ptr(),
                        libc::AT_FDCWD,
                        clink.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                if rc != 0 {
                    return Err(format!(
                        "renameat2(RENAME_EXCHANGE): {}",
                        std::io::Error::last_os_error()
                    ));
                }
                swaps += 1;
            }
            Ok(swaps)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut inside, mut listed) = (0u64, 0u64);
    let mut foreign = Vec::new();
    while Instant::now() < deadline {
        match std::fs::read_to_string(x.join("inside")) {
            Ok(text) if text == INSIDE_TEXT => inside += 1,
            Ok(text) => foreign.push(format!("read: {text:?}")),
            Err(_) => {}
        }
        if let Ok(entries) = std::fs::read_dir(&x) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == "inside" {
                    listed += 1;
                } else {
                    foreign.push(format!("listed: {name}"));
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().map_err(|_| "the swapper panicked")??;
    println!("swaps={swaps} inside={inside} listed={listed}");
    for f in foreign.iter().take(20) {
        println!("foreign: {f}");
    }
    Ok(())
}
