//! `nutshell run`, `stop`, `rm`, and the hidden `supervise` that keeps a pod.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use nutshell_image::{ImageStore, ImportOptions};
use nutshell_podspec::Pod;
use nutshell_runtime::pod::{self, Launch};
use nutshell_runtime::pod_dirs::PodDirs;
use nutshell_runtime::state::{process_alive, ContainerState, PodPhase, PodState};
use nutshell_runtime::vm::{size_memory, size_vcpus, VmSpec};

use crate::images::open_store;
use crate::Cli;

#[derive(clap::Args)]
pub struct RunArgs {
    /// A Kubernetes v1/Pod manifest (YAML).
    manifest: PathBuf,
    /// Holds configmaps/<name>/ and secrets/<name>/ for configMap and secret volumes.
    #[arg(long)]
    config_dir: Option<PathBuf>,
    /// Guest kernel (vmlinux with PVH, or bzImage).
    #[arg(long, env = "NUTSHELL_KERNEL")]
    kernel: PathBuf,
    /// Guest initramfs (the agent as /init).
    #[arg(long, env = "NUTSHELL_INITRD")]
    initrd: PathBuf,
    /// The VMM binary; default: nutshell-vmm next to this program.
    #[arg(long, env = "NUTSHELL_VMM")]
    vmm: Option<PathBuf>,
    /// Least guest memory, whatever the pod's limits.
    #[arg(long, default_value_t = 256)]
    min_memory_mib: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Finds (or, for a path, imports) each container's image; adds the pod's references.
fn resolve_images(store: &ImageStore, pod: &Pod) -> Result<BTreeMap<String, String>> {
    let mut ids = BTreeMap::new();
    for (i, container) in pod.containers.iter().enumerate() {
        let field = format!("spec.containers[{i}].image {:?}", container.image);
        let image = if Path::new(&container.image).exists() {
            eprintln!("importing {} ...", container.image);
            let progress = |p: &nutshell_image::Progress| eprintln!("  {p}");
            store
                .import_with(
                    &container.image,
                    &ImportOptions {
                        holder: Some(&pod.name),
                        progress: Some(&progress),
                        ..Default::default()
                    },
                )
                .with_context(|| field.clone())?
        } else {
            let image = store.find(&container.image).with_context(|| {
                format!(
                    "{field}: not in the image store (import it with `nutshell image import PATH`)"
                )
            })?;
            store.add_ref(&image.id, &pod.name)?;
            image
        };
        ids.insert(container.name.clone(), image.id.to_string());
    }
    Ok(ids)
}

fn default_vmm() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("nutshell-vmm")))
        .unwrap_or_else(|| PathBuf::from("nutshell-vmm"))
}

