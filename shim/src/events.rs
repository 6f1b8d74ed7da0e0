//! Task events to containerd, in the order they happened: one thread publishes a queue, so a
//! slow containerd never holds up a task call and TaskStart always precedes its TaskExit.

use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;
use std::time::Duration;

use containerd_shim::event::Event;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;

enum Item {
    Event(Box<dyn Event + Send>),
    Flush(Sender<()>),
}

/// The queue to containerd's event service.
pub struct Events {
    queue: Mutex<Sender<Item>>,
}

impl Events {
    /// Starts the publishing thread for events of `namespace`.
    pub fn start(publisher: RemotePublisher, namespace: String) -> Events {
        let (queue, inbox) = channel::<Item>();
        std::thread::spawn(move || {
            for item in inbox {
                match item {
                    Item::Event(event) => {
                        let topic = event.topic();
                        if let Err(e) =
                            publisher.publish(Context::default(), &topic, &namespace, event)
                        {
                            log::warn!("cannot publish {topic}: {e}");
                        }
                    }
                    Item::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Events {
            queue: Mutex::new(queue),
        }
    }

    /// Queues `event`.
    pub fn send(&self, event: impl Event + Send + 'static) {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let _ = queue.send(Item::Event(Box::new(event)));
    }

    /// Waits (up to `timeout`) until everything queued so far was published.
    pub fn flush(&self, timeout: Duration) {
        let (done, wait) = channel();
        {
            let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.send(Item::Flush(done)).is_err() {
                return;
            }
        }
        let _ = wait.recv_timeout(timeout);
    }
}
