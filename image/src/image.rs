//! An imported image, as the store records it in `<cache>/images/<id hex>.json`.

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// The digest of the config JSON (what `docker images --no-trunc` shows as the id).
    pub id: Digest,
    /// Names and tags it was imported under (`RepoTags`, or the index's
    /// `io.containerd.image.name` / `org.opencontainers.image.ref.name` annotation); may be
    /// empty.
    pub names: Vec<String>,
    /// The manifest's digest, for OCI layouts (docker archives carry no manifest blob).
    pub manifest_digest: Option<Digest>,
    /// The image config: entrypoint, cmd, env, working dir, user, exposed ports, labels, ...
    pub config: ImageConfiguration,
    /// The layers, bottom first (manifest order).
    pub layers: Vec<LayerRef>,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// The digest of the uncompressed layer tar: the layer's key in the cache.
    pub diff_id: Digest,
    /// The digest of the blob as stored in the input (compressed or not), when the input
    /// addresses layers by digest.
    pub blob_digest: Option<Digest>,
    /// The blob's size in bytes, as read from the input.
    pub size: u64,
}

impl Image {
    /// The process defaults of the image config (`Entrypoint`, `Cmd`, `Env`, ...), if any.
    pub fn process(&self) -> Option<&oci_spec::image::Config> {
        self.config.config().as_ref()
    }

    /// Entrypoint followed by Cmd: the command a container runs when nothing overrides it.
    pub fn default_command(&self) -> Vec<String> {
        let Some(process) = self.process() else {
            return Vec::new();
        };
        let mut argv = process.entrypoint().clone().unwrap_or_default();
        argv.extend(process.cmd().clone().unwrap_or_default());
        argv
    }
}