pub fn run(cli: &Cli, args: &RunArgs) -> Result<i32> {
    let text = std::fs::read_to_string(&args.manifest)
        .with_context(|| format!("cannot read {}", args.manifest.display()))?;
    let pod = nutshell_podspec::parse_pod(&text)
        .with_context(|| format!("{}", args.manifest.display()))?;
    let dirs = PodDirs::new(&cli.state_dir, &pod.name);
    if dirs.root.exists() {
        bail!(
            "pod {:?} exists already (`nutshell rm {}` removes it)",
            pod.name,
            pod.name
        );
    }
    let limits = |f: fn(&nutshell_podspec::model::ResourceAmounts) -> Option<u64>| -> u64 {
        pod.containers
            .iter()
            .filter_map(|c| f(&c.resources.limits))
            .sum()
    };
    let vm = VmSpec {
        vmm: args.vmm.clone().unwrap_or_else(default_vmm),
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        mem_mib: size_memory(limits(|l| l.memory_bytes), args.min_memory_mib),
        vcpus: size_vcpus(limits(|l| l.cpu_millis)),
        cpu_limit_millicores: limits(|l| l.cpu_millis),
    };
    vm.check()?;
    let store = open_store(cli)?;
    let images = resolve_images(&store, &pod)?;
    std::fs::create_dir_all(&dirs.root)
        .with_context(|| format!("cannot create {}", dirs.root.display()))?;
    std::fs::write(pod::manifest_path(&dirs), &text)?;
    Launch {
        vm,
        image_store: cli.image_store.clone(),
        images: images.clone(),
        config_dir: args.config_dir.clone(),
    }
    .save(&dirs)?;
    PodState {
        name: pod.name.clone(),
        uid: pod.uid.clone(),
        phase: PodPhase::Starting,
        detail: None,
        supervisor_pid: None,
        vmm_pid: None,
        images: images.values().cloned().collect(),
        containers: pod
            .containers
            .iter()
            .map(|c| ContainerState {
                name: c.name.clone(),
                image: c.image.clone(),
                status: "created".into(),
                exit_code: None,
                oom_killed: false,
                restarts: 0,
            })
            .collect(),
        created_at: now(),
    }
    .save(&dirs.state())?;

    let supervisor = spawn_supervisor(cli, &dirs, &pod.name)?;
    // Ctrl-C while the pod starts tears it down and removes it: nothing of it stays.
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    loop {
        let state = PodState::load(&dirs.state())?;
        match state.phase {
            PodPhase::Running => {
                println!("{}", pod.name);
                return Ok(0);
            }
            PodPhase::Starting if process_alive(supervisor as i32) => {}
            PodPhase::Starting => bail!(
                "pod {:?}: the supervisor ended while starting (see {})",
                pod.name,
                dirs.supervisor_log().display()
            ),
            phase => bail!(
                "pod {:?} {}: {}",
                pod.name,
                phase.name(),
                state.detail.unwrap_or_default()
            ),
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            eprintln!("interrupted: tearing pod {:?} down", pod.name);
            rm(cli, &pod.name, true)?;
            eprintln!("pod {:?} removed", pod.name);
            return Ok(130);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn spawn_supervisor(cli: &Cli, dirs: &PodDirs, pod: &str) -> Result<u32> {
    let log = std::fs::File::create(dirs.supervisor_log())?;
    let exe = std::env::current_exe().context("cannot find the nutshell binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--state-dir")
        .arg(&cli.state_dir)
        .arg("--image-store")
        .arg(&cli.image_store)
        .arg("supervise")
        .arg(pod)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid(2) between fork and exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    Ok(cmd.spawn().context("cannot start the pod supervisor")?.id())
}

pub fn supervise(cli: &Cli, pod: &str) -> Result<i32> {
    let dirs = PodDirs::new(&cli.state_dir, pod);
    let phase = nutshell_runtime::supervisor::supervise(&dirs)?;
    eprintln!("pod {pod} {}", phase.name());
    Ok(0)
}

fn load(cli: &Cli, pod: &str) -> Result<(PodDirs, PodState)> {
    let dirs = PodDirs::new(&cli.state_dir, pod);
    if !dirs.state().exists() {
        bail!("no pod {pod:?} (see `nutshell ps`)");
    }
    let state = PodState::load(&dirs.state())?;
    Ok((dirs, state))
}

/// Stops the pod: SIGTERM to its supervisor (which tears everything down), then whatever is
/// left after a crash.
pub fn stop(cli: &Cli, pod: &str) -> Result<()> {
    let (dirs, state) = load(cli, pod)?;
    if let Some(pid) = state.supervisor_pid.filter(|p| process_alive(*p)) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while process_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if process_alive(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    // After a crash of the supervisor: the VMM and the mounts may still be there.
    let state = PodState::load(&dirs.state())?;
    if let Some(pid) = state.vmm_pid.filter(|p| process_alive(*p)) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let problems = pod::teardown(&dirs, None, None, pod);
    let mut state = PodState::load(&dirs.state())?;
    if state.phase.is_live() {
        state.phase = PodPhase::Stopped;
    }
    state.vmm_pid = None;
    state.save(&dirs.state())?;
    if !problems.is_empty() {
        bail!("pod {pod:?} stopped, but: {}", problems.join("; "));
    }
    Ok(())
}

pub fn rm(cli: &Cli, pod: &str, force: bool) -> Result<()> {
    let (dirs, state) = load(cli, pod)?;
    // A pod whose VMM died is a crash even before its supervisor records it (as `ps` shows).
    let live = state.phase.is_live() && state.crashed_unrecorded().is_none();
    if live && !force {
        bail!(
            "pod {pod:?} is {}: stop it first, or `nutshell rm -f`",
            state.phase.name()
        );
    }
    stop(cli, pod)?;
    let store = open_store(cli)?;
    pod::release_images(&store, pod, &state.images)?;
    std::fs::remove_dir_all(&dirs.root)
        .with_context(|| format!("cannot remove {}", dirs.root.display()))?;
    Ok(())
}
