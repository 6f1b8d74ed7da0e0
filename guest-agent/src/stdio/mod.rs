//! stdio of container processes: pipes (or a pty for a terminal) made before the process
//! starts, the agent's ends kept in a [`StdioHub`] by (container id, exec id), and wired to
//! vsock connections by [`server`] when the host attaches (`StdioAttach` in agent.proto).
//!
//! Output is held (the process blocks once a pipe is full) until its stream attaches; an
//! output stream is closed only after the process side reached EOF, so nothing is lost.

pub mod server;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use nix::fcntl::OFlag;

use crate::container::process_setup::ChildStdioFds;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("cannot make stdio pipes")]
    Pipe(#[source] nix::Error),
    #[error("cannot make a pty: {step}")]
    Pty {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("cannot open /dev/null")]
    DevNull(#[source] std::io::Error),
    #[error("not a terminal: ResizeTty needs a process started with terminal true")]
    NotATerminal,
    #[error("cannot resize the terminal")]
    Resize(#[source] nix::Error),
}

/// The child's ends, held until the process has been forked.
pub struct ChildStdio {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    terminal: bool,
}

impl ChildStdio {
    pub fn fds(&self) -> ChildStdioFds {
        ChildStdioFds {
            stdin: self.stdin.as_raw_fd(),
            stdout: self.stdout.as_raw_fd(),
            stderr: self.stderr.as_raw_fd(),
            terminal: self.terminal,
        }
    }
}

/// The agent's ends of one process's stdio.
pub struct ProcessStdio {
    /// The pty's controlling side, for a terminal.
    tty: Option<OwnedFd>,
    stdin: Mutex<Option<OwnedFd>>,
    stdout: Mutex<Option<OwnedFd>>,
    stderr: Mutex<Option<OwnedFd>>,
    /// CloseStdin came while a stdin stream was attached: its copier closes once idle.
    close_stdin: AtomicBool,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), StdioError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(StdioError::Pipe)
}

fn dev_null() -> Result<OwnedFd, StdioError> {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(StdioError::DevNull)
}

fn open_pty() -> Result<(OwnedFd, OwnedFd), StdioError> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let pty = |step| move |source| StdioError::Pty { step, source };
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(pty("posix_openpt"))?;
    grantpt(&master).map_err(pty("grantpt"))?;
    unlockpt(&master).map_err(pty("unlockpt"))?;
    let name = ptsname_r(&master).map_err(pty("ptsname"))?;
    let follower = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(pty("open follower"))?;
    // SAFETY: open(2) just returned this descriptor; nothing else owns it.
    let follower = unsafe { OwnedFd::from_raw_fd(follower) };
    // SAFETY: PtyMaster wraps an owned descriptor; into_raw_fd hands its ownership over.
    let master = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(master)) };
    Ok((master, follower))
}

/// Makes a process's stdio: a pty for a terminal, else pipes; stdin is /dev/null unless
/// `stdin` (a terminal always reads its pty).
pub fn create(terminal: bool, stdin: bool) -> Result<(Arc<ProcessStdio>, ChildStdio), StdioError> {
    if terminal {
        let (master, follower) = open_pty()?;
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|e| {
                StdioError::Pipe(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            })
        };
        let child = ChildStdio {
            stdin: dup(&follower)?,
            stdout: dup(&follower)?,
            stderr: follower,
            terminal: true,
        };
        let agent = ProcessStdio {
            tty: Some(master),
            stdin: Mutex::new(None),
            stdout: Mutex::new(None),
            stderr: Mutex::new(None),
            close_stdin: AtomicBool::new(false),
        };
        return Ok((Arc::new(agent), child));
    }
    let (stdin_read, stdin_write) = if stdin {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        (dev_null()?, None)
    };
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    let child = ChildStdio {
        stdin: stdin_read,
        stdout: stdout_write,
        stderr: stderr_write,
        terminal: false,
    };
    let agent = ProcessStdio {
        tty: None,
        stdin: Mutex::new(stdin_write),
        stdout: Mutex::new(Some(stdout_read)),
        stderr: Mutex::new(Some(stderr_read)),
        close_stdin: AtomicBool::new(false),
    };
    Ok((Arc::new(agent), child))
}

fn take(slot: &Mutex<Option<OwnedFd>>) -> Option<OwnedFd> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

impl ProcessStdio {
    pub fn is_terminal(&self) -> bool {
        self.tty.is_some()
    }

    /// The pty's controlling side (a new descriptor), for a terminal.
    fn tty_clone(&self) -> Option<OwnedFd> {
        self.tty.as_ref().and_then(|fd| fd.try_clone().ok())
    }

    /// The read end of stdout for its stream (once), or the pty.
    pub fn take_stdout(&self) -> Option<OwnedFd> {
        self.tty_clone().or_else(|| take(&self.stdout))
    }

    /// The read end of stderr (once); none for a terminal.
    pub fn take_stderr(&self) -> Option<OwnedFd> {
        if self.tty.is_some() {
            return None;
        }
        take(&self.stderr)
    }

    /// The write end of stdin (once), or the pty.
    pub fn take_stdin(&self) -> Option<OwnedFd> {
        self.tty_clone().or_else(|| take(&self.stdin))
    }

    pub fn close_stdin_requested(&self) -> bool {
        self.close_stdin.load(Ordering::SeqCst)
    }

    /// CloseStdin: EOF to the process. Unattached, the pipe closes now; an attached stream's
    /// copier closes it once what the host sent so far is through. On a terminal, ^D.
    pub fn close_stdin(&self) {
        self.close_stdin.store(true, Ordering::SeqCst);
        if let Some(tty) = &self.tty {
            let _ = nix::unistd::write(tty, b"\x04");
            return;
        }
        drop(take(&self.stdin));
    }

    /// ResizeTty: the pty's window size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), StdioError> {
        let tty = self.tty.as_ref().ok_or(StdioError::NotATerminal)?;
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid winsize on an open pty descriptor.
        let rc = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc != 0 {
            return Err(StdioError::Resize(nix::Error::last()));
        }
        Ok(())
    }
}

/// Key of a process: (container id, exec id; "" for the init).
pub type ProcessKey = (String, String);

/// The stdio of every process, by container and exec id.
#[derive(Default)]
pub struct StdioHub {
    processes: Mutex<HashMap<ProcessKey, Arc<ProcessStdio>>>,
}

impl StdioHub {
    pub fn new() -> Arc<StdioHub> {
        Arc::new(StdioHub::default())
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<ProcessKey, Arc<ProcessStdio>>> {
        self.processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers (or replaces, for a restart) a process's stdio.
    pub fn register(&self, container_id: &str, exec_id: &str, stdio: Arc<ProcessStdio>) {
        self.table()
            .insert((container_id.to_string(), exec_id.to_string()), stdio);
    }

    pub fn get(&self, container_id: &str, exec_id: &str) -> Option<Arc<ProcessStdio>> {
        self.table()
            .get(&(container_id.to_string(), exec_id.to_string()))
            .cloned()
    }

    /// Forgets one process.
    pub fn remove_process(&self, container_id: &str, exec_id: &str) {
        self.table()
            .remove(&(container_id.to_string(), exec_id.to_string()));
    }

    /// Forgets every process of a container.
    pub fn remove_container(&self, container_id: &str) {
        self.table().retain(|(c, _), _| c != container_id);
    }
}
