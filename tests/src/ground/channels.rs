//! The three channels between the runner and L1's init: the command's stdout and stderr, and a
//! control line channel. Each is a virtio-serial port whose QEMU chardev connects to a Unix
//! socket the runner listens on.
//!
//! A write to a virtio-serial port returns once the data is queued, not once QEMU has passed it
//! on, and QEMU holds it back while our socket is full; a power-off would lose what is still
//! queued. So, after the command, init writes a per-run random end marker on both output ports,
//! reports `exit N` on the control port and powers off only once the runner has answered `ack`,
//! which it does after reading both markers.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::process::{pump, Echo, EndMarker};
use super::GroundError;

/// What L1's init reported on the control port, with when the runner read it.
#[derive(Default)]
pub(crate) struct Control {
    pub(crate) ready: Option<Instant>,
    pub(crate) exited: Option<Instant>,
    pub(crate) setup_failed: Option<String>,
    pub(crate) stdout_ended: bool,
    pub(crate) stderr_ended: bool,
}

type Shared = Arc<(Mutex<Control>, Condvar)>;

/// The sockets of one run, listening before QEMU starts (its chardevs connect once, at startup).
pub(crate) struct Channels {
    pub(crate) ctl_socket: PathBuf,
    pub(crate) stdout_socket: PathBuf,
    pub(crate) stderr_socket: PathBuf,
    stop: Arc<AtomicBool>,
    shared: Shared,
    threads: Vec<(&'static str, JoinHandle<Vec<u8>>)>,
}

impl Channels {
    /// Listens on `dir/{ctl,stdout,stderr}.sock` and starts the reader threads.
    pub(crate) fn listen(
        dir: &Path,
        marker: &str,
        prefix: Option<String>,
    ) -> Result<Self, GroundError> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared: Shared = Arc::default();
        let listen = |name: &str| {
            let path = dir.join(format!("{name}.sock"));
            let listener = UnixListener::bind(&path).map_err(|source| GroundError::Io {
                action: "listen on",
                path: path.clone(),
                source,
            })?;
            Ok::<_, GroundError>((path, Late::new(listener, stop.clone())))
        };
        let (ctl_socket, ctl) = listen("ctl")?;
        let (stdout_socket, out) = listen("stdout")?;
        let (stderr_socket, err) = listen("stderr")?;
        let end = |stderr: bool| {
            let shared = shared.clone();
            Some(EndMarker {
                bytes: marker.as_bytes().to_vec(),
                on_seen: Box::new(move || {
                    let (lock, changed) = &*shared;
                    let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
                    if stderr {
                        c.stderr_ended = true;
                    } else {
                        c.stdout_ended = true;
                    }
                    changed.notify_all();
                }),
            })
        };
        let threads = vec![
            (
                "stdout",
                pump("stdout", out, Echo::Stdout, prefix.clone(), end(false)),
            ),
            (
                "stderr",
                pump("stderr", err, Echo::Stderr, prefix, end(true)),
            ),
            ("ctl", control_reader(ctl, shared.clone(), stop.clone())),
        ];
        Ok(Self {
            ctl_socket,
            stdout_socket,
            stderr_socket,
            stop,
            shared,
            threads,
        })
    }

    /// Stops waiting for connections and joins the readers; call once QEMU is gone, so that the
    /// streams end. Returns stdout, stderr and the control reports.
    pub(crate) fn finish(mut self) -> (Vec<u8>, Vec<u8>, Control) {
        self.stop.store(true, Ordering::SeqCst);
        let mut out = Vec::new();
        let mut err = Vec::new();
        for (name, handle) in self.threads.drain(..) {
            let bytes = handle.join().unwrap_or_default();
            match name {
                "stdout" => out = bytes,
                "stderr" => err = bytes,
                _ => {}
            }
        }
        let control = std::mem::take(&mut *self.shared.0.lock().unwrap_or_else(|e| e.into_inner()));
        (out, err, control)
    }
}

impl Drop for Channels {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (_, handle) in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

/// A listener whose single connection is accepted on the first read; reads end (Ok(0)) when
/// `stop` is set before any peer connected.
struct Late {
    listener: UnixListener,
    stop: Arc<AtomicBool>,
    stream: Option<UnixStream>,
}

impl Late {
    fn new(listener: UnixListener, stop: Arc<AtomicBool>) -> Self {
        Self {
            listener,
            stop,
            stream: None,
        }
    }
}

impl Read for Late {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stream.is_none() {
            self.listener.set_nonblocking(true)?;
            loop {
                match self.listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false)?;
                        self.stream = Some(stream);
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if self.stop.load(Ordering::SeqCst) {
                            return Ok(0);
                        }
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.stream.as_mut().expect("connected above").read(buf)
    }
}

/// Reads the control lines; after `exit N`, answers `ack` once both output markers were read.
fn control_reader(source: Late, shared: Shared, stop: Arc<AtomicBool>) -> JoinHandle<Vec<u8>> {
    let body = move || {
        let mut reader = BufReader::new(source);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let now = Instant::now();
            let (lock, changed) = &*shared;
            let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
            let line = line.trim_end();
            if line == "ready" {
                c.ready.get_or_insert(now);
            } else if let Some(problem) = line.strip_prefix("setup-failed ") {
                c.setup_failed = Some(problem.to_owned());
            } else if line.starts_with("exit ") {
                c.exited.get_or_insert(now);
                let done = |c: &Control| c.stdout_ended && c.stderr_ended;
                while !done(&c) && !stop.load(Ordering::SeqCst) {
                    c = changed
                        .wait_timeout(c, Duration::from_millis(50))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                drop(c);
                if let Some(stream) = reader.get_mut().stream.as_mut() {
                    let _ = stream.write_all(b"ack\n");
                }
            }
        }
        Vec::new()
    };
    thread::Builder::new()
        .name("ground-ctl".into())
        .spawn(body)
        .expect("spawn control reader thread")
}

/// A fresh random end marker: 128 bits from /dev/urandom.
pub(crate) fn end_marker() -> Result<String, GroundError> {
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| GroundError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        })?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("<<nutshell-ground-end-{hex}>>"))
}
