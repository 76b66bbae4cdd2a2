//! The circuit breaker: a pure state machine. Time comes in as a value
//! (milliseconds, from the engine's injectable clock); nothing here sleeps.
//!
//! ```text
//! state              event                          next state               answer
//! ─────────────────  ─────────────────────────────  ───────────────────────  ─────────────────────
//! Closed{n}          allow(now)                     Closed{n}                Call
//! Closed{n}          success(Call)                  Closed{0}
//! Closed{n}          failure(Call), n+1 < limit     Closed{n+1}
//! Closed{n}          failure(Call), n+1 >= limit    Open{until: now+cool}
//! Open{until}        allow(now), now < until        Open{until}              Refused{until-now}
//! Open{until}        allow(now), now >= until       HalfOpen{since: now}     Probe
//! Open{until}        success/failure(Call)          Open{until}              (late answer: ignored)
//! HalfOpen{since}    allow(now), now < since+cool   HalfOpen{since}          Refused{since+cool-now}
//! HalfOpen{since}    allow(now), now >= since+cool  HalfOpen{since: now}     Probe (the last probe is lost)
//! HalfOpen{since}    success(Probe)                 Closed{0}
//! HalfOpen{since}    failure(Probe)                 Open{until: now+cool}
//! HalfOpen{since}    success/failure(Call)          HalfOpen{since}          (late answer: ignored)
//! Closed{n}          success/failure(Probe)         Closed{n}                (stale probe: ignored)
//! ```
//!
//! Decisions (where the reference is vague or unsafe):
//! - The reference keeps the breaker on one object and lets every caller
//!   through once the cool-down ends. Here exactly one probe goes through in
//!   half-open; everyone else is refused until it answers.
//! - A probe that never answers (its run was cancelled or crashed) would
//!   keep the breaker half-open forever; after one more cool-down the next
//!   caller becomes the probe.
//! - Only answers to calls the breaker admitted in the current state count:
//!   a slow call admitted while closed that fails after the breaker opened
//!   does not restart the cool-down, and cannot close a half-open breaker.
//! - What counts as a failure is the caller's decision: the engine counts
//!   transient errors (the provider is unwell) and treats a terminal error
//!   (the provider answered, the request was bad) as a success.

use std::time::Duration;

/// Threshold and cool-down (`Default` plus `with_*` setters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (at least 1).
    pub failures: u32,
    /// How long it stays open before one probe is let through.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    /// `failures: 5, cooldown: 60s`.
    fn default() -> Self {
        Self {
            failures: 5,
            cooldown: Duration::from_secs(60),
        }
    }
}

impl BreakerConfig {
    /// Sets the failure threshold.
    #[must_use]
    pub fn with_failures(mut self, n: u32) -> Self {
        self.failures = n.max(1);
        self
    }

    /// Sets the cool-down.
    #[must_use]
    pub fn with_cooldown(mut self, d: Duration) -> Self {
        self.cooldown = d;
        self
    }

    fn cooldown_ms(&self) -> i64 {
        i64::try_from(self.cooldown.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; `failures` consecutive ones have failed.
    Closed {
        /// Consecutive failures so far.
        failures: u32,
    },
    /// Calls are refused until `until_ms`.
    Open {
        /// End of the cool-down (ms since the epoch).
        until_ms: i64,
    },
    /// One probe is out since `since_ms`; everyone else is refused.
    HalfOpen {
        /// When the probe was let through.
        since_ms: i64,
    },
}

/// The answer to [`Breaker::allow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead (closed).
    Call,
    /// Go ahead as the one probe (half-open): report its outcome.
    Probe,
    /// Do not call; try again after this long.
    Refused {
        /// Time left before a call may be admitted.
        retry_after: Duration,
    },
}

/// One breaker's state. Shared breakers live behind a lock in the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    state: BreakerState,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: BreakerState::Closed { failures: 0 },
        }
    }
}

impl From<BreakerState> for Breaker {
    /// A breaker in `state` (one kept outside the process, in a shared store).
    fn from(state: BreakerState) -> Self {
        Self { state }
    }
}

fn ms_until(now: i64, then: i64) -> Duration {
    Duration::from_millis(u64::try_from(then.saturating_sub(now)).unwrap_or(0))
}

