//! The image store: a cache directory holding
//!
//! ```text
//! <cache>/layers/sha256/<diff_id hex>/   one unpacked layer, an overlayfs lower directory
//! <cache>/images/<config hex>.json       the record of an imported image (`Image`)
//! <cache>/refs/<config hex>/<holder>     who holds an image (see `refs.rs`)
//! <cache>/tmp/                           layers being unpacked, archives being decompressed
//! <cache>/lock                           flock: shared by imports and reference changes,
//!                                        exclusive for gc
//! ```
//!
//! Layers are keyed by diff_id (the digest of the uncompressed tar, from the verified config)
//! so the same layer compressed two ways is unpacked once. Records and layer directories are
//! published by rename, so readers never see half of one.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::digest::Digest;
use crate::error::{io_err, ImageError, Result};
use crate::image::{Image, LayerRef};
use crate::layer::{self, Installed, LayerDirs};
use crate::plan::{merge_names, ImagePlan};
use crate::progress::Progress;
use crate::refs::{read_dir_names, Refs};
use crate::source::Source;
use crate::{docker_archive, layout};

/// A content-addressed cache of unpacked image layers, with records of the images that use
/// them and references that keep those images alive.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    durable: bool,
}

/// How to import.
#[derive(Default, Clone, Copy)]
pub struct ImportOptions<'a> {
    /// Which image to import when the input holds several: a tag (`busybox:latest`, or
    /// `busybox` for `busybox:latest`) or an index `ref.name` annotation.
    pub name: Option<&'a str>,
    /// Adds this reference to the image before the import releases the store lock, so a
    /// concurrent `gc` cannot remove the image in between.
    pub holder: Option<&'a str>,
    /// Called for each long step (decompressing, unpacking each layer).
    pub progress: Option<&'a dyn Fn(&Progress)>,
}

/// What `gc` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Image records that had no references.
    pub removed_images: Vec<Digest>,
    /// Unpacked layers that no remaining image uses.
    pub removed_layers: Vec<Digest>,
}

impl ImageStore {
    /// Opens the store in `cache_dir`, creating its directories as needed.
    pub fn open(cache_dir: impl AsRef<Path>) -> Result<ImageStore> {
        let cache_dir = cache_dir.as_ref();
        fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
        // Absolute, so that lower_dirs() can go straight into a mount option.
        let root = fs::canonicalize(cache_dir).map_err(io_err(cache_dir))?;
        let store = ImageStore {
            root,
            durable: true,
        };
        for dir in [
            store.layers_dir(),
            store.images_dir(),
            store.refs_dir(),
            store.tmp_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(store)
    }

    /// Whether each new layer is flushed to disk (`syncfs`) before it is published. On by
    /// default; tests and throwaway caches may turn it off.
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Imports the image in `path`, an OCI image layout (directory or tar, possibly gzipped)
    /// or a docker archive, unpacking the layers not yet in the cache.
    pub fn import(&self, path: impl AsRef<Path>) -> Result<Image> {
        self.import_with(path, &ImportOptions::default())
    }

    /// `import` with options: which image of the input, a reference to add, progress.
    pub fn import_with(
        &self,
        path: impl AsRef<Path>,
        options: &ImportOptions<'_>,
    ) -> Result<Image> {
        let path = path.as_ref();
        let progress = |p: Progress| {
            if let Some(f) = options.progress {
                f(&p)
            }
        };
        let _lock = self.lock(FlockArg::LockShared)?;
        let source = Source::open(path, &self.tmp_dir(), &|p| progress(p.clone()))?;
        let plan = if layout::detect(&source) {
            layout::plan(&source, options.name)?
        } else if docker_archive::detect(&source) {
            docker_archive::plan(&source, options.name)?
        } else {
            return Err(ImageError::UnknownFormat {
                input: path.to_path_buf(),
                reason: "neither oci-layout with index.json nor manifest.json in it".into(),
            });
        };

        let layers_dir = self.layers_dir();
        let tmp_dir = self.tmp_dir();
        let dirs = LayerDirs {
            layers: &layers_dir,
            tmp: &tmp_dir,
            durable: self.durable,
        };
        let count = plan.layers.len();
        let mut layers = Vec::with_capacity(count);
        for (i, planned) in plan.layers.iter().enumerate() {
            let size = match planned.size {
                Some(size) => size,
                None => source.size_of(&planned.file)?.unwrap_or(0),
            };
            let index = i + 1;
            let layer = planned.diff_id.clone();
            if !self.layer_dir(&layer).is_dir() {
                progress(Progress::Unpacking {
                    index,
                    count,
                    layer: layer.clone(),
                    size,
                });
            }
            match layer::install(&source, planned, &dirs)? {
                Installed::Unpacked(stats) => progress(Progress::Unpacked {
                    index,
                    count,
                    layer,
                    entries: stats.entries,
                    bytes: stats.bytes,
                }),
                Installed::Cached => progress(Progress::Cached {
                    index,
                    count,
                    layer,
                }),
            }
            layers.push(LayerRef {
                diff_id: planned.diff_id.clone(),
                blob_digest: planned.blob_digest.clone(),
                size,
            });
        }
        let image = self.record(plan, layers)?;
        if let Some(holder) = options.holder {
            Refs::new(self.refs_dir()).add(&image.id, holder)?;
        }
        Ok(image)
    }

    /// The image with this id.
    pub fn image(&self, id: &Digest) -> Result<Image> {
        let path = self.record_path(id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::ImageNotFound { id: id.to_string() })
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Json { path, source })
    }

