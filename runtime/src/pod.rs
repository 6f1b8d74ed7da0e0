//! One pod from its manifest to running containers, and back to nothing.
//!
//! `run` validates the manifest, resolves the images and writes [`Launch`] next to a copy of
//! the manifest; the supervisor then calls [`start`], which provides the share, boots the VM
//! (its VMM in the host cgroup `/nutshell/<pod>`, sized from the VM), creates the sandbox and
//! the containers. Any failure on the way, and every stop, ends in [`teardown`], which leaves
//! no VM, mount, share directory or host cgroup behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use nutshell_image::{Digest, Image, ImageStore};
use nutshell_podspec::{plan_pod, ContainerDefaults, ConvertOptions, Pod, PodPlan};
use nutshell_protocol::agent::{CreateContainerRequest, DestroySandboxRequest};
use nutshell_protocol::AgentClient;
use serde::{Deserialize, Serialize};

use crate::host_cgroup::{self, HostCgroup, Overhead};
use crate::pod_dirs::PodDirs;
use crate::share;
use crate::vm::{self, VmSpec};
use crate::RuntimeError;

/// How long the agent may take to answer after the VMM started.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of one agent call.
pub const CALL: Duration = Duration::from_secs(30);
/// Name of the manifest copy in the pod directory.
pub const MANIFEST_FILE: &str = "pod.yaml";
/// The host cgroup of a pod's VMM is `<this>/<pod>`.
pub const HOST_CGROUP_PARENT: &str = "/nutshell";

/// What `run` decided, for the supervisor (`launch.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    pub vm: VmSpec,
    pub image_store: PathBuf,
    /// Image id (config digest) of each container, by container name.
    pub images: BTreeMap<String, String>,
    pub config_dir: Option<PathBuf>,
}

impl Launch {
    pub fn path(dirs: &PodDirs) -> PathBuf {
        dirs.root.join("launch.json")
    }

    pub fn save(&self, dirs: &PodDirs) -> Result<(), RuntimeError> {
        let path = Launch::path(dirs);
        std::fs::write(&path, serde_json::to_vec_pretty(self).expect("serializes"))
            .map_err(RuntimeError::io("write", &path))
    }

    pub fn load(dirs: &PodDirs) -> Result<Launch, RuntimeError> {
        let path = Launch::path(dirs);
        let text = std::fs::read(&path).map_err(RuntimeError::io("read", &path))?;
        serde_json::from_slice(&text).map_err(|e| RuntimeError::State {
            path,
            reason: e.to_string(),
        })
    }
}

/// The image's config as the pod conversion wants it.
pub fn image_defaults(image: &Image) -> ContainerDefaults {
    let config = image.process();
    ContainerDefaults {
        entrypoint: config
            .and_then(|c| c.entrypoint().clone())
            .unwrap_or_default(),
        cmd: config.and_then(|c| c.cmd().clone()).unwrap_or_default(),
        env: config.and_then(|c| c.env().clone()).unwrap_or_default(),
        working_dir: config.and_then(|c| c.working_dir().clone()),
        user: config
            .and_then(|c| c.user().clone())
            .filter(|u| !u.is_empty()),
    }
}

/// The pod's plan with the images of `launch`.
pub fn plan(
    pod: &Pod,
    launch: &Launch,
    store: &ImageStore,
) -> Result<(PodPlan, BTreeMap<String, Image>), RuntimeError> {
    let mut images = BTreeMap::new();
    for (container, id) in &launch.images {
        let digest: Digest = id.parse().map_err(|_| RuntimeError::Pod {
            pod: pod.name.clone(),
            reason: format!("bad image id {id:?} for container {container:?}"),
        })?;
        images.insert(container.clone(), store.image(&digest)?);
    }
    let mut options = ConvertOptions::new(launch.vm.mem_mib << 20);
    options.config_dir = launch.config_dir.clone();
    let plan = plan_pod(pod, &options, |c| {
        images.get(&c.name).map(image_defaults).unwrap_or_default()
    })?;
    Ok((plan, images))
}

/// A started pod: its VMM process and agent.
pub struct Started {
    pub vmm: Child,
    pub agent: AgentClient,
}

/// Provides the share, boots the VM, creates the sandbox and every container (not started).
/// On failure everything made so far is taken down again.
pub fn start(
    dirs: &PodDirs,
    plan: &mut PodPlan,
    images: &BTreeMap<String, Image>,
    launch: &Launch,
    store: &ImageStore,
) -> Result<Started, RuntimeError> {
    let mut vmm = None;
    let result = start_inner(dirs, plan, images, launch, store, &mut vmm);
    match result {
        Ok(agent) => Ok(Started {
            vmm: vmm.expect("set when the agent answered"),
            agent,
        }),
        Err(e) => {
            teardown(dirs, vmm.as_mut(), None, &plan.sandbox.sandbox_id);
            Err(e)
        }
    }
}

