//! Golden files: each folder under tests/golden/ holds a `pod.yaml`; the conversion's OCI spec
//! of every container is compared with `<container>.spec.json` and the rest of the plan
//! (sandbox, CreateSandbox request, pending mounts, volumes, /etc files) with `plan.json`, as
//! serde_json values. `NUTSHELL_UPDATE_GOLDEN=1 cargo test -p nutshell-podspec --test golden`
//! rewrites them; review the diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nutshell_podspec::{parse_pod, plan_pod, ContainerDefaults, ConvertOptions, PodPlan};
use nutshell_protocol::agent::CreateSandboxRequest;
use serde_json::{json, Value};

/// The guest memory the Burstable oom_score_adj values are computed against.
const MACHINE_MEMORY: u64 = 2 << 30;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn images() -> BTreeMap<String, ContainerDefaults> {
    let text = std::fs::read_to_string(golden_dir().join("images.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn options() -> ConvertOptions {
    let mut opts = ConvertOptions::new(MACHINE_MEMORY);
    opts.config_dir = Some(golden_dir().join("config"));
    opts
}

fn plan(case: &str) -> PodPlan {
    let yaml = std::fs::read_to_string(golden_dir().join(case).join("pod.yaml")).unwrap();
    let pod = parse_pod(&yaml).unwrap_or_else(|e| panic!("{case}: {e}"));
    let images = images();
    plan_pod(&pod, &options(), |c| {
        images
            .get(&c.image)
            .cloned()
            .unwrap_or_else(|| panic!("no image config for {}", c.image))
    })
    .unwrap_or_else(|e| panic!("{case}: {e}"))
}

/// The request as JSON (protobuf messages have no serde), resources parsed.
fn request_json(req: &CreateSandboxRequest) -> Value {
    let ns = req.namespace_options.as_ref().unwrap();
    let dns = req
        .dns
        .as_ref()
        .map(|d| json!({"servers": d.servers, "searches": d.searches, "options": d.options}));
    json!({
        "sandboxId": req.sandbox_id,
        "podUid": req.pod_uid,
        "podName": req.pod_name,
        "podNamespace": req.pod_namespace,
        "hostname": req.hostname,
        "dns": dns,
        "sysctls": req.sysctls.iter().collect::<BTreeMap<_, _>>(),
        "cgroupParent": req.cgroup_parent,
        "resources": serde_json::from_slice::<Value>(&req.resources_json).unwrap(),
        "namespaceOptions": {
            "network": format!("{:?}", ns.network.enum_value().unwrap()),
            "pid": format!("{:?}", ns.pid.enum_value().unwrap()),
            "ipc": format!("{:?}", ns.ipc.enum_value().unwrap()),
            "targetId": ns.target_id,
        },
    })
}

/// The plan without the specs, host paths relative to the config directory.
fn plan_json(plan: &PodPlan) -> Value {
    let mut value = serde_json::to_value(plan).unwrap();
    let containers = value["containers"].as_array_mut().unwrap();
    for c in containers.iter_mut() {
        c.as_object_mut().unwrap().remove("spec");
    }
    let config = options().config_dir.unwrap().display().to_string();
    for volume in value["volumes"].as_array_mut().unwrap() {
        if let Some(dir) = volume["hostDir"].as_str() {
            volume["hostDir"] = json!(dir.replace(&config, "<config>"));
        }
    }
    value["sandboxRequest"] = request_json(&plan.sandbox.to_request());
    value
}

fn check(path: &Path, actual: &Value) {
    let text = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if std::env::var_os("NUTSHELL_UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &text).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (NUTSHELL_UPDATE_GOLDEN=1 writes it)",
            path.display()
        )
    });
    let expected: Value = serde_json::from_str(&expected).unwrap();
    assert!(
        &expected == actual,
        "{} differs (NUTSHELL_UPDATE_GOLDEN=1 rewrites it); actual:\n{text}",
        path.display()
    );
}

fn run_case(case: &str) {
    let plan = plan(case);
    let dir = golden_dir().join(case);
    for container in &plan.containers {
        check(
            &dir.join(format!("{}.spec.json", container.id)),
            &container.spec_json(),
        );
    }
    check(&dir.join("plan.json"), &plan_json(&plan));
}

#[test]
fn seed_pod() {
    run_case("seed");
}

#[test]
fn shared_pid_namespace() {
    run_case("shared-pid");
}

#[test]
fn host_namespaces_and_privileged() {
    run_case("host-namespaces");
}

#[test]
fn volumes_and_image_defaults() {
    run_case("volumes");
}

#[test]
fn security_context() {
    run_case("security");
}

/// Every golden folder is exercised by a test above.
#[test]
fn no_untested_golden_case() {
    let tested = [
        "seed",
        "shared-pid",
        "host-namespaces",
        "volumes",
        "security",
    ];
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.path().join("pod.yaml").exists() {
            let name = entry.file_name().into_string().unwrap();
            assert!(
                tested.contains(&name.as_str()),
                "golden case {name} has no test"
            );
        }
    }
}
