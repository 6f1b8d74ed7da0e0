//! `cargo xtask bench-cri [--pods N]` (issue 6, acceptance 6): what a pod costs through CRI
//! with the runtime handler `nutshell` beside `runc`, through the same containerd.
//!
//! On the KVM test ground (nested where needed) one standalone containerd 1.6 runs with the
//! CRI images imported (`nutshell_tests::cri_client`). After one untimed warm-up pod per
//! handler, N pods (default 10) per handler, interleaved nutshell/runc, each: RunPodSandbox,
//! then CreateContainer + StartContainer of the seed's app (httpd) and of its sidecar (sleep),
//! each timed; then StopPodSandbox and RemovePodSandbox (not timed, checked to leave nothing).
//! Prints per-handler medians with min and max of each step and of the total, and the ratio
//! nutshell/runc; then the host memory of one pod of each handler, both running: VmRSS of the
//! pod's shim and of everything below it (nutshell: the `nutshell-vmm`; runc: the containers,
//! also found through the pids containerd's CRI reports).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nutshell_tests::containerd::build_shim;
use nutshell_tests::cri_client::{
    comm, container_config, descendants, parent, pod_config, pod_shim, pod_vmm, rss_kib, Cri,
    SeedPod, APP_SCRIPT, SIDECAR_SCRIPT,
};
use nutshell_tests::pod_guest::GuestImage;

use crate::artifacts;

/// nutshell first in each round, runc right after it.
const HANDLERS: [&str; 2] = ["nutshell", "runc"];
const APP_MEMORY: i64 = 128 << 20;
/// The sidecar fetches the app's page over the pod's loopback (retrying while httpd starts).
const FETCH: &str =
    "for i in $(seq 300); do wget -qO- http://127.0.0.1:8080/ && exit 0; sleep 0.1; done; exit 1";

pub fn run(args: &[String]) -> Result<()> {
    pods_arg(args)?;
    let image = artifacts::build_all()?;
    // The busybox test image's OCI layout (build/test-image/oci), which containerd imports.
    GuestImage::build_test().context("the busybox test image")?;
    // target/release/containerd-shim-nutshell-v2, where the ground's containerd finds it.
    println!("shim:            {}", build_shim().display());
    let mut inner = vec!["bench-cri-inner"];
    inner.extend(args.iter().map(String::as_str));
    artifacts::run_on_kvm_host(&image, &inner, Duration::from_secs(1800))
}

fn pods_arg(args: &[String]) -> Result<usize> {
    match args.iter().position(|a| a == "--pods") {
        Some(i) => match args.get(i + 1).and_then(|n| n.parse::<usize>().ok()) {
            Some(n) if n > 0 => Ok(n),
            _ => bail!("--pods N (N at least 1)"),
        },
        None => Ok(10),
    }
}

/// The timed steps of one pod.
#[derive(Clone, Copy)]
struct Times {
    run_pod: Duration,
    app: Duration,
    sidecar: Duration,
}

impl Times {
    fn total(&self) -> Duration {
        self.run_pod + self.app + self.sidecar
    }
}

/// One pod of `handler` from RunPodSandbox to both containers started (timed), then removed.
fn one_pod(cri: &mut Cri, name: &str, handler: &str) -> Times {
    let config = pod_config(name, handler, &cri.logs_dir());
    let began = Instant::now();
    let pod = cri.run_pod(&config, handler);
    let run_pod = began.elapsed();
    let began = Instant::now();
    cri.start_container(
        &pod,
        &config,
        container_config("app", 0, APP_SCRIPT, APP_MEMORY),
    );
    let app = began.elapsed();
    let began = Instant::now();
    cri.start_container(
        &pod,
        &config,
        container_config("sidecar", 0, SIDECAR_SCRIPT, 0),
    );
    let sidecar = began.elapsed();
    cri.remove_pod(&pod);
    Times {
        run_pod,
        app,
        sidecar,
    }
}

/// Median, min and max in seconds.
fn summary(xs: &[Duration]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = xs.iter().map(Duration::as_secs_f64).collect();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (median, s[0], s[n - 1])
}

