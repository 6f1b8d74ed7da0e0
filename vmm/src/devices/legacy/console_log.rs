//! The serial console's log file, bounded: the guest decides how much it prints, the host decides
//! how much of it is kept.
//!
//! A regular file is rotated when the next write would take it past its cap: `PATH` is renamed
//! to `PATH.1` (replacing an older one) and a fresh `PATH` is started, so at most twice the cap
//! stays on disk and the newest output is always in `PATH`. A guest printing without end (a
//! kernel warning loop, `cat /dev/zero > /dev/ttyS0` by a guest root) cannot fill the host's
//! disk or, for a log under /run, its memory. Anything else (a pipe, `/dev/stdout`) belongs to a
//! reader that decides itself and is written as it is.

use std::fs::{File, OpenOptions};
use std::io::{self, LineWriter, Write};
use std::path::{Path, PathBuf};

/// The default cap of a console log file.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;

/// The console log: line-buffered (it is read live, and after a crash, by whoever watches it).
pub struct ConsoleLog {
    path: PathBuf,
    /// `None` after a rotation failed: further output is dropped.
    file: Option<LineWriter<File>>,
    /// Bytes in the current file; `None` when it is not a regular file (never rotated).
    written: Option<u64>,
    max_bytes: u64,
}

impl ConsoleLog {
    /// Creates (truncates) `path`. `max_bytes` is the cap of a regular file (at least 1).
    pub fn create(path: &Path, max_bytes: u64) -> io::Result<Self> {
        let file = open(path)?;
        let written = file.metadata()?.is_file().then_some(0);
        Ok(ConsoleLog {
            path: path.to_owned(),
            file: Some(LineWriter::new(file)),
            written,
            max_bytes: max_bytes.max(1),
        })
    }

    /// `PATH.1`, where the previous part of the log goes.
    pub fn rotated_path(path: &Path) -> PathBuf {
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        PathBuf::from(rotated)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut old) = self.file.take() {
            old.flush()?;
        }
        std::fs::rename(&self.path, Self::rotated_path(&self.path))?;
        self.file = Some(LineWriter::new(open(&self.path)?));
        self.written = Some(0);
        Ok(())
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(written) = self.written {
            if written > 0 && written + buf.len() as u64 > self.max_bytes {
                if let Err(e) = self.rotate() {
                    // Stop writing rather than grow without bound; the tail in memory remains.
                    log::warn!(
                        "console log {}: rotation failed, dropping further output: {e}",
                        self.path.display()
                    );
                    self.file = None;
                }
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(buf.len());
        };
        file.write_all(buf)?;
        if let Some(written) = self.written.as_mut() {
            *written += buf.len() as u64;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "nutshell-console-log-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn rotates_at_the_cap_and_keeps_at_most_two_parts() {
        let dir = dir("rotate");
        let path = dir.join("console.log");
        let mut log = ConsoleLog::create(&path, 100).unwrap();
        for i in 0..1000 {
            log.write_all(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        log.flush().unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        let previous = std::fs::read_to_string(ConsoleLog::rotated_path(&path)).unwrap();
        assert!(current.len() <= 100, "{}", current.len());
        assert!(
            previous.len() <= 100 && previous.len() > 90,
            "{}",
            previous.len()
        );
        assert!(current.ends_with("line 0999\n"), "{current}");
        // The two parts are consecutive output.
        assert!(format!("{previous}{current}").contains("line 0990\nline 0991\n"));
        let entries = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(entries, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_write_bigger_than_the_cap_is_kept_whole() {
        let dir = dir("big");
        let path = dir.join("console.log");
        let mut log = ConsoleLog::create(&path, 10).unwrap();
        log.write_all(b"0123456789abcdef\n").unwrap();
        log.write_all(b"next\n").unwrap();
        log.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"next\n");
        assert_eq!(
            std::fs::read(ConsoleLog::rotated_path(&path)).unwrap(),
            b"0123456789abcdef\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_rotation_drops_output_instead_of_growing() {
        let dir = dir("fail");
        let path = dir.join("console.log");
        let mut log = ConsoleLog::create(&path, 8).unwrap();
        log.write_all(b"first\n").unwrap();
        // The rename target is a non-empty directory: rename(2) fails.
        let blocker = ConsoleLog::rotated_path(&path);
        std::fs::create_dir(&blocker).unwrap();
        std::fs::write(blocker.join("x"), b"").unwrap();
        for _ in 0..100 {
            log.write_all(b"second\n").unwrap();
        }
        log.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_character_device_is_never_rotated() {
        let mut log = ConsoleLog::create(Path::new("/dev/null"), 4).unwrap();
        for _ in 0..10 {
            log.write_all(b"0123456789\n").unwrap();
        }
        assert!(Path::new("/dev/null").exists());
        assert!(!ConsoleLog::rotated_path(Path::new("/dev/null")).exists());
    }
}
