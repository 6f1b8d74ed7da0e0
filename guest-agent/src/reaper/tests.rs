//! Reaper tests; the `AllChildren` scope runs in a re-executed test binary
//! made a child subreaper, as it must own every orphan.

use super::*;

fn fork_child_exiting_with(code: i32) -> Result<(Pid, ()), Errno> {
    // SAFETY: the child only calls `_exit`, which is async-signal-safe,
    // so forking a multi-threaded test process is sound.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            // SAFETY: `_exit` ends the forked child without running the
            // parent's atexit handlers or destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => Ok((child, ())),
    }
}

#[test]
fn exit_of_tracked_child_is_recorded_and_handed_out_once() {
    let reaper = Reaper::new(ReapScope::TrackedOnly);
    let (pid, ()) = reaper.spawn_tracked(|| fork_child_exiting_with(7)).unwrap();

    let exit = reaper.wait_for(pid, Duration::from_secs(10)).unwrap();
    assert_eq!(exit, ChildExit::Exited(7));
    assert!(matches!(
        reaper.wait_for(pid, Duration::from_secs(1)),
        Err(ReaperError::NotTracked(p)) if p == pid
    ));
}

#[test]
fn exit_collected_before_anyone_waits_is_kept() {
    let reaper = Reaper::new(ReapScope::TrackedOnly);
    let (pid, ()) = reaper.spawn_tracked(|| fork_child_exiting_with(3)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while reaper.reap_pending() == 0 {
        assert!(Instant::now() < deadline, "child never exited");
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(reaper.take_exit(pid).unwrap(), Some(ChildExit::Exited(3)));
    assert!(reaper.take_exit(pid).is_err());
}

#[test]
fn untracked_pid_is_an_error() {
    let reaper = Reaper::new(ReapScope::TrackedOnly);
    let pid = Pid::from_raw(i32::MAX);
    assert!(matches!(
        reaper.take_exit(pid),
        Err(ReaperError::NotTracked(_))
    ));
}

#[test]
fn bookkeeping_separates_tracked_children_from_orphans() {
    let mut table = ChildTable::default();
    let tracked = Pid::from_raw(100);
    table.tracked.insert(tracked, TrackedChild::Running);
    assert_eq!(take_if_exited(&mut table, tracked).unwrap(), None);

    record_exit(&mut table, Pid::from_raw(200), ChildExit::Exited(0));
    record_exit(
        &mut table,
        tracked,
        ChildExit::Signaled {
            signal: 9,
            core_dumped: false,
        },
    );
    assert_eq!(table.untracked_reaped, 1);
    let exit = take_if_exited(&mut table, tracked).unwrap().unwrap();
    assert_eq!(exit.shell_code(), 137);
    assert!(table.tracked.is_empty());
}

/// Set in the re-executed test binary that runs [`all_children_helper`].
const SUBREAPER_HELPER_ENV: &str = "NUTSHELL_REAPER_SUBREAPER_HELPER";

/// Forks a child that forks a grandchild and exits at once, so the
/// grandchild is orphaned while still running.
fn fork_orphan_maker() -> Pid {
    // SAFETY: child and grandchild only call fork, nanosleep and _exit,
    // all async-signal-safe.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Parent { child } => child,
        nix::unistd::ForkResult::Child => {
            // SAFETY: as above; the grandchild outlives its parent by 50 ms.
            unsafe {
                if libc::fork() == 0 {
                    let nap = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 50_000_000,
                    };
                    libc::nanosleep(&nap, std::ptr::null_mut());
                }
                libc::_exit(0)
            }
        }
    }
}

/// PID 1 behaviour, in a process of its own: it is a child subreaper (so
/// orphans come to it, as to PID 1) and nothing else runs in it.
#[test]
fn all_children_helper() {
    if std::env::var_os(SUBREAPER_HELPER_ENV).is_none() {
        return; // only meaningful when re-executed by the test below
    }
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let reaper = Reaper::new(ReapScope::AllChildren);
    let (tracked, ()) = reaper
        .spawn_tracked(|| fork_child_exiting_with(42))
        .unwrap();
    fork_orphan_maker();

    // Orphan maker + orphaned grandchild are reaped and dropped...
    let deadline = Instant::now() + Duration::from_secs(10);
    while reaper.untracked_reaped() < 2 {
        assert!(Instant::now() < deadline, "orphans were not reaped");
        reaper.reap_pending();
        thread::sleep(Duration::from_millis(5));
    }
    // ... while the tracked child's status waits for its owner...
    let exit = reaper.wait_for(tracked, Duration::from_secs(10)).unwrap();
    assert_eq!(exit, ChildExit::Exited(42));
    // ... and no zombie is left behind.
    assert_eq!(
        waitpid(None, Some(WaitPidFlag::WNOHANG)),
        Err(Errno::ECHILD)
    );
}

#[test]
fn all_children_scope_reaps_orphans_but_keeps_tracked_exits() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "reaper::tests::all_children_helper",
            "--test-threads=1",
        ])
        .env(SUBREAPER_HELPER_ENV, "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "helper failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("1 passed"), "helper did not run:\n{stdout}");
}

#[test]
fn forgotten_child_is_no_longer_tracked() {
    let reaper = Reaper::new(ReapScope::TrackedOnly);
    let (pid, ()) = reaper.spawn_tracked(|| fork_child_exiting_with(0)).unwrap();
    reaper.forget(pid);
    assert!(reaper.take_exit(pid).is_err());
    // Collect the zombie so the test process stays clean.
    let _ = waitpid(pid, None);
}
