//! The host cgroup of a pod's VMM (as Kata's `sandbox_cgroup_only`): the whole VMM process,
//! its guest memory and every vCPU thread, is charged to one host cgroup sized from the pod,
//! so a pod takes no more of the host than its VM was given, and the host's accounting (the
//! kubelet's pod cgroup, `systemd-cgtop`) sees it.
//!
//! * A cgroup is planned from its path in the hierarchy (`/kubepods/pod1/<sandbox>`,
//!   `/nutshell/<pod>`; [`from_oci`] turns an OCI `linux.cgroupsPath` into one) and its
//!   [`Limits`] ([`Limits::for_vm`]: the VM's memory and vCPUs plus the VMM's [`Overhead`]).
//! * [`HostCgroup::create`] finds the hierarchies in `/proc/self/mountinfo` ([`Layout`]):
//!   cgroup v2 when a `cgroup2` mount has the memory controller (then `memory.max` and
//!   `cpu.max`, the controllers enabled in every parent's `cgroup.subtree_control`), else the
//!   v1 `memory` and `cpu` mounts of a legacy or hybrid host (`memory.limit_in_bytes`,
//!   `cpu.cfs_period_us`, `cpu.cfs_quota_us`). It makes the missing directories, remembering
//!   which, and writes the limits; a failure removes what it made.
//! * [`HostCgroup::join_on_exec`] moves a child into the cgroup between fork and exec, so
//!   nothing the child does is charged elsewhere.
//! * [`HostCgroup::remove`], once the VMM is gone, removes the directories it made, deepest
//!   first. A process without the object (the shim's cleanup after a dead shim, `nutshell
//!   stop` after a dead supervisor) uses the [`Record`] saved beside the pod's files
//!   ([`remove_recorded`]).
//!
//! Directories named `nutshell*` above the leaf are nutshell's own: removal also takes them
//! when they are empty, whoever made them, so pods started side by side under `/nutshell`
//! leave nothing behind. The leaf is the pod's own: when it already exists without processes
//! (the leftover of a crash) it is adopted, with processes it is refused.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::RuntimeError;

mod layout;
pub use layout::{CgroupMount, Layout};

/// Memory for the VMM beyond the guest's: its own RSS is about 3 MiB, and it also pays for
/// the virtio-fs device's request buffers, the vCPU threads' stacks, KVM's page tables and
/// per-vCPU state (charged to the process that made them) and the page cache of the files it
/// reads for the guest (reclaimable: a limit evicts it rather than killing the VMM). 64 MiB
/// is 20 times what it uses at rest, small next to any guest.
pub const DEFAULT_OVERHEAD_MEMORY_MIB: u64 = 64;
/// CPU for the VMM beyond one core per vCPU: its event loop (virtio-fs, vsock, serial), which
/// serves the guest's I/O while the vCPUs run; a quarter core keeps a busy guest's file I/O
/// from stalling on the quota without handing the pod a core it did not ask for.
pub const DEFAULT_OVERHEAD_MILLICORES: u64 = 250;
/// The CFS period of the cpu limit (100 ms, the kernel's and the kubelet's default).
pub const CPU_PERIOD_US: u64 = 100_000;
/// The file in a pod directory that records its host cgroup ([`Record`]).
pub const RECORD_FILE: &str = "host-cgroup.json";
/// Where the mounts are listed.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";
/// How long removal waits for a leaf whose last process is still exiting (EBUSY): a VMM
/// killed by another process (`nutshell stop`) may still be freeing its guest memory, slowly
/// on a nested host.
const RMDIR_GRACE: Duration = Duration::from_secs(10);
/// How often creation starts over when a parent vanished under it (another pod removed it).
const CREATE_RETRIES: u32 = 5;

type Result<T> = std::result::Result<T, RuntimeError>;

