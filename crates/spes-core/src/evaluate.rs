//! Evaluators for `quality_gate` and `refine` (the reference's §4): built-in
//! checks, an LLM judge with a rubric, and weighted criteria. Everything here
//! is pure; the engine makes (and journals) the judge calls and hands their
//! answers to [`parse_verdict`].
//!
//! Scoring, decided where the reference is vague:
//! - `checks`: each check passes or fails; the score is the fraction that
//!   passed; the feedback names every failed check.
//! - `judge`: the model's `score` (0..1, required) and `feedback`. An answer
//!   that is not JSON with a numeric score in 0..1 is an error naming the
//!   step, never a silent 0 (a retry policy may retry it).
//! - `criteria`: score = Σ weight·score / Σ weight. The overall threshold is
//!   the step's `threshold` when set, else Σ weight·threshold / Σ weight (as
//!   in the reference). Unlike the reference, which passes on the weighted
//!   average alone, a run passes only when the weighted score reaches the
//!   overall threshold **and** every criterion reaches its own threshold: a
//!   high score elsewhere cannot hide a failing criterion.
//!
//! ```
//! use spes_core::evaluate::{Check, CheckKind};
//! let c = Check::new(CheckKind::Words { min: Some(2), max: Some(4) });
//! assert!(c.run("three short words").passed);
//! assert!(!c.run("one").passed);
//! ```

use std::sync::Arc;

use serde_json::Value;

use crate::template::Template;
use crate::workflow::Agent;

/// Threshold a criterion uses when it sets none (the reference's 0.7).
pub const DEFAULT_CRITERION_THRESHOLD: f64 = 0.7;
/// Threshold of a quality gate or refine step that sets none (the reference's 0.8).
pub const DEFAULT_THRESHOLD: f64 = 0.8;
/// Names of the built-in checks.
pub const CHECK_NAMES: &[&str] = &[
    "contains", "regex", "length", "words", "lines", "json", "schema",
];

/// One built-in check.
#[derive(Debug, Clone)]
pub struct Check {
    /// What it checks.
    pub kind: CheckKind,
}

/// The built-in checks.
#[derive(Debug, Clone)]
pub enum CheckKind {
    /// The text contains this (case-sensitive).
    Contains(String),
    /// The regex matches somewhere.
    Regex(regex::Regex),
    /// Length in characters, inclusive bounds.
    Length {
        /// Minimum.
        min: Option<u64>,
        /// Maximum.
        max: Option<u64>,
    },
    /// Word count (whitespace separated), inclusive bounds.
    Words {
        /// Minimum.
        min: Option<u64>,
        /// Maximum.
        max: Option<u64>,
    },
    /// Line count, inclusive bounds.
    Lines {
        /// Minimum.
        min: Option<u64>,
        /// Maximum.
        max: Option<u64>,
    },
    /// The text is valid JSON (a ```json fence is tolerated).
    Json,
    /// The text is JSON valid against this JSON Schema (see [`schema_errors`]).
    Schema(Value),
}

/// A check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    /// Passed.
    pub passed: bool,
    /// What was checked and, when it failed, why.
    pub detail: String,
}

fn in_range(n: u64, min: Option<u64>, max: Option<u64>) -> bool {
    min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m)
}

fn range_text(min: Option<u64>, max: Option<u64>) -> String {
    match (min, max) {
        (Some(a), Some(b)) => format!("{a}..{b}"),
        (Some(a), None) => format!(">= {a}"),
        (None, Some(b)) => format!("<= {b}"),
        (None, None) => "any".to_owned(),
    }
}

impl Check {
    /// A check.
    #[must_use]
    pub fn new(kind: CheckKind) -> Self {
        Self { kind }
    }

    /// A short description (`words 150..600`).
    #[must_use]
    pub fn describe(&self) -> String {
        match &self.kind {
            CheckKind::Contains(s) => format!("contains {s:?}"),
            CheckKind::Regex(r) => format!("matches /{}/", r.as_str()),
            CheckKind::Length { min, max } => format!("length {}", range_text(*min, *max)),
            CheckKind::Words { min, max } => format!("words {}", range_text(*min, *max)),
            CheckKind::Lines { min, max } => format!("lines {}", range_text(*min, *max)),
            CheckKind::Json => "valid JSON".to_owned(),
            CheckKind::Schema(_) => "JSON matching the schema".to_owned(),
        }
    }

