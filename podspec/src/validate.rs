//! Manifest to typed model: every rule nutshell enforces on a pod, each error naming the
//! field path. The first error found is returned.
//!
//! Rules (Kubernetes' own where one exists): `apiVersion: v1`, `kind: Pod`; names are DNS-1123
//! (pod: subdomain; namespace, containers, volumes, hostname: labels) and container and volume
//! names are unique; every container has a non-empty image; env vars have a name and a plain
//! `value` (`valueFrom` needs an API server); quantities parse (see [`crate::quantity`]) and a
//! request is not above its limit; `privileged` is not combined with `capabilities`;
//! capability names are known; a volumeMount names a declared volume, its mountPath is absolute
//! and unique in the container, its subPath relative and free of `..`; a volume has exactly one
//! source; `hostPID` and `shareProcessNamespace` exclude each other.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Component, Path};
use std::str::FromStr;

use oci_spec::runtime::Capability;

use crate::error::PodSpecError;
use crate::manifest::*;
use crate::model::*;
use crate::quantity::{self, QuantityError};
use crate::volumes::clean_path;

type Result<T> = std::result::Result<T, PodSpecError>;

fn invalid(path: impl Into<String>, reason: impl Into<String>) -> PodSpecError {
    PodSpecError::invalid(path, reason)
}

/// A required field: its value, or "required" naming it.
fn required<T>(value: Option<T>, path: &str) -> Result<T> {
    value.ok_or_else(|| invalid(path, "required"))
}

/// DNS-1123 label: 1-63 of [a-z0-9-], starting and ending alphanumeric.
pub fn is_dns1123_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// DNS-1123 subdomain: at most 253 bytes of dot-separated labels.
pub fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns1123_label)
}

fn check_label(value: &str, path: &str) -> Result<()> {
    if is_dns1123_label(value) {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!("{value:?} is not a DNS-1123 label (1-63 of a-z, 0-9 and '-', starting and ending alphanumeric)"),
        ))
    }
}

fn check_subdomain(value: &str, path: &str) -> Result<()> {
    if is_dns1123_subdomain(value) {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!("{value:?} is not a DNS-1123 subdomain (dot-separated DNS-1123 labels, at most 253 bytes)"),
        ))
    }
}

/// An id the agent accepts (1-128 of [A-Za-z0-9._-]).
fn check_id(value: &str, path: &str) -> Result<()> {
    if nutshell_protocol::is_valid_id(value) {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!("{value:?} must be {}", nutshell_protocol::ID_RULE),
        ))
    }
}

fn quantity_error(path: &str, text: &str, err: QuantityError) -> PodSpecError {
    invalid(path, format!("invalid quantity {text:?}: {err}"))
}

/// A user or group id: 0..=2147483647, as the API server allows.
fn check_id_number(value: i64, path: &str) -> Result<u32> {
    if (0..=i64::from(i32::MAX)).contains(&value) {
        Ok(value as u32)
    } else {
        Err(invalid(path, format!("{value} is not in 0..=2147483647")))
    }
}

/// Parses and validates a manifest into the model.
pub fn validate(manifest: PodManifest) -> Result<Pod> {
    match manifest.api_version.as_deref() {
        Some("v1") => {}
        Some(other) => return Err(invalid("apiVersion", format!("{other:?}: expected \"v1\""))),
        None => return Err(invalid("apiVersion", "required (v1)")),
    }
    match manifest.kind.as_deref() {
        Some("Pod") => {}
        Some(other) => return Err(invalid("kind", format!("{other:?}: expected \"Pod\""))),
        None => return Err(invalid("kind", "required (Pod)")),
    }
    let meta = required(manifest.metadata, "metadata")?;
    let name = required(meta.name, "metadata.name")?;
    check_subdomain(&name, "metadata.name")?;
    let namespace = meta.namespace.unwrap_or_else(|| "default".to_string());
    check_label(&namespace, "metadata.namespace")?;
    let uid = meta.uid.unwrap_or_else(|| name.clone());
    check_id(&uid, "metadata.uid")?;
    check_id(&name, "metadata.name")?;
    let labels = meta.labels.unwrap_or_default();
    for key in labels.keys() {
        check_metadata_key(key, "metadata.labels")?;
    }
    let annotations = meta.annotations.unwrap_or_default();
    for key in annotations.keys() {
        check_metadata_key(key, "metadata.annotations")?;
    }
    let spec = required(manifest.spec, "spec")?;
    validate_spec(spec, name, namespace, uid, labels, annotations)
}

