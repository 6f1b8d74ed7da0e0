//! The `vsock-worker` thread: one epoll loop over the queue event fds, the stop event fd, the
//! host listener and every host connection socket (the last two owned by the [`Muxer`]).
//!
//! tx: every guest packet is parsed and handed to the muxer; its descriptor chain is returned
//! with used length 0. rx: while the muxer has packets and the guest has rx buffers, packets are
//! written into them. Data is read from a host socket only into an rx buffer already taken from
//! the queue, so without rx buffers the host sockets are simply not read (edge-triggered epoll
//! keeps that from spinning) until the guest refills the queue and notifies it. Invalid rx
//! buffers, and header-only ones while only data is pending, are returned with used length 0.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{Muxer, MAX_PENDING_RSTS};
use super::packet::{self, RxBuffer};
use crate::devices::virtio::device::Interrupt;
use crate::vstate::memory::GuestMemoryMmap;

// Queue 2 is the event queue: the device never has events to post (no migration), so its
// buffers stay with the device and its notifications are only drained.
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
const STOP_TOKEN: u64 = 3;
const EPOLL_EVENTS: usize = 64;

pub struct Worker {
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    /// Kept open while registered in the epoll; the device holds the writing end.
    _stop: EventFd,
    muxer: Muxer,
    /// Scratch buffer for packet payloads.
    buf: Vec<u8>,
}

impl Worker {
    /// Registers the queue and stop event fds in the muxer's epoll. Queue `i` gets token `i`.
    pub fn new(
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        queue_events: Vec<EventFd>,
        stop: EventFd,
        muxer: Muxer,
    ) -> io::Result<Self> {
        for (token, evt) in queue_events.iter().enumerate() {
            muxer.epoll().ctl(
                ControlOperation::Add,
                evt.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token as u64),
            )?;
        }
        muxer.epoll().ctl(
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
            muxer,
            buf: Vec::with_capacity(packet::MAX_PKT_DATA),
        })
    }

    /// Runs until the stop event fd is written (or epoll fails).
    pub fn run(mut self) {
        let mut events = vec![EpollEvent::default(); EPOLL_EVENTS];
        // Buffers may have been queued before activation completed.
        self.process_queues();
        loop {
            let timeout = match self.muxer.next_deadline() {
                None => -1,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    // Round up so that the deadline has passed when we wake up.
                    i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
                }
            };
            let count = match self.muxer.epoll().wait(timeout, &mut events) {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("vsock: epoll_wait failed, stopping the device worker: {e}");
                    return;
                }
            };
            let now = Instant::now();
            for event in &events[..count] {
                let token = event.data();
                if token == STOP_TOKEN {
                    return;
                }
                if let Some(evt) = usize::try_from(token)
                    .ok()
                    .and_then(|i| self.queue_events.get(i))
                {
                    // Clears the level-triggered event; the queues are checked below anyway.
                    let _ = evt.read();
                } else {
                    self.muxer.handle_event(token, event.event_set(), now);
                }
            }
            self.muxer.handle_timeouts(Instant::now());
            self.process_queues();
        }
    }

    /// Alternates tx and rx until neither makes progress, then interrupts the guest once.
    fn process_queues(&mut self) {
        let mut signal = false;
        loop {
            let tx_used = self.process_tx();
            // tx stops early while too many RSTs are pending; once rx drained some, go again.
            let tx_throttled = self.muxer.rx_backlog() >= MAX_PENDING_RSTS;
            let rx_used = self.process_rx();
            signal |= tx_used || rx_used;
            if !(tx_throttled && rx_used) {
                break;
            }
        }
        if signal {
            self.signal_guest();
        }
    }

    fn signal_guest(&mut self) {
        let mut needed = false;
        for q in [RX_QUEUE, TX_QUEUE] {
            match self.queues[q].needs_notification(&self.mem) {
                Ok(n) => needed |= n,
                Err(e) => {
                    log::warn!("vsock: queue {q}: {e}");
                    needed = true;
                }
            }
        }
        if needed {
            if let Err(e) = self.interrupt.signal_used_queue() {
                log::error!("vsock: signalling the guest: {e}");
            }
        }
    }

    /// Consumes guest packets. Returns whether any descriptor was used.
    fn process_tx(&mut self) -> bool {
        let mut used = false;
        while self.muxer.rx_backlog() < MAX_PENDING_RSTS {
            let Some(chain) = self.queues[TX_QUEUE].pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            match packet::parse_tx(&self.mem, chain, &mut self.buf) {
                Ok(hdr) => self
                    .muxer
                    .process_guest_pkt(&hdr, &self.buf, Instant::now()),
                Err(e) => log::warn!("vsock: tx queue: dropping packet: {e}"),
            }
            if let Err(e) = self.queues[TX_QUEUE].add_used(&self.mem, head, 0) {
                log::error!("vsock: tx queue: returning descriptor {head}: {e}");
            }
            used = true;
        }
        used
    }

    /// Delivers pending packets into guest rx buffers. Returns whether any descriptor was used.
    fn process_rx(&mut self) -> bool {
        let mut used = false;
        while self.muxer.has_pending_rx() {
            let Some(chain) = self.queues[RX_QUEUE].pop_descriptor_chain(&self.mem) else {
                // No buffers: wait for the guest to notify the rx queue.
                break;
            };
            let head = chain.head_index();
            let rx = match RxBuffer::parse(&self.mem, chain) {
                Ok(rx) => rx,
                Err(e) => {
                    log::warn!("vsock: rx queue: unusable buffer: {e}");
                    self.add_used_rx(head, 0);
                    used = true;
                    continue;
                }
            };
            let Some(hdr) =
                self.muxer
                    .next_rx_pkt(rx.data_capacity(), &mut self.buf, Instant::now())
            else {
                if rx.data_capacity() == 0 && self.muxer.has_pending_rx() {
                    // Only data is pending and this buffer holds a header and nothing more.
                    // Kept, it would be popped first again every time: the queue would stall
                    // for good. Hand it back unused instead.
                    log::warn!("vsock: rx queue: buffer {head} has no room for data; returned");
                    self.add_used_rx(head, 0);
                    used = true;
                    continue;
                }
                // Nothing after all (e.g. the host socket had no data): keep the buffer.
                let rxq = &mut self.queues[RX_QUEUE];
                let next = rxq.next_avail().wrapping_sub(1);
                rxq.set_next_avail(next);
                break;
            };
            let len = match rx.write(&self.mem, &hdr, &self.buf) {
                Ok(len) => len,
                Err(e) => {
                    log::warn!("vsock: rx queue: writing packet: {e}");
                    0
                }
            };
            self.add_used_rx(head, len);
            used = true;
        }
        used
    }

    fn add_used_rx(&mut self, head: u16, len: u32) {
        if let Err(e) = self.queues[RX_QUEUE].add_used(&self.mem, head, len) {
            log::error!("vsock: rx queue: returning descriptor {head}: {e}");
        }
    }
}
