//! The `fs-worker` thread: one epoll loop over the two queue event fds and the stop event fd.
//!
//! Each available descriptor chain is one FUSE request: its device-readable part is the request,
//! its device-writable part the room for the reply. The chain goes to fuse-backend-rs as a
//! `Reader` and a `Writer` over guest memory, `Server::handle_message` serves it against the
//! passthrough file system (writing the reply, if any, straight into guest memory), and the chain
//! is returned with the reply's length. Requests are served one at a time, in queue order.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::FuseServer;
use crate::devices::virtio::device::Interrupt;
use crate::vstate::memory::GuestMemoryMmap;

/// Queue 0: FORGET and BATCH_FORGET, which have no reply.
pub const HIPRIO_QUEUE: usize = 0;
/// Queue 1: every other request.
pub const REQUEST_QUEUE: usize = 1;
const STOP_TOKEN: u64 = 2;
const EPOLL_EVENTS: usize = 8;

pub struct Worker {
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    /// Kept open while registered in the epoll; the device holds the writing end.
    _stop: EventFd,
    epoll: Epoll,
    server: Arc<FuseServer>,
    tag: String,
}

impl Worker {
    /// Registers the queue and stop event fds in a new epoll. Queue `i` gets token `i`.
    pub fn new(
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        queue_events: Vec<EventFd>,
        stop: EventFd,
        server: Arc<FuseServer>,
        tag: String,
    ) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        for (token, evt) in queue_events.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                evt.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token as u64),
            )?;
        }
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        Ok(Worker {
            mem,
            interrupt,
            queues,
            queue_events,
            _stop: stop,
            epoll,
            server,
            tag,
        })
    }

    /// Runs until the stop event fd is written (or epoll fails).
    pub fn run(mut self) {
        let mut events = vec![EpollEvent::default(); EPOLL_EVENTS];
        // Requests may have been queued before activation completed.
        self.process_all();
        loop {
            let count = match self.epoll.wait(-1, &mut events) {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!(
                        "virtio-fs {}: epoll_wait failed, stopping the device worker: {e}",
                        self.tag
                    );
                    return;
                }
            };
            for event in &events[..count] {
                let token = event.data();
                if token == STOP_TOKEN {
                    return;
                }
                if let Some(evt) = usize::try_from(token)
                    .ok()
                    .and_then(|i| self.queue_events.get(i))
                {
                    // Clears the event; every queue is checked below anyway.
                    let _ = evt.read();
                }
            }
            self.process_all();
        }
    }

    /// Serves both queues until they are empty, then interrupts the guest once if needed.
    fn process_all(&mut self) {
        let mut used = false;
        for queue in [HIPRIO_QUEUE, REQUEST_QUEUE] {
            used |= self.process_queue(queue);
        }
        if used {
            self.signal_guest();
        }
    }

    /// Serves every available request of queue `index`. Returns whether any chain was used.
    pub(super) fn process_queue(&mut self, index: usize) -> bool {
        let mut used = false;
        while let Some(chain) = self.queues[index].pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let reader = Reader::from_descriptor_chain(&self.mem, chain.clone());
            let writer = VirtioFsWriter::new(&self.mem, chain).map(Writer::VirtioFs);
            let len = match (reader, writer) {
                (Ok(reader), Ok(writer)) => {
                    match self.server.handle_message(reader, writer, None, None) {
                        Ok(len) => len,
                        Err(e) => {
                            log::warn!("virtio-fs {}: queue {index}: request: {e}", self.tag);
                            0
                        }
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    log::warn!(
                        "virtio-fs {}: queue {index}: unusable descriptor chain {head}: {e}",
                        self.tag
                    );
                    0
                }
            };
            let len = u32::try_from(len).unwrap_or(u32::MAX);
            if let Err(e) = self.queues[index].add_used(&self.mem, head, len) {
                log::error!(
                    "virtio-fs {}: queue {index}: returning descriptor {head}: {e}",
                    self.tag
                );
            }
            used = true;
        }
        used
    }

    fn signal_guest(&mut self) {
        let mut needed = false;
        for (index, queue) in self.queues.iter_mut().enumerate() {
            match queue.needs_notification(&self.mem) {
                Ok(n) => needed |= n,
                Err(e) => {
                    log::warn!("virtio-fs {}: queue {index}: {e}", self.tag);
                    needed = true;
                }
            }
        }
        if needed {
            if let Err(e) = self.interrupt.signal_used_queue() {
                log::error!("virtio-fs {}: signalling the guest: {e}", self.tag);
            }
        }
    }
}
