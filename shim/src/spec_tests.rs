use super::*;

/// The spec `ctr run` writes (containerd 1.6's defaults), trimmed.
const CTR_SPEC: &str = r#"{
  "ociVersion": "1.0.2-dev",
  "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "echo hi; exit 3"],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "cwd": "/",
    "apparmorProfile": "cri-containerd.apparmor.d",
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}], "noNewPrivileges": true},
  "root": {"path": "rootfs"},
  "hooks": {"createRuntime": [{"path": "/usr/bin/true"}]},
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
  ],
  "linux": {
    "resources": {"devices": [{"allow": false, "access": "rwm"}],
      "memory": {"limit": 134217728}, "cpu": {"quota": 150000, "period": 100000}},
    "cgroupsPath": "/default/hi",
    "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
    "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
    "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]
  }
}"#;

/// An app container as CRI writes it: the sandbox's namespaces by path, binds of host files.
const CRI_APP_SPEC: &str = r#"{
  "ociVersion": "1.0.2-dev",
  "process": {"user": {"uid": 0, "gid": 0}, "args": ["sleep", "9"], "cwd": "/"},
  "root": {"path": "rootfs"},
  "annotations": {
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.sandbox-id": "sb1"
  },
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/containerd/sandboxes/sb1/hosts", "options": ["rbind", "rprivate", "rw"]},
    {"destination": "/etc/resolv.conf", "type": "bind", "source": "/var/lib/containerd/sandboxes/sb1/resolv.conf", "options": ["rbind", "rprivate", "ro"]},
    {"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/sandboxes/sb1/shm", "options": ["rbind", "rprivate", "rw"]}
  ],
  "linux": {
    "cgroupsPath": "kubepods-besteffort-pod1.slice:cri-containerd:app",
    "namespaces": [{"type": "pid"}, {"type": "ipc", "path": "/proc/4242/ns/ipc"},
      {"type": "uts", "path": "/proc/4242/ns/uts"}, {"type": "mount"},
      {"type": "network", "path": "/proc/4242/ns/net"}]
  }
}"#;

const CRI_SANDBOX_SPEC: &str = r#"{
  "ociVersion": "1.0.2-dev",
  "process": {"user": {"uid": 65535, "gid": 65535}, "args": ["/pause"], "cwd": "/"},
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "web-0",
  "annotations": {
    "io.kubernetes.cri.container-type": "sandbox",
    "io.kubernetes.cri.sandbox-id": "sb1",
    "io.kubernetes.cri.sandbox-name": "web-0",
    "io.kubernetes.cri.sandbox-namespace": "shop",
    "io.kubernetes.cri.sandbox-uid": "0b1c",
    "io.kubernetes.cri.sandbox-memory": "268435456"
  },
  "linux": {
    "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0"},
    "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
      {"type": "network", "path": "/var/run/netns/cni-1234"}]
  }
}"#;

fn parse(json: &str) -> Spec {
    serde_json::from_str(json).unwrap()
}

fn namespace_paths(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<String>)> {
    spec.linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .clone()
        .unwrap()
        .iter()
        .map(|ns| {
            (
                ns.typ(),
                ns.path().as_ref().map(|p| p.display().to_string()),
            )
        })
        .collect()
}

#[test]
fn roles_follow_the_cri_annotations() {
    let ctr = parse(CTR_SPEC);
    assert_eq!(Role::of(&ctr, "hi"), Role::Standalone);
    assert_eq!(Role::Standalone.pod_id("hi"), "hi");
    let app = Role::of(&parse(CRI_APP_SPEC), "app");
    assert_eq!(
        app,
        Role::Container {
            sandbox_id: "sb1".into()
        }
    );
    assert_eq!(app.pod_id("app"), "sb1");
    assert!(!app.owns_pod());
    let sandbox = Role::of(&parse(CRI_SANDBOX_SPEC), "sb1");
    assert_eq!(
        sandbox,
        Role::Sandbox {
            sandbox_id: "sb1".into()
        }
    );
    assert!(sandbox.owns_pod() && Role::Standalone.owns_pod());
}

#[test]
fn a_ctr_spec_loses_what_belongs_to_the_host() {
    let guest = guest_spec(
        &parse(CTR_SPEC),
        "hi",
        &Role::Standalone,
        "/run/nutshell-share/containers/hi/rootfs",
    )
    .unwrap();
    let spec = guest.spec;
    assert!(guest.binds.is_empty());
    assert!(spec.hooks().is_none());
    let linux = spec.linux().as_ref().unwrap();
    assert!(linux.cgroups_path().is_none());
    assert!(linux.devices().is_none());
    assert!(
        linux.resources().is_some(),
        "limits stay: the agent applies them"
    );
    assert!(spec
        .process()
        .as_ref()
        .unwrap()
        .apparmor_profile()
        .is_none());
    assert_eq!(
        spec.root().as_ref().unwrap().path(),
        Path::new("/run/nutshell-share/containers/hi/rootfs")
    );
    assert!(namespace_paths(&spec).iter().all(|(_, p)| p.is_none()));
    assert_eq!(spec.mounts().as_ref().unwrap().len(), 3);
    assert_eq!(pod_size(&parse(CTR_SPEC)), (128 << 20, 1500));
}

