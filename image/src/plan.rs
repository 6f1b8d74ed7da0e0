//! What the two input formats reduce to before anything is unpacked: a verified config and the
//! list of layer files to read, plus the rules both formats share (choosing among several
//! images, checking the config's platform and its diff_ids).

use std::path::Path;

use oci_spec::image::{Arch, ImageConfiguration, Os};

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::source::Source;

/// The most a manifest, index or config JSON may weigh.
pub(crate) const JSON_LIMIT: u64 = 16 << 20;

/// The platform images are run on.
pub(crate) const PLATFORM: &str = "linux/amd64";

/// An image of the input, read and verified up to its layers.
pub(crate) struct ImagePlan {
    pub names: Vec<String>,
    pub manifest_digest: Option<Digest>,
    /// sha256 of the config JSON: the image id.
    pub config_digest: Digest,
    pub config: ImageConfiguration,
    /// Bottom layer first, as in the manifest.
    pub layers: Vec<PlannedLayer>,
}

/// A layer to unpack from the input.
pub(crate) struct PlannedLayer {
    /// The digest of the uncompressed tar (from the verified config): the cache key.
    pub diff_id: Digest,
    /// The file in the input holding the layer blob.
    pub file: String,
    /// The blob's own digest, where the input addresses it by one.
    pub blob_digest: Option<Digest>,
    /// The blob's size, where a descriptor states it.
    pub size: Option<u64>,
}

impl PlannedLayer {
    /// The digest naming this layer in messages: the blob's own, else the diff_id.
    pub(crate) fn name(&self) -> &Digest {
        self.blob_digest.as_ref().unwrap_or(&self.diff_id)
    }
}

/// One image found in the input: its names and whatever locates it.
pub(crate) struct Candidate<T> {
    pub names: Vec<String>,
    pub item: T,
}

/// Picks the image named `wanted`, or the only one when no name is given.
pub(crate) fn choose<T>(
    input: &Path,
    candidates: Vec<Candidate<T>>,
    wanted: Option<&str>,
) -> Result<Candidate<T>> {
    let all_names = || -> Vec<String> {
        candidates
            .iter()
            .map(|c| {
                c.names
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "<untagged>".into())
            })
            .collect()
    };
    if let Some(wanted) = wanted {
        let found = all_names();
        let with_latest = format!("{wanted}:latest");
        return candidates
            .into_iter()
            .find(|c| c.names.iter().any(|n| n == wanted || *n == with_latest))
            .ok_or_else(|| ImageError::NoMatchingImage {
                input: input.to_path_buf(),
                wanted: format!("{PLATFORM} image named {wanted:?}"),
                found,
            });
    }
    match candidates.len() {
        0 => Err(ImageError::NoMatchingImage {
            input: input.to_path_buf(),
            wanted: PLATFORM.to_string(),
            found: Vec::new(),
        }),
        1 => Ok(candidates.into_iter().next().expect("one candidate")),
        _ => Err(ImageError::AmbiguousImage {
            input: input.to_path_buf(),
            names: all_names(),
        }),
    }
}

/// Adds `names` to `into`, keeping the order and dropping duplicates.
pub(crate) fn merge_names(into: &mut Vec<String>, names: impl IntoIterator<Item = String>) {
    for name in names {
        if !into.contains(&name) {
            into.push(name);
        }
    }
}

/// Parses a config JSON that was already verified against `digest`, checks that it is for
/// linux/amd64 and that it lists `layer_count` diff_ids; returns them with the config.
pub(crate) fn parse_config(
    source: &Source,
    digest: &Digest,
    bytes: &[u8],
    layer_count: usize,
) -> Result<(ImageConfiguration, Vec<Digest>)> {
    let config: ImageConfiguration = parse_json(source, &format!("config {digest}"), bytes)?;
    if *config.os() != Os::Linux || *config.architecture() != Arch::Amd64 {
        return Err(ImageError::Unsupported {
            subject: format!("{}: image {digest}", source.input().display()),
            what: format!(
                "platform {}/{} (need {PLATFORM})",
                config.os(),
                config.architecture()
            ),
        });
    }
    let diff_ids = config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| d.parse())
        .collect::<Result<Vec<Digest>>>()?;
    if diff_ids.len() != layer_count {
        return Err(ImageError::Invalid {
            input: source.input().to_path_buf(),
            what: format!(
                "config {digest} lists {} diff_ids for {layer_count} layers",
                diff_ids.len()
            ),
        });
    }
    Ok((config, diff_ids))
}

/// Parses JSON from the input; `what` names the document in errors.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    source: &Source,
    what: &str,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::Invalid {
        input: source.input().to_path_buf(),
        what: format!("{what}: {e}"),
    })
}

/// Checks that `bytes`, read from the input, hash to `expected`.
pub(crate) fn verify(source: &Source, what: &str, expected: &Digest, bytes: &[u8]) -> Result<()> {
    let actual = Digest::of(bytes);
    if actual != *expected {
        return Err(ImageError::DigestMismatch {
            blob: format!("{}: {what}", source.input().display()),
            expected: expected.clone(),
            actual,
        });
    }
    Ok(())
}

/// The layout path of a blob.
pub(crate) fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// The digest in a `blobs/sha256/<hex>` path, if it is one.
pub(crate) fn digest_of_blob_path(path: &str) -> Option<Digest> {
    let path = crate::source::normalize("", path)?;
    Digest::from_hex(path.strip_prefix("blobs/sha256/")?).ok()
}
