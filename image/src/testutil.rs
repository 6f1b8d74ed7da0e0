//! Builders for the tests: layer tars (including entries the `tar` crate's own path checks
//! would refuse), gzip, and whole images as OCI layouts (directory or tar) and docker archives.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde_json::json;

use crate::digest::Digest;

/// A layer tar built entry by entry; mtimes are all `MTIME`.
pub(crate) struct LayerTar {
    builder: tar::Builder<Vec<u8>>,
}

pub(crate) const MTIME: u64 = 1_600_000_000;

impl LayerTar {
    pub(crate) fn new() -> Self {
        LayerTar {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    pub(crate) fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        self.append(&mut h, path, &[]);
        self
    }

    pub(crate) fn file(mut self, path: &str, data: &[u8], mode: u32) -> Self {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        self.append(&mut h, path, data);
        self
    }

    pub(crate) fn file_owned(mut self, path: &str, data: &[u8], uid: u64, gid: u64) -> Self {
        let mut h = header(tar::EntryType::Regular, 0o640, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.append(&mut h, path, data);
        self
    }

    pub(crate) fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        raw_link(&mut h, target);
        self.append(&mut h, path, &[]);
        self
    }

    pub(crate) fn hard_link(mut self, path: &str, target: &str) -> Self {
        let mut h = header(tar::EntryType::Link, 0o644, 0);
        raw_link(&mut h, target);
        self.append(&mut h, path, &[]);
        self
    }

    pub(crate) fn fifo(mut self, path: &str) -> Self {
        let mut h = header(tar::EntryType::Fifo, 0o644, 0);
        self.append(&mut h, path, &[]);
        self
    }

    pub(crate) fn char_device(mut self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = header(tar::EntryType::Char, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.append(&mut h, path, &[]);
        self
    }

    /// A file under a name longer than 100 bytes: written with a GNU long-name header.
    pub(crate) fn long_name_file(mut self, path: &str, data: &[u8]) -> Self {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        self.builder.append_data(&mut h, path, data).unwrap();
        self
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }

    /// Appends with the name written as is (`..` and absolute names included).
    fn append(&mut self, h: &mut tar::Header, path: &str, data: &[u8]) {
        assert!(path.len() < 100, "use long_name_file");
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        self.builder.append(h, data).unwrap();
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn raw_link(h: &mut tar::Header, target: &str) {
    let link = &mut h.as_old_mut().linkname;
    link.fill(0);
    link[..target.len()].copy_from_slice(target.as_bytes());
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// The two layers of the small test image: a base with `/etc/os-release`, `/bin/sh` and
/// `/data/old`, and a top layer that replaces `/etc/os-release` and removes `/data/old`.
pub(crate) fn two_layers() -> Vec<Vec<u8>> {
    let base = LayerTar::new()
        .dir("etc", 0o755)
        .file("etc/os-release", b"base\n", 0o644)
        .dir("bin", 0o755)
        .file("bin/sh", b"#!sh\n", 0o755)
        .dir("data", 0o755)
        .file("data/old", b"old\n", 0o644)
        .finish();
    let top = LayerTar::new()
        .dir("etc", 0o755)
        .file("etc/os-release", b"top\n", 0o644)
        .dir("data", 0o755)
        .file("data/.wh.old", b"", 0o644)
        .finish();
    vec![base, top]
}

pub(crate) fn config_json(diff_ids: &[Digest], arch: &str) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(Digest::to_string).collect();
    serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Entrypoint": ["/bin/sh"],
            "Cmd": ["-c", "true"],
            "WorkingDir": "/data",
            "User": "1000:1000",
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": null,
            "Volumes": null,
        },
        "rootfs": {"type": "layers", "diff_ids": ids},
        "history": [],
    }))
    .unwrap()
}

/// What a written test image is made of.
pub(crate) struct Written {
    pub config: Digest,
    pub diff_ids: Vec<Digest>,
    pub blobs: Vec<Digest>,
}

fn put_blob(dir: &Path, data: &[u8]) -> Digest {
    let digest = Digest::of(data);
    fs::write(dir.join("blobs/sha256").join(digest.hex()), data).unwrap();
    digest
}