fn cgroup_error(file: &Path, problem: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::HostCgroup {
        file: file.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// What the VMM needs on top of its VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overhead {
    pub memory_mib: u64,
    pub millicores: u64,
}

impl Default for Overhead {
    fn default() -> Overhead {
        Overhead {
            memory_mib: DEFAULT_OVERHEAD_MEMORY_MIB,
            millicores: DEFAULT_OVERHEAD_MILLICORES,
        }
    }
}

/// A host cgroup's limits; `u64::MAX` reads back as unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub cpu_quota_us: u64,
    pub cpu_period_us: u64,
}

impl Limits {
    /// The limits of a VMM running a VM of `mem_mib` and `vcpus`: the guest's memory plus the
    /// overhead, one core per vCPU plus the overhead, over a 100 ms period.
    pub fn for_vm(mem_mib: u64, vcpus: u32, overhead: Overhead) -> Limits {
        let millicores = u64::from(vcpus)
            .saturating_mul(1000)
            .saturating_add(overhead.millicores);
        Limits {
            memory_bytes: mem_mib
                .saturating_add(overhead.memory_mib)
                .saturating_mul(1 << 20),
            cpu_quota_us: millicores.saturating_mul(CPU_PERIOD_US) / 1000,
            cpu_period_us: CPU_PERIOD_US,
        }
    }
}

impl Limits {
    /// The same without a cpu quota (`max`, `-1` on cgroup v1).
    pub fn without_cpu_quota(self) -> Limits {
        Limits {
            cpu_quota_us: u64::MAX,
            ..self
        }
    }
}

/// How a cpu quota is written: `max` (v2) / `-1` (v1) for none.
fn quota_text(quota: u64, unlimited: &str) -> String {
    if quota == u64::MAX {
        unlimited.to_string()
    } else {
        quota.to_string()
    }
}

/// Checks a cgroup path: absolute, below the root, with no empty, `.` or `..` names.
pub fn validate_path(path: &Path) -> Result<PathBuf> {
    let bad = |problem: &str| cgroup_error(path, problem);
    let text = path.to_str().ok_or_else(|| bad("the path is not UTF-8"))?;
    let rest = text
        .strip_prefix('/')
        .ok_or_else(|| bad("not an absolute path (it starts below the hierarchy's root)"))?;
    if rest.is_empty() {
        return Err(bad("the hierarchy's root is no cgroup of a pod's own"));
    }
    for name in rest.split('/') {
        let problem = match name {
            "" => "an empty name (a doubled or trailing `/`)",
            "." | ".." => "a `.` or `..` name",
            n if n.len() > 255 => "a name longer than 255 bytes",
            n if n.chars().any(char::is_control) => "a control character",
            _ => continue,
        };
        return Err(bad(&format!("the path has {problem}")));
    }
    Ok(PathBuf::from(text))
}

/// A systemd slice as its path in the hierarchy: `a-b.slice` is `/a.slice/a-b.slice`, the
/// root slice `-.slice` is `/` (as runc's `ExpandSlice`).
pub fn expand_slice(slice: &str) -> Result<String> {
    let bad = |problem: &str| cgroup_error(Path::new(slice), problem);
    let name = slice
        .strip_suffix(".slice")
        .ok_or_else(|| bad("a systemd slice's name ends with .slice"))?;
    if slice.contains('/') {
        return Err(bad("a systemd slice's name has no `/`"));
    }
    if name == "-" {
        return Ok("/".into());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if part.is_empty() {
            return Err(bad(
                "a systemd slice's name has no empty part (`--`, `-` at an end)",
            ));
        }
        path.push_str(&format!("/{prefix}{part}.slice"));
        prefix.push_str(part);
        prefix.push('-');
    }
    Ok(path)
}

