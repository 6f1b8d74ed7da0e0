//! The supervisor: one process per pod, started by `nutshell run` in its own session. It
//! starts the pod, copies every container's output into `logs/<container>.log`, waits for the
//! containers and restarts them as `restartPolicy` says, and tears the pod down on SIGTERM
//! (`nutshell stop`, Ctrl-C during `run`), when every container has ended for good, or when
//! the VMM dies (then the pod is `crashed`, with the VMM's status and the console's end).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nutshell_image::ImageStore;
use nutshell_podspec::model::RestartPolicy;
use nutshell_protocol::agent::{
    StartContainerRequest, StdioStream, WaitProcessRequest, WaitProcessResponse,
};
use nutshell_protocol::client::attach_stdio;
use nutshell_protocol::AgentClient;

use crate::pod::{self, Launch, CALL};
use crate::pod_dirs::PodDirs;
use crate::state::{PodPhase, PodState};
use crate::RuntimeError;

/// Longest WaitProcess (a container may run for days; the call is simply made again).
const WAIT_CALL: Duration = Duration::from_secs(24 * 3600);
/// First restart delay; doubled per restart up to [`MAX_BACKOFF`] (the kubelet's CrashLoopBackOff,
/// shortened).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

enum Event {
    Exited(String, WaitProcessResponse),
    WaitFailed(String, String),
    Stop(Signal),
}

/// Blocks the stop signals in this thread (and every thread it starts later) and turns them
/// into events.
fn watch_signals(events: Sender<Event>) -> Result<(), RuntimeError> {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(signal);
    }
    set.thread_block().map_err(|errno| RuntimeError::Pod {
        pod: String::new(),
        reason: format!("cannot block signals: {errno}"),
    })?;
    thread::spawn(move || {
        if let Ok(signal) = set.wait() {
            let _ = events.send(Event::Stop(signal));
        }
    });
    Ok(())
}

/// Copies one output stream of a container into its log file until the stream ends.
fn copy_to_log(dirs: &PodDirs, container: &str, stream: StdioStream) -> Result<(), RuntimeError> {
    let mut source = attach_stdio(&dirs.vsock(), container, "", stream, CALL)
        .map_err(|e| RuntimeError::agent(&format!("attach {stream:?} of {container}"), e))?;
    let path = dirs.log(container);
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(RuntimeError::io("open", &path))?;
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match source.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if log.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
    Ok(())
}

/// Starts (or restarts) a container with its logs attached, and a thread waiting for it.
fn start_container(
    dirs: &PodDirs,
    agent: &AgentClient,
    name: &str,
    events: &Sender<Event>,
) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(dirs.logs()).map_err(RuntimeError::io("create", &dirs.logs()))?;
    let mut req = StartContainerRequest::new();
    req.container_id = name.to_string();
    agent
        .start_container(&req, CALL)
        .map_err(|e| RuntimeError::agent(&format!("StartContainer {name}"), e))?;
    // Output waits in the guest's pipes until attached, so attaching after the start loses
    // nothing (and a restart's new pipes only exist once it started).
    copy_to_log(dirs, name, StdioStream::STDOUT)?;
    copy_to_log(dirs, name, StdioStream::STDERR)?;
    wait_for(agent, name, events);
    Ok(())
}

/// A thread waiting for the container's init to exit; its answer becomes an event.
fn wait_for(agent: &AgentClient, name: &str, events: &Sender<Event>) {
    let agent = agent.clone();
    let events = events.clone();
    let name = name.to_string();
    thread::spawn(move || {
        let mut req = WaitProcessRequest::new();
        req.container_id = name.clone();
        let event = match agent.wait_process(&req, WAIT_CALL) {
            Ok(exit) => Event::Exited(name, exit),
            Err(e) => Event::WaitFailed(name, e.to_string()),
        };
        let _ = events.send(event);
    });
}

/// Whether the VMM ends within `grace` (a failed agent call is often its death seen first).
fn vmm_ended(vmm: &mut std::process::Child, grace: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + grace;
    loop {
        if let Ok(Some(status)) = vmm.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn should_restart(policy: RestartPolicy, exit_code: i32) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => exit_code != 0,
        RestartPolicy::Never => false,
    }
}