/// Label and annotation keys: `[prefix/]name`, name 1-63 of alphanumerics, '-', '_', '.'.
fn check_metadata_key(key: &str, path: &str) -> Result<()> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name_ok && prefix.is_none_or(is_dns1123_subdomain) {
        Ok(())
    } else {
        Err(invalid(format!("{path}.{key}"), "not a valid key"))
    }
}

fn validate_spec(
    spec: PodSpecManifest,
    name: String,
    namespace: String,
    uid: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
) -> Result<Pod> {
    if let Some(hostname) = &spec.hostname {
        check_label(hostname, "spec.hostname")?;
    }
    let restart_policy = match spec.restart_policy.as_deref() {
        None | Some("Always") => RestartPolicy::Always,
        Some("OnFailure") => RestartPolicy::OnFailure,
        Some("Never") => RestartPolicy::Never,
        Some(other) => {
            return Err(invalid(
                "spec.restartPolicy",
                format!("{other:?}: expected Always, OnFailure or Never"),
            ))
        }
    };
    let share_process_namespace = spec.share_process_namespace.unwrap_or(false);
    let host_pid = spec.host_pid.unwrap_or(false);
    if share_process_namespace && host_pid {
        return Err(invalid(
            "spec.shareProcessNamespace",
            "cannot be combined with hostPID",
        ));
    }
    let (pod_user, pod_group, sysctls) = match spec.security_context {
        Some(sc) => (
            sc.run_as_user
                .map(|u| check_id_number(u, "spec.securityContext.runAsUser"))
                .transpose()?,
            sc.run_as_group
                .map(|g| check_id_number(g, "spec.securityContext.runAsGroup"))
                .transpose()?,
            validate_sysctls(sc.sysctls.unwrap_or_default())?,
        ),
        None => (None, None, BTreeMap::new()),
    };
    let dns = spec.dns_config.map(validate_dns).transpose()?;
    let host_network = spec.host_network.unwrap_or(false);
    let host_ipc = spec.host_ipc.unwrap_or(false);
    for name in sysctls.keys() {
        let ipc = ["kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue."]
            .iter()
            .any(|prefix| name.starts_with(prefix));
        if (host_network && name.starts_with("net.")) || (host_ipc && ipc) {
            return Err(invalid(
                "spec.securityContext.sysctls",
                format!("{name:?} would change the node's namespace (hostNetwork/hostIPC)"),
            ));
        }
    }

    let mut volumes = Vec::new();
    for (i, volume) in spec.volumes.unwrap_or_default().into_iter().enumerate() {
        let path = format!("spec.volumes[{i}]");
        let volume = validate_volume(volume, &path)?;
        if volumes.iter().any(|v: &Volume| v.name == volume.name) {
            return Err(invalid(
                format!("{path}.name"),
                format!("duplicate volume name {:?}", volume.name),
            ));
        }
        volumes.push(volume);
    }

    let manifests = spec.containers.unwrap_or_default();
    if manifests.is_empty() {
        return Err(invalid(
            "spec.containers",
            "at least one container is required",
        ));
    }
    let mut containers: Vec<Container> = Vec::new();
    for (i, container) in manifests.into_iter().enumerate() {
        let path = format!("spec.containers[{i}]");
        let mut container = validate_container(container, &path, &volumes)?;
        if containers.iter().any(|c| c.name == container.name) {
            return Err(invalid(
                format!("{path}.name"),
                format!("duplicate container name {:?}", container.name),
            ));
        }
        container.security.run_as_user = container.security.run_as_user.or(pod_user);
        container.security.run_as_group = container.security.run_as_group.or(pod_group);
        containers.push(container);
    }

    Ok(Pod {
        name,
        namespace,
        uid,
        labels,
        annotations,
        hostname: spec.hostname,
        share_process_namespace,
        host_network,
        host_pid,
        host_ipc,
        restart_policy,
        dns,
        sysctls,
        containers,
        volumes,
    })
}

fn validate_sysctls(sysctls: Vec<SysctlManifest>) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (i, sysctl) in sysctls.into_iter().enumerate() {
        let path = format!("spec.securityContext.sysctls[{i}]");
        let name = required(sysctl.name, &format!("{path}.name"))?;
        let ok = !name.is_empty()
            && name.split('.').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    })
            });
        if !ok {
            return Err(invalid(
                format!("{path}.name"),
                format!("{name:?} is not a sysctl name in dotted form (net.ipv4.ip_forward)"),
            ));
        }
        let value = required(sysctl.value, &format!("{path}.value"))?;
        if out.insert(name.clone(), value).is_some() {
            return Err(invalid(
                format!("{path}.name"),
                format!("duplicate sysctl {name:?}"),
            ));
        }
    }
    Ok(out)
}

