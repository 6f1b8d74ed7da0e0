//! Test groups: several cases of a `cargo test` binary that share one run on the KVM host (one L1
//! boot, in nested mode).
//!
//! A group is called from an ordinary `#[test] fn`. On the caller's machine it re-runs the test
//! binary on the ground, selecting just that test (`NAME --exact`) with `NUTSHELL_ON_KVM_HOST=1`;
//! there the same `#[test] fn` calls the group again, which now runs the cases one after another.

use std::ffi::OsString;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use super::{run, GroundCommand, GroundError, Mode, MODE_ENV};

/// Set to `1` for commands on the ground; a group seeing it runs its cases in this process.
pub const ON_KVM_HOST_ENV: &str = "NUTSHELL_ON_KVM_HOST";

/// Whether this process runs on the KVM host a group asked for (`NUTSHELL_ON_KVM_HOST=1`).
pub fn on_kvm_host() -> bool {
    std::env::var_os(ON_KVM_HOST_ENV).is_some_and(|v| v == "1")
}

/// Runs `cases` on a KVM host, in one ground run. `name` is the full libtest name of the calling
/// `#[test] fn` (its module path inside the test crate, then its name).
pub fn group(name: &str, cases: &[(&str, fn())]) {
    Group::new(name).run(cases);
}

type HostEnv = Box<dyn FnOnce() -> Vec<(OsString, OsString)>>;

/// A group with settings: deadline, L1 size, and environment prepared on the caller's side.
pub struct Group {
    name: String,
    deadline: Duration,
    memory_mib: Option<u32>,
    cpus: Option<u32>,
    env: Vec<(OsString, OsString)>,
    host_env: Vec<HostEnv>,
}

impl Group {
    /// A group with the deadline `NUTSHELL_GROUND_DEADLINE` (seconds) or 15 minutes.
    pub fn new(name: &str) -> Self {
        let deadline = std::env::var("NUTSHELL_GROUND_DEADLINE")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(Duration::from_secs(900), Duration::from_secs);
        Self {
            name: name.to_owned(),
            deadline,
            memory_mib: None,
            cpus: None,
            env: Vec::new(),
            host_env: Vec::new(),
        }
    }

    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = Some(mib);
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = Some(cpus);
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Variables computed only on the caller's side, before the ground run (build a kernel or an
    /// initramfs there, pass its path). Paths must be visible on the ground: not under /tmp.
    pub fn host_env(mut self, f: impl FnOnce() -> Vec<(OsString, OsString)> + 'static) -> Self {
        self.host_env.push(Box::new(f));
        self
    }

    /// Runs the cases: in this process on a KVM host, otherwise through [`run`]. Panics (fails the
    /// calling test) when a case fails, naming the failed cases and quoting the output.
    pub fn run(self, cases: &[(&str, fn())]) {
        if on_kvm_host() {
            run_cases(&self.name, cases);
        } else {
            self.run_on_ground(cases.len());
        }
    }

