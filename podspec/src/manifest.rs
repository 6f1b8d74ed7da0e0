//! The YAML manifest as written: serde types that mirror the part of `v1/Pod` nutshell
//! supports, field names as in the Kubernetes API. Every struct denies unknown fields, so a
//! field nutshell does not handle is an error that names its full path (serde_path_to_error
//! tracks it), never silently ignored. [`crate::validate`] turns these into the typed model.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::error::PodSpecError;

/// A `v1/Pod` manifest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodManifest {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub metadata: Option<ObjectMeta>,
    pub spec: Option<PodSpecManifest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSpecManifest {
    pub containers: Option<Vec<ContainerManifest>>,
    pub volumes: Option<Vec<VolumeManifest>>,
    pub share_process_namespace: Option<bool>,
    pub host_network: Option<bool>,
    #[serde(rename = "hostPID")]
    pub host_pid: Option<bool>,
    #[serde(rename = "hostIPC")]
    pub host_ipc: Option<bool>,
    pub hostname: Option<String>,
    pub restart_policy: Option<String>,
    pub dns_config: Option<DnsConfigManifest>,
    pub security_context: Option<PodSecurityContextManifest>,
}

/// Pod-level security context: defaults for every container, and the pod's sysctls.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSecurityContextManifest {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub sysctls: Option<Vec<SysctlManifest>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysctlManifest {
    pub name: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfigManifest {
    pub nameservers: Option<Vec<String>>,
    pub searches: Option<Vec<String>>,
    pub options: Option<Vec<DnsOptionManifest>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsOptionManifest {
    pub name: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerManifest {
    pub name: Option<String>,
    pub image: Option<String>,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: Option<Vec<EnvVarManifest>>,
    pub working_dir: Option<String>,
    pub resources: Option<ResourcesManifest>,
    pub security_context: Option<SecurityContextManifest>,
    pub volume_mounts: Option<Vec<VolumeMountManifest>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVarManifest {
    pub name: Option<String>,
    pub value: Option<String>,
    /// Parsed only to name it in the error: there is no API server to resolve it from.
    pub value_from: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesManifest {
    pub limits: Option<ResourceListManifest>,
    pub requests: Option<ResourceListManifest>,
}

/// `cpu` and `memory`; other resource names (ephemeral-storage, hugepages, devices) are
/// unknown fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceListManifest {
    pub cpu: Option<QuantityText>,
    pub memory: Option<QuantityText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecurityContextManifest {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub read_only_root_filesystem: Option<bool>,
    pub capabilities: Option<CapabilitiesManifest>,
    pub privileged: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilitiesManifest {
    pub add: Option<Vec<String>>,
    pub drop: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeMountManifest {
    pub name: Option<String>,
    pub mount_path: Option<String>,
    pub read_only: Option<bool>,
    pub sub_path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeManifest {
    pub name: Option<String>,
    pub host_path: Option<HostPathManifest>,
    pub empty_dir: Option<EmptyDirManifest>,
    pub config_map: Option<ConfigMapManifest>,
    pub secret: Option<SecretManifest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPathManifest {
    pub path: Option<String>,
    #[serde(rename = "type")]
    pub typ: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EmptyDirManifest {
    pub medium: Option<String>,
    pub size_limit: Option<QuantityText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigMapManifest {
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretManifest {
    pub secret_name: Option<String>,
}

/// A `resource.Quantity` as written: a string, or a YAML number (`cpu: 1`, `cpu: 0.5`), as the
/// API server accepts both. Parsed by [`crate::quantity`] during validation, so the error
/// can name the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantityText(pub String);

impl<'de> Deserialize<'de> for QuantityText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuantityVisitor;
        impl Visitor<'_> for QuantityVisitor {
            type Value = QuantityText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a quantity (a string such as \"500m\" or \"64Mi\", or a number)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
        }
        deserializer.deserialize_any(QuantityVisitor)
    }
}

/// Kubernetes field names (Pod, PodSpec, Container, SecurityContext, Volume, VolumeMount...)
/// that nutshell knows of but does not implement: an unknown field with one of these names
/// is reported as "not supported by nutshell", any other as an unknown field.
const KNOWN_KUBERNETES_FIELDS: &[&str] = &[
    // metadata
    "generateName",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "selfLink",
    // pod and spec
    "status",
    "initContainers",
    "ephemeralContainers",
    "nodeName",
    "nodeSelector",
    "affinity",
    "tolerations",
    "serviceAccountName",
    "serviceAccount",
    "automountServiceAccountToken",
    "imagePullSecrets",
    "priority",
    "priorityClassName",
    "schedulerName",
    "subdomain",
    "hostAliases",
    "dnsPolicy",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "enableServiceLinks",
    "preemptionPolicy",
    "overhead",
    "topologySpreadConstraints",
    "readinessGates",
    "runtimeClassName",
    "setHostnameAsFQDN",
    "os",
    "hostUsers",
    "schedulingGates",
    "resourceClaims",
    "resources",
    "hostnameOverride",
    // containers
    "ports",
    "envFrom",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "imagePullPolicy",
    "stdin",
    "stdinOnce",
    "tty",
    "volumeDevices",
    "resizePolicy",
    "restartPolicy",
    // security contexts
    "runAsNonRoot",
    "seLinuxOptions",
    "windowsOptions",
    "seccompProfile",
    "appArmorProfile",
    "allowPrivilegeEscalation",
    "procMount",
    "supplementalGroups",
    "supplementalGroupsPolicy",
    "fsGroup",
    "fsGroupChangePolicy",
    "seLinuxChangePolicy",
    // resources
    "claims",
    "ephemeral-storage",
    "hugepages-2Mi",
    "hugepages-1Gi",
    "pods",
    // volume mounts and volumes
    "mountPropagation",
    "subPathExpr",
    "recursiveReadOnly",
    "nfs",
    "persistentVolumeClaim",
    "projected",
    "downwardAPI",
    "csi",
    "ephemeral",
    "image",
    "iscsi",
    "gitRepo",
    "rbd",
    "cephfs",
    "glusterfs",
    "awsElasticBlockStore",
    "gcePersistentDisk",
    "azureDisk",
    "azureFile",
    "fc",
    "flexVolume",
    "flocker",
    "portworxVolume",
    "quobyte",
    "scaleIO",
    "storageos",
    "vsphereVolume",
    "photonPersistentDisk",
    "cinder",
    // configMap / secret volume options
    "items",
    "defaultMode",
    "optional",
];

/// Parses the YAML text of one `v1/Pod` manifest; every error names the field path.
pub fn parse_manifest(yaml: &str) -> Result<PodManifest, PodSpecError> {
    let deserializer = serde_yaml::Deserializer::from_str(yaml);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = err.into_inner();
        let line = inner.location().map(|l| l.line());
        let message = inner.to_string();
        // serde_yaml names the path itself in nested errors: keep one copy.
        let message = message
            .strip_prefix(&format!("{path}: "))
            .unwrap_or(&message)
            .to_string();
        if let Some(field) = unknown_field_name(&message) {
            let expected = message
                .split_once(", expected ")
                .map(|(_, rest)| strip_location(rest).to_string())
                .unwrap_or_default();
            if KNOWN_KUBERNETES_FIELDS.contains(&field) || field == "valueFrom" {
                PodSpecError::Unsupported { path, line }
            } else {
                PodSpecError::UnknownField {
                    path,
                    expected,
                    line,
                }
            }
        } else {
            PodSpecError::Parse {
                path,
                message: strip_location(&message).to_string(),
                line,
            }
        }
    })
}

/// The field named by serde's "unknown field `x`, expected ..." message.
fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.split_once("unknown field `")?.1;
    Some(rest.split_once('`')?.0)
}

/// serde_yaml's message without its trailing " at line L column C" (kept as `line`).
fn strip_location(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(at) => &message[..at],
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_quantities() {
        let pod = parse_manifest(
            "spec:\n  containers:\n  - name: a\n    resources:\n      limits: {cpu: 1, memory: 0.5}\n      requests: {cpu: \"250m\"}\n",
        )
        .unwrap();
        let c = &pod.spec.unwrap().containers.unwrap()[0];
        let r = c.resources.as_ref().unwrap();
        let limits = r.limits.as_ref().unwrap();
        assert_eq!(limits.cpu, Some(QuantityText("1".into())));
        assert_eq!(limits.memory, Some(QuantityText("0.5".into())));
        assert_eq!(
            r.requests.as_ref().unwrap().cpu,
            Some(QuantityText("250m".into()))
        );
    }

    #[test]
    fn unknown_and_unsupported_fields_name_their_path() {
        let err = parse_manifest(
            "spec:\n  containers:\n  - name: a\n  - name: b\n    livenessProbe: {}\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.containers[1].livenessProbe: not supported by nutshell (line 5)"
        );
        let err = parse_manifest("spec:\n  containres: []\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("spec.containres: unknown field"), "{text}");
        assert!(text.contains("`containers`"), "{text}");
    }

    #[test]
    fn wrong_types_name_their_path() {
        let err = parse_manifest("spec:\n  containers:\n  - name: a\n    args: [\"-p\", [1]]\n")
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("spec.containers[0].args[1]: invalid type"),
            "{text}"
        );
        let err = parse_manifest("spec: [").unwrap_err();
        assert!(matches!(err, PodSpecError::Parse { .. }), "{err}");
    }
}
