//! virtio-fs device (virtio 1.2, 5.11): one host directory shared with the guest, served inside
//! the VMM process (as Dragonball does, not by a separate virtiofsd) with fuse-backend-rs's
//! `PassthroughFs` and its virtio-fs transport.
//!
//! The guest mounts it with `mount -t virtiofs <tag> <dir>`. Queue 0 is the high-priority queue
//! (FORGET, BATCH_FORGET), queue 1 the one request queue; both are served by the `fs-worker`
//! thread (`worker`), which hands each descriptor chain straight to fuse-backend-rs's
//! `Reader`/`Writer` over our guest memory, so file data moves between the host file and guest
//! RAM with one `preadv`/`pwritev`, without a bounce buffer.
//!
//! Caching ([`ATTR_TIMEOUT`], [`ENTRY_TIMEOUT`], `CachePolicy::Auto`, no writeback cache): the
//! guest keeps pages of a file only while it stays open (every open drops them) and trusts
//! attributes and names for one second, so a change made on the host side (a config file
//! rewritten, a ConfigMap-style symlink swap) is seen by the next open after at most a second.
//! Guest writes go through to the host file at once (no writeback cache), so the host sees them
//! as soon as the guest's `write` returns.
//!
//! Security: every name is resolved with `openat(O_PATH | O_NOFOLLOW)` relative to an inode
//! already opened under the shared directory. Names with `/` are refused; `..` looked up at the
//! share's root resolves to the root itself (fuse-backend-rs maps it to `.`), and every call that
//! creates or removes a name refuses `.` and `..`. Symlinks are never followed on the host: a
//! lookup returns the link itself and the guest resolves its target in its own view, so an
//! absolute link points into the guest, not the host (see the tests). The passthrough sets the
//! process umask to 0 (so that the guest's modes land exactly), creates files with the guest's
//! uid/gid, and lets the guest set any xattr and create device nodes and set-id files: mount
//! the shared directory `nosuid,nodev` on the host, and give each VM a directory of its own.

mod guarded_passthrough;
mod worker;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;

use self::guarded_passthrough::GuardedPassthrough;
use fuse_backend_rs::passthrough::{CachePolicy, Config as PassthroughConfig, PassthroughFs};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::worker::Worker;
use crate::devices::virtio::device::{
    read_config_space, ActivateContext, ActivateError, DeviceWorker, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// virtio device ID of a file system device.
pub const VIRTIO_ID_FS: u32 = 26;
/// Longest tag (the config space field is 36 bytes, NUL-padded when shorter).
pub const TAG_MAX_LEN: usize = 36;
/// How long the guest trusts a file's attributes (size, mtime, mode) before asking again.
pub const ATTR_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the guest trusts a name lookup (including a negative one).
pub const ENTRY_TIMEOUT: Duration = Duration::from_secs(1);
/// Request queues the device offers (the high-priority queue comes on top).
pub const NUM_REQUEST_QUEUES: u32 = 1;
/// Size of the high-priority queue (FORGETs only).
pub const HIPRIO_QUEUE_SIZE: u16 = 128;
/// Size of the request queue.
pub const REQUEST_QUEUE_SIZE: u16 = 1024;
const QUEUE_SIZES: [u16; 2] = [HIPRIO_QUEUE_SIZE, REQUEST_QUEUE_SIZE];
/// `struct virtio_fs_config`: tag[36], le32 num_request_queues (notify_buf_size, valid only
/// with VIRTIO_FS_F_NOTIFICATION, which is not offered, is left out).
const CONFIG_SPACE_SIZE: usize = TAG_MAX_LEN + 4;
const DEVICE_NAME: &str = "fs";

/// The passthrough file system, the layer the device serves it through (see `guarded_passthrough`),
/// and the FUSE server in front of them.
type Passthrough = PassthroughFs<()>;
type ServedFs = GuardedPassthrough;
pub(crate) type FuseServer = Server<Arc<ServedFs>>;

/// What the builder configures: one shared directory under one tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsConfig {
    /// The name the guest mounts (`mount -t virtiofs <tag> <dir>`).
    pub tag: String,
    /// The host directory shared with the guest.
    pub shared_dir: PathBuf,
}

/// Why a tag cannot be used; `None` if it can.
pub fn tag_problem(tag: &str) -> Option<String> {
    if tag.is_empty() {
        return Some("the tag is empty".into());
    }
    if tag.len() > TAG_MAX_LEN {
        return Some(format!(
            "the tag is {} bytes long, at most {TAG_MAX_LEN} fit in the device's config space",
            tag.len()
        ));
    }
    if tag.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("the tag has a space or control character (it goes on a command line)".into());
    }
    None
}