/// Writes an OCI image layout of `layers` (tars) to `dir`; gzip-compressed when `gz`.
/// The index holds one image, tagged `name`, through a nested multi-platform index whose
/// first entry is arm64 (to be skipped).
pub(crate) fn write_oci_layout(dir: &Path, layers: &[Vec<u8>], gz: bool, name: &str) -> Written {
    if gz {
        write_oci_layout_with(
            dir,
            layers,
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &|l| gzip(l),
            name,
        )
    } else {
        write_oci_layout_with(
            dir,
            layers,
            "application/vnd.oci.image.layer.v1.tar",
            &|l| l.to_vec(),
            name,
        )
    }
}

/// `write_oci_layout` with each layer blob made by `encode` and described as `media_type`.
pub(crate) fn write_oci_layout_with(
    dir: &Path,
    layers: &[Vec<u8>],
    media_type: &str,
    encode: &dyn Fn(&[u8]) -> Vec<u8>,
    name: &str,
) -> Written {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let diff_ids: Vec<Digest> = layers.iter().map(|l| Digest::of(l)).collect();
    let mut blobs = Vec::new();
    let mut descriptors = Vec::new();
    for layer in layers {
        let data = encode(layer);
        let digest = put_blob(dir, &data);
        descriptors.push(
            json!({"mediaType": media_type, "digest": digest.to_string(), "size": data.len()}),
        );
        blobs.push(digest);
    }
    let config = config_json(&diff_ids, "amd64");
    let config_digest = put_blob(dir, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest.to_string(), "size": config.len()},
        "layers": descriptors,
    }))
    .unwrap();
    let manifest_digest = put_blob(dir, &manifest);
    // An arm64 manifest that is not even in the layout: it must never be read.
    let absent = Digest::of(b"arm64 manifest");
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": absent.to_string(), "size": 100,
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": manifest_digest.to_string(), "size": manifest.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    }))
    .unwrap();
    let nested_digest = put_blob(dir, &nested);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": nested_digest.to_string(), "size": nested.len(),
            "annotations": {"org.opencontainers.image.ref.name": name},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    Written {
        config: config_digest,
        diff_ids,
        blobs,
    }
}

/// Writes a docker archive (as `docker save` did before Docker 25: `<id>/layer.tar`,
/// `<config hex>.json`, `manifest.json`) of uncompressed `layers` to the tar file `path`.
pub(crate) fn write_docker_archive(path: &Path, layers: &[Vec<u8>], tag: &str) -> Written {
    write_docker_archive_for(path, layers, tag, "amd64")
}

/// `write_docker_archive` of an image for the architecture `arch`.
pub(crate) fn write_docker_archive_for(
    path: &Path,
    layers: &[Vec<u8>],
    tag: &str,
    arch: &str,
) -> Written {
    let diff_ids: Vec<Digest> = layers.iter().map(|l| Digest::of(l)).collect();
    let config = config_json(&diff_ids, arch);
    let config_digest = Digest::of(&config);
    let mut b = tar::Builder::new(Vec::new());
    let mut layer_paths = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let id = format!("{:0>64}", i);
        let layer_path = format!("{id}/layer.tar");
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(layer.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, &layer_path, &layer[..]).unwrap();
        layer_paths.push(layer_path);
    }
    let config_name = format!("{}.json", config_digest.hex());
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(config.len() as u64);
    h.set_cksum();
    b.append_data(&mut h, &config_name, &config[..]).unwrap();
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name, "RepoTags": [tag], "Layers": layer_paths,
    }]))
    .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(manifest.len() as u64);
    h.set_cksum();
    b.append_data(&mut h, "manifest.json", &manifest[..])
        .unwrap();
    fs::write(path, b.into_inner().unwrap()).unwrap();
    Written {
        config: config_digest,
        blobs: diff_ids.clone(),
        diff_ids,
    }
}

/// Tars the directory `dir` into the file `path` (an OCI layout as a tar).
pub(crate) fn tar_dir(dir: &Path, path: &Path) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap();
}

/// Whether the tests may do what needs root (mknod, trusted.* xattrs, chown).
pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
