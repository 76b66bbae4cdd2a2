//! Engine errors: which step failed, where it was written, and why.

use spes_core::duration::format_duration;
use spes_core::template::TemplateError;
use spes_core::workflow::Loc;
use spes_llm::error::GiveUp;
use spes_llm::{ErrorClass, ProviderError};

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FailureKind {
    /// The provider failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// A template could not be rendered.
    #[error("{0}")]
    Template(TemplateError),
    /// A transform function failed.
    #[error("{0}")]
    Transform(String),
    /// The model's answer did not have the required shape.
    #[error("{0}")]
    Answer(String),
    /// The journal could not be read or written (typed: a lost lease or
    /// an unavailable store is transient; a mismatch or a damaged entry
    /// is terminal).
    #[error("journal: {0}")]
    Journal(crate::journal::JournalError),
    /// The run store did not commit this step's journal entry (a full
    /// disk, an I/O error, a read-only file, a lock held past its budget):
    /// the run stopped here, every earlier entry intact. Error class
    /// `store` (`spes` exits 5); `spes resume` continues once the cause is
    /// fixed.
    #[error("the run store did not commit this step: {0}")]
    Store(String),
    /// The step names a provider that is not configured.
    #[error("{0}")]
    Config(String),
    /// An attempt ran past the step's `timeout` policy.
    #[error("timed out after {}", spes_core::duration::format_duration(*.0))]
    Timeout(std::time::Duration),
    /// A circuit breaker refused the call without making it.
    #[error("circuit breaker `{name}` is open: the call was refused without reaching the provider (next try in {})", spes_core::duration::format_duration(*retry_after))]
    CircuitOpen {
        /// The breaker.
        name: String,
        /// Time left in its cool-down.
        retry_after: std::time::Duration,
    },
    /// A map item failed in a worker (`spes worker`): its error as that
    /// worker saw it.
    #[error("{message}")]
    Remote {
        /// The error.
        message: String,
        /// Whether it was transient there.
        transient: bool,
    },
    /// An http step failed: no response (a connection refused, a timeout),
    /// a status the step does not expect, or a body it cannot read.
    #[error("{message}")]
    Http {
        /// The response status, when there was a response.
        status: Option<u16>,
        /// What happened, with the method and URL.
        message: String,
        /// Worth sending again (no response, 408, 425, 429, 5xx).
        transient: bool,
    },
    /// A saga step failed and at least one compensation failed too: the
    /// saga's effects are only partly undone.
    #[error("{0}")]
    Compensation(String),
    /// The run's budget would be exceeded by this model call, which was
    /// not made. Error class `budget_exceeded` (`spes` exits 7); `spes
    /// resume RUN --budget ...` continues with a higher limit.
    #[error("budget_exceeded: {0}")]
    Budget(String),
    /// The answer is not what the step asked for (not JSON, against its
    /// schema, or cut at `max_tokens`), still after every repair attempt.
    #[error("{}", invalid_output_text(problems, *attempts))]
    InvalidOutput {
        /// Each problem of the last answer, with its JSON pointer.
        problems: Vec<spes_core::answer::Violation>,
        /// Answers asked for in all (the first and the repairs).
        attempts: u32,
    },
}

fn invalid_output_text(problems: &[spes_core::answer::Violation], attempts: u32) -> String {
    let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
    format!(
        "invalid_output: the answer is not what the step asked for (after {attempts} attempt{}): {}",
        if attempts == 1 { "" } else { "s" },
        list.join("; ")
    )
}

impl FailureKind {
    /// Whether this is an answer cut at `max_tokens` (and nothing else wrong).
    #[must_use]
    pub fn is_truncation_only(&self) -> bool {
        matches!(self, Self::InvalidOutput { problems, .. }
            if problems.iter().all(|p| p.message == spes_core::answer::TRUNCATED))
    }
}

/// A failed run: the step, its location and the cause.
#[derive(Debug, thiserror::Error)]
#[error("step `{step}` ({loc}) failed: {kind}")]
pub struct EngineError {
    /// The step key.
    pub step: String,
    /// Where the step is written.
    pub loc: Loc,
    /// Why.
    pub kind: FailureKind,
}