fn console_tail(dirs: &PodDirs) -> String {
    let text = std::fs::read_to_string(dirs.console()).unwrap_or_default();
    let start = text.len().saturating_sub(1500);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

fn update(dirs: &PodDirs, change: impl FnOnce(&mut PodState)) -> Result<(), RuntimeError> {
    let mut state = PodState::load(&dirs.state())?;
    change(&mut state);
    state.save(&dirs.state())
}

/// Runs the pod in `dirs` to its end; the phase it ended in.
pub fn supervise(dirs: &PodDirs) -> Result<PodPhase, RuntimeError> {
    let (events, inbox) = channel();
    watch_signals(events.clone())?;
    update(dirs, |s| s.supervisor_pid = Some(std::process::id() as i32))?;
    let fail = |e: RuntimeError| {
        let _ = update(dirs, |s| {
            s.phase = PodPhase::Failed;
            s.detail = Some(e.to_string());
        });
        e
    };
    let launch = Launch::load(dirs).map_err(fail)?;
    let manifest = pod::load_manifest(&pod::manifest_path(dirs)).map_err(fail)?;
    let store = ImageStore::open(&launch.image_store).map_err(|e| fail(e.into()))?;
    let (mut plan, images) = pod::plan(&manifest, &launch, &store).map_err(fail)?;
    let sandbox_id = plan.sandbox.sandbox_id.clone();
    let mut started = pod::start(dirs, &mut plan, &images, &launch, &store).map_err(fail)?;
    update(dirs, |s| s.vmm_pid = Some(started.vmm.id() as i32)).map_err(fail)?;

    let mut running = BTreeMap::new();
    for container in &plan.containers {
        if let Err(e) = start_container(dirs, &started.agent, &container.id, &events) {
            pod::teardown(
                dirs,
                Some(&mut started.vmm),
                Some(&started.agent),
                &sandbox_id,
            );
            return Err(fail(e));
        }
        running.insert(container.id.clone(), ());
        update(dirs, |s| {
            if let Some(c) = s.container_mut(&container.id) {
                c.status = "running".into();
            }
        })?;
    }
    update(dirs, |s| s.phase = PodPhase::Running)?;

    // Restarts made so far, and those scheduled (after their back-off).
    let mut restart_counts: BTreeMap<String, u32> = BTreeMap::new();
    let mut pending: BTreeMap<String, Instant> = BTreeMap::new();
    let phase = loop {
        match inbox.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Stop(signal)) => {
                log::info!("stopping on {signal}");
                break PodPhase::Stopped;
            }
            Ok(Event::Exited(name, exit)) => {
                running.remove(&name);
                let count = restart_counts.get(&name).copied().unwrap_or(0);
                let restart = should_restart(manifest.restart_policy, exit.exit_code);
                update(dirs, |s| {
                    if let Some(c) = s.container_mut(&name) {
                        c.status = "exited".into();
                        c.exit_code = Some(exit.exit_code);
                        c.oom_killed = exit.oom_killed;
                    }
                })?;
                if restart {
                    let delay =
                        (FIRST_BACKOFF * 2u32.saturating_pow(count.min(5))).min(MAX_BACKOFF);
                    pending.insert(name, Instant::now() + delay);
                }
            }
            Ok(Event::WaitFailed(name, why)) => {
                // The VMM's end is handled below; otherwise the agent stays up: wait again.
                if vmm_ended(&mut started.vmm, Duration::from_secs(2)).is_none() {
                    log::warn!("waiting for {name} failed ({why}); waiting again");
                    wait_for(&started.agent, &name, &events);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break PodPhase::Stopped,
        }
        if let Some(status) = vmm_ended(&mut started.vmm, Duration::ZERO) {
            let detail = format!(
                "the VMM exited ({status}); console ends with:\n{}",
                console_tail(dirs)
            );
            update(dirs, |s| s.detail = Some(detail))?;
            pod::teardown(dirs, None, None, &sandbox_id);
            update(dirs, |s| s.phase = PodPhase::Crashed)?;
            return Ok(PodPhase::Crashed);
        }
        let now = Instant::now();
        let due: Vec<String> = pending
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            pending.remove(&name);
            let count = restart_counts.entry(name.clone()).or_insert(0);
            *count += 1;
            let count = *count;
            match start_container(dirs, &started.agent, &name, &events) {
                Ok(()) => {
                    running.insert(name.clone(), ());
                    update(dirs, |s| {
                        if let Some(c) = s.container_mut(&name) {
                            c.status = "running".into();
                            c.restarts = count;
                        }
                    })?;
                }
                Err(e) => log::warn!("restart of {name} failed: {e}"),
            }
        }
        if running.is_empty() && pending.is_empty() {
            break PodPhase::Completed;
        }
    };
    let problems = pod::teardown(
        dirs,
        Some(&mut started.vmm),
        Some(&started.agent),
        &sandbox_id,
    );
    update(dirs, |s| {
        s.phase = phase;
        s.vmm_pid = None;
        if !problems.is_empty() {
            s.detail = Some(format!("teardown: {}", problems.join("; ")));
        }
    })?;
    Ok(phase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policy_decides() {
        assert!(should_restart(RestartPolicy::Always, 0));
        assert!(should_restart(RestartPolicy::OnFailure, 3));
        assert!(!should_restart(RestartPolicy::OnFailure, 0));
        assert!(!should_restart(RestartPolicy::Never, 1));
    }
}
