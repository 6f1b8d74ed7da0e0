//! A Kubernetes `v1/Pod` manifest (YAML) to a validated model, and from it the OCI runtime
//! specs of its containers and the agent's sandbox request, the way the kubelet and
//! containerd's CRI plugin build them for runc.
//!
//! ```text
//! YAML --parse_manifest--> manifest::PodManifest --validate--> model::Pod
//!      --plan_pod(images, options)--> PodPlan { sandbox, containers[spec + pending mounts], volumes, files }
//! ```
//!
//! * [`manifest`]: serde types of the supported subset; an unknown or unsupported field is an
//!   error naming its path (`spec.containers[1].livenessProbe: not supported by nutshell`).
//! * [`validate`]: the rules, and the typed [`model`].
//! * [`quantity`]: `resource.Quantity` to millicores and bytes.
//! * [`resources`]: QoS class, oom_score_adj, container and pod cgroup resources.
//! * [`container_spec`]: one container to an OCI spec ([`ContainerDefaults`] carries the
//!   image's ENTRYPOINT, CMD, env, working dir and user).
//! * [`volumes`]: volumes, configMap/secret directories (a nutshell extension) and the
//!   placeholder mount sources the runtime resolves.
//! * [`sandbox`]: the `CreateSandboxRequest` and the pod's /etc files.
//!
//! Supported manifest fields: `apiVersion: v1`, `kind: Pod`, `metadata` (name, namespace, uid,
//! labels, annotations); `spec.containers[]` (name, image, command, args, env with `value`,
//! workingDir, resources limits/requests of cpu and memory, securityContext runAsUser,
//! runAsGroup, readOnlyRootFilesystem, capabilities add/drop, privileged, volumeMounts name,
//! mountPath, readOnly, subPath), shareProcessNamespace, hostNetwork, hostPID, hostIPC,
//! hostname, restartPolicy, dnsConfig (nameservers, searches, options), securityContext
//! (runAsUser, runAsGroup, sysctls), volumes (hostPath, emptyDir, `configMap: {name}`,
//! `secret: {secretName}`).

pub mod container_spec;
pub mod error;
pub mod expansion;
pub mod manifest;
pub mod model;
pub mod quantity;
pub mod resources;
pub mod sandbox;
pub mod validate;
pub mod volumes;

use serde::Serialize;

pub use container_spec::{container_plan, ContainerDefaults, ContainerPlan, ConvertOptions};
pub use error::PodSpecError;
pub use manifest::parse_manifest;
pub use model::Pod;
pub use resources::QosClass;
pub use sandbox::{PodFiles, SandboxPlan};
pub use volumes::{MountSource, PendingMount, PodFile, PodVolume};

/// Parses and validates a `v1/Pod` manifest.
pub fn parse_pod(yaml: &str) -> Result<Pod, PodSpecError> {
    validate::validate(parse_manifest(yaml)?)
}

/// Everything the runtime needs to run a pod.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodPlan {
    pub sandbox: SandboxPlan,
    /// In `spec.containers` order.
    pub containers: Vec<ContainerPlan>,
    pub volumes: Vec<PodVolume>,
    pub files: PodFiles,
}

/// Converts a validated pod; `image_defaults` gives each container's image config.
pub fn plan_pod(
    pod: &Pod,
    opts: &ConvertOptions,
    mut image_defaults: impl FnMut(&model::Container) -> ContainerDefaults,
) -> Result<PodPlan, PodSpecError> {
    let volumes = volumes::resolve_volumes(pod, opts.config_dir.as_deref())?;
    let containers = pod
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| container_plan(pod, i, &image_defaults(c), opts))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PodPlan {
        sandbox: SandboxPlan::of(pod),
        containers,
        volumes,
        files: PodFiles::of(pod, &opts.pod_ips),
    })
}
