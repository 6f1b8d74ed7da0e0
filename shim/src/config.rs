//! The shim's configuration: what a pod VM is made of and where the shim keeps its files.
//!
//! Sources, later ones winning field by field:
//! 1. built-in defaults (the VMM beside the shim binary, the guest files under
//!    `/usr/local/share/nutshell/`, 256 MiB, 1 vCPU, state under `/run/nutshell-shim`);
//! 2. the environment: `NUTSHELL_VMM`, `NUTSHELL_KERNEL`, `NUTSHELL_INITRD`,
//!    `NUTSHELL_SHIM_STATE_DIR` (containerd starts shims with its own environment);
//! 3. a TOML file: the `ConfigPath` of the runtime options (CRI's
//!    `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nutshell.options]`), else
//!    `NUTSHELL_SHIM_CONFIG`, else `/etc/nutshell/shim.toml` when it exists.
//!
//! ```toml
//! vmm = "/usr/local/bin/nutshell-vmm"
//! kernel = "/usr/local/share/nutshell/vmlinux"
//! initrd = "/usr/local/share/nutshell/initramfs.cpio"
//! default_memory_mib = 256
//! default_vcpus = 1
//! state_dir = "/run/nutshell-shim"
//! log_level = "info"
//! host_cgroups = true
//! overhead_memory_mib = 64
//! overhead_millicores = 250
//! ```
//!
//! `host_cgroups`: the VMM of each pod runs in a host cgroup (as Kata's
//! `sandbox_cgroup_only`): the sandbox container's `linux.cgroupsPath` (a cgroupfs path as
//! it is, the systemd form `slice:prefix:name` as `<slice path>/<prefix>-<name>.scope`), else
//! `/nutshell/<namespace>-<sandbox id>`. Its memory limit is the VM's memory plus
//! `overhead_memory_mib`, its cpu quota the VM's vCPUs (a core each) plus
//! `overhead_millicores`, over a 100 ms period; the defaults are
//! [`nutshell_runtime::host_cgroup::DEFAULT_OVERHEAD_MEMORY_MIB`] and
//! [`nutshell_runtime::host_cgroup::DEFAULT_OVERHEAD_MILLICORES`] (why, there).

use std::path::{Path, PathBuf};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{rt::WireType, CodedInputStream};
use nutshell_runtime::host_cgroup::{Limits, Overhead};
use nutshell_runtime::vm::VmSpec;
use serde::Deserialize;

use crate::error::{Result, ShimError};

pub const ENV_VMM: &str = "NUTSHELL_VMM";
pub const ENV_KERNEL: &str = "NUTSHELL_KERNEL";
pub const ENV_INITRD: &str = "NUTSHELL_INITRD";
pub const ENV_STATE_DIR: &str = "NUTSHELL_SHIM_STATE_DIR";
pub const ENV_CONFIG: &str = "NUTSHELL_SHIM_CONFIG";
pub const DEFAULT_CONFIG_FILE: &str = "/etc/nutshell/shim.toml";
pub const DEFAULT_STATE_DIR: &str = "/run/nutshell-shim";
const SHARE_DIR: &str = "/usr/local/share/nutshell";

/// The type of CRI's generic runtime options (`runtimeoptions.v1.Options`).
const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// The settings in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShimConfig {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Guest memory floor; a pod's limits plus overhead raise it.
    pub default_memory_mib: u64,
    /// vCPUs floor; a pod's cpu limits raise it.
    pub default_vcpus: u32,
    /// Pod directories live under `<state_dir>/<namespace>/pods/<sandbox id>`.
    pub state_dir: PathBuf,
    pub log_level: String,
    /// Whether each pod's VMM runs in a host cgroup sized from its VM.
    pub host_cgroups: bool,
    /// What the VMM gets in its host cgroup beyond its VM.
    pub overhead: Overhead,
    /// The file the settings came from, if any.
    pub file: Option<PathBuf>,
}

/// The TOML file; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    vmm: Option<PathBuf>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    default_memory_mib: Option<u64>,
    default_vcpus: Option<u32>,
    state_dir: Option<PathBuf>,
    log_level: Option<String>,
    host_cgroups: Option<bool>,
    overhead_memory_mib: Option<u64>,
    overhead_millicores: Option<u64>,
}

