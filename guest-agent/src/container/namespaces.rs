//! Where each namespace of a container comes from: the OCI spec's `linux.namespaces` (as the
//! host writes it from the CRI `NamespaceOption`) to a [`NamespacePlan`]. Pure: no system
//! calls; the sandbox resolves the plan to `/proc/<pid>/ns/*` files.
//!
//! Behind the VM boundary the node is the guest, so NODE never reaches the host machine.
//!
//! | spec entry (`type`, `path`)        | CRI mode  | the container's namespace                      |
//! |------------------------------------|-----------|------------------------------------------------|
//! | network/ipc/uts, no path or "pod"  | POD       | pause's (shared by the pod)                    |
//! | network/ipc/uts/pid, "node"        | NODE      | the guest's root one (hostNetwork/hostIPC/hostPID) |
//! | kind missing from the list         | NODE      | the guest's root one (OCI: no entry = the runtime's) |
//! | pid, no path                       | CONTAINER | its own; the init process is PID 1 in it       |
//! | pid, "pod"                         | POD       | pause's (shareProcessNamespace; pause is PID 1) |
//! | any of them, "container:<id>"      | TARGET    | that running container's (init process's)      |
//! | any of them, an absolute path      | -         | that namespace file (`/proc/<pid>/ns/<kind>`)  |
//! | mount                              | -         | always its own: its mounts vanish with it      |
//! | cgroup, no path                    | -         | its own, made after joining its cgroup         |
//! | user, time                         | -         | rejected: not offered by this runtime          |
//!
//! Network, ipc and uts without a path follow the sandbox: pause holds the pod's namespaces
//! (or stays in the guest's for a NODE sandbox), and a container joins whatever pause has.
//! An exec joins every namespace of its container's init process (mnt last, pid by forking).

use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::ContainerError;

/// Where one namespace comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceSource {
    /// A new namespace of the container's own.
    Own,
    /// Pause's.
    Pod,
    /// The guest's root namespace: nothing to join.
    Node,
    /// The init process of another container.
    Container(String),
    /// A namespace file given by path.
    Path(PathBuf),
}

/// The namespaces a container gets, by kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespacePlan {
    pub net: NamespaceSource,
    pub ipc: NamespaceSource,
    pub uts: NamespaceSource,
    pub pid: NamespaceSource,
    /// A private cgroup namespace.
    pub own_cgroup: bool,
}

