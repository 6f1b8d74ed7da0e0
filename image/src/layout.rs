//! OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/...`), as a directory or a tar.
//!
//! Each entry of `index.json` is one image; an entry that is itself an index (a multi-platform
//! image, nested as deep as `MAX_INDEX_DEPTH`) resolves to its first linux/amd64 manifest, and a
//! manifest without a platform is taken as it is. Docker's manifest media types are read like
//! the OCI ones. Every manifest, index and config blob is checked against its digest and size.

use oci_spec::image::{Arch, Descriptor, ImageIndex, ImageManifest, MediaType, Os, Platform};

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::plan::{self, blob_path, Candidate, ImagePlan, PlannedLayer, JSON_LIMIT};
use crate::source::Source;

const MAX_INDEX_DEPTH: usize = 4;
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Where containerd and Docker put an image's full name.
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Whether the input looks like an OCI image layout.
pub(crate) fn detect(source: &Source) -> bool {
    source.exists("oci-layout") && source.exists("index.json")
}

/// Reads the layout's image named `wanted` (or its only image) up to its layers.
pub(crate) fn plan(source: &Source, wanted: Option<&str>) -> Result<ImagePlan> {
    let layout: serde_json::Value = plan::parse_json(
        source,
        "oci-layout",
        &source.read_small("oci-layout", JSON_LIMIT, "oci-layout")?,
    )?;
    if layout
        .get("imageLayoutVersion")
        .and_then(|v| v.as_str())
        .is_none()
    {
        return Err(ImageError::Invalid {
            input: source.input().to_path_buf(),
            what: "oci-layout has no imageLayoutVersion".into(),
        });
    }
    let index: ImageIndex = plan::parse_json(
        source,
        "index.json",
        &source.read_small("index.json", JSON_LIMIT, "index.json")?,
    )?;

    let mut candidates: Vec<Candidate<Descriptor>> = Vec::new();
    for entry in index.manifests() {
        let Some(manifest) = resolve(source, entry, 0)? else {
            continue;
        };
        let names = names_of(entry);
        match candidates
            .iter_mut()
            .find(|c| c.item.digest() == manifest.digest())
        {
            Some(existing) => plan::merge_names(&mut existing.names, names),
            None => candidates.push(Candidate {
                names,
                item: manifest,
            }),
        }
    }
    let chosen = plan::choose(source.input(), candidates, wanted)?;

    let (manifest_digest, bytes) = read_blob(source, &chosen.item, "manifest")?;
    let manifest: ImageManifest =
        plan::parse_json(source, &format!("manifest {manifest_digest}"), &bytes)?;
    let (config_digest, config_bytes) = read_blob(source, manifest.config(), "config")?;
    let (config, diff_ids) = plan::parse_config(
        source,
        &config_digest,
        &config_bytes,
        manifest.layers().len(),
    )?;

    let layers = manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(layer, diff_id)| {
            let digest = Digest::try_from(layer.digest())?;
            Ok(PlannedLayer {
                diff_id,
                file: blob_path(&digest),
                blob_digest: Some(digest),
                size: Some(layer.size()),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ImagePlan {
        names: chosen.names,
        manifest_digest: Some(manifest_digest),
        config_digest,
        config,
        layers,
    })
}

/// The linux/amd64 image manifest that `desc` stands for, if any.
fn resolve(source: &Source, desc: &Descriptor, depth: usize) -> Result<Option<Descriptor>> {
    if !platform_matches(desc.platform().as_ref()) {
        return Ok(None);
    }
    match desc.media_type() {
        MediaType::ImageManifest => Ok(Some(desc.clone())),
        MediaType::Other(t) if t == DOCKER_MANIFEST => Ok(Some(desc.clone())),
        MediaType::ImageIndex => resolve_index(source, desc, depth),
        MediaType::Other(t) if t == DOCKER_MANIFEST_LIST => resolve_index(source, desc, depth),
        // Artifacts, attestations, anything else: not an image to run.
        _ => Ok(None),
    }
}

fn resolve_index(source: &Source, desc: &Descriptor, depth: usize) -> Result<Option<Descriptor>> {
    if depth >= MAX_INDEX_DEPTH {
        return Err(ImageError::Invalid {
            input: source.input().to_path_buf(),
            what: format!(
                "index {} is nested more than {MAX_INDEX_DEPTH} deep",
                desc.digest()
            ),
        });
    }
    let (digest, bytes) = read_blob(source, desc, "index")?;
    let index: ImageIndex = plan::parse_json(source, &format!("index {digest}"), &bytes)?;
    for child in index.manifests() {
        if let Some(manifest) = resolve(source, child, depth + 1)? {
            return Ok(Some(manifest));
        }
    }
    Ok(None)
}

/// No platform at all is fine (a single-platform image); otherwise it must be linux/amd64.
fn platform_matches(platform: Option<&Platform>) -> bool {
    platform.is_none_or(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
}

fn names_of(desc: &Descriptor) -> Vec<String> {
    let Some(annotations) = desc.annotations() else {
        return Vec::new();
    };
    [ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME]
        .iter()
        .filter_map(|key| annotations.get(*key).cloned())
        .take(1)
        .collect()
}

/// Reads a JSON blob (`what`: manifest, index, config) and checks its size and digest.
fn read_blob(source: &Source, desc: &Descriptor, what: &str) -> Result<(Digest, Vec<u8>)> {
    let digest = Digest::try_from(desc.digest())?;
    let label = format!("{what} {digest}");
    let bytes = source.read_small(&blob_path(&digest), JSON_LIMIT, &label)?;
    if bytes.len() as u64 != desc.size() {
        return Err(ImageError::SizeMismatch {
            blob: format!("{}: {label}", source.input().display()),
            expected: desc.size(),
            actual: bytes.len() as u64,
        });
    }
    plan::verify(source, &label, &digest, &bytes)?;
    Ok((digest, bytes))
}
