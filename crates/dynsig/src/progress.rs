//! Progress of long commands (`replay`, `gen`) for a person at a terminal: done so far,
//! rate and time left, rewritten in place on stderr about once a second. Silent when
//! stderr is not a terminal (piped, redirected, CI), so scripts see only the final summary.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Calls between two looks at the clock: `update` runs once per record.
const CHECK_EVERY: u64 = 4096;
const REDRAW_EVERY: Duration = Duration::from_secs(1);

pub struct Progress {
    what: &'static str,
    start: Instant,
    last_drawn: Instant,
    enabled: bool,
    drawn: bool,
}

impl Progress {
    /// Progress of `what` (a plural noun: "inputs", "records"), shown only on a terminal.
    pub fn new(what: &'static str) -> Progress {
        let now = Instant::now();
        Progress {
            what,
            start: now,
            last_drawn: now,
            enabled: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }

    /// `done` items so far; `fraction` of the whole work done, when known (for the time
    /// left).
    pub fn update(&mut self, done: u64, fraction: impl FnOnce() -> Option<f64>) {
        if !self.enabled || !done.is_multiple_of(CHECK_EVERY) {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.last_drawn) < REDRAW_EVERY {
            return;
        }
        self.last_drawn = now;
        let elapsed = now.duration_since(self.start).as_secs_f64();
        let rate = done as f64 / elapsed.max(1e-9);
        let left = match fraction() {
            Some(f) if f > 0.0 && f <= 1.0 => {
                format!(
                    ", {:.0}% done, ~{:.0} s left",
                    f * 100.0,
                    elapsed * (1.0 - f) / f
                )
            }
            _ => String::new(),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{done} {} ({rate:.0}/s{left})", self.what);
        let _ = err.flush();
        self.drawn = true;
    }

    /// Clears the progress line, before the final summary is printed.
    pub fn finish(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.drawn = false;
        }
    }
}
