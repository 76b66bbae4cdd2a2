//! Serde mirror of the policy fields of a step (`retry`, `fallback`,
//! `circuit_breaker`, `degrade`, `timeout`).

use serde::Deserialize;

use super::{ConditionSpec, S, StepSpec};

/// `retry: { attempts: 3, backoff: exponential, base: 1s, max: 30s, jitter: true, validate: "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, the first try included (default 3).
    pub attempts: Option<S<u32>>,
    /// `exponential` (default) or `constant`.
    pub backoff: Option<S<String>>,
    /// First delay (default 1s).
    pub base: Option<S<String>>,
    /// Largest delay and longest honoured `retry-after` (default 30s).
    pub max: Option<S<String>>,
    /// Spread delays (default true).
    pub jitter: Option<bool>,
    /// A condition over the context and `output`; answers failing it are retried.
    pub validate: Option<S<ConditionSpec>>,
}

/// `circuit_breaker: { name: claude, failures: 5, cooldown: 60s }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSpec {
    /// Shared breaker name (default: the provider called).
    pub name: Option<S<String>>,
    /// Consecutive failures that open it (default 5).
    pub failures: Option<S<u32>>,
    /// How long it stays open (default 60s).
    pub cooldown: Option<S<String>>,
}

/// One `fallback` alternative or `degrade` level: `{ provider, model, name }` or `{ step }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlternativeSpec {
    /// Another provider for the same llm step.
    pub provider: Option<S<String>>,
    /// Another model for the same llm step.
    pub model: Option<S<String>>,
    /// A label recorded when this alternative serves.
    pub name: Option<S<String>>,
    /// Another step whose result becomes the step's result.
    pub step: Option<S<Box<StepSpec>>>,
}
