//! The retry schedule: a pure function from (the attempt that just failed,
//! how it failed, a jitter draw) to the next decision. No clock, no sleep:
//! the engine sleeps for what this returns.
//!
//! Decisions (where the reference is vague):
//! - `attempts` counts the first try: `attempts: 3` is one call and at most two retries.
//! - Exponential backoff waits `base * 2^(n-1)` after failed attempt `n`
//!   (saturating), constant waits `base`; both are capped by `max`.
//! - Jitter ("equal jitter") keeps at least half the delay:
//!   `d/2 + d/2 * u` for a draw `u` in `[0, 1)` passed in by the caller.
//! - A provider's `retry-after` is honoured exactly: the wait is at least what
//!   it asked. If it asks for more than `max`, the schedule gives up at once
//!   rather than waiting longer than configured or retrying early into the
//!   same refusal; a `fallback` or `degrade` level then takes over.
//! - Terminal errors are never retried. An answer rejected by the `validate`
//!   condition is retried like a transient error (with no `retry-after`).

use std::fmt;
use std::time::Duration;

/// How the delay grows between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backoff {
    /// `base * 2^(n-1)` after failed attempt `n`.
    #[default]
    Exponential,
    /// `base` every time.
    Constant,
}

impl Backoff {
    /// Parses `exponential` or `constant`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "exponential" => Some(Self::Exponential),
            "constant" => Some(Self::Constant),
            _ => None,
        }
    }

    /// The YAML name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exponential => "exponential",
            Self::Constant => "constant",
        }
    }
}

/// The timing part of a retry policy (what [`next_retry`] needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Attempts in all, the first try included (at least 1).
    pub attempts: u32,
    /// Growth of the delay.
    pub backoff: Backoff,
    /// The first delay.
    pub base: Duration,
    /// The largest delay, and the longest `retry-after` honoured.
    pub max: Duration,
    /// Spread delays over `[d/2, d)` to avoid synchronized retries.
    pub jitter: bool,
}

impl Default for RetrySchedule {
    /// `attempts: 3, backoff: exponential, base: 1s, max: 30s, jitter: true`.
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Backoff::Exponential,
            base: Duration::from_secs(1),
            max: Duration::from_secs(30),
            jitter: true,
        }
    }
}

impl RetrySchedule {
    /// Sets the number of attempts (first try included).
    #[must_use]
    pub fn with_attempts(mut self, n: u32) -> Self {
        self.attempts = n.max(1);
        self
    }

    /// Sets the backoff.
    #[must_use]
    pub fn with_backoff(mut self, b: Backoff) -> Self {
        self.backoff = b;
        self
    }

    /// Sets the first delay.
    #[must_use]
    pub fn with_base(mut self, d: Duration) -> Self {
        self.base = d;
        self
    }

    /// Sets the largest delay.
    #[must_use]
    pub fn with_max(mut self, d: Duration) -> Self {
        self.max = d;
        self
    }

    /// Turns jitter on or off.
    #[must_use]
    pub fn with_jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }
}

/// How an attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// May go away (rate limit, overload, 5xx, timeout, open breaker).
    Transient {
        /// How long the provider (or breaker) asked to wait.
        retry_after: Option<Duration>,
    },
    /// Will fail the same way again (bad request, auth, template error).
    Terminal,
    /// The answer came back but the `validate` condition rejected it.
    Invalid,
}

