//! What an `llm` step's answer must be, checked the same way on every
//! provider: `format: json` parses, a `schema` validates the parsed value,
//! and an answer cut at `max_tokens` is refused when the step says so.
//! A refused answer becomes the feedback of a **repair** request (the
//! previous answer as an assistant message, then a user message listing
//! every problem), as Instructor and similar libraries do.
//!
//! Everything here is pure: the engine makes (and journals) the calls.
//!
//! ```
//! use serde_json::json;
//! use spes_core::answer::{AnswerSchema, OnTruncation, Verdict, check_answer};
//! use spes_core::workflow::Format;
//!
//! let schema = AnswerSchema::new(json!({
//!     "type": "object",
//!     "required": ["name", "age"],
//!     "properties": { "age": { "type": "integer" } }
//! }))
//! .unwrap();
//! let v = check_answer(Format::Json, Some(&schema), OnTruncation::Fail, r#"{"age": "x"}"#, false);
//! let Verdict::Invalid(problems) = v else { panic!() };
//! let pointers: Vec<&str> = problems.iter().map(|p| p.pointer.as_str()).collect();
//! assert_eq!(pointers, ["/", "/age"]);
//! ```

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::workflow::Format;

/// Repair attempts of a step that sets none and has no `[defaults] repair`.
pub const DEFAULT_REPAIR: u32 = 1;

/// Largest schema file a workflow may name.
pub const MAX_SCHEMA_BYTES: u64 = 1 << 20;

/// A JSON Schema an answer must follow, compiled once (validating an answer
/// is then a walk over it, not a compile per call).
#[derive(Clone)]
pub struct AnswerSchema {
    value: Arc<Value>,
    validator: Arc<jsonschema::Validator>,
    /// The file it was read from (resolved path), when it was not inline.
    pub file: Option<String>,
}

impl fmt::Debug for AnswerSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerSchema")
            .field("value", &self.value)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl AnswerSchema {
    /// Compiles `value` (drafts 4 to 2020-12; no remote `$ref` is fetched).
    /// The error says why it is not a usable JSON Schema.
    pub fn new(value: Value) -> Result<Self, String> {
        if !value.is_object() {
            return Err("a JSON Schema here is an object (`{ type: object, ... }`)".to_owned());
        }
        let validator = jsonschema::validator_for(&value).map_err(|e| e.to_string())?;
        Ok(Self {
            value: Arc::new(value),
            validator: Arc::new(validator),
            file: None,
        })
    }

    /// The same schema, noted as read from `file`.
    #[must_use]
    pub fn from_file(mut self, file: impl Into<String>) -> Self {
        self.file = Some(file.into());
        self
    }

    /// The schema as written (what providers are sent).
    #[must_use]
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The schema for a request: shared, not copied (a request per call
    /// and per repair would otherwise copy every keyword).
    #[must_use]
    pub fn shared(&self) -> Arc<Value> {
        Arc::clone(&self.value)
    }

    /// Every way `v` breaks the schema, each with the JSON pointer of the
    /// value at fault (`/` for the whole answer), sorted by pointer.
    #[must_use]
    pub fn violations(&self, v: &Value) -> Vec<Violation> {
        let mut out: Vec<Violation> = self
            .validator
            .iter_errors(v)
            .map(|e| {
                let at = e.instance_path().to_string();
                Violation {
                    pointer: if at.is_empty() { "/".to_owned() } else { at },
                    message: e.to_string(),
                }
            })
            .collect();
        // In document order of the answer, whatever order the keywords ran in.
        out.sort_by(|a, b| (&a.pointer, &a.message).cmp(&(&b.pointer, &b.message)));
        out
    }
}

/// What a step does with an answer that stopped at `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTruncation {
    /// Refuse it: it is repaired like any invalid answer, and fails the step
    /// as `invalid_output` when repairs run out (the default for JSON).
    Fail,
    /// Keep it, marked as truncated (the default for text).
    Warn,
}

impl OnTruncation {
    /// The default for a format: `fail` for JSON, `warn` for text.
    #[must_use]
    pub fn default_for(format: Format) -> Self {
        match format {
            Format::Json => Self::Fail,
            Format::Text => Self::Warn,
        }
    }

    /// The YAML name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Warn => "warn",
        }
    }
}

/// One problem with an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer of the value at fault (`/`: the whole answer).
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pointer, self.message)
    }
}

/// The message of the problem "cut off at `max_tokens`".
pub const TRUNCATED: &str = "the answer was cut off at max_tokens before it was complete";

/// Whether an answer is what the step asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// It is: the value written to the context (the text, or the parsed JSON).
    Valid(Value),
    /// It is not, for these reasons (never empty).
    Invalid(Vec<Violation>),
}

