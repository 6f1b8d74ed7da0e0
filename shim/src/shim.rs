//! The shim binary's three faces (containerd's runtime v2 protocol):
//! * `start`: finds (or starts) the shim process of the container's pod and prints its socket
//!   address. Containers are grouped by `io.kubernetes.cri.sandbox-id`, so a CRI pod's app
//!   containers reach the shim, and the VM, of their sandbox; a container without it is its
//!   own pod.
//! * the daemon: serves the task API until `Shutdown` finds no container left.
//! * `delete`: cleans up one container after its shim died (or failed to start): its mounts,
//!   and the VM when the container owned the pod.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use containerd_shim::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::synchronous::util::write_address;
use containerd_shim::{Config, ExitSignal, Flags, StartOpts};
use nutshell_protocol::agent::{RemoveContainerRequest, SignalProcessRequest};

use crate::config::ShimConfig;
use crate::events::Events;
use crate::mounts;
use crate::pod;
use crate::process::timestamp;
use crate::service::{Service, KILLED};
use crate::spec::{self, Role};

/// The containerd runtime type this shim serves.
pub const RUNTIME_ID: &str = "io.containerd.nutshell.v2";

/// The containerd-shim options the shim runs with: it reaps its own children (the VMMs,
/// through their `Child` handles), so the library's reaper, which would take their exit
/// statuses, is off. The log level is the configuration file's (`NUTSHELL_SHIM_CONFIG` or
/// the default file: runtime options only arrive with the first Create, after logging began).
pub fn shim_config() -> Config {
    let log_level = ShimConfig::load(None)
        .map(|c| c.log_level)
        .unwrap_or_else(|_| "info".into());
    Config {
        default_log_level: log_level,
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    }
}

/// The shim process.
pub struct NutshellShim {
    id: String,
    namespace: String,
    bundle: PathBuf,
    socket: String,
    exit: Arc<ExitSignal>,
    service: OnceLock<Service>,
}

fn current_dir() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

/// The pod a container belongs to, from the bundle's spec (its own id when unreadable).
pub fn grouping(bundle: &Path, id: &str) -> String {
    match spec::load(bundle) {
        Ok(spec) => Role::of(&spec, id).pod_id(id).to_string(),
        Err(_) => id.to_string(),
    }
}

impl containerd_shim::Shim for NutshellShim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        NutshellShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            bundle: if args.bundle.is_empty() {
                current_dir()
            } else {
                PathBuf::from(&args.bundle)
            },
            socket: args.socket.clone(),
            exit: Arc::new(ExitSignal::default()),
            service: OnceLock::new(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let group = grouping(&self.bundle, &opts.id);
        // A second container of the pod gets the running shim's address: the spawned
        // process finds the socket in use and answers with it.
        let (_pid, address) = containerd_shim::spawn(opts, &group, Vec::new())?;
        write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        cleanup_container(&self.bundle, &self.namespace, &self.id);
        Ok(DeleteResponse {
            pid: 0,
            exit_status: KILLED,
            exited_at: Some(timestamp(std::time::SystemTime::now())).into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
        if let Some(service) = self.service.get() {
            service.events().flush(Duration::from_secs(5));
        }
        // containerd may remove the bundle (where the library reads the address from)
        // before the library gets to removing the socket: do it here.
        let path = self.socket.strip_prefix("unix://").unwrap_or(&self.socket);
        let _ = std::fs::remove_file(path);
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        let events = Events::start(publisher, self.namespace.clone());
        let service = Service::new(&self.namespace, events, self.exit.clone());
        let _ = self.service.set(service.clone());
        service
    }
}

/// The `delete` subcommand's work for container `id` of `bundle`. Best effort: problems go
/// to stderr, which containerd logs.
fn cleanup_container(bundle: &Path, namespace: &str, id: &str) {
    let role = spec::load(bundle)
        .map(|s| Role::of(&s, id))
        .unwrap_or(Role::Standalone);
    let dirs = match pod::linked_pod(bundle) {
        Some(dirs) => dirs,
        None => match ShimConfig::load(None) {
            Ok(config) => pod::pod_dirs(&config, namespace, role.pod_id(id)),
            Err(e) => {
                eprintln!("nutshell shim delete {id}: {e}");
                return;
            }
        },
    };
    if !role.owns_pod() && dirs.vsock().exists() {
        // The VM lives on (its shim died): take the container out of it.
        if let Ok(agent) = nutshell_runtime::vm::agent(&dirs, Duration::from_secs(2)) {
            let mut kill = SignalProcessRequest::new();
            kill.container_id = id.to_string();
            kill.signal = 9;
            kill.all = true;
            let _ = agent.signal_process(&kill, pod::CALL);
            std::thread::sleep(Duration::from_millis(200));
            let mut remove = RemoveContainerRequest::new();
            remove.container_id = id.to_string();
            let _ = agent.remove_container(&remove, pod::CALL);
        }
    }
    let rootfs = bundle.join("rootfs");
    for problem in mounts::release(&dirs, id, Some(&rootfs)) {
        eprintln!("nutshell shim delete {id}: {problem}");
    }
    if role.owns_pod() {
        for problem in pod::cleanup_dead(&dirs) {
            eprintln!("nutshell shim delete {id}: {problem}");
        }
    }
    remove_dead_socket(bundle);
}

/// Removes the shim socket named in `<bundle>/address` when no shim answers on it any more.
fn remove_dead_socket(bundle: &Path) {
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let path = Path::new(address.trim().trim_start_matches("unix://"));
    let is_socket = path
        .symlink_metadata()
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
    if is_socket && std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}
