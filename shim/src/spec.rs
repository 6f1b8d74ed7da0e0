//! What a container is to the pod (from the CRI annotations containerd writes into its spec),
//! and its OCI spec rewritten for the guest agent.
//!
//! The rewrite, for a spec written for runc on the host:
//! * `linux.namespaces`: a network, ipc, uts or pid entry whose path is a host namespace file
//!   (`/proc/<pid>/ns/<kind>`: CRI points app containers at the sandbox's task, whose pid is
//!   this shim's) becomes `"pod"`, pause's namespace in the guest; a sandbox's CNI netns
//!   (`/var/run/netns/...`) becomes pause's own (no networking yet: loopback only); a mount or
//!   cgroup path is dropped (always the container's own); any other path is refused.
//! * `mounts`: a bind of a host file or directory is bound into the share
//!   ([`HostBind`], read-only there when the mount is) and its source becomes that guest path;
//!   an app container's `/dev/shm` bind of the sandbox's shm becomes a tmpfs of its own (the
//!   agent has no pod-wide shm; SysV shm and mqueues are shared through the ipc namespace).
//! * dropped: `hooks` (they would run on the host), `linux.cgroupsPath` (the agent places the
//!   container in its pod cgroup; the first container's names the VMM's host cgroup,
//!   [`host_cgroup_path`]), `linux.devices` (host device nodes), AppArmor and SELinux
//!   labels (the guest has neither).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nutshell_protocol::agent::{CreateSandboxRequest, NamespaceMode, NamespaceOptions};
use nutshell_runtime::host_cgroup;
use nutshell_runtime::pod_dirs::PodDirs;
use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use crate::error::{Result, ShimError};

pub const ANN_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANN_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const ANN_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const ANN_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const ANN_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
pub const ANN_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
pub const ANN_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const ANN_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// What a container is to its pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// No CRI annotations (`ctr run`): the container is a pod of its own; it boots the VM.
    Standalone,
    /// A CRI sandbox (pause) container: it boots the VM and the agent's sandbox; its task is
    /// pause.
    Sandbox { sandbox_id: String },
    /// A CRI app container of the sandbox `sandbox_id`, in that sandbox's VM.
    Container { sandbox_id: String },
}

impl Role {
    pub fn of(spec: &Spec, id: &str) -> Role {
        let ann = annotations(spec);
        let sandbox_id = ann.get(ANN_SANDBOX_ID).cloned();
        match (ann.get(ANN_CONTAINER_TYPE).map(String::as_str), sandbox_id) {
            (Some("sandbox"), _) => Role::Sandbox {
                sandbox_id: id.to_string(),
            },
            (Some("container"), Some(sandbox_id)) if sandbox_id != id => {
                Role::Container { sandbox_id }
            }
            _ => Role::Standalone,
        }
    }

    /// The pod (and shim, and VM) the container belongs to.
    pub fn pod_id<'a>(&'a self, id: &'a str) -> &'a str {
        match self {
            Role::Standalone => id,
            Role::Sandbox { sandbox_id } | Role::Container { sandbox_id } => sandbox_id,
        }
    }

    /// Whether the container boots the VM (and its delete takes the VM down).
    pub fn owns_pod(&self) -> bool {
        !matches!(self, Role::Container { .. })
    }
}

fn annotations(spec: &Spec) -> HashMap<String, String> {
    spec.annotations().clone().unwrap_or_default()
}

/// Reads `<bundle>/config.json`.
pub fn load(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(ShimError::io("read", &path))?;
    serde_json::from_slice(&text).map_err(|e| ShimError::Spec {
        path,
        reason: e.to_string(),
    })
}

/// A host path that a container mounts, to be bound into the share at
/// [`PodDirs::container_mount`]`(container, index)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostBind {
    pub index: usize,
    pub source: PathBuf,
    pub read_only: bool,
}

/// The spec for the agent, and the host binds it needs in the share.
#[derive(Debug)]
pub struct GuestSpec {
    pub spec: Spec,
    pub binds: Vec<HostBind>,
}

