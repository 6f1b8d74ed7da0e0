//! One container of a pod to an OCI runtime spec, as containerd 1.6's CRI plugin builds it for
//! runc from the kubelet's request, with the namespace paths the nutshell agent reads
//! (`guest-agent/src/container/namespaces.rs`).
//!
//! What the spec holds, and where it differs from containerd:
//! * process: args by the Kubernetes rules against the image config ([`ContainerDefaults`]);
//!   env `PATH` (containerd's default), `HOSTNAME=<pod hostname>`, the image's, then the pod's
//!   (`$(VAR)` expanded), later ones replacing earlier ones in place; cwd `workingDir`, else the
//!   image's, else `/`; user from runAsUser/runAsGroup, else the image's numeric user;
//!   capabilities in the bounding, effective and permitted sets (containerd's default 14,
//!   adjusted by drop then add; privileged: all 41); `RLIMIT_NOFILE` 1024/1024 (the default
//!   spec of containerd 1.6; 2.0 drops it); `noNewPrivileges` false; oomScoreAdj by QoS class.
//! * mounts: /proc, /dev, /dev/pts, /dev/mqueue, /sys (ro), /sys/fs/cgroup (ro), /dev/shm
//!   (privileged: /sys and the cgroup fs rw), minus any a volume mounts over (all of /dev/* when a
//!   volume is mounted at /dev); then the volume mounts, /etc/hosts and /etc/hostname as `rbind`
//!   binds from placeholder sources (see [`crate::volumes`]), sorted by depth. /etc/resolv.conf
//!   is added by the agent from the sandbox's DNS. Deviation: /dev/shm is a tmpfs of each
//!   container's own (size 64 MiB), where containerd binds the sandbox's, as the agent has no
//!   pod-wide shm yet; SysV shm and POSIX message queues are shared through the ipc namespace.
//! * linux: namespaces pid (own, `pod` with shareProcessNamespace, `node` with hostPID), ipc
//!   (`pod` or `node` with hostIPC), uts and network (`pod`, or `node` with hostNetwork), mount
//!   (own), cgroup (own, unless privileged, as containerd on cgroup v2); resources (see
//!   [`crate::resources::container_resources`]); cgroupsPath
//!   `/<QoS parent>/pod<uid>/<container>`; the masked and read-only paths of the kubelet's
//!   defaults, none when privileged. No hostname: the uts namespace is pause's. No seccomp
//!   profile (the kubelet's default is Unconfined) and no AppArmor or SELinux label.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nutshell_protocol::agent::CreateContainerRequest;
use oci_spec::runtime::{Capability, Spec};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::PodSpecError;
use crate::expansion::{expand, expand_env};
use crate::model::{Container, Pod};
use crate::resources::{container_resources, oom_score_adj, qos_class};
use crate::sandbox::{PodNamespaces, SandboxPlan};
use crate::volumes::{
    bind_mount, clean_path, pending_volume_mount, MountSource, PendingMount, PodFile,
};

/// The OCI version written into specs.
pub const OCI_VERSION: &str = "1.1.0";

/// containerd's default PATH.
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's default capabilities for a container.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability of Linux 6.1, in kernel order: what a privileged container gets.
pub use nutshell_protocol::LINUX_CAPABILITIES as ALL_CAPABILITIES;

/// The kubelet's default masked paths (containerd's match).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// The kubelet's default read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The process defaults an image gives (OCI image config `Entrypoint`, `Cmd`, `Env`,
/// `WorkingDir`, `User`); the image crate fills it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `uid` or `uid:gid`, numeric: names must be resolved against the image's /etc/passwd
    /// and /etc/group first (containerd does that in the rootfs; this crate does no I/O). The
    /// gid stands in for the passwd lookup of the uid's primary group; without one it is 0.
    pub user: Option<String>,
}

/// Inputs of the conversion that are not in the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvertOptions {
    /// The guest's memory, for Burstable containers' oom_score_adj.
    pub machine_memory_bytes: u64,
    /// Where configMap and secret volumes come from (see [`crate::volumes`]).
    pub config_dir: Option<PathBuf>,
    /// The pod's IPs, for /etc/hosts (none yet: the hostname maps to 127.0.1.1).
    pub pod_ips: Vec<IpAddr>,
}

impl ConvertOptions {
    pub fn new(machine_memory_bytes: u64) -> ConvertOptions {
        ConvertOptions {
            machine_memory_bytes,
            config_dir: None,
            pod_ips: Vec::new(),
        }
    }
}

