//! The pod sandbox (pause, the pod's shared namespaces and cgroup) as the agent's
//! `CreateSandboxRequest`, and the per-pod files containers get at /etc/hosts, /etc/hostname
//! and /etc/resolv.conf.
//!
//! Ids: the sandbox id is the pod name and the pod uid `metadata.uid` (the pod name when
//! absent), so the pod cgroup is `<QoS parent>/pod<uid>` as under the kubelet's cgroupfs driver:
//! `kubepods/pod<uid>` (Guaranteed), `kubepods/burstable/pod<uid>`,
//! `kubepods/besteffort/pod<uid>`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use nutshell_protocol::agent::{
    CreateSandboxRequest, DnsConfig as ProtoDnsConfig, NamespaceMode as ProtoNamespaceMode,
    NamespaceOptions,
};
use oci_spec::runtime::LinuxResources;
use serde::Serialize;

use crate::model::{DnsConfig, Pod};
use crate::resources::{pod_resources, qos_class, QosClass};

/// Where the pod's containers get one kind of namespace (CRI `NamespaceMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum NamespaceMode {
    /// Pause's, shared by the pod.
    Pod,
    /// Each container's own (pid without shareProcessNamespace).
    Container,
    /// The guest's root namespace (hostNetwork, hostPID, hostIPC).
    Node,
}

impl NamespaceMode {
    fn proto(self) -> ProtoNamespaceMode {
        match self {
            NamespaceMode::Pod => ProtoNamespaceMode::POD,
            NamespaceMode::Container => ProtoNamespaceMode::CONTAINER,
            NamespaceMode::Node => ProtoNamespaceMode::NODE,
        }
    }

    /// The `linux.namespaces[].path` a container spec uses for it (`None`: its own).
    pub fn spec_path(self) -> Option<&'static str> {
        match self {
            NamespaceMode::Pod => Some("pod"),
            NamespaceMode::Container => None,
            NamespaceMode::Node => Some("node"),
        }
    }
}

/// The namespace modes of a pod. uts follows the network: a hostNetwork pod has the node's
/// hostname, as with the kubelet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PodNamespaces {
    pub network: NamespaceMode,
    pub uts: NamespaceMode,
    pub ipc: NamespaceMode,
    pub pid: NamespaceMode,
}

impl PodNamespaces {
    pub fn of(pod: &Pod) -> PodNamespaces {
        let shared_or_node = |host: bool| {
            if host {
                NamespaceMode::Node
            } else {
                NamespaceMode::Pod
            }
        };
        PodNamespaces {
            network: shared_or_node(pod.host_network),
            uts: shared_or_node(pod.host_network),
            ipc: shared_or_node(pod.host_ipc),
            pid: if pod.host_pid {
                NamespaceMode::Node
            } else if pod.share_process_namespace {
                NamespaceMode::Pod
            } else {
                NamespaceMode::Container
            },
        }
    }
}

/// Everything the agent needs to create the pod's sandbox.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxPlan {
    pub sandbox_id: String,
    pub pod_uid: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub hostname: String,
    pub qos_class: QosClass,
    /// e.g. "kubepods/burstable"; the pod cgroup is `<cgroup_parent>/pod<pod_uid>`.
    pub cgroup_parent: String,
    pub namespaces: PodNamespaces,
    /// The pod cgroup's limits (see [`crate::resources::pod_resources`]).
    pub resources: LinuxResources,
    pub dns: Option<DnsConfig>,
    pub sysctls: BTreeMap<String, String>,
}

impl SandboxPlan {
    pub fn of(pod: &Pod) -> SandboxPlan {
        let qos = qos_class(pod);
        SandboxPlan {
            sandbox_id: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            pod_name: pod.name.clone(),
            pod_namespace: pod.namespace.clone(),
            hostname: pod.effective_hostname(),
            qos_class: qos,
            cgroup_parent: qos.cgroup_parent().to_string(),
            namespaces: PodNamespaces::of(pod),
            resources: pod_resources(pod),
            dns: pod.dns.clone(),
            sysctls: pod.sysctls.clone(),
        }
    }

    /// The pod cgroup below the cgroup root: `<cgroup_parent>/pod<uid>`.
    pub fn pod_cgroup(&self) -> String {
        format!("{}/pod{}", self.cgroup_parent, self.pod_uid)
    }

    /// The agent's `CreateSandbox` request.
    pub fn to_request(&self) -> CreateSandboxRequest {
        let mut req = CreateSandboxRequest::new();
        req.sandbox_id = self.sandbox_id.clone();
        req.pod_uid = self.pod_uid.clone();
        req.pod_name = self.pod_name.clone();
        req.pod_namespace = self.pod_namespace.clone();
        req.hostname = self.hostname.clone();
        if let Some(dns) = &self.dns {
            let mut proto = ProtoDnsConfig::new();
            proto.servers = dns.nameservers.iter().map(IpAddr::to_string).collect();
            proto.searches = dns.searches.clone();
            proto.options = dns.options.clone();
            req.dns = Some(proto).into();
        }
        req.sysctls = self
            .sysctls
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        req.cgroup_parent = self.cgroup_parent.clone();
        req.resources_json =
            serde_json::to_vec(&self.resources).expect("oci-spec resources serialize");
        let mut options = NamespaceOptions::new();
        options.network = self.namespaces.network.proto().into();
        options.pid = self.namespaces.pid.proto().into();
        options.ipc = self.namespaces.ipc.proto().into();
        req.namespace_options = Some(options).into();
        req
    }
}

/// The pod's /etc files, written once by the runtime and bound into every container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodFiles {
    /// /etc/hostname: the hostname and a newline.
    pub hostname: String,
    /// /etc/hosts: the kubelet's managed hosts file.
    pub hosts: String,
}

/// The address the hostname resolves to while the pod has no IP (Debian's convention).
pub const NO_IP_HOST_ADDRESS: &str = "127.0.1.1";

impl PodFiles {
    /// The files for `pod`; `pod_ips` are the addresses its hostname resolves to (none yet:
    /// 127.0.1.1).
    pub fn of(pod: &Pod, pod_ips: &[IpAddr]) -> PodFiles {
        let hostname = pod.effective_hostname();
        let mut hosts = String::from(
            "# Kubernetes-managed hosts file.\n\
             127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\n\
             fe00::0\tip6-mcastprefix\n\
             fe00::1\tip6-allnodes\n\
             fe00::2\tip6-allrouters\n",
        );
        if pod_ips.is_empty() {
            hosts.push_str(&format!("{NO_IP_HOST_ADDRESS}\t{hostname}\n"));
        }
        for ip in pod_ips {
            hosts.push_str(&format!("{ip}\t{hostname}\n"));
        }
        PodFiles {
            hostname: format!("{hostname}\n"),
            hosts,
        }
    }
}
