//! Where the cgroup hierarchies are: [`Layout`] from `/proc/self/mountinfo`.

use std::path::{Path, PathBuf};

use super::{cgroup_error, Result, MOUNTINFO};

/// One mount of a cgroup hierarchy: where it is, and which cgroup is its root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMount {
    pub point: PathBuf,
    pub root: PathBuf,
}

impl CgroupMount {
    /// The directory of the cgroup at `path` (in the hierarchy) below this mount.
    pub fn dir_of(&self, path: &Path) -> Result<PathBuf> {
        let below = path.strip_prefix(&self.root).map_err(|_| {
            cgroup_error(
                path,
                format!(
                    "outside the mount at {} (of cgroup {})",
                    self.point.display(),
                    self.root.display()
                ),
            )
        })?;
        if below.as_os_str().is_empty() {
            return Err(cgroup_error(
                path,
                format!("the root of the mount at {}", self.point.display()),
            ));
        }
        Ok(self.point.join(below))
    }
}

/// The hierarchies that hold the memory and cpu controllers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v2: one hierarchy with both.
    Unified(CgroupMount),
    /// cgroup v1 (legacy or hybrid): one hierarchy each (the same one when co-mounted).
    Legacy {
        memory: CgroupMount,
        cpu: CgroupMount,
    },
}

/// Decodes the octal escapes (`\040` for a space) of a mountinfo field.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Layout {
    /// The layout of this host, from [`MOUNTINFO`].
    pub fn detect() -> Result<Layout> {
        let path = Path::new(MOUNTINFO);
        let text = std::fs::read_to_string(path).map_err(|e| cgroup_error(path, e))?;
        Layout::from_mountinfo(&text, |point| {
            std::fs::read_to_string(point.join("cgroup.controllers")).ok()
        })
    }

    /// The layout described by `mountinfo`; `controllers` reads a cgroup2 mount's
    /// `cgroup.controllers`. v2 wins when it has the memory controller (a hybrid host's v2
    /// mount has none of those bound to v1).
    pub fn from_mountinfo(
        mountinfo: &str,
        controllers: impl Fn(&Path) -> Option<String>,
    ) -> Result<Layout> {
        let (mut unified, mut memory, mut cpu) = (None, None, None);
        // A hierarchy mounted more than once: its whole-hierarchy mount is preferred.
        let keep = |slot: &mut Option<CgroupMount>, mount: &CgroupMount| {
            if slot
                .as_ref()
                .is_none_or(|m| m.root != Path::new("/") && mount.root == Path::new("/"))
            {
                *slot = Some(mount.clone());
            }
        };
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(sep) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            if sep < 5 || fields.len() < sep + 4 {
                continue;
            }
            let mount = CgroupMount {
                root: PathBuf::from(unescape(fields[3])),
                point: PathBuf::from(unescape(fields[4])),
            };
            match fields[sep + 1] {
                "cgroup2" => {
                    let has_memory = controllers(&mount.point)
                        .is_some_and(|c| c.split_whitespace().any(|c| c == "memory"));
                    if has_memory {
                        keep(&mut unified, &mount);
                    }
                }
                "cgroup" => {
                    let options: Vec<&str> = fields[sep + 3].split(',').collect();
                    if options.contains(&"memory") {
                        keep(&mut memory, &mount);
                    }
                    if options.contains(&"cpu") {
                        keep(&mut cpu, &mount);
                    }
                }
                _ => {}
            }
        }
        if let Some(mount) = unified {
            let file = mount.point.join("cgroup.controllers");
            let list = controllers(&mount.point).unwrap_or_default();
            if !list.split_whitespace().any(|c| c == "cpu") {
                return Err(cgroup_error(
                    &file,
                    format!("no cpu controller (it lists {:?})", list.trim()),
                ));
            }
            return Ok(Layout::Unified(mount));
        }
        match (memory, cpu) {
            (Some(memory), Some(cpu)) => Ok(Layout::Legacy { memory, cpu }),
            (memory, _) => Err(cgroup_error(
                Path::new(MOUNTINFO),
                format!(
                    "no cgroup2 mount with the memory controller, and no cgroup v1 {} mount",
                    if memory.is_none() { "memory" } else { "cpu" }
                ),
            )),
        }
    }

    pub(super) fn memory(&self) -> &CgroupMount {
        match self {
            Layout::Unified(mount) => mount,
            Layout::Legacy { memory, .. } => memory,
        }
    }

    pub(super) fn cpu(&self) -> &CgroupMount {
        match self {
            Layout::Unified(mount) => mount,
            Layout::Legacy { cpu, .. } => cpu,
        }
    }

    /// Every hierarchy once.
    pub(super) fn mounts(&self) -> Vec<&CgroupMount> {
        let (memory, cpu) = (self.memory(), self.cpu());
        match memory.point == cpu.point {
            true => vec![memory],
            false => vec![memory, cpu],
        }
    }
}