    /// Runs the check on `text`.
    #[must_use]
    pub fn run(&self, text: &str) -> CheckOutcome {
        let what = self.describe();
        let (passed, why) = match &self.kind {
            CheckKind::Contains(s) => (text.contains(s.as_str()), String::new()),
            CheckKind::Regex(r) => (r.is_match(text), String::new()),
            CheckKind::Length { min, max } => {
                let n = text.chars().count() as u64;
                (in_range(n, *min, *max), format!("has {n}"))
            }
            CheckKind::Words { min, max } => {
                let n = text.split_whitespace().count() as u64;
                (in_range(n, *min, *max), format!("has {n}"))
            }
            CheckKind::Lines { min, max } => {
                let n = text.lines().count() as u64;
                (in_range(n, *min, *max), format!("has {n}"))
            }
            CheckKind::Json => match parse_json(text) {
                Ok(_) => (true, String::new()),
                Err(e) => (false, e),
            },
            CheckKind::Schema(schema) => match parse_json(text) {
                Ok(v) => {
                    let errs = schema_errors(schema, &v);
                    (errs.is_empty(), errs.join("; "))
                }
                Err(e) => (false, e),
            },
        };
        let detail = if passed || why.is_empty() {
            what
        } else {
            format!("{what} ({why})")
        };
        CheckOutcome { passed, detail }
    }
}

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(crate::transform::strip_code_fence(text))
        .map_err(|e| format!("not JSON: {e}"))
}

/// Validates `v` against a JSON Schema (drafts 4 to 2020-12, by the
/// `jsonschema` crate; no remote references are fetched). Returns every
/// violation with the JSON pointer of the value at fault (`/` for the root).
#[must_use]
pub fn schema_errors(schema: &Value, v: &Value) -> Vec<String> {
    match jsonschema::validator_for(schema) {
        Err(e) => vec![format!("the schema is invalid: {e}")],
        Ok(validator) => validator
            .iter_errors(v)
            .map(|e| {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() { "/".to_owned() } else { at };
                format!("{at}: {e}")
            })
            .collect(),
    }
}

/// Why `schema` is not a usable JSON Schema, if it is not.
#[must_use]
pub fn schema_problem(schema: &Value) -> Option<String> {
    jsonschema::validator_for(schema)
        .err()
        .map(|e| e.to_string())
}

/// An LLM judge: a rubric and who answers.
#[derive(Debug, Clone)]
pub struct Judge {
    /// The rubric (template over the context).
    pub rubric: Template,
    /// The judging agent (`None`: the default provider, no system prompt).
    pub agent: Option<Arc<Agent>>,
}

/// The judge's user message for `text` under `rubric` (already rendered).
/// The text is inserted as data.
#[must_use]
pub fn judge_prompt(rubric: &str, text: &str) -> String {
    format!(
        "Evaluate the text below against this rubric:\n{rubric}\n\nText:\n{text}\n\nAnswer with JSON only: {{\"score\": <a number from 0 to 1>, \"feedback\": \"<what to improve>\"}}"
    )
}

/// A judge's answer, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// 0..1.
    pub score: f64,
    /// What to improve.
    pub feedback: String,
}

/// Parses a judge's answer: JSON (a ```json fence, or prose around one
/// `{...}` object, is tolerated) with a numeric `score` in 0..1 (a numeric
/// string is accepted) and an optional `feedback`.
pub fn parse_verdict(answer: &str) -> Result<Verdict, String> {
    let stripped = crate::transform::strip_code_fence(answer);
    let v: Value = match serde_json::from_str(stripped) {
        Ok(v) => v,
        Err(_) => {
            let start = stripped.find('{');
            let end = stripped.rfind('}');
            match (start, end) {
                (Some(a), Some(b)) if a < b => serde_json::from_str(&stripped[a..=b])
                    .map_err(|e| format!("the judge's answer is not JSON ({e})"))?,
                _ => return Err("the judge's answer holds no JSON object".to_owned()),
            }
        }
    };
    let score = match v.get("score") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or_else(|| "the judge's answer has no numeric `score`".to_owned())?;
    if !(0.0..=1.0).contains(&score) || score.is_nan() {
        return Err(format!("the judge's score {score} is outside 0..1"));
    }
    let feedback = match v.get("feedback") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    Ok(Verdict { score, feedback })
}

