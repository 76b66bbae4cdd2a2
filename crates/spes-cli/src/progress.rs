//! Progress on stderr: one line per finished step (✓/✗, elapsed), a live
//! line for the running step on terminals. `--color`, `NO_COLOR` and
//! `TERM=dumb` decide colours and the live line (see [`crate::term`]).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use spes_engine::{Event, Observer};

use crate::term::escape;

pub(crate) struct Progress {
    /// A live line for the running step (redrawn in place).
    tty: bool,
    /// Coloured marks.
    color: bool,
    quiet: bool,
    /// The streamed text of running llm steps (its tail), by step key.
    state: Mutex<HashMap<String, String>>,
}

/// How much streamed text the live line shows.
const LIVE_CHARS: usize = 60;

impl Progress {
    pub(crate) fn new(quiet: bool) -> Self {
        Self {
            tty: crate::term::live_stderr(),
            color: crate::term::color_stderr(),
            quiet,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Whether streamed text is shown (the engine only streams when asked).
    pub(crate) fn wants_deltas(&self) -> bool {
        self.tty && !self.quiet
    }
}

pub(crate) fn fmt_elapsed(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 {
        format!("{:.0}µs", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

/// `--events`: progress as JSON Lines on stderr.
static EVENTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns `--events` on for this process.
pub(crate) fn set_events() {
    EVENTS.store(true, std::sync::atomic::Ordering::Relaxed);
}

impl Observer for Progress {
    fn on_event(&self, event: &Event) {
        if EVENTS.load(std::sync::atomic::Ordering::Relaxed) {
            // JSON escapes every control character: nothing raw reaches a terminal.
            let line =
                serde_json::to_string(&spes_engine::view::EventView::of(event)).unwrap_or_default();
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{line}");
            let _ = err.flush();
            return;
        }
        if self.quiet {
            return;
        }
        let mut live = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut err = std::io::stderr().lock();
        match event {
            Event::Delta { key, text } if self.tty => {
                let tail = live.entry(key.clone()).or_default();
                tail.push_str(text);
                let n = tail.chars().count();
                if n > LIVE_CHARS {
                    let cut = tail
                        .char_indices()
                        .nth(n - LIVE_CHARS)
                        .map_or(0, |(i, _)| i);
                    tail.drain(..cut);
                }
                let shown: String = tail
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                let (key, shown) = (escape(key), escape(&shown));
                let _ = write!(err, "\r\x1b[2K… {key}  \x1b[2m{shown}\x1b[0m");
                let _ = err.flush();
            }
            Event::StepStarted { key, kind, depth } if self.tty && matches!(*kind, "llm") => {
                let _ = write!(err, "\r\x1b[2K{}… {}", "  ".repeat(*depth), escape(key));
                let _ = err.flush();
            }
            Event::StepFinished {
                key,
                depth,
                elapsed,
                error,
                note,
                ..
            } => {
                live.remove(key);
                let pad = "  ".repeat(*depth);
                let note = note
                    .as_ref()
                    .map(|n| format!("  ({})", escape(n)))
                    .unwrap_or_default();
                let key = escape(key);
                let error = error.as_deref().map(escape);
                if self.tty {
                    let _ = write!(err, "\r\x1b[2K");
                }
                if self.color {
                    match error {
                        None => {
                            let _ = writeln!(
                                err,
                                "{pad}\x1b[32m✓\x1b[0m {key}  \x1b[2m{}{note}\x1b[0m",
                                fmt_elapsed(*elapsed)
                            );
                        }
                        Some(e) => {
                            let _ = writeln!(
                                err,
                                "{pad}\x1b[31m✗\x1b[0m {key}  {}  {e}",
                                fmt_elapsed(*elapsed)
                            );
                        }
                    }
                } else {
                    match error {
                        None => {
                            let _ = writeln!(err, "{pad}✓ {key} {}{note}", fmt_elapsed(*elapsed));
                        }
                        Some(e) => {
                            let _ = writeln!(err, "{pad}✗ {key} {}: {e}", fmt_elapsed(*elapsed));
                        }
                    }
                }
            }
            Event::Retrying {
                key,
                attempt,
                delay,
                error,
            } => self.policy_line(
                &mut err,
                &format!(
                    "↻ {}: attempt {attempt} in {} ({})",
                    escape(key),
                    fmt_elapsed(*delay),
                    escape(error)
                ),
            ),
            Event::ToolCalled {
                key,
                is_error,
                replayed,
                ..
            } => self.policy_line(
                &mut err,
                &format!(
                    "⚙ {}{}{}",
                    escape(key),
                    if *is_error { " (error result)" } else { "" },
                    if *replayed {
                        " (replayed from journal)"
                    } else {
                        ""
                    }
                ),
            ),
            Event::FallingBack {
                key,
                from,
                to,
                error,
            } => self.policy_line(
                &mut err,
                &format!(
                    "↪ {}: {} gave up ({}); trying {}",
                    escape(key),
                    escape(from),
                    escape(error),
                    escape(to)
                ),
            ),
            _ => {}
        }
    }
}

impl Progress {
    /// A retry or fallback line, clearing a live line first.
    fn policy_line(&self, err: &mut impl Write, line: &str) {
        if self.tty {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "  {line}");
    }
}