fn is_bind(mount: &Mount) -> bool {
    mount.typ().as_deref() == Some("bind")
        || mount
            .options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// Whether `path` is a host namespace file of a process: `/proc/<pid>/ns/<kind>`.
fn is_proc_ns_path(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(parts.as_slice(), ["proc", pid, "ns", _] if pid.chars().all(|c| c.is_ascii_digit()))
}

/// `spec` (of container `id` with `role`) rewritten for the guest (see the module docs).
pub fn guest_spec(spec: &Spec, id: &str, role: &Role, rootfs: &str) -> Result<GuestSpec> {
    let mut spec = spec.clone();
    let invalid = |reason: String| ShimError::InvalidArgument(format!("container {id}: {reason}"));
    if let Some(root) = spec.root_mut() {
        root.set_path(PathBuf::from(rootfs));
    }
    spec.set_hooks(None);
    if let Some(process) = spec.process_mut() {
        process.set_apparmor_profile(None);
        process.set_selinux_label(None);
    }
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(None);
        linux.set_devices(None);
        linux.set_mount_label(None);
        if let Some(namespaces) = linux.namespaces_mut() {
            for ns in namespaces.iter_mut() {
                let Some(path) = ns.path().as_ref().map(|p| p.to_string_lossy().into_owned())
                else {
                    continue;
                };
                if path.is_empty() {
                    continue;
                }
                let new_path = match ns.typ() {
                    LinuxNamespaceType::Mount | LinuxNamespaceType::Cgroup => None,
                    LinuxNamespaceType::Network
                    | LinuxNamespaceType::Ipc
                    | LinuxNamespaceType::Uts
                    | LinuxNamespaceType::Pid => {
                        if is_proc_ns_path(&path) {
                            Some(PathBuf::from("pod"))
                        } else if ns.typ() == LinuxNamespaceType::Network
                            && matches!(role, Role::Sandbox { .. })
                        {
                            // The CNI netns: pause makes a netns of its own in the guest.
                            None
                        } else {
                            return Err(invalid(format!(
                                "{:?} namespace path {path:?} is a host namespace, which a VM cannot join",
                                ns.typ()
                            )));
                        }
                    }
                    other => {
                        return Err(invalid(format!(
                            "{other:?} namespace with path {path:?} is not supported"
                        )))
                    }
                };
                ns.set_path(new_path);
            }
        }
    }
    let mut binds = Vec::new();
    if let Some(mounts) = spec.mounts_mut() {
        for mount in mounts.iter_mut() {
            if !is_bind(mount) {
                continue;
            }
            let destination = mount.destination().clone();
            if destination == Path::new("/dev/shm") && matches!(role, Role::Container { .. }) {
                mount.set_typ(Some("tmpfs".into()));
                mount.set_source(Some(PathBuf::from("shm")));
                mount.set_options(Some(
                    ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
                        .map(String::from)
                        .to_vec(),
                ));
                continue;
            }
            let source = mount.source().clone().ok_or_else(|| {
                invalid(format!(
                    "bind mount {} has no source",
                    destination.display()
                ))
            })?;
            if !source.is_absolute() {
                return Err(invalid(format!(
                    "bind mount {} has the relative source {}",
                    destination.display(),
                    source.display()
                )));
            }
            let read_only = mount.options().iter().flatten().any(|o| o == "ro");
            let index = binds.len();
            binds.push(HostBind {
                index,
                source,
                read_only,
            });
            mount.set_source(Some(PathBuf::from(PodDirs::guest_container_mount(
                id, index,
            ))));
        }
    }
    Ok(GuestSpec { spec, binds })
}

fn has_namespace(spec: &Spec, kind: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|list| list.iter().any(|ns| ns.typ() == kind))
}