fn validate_dns(dns: DnsConfigManifest) -> Result<DnsConfig> {
    let mut config = DnsConfig::default();
    let nameservers = dns.nameservers.unwrap_or_default();
    if nameservers.len() > 3 {
        return Err(invalid(
            "spec.dnsConfig.nameservers",
            "at most 3 nameservers",
        ));
    }
    for (i, server) in nameservers.iter().enumerate() {
        let ip = IpAddr::from_str(server).map_err(|_| {
            invalid(
                format!("spec.dnsConfig.nameservers[{i}]"),
                format!("{server:?} is not an IP address"),
            )
        })?;
        config.nameservers.push(ip);
    }
    let searches = dns.searches.unwrap_or_default();
    if searches.len() > 32 {
        return Err(invalid(
            "spec.dnsConfig.searches",
            "at most 32 search domains",
        ));
    }
    for (i, search) in searches.into_iter().enumerate() {
        let trimmed = search.strip_suffix('.').unwrap_or(&search);
        if !is_dns1123_subdomain(trimmed) {
            return Err(invalid(
                format!("spec.dnsConfig.searches[{i}]"),
                format!("{search:?} is not a DNS-1123 subdomain"),
            ));
        }
        config.searches.push(search);
    }
    for (i, option) in dns.options.unwrap_or_default().into_iter().enumerate() {
        let path = format!("spec.dnsConfig.options[{i}]");
        let name = required(option.name, &format!("{path}.name"))?;
        if name.is_empty() || name.contains(char::is_whitespace) || name.contains(':') {
            return Err(invalid(
                format!("{path}.name"),
                format!("{name:?} is not an option name"),
            ));
        }
        config.options.push(match option.value {
            Some(value) if value.contains(char::is_whitespace) => {
                return Err(invalid(
                    format!("{path}.value"),
                    format!("{value:?} contains whitespace"),
                ))
            }
            Some(value) => format!("{name}:{value}"),
            None => name,
        });
    }
    Ok(config)
}

fn validate_volume(volume: VolumeManifest, path: &str) -> Result<Volume> {
    let name = required(volume.name, &format!("{path}.name"))?;
    check_label(&name, &format!("{path}.name"))?;
    let mut sources = Vec::new();
    if let Some(host_path) = volume.host_path {
        let field = format!("{path}.hostPath");
        let host = required(host_path.path, &format!("{field}.path"))?;
        if !host.starts_with('/') {
            return Err(invalid(
                format!("{field}.path"),
                format!("{host:?} must be absolute"),
            ));
        }
        let typ = host_path.typ.unwrap_or_default();
        let kind = HostPathType::parse(&typ).ok_or_else(|| {
            invalid(
                format!("{field}.type"),
                format!("{typ:?}: expected \"\", DirectoryOrCreate, Directory, FileOrCreate, File, Socket, CharDevice or BlockDevice"),
            )
        })?;
        sources.push(VolumeSource::HostPath { path: host, kind });
    }
    if let Some(empty_dir) = volume.empty_dir {
        let field = format!("{path}.emptyDir");
        let medium = match empty_dir.medium.as_deref() {
            None | Some("") => StorageMedium::Default,
            Some("Memory") => StorageMedium::Memory,
            Some(other) => {
                return Err(invalid(
                    format!("{field}.medium"),
                    format!("{other:?} not supported by nutshell: expected \"\" or \"Memory\""),
                ))
            }
        };
        let size_limit_bytes = match empty_dir.size_limit {
            Some(QuantityText(text)) => Some(
                quantity::parse_bytes(&text)
                    .map_err(|e| quantity_error(&format!("{field}.sizeLimit"), &text, e))?,
            ),
            None => None,
        };
        sources.push(VolumeSource::EmptyDir {
            medium,
            size_limit_bytes,
        });
    }
    if let Some(config_map) = volume.config_map {
        let field = format!("{path}.configMap.name");
        let name = required(config_map.name, &field)?;
        check_subdomain(&name, &field)?;
        sources.push(VolumeSource::ConfigMap { name });
    }
    if let Some(secret) = volume.secret {
        let field = format!("{path}.secret.secretName");
        let name = required(secret.secret_name, &field)?;
        check_subdomain(&name, &field)?;
        sources.push(VolumeSource::Secret { name });
    }
    match sources.len() {
        1 => Ok(Volume {
            name,
            source: sources.remove(0),
        }),
        0 => Err(invalid(
            path,
            "needs a source: hostPath, emptyDir, configMap or secret",
        )),
        _ => Err(invalid(path, "has more than one source")),
    }
}