impl ShimConfig {
    /// Defaults, then the environment (`env` looks a variable up).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> ShimConfig {
        let beside_shim = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("nutshell-vmm")))
            .filter(|p| p.is_file());
        let path = |var: &str, default: PathBuf| env(var).map(PathBuf::from).unwrap_or(default);
        ShimConfig {
            vmm: path(
                ENV_VMM,
                beside_shim.unwrap_or_else(|| PathBuf::from("/usr/local/bin/nutshell-vmm")),
            ),
            kernel: path(ENV_KERNEL, Path::new(SHARE_DIR).join("vmlinux")),
            initrd: path(ENV_INITRD, Path::new(SHARE_DIR).join("initramfs.cpio")),
            default_memory_mib: 256,
            default_vcpus: 1,
            state_dir: path(ENV_STATE_DIR, PathBuf::from(DEFAULT_STATE_DIR)),
            log_level: "info".into(),
            host_cgroups: true,
            overhead: Overhead::default(),
            file: None,
        }
    }

    /// The configuration for a pod: the environment, then the file named by the runtime
    /// options (or the environment, or the default file).
    pub fn load(options: Option<&Any>) -> Result<ShimConfig> {
        let config = ShimConfig::from_env(|v| std::env::var(v).ok());
        let from_options = match options {
            Some(any) => config_path_of(any)?,
            None => None,
        };
        let file = from_options
            .or_else(|| std::env::var(ENV_CONFIG).ok().map(PathBuf::from))
            .or_else(|| Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.is_file()));
        match file {
            Some(path) => config.with_file(&path),
            None => Ok(config),
        }
    }

    /// These settings overridden by the TOML file at `path`.
    pub fn with_file(self, path: &Path) -> Result<ShimConfig> {
        let text = std::fs::read_to_string(path).map_err(ShimError::io("read", path))?;
        self.with_toml(&text, path)
    }

    fn with_toml(mut self, text: &str, path: &Path) -> Result<ShimConfig> {
        let bad = |reason: String| ShimError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let file: ConfigFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        if file.default_memory_mib.is_some_and(|m| m < 64) {
            return Err(bad("default_memory_mib must be at least 64".into()));
        }
        if file.default_vcpus.is_some_and(|v| v == 0 || v > 32) {
            return Err(bad("default_vcpus must be 1..=32".into()));
        }
        if file.overhead_memory_mib.is_some_and(|m| m < 16) {
            return Err(bad(
                "overhead_memory_mib must be at least 16 (the VMM's own memory)".into(),
            ));
        }
        self.vmm = file.vmm.unwrap_or(self.vmm);
        self.kernel = file.kernel.unwrap_or(self.kernel);
        self.initrd = file.initrd.unwrap_or(self.initrd);
        self.default_memory_mib = file.default_memory_mib.unwrap_or(self.default_memory_mib);
        self.default_vcpus = file.default_vcpus.unwrap_or(self.default_vcpus);
        self.state_dir = file.state_dir.unwrap_or(self.state_dir);
        self.log_level = file.log_level.unwrap_or(self.log_level);
        self.host_cgroups = file.host_cgroups.unwrap_or(self.host_cgroups);
        self.overhead.memory_mib = file.overhead_memory_mib.unwrap_or(self.overhead.memory_mib);
        self.overhead.millicores = file.overhead_millicores.unwrap_or(self.overhead.millicores);
        self.file = Some(path.to_path_buf());
        Ok(self)
    }

    /// The VM of a pod whose containers ask for `memory_limit` bytes and `cpu_millis`.
    pub fn vm_spec(&self, memory_limit: u64, cpu_millis: u64) -> VmSpec {
        VmSpec {
            vmm: self.vmm.clone(),
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            mem_mib: nutshell_runtime::vm::size_memory(memory_limit, self.default_memory_mib),
            vcpus: nutshell_runtime::vm::size_vcpus(cpu_millis).max(self.default_vcpus),
            cpu_limit_millicores: cpu_millis,
        }
    }

    /// The host cgroup limits of a VMM running `vm`.
    pub fn host_limits(&self, vm: &VmSpec) -> Limits {
        vm.host_limits(self.overhead)
    }
}