/// An OCI `linux.cgroupsPath` as a path in the hierarchy: the systemd form
/// `slice:prefix:name` is `<slice expanded>/<prefix>-<name>.scope` (the slice
/// `system.slice` when empty); a cgroupfs path is itself, a relative one taken from the root
/// (where runc would take it from its own cgroup: a shim is no pod's process).
pub fn from_oci(cgroups_path: &str) -> Result<PathBuf> {
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    if let [slice, prefix, name] = parts[..] {
        if name.is_empty() {
            return Err(cgroup_error(
                Path::new(cgroups_path),
                "the systemd form slice:prefix:name has no name",
            ));
        }
        let path = if name.ends_with(".slice") {
            expand_slice(name)?
        } else {
            let slice = if slice.is_empty() {
                "system.slice"
            } else {
                slice
            };
            let unit = match prefix {
                "" => format!("{name}.scope"),
                _ => format!("{prefix}-{name}.scope"),
            };
            format!("{}/{unit}", expand_slice(slice)?.trim_end_matches('/'))
        };
        return validate_path(Path::new(&path));
    }
    let trimmed = cgroups_path.trim_end_matches('/');
    match trimmed.starts_with('/') {
        true => validate_path(Path::new(trimmed)),
        false => validate_path(Path::new(&format!("/{trimmed}"))),
    }
}

/// One step of making a cgroup; every step can be done again.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// A parent directory (kept when it exists).
    Dir(PathBuf),
    /// The cgroup's own directory in one hierarchy (adopted when it exists unused).
    Leaf(PathBuf),
    /// Controllers enabled for a directory's children (v2).
    Enable(PathBuf, &'static [&'static str]),
    /// A value written into a control file.
    Write(PathBuf, String),
}

/// What making the cgroup at `path` with `limits` takes under `layout`.
fn steps(path: &Path, limits: Limits, layout: &Layout) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    for mount in layout.mounts() {
        let leaf = mount.dir_of(path)?;
        let below = leaf
            .strip_prefix(&mount.point)
            .expect("dir_of joins the mount point");
        let names: Vec<_> = below.components().collect();
        let mut dir = mount.point.clone();
        for (i, name) in names.iter().enumerate() {
            if matches!(layout, Layout::Unified(_)) {
                steps.push(Step::Enable(dir.clone(), &["memory", "cpu"]));
            }
            dir.push(name);
            steps.push(match i + 1 == names.len() {
                true => Step::Leaf(dir.clone()),
                false => Step::Dir(dir.clone()),
            });
        }
    }
    let memory = layout.memory().dir_of(path)?;
    let cpu = layout.cpu().dir_of(path)?;
    let (quota, period) = (limits.cpu_quota_us, limits.cpu_period_us);
    match layout {
        Layout::Unified(_) => {
            steps.push(Step::Write(
                memory.join("memory.max"),
                limits.memory_bytes.to_string(),
            ));
            steps.push(Step::Write(
                cpu.join("cpu.max"),
                format!("{} {period}", quota_text(quota, "max")),
            ));
        }
        Layout::Legacy { .. } => {
            steps.push(Step::Write(
                memory.join("memory.limit_in_bytes"),
                limits.memory_bytes.to_string(),
            ));
            steps.push(Step::Write(
                cpu.join("cpu.cfs_period_us"),
                period.to_string(),
            ));
            steps.push(Step::Write(
                cpu.join("cpu.cfs_quota_us"),
                quota_text(quota, "-1"),
            ));
        }
    }
    Ok(steps)
}

/// A step's failure; `gone` when a directory vanished under it (creation starts over).
struct StepError {
    gone: bool,
    error: RuntimeError,
}

fn fatal(file: &Path, problem: impl std::fmt::Display) -> StepError {
    StepError {
        gone: false,
        error: cgroup_error(file, problem),
    }
}

fn io_failure(file: &Path, what: &str, e: std::io::Error) -> StepError {
    StepError {
        gone: e.kind() == std::io::ErrorKind::NotFound,
        error: cgroup_error(file, format!("cannot {what}: {e}")),
    }
}

