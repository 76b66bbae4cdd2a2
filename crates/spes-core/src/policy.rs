//! Error-recovery policies (reference §6): `retry`, `fallback`,
//! `circuit_breaker`, `degrade` and `timeout`, attachable to a step.
//!
//! The decisions are pure and live in [`retry`] (the backoff schedule) and
//! [`breaker`] (the circuit breaker state machine); the engine applies them
//! around a step's execution, journaling every attempt under its own key.
//!
//! How they compose, outermost first:
//!
//! ```text
//! fallback ─▶ degrade ─▶ retry ─▶ circuit breaker ─▶ timeout ─▶ the step
//! ```
//!
//! The step (or, with `degrade`, each quality level in order) is tried with
//! `retry`; every attempt asks the breaker first and is bounded by
//! `timeout`. When a level gives up, the next level is tried; when every
//! level gave up, the `fallback` alternatives are tried in order. Retry sits
//! outside the breaker so that the breaker sees every call (its threshold
//! counts calls that reached the provider) and an open breaker's refusal,
//! which carries the time left in the cool-down as its `retry-after`, is
//! simply waited out by retry when that fits in `max`.

pub mod breaker;
pub mod retry;

use std::time::Duration;

use crate::condition::Condition;
use crate::workflow::Step;

pub use breaker::{Admission, Breaker, BreakerConfig, BreakerState};
pub use retry::{Backoff, Failure, GiveUp, NextRetry, RetrySchedule, next_retry};

/// The policies attached to one step. `Default` is "none".
#[derive(Debug, Clone, Default)]
pub struct Policies {
    /// Attempts, backoff and an optional answer validator.
    pub retry: Option<RetryPolicy>,
    /// Alternatives tried in order after the step (and its degrade levels) gave up.
    pub fallback: Vec<Alternative>,
    /// A breaker shared by every run in the process.
    pub circuit_breaker: Option<BreakerPolicy>,
    /// Quality levels, best first; the first replaces the step's own settings.
    pub degrade: Vec<Alternative>,
    /// Bound on each attempt's wall time.
    pub timeout: Option<Duration>,
}

impl Policies {
    /// True when no policy is set (the engine then runs the step directly).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.retry.is_none()
            && self.fallback.is_empty()
            && self.circuit_breaker.is_none()
            && self.degrade.is_empty()
            && self.timeout.is_none()
    }

    /// A short description for diagrams (empty when no policy is set), e.g.
    /// ` · retry ×3 · breaker · degrade: best, basic · fallback: ollama, step transform · timeout 30s`.
    #[must_use]
    pub fn describe(&self) -> String {
        use crate::duration::format_duration;
        let mut parts = Vec::new();
        if let Some(r) = &self.retry {
            parts.push(format!(
                "retry ×{}{}",
                r.schedule.attempts,
                if r.validate.is_some() {
                    " + validate"
                } else {
                    ""
                }
            ));
        }
        if let Some(b) = &self.circuit_breaker {
            parts.push(match &b.name {
                Some(n) => format!("breaker {n}"),
                None => "breaker".to_owned(),
            });
        }
        for (what, list) in [("degrade", &self.degrade), ("fallback", &self.fallback)] {
            if !list.is_empty() {
                let labels: Vec<String> = list.iter().map(Alternative::label).collect();
                parts.push(format!("{what}: {}", labels.join(", ")));
            }
        }
        if let Some(t) = self.timeout {
            parts.push(format!("timeout {}", format_duration(t)));
        }
        parts.iter().map(|p| format!(" · {p}")).collect()
    }

    /// Sets `retry`.
    #[must_use]
    pub fn with_retry(mut self, r: RetryPolicy) -> Self {
        self.retry = Some(r);
        self
    }

    /// Adds a fallback alternative.
    #[must_use]
    pub fn with_fallback(mut self, a: Alternative) -> Self {
        self.fallback.push(a);
        self
    }

    /// Sets the circuit breaker.
    #[must_use]
    pub fn with_circuit_breaker(mut self, b: BreakerPolicy) -> Self {
        self.circuit_breaker = Some(b);
        self
    }

    /// Adds a degrade level (best first).
    #[must_use]
    pub fn with_degrade(mut self, a: Alternative) -> Self {
        self.degrade.push(a);
        self
    }

    /// Sets the per-attempt timeout.
    #[must_use]
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }
}

/// `retry:`.
#[derive(Debug, Clone, Default)]
pub struct RetryPolicy {
    /// Timing.
    pub schedule: RetrySchedule,
    /// A condition over the context plus `output` (the step's result); an
    /// answer for which it does not hold is retried.
    pub validate: Option<Condition>,
}

impl RetryPolicy {
    /// A policy with this schedule and no validator.
    #[must_use]
    pub fn new(schedule: RetrySchedule) -> Self {
        Self {
            schedule,
            validate: None,
        }
    }

    /// Sets the validator.
    #[must_use]
    pub fn with_validate(mut self, c: Condition) -> Self {
        self.validate = Some(c);
        self
    }
}

/// `circuit_breaker:`.
#[derive(Debug, Clone, Default)]
pub struct BreakerPolicy {
    /// The shared breaker's name (default: the provider the call goes to).
    pub name: Option<String>,
    /// Threshold and cool-down.
    pub config: BreakerConfig,
}

/// One `fallback` alternative or `degrade` level.
#[derive(Debug, Clone)]
pub enum Alternative {
    /// The same llm step sent to another provider and/or model.
    Provider {
        /// Provider name (`None`: the step's own).
        provider: Option<String>,
        /// Model (`None`: the provider's or step's).
        model: Option<String>,
        /// Label recorded when it serves (default: provider/model).
        label: Option<String>,
    },
    /// Another step whose result becomes this step's result.
    Step(Box<Step>),
}

impl Alternative {
    /// A provider alternative.
    #[must_use]
    pub fn provider(name: impl Into<String>) -> Self {
        Self::Provider {
            provider: Some(name.into()),
            model: None,
            label: None,
        }
    }

    /// What to call it in notes and records.
    #[must_use]
    pub fn label(&self) -> String {
        match self {
            Self::Provider { label: Some(l), .. } => l.clone(),
            Self::Provider {
                provider, model, ..
            } => match (provider, model) {
                (Some(p), Some(m)) => format!("{p}/{m}"),
                (Some(p), None) => p.clone(),
                (None, Some(m)) => m.clone(),
                (None, None) => "the step".to_owned(),
            },
            Self::Step(s) => format!("step {}", s.kind.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_lists_what_is_set_in_composition_order() {
        assert_eq!(Policies::default().describe(), "");
        let p = Policies::default()
            .with_retry(RetryPolicy::new(RetrySchedule::default().with_attempts(4)))
            .with_circuit_breaker(BreakerPolicy {
                name: Some("claude".into()),
                config: BreakerConfig::default(),
            })
            .with_degrade(Alternative::Provider {
                provider: None,
                model: Some("small".into()),
                label: None,
            })
            .with_fallback(Alternative::provider("ollama"))
            .with_timeout(Duration::from_secs(30));
        assert!(!p.is_empty());
        assert_eq!(
            p.describe(),
            " · retry ×4 · breaker claude · degrade: small · fallback: ollama · timeout 30s"
        );
    }
}
