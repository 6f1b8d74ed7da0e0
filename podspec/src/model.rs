//! The validated, typed pod: what [`crate::validate`] makes of a manifest. Defaults are
//! applied (namespace "default", restartPolicy Always, requests defaulted from limits as the
//! API server does, the pod's runAsUser/runAsGroup inherited by containers), quantities are
//! integers, names are checked. Everything here can be trusted by the conversions.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

/// A validated `v1/Pod`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    /// `metadata.name`, a DNS-1123 subdomain.
    pub name: String,
    /// `metadata.namespace`, "default" when absent.
    pub namespace: String,
    /// `metadata.uid`; the pod name when absent (there is no API server to make one).
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `spec.hostname` as written.
    pub hostname: Option<String>,
    pub share_process_namespace: bool,
    pub host_network: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
    pub restart_policy: RestartPolicy,
    /// `spec.dnsConfig`.
    pub dns: Option<DnsConfig>,
    /// `spec.securityContext.sysctls`, by name.
    pub sysctls: BTreeMap<String, String>,
    pub containers: Vec<Container>,
    pub volumes: Vec<Volume>,
}

impl Pod {
    /// The pod's hostname: `spec.hostname`, else the pod name (as the kubelet: cut to 63
    /// bytes and stripped of trailing '-' and '.').
    pub fn effective_hostname(&self) -> String {
        if let Some(hostname) = &self.hostname {
            return hostname.clone();
        }
        let mut name: &str = &self.name;
        if name.len() > 63 {
            name = &name[..63];
        }
        name.trim_end_matches(['-', '.']).to_string()
    }

    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.name == name)
    }

    pub fn container(&self, name: &str) -> Option<&Container> {
        self.containers.iter().find(|c| c.name == name)
    }
}

/// `spec.restartPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// `spec.dnsConfig`: the pod's resolver settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DnsConfig {
    pub nameservers: Vec<IpAddr>,
    pub searches: Vec<String>,
    /// resolv.conf options: "ndots:5", "edns0".
    pub options: Vec<String>,
}

/// One entry of `spec.containers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// A DNS-1123 label, unique in the pod; also the container id given to the agent.
    pub name: String,
    pub image: String,
    /// Empty when not given (the image's ENTRYPOINT applies).
    pub command: Vec<String>,
    /// Empty when not given (the image's CMD applies, unless `command` is given).
    pub args: Vec<String>,
    /// In manifest order; `$(VAR)` references are expanded at conversion.
    pub env: Vec<EnvVar>,
    pub working_dir: Option<String>,
    pub resources: Resources,
    pub security: SecurityContext,
    pub volume_mounts: Vec<VolumeMount>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// `resources`: requests default to limits, per resource, as the API server defaults them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Resources {
    pub requests: ResourceAmounts,
    pub limits: ResourceAmounts,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceAmounts {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
}

/// A container's `securityContext`, merged with the pod's runAsUser/runAsGroup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub read_only_root_filesystem: bool,
    pub privileged: bool,
    /// Normalised: "ALL" or "CAP_<NAME>", upper case, known to the kernel.
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
}

/// One entry of a container's `volumeMounts`; `volume` names one of the pod's volumes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub volume: String,
    /// Absolute path in the container.
    pub mount_path: String,
    pub read_only: bool,
    /// Relative path inside the volume, without `..`.
    pub sub_path: Option<String>,
}

/// One entry of `spec.volumes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Volume {
    /// A DNS-1123 label, unique in the pod.
    pub name: String,
    pub source: VolumeSource,
}

/// Where a volume's files come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum VolumeSource {
    /// A path on the host machine, shared into the VM.
    HostPath { path: String, kind: HostPathType },
    /// A directory that lives as long as the pod.
    EmptyDir {
        medium: StorageMedium,
        size_limit_bytes: Option<u64>,
    },
    /// nutshell extension: the files of `<config dir>/configmaps/<name>/`.
    ConfigMap { name: String },
    /// nutshell extension: the files of `<config dir>/secrets/<name>/`.
    Secret { name: String },
}

impl VolumeSource {
    /// Volumes the kubelet always mounts read-only (configMap and secret).
    pub fn always_read_only(&self) -> bool {
        matches!(
            self,
            VolumeSource::ConfigMap { .. } | VolumeSource::Secret { .. }
        )
    }
}

/// `hostPath.type`: what must be at the path before the pod starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum HostPathType {
    /// "" (no check).
    #[default]
    Unchecked,
    DirectoryOrCreate,
    Directory,
    FileOrCreate,
    File,
    Socket,
    CharDevice,
    BlockDevice,
}

impl HostPathType {
    pub fn parse(text: &str) -> Option<HostPathType> {
        Some(match text {
            "" => HostPathType::Unchecked,
            "DirectoryOrCreate" => HostPathType::DirectoryOrCreate,
            "Directory" => HostPathType::Directory,
            "FileOrCreate" => HostPathType::FileOrCreate,
            "File" => HostPathType::File,
            "Socket" => HostPathType::Socket,
            "CharDevice" => HostPathType::CharDevice,
            "BlockDevice" => HostPathType::BlockDevice,
            _ => return None,
        })
    }
}

/// `emptyDir.medium`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum StorageMedium {
    /// "": the node's disk (here: wherever the runtime keeps pod scratch space).
    #[default]
    Default,
    /// "Memory": a tmpfs.
    Memory,
}