fn read_file(file: &Path) -> std::result::Result<String, StepError> {
    std::fs::read_to_string(file).map_err(|e| io_failure(file, "read", e))
}

fn write_file(file: &Path, value: &str) -> std::result::Result<(), StepError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .map_err(|e| io_failure(file, "open", e))?;
    f.write_all(value.as_bytes())
        .map_err(|e| io_failure(file, &format!("write {value:?}"), e))
}

fn run_step(step: &Step, created: &mut Vec<PathBuf>) -> std::result::Result<(), StepError> {
    match step {
        Step::Dir(dir) | Step::Leaf(dir) => match std::fs::create_dir(dir) {
            Ok(()) => created.push(dir.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if matches!(step, Step::Leaf(_)) && !created.contains(dir) {
                    let procs = read_file(&dir.join("cgroup.procs"))?;
                    let pids: Vec<&str> = procs.split_whitespace().collect();
                    if !pids.is_empty() {
                        return Err(fatal(
                            dir,
                            format!("exists with processes in it (pids {})", pids.join(" ")),
                        ));
                    }
                    created.push(dir.clone());
                }
            }
            Err(e) => return Err(io_failure(dir, "create the directory", e)),
        },
        Step::Enable(dir, controllers) => {
            let file = dir.join("cgroup.subtree_control");
            let enabled = read_file(&file)?;
            let missing: Vec<String> = controllers
                .iter()
                .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
                .map(|c| format!("+{c}"))
                .collect();
            if !missing.is_empty() {
                write_file(&file, &missing.join(" "))?;
            }
        }
        Step::Write(file, value) => write_file(file, value)?,
    }
    Ok(())
}

/// Whether `dir` is on a cgroup file system (v1 or v2).
fn is_cgroup_dir(dir: &Path) -> std::io::Result<bool> {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};
    let fs = statfs(dir).map_err(std::io::Error::from)?;
    Ok([CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC].contains(&fs.filesystem_type()))
}

/// Removes `created` (made by a [`HostCgroup`]; `leaves` among them are the cgroup's own
/// directories) and the empty `nutshell*` directories right above the leaves, deepest
/// first. A leaf still busy is waited for a moment; a busy parent holds other cgroups and
/// stays. Returns what it could not remove.
fn remove_dirs(leaves: &[PathBuf], created: &[PathBuf]) -> Vec<String> {
    let mut dirs: Vec<PathBuf> = created.to_vec();
    for leaf in leaves.iter().filter(|l| created.contains(l)) {
        let mut dir = leaf.as_path();
        while let Some(parent) = dir.parent() {
            let ours = parent
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("nutshell"));
            if !ours || !is_cgroup_dir(parent).unwrap_or(false) {
                break;
            }
            dirs.push(parent.to_path_buf());
            dir = parent;
        }
    }
    dirs.sort_by(|a, b| {
        let depth = |d: &PathBuf| d.components().count();
        depth(b).cmp(&depth(a)).then_with(|| a.cmp(b))
    });
    dirs.dedup();
    let mut problems = Vec::new();
    for dir in dirs {
        match is_cgroup_dir(&dir) {
            Ok(true) => {}
            Ok(false) => {
                problems.push(format!(
                    "host cgroup {}: not a cgroup directory, left alone",
                    dir.display()
                ));
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                problems.push(format!("host cgroup {}: {e}", dir.display()));
                continue;
            }
        }
        let leaf = leaves.contains(&dir);
        let deadline = Instant::now() + RMDIR_GRACE;
        loop {
            match std::fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && leaf => {
                    if Instant::now() >= deadline {
                        problems.push(format!(
                            "host cgroup {}: cannot remove: {e} (processes: {})",
                            dir.display(),
                            std::fs::read_to_string(dir.join("cgroup.procs"))
                                .unwrap_or_default()
                                .split_whitespace()
                                .collect::<Vec<_>>()
                                .join(" ")
                        ));
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e)
                    if !leaf && matches!(e.raw_os_error(), Some(libc::EBUSY | libc::ENOTEMPTY)) =>
                {
                    break
                }
                Err(e) => {
                    problems.push(format!("host cgroup {}: cannot remove: {e}", dir.display()));
                    break;
                }
            }
        }
    }
    problems
}

