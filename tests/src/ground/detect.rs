//! Can this machine's /dev/kvm boot a stock Linux guest? If not, the ground nests an L1 under TCG.

use std::fmt;
use std::path::Path;

use kvm_ioctls::Kvm;

use super::GroundError;

/// The environment variable that overrides detection: `direct` or `nested`.
pub const MODE_ENV: &str = "NUTSHELL_GROUND";

/// Where a ground command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// On this machine, whose /dev/kvm has real VT-x/SVM behind it.
    Direct,
    /// Inside an L1 Linux booted under QEMU TCG (`-cpu max` emulates SVM), whose /dev/kvm works.
    Nested,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Direct => "direct",
            Mode::Nested => "nested",
        })
    }
}

impl Mode {
    /// Parses `direct` or `nested`, as `NUTSHELL_GROUND` and the CLI take them.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "direct" => Some(Mode::Direct),
            "nested" => Some(Mode::Nested),
            _ => None,
        }
    }
}

/// The mode a run takes, and why.
#[derive(Clone, Debug)]
pub struct Detection {
    pub mode: Mode,
    pub reason: String,
    /// Set when `mode` is `Nested` because the host's /dev/kvm is unusable (not by request): why.
    pub direct_unusable: Option<String>,
}

/// Decides the mode: `requested` (the caller's choice) wins, then `NUTSHELL_GROUND`, then the probe.
pub fn detect(requested: Option<Mode>) -> Result<Detection, GroundError> {
    if let Some(mode) = requested {
        return Ok(Detection {
            mode,
            reason: "requested by the caller".into(),
            direct_unusable: None,
        });
    }
    if let Ok(value) = std::env::var(MODE_ENV) {
        if !value.is_empty() {
            let mode = Mode::parse(&value).ok_or(GroundError::InvalidMode {
                variable: MODE_ENV,
                value: value.clone(),
            })?;
            return Ok(Detection {
                mode,
                reason: format!("{MODE_ENV}={value}"),
                direct_unusable: None,
            });
        }
    }
    Ok(match direct_unusable() {
        None => Detection {
            mode: Mode::Direct,
            reason: "/dev/kvm is backed by hardware virtualization".into(),
            direct_unusable: None,
        },
        Some(why) => Detection {
            mode: Mode::Nested,
            reason: why.clone(),
            direct_unusable: Some(why),
        },
    })
}

/// Why the host's /dev/kvm cannot boot a stock Linux guest, or `None` where it can.
pub fn direct_unusable() -> Option<String> {
    if !Path::new("/dev/kvm").exists() {
        return Some("/dev/kvm does not exist".into());
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Some(
            "/dev/kvm is kvm_pvm (/sys/module/kvm_pvm), a software hypervisor that cannot boot a \
             stock Linux guest"
                .into(),
        );
    }
    match std::fs::read_to_string("/proc/cpuinfo") {
        Ok(cpuinfo) => {
            let hardware = cpuinfo
                .lines()
                .filter(|l| l.starts_with("flags"))
                .flat_map(|l| l.split_whitespace())
                .any(|flag| flag == "vmx" || flag == "svm");
            if !hardware {
                return Some("/proc/cpuinfo lists neither the vmx nor the svm flag".into());
            }
        }
        Err(e) => return Some(format!("cannot read /proc/cpuinfo: {e}")),
    }
    match Kvm::new() {
        Ok(kvm) if kvm.get_api_version() == 12 => None,
        Ok(kvm) => Some(format!(
            "/dev/kvm reports API version {}, not 12",
            kvm.get_api_version()
        )),
        Err(e) => Some(format!("cannot open /dev/kvm: {e}")),
    }
}

/// The host's TSC frequency in kHz, from the first `cpu MHz` line of /proc/cpuinfo. L1 needs it as
/// `tsc_early_khz=`: calibrating the TSC under TCG fails about one boot in ten otherwise.
pub fn host_tsc_khz() -> Result<u64, GroundError> {
    let path = Path::new("/proc/cpuinfo");
    let problem = |problem: String| GroundError::TscFrequency {
        path: path.to_owned(),
        problem,
    };
    let cpuinfo = std::fs::read_to_string(path).map_err(|e| problem(e.to_string()))?;
    let line = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .ok_or_else(|| problem("no 'cpu MHz' line".into()))?;
    let value = line.split(':').nth(1).unwrap_or("").trim();
    let mhz: f64 = value
        .parse()
        .map_err(|_| problem(format!("'cpu MHz' value {value:?} is not a number")))?;
    if !(1.0..1_000_000.0).contains(&mhz) {
        return Err(problem(format!("'cpu MHz' value {mhz} is implausible")));
    }
    Ok((mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes() {
        assert_eq!(Mode::parse("direct"), Some(Mode::Direct));
        assert_eq!(Mode::parse("nested"), Some(Mode::Nested));
        assert_eq!(Mode::parse("Nested"), None);
        assert_eq!(Mode::Nested.to_string(), "nested");
    }

    #[test]
    fn reads_the_host_tsc() {
        let khz = host_tsc_khz().expect("this host's /proc/cpuinfo has cpu MHz");
        assert!(khz > 100_000, "{khz} kHz");
    }

    #[test]
    fn requested_mode_wins() {
        let d = detect(Some(Mode::Direct)).unwrap();
        assert_eq!(d.mode, Mode::Direct);
        assert!(d.direct_unusable.is_none());
    }
}