/// One container, ready for `CreateContainer` once its mounts are resolved.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPlan {
    /// Index in `spec.containers`.
    pub index: usize,
    /// The container id given to the agent: the container's name.
    pub id: String,
    pub image: String,
    pub spec: Spec,
    /// Mounts of `spec` whose source is a placeholder, in spec order.
    pub pending_mounts: Vec<PendingMount>,
}

impl ContainerPlan {
    /// The spec as JSON with capability sets sorted (oci-spec keeps them in hash sets), so
    /// the text is stable.
    pub fn spec_json(&self) -> Value {
        canonical_spec_json(&self.spec)
    }

    /// Replaces every placeholder source with the guest path `resolve` gives for it.
    pub fn resolve_mounts<E>(
        &mut self,
        mut resolve: impl FnMut(&PendingMount) -> Result<PathBuf, E>,
    ) -> Result<(), E> {
        let Some(mounts) = self.spec.mounts_mut() else {
            return Ok(());
        };
        for mount in mounts.iter_mut() {
            let Some(source) = mount.source().as_ref().and_then(|s| s.to_str()) else {
                continue;
            };
            let Some(source) = MountSource::from_placeholder(source) else {
                continue;
            };
            let pending = self
                .pending_mounts
                .iter()
                .find(|p| p.source == source && mount.destination() == Path::new(&p.destination))
                .expect("every placeholder mount has its pending entry");
            mount.set_source(Some(resolve(pending)?));
        }
        Ok(())
    }

    /// The agent's `CreateContainer` request; an error while a mount source is still a
    /// placeholder.
    pub fn to_request(
        &self,
        sandbox_id: &str,
        rootfs: &str,
    ) -> Result<CreateContainerRequest, PodSpecError> {
        for mount in self.spec.mounts().iter().flatten() {
            let source = mount
                .source()
                .as_ref()
                .and_then(|s| s.to_str())
                .unwrap_or("");
            if MountSource::from_placeholder(source).is_some() {
                return Err(PodSpecError::invalid(
                    format!("spec.containers[{}]", self.index),
                    format!(
                        "mount {} still has the placeholder source {source:?}: resolve_mounts first",
                        mount.destination().display()
                    ),
                ));
            }
        }
        let mut req = CreateContainerRequest::new();
        req.sandbox_id = sandbox_id.to_string();
        req.container_id = self.id.clone();
        req.oci_spec_json = serde_json::to_vec(&self.spec_json()).expect("JSON serializes");
        req.rootfs = rootfs.to_string();
        Ok(req)
    }
}