impl EngineError {
    /// Transient (worth retrying) or terminal.
    #[must_use]
    pub fn class(&self) -> ErrorClass {
        match &self.kind {
            FailureKind::Provider(p) => p.class(),
            FailureKind::Journal(j) => j.class(),
            FailureKind::Store(_) | FailureKind::Timeout(_) | FailureKind::CircuitOpen { .. } => {
                ErrorClass::Transient
            }
            FailureKind::Template(_)
            | FailureKind::Transform(_)
            | FailureKind::Answer(_)
            | FailureKind::InvalidOutput { .. }
            | FailureKind::Config(_)
            | FailureKind::Budget(_)
            | FailureKind::Compensation(_) => ErrorClass::Terminal,
            FailureKind::Remote { transient, .. } | FailureKind::Http { transient, .. } => {
                if *transient {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Terminal
                }
            }
        }
    }

    /// True when the run stopped because the store did not commit
    /// (error class `store`), not because the step failed.
    #[must_use]
    pub fn is_store(&self) -> bool {
        matches!(self.kind, FailureKind::Store(_))
    }

    /// True when the run stopped because its budget would have been
    /// exceeded (error class `budget_exceeded`).
    #[must_use]
    pub fn is_budget(&self) -> bool {
        matches!(self.kind, FailureKind::Budget(_))
    }

    /// A hint for the user, where one helps.
    #[must_use]
    pub fn hint(&self) -> Option<String> {
        use spes_llm::ProviderErrorKind as K;
        match &self.kind {
            FailureKind::Provider(p) => match p.kind {
                K::Authentication => Some(format!(
                    "check the API key variable configured for provider `{}` in spes.toml (api_key_env)",
                    p.provider
                )),
                K::Billing => Some(format!(
                    "the account behind provider `{}` has no credit or quota left: add credit or raise the limit in the provider's billing settings (the key itself was accepted)",
                    p.provider
                )),
                K::Refused => Some(
                    "the model declined this request: rephrase the prompt, or add `fallback:` with another model".into(),
                ),
                K::RequestTooLarge => Some(
                    "the request is larger than the provider accepts at all, so waiting will not help: shorten the input, or split the work (e.g. a `map` over parts)".into(),
                ),
                K::ResponseTooLarge => Some(format!(
                    "lower the step's `max_tokens`, or raise max_response_bytes in [providers.{}] if such answers are expected",
                    p.provider
                )),
                K::RateLimited
                | K::Overloaded
                | K::Server
                | K::Timeout
                | K::Connect
                | K::StreamBroken
                | K::BadResponse => Some(match p.gave_up {
                    Some(GiveUp::RetryAfterTooLong { asked, max }) => format!(
                        "the provider asked to wait {}, longer than the retry `max` of {}: raise `max` in the step's `retry:` (or `retry` in spes.toml), run again later, or add `fallback:`",
                        format_duration(asked),
                        format_duration(max)
                    ),
                    Some(GiveUp::Exhausted { attempts }) if attempts > 1 => format!(
                        "this is transient and all {attempts} attempts failed: run again later, raise `attempts` in the step's `retry:`, or add `fallback:`"
                    ),
                    _ => "this is transient; run again, or add `retry:` / `fallback:` to the step"
                        .into(),
                }),
                K::ContextOverflow => {
                    Some("shorten the prompt or pick a model with a larger context".into())
                }
                K::Truncated => Some("raise `max_tokens` on the step".into()),
                _ => None,
            },
            FailureKind::Store(_) => Some(
                "free disk space (or fix the store's file permissions or server), then `spes resume` the run: committed steps are not repeated".into(),
            ),
            FailureKind::Budget(_) => Some(
                "raise the limit and continue: `spes resume RUN --budget cost=5` (or tokens=, calls=); calls already made are not repeated".into(),
            ),
            FailureKind::Timeout(_) => Some(
                "raise the step's `timeout`, or add `retry:` / `fallback:` to the step".into(),
            ),
            FailureKind::CircuitOpen { .. } => Some(
                "the provider failed repeatedly; after the cool-down one probe call is let through. Add `fallback:` to use another provider meanwhile".into(),
            ),
            FailureKind::InvalidOutput { problems, .. } => {
                let cut = problems
                    .iter()
                    .any(|p| p.message == spes_core::answer::TRUNCATED);
                Some(if cut {
                    "raise the step's `max_tokens` (or `repair:`), then `spes resume RUN --allow-changes`: recorded answers replay and the model is asked again".into()
                } else {
                    "raise the step's `repair:` (or make the prompt say what the schema wants), then `spes resume RUN`: recorded answers replay and the model is asked again".into()
                })
            }
            FailureKind::Template(t) if !t.missing.is_empty() => Some(format!(
                "pass it with --input {}=... or write it with an earlier step's `output:`",
                t.missing[0]
            )),
            _ => None,
        }
    }
}
