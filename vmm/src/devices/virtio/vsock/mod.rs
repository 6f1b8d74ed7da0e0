//! virtio-vsock device (virtio spec 1.2, 5.10) with the "hybrid vsock" Unix-socket backend used
//! by Firecracker and Cloud Hypervisor:
//!
//! - host to guest: a host process connects to the Unix socket at `uds_path` and writes
//!   `CONNECT <port>\n`; once the guest accepts, it reads `OK <hostport>\n` and the socket then
//!   carries the stream's bytes. If the guest refuses or does not answer in time, the socket is
//!   closed.
//! - guest to host: a guest connection to host port P is forwarded to the Unix socket
//!   `<uds_path>_P`; if nothing listens there, the guest gets a reset.
//!
//! Layout: `packet` parses and writes packets, `connection` is the per-connection state
//! machine, `muxer` owns the sockets and the connection table (`uds` has its socket helpers),
//! `worker` is the epoll thread.

mod connection;
mod muxer;
mod packet;
mod uds;
mod worker;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::muxer::Muxer;
use self::worker::Worker;
use crate::devices::virtio::device::{
    read_config_space, ActivateContext, ActivateError, DeviceWorker, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// virtio device ID of vsock.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Size of each of the rx, tx and event queues.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
/// How long the guest has to answer a host connection (and a host client to send `CONNECT`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEVICE_NAME: &str = "vsock";

/// What the builder configures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID, 3..=0xffff_fffe.
    pub guest_cid: u64,
    /// Where the host listener is bound; guest connections to host port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// Why a vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock guest CID {cid} is reserved or out of range (allowed: 3..=4294967294)")]
    InvalidCid { cid: u64 },
    #[error("vsock socket path {} already exists; remove it or choose another", path.display())]
    UdsPathExists { path: PathBuf },
    #[error("vsock socket path {}: cannot check whether it exists: {source}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("vsock socket path {}: cannot bind a Unix listener there: {source}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The vsock device. See the module docs.
pub struct Vsock {
    config: VsockConfig,
    listener: UnixListener,
    /// (st_dev, st_ino) of the socket file we created, so that drop removes only that file.
    uds_id: Option<(u64, u64)>,
    acked_features: u64,
    connect_timeout: Duration,
    worker: Option<DeviceWorker>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("config", &self.config)
            .field("active", &self.worker.is_some())
            .finish()
    }
}

impl Vsock {
    /// Validates the config and binds the host listener at `config.uds_path`, which must not
    /// exist yet.
    pub fn new(config: VsockConfig) -> Result<Vsock, VsockError> {
        let cid = config.guest_cid;
        if !(3..=u64::from(u32::MAX - 1)).contains(&cid) {
            return Err(VsockError::InvalidCid { cid });
        }
        let path = config.uds_path.clone();
        match fs::symlink_metadata(&path) {
            Ok(_) => return Err(VsockError::UdsPathExists { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(VsockError::Inspect { path, source }),
        }
        let listener = UnixListener::bind(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::AddrInUse {
                VsockError::UdsPathExists { path: path.clone() }
            } else {
                VsockError::Bind {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let uds_id = fs::symlink_metadata(&path).ok().map(|m| (m.dev(), m.ino()));
        Ok(Vsock {
            config,
            listener,
            uds_id,
            acked_features: 0,
            connect_timeout: CONNECT_TIMEOUT,
            worker: None,
        })
    }

    /// The guest's context ID.
    pub fn guest_cid(&self) -> u64 {
        self.config.guest_cid
    }

    /// The host listener's path.
    pub fn uds_path(&self) -> &Path {
        &self.config.uds_path
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop("vsock");
        }
    }

    fn worker_error(source: io::Error) -> ActivateError {
        ActivateError::Worker {
            device: DEVICE_NAME,
            source,
        }
    }
}

impl VirtioDevice for Vsock {
    fn name(&self) -> &'static str {
        DEVICE_NAME
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
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
        read_config_space(&self.config.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::warn!(
            "vsock: guest wrote {} bytes at read-only config offset {offset}; ignored",
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
        let listener = self.listener.try_clone().map_err(Self::worker_error)?;
        let muxer = Muxer::new(
            self.config.guest_cid,
            self.config.uds_path.clone(),
            listener,
            self.connect_timeout,
        )
        .map_err(Self::worker_error)?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(Self::worker_error)?;
        let worker = Worker::new(
            ctx.mem,
            ctx.interrupt,
            ctx.queues,
            ctx.queue_events,
            stop.try_clone().map_err(Self::worker_error)?,
            muxer,
        )
        .map_err(Self::worker_error)?;
        let thread = thread::Builder::new()
            .name("vsock-worker".to_string())
            .spawn(move || worker.run())
            .map_err(Self::worker_error)?;
        self.worker = Some(DeviceWorker { stop, thread });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.acked_features = 0;
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.stop_worker();
        let path = &self.config.uds_path;
        let ours = match (fs::symlink_metadata(path), self.uds_id) {
            (Ok(m), Some(id)) => (m.dev(), m.ino()) == id,
            (Ok(_), None) => true,
            (Err(_), _) => false,
        };
        if ours {
            if let Err(e) = fs::remove_file(path) {
                log::warn!("vsock: removing {}: {e}", path.display());
            }
        }
    }
}