/// `spec` as JSON, capability sets sorted.
pub fn canonical_spec_json(spec: &Spec) -> Value {
    let mut value = serde_json::to_value(spec).expect("oci-spec specs serialize");
    if let Some(Value::Object(caps)) = value.pointer_mut("/process/capabilities") {
        for set in caps.values_mut() {
            if let Value::Array(names) = set {
                names.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    value
}

/// `KEY=value` entries: each new one replaces the same key in place or is appended
/// (containerd's `WithEnv`); a bare `KEY` removes it.
fn merge_env(env: &mut Vec<String>, new: impl IntoIterator<Item = String>) {
    for entry in new {
        let key = entry
            .split_once('=')
            .map_or(entry.as_str(), |(k, _)| k)
            .to_string();
        let position = env
            .iter()
            .position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key);
        match (position, entry.contains('=')) {
            (Some(i), true) => env[i] = entry,
            (Some(i), false) => {
                env.remove(i);
            }
            (None, true) => env.push(entry),
            (None, false) => {}
        }
    }
}

/// The process args (containerd's `WithProcessArgs`): no command: the image's ENTRYPOINT
/// then `args`, or the image's CMD without args; a command: command then args, CMD dropped.
fn process_args(command: Vec<String>, args: Vec<String>, image: &ContainerDefaults) -> Vec<String> {
    let (mut command, mut args) = (command, args);
    if command.is_empty() {
        if args.is_empty() {
            args = image.cmd.clone();
        }
        if !(image.entrypoint.len() == 1 && image.entrypoint[0].is_empty()) {
            command = image.entrypoint.clone();
        }
    }
    command.extend(args);
    command
}

/// (uid, gid) of the process.
fn process_user(
    container: &Container,
    image: &ContainerDefaults,
    path: &str,
) -> Result<(u32, u32), PodSpecError> {
    let security = &container.security;
    if let Some(uid) = security.run_as_user {
        return Ok((uid, security.run_as_group.unwrap_or(0)));
    }
    let Some(user) = image.user.as_deref().filter(|u| !u.is_empty()) else {
        return Ok((0, security.run_as_group.unwrap_or(0)));
    };
    let (uid_text, gid_text) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let number = |text: &str| text.parse::<u32>().ok();
    let not_numeric = || {
        PodSpecError::invalid(
            format!("{path}.image"),
            format!("the image's user {user:?} is not numeric: resolve it against the image's /etc/passwd first, or set securityContext.runAsUser"),
        )
    };
    let uid = number(uid_text).ok_or_else(not_numeric)?;
    let gid = match (security.run_as_group, gid_text) {
        (Some(gid), _) => gid,
        (None, Some(text)) => number(text).ok_or_else(not_numeric)?,
        (None, None) => 0,
    };
    Ok((uid, gid))
}

/// containerd's TweakCapabilities: the defaults minus `drop` ("ALL" drops all), plus `add`
/// ("ALL" adds every one); privileged: every capability.
fn capabilities(container: &Container) -> Vec<String> {
    let security = &container.security;
    if security.privileged {
        return ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    }
    let drop_all = security.capabilities_drop.iter().any(|c| c == "ALL");
    let mut caps: Vec<String> = if drop_all {
        Vec::new()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .filter(|c| !security.capabilities_drop.iter().any(|d| d == *c))
            .map(|c| c.to_string())
            .collect()
    };
    if security.capabilities_add.iter().any(|c| c == "ALL") {
        return ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    }
    for cap in &security.capabilities_add {
        if !caps.contains(cap) {
            caps.push(cap.clone());
        }
    }
    caps
}

fn depth(path: &str) -> usize {
    clean_path(path).matches('/').count()
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Value {
    json!({"destination": destination, "type": typ, "source": source, "options": options})
}

/// The default mounts of containerd's spec as CRI adjusts them.
/// The mounts containerd's CRI plugin gives every container (read-write sysfs and cgroup for
/// a privileged one), as OCI mount JSON.
pub fn default_mounts(privileged: bool) -> Vec<Value> {
    let ro_or_rw = if privileged { "rw" } else { "ro" };
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", ro_or_rw],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", ro_or_rw],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
    ]
}

/// The pending mounts of a container, in spec order (volume mounts, /etc/hosts and
/// /etc/hostname unless a volume covers them; stably sorted by depth).
fn pending_mounts(pod: &Pod, container: &Container) -> Vec<PendingMount> {
    let mut pending: Vec<PendingMount> = container
        .volume_mounts
        .iter()
        .map(|m| pending_volume_mount(pod, m))
        .collect();
    let covered =
        |path: &str, pending: &[PendingMount]| pending.iter().any(|p| p.destination == path);
    for (file, read_only) in [
        (PodFile::Hosts, false),
        (
            PodFile::Hostname,
            container.security.read_only_root_filesystem,
        ),
    ] {
        if !covered(file.container_path(), &pending) {
            pending.push(PendingMount {
                destination: file.container_path().to_string(),
                source: MountSource::PodFile(file),
                read_only,
            });
        }
    }
    pending.sort_by_key(|p| depth(&p.destination));
    pending
}

fn namespace(typ: &str, path: Option<&str>) -> Value {
    match path {
        Some(path) => json!({"type": typ, "path": path}),
        None => json!({"type": typ}),
    }
}

/// The OCI spec of `pod.containers[index]` with `image`'s defaults.
pub fn container_plan(
    pod: &Pod,
    index: usize,
    image: &ContainerDefaults,
    opts: &ConvertOptions,
) -> Result<ContainerPlan, PodSpecError> {
    let container = &pod.containers[index];
    let path = format!("spec.containers[{index}]");
    let sandbox = SandboxPlan::of(pod);
    let qos = qos_class(pod);
    let hostname = pod.effective_hostname();

    // Env: the pod's vars expanded in order, then merged over the defaults and the image's.
    let pod_env: Vec<(String, String)> = expand_env(
        &container
            .env
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect::<Vec<_>>(),
    );
    let lookup = |name: &str| {
        pod_env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut env = vec![DEFAULT_PATH_ENV.to_string()];
    merge_env(&mut env, [format!("HOSTNAME={hostname}")]);
    merge_env(&mut env, image.env.iter().cloned());
    merge_env(&mut env, pod_env.iter().map(|(k, v)| format!("{k}={v}")));

    let command = container
        .command
        .iter()
        .map(|a| expand(a, lookup))
        .collect();
    let args = container.args.iter().map(|a| expand(a, lookup)).collect();
    let args = process_args(command, args, image);
    if args.is_empty() {
        return Err(PodSpecError::invalid(
            format!("{path}.command"),
            "no command: neither the pod nor the image gives one",
        ));
    }
    let cwd = container
        .working_dir
        .clone()
        .or_else(|| image.working_dir.clone().filter(|d| !d.is_empty()))
        .unwrap_or_else(|| "/".to_string());
    if !cwd.starts_with('/') {
        return Err(PodSpecError::invalid(
            format!("{path}.image"),
            format!("the image's working directory {cwd:?} is not absolute"),
        ));
    }
    let (uid, gid) = process_user(container, image, &path)?;
    let caps = capabilities(container);
    for cap in &caps {
        Capability::from_str(cap.trim_start_matches("CAP_")).expect("capabilities are validated");
    }

    let pending = pending_mounts(pod, container);
    let mut mounts: Vec<Value> = default_mounts(container.security.privileged)
        .into_iter()
        .filter(|m| {
            let dest = m["destination"].as_str().unwrap_or_default();
            let over_dev =
                dest.starts_with("/dev/") && pending.iter().any(|p| p.destination == "/dev");
            !over_dev && !pending.iter().any(|p| p.destination == dest)
        })
        .collect();
    for p in &pending {
        let bind = bind_mount(&p.destination, &p.source.placeholder(), p.read_only);
        mounts.push(serde_json::to_value(bind).expect("mounts serialize"));
    }

    let modes = PodNamespaces::of(pod);
    let mut namespaces = vec![
        namespace("pid", modes.pid.spec_path()),
        namespace("ipc", modes.ipc.spec_path()),
        namespace("uts", modes.uts.spec_path()),
        namespace("mount", None),
        namespace("network", modes.network.spec_path()),
    ];
    if !container.security.privileged {
        namespaces.push(namespace("cgroup", None));
    }

    let annotations: BTreeMap<&str, &str> = BTreeMap::from([
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.container-name", container.name.as_str()),
        ("io.kubernetes.cri.image-name", container.image.as_str()),
        ("io.kubernetes.cri.sandbox-id", sandbox.sandbox_id.as_str()),
        ("io.kubernetes.cri.sandbox-name", pod.name.as_str()),
        (
            "io.kubernetes.cri.sandbox-namespace",
            pod.namespace.as_str(),
        ),
        ("io.kubernetes.cri.sandbox-uid", pod.uid.as_str()),
    ]);

    let mut linux = json!({
        "namespaces": namespaces,
        "resources": container_resources(container),
        "cgroupsPath": format!("/{}/{}", sandbox.pod_cgroup(), container.name),
    });
    if !container.security.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }

    let spec = json!({
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid, "additionalGids": [gid]},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": false,
            "oomScoreAdj": oom_score_adj(qos, container, opts.machine_memory_bytes),
        },
        "root": {"path": "rootfs", "readonly": container.security.read_only_root_filesystem},
        "mounts": mounts,
        "annotations": annotations,
        "linux": linux,
    });
    let spec: Spec = serde_json::from_value(spec).expect("the spec built here is a valid OCI spec");
    Ok(ContainerPlan {
        index,
        id: container.name.clone(),
        image: container.image.clone(),
        spec,
        pending_mounts: pending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kubernetes_command_rules() {
        let image = ContainerDefaults {
            entrypoint: strings(&["/entry"]),
            cmd: strings(&["--default"]),
            ..Default::default()
        };
        let run =
            |command: &[&str], args: &[&str]| process_args(strings(command), strings(args), &image);
        assert_eq!(run(&[], &[]), strings(&["/entry", "--default"]));
        assert_eq!(run(&[], &["-x"]), strings(&["/entry", "-x"]));
        assert_eq!(run(&["sh"], &[]), strings(&["sh"]));
        assert_eq!(
            run(&["sh"], &["-c", "true"]),
            strings(&["sh", "-c", "true"])
        );
        let empty_entry = ContainerDefaults {
            entrypoint: strings(&[""]),
            cmd: strings(&["run"]),
            ..Default::default()
        };
        assert_eq!(
            process_args(vec![], vec![], &empty_entry),
            strings(&["run"])
        );
    }

    #[test]
    fn env_merges_in_place() {
        let mut env = strings(&["PATH=/bin", "HOSTNAME=a"]);
        merge_env(&mut env, strings(&["PATH=/usr/bin", "LANG=C", "HOSTNAME"]));
        assert_eq!(env, strings(&["PATH=/usr/bin", "LANG=C"]));
    }

    #[test]
    fn paths_are_cleaned() {
        assert_eq!(clean_path("/data//x/./"), "/data/x");
        assert_eq!(clean_path("/"), "/");
        assert_eq!(depth("/etc/hosts"), 2);
        assert_eq!(depth("/data"), 1);
    }

    #[test]
    fn capability_list_matches_oci_spec() {
        for cap in ALL_CAPABILITIES {
            assert!(Capability::from_str(&cap["CAP_".len()..]).is_ok(), "{cap}");
        }
    }
}