    /// Every image in the store, sorted by id.
    pub fn images(&self) -> Result<Vec<Image>> {
        let mut ids: Vec<Digest> = read_dir_names(&self.images_dir())?
            .iter()
            .filter_map(|n| Digest::from_hex(n.strip_suffix(".json")?).ok())
            .collect();
        ids.sort();
        ids.iter().map(|id| self.image(id)).collect()
    }

    /// The image with this id (`sha256:<hex>` or `<hex>`) or name (`busybox` also finds
    /// `busybox:latest`).
    pub fn find(&self, reference: &str) -> Result<Image> {
        let id = reference
            .parse::<Digest>()
            .or_else(|_| Digest::from_hex(reference));
        if let Ok(id) = id {
            return self.image(&id);
        }
        let with_latest = format!("{reference}:latest");
        self.images()?
            .into_iter()
            .find(|image| {
                image
                    .names
                    .iter()
                    .any(|n| n == reference || *n == with_latest)
            })
            .ok_or_else(|| ImageError::ImageNotFound {
                id: reference.to_string(),
            })
    }

    /// The unpacked layer directories of `image`, top layer first: the order of overlayfs'
    /// `lowerdir=`. A layer that occurs twice is listed once, at its topmost place (the lower
    /// copy is entirely shadowed by the upper one). Fails if a layer is missing.
    pub fn lower_dirs(&self, image: &Image) -> Result<Vec<PathBuf>> {
        let mut dirs: Vec<PathBuf> = Vec::with_capacity(image.layers.len());
        for layer in image.layers.iter().rev() {
            let dir = self.layer_dir(&layer.diff_id);
            if !dir.is_dir() {
                return Err(ImageError::LayerMissing {
                    image: image.id.clone(),
                    layer: layer.diff_id.clone(),
                    path: dir,
                });
            }
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        Ok(dirs)
    }

    /// Where the layer with this diff_id is (or would be) unpacked.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.layers_dir().join(diff_id.hex())
    }

    /// Records that `holder` uses the image; `gc` keeps images that have a holder.
    pub fn add_ref(&self, image: &Digest, holder: &str) -> Result<()> {
        let _lock = self.lock(FlockArg::LockShared)?;
        if !self.record_path(image).exists() {
            return Err(ImageError::ImageNotFound {
                id: image.to_string(),
            });
        }
        Refs::new(self.refs_dir()).add(image, holder)
    }