impl Breaker {
    /// The current state.
    #[must_use]
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// May a call go out at `now_ms`?
    pub fn allow(&mut self, cfg: &BreakerConfig, now_ms: i64) -> Admission {
        match self.state {
            BreakerState::Closed { .. } => Admission::Call,
            BreakerState::Open { until_ms } if now_ms < until_ms => Admission::Refused {
                retry_after: ms_until(now_ms, until_ms),
            },
            BreakerState::HalfOpen { since_ms }
                if now_ms < since_ms.saturating_add(cfg.cooldown_ms()) =>
            {
                Admission::Refused {
                    retry_after: ms_until(now_ms, since_ms.saturating_add(cfg.cooldown_ms())),
                }
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => {
                self.state = BreakerState::HalfOpen { since_ms: now_ms };
                Admission::Probe
            }
        }
    }

    /// The admitted call (`how` is what [`Self::allow`] answered) succeeded.
    pub fn on_success(&mut self, how: Admission) {
        match (self.state, how) {
            (BreakerState::Closed { .. }, Admission::Call)
            | (BreakerState::HalfOpen { .. }, Admission::Probe) => {
                self.state = BreakerState::Closed { failures: 0 };
            }
            _ => {}
        }
    }

    /// The admitted call failed at `now_ms`.
    pub fn on_failure(&mut self, cfg: &BreakerConfig, how: Admission, now_ms: i64) {
        let open = BreakerState::Open {
            until_ms: now_ms.saturating_add(cfg.cooldown_ms()),
        };
        match (self.state, how) {
            (BreakerState::Closed { failures }, Admission::Call) => {
                let n = failures.saturating_add(1);
                self.state = if n >= cfg.failures.max(1) {
                    open
                } else {
                    BreakerState::Closed { failures: n }
                };
            }
            (BreakerState::HalfOpen { .. }, Admission::Probe) => self.state = open,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig::default()
            .with_failures(3)
            .with_cooldown(Duration::from_millis(1000))
    }

    fn opened_at(t: i64) -> Breaker {
        let mut b = Breaker::default();
        for _ in 0..3 {
            let a = b.allow(&cfg(), t);
            b.on_failure(&cfg(), a, t);
        }
        b
    }

    #[test]
    fn closed_allows_and_counts_failures_until_the_threshold() {
        let mut b = Breaker::default();
        assert_eq!(b.allow(&cfg(), 0), Admission::Call);
        b.on_failure(&cfg(), Admission::Call, 0);
        assert_eq!(b.state(), BreakerState::Closed { failures: 1 });
        b.on_failure(&cfg(), Admission::Call, 0);
        assert_eq!(b.state(), BreakerState::Closed { failures: 2 });
        b.on_failure(&cfg(), Admission::Call, 10);
        assert_eq!(b.state(), BreakerState::Open { until_ms: 1010 });
    }

    #[test]
    fn a_success_while_closed_resets_the_count() {
        let mut b = Breaker::default();
        b.on_failure(&cfg(), Admission::Call, 0);
        b.on_failure(&cfg(), Admission::Call, 0);
        b.on_success(Admission::Call);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn open_refuses_during_the_cooldown_with_the_time_left() {
        let mut b = opened_at(0);
        assert_eq!(
            b.allow(&cfg(), 400),
            Admission::Refused {
                retry_after: Duration::from_millis(600)
            }
        );
        assert_eq!(b.state(), BreakerState::Open { until_ms: 1000 });
    }

    #[test]
    fn late_answers_while_open_are_ignored() {
        let mut b = opened_at(0);
        b.on_failure(&cfg(), Admission::Call, 500);
        assert_eq!(b.state(), BreakerState::Open { until_ms: 1000 });
        b.on_success(Admission::Call);
        assert_eq!(b.state(), BreakerState::Open { until_ms: 1000 });
    }

    #[test]
    fn after_the_cooldown_exactly_one_probe_goes_through() {
        let mut b = opened_at(0);
        assert_eq!(b.allow(&cfg(), 1000), Admission::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen { since_ms: 1000 });
        assert_eq!(
            b.allow(&cfg(), 1001),
            Admission::Refused {
                retry_after: Duration::from_millis(999)
            }
        );
    }

    #[test]
    fn a_successful_probe_closes() {
        let mut b = opened_at(0);
        let p = b.allow(&cfg(), 1000);
        b.on_success(p);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
        assert_eq!(b.allow(&cfg(), 1001), Admission::Call);
    }

    #[test]
    fn a_failed_probe_reopens_for_a_full_cooldown() {
        let mut b = opened_at(0);
        let p = b.allow(&cfg(), 1000);
        b.on_failure(&cfg(), p, 1200);
        assert_eq!(b.state(), BreakerState::Open { until_ms: 2200 });
    }

    #[test]
    fn answers_of_plain_calls_do_not_decide_half_open() {
        let mut b = opened_at(0);
        b.allow(&cfg(), 1000);
        b.on_success(Admission::Call);
        assert_eq!(b.state(), BreakerState::HalfOpen { since_ms: 1000 });
        b.on_failure(&cfg(), Admission::Call, 1100);
        assert_eq!(b.state(), BreakerState::HalfOpen { since_ms: 1000 });
    }

    #[test]
    fn a_lost_probe_is_replaced_after_another_cooldown() {
        let mut b = opened_at(0);
        assert_eq!(b.allow(&cfg(), 1000), Admission::Probe);
        assert_eq!(b.allow(&cfg(), 2000), Admission::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen { since_ms: 2000 });
    }

    #[test]
    fn stale_probe_answers_while_closed_are_ignored() {
        let mut b = Breaker::default();
        b.on_failure(&cfg(), Admission::Call, 0);
        b.on_success(Admission::Probe);
        b.on_failure(&cfg(), Admission::Probe, 0);
        assert_eq!(b.state(), BreakerState::Closed { failures: 1 });
    }
}