/// What a [`HostCgroup`] made, saved so that another process can remove it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The cgroup's path in the hierarchy.
    pub path: PathBuf,
    /// Its directory in each hierarchy.
    pub leaves: Vec<PathBuf>,
    /// The directories it made, shallowest first.
    pub created: Vec<PathBuf>,
}

impl Record {
    pub fn save(&self, file: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).expect("serializes");
        std::fs::write(file, text).map_err(RuntimeError::io("write", file))
    }

    /// The record in `file`; `None` when there is none.
    pub fn load(file: &Path) -> Result<Option<Record>> {
        let text = match std::fs::read(file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RuntimeError::io("read", file)(e)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| RuntimeError::State {
                path: file.to_path_buf(),
                reason: e.to_string(),
            })
    }
}

/// Removes the cgroup recorded in `file` (by a process that is gone), then the file. Nothing
/// to do without the file. Returns what it could not do.
pub fn remove_recorded(file: &Path) -> Vec<String> {
    let record = match Record::load(file) {
        Ok(Some(record)) => record,
        Ok(None) => return Vec::new(),
        Err(e) => return vec![e.to_string()],
    };
    let problems = remove_dirs(&record.leaves, &record.created);
    if problems.is_empty() {
        if let Err(e) = std::fs::remove_file(file) {
            return vec![format!("cannot remove {}: {e}", file.display())];
        }
    }
    problems
}

/// A pod VMM's host cgroup: planned, then created, joined by the VMM and removed.
#[derive(Debug)]
pub struct HostCgroup {
    path: PathBuf,
    limits: Limits,
    /// Set by [`HostCgroup::create`].
    layout: Option<Layout>,
    leaves: Vec<PathBuf>,
    created: Vec<PathBuf>,
}

