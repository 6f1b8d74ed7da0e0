//! `cargo xtask bench-images`: does a container's start cost grow with its image? The busybox
//! test image (a few MB) beside the same image with a 500 MB layer on top, both imported
//! (unpacked once) first; then `nutshell run` to Running and `nutshell rm -f`, interleaved,
//! N times each. Prints the import times, the medians and the ratio big/small.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nutshell_tests::pod_guest::{scratch_dir, GuestImage};
use serde_json::{json, Value};

use crate::artifacts;
use crate::nutshell_cli::NutshellCli;

const BIG_LAYER_MIB: u64 = 500;

pub fn run(args: &[String]) -> Result<()> {
    let image = artifacts::build_all()?;
    GuestImage::build_test().context("the busybox test image")?;
    let mut inner = vec!["bench-images-inner"];
    inner.extend(args.iter().map(String::as_str));
    artifacts::run_on_kvm_host(&image, &inner, Duration::from_secs(1500))
}

fn sh(script: &str) -> Result<String> {
    let out = Command::new("sh").args(["-c", script]).output()?;
    if !out.status.success() {
        bail!(
            "`{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn sha256_of(path: &Path) -> Result<String> {
    let out = sh(&format!("sha256sum {}", path.display()))?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Writes `value` as a blob of the layout; its digest and size.
fn write_blob(blobs: &Path, value: &Value) -> Result<(String, u64)> {
    let bytes = serde_json::to_vec(value)?;
    let tmp = blobs.join("tmp.json");
    std::fs::write(&tmp, &bytes)?;
    let digest = sha256_of(&tmp)?;
    std::fs::rename(&tmp, blobs.join(&digest))?;
    Ok((format!("sha256:{digest}"), bytes.len() as u64))
}

/// The test image's layout plus one uncompressed layer holding a `size_mib` file.
fn big_image(small: &Path, dir: &Path, size_mib: u64) -> Result<()> {
    sh(&format!("cp -a {} {}", small.display(), dir.display()))?;
    let blobs = dir.join("blobs/sha256");
    let work = dir.with_extension("layer");
    std::fs::create_dir_all(work.join("data"))?;
    sh(&format!(
        "head -c {}M /dev/urandom > {}/data/blob && tar -C {} -cf {}/layer.tar data && rm -rf {}/data",
        size_mib,
        work.display(),
        work.display(),
        work.display(),
        work.display()
    ))?;
    let layer = work.join("layer.tar");
    let layer_digest = sha256_of(&layer)?;
    let layer_size = std::fs::metadata(&layer)?.len();
    std::fs::rename(&layer, blobs.join(&layer_digest))?;
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let manifest_ref = &index["manifests"][0];
    let manifest_digest = manifest_ref["digest"].as_str().context("index digest")?;
    let blob = |digest: &str| -> Result<Value> {
        let hex = digest.trim_start_matches("sha256:");
        Ok(serde_json::from_slice(&std::fs::read(blobs.join(hex))?)?)
    };
    let mut manifest = blob(manifest_digest)?;
    let mut config = blob(
        manifest["config"]["digest"]
            .as_str()
            .context("config digest")?,
    )?;
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .context("diff_ids")?
        .push(json!(format!("sha256:{layer_digest}")));
    let (config_digest, config_size) = write_blob(&blobs, &config)?;
    manifest["config"]["digest"] = json!(config_digest);
    manifest["config"]["size"] = json!(config_size);
    manifest["layers"]
        .as_array_mut()
        .context("layers")?
        .push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer_size,
        }));
    let (digest, size) = write_blob(&blobs, &manifest)?;
    let mut index = index.clone();
    index["manifests"][0]["digest"] = json!(digest);
    index["manifests"][0]["size"] = json!(size);
    index["manifests"][0]["annotations"] =
        json!({"org.opencontainers.image.ref.name": "nutshell/busybox-big:test"});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn manifest(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - {{name: c, image: \"{image}\", command: [sleep, '600']}}\n"
    )
}

/// On the KVM host.
pub fn inner(args: &[String]) -> Result<()> {
    let rounds: usize = match args.iter().position(|a| a == "--rounds") {
        Some(i) => args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .context("--rounds N")?,
        None => 5,
    };
    let image = artifacts::from_env()?;
    let root = nutshell_tests::ground::repo_root();
    let dir = scratch_dir("bench-images")?;
    let result = (|| -> Result<()> {
        let small = root.join("build/test-image/oci");
        let big = dir.join("big-oci");
        println!("making a {BIG_LAYER_MIB} MB layer on top of the test image ...");
        big_image(&small, &big, BIG_LAYER_MIB)?;
        let cli = NutshellCli::new(image, &dir);
        let (small_import, _) = cli.quiet(&["image", "import", small.to_str().unwrap()])?;
        let (big_import, printed) = cli.quiet(&["image", "import", big.to_str().unwrap()])?;
        // `import` prints the image id (config digest) first; the pod names the image by it.
        let big_id = printed
            .split_whitespace()
            .next()
            .context("image id")?
            .to_string();
        println!(
            "first import (unpack): small {:.2} s, big {:.2} s",
            small_import.as_secs_f64(),
            big_import.as_secs_f64()
        );
        let small_pod = dir.join("small.yaml");
        let big_pod = dir.join("big.yaml");
        std::fs::write(&small_pod, manifest("small", "nutshell/busybox:test"))?;
        std::fs::write(&big_pod, manifest("big", &big_id))?;
        let (mut small_runs, mut big_runs) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            for (pod, file, runs) in [
                ("small", &small_pod, &mut small_runs),
                ("big", &big_pod, &mut big_runs),
            ] {
                runs.push(cli.quiet(&["run", file.to_str().unwrap()])?.0);
                cli.quiet(&["rm", "-f", pod])?;
            }
        }
        let (s, b) = (median(small_runs), median(big_runs));
        println!(
            "nutshell run to Running over {rounds} rounds (median): small image {:.2} s, \
             {BIG_LAYER_MIB} MB image {:.2} s, ratio big/small {:.2}",
            s.as_secs_f64(),
            b.as_secs_f64(),
            b.as_secs_f64() / s.as_secs_f64()
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