fn start_inner(
    dirs: &PodDirs,
    plan: &mut PodPlan,
    images: &BTreeMap<String, Image>,
    launch: &Launch,
    store: &ImageStore,
    vmm: &mut Option<Child>,
) -> Result<AgentClient, RuntimeError> {
    // The share is sealed nodev,nosuid before anything goes in (see `host_mounts`).
    crate::host_mounts::seal_share(&dirs.share())?;
    share::write_pod_files(dirs, &plan.files)?;
    for volume in &plan.volumes {
        let read_only = plan.containers.iter().all(|c| {
            c.pending_mounts.iter().all(|m| {
                m.read_only
                    || !matches!(&m.source, nutshell_podspec::MountSource::Volume { volume: v, .. } if *v == volume.name)
            })
        });
        share::provide_volume(dirs, volume, read_only)?;
    }
    for container in &plan.containers {
        let image = images.get(&container.id).ok_or_else(|| RuntimeError::Pod {
            pod: plan.sandbox.sandbox_id.clone(),
            reason: format!("no image for container {:?}", container.id),
        })?;
        share::mount_rootfs(dirs, &container.id, &store.lower_dirs(image)?)?;
    }
    let cgroup = create_host_cgroup(dirs, &plan.sandbox.sandbox_id, &launch.vm)?;
    *vmm = Some(vm::spawn(
        &launch.vm,
        dirs,
        &dirs.supervisor_log(),
        Some(&cgroup),
    )?);
    let agent = vm::agent(dirs, AGENT_TIMEOUT)?;
    agent
        .create_sandbox(&share::sandbox_request(plan), CALL)
        .map_err(|e| RuntimeError::agent("CreateSandbox", e))?;
    for container in &mut plan.containers {
        container.resolve_mounts(|m| {
            share::guest_source(dirs, &plan.sandbox.sandbox_id, &plan.volumes, m)
        })?;
        let request: CreateContainerRequest = container.to_request(
            &plan.sandbox.sandbox_id,
            &PodDirs::guest_rootfs(&container.id),
        )?;
        agent
            .create_container(&request, CALL)
            .map_err(|e| RuntimeError::agent(&format!("CreateContainer {}", container.id), e))?;
    }
    Ok(agent)
}

/// The file recording the pod's host cgroup.
pub fn host_cgroup_record(dirs: &PodDirs) -> PathBuf {
    dirs.root.join(host_cgroup::RECORD_FILE)
}

/// Creates the host cgroup of the pod's VMM, `/nutshell/<pod>` sized from `vm` with the
/// default overhead, and records it in the pod directory, where [`teardown`] (in whatever
/// process) finds it.
fn create_host_cgroup(dirs: &PodDirs, pod: &str, vm: &VmSpec) -> Result<HostCgroup, RuntimeError> {
    let path = Path::new(HOST_CGROUP_PARENT).join(pod);
    let mut cgroup = HostCgroup::plan(&path, vm.host_limits(Overhead::default()))?;
    cgroup.create_recorded(&host_cgroup_record(dirs))?;
    Ok(cgroup)
}

/// Takes the pod down: the sandbox (when the agent is reachable), the VM (asked to power off,
/// killed after a grace period), its host cgroup, every mount of the share, and the share
/// itself. Best effort at every step, so that it can clean up after any failure; returns what
/// it could not do.
pub fn teardown(
    dirs: &PodDirs,
    vmm: Option<&mut Child>,
    agent: Option<&AgentClient>,
    sandbox_id: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(agent) = agent {
        let mut req = DestroySandboxRequest::new();
        req.sandbox_id = sandbox_id.to_string();
        if let Err(e) = agent.destroy_sandbox(&req, CALL) {
            problems.push(format!("DestroySandbox: {e}"));
        }
        let _ = agent.shutdown(Duration::from_secs(5));
    }
    if let Some(child) = vmm {
        stop_vmm(child, Duration::from_secs(10));
    }
    // Once the VMM is gone (a VMM that is not this process's child was killed by the caller).
    problems.extend(host_cgroup::remove_recorded(&host_cgroup_record(dirs)));
    if let Err(e) = crate::host_mounts::unmount_all_below(&dirs.root) {
        problems.push(e.to_string());
    }
    for dir in [dirs.share(), dirs.root.join("scratch")] {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                problems.push(format!("cannot remove {}: {e}", dir.display()));
            }
        }
    }
    let _ = std::fs::remove_file(dirs.vsock());
    problems
}

/// Waits up to `grace` for the VMM to exit (after the agent's Shutdown), then kills it.
pub fn stop_vmm(child: &mut Child, grace: Duration) {
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Releases the pod's image references and drops layers no image needs any more.
pub fn release_images(
    store: &ImageStore,
    pod: &str,
    images: &[String],
) -> Result<(), RuntimeError> {
    for id in images {
        if let Ok(digest) = id.parse::<Digest>() {
            store.remove_ref(&digest, pod)?;
        }
    }
    store.gc()?;
    Ok(())
}

/// The manifest copy of a pod.
pub fn manifest_path(dirs: &PodDirs) -> PathBuf {
    dirs.root.join(MANIFEST_FILE)
}

/// Reads and validates a pod's manifest copy.
pub fn load_manifest(path: &Path) -> Result<Pod, RuntimeError> {
    let text = std::fs::read_to_string(path).map_err(RuntimeError::io("read", path))?;
    Ok(nutshell_podspec::parse_pod(&text)?)
}
