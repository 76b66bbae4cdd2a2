//! Spec types of evaluators (quality_gate, refine) and refine examples.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::S;

/// A built-in check as written: one key (`contains`, `regex`, `length`,
/// `words`, `lines`, `json`, `schema`) and its value. Kept as a map so that
/// validation can name an unknown check with a hint.
pub type CheckItemSpec = BTreeMap<String, serde_json::Value>;

/// `evaluator: { checks | judge | criteria }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorSpec {
    /// Built-in checks; the score is the fraction that pass.
    pub checks: Option<S<Vec<S<CheckItemSpec>>>>,
    /// One LLM judge.
    pub judge: Option<S<JudgeSpec>>,
    /// Weighted criteria.
    pub criteria: Option<S<Vec<S<CriterionSpec>>>>,
}

/// `judge: { agent, rubric }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeSpec {
    /// The judging agent (default provider when absent).
    pub agent: Option<S<String>>,
    /// What a good answer is (template).
    pub rubric: Option<S<String>>,
}

/// `{ name, weight, threshold, judge | check }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriterionSpec {
    /// Name (unique; part of the judge's step key).
    pub name: Option<S<String>>,
    /// Weight (> 0, default 1).
    pub weight: Option<S<f64>>,
    /// Its own threshold (0..1, default 0.7).
    pub threshold: Option<S<f64>>,
    /// Measured by a judge.
    pub judge: Option<S<JudgeSpec>>,
    /// Measured by a check.
    pub check: Option<S<CheckItemSpec>>,
    /// Measured by a graded expression giving 0..1 (sees `output`).
    pub score: Option<S<String>>,
}

/// `examples: { good: [...], bad: [...] }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExamplesSpec {
    /// Follow these.
    #[serde(default)]
    pub good: Vec<String>,
    /// Avoid these.
    #[serde(default)]
    pub bad: Vec<String>,
}