impl HostCgroup {
    /// The cgroup at `path` in the hierarchy (checked by [`validate_path`]) with `limits`.
    pub fn plan(path: &Path, limits: Limits) -> Result<HostCgroup> {
        Ok(HostCgroup {
            path: validate_path(path)?,
            limits,
            layout: None,
            leaves: Vec::new(),
            created: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Makes the cgroup in this host's hierarchies and writes its limits.
    pub fn create(&mut self) -> Result<()> {
        self.create_in(Layout::detect()?)
    }

    /// Makes the cgroup under `layout` and writes its limits; on failure, removes what it made.
    pub fn create_in(&mut self, layout: Layout) -> Result<()> {
        let steps = steps(&self.path, self.limits, &layout)?;
        self.leaves = steps
            .iter()
            .filter_map(|s| match s {
                Step::Leaf(dir) => Some(dir.clone()),
                _ => None,
            })
            .collect();
        self.layout = Some(layout);
        let mut restarts = 0;
        let failure = 'again: loop {
            for step in &steps {
                match run_step(step, &mut self.created) {
                    Ok(()) => {}
                    Err(e) if e.gone && restarts < CREATE_RETRIES => {
                        restarts += 1;
                        continue 'again;
                    }
                    Err(e) => break 'again e.error,
                }
            }
            return Ok(());
        };
        for problem in self.remove() {
            log::warn!("{problem}");
        }
        self.created.clear();
        Err(failure)
    }

    /// What was made, for [`remove_recorded`].
    pub fn record(&self) -> Record {
        Record {
            path: self.path.clone(),
            leaves: self.leaves.clone(),
            created: self.created.clone(),
        }
    }

    /// Saves [`HostCgroup::record`] in `file`.
    pub fn save_record(&self, file: &Path) -> Result<()> {
        self.record().save(file)
    }

    /// [`HostCgroup::create`], then [`HostCgroup::save_record`] in `file`, so that
    /// [`remove_recorded`] finds it from any process; nothing is left when either fails.
    pub fn create_recorded(&mut self, file: &Path) -> Result<()> {
        self.create()?;
        if let Err(e) = self.save_record(file) {
            for problem in self.remove() {
                log::warn!("{problem}");
            }
            self.created.clear();
            return Err(e);
        }
        Ok(())
    }

    fn created_layout(&self) -> Result<&Layout> {
        self.layout
            .as_ref()
            .ok_or_else(|| cgroup_error(&self.path, "not created yet"))
    }

    /// Makes `cmd`'s child move itself into the cgroup between fork and exec, so everything
    /// it runs and allocates, every thread it starts, is charged here. The `cgroup.procs` files
    /// are opened now, so a failure names its file; the child only writes "0" (itself, in v1
    /// and v2) into each.
    pub fn join_on_exec(&self, cmd: &mut Command) -> Result<()> {
        self.created_layout()?;
        let mut files: Vec<OwnedFd> = Vec::new();
        for leaf in &self.leaves {
            let file = leaf.join("cgroup.procs");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .map_err(|e| cgroup_error(&file, format!("cannot open: {e}")))?;
            files.push(f.into());
        }
        // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe
        // calls are allowed: it calls write(2) on descriptors opened above (close-on-exec, so
        // the VMM does not keep them) and reads errno on failure; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                for f in &files {
                    if libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// The processes in the cgroup (from its memory hierarchy).
    pub fn pids(&self) -> Result<Vec<i32>> {
        let file = self
            .created_layout()?
            .memory()
            .dir_of(&self.path)?
            .join("cgroup.procs");
        let text = read_file(&file).map_err(|e| e.error)?;
        Ok(text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }

    /// The limits as the kernel holds them.
    pub fn read_limits(&self) -> Result<Limits> {
        let layout = self.created_layout()?;
        let memory = layout.memory().dir_of(&self.path)?;
        let cpu = layout.cpu().dir_of(&self.path)?;
        let read = |file: PathBuf| -> Result<String> {
            Ok(read_file(&file).map_err(|e| e.error)?.trim().to_string())
        };
        let number = |file: &Path, text: &str| -> Result<u64> {
            match text {
                "max" | "-1" => Ok(u64::MAX),
                _ => text
                    .parse()
                    .map_err(|_| cgroup_error(file, format!("not a number: {text:?}"))),
            }
        };
        match layout {
            Layout::Unified(_) => {
                let file = memory.join("memory.max");
                let memory_bytes = number(&file, &read(file.clone())?)?;
                let file = cpu.join("cpu.max");
                let text = read(file.clone())?;
                let (quota, period) = text.split_once(' ').unwrap_or((&text, ""));
                Ok(Limits {
                    memory_bytes,
                    cpu_quota_us: number(&file, quota)?,
                    cpu_period_us: number(&file, period)?,
                })
            }
            Layout::Legacy { .. } => {
                let [memory, quota, period] = [
                    memory.join("memory.limit_in_bytes"),
                    cpu.join("cpu.cfs_quota_us"),
                    cpu.join("cpu.cfs_period_us"),
                ];
                Ok(Limits {
                    memory_bytes: number(&memory, &read(memory.clone())?)?,
                    cpu_quota_us: number(&quota, &read(quota.clone())?)?,
                    cpu_period_us: number(&period, &read(period.clone())?)?,
                })
            }
        }
    }

    /// Removes the directories [`HostCgroup::create`] made, once no process is left in the
    /// cgroup (after the VMM's end). Can be called again. Returns what it could not remove.
    pub fn remove(&self) -> Vec<String> {
        remove_dirs(&self.leaves, &self.created)
    }
}

#[cfg(test)]
mod tests;
