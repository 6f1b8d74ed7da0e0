//! Waiting for a child process with a deadline, as every end-to-end test does.

use std::io;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Waits up to `timeout` for `child` to exit. At the deadline it kills and reaps the child and
/// returns `Ok(None)`.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn returns_the_status_or_kills_at_the_deadline() {
        let mut quick = Command::new("true").spawn().unwrap();
        let status = wait_or_kill(&mut quick, Duration::from_secs(10)).unwrap();
        assert!(status.unwrap().success());
        let mut slow = Command::new("sleep").arg("100").spawn().unwrap();
        let started = Instant::now();
        assert!(wait_or_kill(&mut slow, Duration::from_millis(200))
            .unwrap()
            .is_none());
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(slow.try_wait().unwrap().is_some(), "killed and reaped");
    }
}