fn validate_container(c: ContainerManifest, path: &str, volumes: &[Volume]) -> Result<Container> {
    let name = required(c.name, &format!("{path}.name"))?;
    check_label(&name, &format!("{path}.name"))?;
    let image = c.image.unwrap_or_default();
    if image.trim().is_empty() {
        return Err(invalid(
            format!("{path}.image"),
            "required (an image reference)",
        ));
    }
    let mut env = Vec::new();
    for (i, var) in c.env.unwrap_or_default().into_iter().enumerate() {
        let field = format!("{path}.env[{i}]");
        if var.value_from.is_some() {
            return Err(PodSpecError::unsupported(format!("{field}.valueFrom")));
        }
        let name = required(var.name, &format!("{field}.name"))?;
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(invalid(
                format!("{field}.name"),
                format!("{name:?} is not an environment variable name"),
            ));
        }
        env.push(EnvVar {
            name,
            value: var.value.unwrap_or_default(),
        });
    }
    if let Some(dir) = &c.working_dir {
        if !dir.starts_with('/') {
            return Err(invalid(
                format!("{path}.workingDir"),
                format!("{dir:?} must be absolute"),
            ));
        }
    }
    let resources = validate_resources(c.resources, &format!("{path}.resources"))?;
    let security = validate_security(c.security_context, &format!("{path}.securityContext"))?;
    let mut volume_mounts: Vec<VolumeMount> = Vec::new();
    for (i, mount) in c.volume_mounts.unwrap_or_default().into_iter().enumerate() {
        let mount = validate_mount(mount, &format!("{path}.volumeMounts[{i}]"), volumes)?;
        if volume_mounts
            .iter()
            .any(|m| m.mount_path == mount.mount_path)
        {
            return Err(invalid(
                format!("{path}.volumeMounts[{i}].mountPath"),
                format!("{:?} is mounted twice", mount.mount_path),
            ));
        }
        volume_mounts.push(mount);
    }
    Ok(Container {
        name,
        image,
        command: c.command.unwrap_or_default(),
        args: c.args.unwrap_or_default(),
        env,
        working_dir: c.working_dir,
        resources,
        security,
        volume_mounts,
    })
}

fn validate_resources(resources: Option<ResourcesManifest>, path: &str) -> Result<Resources> {
    let Some(resources) = resources else {
        return Ok(Resources::default());
    };
    let amounts = |list: Option<ResourceListManifest>, field: &str| -> Result<ResourceAmounts> {
        let Some(list) = list else {
            return Ok(ResourceAmounts::default());
        };
        let cpu = match list.cpu {
            Some(QuantityText(text)) => Some(
                quantity::parse_millicores(&text)
                    .map_err(|e| quantity_error(&format!("{path}.{field}.cpu"), &text, e))?,
            ),
            None => None,
        };
        let memory = match list.memory {
            Some(QuantityText(text)) => Some(
                quantity::parse_bytes(&text)
                    .map_err(|e| quantity_error(&format!("{path}.{field}.memory"), &text, e))?,
            ),
            None => None,
        };
        Ok(ResourceAmounts {
            cpu_millis: cpu,
            memory_bytes: memory,
        })
    };
    let limits = amounts(resources.limits, "limits")?;
    let mut requests = amounts(resources.requests, "requests")?;
    // The API server's defaulting: a missing request takes its limit.
    requests.cpu_millis = requests.cpu_millis.or(limits.cpu_millis);
    requests.memory_bytes = requests.memory_bytes.or(limits.memory_bytes);
    if let (Some(request), Some(limit)) = (requests.cpu_millis, limits.cpu_millis) {
        if request > limit {
            return Err(invalid(
                format!("{path}.requests.cpu"),
                format!("{request}m is above the limit {limit}m"),
            ));
        }
    }
    if let (Some(request), Some(limit)) = (requests.memory_bytes, limits.memory_bytes) {
        if request > limit {
            return Err(invalid(
                format!("{path}.requests.memory"),
                format!("{request} bytes is above the limit {limit} bytes"),
            ));
        }
    }
    Ok(Resources { requests, limits })
}

