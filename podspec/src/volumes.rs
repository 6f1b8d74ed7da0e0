//! Volumes and the mounts that need a host- or guest-side path the runtime decides.
//!
//! The OCI specs this crate writes cannot know where a volume's files end up in the guest
//! (the runtime shares them over virtio-fs, or makes a tmpfs for a Memory emptyDir), so each
//! such mount's `source` is a placeholder: `nutshell:volume/<name>[/<subPath>]` for a volume,
//! `nutshell:pod-file/hosts` and `nutshell:pod-file/hostname` for the pod's /etc files. Every
//! [`crate::ContainerPlan`] lists them as [`PendingMount`]s beside the spec, and
//! [`crate::ContainerPlan::resolve_mounts`] swaps the placeholders for real guest paths.
//!
//! ConfigMaps and Secrets (a nutshell extension: there is no API server): `configMap: {name: X}`
//! mounts the files of `<config dir>/configmaps/X/`, `secret: {secretName: Y}` those of
//! `<config dir>/secrets/Y/`; the config directory is given at conversion
//! ([`crate::ConvertOptions::config_dir`]), each file is one key as the kubelet projects it,
//! and the mount is always read-only, as the kubelet makes it.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder};
use serde::Serialize;

use crate::error::PodSpecError;
use crate::model::{Pod, VolumeMount, VolumeSource};

/// Placeholder prefix of a volume mount's source.
pub const VOLUME_PLACEHOLDER: &str = "nutshell:volume/";
/// Placeholder prefix of a pod file's source.
pub const POD_FILE_PLACEHOLDER: &str = "nutshell:pod-file/";

/// A file the runtime writes once per pod and binds into every container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PodFile {
    /// /etc/hosts (the kubelet's managed hosts file).
    Hosts,
    /// /etc/hostname (containerd's sandbox hostname file).
    Hostname,
}

impl PodFile {
    pub fn file_name(self) -> &'static str {
        match self {
            PodFile::Hosts => "hosts",
            PodFile::Hostname => "hostname",
        }
    }

    /// Where containers see it.
    pub fn container_path(self) -> &'static str {
        match self {
            PodFile::Hosts => "/etc/hosts",
            PodFile::Hostname => "/etc/hostname",
        }
    }
}

/// What a placeholder source stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum MountSource {
    /// A pod volume, or a path inside it.
    Volume {
        volume: String,
        sub_path: Option<String>,
    },
    PodFile(PodFile),
}

impl MountSource {
    /// The placeholder written as the OCI mount's `source`.
    pub fn placeholder(&self) -> String {
        match self {
            MountSource::Volume {
                volume,
                sub_path: None,
            } => format!("{VOLUME_PLACEHOLDER}{volume}"),
            MountSource::Volume {
                volume,
                sub_path: Some(sub),
            } => format!("{VOLUME_PLACEHOLDER}{volume}/{sub}"),
            MountSource::PodFile(file) => format!("{POD_FILE_PLACEHOLDER}{}", file.file_name()),
        }
    }

    /// The source a placeholder stands for; `None` for a real path.
    pub fn from_placeholder(source: &str) -> Option<MountSource> {
        if let Some(rest) = source.strip_prefix(VOLUME_PLACEHOLDER) {
            let (volume, sub_path) = match rest.split_once('/') {
                Some((volume, sub)) => (volume, Some(sub.to_string())),
                None => (rest, None),
            };
            return Some(MountSource::Volume {
                volume: volume.to_string(),
                sub_path,
            });
        }
        match source.strip_prefix(POD_FILE_PLACEHOLDER)? {
            "hosts" => Some(MountSource::PodFile(PodFile::Hosts)),
            "hostname" => Some(MountSource::PodFile(PodFile::Hostname)),
            _ => None,
        }
    }
}

/// A mount of the spec whose source the runtime still has to provide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingMount {
    pub destination: String,
    pub source: MountSource,
    pub read_only: bool,
}

/// A pod volume with what the runtime needs to provide it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodVolume {
    pub name: String,
    pub source: VolumeSource,
    /// For configMap and secret volumes: the host directory holding the files.
    pub host_dir: Option<PathBuf>,
}

/// The pod's volumes, configMap and secret ones resolved against `config_dir` (which must
/// hold `configmaps/<name>/` or `secrets/<name>/` as a directory).
pub fn resolve_volumes(
    pod: &Pod,
    config_dir: Option<&Path>,
) -> Result<Vec<PodVolume>, PodSpecError> {
    pod.volumes
        .iter()
        .enumerate()
        .map(|(i, volume)| {
            let (kind, field, name) = match &volume.source {
                VolumeSource::ConfigMap { name } => ("configmaps", "configMap.name", name),
                VolumeSource::Secret { name } => ("secrets", "secret.secretName", name),
                _ => {
                    return Ok(PodVolume {
                        name: volume.name.clone(),
                        source: volume.source.clone(),
                        host_dir: None,
                    })
                }
            };
            let path = format!("spec.volumes[{i}].{field}");
            let Some(config_dir) = config_dir else {
                return Err(PodSpecError::invalid(
                    path,
                    format!("{name:?} needs a config directory holding {kind}/{name}/ (nutshell has no API server)"),
                ));
            };
            let dir = config_dir.join(kind).join(name);
            if !dir.is_dir() {
                return Err(PodSpecError::invalid(
                    path,
                    format!("{name:?} not found: no directory {}", dir.display()),
                ));
            }
            Ok(PodVolume {
                name: volume.name.clone(),
                source: volume.source.clone(),
                host_dir: Some(dir),
            })
        })
        .collect()
}

/// `path` without repeated, trailing or `.` components ("/data//x/" is "/data/x").
pub fn clean_path(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// containerd's bind mount for a CRI mount: `rbind`, `rprivate`, then `ro` or `rw`.
pub fn bind_mount(destination: &str, source: &str, read_only: bool) -> Mount {
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(vec![
            "rbind".to_string(),
            "rprivate".to_string(),
            if read_only { "ro" } else { "rw" }.to_string(),
        ])
        .build()
        .expect("a bind mount with every field set is valid")
}

/// A container's volume mount as a pending mount; configMap and secret volumes are always
/// read-only.
pub fn pending_volume_mount(pod: &Pod, mount: &VolumeMount) -> PendingMount {
    let forced = pod
        .volume(&mount.volume)
        .is_some_and(|v| v.source.always_read_only());
    PendingMount {
        destination: mount.mount_path.clone(),
        source: MountSource::Volume {
            volume: mount.volume.clone(),
            sub_path: mount.sub_path.clone(),
        },
        read_only: mount.read_only || forced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_round_trip() {
        for source in [
            MountSource::Volume {
                volume: "data".into(),
                sub_path: None,
            },
            MountSource::Volume {
                volume: "data".into(),
                sub_path: Some("a/b.conf".into()),
            },
            MountSource::PodFile(PodFile::Hosts),
            MountSource::PodFile(PodFile::Hostname),
        ] {
            let text = source.placeholder();
            assert_eq!(MountSource::from_placeholder(&text), Some(source), "{text}");
        }
        assert_eq!(MountSource::from_placeholder("/var/lib/x"), None);
        assert_eq!(
            MountSource::from_placeholder("nutshell:pod-file/passwd"),
            None
        );
    }
}
