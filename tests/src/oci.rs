//! OCI runtime spec builders with the defaults containerd's CRI plugin gives a container
//! (namespaces, mounts, capabilities, masked and read-only paths, rlimits), as the agent
//! receives them: JSON.
//!
//! Namespace paths follow `CreateContainerRequest` in `protocol/proto/agent.proto`: no path
//! means "a new one of the container's own" (network, uts and ipc then follow the sandbox's
//! NamespaceOptions), `"pod"` joins pause's, `"node"` the guest root's, `"container:<id>"`
//! another container's.

use std::collections::HashSet;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources,
    LinuxResourcesBuilder, Mount, PosixRlimitBuilder, PosixRlimitType, Process, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder,
};

/// Where a container's namespace of one kind comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NsSource {
    /// A new namespace of the container's own (no path).
    Own,
    /// Pause's (path `pod`).
    Pod,
    /// The guest's root namespace (path `node`).
    Node,
    /// Another container's (path `container:<id>`).
    Container(String),
}

impl NsSource {
    fn path(&self) -> Option<String> {
        match self {
            NsSource::Own => None,
            NsSource::Pod => Some("pod".into()),
            NsSource::Node => Some("node".into()),
            NsSource::Container(id) => Some(format!("container:{id}")),
        }
    }
}

/// containerd's default capability set for containers.
pub const CRI_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// containerd's masked and read-only paths (the same lists the `nutshell` CLI uses).
pub use nutshell_podspec::container_spec::{
    MASKED_PATHS as CRI_MASKED_PATHS, READONLY_PATHS as CRI_READONLY_PATHS,
};

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The mounts containerd gives every container (the `nutshell` CLI's defaults).
pub fn cri_mounts() -> Vec<Mount> {
    serde_json::from_value(serde_json::Value::Array(
        nutshell_podspec::container_spec::default_mounts(false),
    ))
    .expect("the default mounts are OCI mounts")
}

/// A process as containerd's CRI plugin describes one: root, cwd `/`, PATH, the default
/// capabilities (no ambient), no_new_privileges off, RLIMIT_NOFILE 1024.
pub fn cri_process(args: &[&str], terminal: bool) -> Process {
    let caps: HashSet<Capability> = CRI_CAPABILITIES.into_iter().collect();
    ProcessBuilder::default()
        .terminal(terminal)
        .user(
            UserBuilder::default()
                .uid(0u32)
                .gid(0u32)
                .build()
                .expect("valid user"),
        )
        .args(args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
        .env(vec![PATH_ENV.to_string(), "HOSTNAME=ignored".to_string()])
        .cwd("/")
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .inheritable(HashSet::new())
                .ambient(HashSet::new())
                .build()
                .expect("valid capabilities"),
        )
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(1024u64)
            .soft(1024u64)
            .build()
            .expect("valid rlimit")])
        .no_new_privileges(false)
        .oom_score_adj(0)
        .build()
        .expect("a CRI process is valid")
}

/// Memory limit and CPU quota/period as OCI linux resources; `None` leaves one unset.
pub fn resources(memory_bytes: Option<i64>, cpu: Option<(i64, u64)>) -> LinuxResources {
    let mut builder = LinuxResourcesBuilder::default();
    if let Some(limit) = memory_bytes {
        builder = builder.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .build()
                .expect("valid memory"),
        );
    }
    if let Some((quota, period)) = cpu {
        builder = builder.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(period)
                .build()
                .expect("valid cpu"),
        );
    }
    builder.build().expect("valid resources")
}

/// JSON of anything serializable from oci-spec (resources, processes, specs).
pub fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("oci-spec types serialize")
}

/// A container spec in the making; see the module docs for namespace paths.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub args: Vec<String>,
    pub terminal: bool,
    pub env: Vec<String>,
    pub network: NsSource,
    pub ipc: NsSource,
    pub uts: NsSource,
    pub pid: NsSource,
    pub resources: Option<LinuxResources>,
    pub cgroups_path: Option<String>,
}

impl ContainerSpec {
    /// A CRI container of a pod: network, ipc and uts pause's, pid and mnt its own.
    pub fn cri(args: &[&str]) -> ContainerSpec {
        ContainerSpec {
            args: args.iter().map(|a| a.to_string()).collect(),
            terminal: false,
            env: Vec::new(),
            network: NsSource::Pod,
            ipc: NsSource::Pod,
            uts: NsSource::Pod,
            pid: NsSource::Own,
            resources: None,
            cgroups_path: None,
        }
    }