/// Checks an answer's `text` (which stopped at `max_tokens` when
/// `truncated`) against the step's format and schema.
#[must_use]
pub fn check_answer(
    format: Format,
    schema: Option<&AnswerSchema>,
    on_truncation: OnTruncation,
    text: &str,
    truncated: bool,
) -> Verdict {
    let cut = || Violation {
        pointer: "/".to_owned(),
        message: TRUNCATED.to_owned(),
    };
    if truncated && on_truncation == OnTruncation::Fail {
        return Verdict::Invalid(vec![cut()]);
    }
    if format == Format::Text && schema.is_none() {
        return Verdict::Valid(Value::String(text.to_owned()));
    }
    let v: Value = match serde_json::from_str(crate::transform::strip_code_fence(text)) {
        Ok(v) => v,
        Err(e) => {
            let mut problems = vec![Violation {
                pointer: "/".to_owned(),
                message: format!("not valid JSON ({e})"),
            }];
            if truncated {
                problems.push(cut());
            }
            return Verdict::Invalid(problems);
        }
    };
    match schema.map(|s| s.violations(&v)) {
        Some(problems) if !problems.is_empty() => Verdict::Invalid(problems),
        _ => Verdict::Valid(v),
    }
}

/// The user message of a repair request: every problem, one per line, and
/// what to do.
#[must_use]
pub fn repair_prompt(problems: &[Violation], format: Format) -> String {
    let mut s = String::from("Your previous answer is not what was asked for. Problems found:\n");
    for p in problems {
        s.push_str("- ");
        s.push_str(&p.to_string());
        s.push('\n');
    }
    let cut = problems.iter().any(|p| p.message == TRUNCATED);
    s.push('\n');
    s.push_str(match (format, cut) {
        (Format::Json, true) => {
            "Answer again with the complete JSON only, shorter so that it fits, and fix every problem listed."
        }
        (Format::Json, false) => {
            "Answer again with the corrected JSON only (no prose, no code fence), fixing every problem listed."
        }
        (Format::Text, _) => "Answer again, shorter, so that the answer is complete.",
    });
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn person() -> AnswerSchema {
        AnswerSchema::new(json!({
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": { "type": "string" },
                "tags": { "type": "array", "items": { "type": "string" } }
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_valid_answer_is_parsed_and_a_fenced_one_too() {
        let s = person();
        for text in [r#"{"name": "Ada"}"#, "```json\n{\"name\": \"Ada\"}\n```"] {
            assert_eq!(
                check_answer(Format::Json, Some(&s), OnTruncation::Fail, text, false),
                Verdict::Valid(json!({ "name": "Ada" }))
            );
        }
    }

    #[test]
    fn each_violation_names_its_pointer() {
        let v = check_answer(
            Format::Json,
            Some(&person()),
            OnTruncation::Fail,
            r#"{"tags": ["a", 3]}"#,
            false,
        );
        let Verdict::Invalid(p) = v else {
            panic!("{v:?}")
        };
        let got: Vec<String> = p.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "/: \"name\" is a required property",
                "/tags/1: 3 is not of type \"string\""
            ]
        );
    }

    #[test]
    fn not_json_and_truncation_are_problems_for_json_steps() {
        let Verdict::Invalid(p) =
            check_answer(Format::Json, None, OnTruncation::Fail, "{\"a\": 1", true)
        else {
            panic!()
        };
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].message, TRUNCATED);
        let Verdict::Invalid(p) =
            check_answer(Format::Json, None, OnTruncation::Warn, "{\"a\": 1", true)
        else {
            panic!()
        };
        assert!(p[0].message.starts_with("not valid JSON"), "{p:?}");
        assert_eq!(p[1].message, TRUNCATED);
        // `warn` on JSON keeps a cut answer that still parses.
        assert_eq!(
            check_answer(Format::Json, None, OnTruncation::Warn, "[1]", true),
            Verdict::Valid(json!([1]))
        );
    }

    #[test]
    fn text_is_kept_when_cut_unless_the_step_says_fail() {
        assert_eq!(
            check_answer(Format::Text, None, OnTruncation::Warn, "half a sen", true),
            Verdict::Valid(json!("half a sen"))
        );
        assert!(matches!(
            check_answer(Format::Text, None, OnTruncation::Fail, "half a sen", true),
            Verdict::Invalid(_)
        ));
        assert_eq!(OnTruncation::default_for(Format::Text), OnTruncation::Warn);
        assert_eq!(OnTruncation::default_for(Format::Json), OnTruncation::Fail);
    }

    #[test]
    fn the_repair_prompt_lists_every_problem() {
        let p = vec![
            Violation {
                pointer: "/".into(),
                message: "\"name\" is a required property".into(),
            },
            Violation {
                pointer: "/age".into(),
                message: "\"x\" is not of type \"integer\"".into(),
            },
        ];
        let text = repair_prompt(&p, Format::Json);
        assert!(
            text.contains("- /: \"name\" is a required property\n"),
            "{text}"
        );
        assert!(
            text.contains("- /age: \"x\" is not of type \"integer\"\n"),
            "{text}"
        );
        assert!(text.ends_with("fixing every problem listed."), "{text}");
    }

    #[test]
    fn a_schema_that_is_not_one_is_refused() {
        assert!(AnswerSchema::new(json!({ "type": "objekt" })).is_err());
        assert!(AnswerSchema::new(json!("schema.json")).is_err());
    }
}