#[test]
fn an_app_container_joins_the_pod_and_gets_its_host_files_through_the_share() {
    let role = Role::Container {
        sandbox_id: "sb1".into(),
    };
    let guest = guest_spec(&parse(CRI_APP_SPEC), "app", &role, "/r").unwrap();
    assert_eq!(
        namespace_paths(&guest.spec),
        [
            (LinuxNamespaceType::Pid, None),
            (LinuxNamespaceType::Ipc, Some("pod".into())),
            (LinuxNamespaceType::Uts, Some("pod".into())),
            (LinuxNamespaceType::Mount, None),
            (LinuxNamespaceType::Network, Some("pod".into())),
        ]
    );
    assert_eq!(
        guest.binds,
        [
            HostBind {
                index: 0,
                source: "/var/lib/containerd/sandboxes/sb1/hosts".into(),
                read_only: false
            },
            HostBind {
                index: 1,
                source: "/var/lib/containerd/sandboxes/sb1/resolv.conf".into(),
                read_only: true
            },
        ]
    );
    let mounts = guest.spec.mounts().as_ref().unwrap();
    assert_eq!(
        mounts[1].source().as_deref(),
        Some(Path::new("/run/nutshell-share/containers/app/mounts/0"))
    );
    assert_eq!(
        mounts[2].source().as_deref(),
        Some(Path::new("/run/nutshell-share/containers/app/mounts/1"))
    );
    assert_eq!(mounts[3].typ().as_deref(), Some("tmpfs"), "/dev/shm");
    assert!(guest
        .spec
        .linux()
        .as_ref()
        .unwrap()
        .cgroups_path()
        .is_none());
}

#[test]
fn host_namespaces_other_than_the_pods_are_refused() {
    let json = CTR_SPEC.replace(
        r#"{"type": "network"}"#,
        r#"{"type": "network", "path": "/var/run/netns/other"}"#,
    );
    let err = guest_spec(&parse(&json), "hi", &Role::Standalone, "/r")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/var/run/netns/other") && err.contains("host namespace"),
        "{err}"
    );
    let json = CTR_SPEC.replace(
        r#""source": "proc", "options""#,
        r#""source": "proc", "options": ["bind"], "x""#,
    );
    let err = guest_spec(&parse(&json), "hi", &Role::Standalone, "/r")
        .unwrap_err()
        .to_string();
    assert!(err.contains("relative source proc"), "{err}");
}

#[test]
fn the_sandbox_request_comes_from_the_first_container() {
    let spec = parse(CRI_SANDBOX_SPEC);
    let guest = guest_spec(
        &spec,
        "sb1",
        &Role::Sandbox {
            sandbox_id: "sb1".into(),
        },
        "/r",
    )
    .unwrap();
    let net = namespace_paths(&guest.spec)
        .into_iter()
        .find(|(t, _)| *t == LinuxNamespaceType::Network);
    assert_eq!(
        net,
        Some((LinuxNamespaceType::Network, None)),
        "the CNI netns becomes pause's own"
    );
    let req = sandbox_request(&spec, "sb1", "k8s.io");
    assert_eq!(
        (req.pod_uid.as_str(), req.pod_name.as_str()),
        ("0b1c", "web-0")
    );
    assert_eq!(
        (req.pod_namespace.as_str(), req.hostname.as_str()),
        ("shop", "web-0")
    );
    assert_eq!(
        req.sysctls.get("net.ipv4.ip_unprivileged_port_start"),
        Some(&"0".to_string())
    );
    let ns = req.namespace_options.unwrap();
    assert_eq!(ns.network.enum_value().unwrap(), NamespaceMode::POD);
    assert_eq!(ns.pid.enum_value().unwrap(), NamespaceMode::POD);
    assert_eq!(pod_size(&spec), (256 << 20, 0));

    // `ctr run`: its own pid namespace; `--net-host` (no network entry): the guest's.
    let json = CTR_SPEC.replace(r#", {"type": "network"}"#, "");
    let req = sandbox_request(&parse(&json), "hi", "default");
    let ns = req.namespace_options.unwrap();
    assert_eq!(ns.network.enum_value().unwrap(), NamespaceMode::NODE);
    assert_eq!(ns.ipc.enum_value().unwrap(), NamespaceMode::POD);
    assert_eq!(ns.pid.enum_value().unwrap(), NamespaceMode::CONTAINER);
    assert_eq!(
        (req.pod_uid.as_str(), req.pod_namespace.as_str()),
        ("hi", "default")
    );
    assert_eq!(req.hostname, "hi");
}