    pub fn pid(mut self, source: NsSource) -> Self {
        self.pid = source;
        self
    }

    pub fn network(mut self, source: NsSource) -> Self {
        self.network = source;
        self
    }

    pub fn ipc(mut self, source: NsSource) -> Self {
        self.ipc = source;
        self
    }

    pub fn terminal(mut self, terminal: bool) -> Self {
        self.terminal = terminal;
        self
    }

    pub fn env(mut self, var: &str) -> Self {
        self.env.push(var.to_string());
        self
    }

    pub fn resources(mut self, resources: LinuxResources) -> Self {
        self.resources = Some(resources);
        self
    }

    fn namespaces(&self) -> Vec<LinuxNamespace> {
        let ns = |typ, source: &NsSource| {
            let mut b = LinuxNamespaceBuilder::default().typ(typ);
            if let Some(path) = source.path() {
                b = b.path(path);
            }
            b.build().expect("valid namespace")
        };
        vec![
            ns(LinuxNamespaceType::Pid, &self.pid),
            ns(LinuxNamespaceType::Ipc, &self.ipc),
            ns(LinuxNamespaceType::Uts, &self.uts),
            ns(LinuxNamespaceType::Mount, &NsSource::Own),
            ns(LinuxNamespaceType::Network, &self.network),
        ]
    }

    /// The full OCI runtime spec.
    pub fn spec(&self) -> Spec {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut process = cri_process(&args, self.terminal);
        if let Some(env) = process.env_mut() {
            env.extend(self.env.iter().cloned());
        }
        let mut linux = LinuxBuilder::default()
            .namespaces(self.namespaces())
            .masked_paths(CRI_MASKED_PATHS.map(String::from).to_vec())
            .readonly_paths(CRI_READONLY_PATHS.map(String::from).to_vec());
        if let Some(resources) = &self.resources {
            linux = linux.resources(resources.clone());
        }
        if let Some(path) = &self.cgroups_path {
            linux = linux.cgroups_path(path);
        }
        SpecBuilder::default()
            .version("1.1.0")
            .process(process)
            .root(
                RootBuilder::default()
                    .path("rootfs")
                    .readonly(false)
                    .build()
                    .expect("valid root"),
            )
            .mounts(cri_mounts())
            .linux(linux.build().expect("valid linux section"))
            .build()
            .expect("a CRI spec is valid")
    }

    /// The spec as the agent receives it.
    pub fn json(&self) -> Vec<u8> {
        to_json(&self.spec())
    }
}

/// An exec's OCI Process as JSON (`ExecProcessRequest.process_json`).
pub fn exec_process_json(args: &[&str], terminal: bool) -> Vec<u8> {
    to_json(&cri_process(args, terminal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_spec_namespaces_follow_the_pod_table() {
        let spec: serde_json::Value =
            serde_json::from_slice(&ContainerSpec::cri(&["sh"]).json()).unwrap();
        let ns = spec["linux"]["namespaces"].as_array().unwrap();
        let path_of = |kind: &str| {
            ns.iter()
                .find(|n| n["type"] == kind)
                .map(|n| n["path"].as_str().map(str::to_owned))
                .unwrap_or_else(|| panic!("no {kind} namespace in {ns:?}"))
        };
        assert_eq!(path_of("network").as_deref(), Some("pod"));
        assert_eq!(path_of("ipc").as_deref(), Some("pod"));
        assert_eq!(path_of("uts").as_deref(), Some("pod"));
        assert_eq!(path_of("pid"), None);
        assert_eq!(path_of("mount"), None);
        assert!(ns.iter().all(|n| n["type"] != "user"));
    }

    #[test]
    fn resources_serialize_as_oci() {
        let r: serde_json::Value = serde_json::from_slice(&to_json(&resources(
            Some(64 << 20),
            Some((50_000, 100_000)),
        )))
        .unwrap();
        assert_eq!(r["memory"]["limit"], 67_108_864);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["cpu"]["period"], 100_000);
    }

    #[test]
    fn target_and_node_paths() {
        let spec = ContainerSpec::cri(&["sh"])
            .pid(NsSource::Container("app".into()))
            .network(NsSource::Node);
        let json = String::from_utf8(spec.json()).unwrap();
        assert!(json.contains("container:app"), "{json}");
        assert!(json.contains("\"node\""), "{json}");
    }
}