/// Why a virtio-fs device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag {tag:?}: {reason}")]
    InvalidTag { tag: String, reason: String },
    #[error("virtio-fs {tag:?}: shared directory {}: {source}", path.display())]
    SharedDir {
        tag: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("virtio-fs {tag:?}: shared directory {} is not a directory", path.display())]
    NotADirectory { tag: String, path: PathBuf },
    #[error("virtio-fs {tag:?}: shared directory {} is not valid UTF-8", path.display())]
    NonUtf8Path { tag: String, path: PathBuf },
    #[error("virtio-fs {tag:?}: cannot open shared directory {} for the guest: {source}", path.display())]
    Passthrough {
        tag: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The passthrough settings for `root_dir` (see the module docs for the choices).
fn passthrough_config(root_dir: String) -> PassthroughConfig {
    PassthroughConfig {
        root_dir,
        attr_timeout: ATTR_TIMEOUT,
        entry_timeout: ENTRY_TIMEOUT,
        cache_policy: CachePolicy::Auto,
        writeback: false,
        // overlayfs in the guest stores trusted.* (and user.*) xattrs on its layers.
        xattr: true,
        // The passthrough imports its root again on every FUSE_INIT (a guest that mounts
        // again, or reboots, starts from a fresh inode table) and negotiates its own options.
        do_import: true,
        // Must stay off: its early return in `write` closes the handle's host fd, as the
        // refused flags did (see `guarded_passthrough`).
        seal_size: false,
        ..PassthroughConfig::default()
    }
}

/// The virtio-fs device. See the module docs.
pub struct Fs {
    config: FsConfig,
    config_space: [u8; CONFIG_SPACE_SIZE],
    fs: Arc<ServedFs>,
    server: Arc<FuseServer>,
    acked_features: u64,
    worker: Option<DeviceWorker>,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("config", &self.config)
            .field("active", &self.worker.is_some())
            .finish()
    }
}

impl Fs {
    /// Checks the tag and opens the shared directory (its root inode is imported now, so that a
    /// directory that cannot be served fails the build, not the guest's mount).
    ///
    /// The import sets the process umask to 0 (the guest's modes must land unmasked): create
    /// the VMM's own files (serial log, vsock socket) before the first `Fs`.
    pub fn new(config: FsConfig) -> Result<Fs, FsError> {
        let tag = config.tag.clone();
        if let Some(reason) = tag_problem(&tag) {
            return Err(FsError::InvalidTag { tag, reason });
        }
        let path = config.shared_dir.clone();
        let shared_dir_error = |source| FsError::SharedDir {
            tag: tag.clone(),
            path: path.clone(),
            source,
        };
        let canonical = path.canonicalize().map_err(shared_dir_error)?;
        if !canonical.metadata().map_err(shared_dir_error)?.is_dir() {
            return Err(FsError::NotADirectory { tag, path });
        }
        let Some(root_dir) = canonical.to_str().map(str::to_owned) else {
            return Err(FsError::NonUtf8Path { tag, path });
        };
        let passthrough_error = |source| FsError::Passthrough {
            tag: tag.clone(),
            path: path.clone(),
            source,
        };
        let fs = PassthroughFs::new(passthrough_config(root_dir)).map_err(passthrough_error)?;
        fs.import().map_err(passthrough_error)?;
        let fs = Arc::new(GuardedPassthrough::new(Arc::new(fs)));
        let server = Arc::new(Server::new(fs.clone()));

        let mut config_space = [0u8; CONFIG_SPACE_SIZE];
        config_space[..tag.len()].copy_from_slice(tag.as_bytes());
        config_space[TAG_MAX_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        Ok(Fs {
            config,
            config_space,
            fs,
            server,
            acked_features: 0,
            worker: None,
        })
    }

    pub fn tag(&self) -> &str {
        &self.config.tag
    }

    pub fn shared_dir(&self) -> &Path {
        &self.config.shared_dir
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop(&format!("virtio-fs {}", self.tag()));
        }
    }

    fn worker_error(source: io::Error) -> ActivateError {
        ActivateError::Worker {
            device: DEVICE_NAME,
            source,
        }
    }
}

impl VirtioDevice for Fs {
    fn name(&self) -> &'static str {
        DEVICE_NAME
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.device_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::warn!(
            "virtio-fs {}: guest wrote {} bytes at read-only config offset {offset}; ignored",
            self.tag(),
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != QUEUE_SIZES.len() || ctx.queue_events.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                device: DEVICE_NAME,
                expected: QUEUE_SIZES.len(),
                got: ctx.queues.len().min(ctx.queue_events.len()),
            });
        }
        self.stop_worker();
        let stop = EventFd::new(EFD_NONBLOCK).map_err(Self::worker_error)?;
        let worker = Worker::new(
            ctx.mem,
            ctx.interrupt,
            ctx.queues,
            ctx.queue_events,
            stop.try_clone().map_err(Self::worker_error)?,
            self.server.clone(),
            self.config.tag.clone(),
        )
        .map_err(Self::worker_error)?;
        let thread = thread::Builder::new()
            .name("fs-worker".to_string())
            .spawn(move || worker.run())
            .map_err(Self::worker_error)?;
        self.worker = Some(DeviceWorker { stop, thread });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.acked_features = 0;
        // The next driver starts over with FUSE_INIT: drop every inode and handle the old one
        // held (the root is imported again).
        self.fs.destroy();
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        self.stop_worker();
    }
}