/// How a criterion is measured.
#[derive(Debug, Clone)]
pub enum Measure {
    /// A built-in check (1 when it passes, else 0).
    Check(Check),
    /// An LLM judge.
    Judge(Judge),
    /// A graded score: an expression over the context and `output` (the
    /// text scored) giving a number in 0..1 (`"{{ 1 if output | length > 200 else 0.3 }}"`).
    Score(Template),
}

/// Evaluates a graded `score` expression on `text`: a number (or numeric
/// text) in 0..1, else an error saying what it gave.
pub fn graded_score(
    t: &Template,
    ctx: &crate::template::Context,
    text: &str,
) -> Result<f64, crate::template::TemplateError> {
    let mut locals = crate::template::Context::new();
    locals.insert("output".into(), Value::String(text.to_owned()));
    let v = t.eval(ctx, Some(&locals))?;
    let n = match &v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match n {
        Some(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(crate::template::TemplateError {
            message: format!("the score expression gave {v}, not a number from 0 to 1"),
            range: None,
            line: None,
            missing: Vec::new(),
        }),
    }
}

/// One weighted criterion.
#[derive(Debug, Clone)]
pub struct Criterion {
    /// Name (part of the judge's step key).
    pub name: String,
    /// Weight (> 0).
    pub weight: f64,
    /// Its own threshold (0..1).
    pub threshold: f64,
    /// How it is measured.
    pub measure: Measure,
}

/// A validated evaluator.
#[derive(Debug, Clone)]
pub enum Evaluator {
    /// Built-in checks; the score is the fraction passed.
    Checks(Vec<Check>),
    /// One LLM judge.
    Judge(Judge),
    /// Weighted criteria.
    Criteria(Vec<Criterion>),
}

impl Evaluator {
    /// The threshold used when the step sets none: the weighted mean of the
    /// criteria's thresholds (to 4 decimals), else [`DEFAULT_THRESHOLD`].
    #[must_use]
    pub fn default_threshold(&self) -> f64 {
        match self {
            Self::Criteria(cs) => {
                let w: f64 = cs.iter().map(|c| c.weight).sum();
                if w > 0.0 {
                    round4(cs.iter().map(|c| c.weight * c.threshold).sum::<f64>() / w)
                } else {
                    DEFAULT_THRESHOLD
                }
            }
            _ => DEFAULT_THRESHOLD,
        }
    }

    /// A short description for diagrams.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Checks(cs) => format!("{} checks", cs.len()),
            Self::Judge(_) => "judge".to_owned(),
            Self::Criteria(cs) => format!(
                "criteria {}",
                cs.iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// One criterion's measured score.
#[derive(Debug, Clone, PartialEq)]
pub struct CriterionScore {
    /// Name.
    pub name: String,
    /// Score 0..1.
    pub score: f64,
    /// Weight.
    pub weight: f64,
    /// Its threshold.
    pub threshold: f64,
    /// The judge's feedback or the check's detail.
    pub feedback: String,
}

/// The result of evaluating one output.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// 0..1.
    pub score: f64,
    /// The threshold it was held to.
    pub threshold: f64,
    /// Whether it passed (see the module docs).
    pub passed: bool,
    /// What to improve (fed to the next attempt).
    pub feedback: String,
    /// Per criterion (criteria evaluators only).
    pub criteria: Vec<CriterionScore>,
}

impl Evaluation {
    /// As JSON for the step's history.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "score": round4(self.score),
            "threshold": round4(self.threshold),
            "passed": self.passed,
            "feedback": self.feedback,
        });
        if !self.criteria.is_empty()
            && let Some(o) = v.as_object_mut()
        {
            o.insert(
                "criteria".into(),
                Value::Array(
                    self.criteria
                        .iter()
                        .map(|c| {
                            serde_json::json!({
                                "name": c.name, "score": round4(c.score), "weight": c.weight,
                                "threshold": round4(c.threshold), "passed": c.score >= c.threshold,
                                "feedback": c.feedback,
                            })
                        })
                        .collect(),
                ),
            );
        }
        v
    }
}

