//! The VMM's log on stderr, rate-limited.
//!
//! Many warnings are triggered by the guest (a malformed virtio chain, a refused vsock
//! connection). A hostile guest could otherwise write the host's logs (the shim's, containerd's)
//! as fast as it can make VM exits. A token bucket lets bursts through and then at most
//! [`RATE_PER_SEC`] messages a second; the next message that passes says how many were dropped.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

/// Messages let through at once after a quiet period.
pub const BURST: u32 = 50;
/// Messages a second in the long run.
pub const RATE_PER_SEC: u32 = 5;

/// Whether a message may be written now.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Write it; `suppressed` messages were dropped since the last one written.
    Pass {
        suppressed: u64,
    },
    Drop,
}

/// A token bucket of [`BURST`] tokens refilled at [`RATE_PER_SEC`].
#[derive(Debug)]
pub struct RateLimit {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(now: Instant) -> Self {
        RateLimit {
            tokens: f64::from(BURST),
            last: now,
            suppressed: 0,
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * f64::from(RATE_PER_SEC)).min(f64::from(BURST));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Admit::Pass {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Admit::Drop
        }
    }
}

/// `nutshell-vmm: LEVEL: message` lines on stderr, up to `level`, rate-limited.
pub struct StderrLogger {
    level: log::LevelFilter,
    limit: Mutex<RateLimit>,
}

impl StderrLogger {
    /// Installs the logger for `level`, at most `Debug` (once per process; later calls do
    /// nothing). Trace stays off: fuse-backend-rs 0.14's trace line for each request turns the
    /// guest's opcode number into its `Opcode` enum with a transmute, undefined behaviour for
    /// the numbers that name no opcode.
    pub fn install(level: log::LevelFilter) {
        let level = level.min(log::LevelFilter::Debug);
        let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger {
            level,
            limit: Mutex::new(RateLimit::new(Instant::now())),
        }));
        if log::set_logger(logger).is_ok() {
            log::set_max_level(level);
        }
    }
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let admit = self
            .limit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(Instant::now());
        let Admit::Pass { suppressed } = admit else {
            return;
        };
        let mut err = std::io::stderr().lock();
        if suppressed > 0 {
            let _ = writeln!(
                err,
                "nutshell-vmm: WARN: {suppressed} log messages dropped (more than {RATE_PER_SEC} a second)"
            );
        }
        let _ = writeln!(err, "nutshell-vmm: {}: {}", record.level(), record.args());
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bursts_pass_then_the_rate_holds_and_drops_are_counted() {
        let start = Instant::now();
        let mut limit = RateLimit::new(start);
        for _ in 0..BURST {
            assert_eq!(limit.admit(start), Admit::Pass { suppressed: 0 });
        }
        for _ in 0..1000 {
            assert_eq!(limit.admit(start), Admit::Drop);
        }
        // One token back after 1/RATE s; the message that passes reports the drops.
        let later = start + Duration::from_secs(1) / RATE_PER_SEC;
        assert_eq!(limit.admit(later), Admit::Pass { suppressed: 1000 });
        assert_eq!(limit.admit(later), Admit::Drop);
        // Over 100 s of a flood, about RATE_PER_SEC a second get through.
        let mut passed = 0;
        for ms in 0..100_000u64 {
            if let Admit::Pass { .. } = limit.admit(later + Duration::from_millis(ms)) {
                passed += 1;
            }
        }
        let expected = 100 * RATE_PER_SEC;
        assert!((expected - 2..=expected + 2).contains(&passed), "{passed}");
    }

    #[test]
    fn a_quiet_period_refills_the_burst_but_no_more() {
        let start = Instant::now();
        let mut limit = RateLimit::new(start);
        for _ in 0..BURST {
            limit.admit(start);
        }
        let later = start + Duration::from_secs(3600);
        for _ in 0..BURST {
            assert!(matches!(limit.admit(later), Admit::Pass { .. }));
        }
        assert_eq!(limit.admit(later), Admit::Drop);
    }
}