    /// Drops `holder`'s reference to the image; returns whether there was one.
    pub fn remove_ref(&self, image: &Digest, holder: &str) -> Result<bool> {
        let _lock = self.lock(FlockArg::LockShared)?;
        Refs::new(self.refs_dir()).remove(image, holder)
    }

    /// The holders of the image, sorted.
    pub fn references(&self, image: &Digest) -> Result<Vec<String>> {
        Refs::new(self.refs_dir()).list(image)
    }

    /// Removes the records of images nobody holds, then every unpacked layer that no
    /// remaining image uses, and leftovers of interrupted imports in `tmp/`. Waits for running
    /// imports to finish and keeps new ones out while it runs.
    pub fn gc(&self) -> Result<GcReport> {
        let _lock = self.lock(FlockArg::LockExclusive)?;
        let refs = Refs::new(self.refs_dir());
        let mut report = GcReport::default();
        let mut used: Vec<Digest> = Vec::new();
        for image in self.images()? {
            if refs.list(&image.id)?.is_empty() {
                let path = self.record_path(&image.id);
                fs::remove_file(&path).map_err(io_err(path))?;
                refs.forget(&image.id)?;
                report.removed_images.push(image.id);
            } else {
                used.extend(image.layers.into_iter().map(|l| l.diff_id));
            }
        }
        // References to images that are not (or no longer) in the store.
        for id in refs.images()? {
            if !self.record_path(&id).exists() {
                refs.forget(&id)?;
            }
        }
        let tmp = self.tmp_dir();
        let mut layers: Vec<Digest> = read_dir_names(&self.layers_dir())?
            .iter()
            .filter_map(|n| Digest::from_hex(n).ok())
            .collect();
        layers.sort();
        for layer in layers.into_iter().filter(|l| !used.contains(l)) {
            layer::remove(&self.layer_dir(&layer), &tmp)?;
            report.removed_layers.push(layer);
        }
        // No import runs while we hold the lock exclusively: whatever is in tmp/ is stale.
        for name in read_dir_names(&tmp)? {
            let path = tmp.join(name);
            let removed = if path.is_dir() && !path.is_symlink() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(io_err(path))?;
        }
        Ok(report)
    }

    /// Writes the image's record, keeping the names of an earlier import of the same image.
    fn record(&self, plan: ImagePlan, layers: Vec<LayerRef>) -> Result<Image> {
        let mut names = match self.image(&plan.config_digest) {
            Ok(existing) => existing.names,
            Err(ImageError::ImageNotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        merge_names(&mut names, plan.names);
        let image = Image {
            id: plan.config_digest,
            names,
            manifest_digest: plan.manifest_digest,
            config: plan.config,
            layers,
        };
        let path = self.record_path(&image.id);
        let tmp_dir = self.tmp_dir();
        let mut tmp = tempfile::Builder::new()
            .prefix("image-")
            .tempfile_in(&tmp_dir)
            .map_err(io_err(&tmp_dir))?;
        serde_json::to_writer_pretty(tmp.as_file_mut(), &image).map_err(|source| {
            ImageError::Json {
                path: path.clone(),
                source,
            }
        })?;
        tmp.persist(&path).map_err(|e| io_err(&path)(e.error))?;
        Ok(image)
    }

    fn lock(&self, arg: FlockArg) -> Result<Flock<File>> {
        let path = self.root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Flock::lock(file, arg).map_err(|(_, e)| ImageError::Io {
            path,
            source: e.into(),
        })
    }

    fn layers_dir(&self) -> PathBuf {
        self.root.join("layers/sha256")
    }

    fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    fn refs_dir(&self) -> PathBuf {
        self.root.join("refs")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn record_path(&self, id: &Digest) -> PathBuf {
        self.images_dir().join(format!("{}.json", id.hex()))
    }
}

#[cfg(test)]
mod tests;