/// Rounds to 4 decimals (scores in records and prompts).
#[must_use]
pub fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Scores a list of check outcomes against `threshold`.
#[must_use]
pub fn score_checks(outcomes: &[CheckOutcome], threshold: f64) -> Evaluation {
    let passed = outcomes.iter().filter(|o| o.passed).count();
    let score = if outcomes.is_empty() {
        1.0
    } else {
        passed as f64 / outcomes.len() as f64
    };
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| format!("- fails: {}", o.detail))
        .collect();
    Evaluation {
        score,
        threshold,
        passed: score >= threshold,
        feedback: if failed.is_empty() {
            "All checks pass.".to_owned()
        } else {
            format!("Checks that fail:\n{}", failed.join("\n"))
        },
        criteria: Vec::new(),
    }
}

/// A judge's verdict as an evaluation.
#[must_use]
pub fn score_verdict(v: &Verdict, threshold: f64) -> Evaluation {
    Evaluation {
        score: v.score,
        threshold,
        passed: v.score >= threshold,
        feedback: v.feedback.clone(),
        criteria: Vec::new(),
    }
}

/// Combines criterion scores: weighted mean, overall threshold, per-criterion thresholds.
#[must_use]
pub fn score_criteria(scores: Vec<CriterionScore>, threshold: f64) -> Evaluation {
    let w: f64 = scores.iter().map(|c| c.weight).sum();
    let score = if w > 0.0 {
        scores.iter().map(|c| c.weight * c.score).sum::<f64>() / w
    } else {
        0.0
    };
    let failing: Vec<&CriterionScore> = scores.iter().filter(|c| c.score < c.threshold).collect();
    let passed = score >= threshold && failing.is_empty();
    let feedback = if failing.is_empty() {
        "All criteria met.".to_owned()
    } else {
        let lines: Vec<String> = failing
            .iter()
            .map(|c| {
                let why = if c.feedback.is_empty() {
                    String::new()
                } else {
                    format!(": {}", c.feedback)
                };
                format!(
                    "- {}: {:.2} (needs >= {:.2}){why}",
                    c.name, c.score, c.threshold
                )
            })
            .collect();
        format!("Areas needing improvement:\n{}", lines.join("\n"))
    };
    Evaluation {
        score,
        threshold,
        passed,
        feedback,
        criteria: scores,
    }
}

