//! Docker archives, as `docker save` and `skopeo copy ... docker-archive:` write them: a tar
//! with `manifest.json` listing, per image, its config file, its tags and its layer tars
//! (uncompressed in older archives, possibly gzip-compressed; Docker 25 and later point at
//! `blobs/sha256/<hex>` files, earlier ones at `<id>/layer.tar`, often a symlink to another).
//!
//! The archive itself addresses nothing by digest except where a file name is one: the config
//! is checked when named `<hex>.json` or `blobs/sha256/<hex>`, a layer when named
//! `blobs/sha256/<hex>`. Every layer is checked against its diff_id from the config in any case.

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::Result;
use crate::plan::{self, Candidate, ImagePlan, PlannedLayer, JSON_LIMIT};
use crate::source::{normalize, Source};

const MANIFEST: &str = "manifest.json";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Whether the input looks like a docker archive.
pub(crate) fn detect(source: &Source) -> bool {
    source.exists(MANIFEST)
}

/// Reads the archive's image tagged `wanted` (or its only image) up to its layers.
pub(crate) fn plan(source: &Source, wanted: Option<&str>) -> Result<ImagePlan> {
    let entries: Vec<ManifestEntry> = plan::parse_json(
        source,
        MANIFEST,
        &source.read_small(MANIFEST, JSON_LIMIT, MANIFEST)?,
    )?;
    let mut candidates: Vec<Candidate<ManifestEntry>> = Vec::new();
    for entry in entries {
        let names = entry.repo_tags.clone().unwrap_or_default();
        match candidates
            .iter_mut()
            .find(|c| c.item.config == entry.config)
        {
            Some(existing) => plan::merge_names(&mut existing.names, names),
            None => candidates.push(Candidate { names, item: entry }),
        }
    }
    let chosen = plan::choose(source.input(), candidates, wanted)?;
    let entry = chosen.item;

    let label = format!("config {}", entry.config);
    let config_bytes = source.read_small(&entry.config, JSON_LIMIT, &label)?;
    let config_digest = Digest::of(&config_bytes);
    if let Some(named) = digest_in_config_name(&entry.config) {
        plan::verify(source, &label, &named, &config_bytes)?;
    }
    let (config, diff_ids) =
        plan::parse_config(source, &config_digest, &config_bytes, entry.layers.len())?;

    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(file, diff_id)| PlannedLayer {
            diff_id,
            file: file.clone(),
            blob_digest: plan::digest_of_blob_path(file),
            size: None,
        })
        .collect();
    Ok(ImagePlan {
        names: chosen.names,
        manifest_digest: None,
        config_digest,
        config,
        layers,
    })
}

/// `<hex>.json` (older docker save, skopeo) or `blobs/sha256/<hex>` (Docker 25+).
fn digest_in_config_name(name: &str) -> Option<Digest> {
    let path = normalize("", name)?;
    match path.strip_suffix(".json") {
        Some(hex) if !hex.contains('/') => Digest::from_hex(hex).ok(),
        _ => plan::digest_of_blob_path(&path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_digests_in_config_names() {
        let d = Digest::of(b"c");
        assert_eq!(
            digest_in_config_name(&format!("{}.json", d.hex())),
            Some(d.clone())
        );
        assert_eq!(
            digest_in_config_name(&format!("blobs/sha256/{}", d.hex())),
            Some(d)
        );
        assert_eq!(digest_in_config_name("config.json"), None);
        assert_eq!(digest_in_config_name("x/0000.json"), None);
    }
}
