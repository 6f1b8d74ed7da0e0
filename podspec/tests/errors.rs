//! Manifests nutshell rejects: each error names the field path (and the value where one is
//! at fault).

use nutshell_podspec::{parse_pod, plan_pod, ContainerDefaults, ConvertOptions, PodSpecError};

/// A valid pod with `containers` spliced in under `spec:` (each line indented by 2).
fn pod(spec: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n{spec}")
}

fn error(yaml: &str) -> PodSpecError {
    match parse_pod(yaml) {
        Ok(pod) => panic!("accepted: {pod:?}\n{yaml}"),
        Err(e) => e,
    }
}

/// The error's text starts with `path: ` and contains every needle.
fn assert_error(yaml: &str, path: &str, needles: &[&str]) {
    let err = error(yaml);
    let text = err.to_string();
    assert_eq!(err.path(), path, "{text}");
    assert!(text.starts_with(&format!("{path}: ")), "{text}");
    for needle in needles {
        assert!(text.contains(needle), "{text:?} lacks {needle:?}");
    }
}

const ONE: &str = "  containers:\n  - name: a\n    image: busybox\n";

#[test]
fn unsupported_field_names_its_path() {
    let yaml = pod("  containers:\n  - name: a\n    image: busybox\n  - name: b\n    image: busybox\n    livenessProbe:\n      exec: {command: [true]}\n");
    let err = error(&yaml);
    assert!(matches!(err, PodSpecError::Unsupported { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "spec.containers[1].livenessProbe: not supported by nutshell (line 11)"
    );
}

#[test]
fn unknown_field_names_its_path_and_the_expected_ones() {
    assert_error(
        &pod("  containers:\n  - name: a\n    image: busybox\n    imagee: x\n"),
        "spec.containers[0].imagee",
        &["unknown field", "`image`"],
    );
    assert_error(
        &pod("  containers:\n  - name: a\n    image: busybox\n    resources:\n      limits:\n        ephemeral-storage: 1Gi\n"),
        "spec.containers[0].resources.limits.ephemeral-storage",
        &["not supported by nutshell"],
    );
    assert_error(
        &format!("{}  nodeSelector: {{disk: ssd}}\n", pod(ONE)),
        "spec.nodeSelector",
        &["not supported by nutshell"],
    );
}

#[test]
fn bad_quantities_name_field_and_value() {
    for (value, path, reason) in [
        (
            "12Zi",
            "spec.containers[0].resources.limits.memory",
            "unknown suffix \"Zi\"",
        ),
        (
            "\"-1\"",
            "spec.containers[0].resources.limits.memory",
            "must not be negative",
        ),
        (
            "abc",
            "spec.containers[0].resources.limits.memory",
            "not a number",
        ),
    ] {
        let yaml = pod(&format!(
            "  containers:\n  - name: a\n    image: busybox\n    resources:\n      limits:\n        memory: {value}\n"
        ));
        let shown = value.trim_matches('"');
        assert_error(
            &yaml,
            path,
            &[&format!("invalid quantity \"{shown}\""), reason],
        );
    }
    assert_error(
        &pod("  containers:\n  - name: a\n    image: busybox\n    resources:\n      requests:\n        cpu: 1.5.0\n"),
        "spec.containers[0].resources.requests.cpu",
        &["\"1.5.0\""],
    );
    assert_error(
        &pod("  containers:\n  - name: a\n    image: busybox\n    resources:\n      requests: {cpu: 2}\n      limits: {cpu: 1}\n"),
        "spec.containers[0].resources.requests.cpu",
        &["above the limit"],
    );
}

#[test]
fn empty_or_missing_image() {
    assert_error(
        &pod("  containers:\n  - name: a\n    image: \"\"\n"),
        "spec.containers[0].image",
        &["required"],
    );
    assert_error(
        &pod("  containers:\n  - name: a\n"),
        "spec.containers[0].image",
        &["required"],
    );
}

#[test]
fn duplicate_names() {
    assert_error(
        &pod("  containers:\n  - name: a\n    image: busybox\n  - name: a\n    image: busybox\n"),
        "spec.containers[1].name",
        &["duplicate container name \"a\""],
    );
    assert_error(
        &format!(
            "{}  volumes:\n  - name: v\n    emptyDir: {{}}\n  - name: v\n    emptyDir: {{}}\n",
            pod(ONE)
        ),
        "spec.volumes[1].name",
        &["duplicate volume name \"v\""],
    );
}

#[test]
fn value_from_is_unsupported() {
    let yaml = pod("  containers:\n  - name: a\n    image: busybox\n    env:\n    - name: X\n      value: y\n    - name: NODE\n      valueFrom:\n        fieldRef: {fieldPath: spec.nodeName}\n");
    assert_eq!(
        error(&yaml).to_string(),
        "spec.containers[0].env[1].valueFrom: not supported by nutshell"
    );
}

#[test]
fn mount_of_an_unknown_volume() {
    assert_error(
        &pod("  containers:\n  - name: a\n    image: busybox\n    volumeMounts:\n    - name: data\n      mountPath: /data\n"),
        "spec.containers[0].volumeMounts[0].name",
        &["no volume named \"data\""],
    );
}

#[test]
fn privileged_with_capabilities() {
    assert_error(
        &pod("  containers:\n  - name: a\n    image: busybox\n    securityContext:\n      privileged: true\n      capabilities:\n        add: [NET_ADMIN]\n"),
        "spec.containers[0].securityContext.capabilities",
        &["privileged"],
    );
    assert_error(
        &pod("  containers:\n  - name: a\n    image: busybox\n    securityContext:\n      capabilities:\n        add: [NET_ADMIN, TIME_TRAVEL]\n"),
        "spec.containers[0].securityContext.capabilities.add[1]",
        &["unknown capability \"TIME_TRAVEL\""],
    );
}

#[test]
fn mount_paths_and_sub_paths() {
    let with_mount = |mount: &str| {
        format!(
            "{}  volumes:\n  - name: v\n    emptyDir: {{}}\n",
            pod(&format!("  containers:\n  - name: a\n    image: busybox\n    volumeMounts:\n    - name: v\n{mount}"))
        )
    };
    assert_error(
        &with_mount("      mountPath: data\n"),
        "spec.containers[0].volumeMounts[0].mountPath",
        &["must be absolute"],
    );
    assert_error(
        &with_mount("      mountPath: /data\n      subPath: ../etc\n"),
        "spec.containers[0].volumeMounts[0].subPath",
        &["'..'"],
    );
    assert_error(
        &with_mount("      mountPath: /data\n      subPath: /etc\n"),
        "spec.containers[0].volumeMounts[0].subPath",
        &["must be relative"],
    );
    assert_error(
        &with_mount("      mountPath: /data\n    - name: v\n      mountPath: /data/\n"),
        "spec.containers[0].volumeMounts[1].mountPath",
        &["mounted twice"],
    );
}

#[test]
fn names_must_be_dns_labels() {
    assert_error(
        &pod("  containers:\n  - name: My_App\n    image: busybox\n"),
        "spec.containers[0].name",
        &["\"My_App\"", "DNS-1123 label"],
    );
    assert_error(
        &format!(
            "{}  volumes:\n  - name: Data\n    emptyDir: {{}}\n",
            pod(ONE)
        ),
        "spec.volumes[0].name",
        &["DNS-1123 label"],
    );
    assert_error(
        &pod(ONE).replace("name: p\n", "name: Pod_1\n"),
        "metadata.name",
        &["DNS-1123 subdomain"],
    );
}

#[test]
fn pod_level_rules() {
    assert_error(
        &pod(ONE).replace("apiVersion: v1", "apiVersion: apps/v1"),
        "apiVersion",
        &["\"apps/v1\""],
    );
    assert_error(
        &pod(ONE).replace("kind: Pod", "kind: Deployment"),
        "kind",
        &["\"Deployment\""],
    );
    assert_error(
        &pod("  containers: []\n"),
        "spec.containers",
        &["at least one"],
    );
    assert_error(
        &format!(
            "{}  hostPID: true\n  shareProcessNamespace: true\n",
            pod(ONE)
        ),
        "spec.shareProcessNamespace",
        &["hostPID"],
    );
    assert_error(
        &format!("{}  restartPolicy: Sometimes\n", pod(ONE)),
        "spec.restartPolicy",
        &["\"Sometimes\""],
    );
    assert_error(
        &format!(
            "{}  volumes:\n  - name: v\n    emptyDir: {{medium: HugePages}}\n",
            pod(ONE)
        ),
        "spec.volumes[0].emptyDir.medium",
        &["\"HugePages\""],
    );
    assert_error(
        &format!("{}  volumes:\n  - name: v\n", pod(ONE)),
        "spec.volumes[0]",
        &["needs a source"],
    );
    assert_error(
        &format!("{}  hostNetwork: true\n  securityContext:\n    sysctls:\n    - {{name: net.ipv4.ip_forward, value: \"1\"}}\n", pod(ONE)),
        "spec.securityContext.sysctls",
        &["net.ipv4.ip_forward"],
    );
}

#[test]
fn yaml_type_errors_name_the_path() {
    assert_error(
        &pod("  containers:\n  - name: a\n    image: busybox\n    command: sleep 1\n"),
        "spec.containers[0].command",
        &["invalid type: string \"sleep 1\", expected a sequence"],
    );
}

#[test]
fn config_volumes_need_their_directory() {
    let yaml = format!(
        "{}  volumes:\n  - name: cfg\n    configMap: {{name: missing}}\n",
        pod(ONE)
    );
    let pod = parse_pod(&yaml).unwrap();
    let defaults = |_: &_| ContainerDefaults {
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    let err = plan_pod(&pod, &ConvertOptions::new(1 << 30), defaults).unwrap_err();
    assert_eq!(err.path(), "spec.volumes[0].configMap.name");
    assert!(
        err.to_string().contains("needs a config directory"),
        "{err}"
    );
    let mut opts = ConvertOptions::new(1 << 30);
    opts.config_dir =
        Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/config"));
    let err = plan_pod(&pod, &opts, defaults).unwrap_err();
    assert!(err.to_string().contains("\"missing\" not found"), "{err}");
}

#[test]
fn conversion_errors_name_the_container() {
    let pod = parse_pod(&pod(ONE)).unwrap();
    let opts = ConvertOptions::new(1 << 30);
    let err = plan_pod(&pod, &opts, |_| ContainerDefaults::default()).unwrap_err();
    assert_eq!(err.path(), "spec.containers[0].command");
    let named_user = |_: &_| ContainerDefaults {
        cmd: vec!["sh".into()],
        user: Some("nginx".into()),
        ..Default::default()
    };
    let err = plan_pod(&pod, &opts, named_user).unwrap_err();
    assert_eq!(err.path(), "spec.containers[0].image");
    assert!(
        err.to_string().contains("\"nginx\" is not numeric"),
        "{err}"
    );
}