/// The index of the best attempt: highest score, the earliest on a tie.
#[must_use]
pub fn best_attempt(scores: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, s) in scores.iter().enumerate() {
        if best.is_none_or(|b| *s > scores[b]) {
            best = Some(i);
        }
    }
    best
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cs(name: &str, score: f64, weight: f64, threshold: f64) -> CriterionScore {
        CriterionScore {
            name: name.into(),
            score,
            weight,
            threshold,
            feedback: String::new(),
        }
    }

    #[test]
    fn checks_score_the_fraction_passed_and_name_the_failures() {
        let checks = [
            Check::new(CheckKind::Contains("Summary".into())),
            Check::new(CheckKind::Words {
                min: Some(3),
                max: None,
            }),
            Check::new(CheckKind::Json),
            Check::new(CheckKind::Lines {
                min: None,
                max: Some(1),
            }),
        ];
        let out: Vec<_> = checks.iter().map(|c| c.run("Summary: two")).collect();
        let e = score_checks(&out, 0.5);
        assert!((e.score - 0.5).abs() < 1e-9);
        assert!(e.passed);
        assert!(e.feedback.contains("words >= 3 (has 2)"), "{}", e.feedback);
        assert!(e.feedback.contains("valid JSON"), "{}", e.feedback);
        assert!(!score_checks(&out, 0.75).passed);
    }

    #[test]
    fn length_and_regex_checks() {
        let len = Check::new(CheckKind::Length {
            min: Some(2),
            max: Some(3),
        });
        assert!(len.run("héé").passed, "characters, not bytes");
        assert!(!len.run("abcd").passed);
        let re = Check::new(CheckKind::Regex(regex::Regex::new("^ERR").unwrap()));
        assert!(re.run("ERR 1").passed);
        assert!(!re.run("ok ERR").passed);
    }

    #[test]
    fn schema_check_reports_each_violation_with_its_pointer() {
        let schema = serde_json::json!({
            "type": "object", "required": ["title", "tags"], "additionalProperties": false,
            "properties": {
                "title": { "type": "string", "minLength": 3 },
                "tags": { "type": "array", "items": { "type": "string" }, "maxItems": 2 },
                "score": { "type": "number", "minimum": 0, "maximum": 1 }
            }
        });
        let ok = Check::new(CheckKind::Schema(schema.clone()));
        assert!(
            ok.run("```json\n{\"title\": \"abc\", \"tags\": [\"x\"]}\n```")
                .passed
        );
        let bad = serde_json::json!({"title": "ab", "tags": ["a", 1, "c"], "score": 2, "x": 1});
        let mut at: Vec<String> = schema_errors(&schema, &bad)
            .iter()
            .map(|e| e.split(':').next().unwrap_or_default().to_owned())
            .collect();
        at.sort();
        assert_eq!(at, vec!["/", "/score", "/tags", "/tags/1", "/title"]);
        let missing = schema_errors(&schema, &serde_json::json!({}));
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(missing[0].contains("title") || missing[1].contains("title"));
        let failed = ok.run("{\"title\": 5, \"tags\": []}");
        assert!(!failed.passed);
        assert!(
            failed
                .detail
                .starts_with("JSON matching the schema (/title: "),
            "{}",
            failed.detail
        );
        assert!(schema_problem(&serde_json::json!({"type": 12})).is_some());
        assert!(schema_problem(&schema).is_none());
    }

    #[test]
    fn verdicts_tolerate_fences_and_prose_but_not_bad_scores() {
        let v = parse_verdict("```json\n{\"score\": 0.75, \"feedback\": \"cite sources\"}\n```")
            .unwrap();
        assert_eq!(
            v,
            Verdict {
                score: 0.75,
                feedback: "cite sources".into()
            }
        );
        let v = parse_verdict("Here you go: {\"score\": \"0.5\"} hope it helps").unwrap();
        assert!((v.score - 0.5).abs() < 1e-9);
        assert!(
            parse_verdict("great work, 9/10")
                .unwrap_err()
                .contains("no JSON")
        );
        assert!(
            parse_verdict("{\"score\": 7}")
                .unwrap_err()
                .contains("outside 0..1")
        );
        assert!(
            parse_verdict("{\"feedback\": \"x\"}")
                .unwrap_err()
                .contains("numeric")
        );
    }

    #[test]
    fn criteria_pass_only_when_the_mean_and_every_criterion_pass() {
        // Weighted mean 0.9 >= 0.8, but `sources` is under its own threshold.
        let e = score_criteria(
            vec![cs("style", 1.0, 3.0, 0.7), cs("sources", 0.6, 1.0, 0.7)],
            0.8,
        );
        assert!((e.score - 0.9).abs() < 1e-9);
        assert!(!e.passed);
        assert!(
            e.feedback.contains("- sources: 0.60 (needs >= 0.70)"),
            "{}",
            e.feedback
        );
        let e = score_criteria(
            vec![cs("style", 0.8, 3.0, 0.7), cs("sources", 0.7, 1.0, 0.7)],
            0.75,
        );
        assert!(e.passed, "{e:?}");
        // Each criterion passes, the mean does not reach an explicit overall threshold.
        let e = score_criteria(vec![cs("a", 0.7, 1.0, 0.7)], 0.9);
        assert!(!e.passed);
    }

    #[test]
    fn default_threshold_is_the_weighted_mean_of_criterion_thresholds() {
        let judge = || Measure::Check(Check::new(CheckKind::Json));
        let ev = Evaluator::Criteria(vec![
            Criterion {
                name: "a".into(),
                weight: 2.0,
                threshold: 1.0,
                measure: judge(),
            },
            Criterion {
                name: "b".into(),
                weight: 2.0,
                threshold: 0.5,
                measure: judge(),
            },
        ]);
        assert!((ev.default_threshold() - 0.75).abs() < 1e-9);
        assert!((Evaluator::Checks(vec![]).default_threshold() - 0.8).abs() < 1e-9);
    }

    #[test]
    fn best_attempt_is_the_highest_score_earliest_on_ties() {
        assert_eq!(best_attempt(&[0.2, 0.6, 0.6, 0.1]), Some(1));
        assert_eq!(best_attempt(&[]), None);
    }
}