/// "ALL", or "CAP_<NAME>" for a capability the kernel knows ("net_admin" and "CAP_NET_ADMIN"
/// both name CAP_NET_ADMIN).
pub fn normalize_capability(name: &str) -> Option<String> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Some(upper);
    }
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).ok()?;
    Some(format!("CAP_{bare}"))
}

fn validate_security(sc: Option<SecurityContextManifest>, path: &str) -> Result<SecurityContext> {
    let Some(sc) = sc else {
        return Ok(SecurityContext::default());
    };
    let privileged = sc.privileged.unwrap_or(false);
    let (mut add, mut drop) = (Vec::new(), Vec::new());
    if let Some(caps) = sc.capabilities {
        let (raw_add, raw_drop) = (caps.add.unwrap_or_default(), caps.drop.unwrap_or_default());
        if privileged && !(raw_add.is_empty() && raw_drop.is_empty()) {
            return Err(invalid(
                format!("{path}.capabilities"),
                "cannot be combined with privileged: true (a privileged container has every capability)",
            ));
        }
        for (list, out, field) in [(raw_add, &mut add, "add"), (raw_drop, &mut drop, "drop")] {
            for (i, name) in list.into_iter().enumerate() {
                let cap = normalize_capability(&name).ok_or_else(|| {
                    invalid(
                        format!("{path}.capabilities.{field}[{i}]"),
                        format!("unknown capability {name:?}"),
                    )
                })?;
                if !out.contains(&cap) {
                    out.push(cap);
                }
            }
        }
    }
    Ok(SecurityContext {
        run_as_user: sc
            .run_as_user
            .map(|u| check_id_number(u, &format!("{path}.runAsUser")))
            .transpose()?,
        run_as_group: sc
            .run_as_group
            .map(|g| check_id_number(g, &format!("{path}.runAsGroup")))
            .transpose()?,
        read_only_root_filesystem: sc.read_only_root_filesystem.unwrap_or(false),
        privileged,
        capabilities_add: add,
        capabilities_drop: drop,
    })
}

fn validate_mount(
    mount: VolumeMountManifest,
    path: &str,
    volumes: &[Volume],
) -> Result<VolumeMount> {
    let volume = required(mount.name, &format!("{path}.name"))?;
    if !volumes.iter().any(|v| v.name == volume) {
        return Err(invalid(
            format!("{path}.name"),
            format!("no volume named {volume:?} in spec.volumes"),
        ));
    }
    let mount_path = required(mount.mount_path, &format!("{path}.mountPath"))?;
    if !mount_path.starts_with('/') {
        return Err(invalid(
            format!("{path}.mountPath"),
            format!("{mount_path:?} must be absolute"),
        ));
    }
    if Path::new(&mount_path)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return Err(invalid(
            format!("{path}.mountPath"),
            format!("{mount_path:?} must not contain '..'"),
        ));
    }
    let sub_path = match mount.sub_path {
        None => None,
        Some(sub) if sub.is_empty() => None,
        Some(sub) => {
            if sub.starts_with('/') {
                return Err(invalid(
                    format!("{path}.subPath"),
                    format!("{sub:?} must be relative"),
                ));
            }
            if Path::new(&sub)
                .components()
                .any(|c| c == Component::ParentDir)
            {
                return Err(invalid(
                    format!("{path}.subPath"),
                    format!("{sub:?} must not contain '..'"),
                ));
            }
            Some(sub)
        }
    };
    Ok(VolumeMount {
        volume,
        mount_path: clean_path(&mount_path),
        read_only: mount.read_only.unwrap_or(false),
        sub_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for ok in ["a", "app-1", "0abc", &"x".repeat(63)] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
        assert!(is_dns1123_subdomain("seed.pod-1"));
        assert!(!is_dns1123_subdomain("seed..pod"));
    }

    #[test]
    fn capability_names() {
        assert_eq!(
            normalize_capability("net_admin").as_deref(),
            Some("CAP_NET_ADMIN")
        );
        assert_eq!(
            normalize_capability("CAP_SYS_PTRACE").as_deref(),
            Some("CAP_SYS_PTRACE")
        );
        assert_eq!(normalize_capability("all").as_deref(), Some("ALL"));
        assert_eq!(normalize_capability("CAP_NOPE"), None);
    }

    #[test]
    fn metadata_keys() {
        assert!(check_metadata_key("app.kubernetes.io/name", "x").is_ok());
        assert!(check_metadata_key("tier", "x").is_ok());
        assert!(check_metadata_key("-bad", "x").is_err());
        assert!(check_metadata_key("Bad_Prefix/x", "x").is_err());
    }
}