impl NamespacePlan {
    /// (kind as in /proc/<pid>/ns, CLONE_NEW* flag, source) for the namespaces that can be
    /// shared, in the order they are joined (pid last: it takes effect at the next fork).
    pub fn shared_kinds(&self) -> [(&'static str, libc::c_int, &NamespaceSource); 4] {
        [
            ("net", libc::CLONE_NEWNET, &self.net),
            ("ipc", libc::CLONE_NEWIPC, &self.ipc),
            ("uts", libc::CLONE_NEWUTS, &self.uts),
            ("pid", libc::CLONE_NEWPID, &self.pid),
        ]
    }

    /// Container ids this plan needs running (TARGET modes).
    pub fn targets(&self) -> Vec<&str> {
        self.shared_kinds()
            .iter()
            .filter_map(|(_, _, source)| match source {
                NamespaceSource::Container(id) => Some(id.as_str()),
                _ => None,
            })
            .collect()
    }
}

fn unsupported(message: String) -> ContainerError {
    ContainerError::Unsupported(message)
}

/// The source named by an entry's path, for a kind whose no-path meaning is `default`.
fn source_of(
    kind: &str,
    path: Option<&str>,
    default: NamespaceSource,
) -> Result<NamespaceSource, ContainerError> {
    match path {
        None | Some("") => Ok(default),
        Some("pod") => Ok(NamespaceSource::Pod),
        Some("node") => Ok(NamespaceSource::Node),
        Some(p) if p.starts_with("container:") => {
            let id = &p["container:".len()..];
            if id.is_empty() {
                return Err(unsupported(format!(
                    "{kind} namespace path {p:?} names no container"
                )));
            }
            Ok(NamespaceSource::Container(id.to_string()))
        }
        Some(p) if p.starts_with('/') => Ok(NamespaceSource::Path(PathBuf::from(p))),
        Some(p) => Err(unsupported(format!(
            "{kind} namespace path {p:?}: expected \"pod\", \"node\", \"container:<id>\" or an absolute path"
        ))),
    }
}

/// The namespace plan of `spec` (see the module documentation).
pub fn plan_namespaces(spec: &Spec) -> Result<NamespacePlan, ContainerError> {
    let entries = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut plan = NamespacePlan {
        net: NamespaceSource::Node,
        ipc: NamespaceSource::Node,
        uts: NamespaceSource::Node,
        pid: NamespaceSource::Node,
        own_cgroup: false,
    };
    for entry in &entries {
        let path = entry.path().as_ref().map(|p| p.to_string_lossy());
        let path = path.as_deref();
        match entry.typ() {
            LinuxNamespaceType::Network => {
                plan.net = source_of("network", path, NamespaceSource::Pod)?
            }
            LinuxNamespaceType::Ipc => plan.ipc = source_of("ipc", path, NamespaceSource::Pod)?,
            LinuxNamespaceType::Uts => plan.uts = source_of("uts", path, NamespaceSource::Pod)?,
            LinuxNamespaceType::Pid => plan.pid = source_of("pid", path, NamespaceSource::Own)?,
            LinuxNamespaceType::Mount => {
                if path.is_some_and(|p| !p.is_empty()) {
                    return Err(unsupported(format!(
                        "mount namespace path {:?}: a container always gets its own",
                        path.unwrap_or_default()
                    )));
                }
            }
            LinuxNamespaceType::Cgroup => {
                if path.is_some_and(|p| !p.is_empty()) {
                    return Err(unsupported(
                        "cgroup namespace paths are not supported".into(),
                    ));
                }
                plan.own_cgroup = true;
            }
            other => {
                return Err(unsupported(format!(
                    "{other:?} namespaces are not offered by this runtime"
                )))
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::NamespaceSource::*;
    use super::*;

    fn spec(namespaces: &str) -> Spec {
        let json = format!(
            r#"{{"ociVersion":"1.0.2","process":{{"args":["sh"],"cwd":"/","user":{{"uid":0,"gid":0}}}},
               "root":{{"path":"rootfs"}},"linux":{{"namespaces":[{namespaces}]}}}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn cri_default_pod_shares_net_ipc_uts_with_own_pid() {
        let plan = plan_namespaces(&spec(
            r#"{"type":"network","path":"pod"},{"type":"ipc"},{"type":"uts"},{"type":"pid"},{"type":"mount"}"#,
        ))
        .unwrap();
        assert_eq!(
            (plan.net, plan.ipc, plan.uts, plan.pid),
            (Pod, Pod, Pod, Own)
        );
        assert!(!plan.own_cgroup);
    }

    #[test]
    fn share_process_namespace_joins_pause_pid() {
        let plan =
            plan_namespaces(&spec(r#"{"type":"pid","path":"pod"},{"type":"mount"}"#)).unwrap();
        assert_eq!(plan.pid, Pod);
    }

    #[test]
    fn node_mode_and_missing_entries_stay_in_the_guest_root() {
        let plan = plan_namespaces(&spec(
            r#"{"type":"network","path":"node"},{"type":"pid","path":"node"},{"type":"ipc","path":"node"}"#,
        ))
        .unwrap();
        assert_eq!((plan.net, plan.ipc, plan.pid), (Node, Node, Node));
        // uts is not listed at all: the runtime's (guest root's) namespace.
        assert_eq!(plan.uts, Node);
        let plan = plan_namespaces(&spec("")).unwrap();
        assert_eq!(
            (plan.net, plan.ipc, plan.uts, plan.pid),
            (Node, Node, Node, Node)
        );
    }

    #[test]
    fn target_mode_names_the_container() {
        let plan = plan_namespaces(&spec(
            r#"{"type":"pid","path":"container:app"},{"type":"network","path":"pod"}"#,
        ))
        .unwrap();
        assert_eq!(plan.pid, Container("app".into()));
        assert_eq!(plan.targets(), ["app"]);
        assert!(plan_namespaces(&spec(r#"{"type":"pid","path":"container:"}"#)).is_err());
    }

    #[test]
    fn container_mode_for_network_and_paths() {
        let plan = plan_namespaces(&spec(
            r#"{"type":"network","path":"/proc/7/ns/net"},{"type":"cgroup"}"#,
        ))
        .unwrap();
        assert_eq!(plan.net, Path("/proc/7/ns/net".into()));
        assert!(plan.own_cgroup);
    }

    #[test]
    fn unsupported_entries_are_named() {
        for (entries, needle) in [
            (r#"{"type":"user"}"#, "User"),
            (
                r#"{"type":"mount","path":"/proc/1/ns/mnt"}"#,
                "mount namespace path",
            ),
            (r#"{"type":"pid","path":"elsewhere"}"#, "\"elsewhere\""),
        ] {
            let err = plan_namespaces(&spec(entries)).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn join_order_puts_pid_last() {
        let plan = plan_namespaces(&spec(r#"{"type":"pid"}"#)).unwrap();
        let kinds: Vec<&str> = plan.shared_kinds().iter().map(|k| k.0).collect();
        assert_eq!(kinds, ["net", "ipc", "uts", "pid"]);
    }
}