/// `ConfigPath` of runtime options, decoded by hand: `runtimeoptions.v1.Options` is
/// `{ string type_url = 1; string config_path = 2; }`. Other option types carry none.
pub fn config_path_of(any: &Any) -> Result<Option<PathBuf>> {
    if !any.type_url.ends_with(RUNTIME_OPTIONS_TYPE) {
        return Ok(None);
    }
    let bad = |reason: String| ShimError::InvalidArgument(format!("runtime options: {reason}"));
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut path = None;
    while let Some(tag) = input
        .read_raw_tag_or_eof()
        .map_err(|e| bad(e.to_string()))?
    {
        let wire = WireType::new(tag & 7).ok_or_else(|| bad(format!("bad wire type in {tag}")))?;
        if tag >> 3 == 2 && wire == WireType::LengthDelimited {
            path = Some(input.read_string().map_err(|e| bad(e.to_string()))?);
        } else {
            input.skip_field(wire).map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn env_then_file_override_defaults() {
        let config =
            ShimConfig::from_env(env_of(&[(ENV_KERNEL, "/k/vmlinux"), (ENV_VMM, "/bin/vmm")]));
        assert_eq!(config.kernel, Path::new("/k/vmlinux"));
        assert_eq!(config.vmm, Path::new("/bin/vmm"));
        assert_eq!(
            config.initrd,
            Path::new("/usr/local/share/nutshell/initramfs.cpio")
        );
        let config = config
            .with_toml(
                "kernel = \"/other/vmlinux\"\ndefault_memory_mib = 512\n",
                Path::new("/c.toml"),
            )
            .unwrap();
        assert_eq!(config.kernel, Path::new("/other/vmlinux"));
        assert_eq!(config.vmm, Path::new("/bin/vmm"));
        assert_eq!(config.default_memory_mib, 512);
        assert_eq!(config.file.as_deref(), Some(Path::new("/c.toml")));
        let spec = config.vm_spec(1 << 30, 1500);
        assert_eq!((spec.mem_mib, spec.vcpus), (1024 + 96, 2));
        assert!(config.host_cgroups);
        assert_eq!(config.overhead, Overhead::default());
    }

    #[test]
    fn host_cgroups_are_configured() {
        let config = ShimConfig::from_env(|_| None)
            .with_toml(
                "host_cgroups = false\noverhead_memory_mib = 32\noverhead_millicores = 100\n",
                Path::new("/c.toml"),
            )
            .unwrap();
        assert!(!config.host_cgroups);
        let limits = config.host_limits(&config.vm_spec(0, 0));
        assert_eq!(limits.memory_bytes, (256 + 32) << 20);
        assert_eq!(limits.cpu_quota_us, u64::MAX, "no cpu limit, no quota");
        let limits = config.host_limits(&config.vm_spec(0, 500));
        assert_eq!(limits.cpu_quota_us, 110_000);
        let err = ShimConfig::from_env(|_| None)
            .with_toml("overhead_memory_mib = 1", Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("overhead_memory_mib"), "{err}");
    }

    #[test]
    fn bad_files_are_named() {
        let config = ShimConfig::from_env(|_| None);
        let err = config
            .clone()
            .with_toml("kernal = \"/x\"", Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/c.toml") && err.contains("kernal"), "{err}");
        let err = config
            .with_toml("default_vcpus = 0", Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("default_vcpus"), "{err}");
    }

    #[test]
    fn config_path_comes_from_runtime_options() {
        // type_url = "x" (field 1), config_path = "/etc/n.toml" (field 2).
        let mut value = vec![0x0a, 1, b'x', 0x12, 11];
        value.extend_from_slice(b"/etc/n.toml");
        let mut any = Any::new();
        any.type_url = "runtimeoptions.v1.Options".into();
        any.value = value;
        assert_eq!(
            config_path_of(&any).unwrap(),
            Some(PathBuf::from("/etc/n.toml"))
        );
        any.type_url = "containerd.runc.v1.Options".into();
        assert_eq!(config_path_of(&any).unwrap(), None);
        any.type_url = "runtimeoptions.v1.Options".into();
        any.value = vec![0x12, 50, b'/'];
        assert!(config_path_of(&any).is_err());
    }
}
