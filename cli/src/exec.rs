//! `nutshell exec`: a process in a running container, joining all its namespaces and its
//! cgroup (the agent's ExecProcess), with stdio over vsock streams and, with `-t`, a terminal.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use nix::sys::termios::{self, SetArg};
use nutshell_protocol::agent::{
    ExecProcessRequest, ResizeTtyRequest, StdioStream, WaitProcessRequest,
};
use nutshell_protocol::client::attach_stdio;
use nutshell_runtime::pod::CALL;
use nutshell_runtime::pod_dirs::PodDirs;
use nutshell_runtime::state::PodState;
use nutshell_runtime::vm;

use crate::Cli;

#[derive(clap::Args)]
pub struct ExecArgs {
    /// Keep stdin open and send it to the process.
    #[arg(short, long)]
    interactive: bool,
    /// Give the process a terminal.
    #[arg(short, long)]
    tty: bool,
    pod: String,
    container: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn process_json(args: &[String], terminal: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            if terminal { "TERM=xterm" } else { "TERM=dumb" },
        ],
        "cwd": "/",
    }))
    .expect("JSON of strings")
}

fn copy(mut from: impl Read, mut to: impl Write) {
    let mut buf = vec![0u8; 32 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
        let _ = to.flush();
    }
}

fn window_size() -> Option<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills a winsize; fd 0 is ours.
    let rc = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_row > 0).then_some((size.ws_row, size.ws_col))
}

pub fn exec(cli: &Cli, args: &ExecArgs) -> Result<i32> {
    let dirs = PodDirs::new(&cli.state_dir, &args.pod);
    let state = PodState::load(&dirs.state()).with_context(|| format!("no pod {:?}", args.pod))?;
    if !state.phase.is_live() {
        bail!("pod {:?} is {}", args.pod, state.phase.name());
    }
    if !state.containers.iter().any(|c| c.name == args.container) {
        bail!("pod {:?} has no container {:?}", args.pod, args.container);
    }
    let agent = vm::agent(&dirs, Duration::from_secs(10))?;
    let exec_id = format!(
        "exec-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let mut req = ExecProcessRequest::new();
    req.container_id = args.container.clone();
    req.exec_id = exec_id.clone();
    req.process_json = process_json(&args.command, args.tty);
    req.stdin = args.interactive || args.tty;
    agent.exec_process(&req, CALL).map_err(|e| {
        anyhow::anyhow!(
            "{}",
            e.status_message()
                .map(str::to_owned)
                .unwrap_or(e.to_string())
        )
    })?;
    let attach = |stream| attach_stdio(&dirs.vsock(), &args.container, &exec_id, stream, CALL);
    let stdout = attach(StdioStream::STDOUT)?;
    let mut readers = vec![thread::spawn(move || copy(stdout, std::io::stdout()))];
    if !args.tty {
        let stderr = attach(StdioStream::STDERR)?;
        readers.push(thread::spawn(move || copy(stderr, std::io::stderr())));
    }
    let saved_termios = if args.tty {
        if let Some((rows, cols)) = window_size() {
            let mut resize = ResizeTtyRequest::new();
            resize.container_id = args.container.clone();
            resize.exec_id = exec_id.clone();
            resize.rows = rows.into();
            resize.cols = cols.into();
            let _ = agent.resize_tty(&resize, CALL);
        }
        let stdin = std::io::stdin();
        termios::tcgetattr(stdin.as_fd()).ok().inspect(|saved| {
            let mut raw = saved.clone();
            termios::cfmakeraw(&mut raw);
            let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        })
    } else {
        None
    };
    if req.stdin {
        let mut stream = attach(StdioStream::STDIN)?;
        thread::spawn(move || {
            copy(std::io::stdin(), &mut stream);
            let _ = stream.shutdown(std::net::Shutdown::Write);
        });
    }
    let mut wait = WaitProcessRequest::new();
    wait.container_id = args.container.clone();
    wait.exec_id = exec_id;
    let exit = agent.wait_process(&wait, Duration::from_secs(24 * 3600));
    for reader in readers {
        let _ = reader.join();
    }
    if let Some(saved) = saved_termios {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &saved);
    }
    let exit = exit.map_err(|e| anyhow::anyhow!("WaitProcess: {e}"))?;
    Ok(exit.exit_code)
}