fn print_table(pods: usize, runs: &[Vec<Times>; 2]) {
    println!();
    println!(
        "CRI through one containerd, {pods} pods per runtime handler, \
         seconds: median [min .. max]"
    );
    println!(
        "{:<24}{:<26}{:<26}nutshell/runc",
        "", HANDLERS[0], HANDLERS[1]
    );
    type Step = fn(&Times) -> Duration;
    let steps: [(&str, Step); 4] = [
        ("RunPodSandbox", |t| t.run_pod),
        ("StartContainer app", |t| t.app),
        ("StartContainer sidecar", |t| t.sidecar),
        ("total", Times::total),
    ];
    for (label, step) in steps {
        let [n, r] = [0, 1].map(|h| summary(&runs[h].iter().map(step).collect::<Vec<_>>()));
        let cell =
            |(median, min, max): (f64, f64, f64)| format!("{median:.3} [{min:.3} .. {max:.3}]");
        println!("{label:<24}{:<26}{:<26}{:.2}", cell(n), cell(r), n.0 / r.0);
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One pod of each handler, both running (the app serving its sidecar): host VmRSS of each
/// pod's shim and of the processes below it, with the container processes containerd's CRI
/// names (runc's container inits; for nutshell, the shim itself) and what runs below them.
fn memory(cri: &mut Cri) -> Result<()> {
    let mut pods = Vec::new();
    for handler in HANDLERS {
        let SeedPod {
            pod, app, sidecar, ..
        } = cri.run_seed_pod("memory", handler, APP_MEMORY);
        cri.exec_ok(&sidecar, FETCH);
        pods.push((handler, pod, [app, sidecar]));
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut totals = Vec::new();
    let mut lines = Vec::new();
    for (handler, pod, containers) in &pods {
        let shim = pod_shim(pod).with_context(|| format!("no shim of the {handler} pod {pod}"))?;
        let mut cri_pids = vec![cri.pod_pid(pod)];
        for c in containers {
            cri_pids.push(cri.container_pid(c));
        }
        let mut below: BTreeSet<i32> = descendants(shim).into_iter().collect();
        let mut outside = Vec::new();
        for pid in cri_pids.iter().flatten().copied() {
            if pid != shim && !below.contains(&pid) {
                outside.push(format!("{pid} (parent {:?})", parent(pid)));
                below.insert(pid);
                below.extend(descendants(pid));
            }
        }
        let shim_kib = rss_kib(shim);
        let below_kib: u64 = below.iter().copied().map(rss_kib).sum();
        let listed: Vec<String> = below
            .iter()
            .map(|&p| format!("{} {} KiB", comm(p), rss_kib(p)))
            .collect();
        if *handler == "nutshell" {
            let vmm = pod_vmm(&cri.ctd, pod).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                below.contains(&vmm),
                "the VMM {vmm} is not below the shim {shim}"
            );
        }
        lines.push(format!(
            "  {handler}: {:.2} MiB = shim {:.2} MiB + below it {:.2} MiB [{}]{}",
            mib(shim_kib + below_kib),
            mib(shim_kib),
            mib(below_kib),
            listed.join(", "),
            if outside.is_empty() {
                String::new()
            } else {
                format!("; CRI's pids not below the shim: {}", outside.join(", "))
            }
        ));
        totals.push(shim_kib + below_kib);
    }
    println!(
        "host memory per pod (VmRSS, app + sidecar, both pods running): \
         ratio nutshell/runc {:.2}",
        totals[0] as f64 / totals[1].max(1) as f64
    );
    for line in lines {
        println!("{line}");
    }
    for (_, pod, _) in &pods {
        cri.stop_and_remove_pod(pod);
    }
    cri.ctd.assert_clean(Duration::from_secs(60));
    Ok(())
}

/// On the KVM host.
pub fn inner(args: &[String]) -> Result<()> {
    let pods = pods_arg(args)?;
    let mut cri = Cri::start("bench-cri");
    for handler in HANDLERS {
        let t = one_pod(&mut cri, "warmup", handler);
        println!(
            "warm-up {handler} (not counted): total {:.3} s",
            t.total().as_secs_f64()
        );
    }
    let mut runs: [Vec<Times>; 2] = [Vec::new(), Vec::new()];
    for i in 0..pods {
        for (h, handler) in HANDLERS.iter().enumerate() {
            let t = one_pod(&mut cri, &format!("bench{i}"), handler);
            println!(
                "pod {i} {handler}: RunPodSandbox {:.3} s, StartContainer app {:.3} s, \
                 sidecar {:.3} s",
                t.run_pod.as_secs_f64(),
                t.app.as_secs_f64(),
                t.sidecar.as_secs_f64()
            );
            runs[h].push(t);
        }
    }
    print_table(pods, &runs);
    memory(&mut cri)
}