/// The agent's sandbox for a pod whose first container (standalone or CRI sandbox) has
/// `spec`: a namespace listed in the spec is the pod's, one left out is the guest's (the
/// host's, to runc: `--net=host`, hostNetwork...).
pub fn sandbox_request(spec: &Spec, sandbox_id: &str, namespace: &str) -> CreateSandboxRequest {
    let ann = annotations(spec);
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = sandbox_id.to_string();
    req.pod_uid = ann
        .get(ANN_SANDBOX_UID)
        .filter(|uid| !uid.is_empty())
        .cloned()
        .unwrap_or_else(|| sandbox_id.to_string());
    req.pod_name = ann
        .get(ANN_SANDBOX_NAME)
        .cloned()
        .unwrap_or_else(|| sandbox_id.to_string());
    req.pod_namespace = ann
        .get(ANN_SANDBOX_NAMESPACE)
        .cloned()
        .unwrap_or_else(|| namespace.to_string());
    req.hostname = spec.hostname().clone().unwrap_or_else(|| {
        let mut name: String = sandbox_id.chars().take(63).collect();
        name.retain(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        name
    });
    if let Some(sysctls) = spec.linux().as_ref().and_then(|l| l.sysctl().clone()) {
        req.sysctls = sysctls.into_iter().collect();
    }
    let mode = |kind, listed: NamespaceMode| {
        if has_namespace(spec, kind) {
            listed
        } else {
            NamespaceMode::NODE
        }
    };
    let mut options = NamespaceOptions::new();
    options.network = mode(LinuxNamespaceType::Network, NamespaceMode::POD).into();
    options.ipc = mode(LinuxNamespaceType::Ipc, NamespaceMode::POD).into();
    // A standalone container has a pid namespace of its own; a CRI sandbox's pid namespace is
    // pause's (shareProcessNamespace: app containers join it with a path, else take their own).
    let pid = match Role::of(spec, sandbox_id) {
        Role::Sandbox { .. } => NamespaceMode::POD,
        _ => NamespaceMode::CONTAINER,
    };
    options.pid = mode(LinuxNamespaceType::Pid, pid).into();
    req.namespace_options = Some(options).into();
    // No guest tmpfs volumes (`tmpfs_volumes` stays empty): under CRI the kubelet mounts a
    // Memory emptyDir on the host, and it reaches the guest as any other bind source.
    req
}

/// Memory (bytes) and CPU (millicores) to size the VM of a pod whose first container has
/// `spec`: the CRI sandbox annotations, else the container's own limits; 0 when unlimited.
pub fn pod_size(spec: &Spec) -> (u64, u64) {
    let ann = annotations(spec);
    let number = |key: &str| ann.get(key).and_then(|v| v.parse::<i64>().ok());
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
    let memory = number(ANN_SANDBOX_MEMORY).or_else(|| {
        resources
            .as_ref()
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
    });
    let cpu = resources.as_ref().and_then(|r| r.cpu().clone());
    let quota = number(ANN_SANDBOX_CPU_QUOTA).or_else(|| cpu.as_ref().and_then(|c| c.quota()));
    let period = number(ANN_SANDBOX_CPU_PERIOD)
        .and_then(|p| u64::try_from(p).ok())
        .or_else(|| cpu.as_ref().and_then(|c| c.period()));
    let memory = memory.and_then(|m| u64::try_from(m).ok()).unwrap_or(0);
    let millis = match (quota.and_then(|q| u64::try_from(q).ok()), period) {
        (Some(q), Some(p)) if q > 0 && p > 0 => (q * 1000).div_ceil(p),
        _ => 0,
    };
    (memory, millis)
}

/// Where the VMM of a pod whose first container has `spec` runs on the host: the container's
/// `linux.cgroupsPath` (as Kata's `sandbox_cgroup_only`, the sandbox's cgroup holds the whole
/// VM), else `/nutshell/<namespace>-<sandbox id>`.
pub fn host_cgroup_path(spec: &Spec, namespace: &str, sandbox_id: &str) -> Result<PathBuf> {
    let given = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .filter(|p| !p.as_os_str().is_empty());
    let path = match given {
        Some(path) => {
            let text = path.to_str().ok_or_else(|| {
                ShimError::InvalidArgument(format!(
                    "linux.cgroupsPath {} is not UTF-8",
                    path.display()
                ))
            })?;
            host_cgroup::from_oci(text)?
        }
        None => {
            host_cgroup::validate_path(Path::new(&format!("/nutshell/{namespace}-{sandbox_id}")))?
        }
    };
    Ok(path)
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;

#[cfg(test)]
mod host_cgroup_tests {
    use super::*;

    fn with_cgroups_path(path: Option<&str>) -> Spec {
        let linux = match path {
            Some(p) => format!(r#","linux": {{"cgroupsPath": "{p}"}}"#),
            None => String::new(),
        };
        serde_json::from_str(&format!(r#"{{"ociVersion": "1.0.2"{linux}}}"#)).unwrap()
    }

    #[test]
    fn the_vmm_runs_in_the_sandboxs_cgroup() {
        let path = |p| host_cgroup_path(&with_cgroups_path(p), "k8s.io", "sb1").unwrap();
        assert_eq!(
            path(Some("/kubepods/pod1/sb1")),
            Path::new("/kubepods/pod1/sb1")
        );
        assert_eq!(
            path(Some("kubepods-pod1.slice:cri-containerd:sb1")),
            Path::new("/kubepods.slice/kubepods-pod1.slice/cri-containerd-sb1.scope")
        );
        assert_eq!(path(None), Path::new("/nutshell/k8s.io-sb1"));
        assert_eq!(path(Some("")), Path::new("/nutshell/k8s.io-sb1"));
        let bad = host_cgroup_path(&with_cgroups_path(Some("/a/../b")), "k8s.io", "sb1");
        assert!(bad.unwrap_err().to_string().contains("/a/../b"));
    }
}