    fn run_on_ground(self, expected: usize) {
        let name = self.name.clone();
        let exe = std::env::current_exe()
            .unwrap_or_else(|e| panic!("group {name}: cannot find the test executable: {e}"));
        let mut cmd = GroundCommand::new(exe)
            .args([&name, "--exact", "--nocapture", "--test-threads=1"])
            .deadline(self.deadline);
        if let Ok(cwd) = std::env::current_dir() {
            cmd = cmd.cwd(cwd);
        }
        if let Some(mib) = self.memory_mib {
            cmd = cmd.memory_mib(mib);
        }
        if let Some(cpus) = self.cpus {
            cmd = cmd.cpus(cpus);
        }
        for (key, value) in std::env::vars_os() {
            if passes_through(&key) {
                cmd = cmd.env(key, value);
            }
        }
        cmd.env.extend(self.env);
        for f in self.host_env {
            cmd.env.extend(f());
        }
        let outcome = match run(cmd.clone()) {
            Ok(outcome) => outcome,
            // Every case bounds its own waits, so a group that passes its deadline has an L1
            // that stopped: nested KVM on TCG now and then wedges an L2 vCPU for good (its VMM
            // then cannot even be killed). That is the test ground failing, not the code under
            // test: say so loudly and run the group once more in a fresh L1.
            Err(GroundError::DeadlineExceeded {
                mode: Mode::Nested,
                deadline,
                console_tail,
                ..
            }) => {
                eprintln!(
                    "nutshell-ground: WARNING: group {name} passed its deadline of {} s in the \
                     nested L1, which stopped making progress; running the group once more in \
                     a fresh L1. L1 console tail:\n{console_tail}",
                    deadline.as_secs()
                );
                run(cmd).unwrap_or_else(|e| {
                    panic!("group {name} could not run on a KVM host (second L1): {e}")
                })
            }
            Err(e) => panic!("group {name} could not run on a KVM host: {e}"),
        };
        let stdout = outcome.stdout_text();
        let failed: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("nutshell-ground: case {name}::")))
            .filter_map(|l| l.split_once(" FAILED").map(|(case, _)| case))
            .collect();
        if !outcome.status.success() {
            let stderr = outcome.stderr_text();
            panic!(
                "group {name} failed on the KVM host ({}); failed cases: [{}]\n\
                 --- its stdout ends ---\n{}\n--- its stderr ends ---\n{}\n\
                 --- the L1 console ends ---\n{}",
                outcome.status,
                failed.join(", "),
                super::assets::last_lines(&stdout, 40),
                super::assets::last_lines(&stderr, 40),
                outcome.l1_console_tail,
            );
        }
        let marker = format!("nutshell-ground: group {name} ran {expected} cases");
        assert!(
            stdout.lines().any(|l| l.starts_with(&marker)),
            "group {name}: the test binary ran no test named `{name}` on the KVM host; pass the \
             calling #[test] fn's full libtest name (module path and name) to the group"
        );
    }
}

/// RUST_LOG, RUST_BACKTRACE, RUST_LIB_BACKTRACE and NUTSHELL_* reach the ground, except the
/// variables that steer the ground itself.
fn passes_through(key: &std::ffi::OsStr) -> bool {
    let Some(key) = key.to_str() else {
        return false;
    };
    match key {
        "RUST_LOG" | "RUST_BACKTRACE" | "RUST_LIB_BACKTRACE" => true,
        _ if key == MODE_ENV || key == ON_KVM_HOST_ENV => false,
        _ => key.starts_with("NUTSHELL_") && !key.starts_with("NUTSHELL_GROUND"),
    }
}

fn run_cases(name: &str, cases: &[(&str, fn())]) {
    let mut failed = Vec::new();
    for (case, f) in cases {
        println!("nutshell-ground: case {name}::{case} ...");
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(f));
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(()) => println!("nutshell-ground: case {name}::{case} ok ({secs:.3} s)"),
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(non-string panic)".into());
                println!("nutshell-ground: case {name}::{case} FAILED ({secs:.3} s): {message}");
                failed.push(*case);
            }
        }
    }
    println!(
        "nutshell-ground: group {name} ran {} cases: {} passed, {} failed",
        cases.len(),
        cases.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        panic!("group {name}: failed cases: {}", failed.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn passes_through_only_what_it_should() {
        for key in ["RUST_LOG", "RUST_BACKTRACE", "NUTSHELL_GUEST_KERNEL"] {
            assert!(passes_through(OsStr::new(key)), "{key}");
        }
        for key in [
            "NUTSHELL_GROUND",
            "NUTSHELL_ON_KVM_HOST",
            "NUTSHELL_GROUND_MODE",
            "HOME",
        ] {
            assert!(!passes_through(OsStr::new(key)), "{key}");
        }
    }
}
