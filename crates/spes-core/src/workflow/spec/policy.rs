//! Serde mirror of the policy fields of a step (`retry`, `fallback`,
//! `circuit_breaker`, `degrade`, `timeout`).

use serde::Deserialize;

use super::{ConditionSpec, S, StepSpec};

/// `retry: { attempts: 3, backoff: exponential, base: 1s, max: 30s, jitter: true, validate: "..." }`,
/// or `retry: none` (no retry, not even the default one).
#[derive(Debug, Clone, Default)]
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
    /// `retry: none`: one attempt, and no default retry either.
    pub off: bool,
}

/// The mapping form of [`RetrySpec`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryTable {
    attempts: Option<S<u32>>,
    backoff: Option<S<String>>,
    base: Option<S<String>>,
    max: Option<S<String>>,
    jitter: Option<bool>,
    validate: Option<S<ConditionSpec>>,
}

impl<'de> Deserialize<'de> for RetrySpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RetrySpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`none` or a mapping such as { attempts: 3 }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RetrySpec, E> {
                if v == "none" {
                    Ok(RetrySpec {
                        off: true,
                        ..RetrySpec::default()
                    })
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RetrySpec, A::Error> {
                let t = RetryTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RetrySpec {
                    attempts: t.attempts,
                    backoff: t.backoff,
                    base: t.base,
                    max: t.max,
                    jitter: t.jitter,
                    validate: t.validate,
                    off: false,
                })
            }
        }
        d.deserialize_any(V)
    }
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