/// Why no further attempt is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The error is terminal.
    Terminal,
    /// Every attempt was used.
    Exhausted {
        /// Attempts made.
        attempts: u32,
    },
    /// The provider asked to wait longer than `max`.
    RetryAfterTooLong {
        /// What it asked.
        asked: Duration,
        /// The configured `max`.
        max: Duration,
    },
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::duration::format_duration as d;
        match self {
            Self::Terminal => f.write_str("the error is terminal, so it was not retried"),
            Self::Exhausted { attempts } => write!(f, "gave up after {attempts} attempts"),
            Self::RetryAfterTooLong { asked, max } => write!(
                f,
                "the provider asked to wait {}, longer than retry max {}",
                d(*asked),
                d(*max)
            ),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextRetry {
    /// Wait this long, then make the next attempt.
    RetryAfter(Duration),
    /// Stop retrying.
    GiveUp(GiveUp),
}

/// The decision after attempt `failed` (1-based) failed as `failure`.
/// `jitter_draw` is a number in `[0, 1)` (ignored unless `jitter` is on);
/// the caller draws it, so tests pass fixed values.
///
/// ```
/// use std::time::Duration;
/// use spes_core::policy::retry::{next_retry, Failure, NextRetry, RetrySchedule};
/// let s = RetrySchedule::default().with_jitter(false);
/// let busy = Failure::Transient { retry_after: None };
/// assert_eq!(next_retry(&s, 1, busy, 0.0), NextRetry::RetryAfter(Duration::from_secs(1)));
/// assert_eq!(next_retry(&s, 2, busy, 0.0), NextRetry::RetryAfter(Duration::from_secs(2)));
/// assert!(matches!(next_retry(&s, 3, busy, 0.0), NextRetry::GiveUp(_)));
/// ```
#[must_use]
pub fn next_retry(s: &RetrySchedule, failed: u32, failure: Failure, jitter_draw: f64) -> NextRetry {
    let retry_after = match failure {
        Failure::Terminal => return NextRetry::GiveUp(GiveUp::Terminal),
        Failure::Transient { retry_after } => retry_after,
        Failure::Invalid => None,
    };
    if failed >= s.attempts {
        return NextRetry::GiveUp(GiveUp::Exhausted { attempts: failed });
    }
    let mut delay = match s.backoff {
        Backoff::Constant => s.base,
        Backoff::Exponential => {
            let factor = 2u32
                .checked_pow(failed.saturating_sub(1))
                .unwrap_or(u32::MAX);
            s.base.saturating_mul(factor)
        }
    }
    .min(s.max);
    if s.jitter {
        let u = if jitter_draw.is_finite() {
            jitter_draw.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let half = delay / 2;
        delay = half + half.mul_f64(u);
    }
    if let Some(asked) = retry_after {
        if asked > s.max {
            return NextRetry::GiveUp(GiveUp::RetryAfterTooLong { asked, max: s.max });
        }
        delay = delay.max(asked);
    }
    NextRetry::RetryAfter(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn plain() -> RetrySchedule {
        RetrySchedule {
            attempts: 5,
            backoff: Backoff::Exponential,
            base: ms(100),
            max: ms(500),
            jitter: false,
        }
    }

    const BUSY: Failure = Failure::Transient { retry_after: None };

    #[test]
    fn exponential_doubles_and_is_capped_by_max() {
        let s = plain();
        let got: Vec<NextRetry> = (1..=4).map(|n| next_retry(&s, n, BUSY, 0.0)).collect();
        assert_eq!(
            got,
            vec![
                NextRetry::RetryAfter(ms(100)),
                NextRetry::RetryAfter(ms(200)),
                NextRetry::RetryAfter(ms(400)),
                NextRetry::RetryAfter(ms(500)),
            ]
        );
    }

    #[test]
    fn attempts_count_the_first_try() {
        let s = plain().with_attempts(3);
        assert_eq!(next_retry(&s, 2, BUSY, 0.0), NextRetry::RetryAfter(ms(200)));
        assert_eq!(
            next_retry(&s, 3, BUSY, 0.0),
            NextRetry::GiveUp(GiveUp::Exhausted { attempts: 3 })
        );
        let once = plain().with_attempts(1);
        assert_eq!(
            next_retry(&once, 1, BUSY, 0.0),
            NextRetry::GiveUp(GiveUp::Exhausted { attempts: 1 })
        );
    }

    #[test]
    fn constant_backoff_keeps_the_base() {
        let s = plain().with_backoff(Backoff::Constant);
        for n in 1..=4 {
            assert_eq!(next_retry(&s, n, BUSY, 0.0), NextRetry::RetryAfter(ms(100)));
        }
    }

    #[test]
    fn terminal_errors_are_never_retried() {
        assert_eq!(
            next_retry(&plain(), 1, Failure::Terminal, 0.0),
            NextRetry::GiveUp(GiveUp::Terminal)
        );
    }

    #[test]
    fn invalid_answers_are_retried_without_retry_after() {
        assert_eq!(
            next_retry(&plain(), 2, Failure::Invalid, 0.0),
            NextRetry::RetryAfter(ms(200))
        );
    }

    #[test]
    fn retry_after_is_honoured_as_a_minimum() {
        let s = plain();
        let asked = Failure::Transient {
            retry_after: Some(ms(300)),
        };
        assert_eq!(
            next_retry(&s, 1, asked, 0.0),
            NextRetry::RetryAfter(ms(300))
        );
        // A shorter request than the backoff keeps the backoff.
        let short = Failure::Transient {
            retry_after: Some(ms(50)),
        };
        assert_eq!(
            next_retry(&s, 3, short, 0.0),
            NextRetry::RetryAfter(ms(400))
        );
    }

    #[test]
    fn retry_after_beyond_max_gives_up() {
        let long = Failure::Transient {
            retry_after: Some(ms(501)),
        };
        assert_eq!(
            next_retry(&plain(), 1, long, 0.0),
            NextRetry::GiveUp(GiveUp::RetryAfterTooLong {
                asked: ms(501),
                max: ms(500)
            })
        );
        // Exactly max is still honoured.
        let edge = Failure::Transient {
            retry_after: Some(ms(500)),
        };
        assert_eq!(
            next_retry(&plain(), 1, edge, 0.0),
            NextRetry::RetryAfter(ms(500))
        );
    }

    #[test]
    fn jitter_spreads_over_the_upper_half() {
        let s = plain().with_jitter(true);
        assert_eq!(next_retry(&s, 2, BUSY, 0.0), NextRetry::RetryAfter(ms(100)));
        assert_eq!(next_retry(&s, 2, BUSY, 0.5), NextRetry::RetryAfter(ms(150)));
        assert_eq!(next_retry(&s, 2, BUSY, 1.0), NextRetry::RetryAfter(ms(200)));
        // Out-of-range draws are clamped; NaN counts as 0.
        assert_eq!(next_retry(&s, 2, BUSY, 7.0), NextRetry::RetryAfter(ms(200)));
        assert_eq!(
            next_retry(&s, 2, BUSY, f64::NAN),
            NextRetry::RetryAfter(ms(100))
        );
    }

    #[test]
    fn huge_attempt_numbers_saturate_instead_of_overflowing() {
        let s = plain().with_attempts(u32::MAX);
        assert_eq!(
            next_retry(&s, 200, BUSY, 0.0),
            NextRetry::RetryAfter(ms(500))
        );
    }
}
