//! The guest agent accepts what this crate makes: every golden pod's sandbox request passes
//! the agent's pause checks, and every container spec (placeholders resolved to real paths)
//! goes through the agent's own spec, namespace, process, cgroup and mount planning.

use std::path::{Path, PathBuf};

use nutshell_agent::container::namespaces::{plan_namespaces, NamespaceSource};
use nutshell_agent::container::{mounts, parse_spec, process_setup, resources};
use nutshell_agent::sandbox::pause_flags;
use nutshell_podspec::sandbox::NamespaceMode;
use nutshell_podspec::{parse_pod, plan_pod, ContainerDefaults, ConvertOptions, MountSource};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn expected(mode: NamespaceMode, own: NamespaceSource) -> NamespaceSource {
    match mode {
        NamespaceMode::Pod => NamespaceSource::Pod,
        NamespaceMode::Node => NamespaceSource::Node,
        NamespaceMode::Container => own,
    }
}

fn check_case(case: &str) {
    let yaml = std::fs::read_to_string(golden_dir().join(case).join("pod.yaml")).unwrap();
    let pod = parse_pod(&yaml).unwrap();
    let images: std::collections::BTreeMap<String, ContainerDefaults> =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("images.json")).unwrap())
            .unwrap();
    let mut opts = ConvertOptions::new(2 << 30);
    opts.config_dir = Some(golden_dir().join("config"));
    let mut plan = plan_pod(&pod, &opts, |c| images[&c.image].clone()).unwrap();

    let req = plan.sandbox.to_request();
    pause_flags(&req).unwrap_or_else(|e| panic!("{case}: pause refuses the request: {e}"));

    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    for container in &mut plan.containers {
        assert!(
            container.to_request("sb", "/rootfs").is_err(),
            "placeholders left"
        );
        container
            .resolve_mounts(|pending| -> std::io::Result<PathBuf> {
                let path = match &pending.source {
                    MountSource::Volume { volume, sub_path } => {
                        let dir = scratch.path().join("volumes").join(volume);
                        std::fs::create_dir_all(&dir)?;
                        match sub_path {
                            Some(sub) => {
                                let file = dir.join(sub);
                                std::fs::create_dir_all(file.parent().unwrap())?;
                                std::fs::write(&file, "")?;
                                file
                            }
                            None => dir,
                        }
                    }
                    MountSource::PodFile(file) => {
                        let path = scratch.path().join(file.file_name());
                        std::fs::write(&path, "")?;
                        path
                    }
                };
                Ok(path)
            })
            .unwrap();
        let req = container
            .to_request(&plan.sandbox.sandbox_id, "/rootfs")
            .unwrap();
        let what = format!("{case}/{}", container.id);
        let spec = parse_spec(&req.oci_spec_json).unwrap_or_else(|e| panic!("{what}: {e}"));

        let ns = plan_namespaces(&spec).unwrap_or_else(|e| panic!("{what}: {e}"));
        let modes = plan.sandbox.namespaces;
        assert_eq!(
            ns.net,
            expected(modes.network, NamespaceSource::Own),
            "{what}"
        );
        assert_eq!(ns.uts, expected(modes.uts, NamespaceSource::Own), "{what}");
        assert_eq!(ns.ipc, expected(modes.ipc, NamespaceSource::Own), "{what}");
        assert_eq!(ns.pid, expected(modes.pid, NamespaceSource::Own), "{what}");

        let process = spec.process().clone().unwrap();
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
        process_setup::plan_process(&process, seccomp).unwrap_or_else(|e| panic!("{what}: {e}"));

        let linux_resources = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        let writes =
            resources::to_writes(&linux_resources).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            writes.iter().any(|(file, _)| *file == "cpu.weight"),
            "{what}: {writes:?}"
        );

        let planned = mounts::plan_mounts(&root, &spec).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            planned.len(),
            spec.mounts().as_ref().unwrap().len(),
            "{what}"
        );
    }
    let pod_resources = plan.sandbox.resources.clone();
    resources::to_writes(&pod_resources).unwrap_or_else(|e| panic!("{case}: pod cgroup: {e}"));
}

#[test]
fn agent_accepts_every_golden_pod() {
    for case in [
        "seed",
        "shared-pid",
        "host-namespaces",
        "volumes",
        "security",
    ] {
        check_case(case);
    }
}
