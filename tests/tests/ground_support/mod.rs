//! Helpers of the ground tests: the cases that run on the KVM host, and process inspection.

pub mod l2;
pub mod longmode;

use std::path::Path;

/// The pids of the processes whose command line mentions `needle` (excluding this process).
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline"))
        else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// The scratch directory the runner announced on its first line (`..., scratch /tmp/...`).
pub fn announced_scratch(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .find(|l| l.starts_with("nutshell-ground: ") && l.contains(" mode ("))
        .and_then(|l| l.rsplit_once(", scratch "))
        .map(|(_, dir)| dir.trim().to_owned())
}
