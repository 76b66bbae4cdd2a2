//! Branch conditions (the reference's §3 `ConditionBuilder`), evaluated
//! purely over the context, except `ask`, which the engine sends to a model.

use std::sync::Arc;

use crate::template::{Context, Expr, Template, TemplateError};
use crate::workflow::Agent;

/// A validated condition.
#[derive(Debug, Clone)]
pub enum Condition {
    /// A minijinja expression, true by Jinja truthiness.
    Expr(Expr),
    /// The text under `key` contains any of the words (case-insensitive),
    /// as whole words ("decode" does not mention "code"), or anywhere with
    /// `substring`.
    Keyword {
        /// Lowercased words (a keyword may be several words: "out of stock").
        words: Vec<String>,
        /// Context key.
        key: String,
        /// Match anywhere, not only whole words (`substring: true`).
        substring: bool,
    },
    /// The text under `key` has between `min` and `max` characters (inclusive).
    Length {
        /// Minimum.
        min: Option<u64>,
        /// Maximum.
        max: Option<u64>,
        /// Context key.
        key: String,
    },
    /// The regex matches the text under `key`.
    Regex {
        /// The pattern.
        re: regex::Regex,
        /// Context key.
        key: String,
    },
    /// A yes/no question decided by a model (journaled by the engine).
    Ask {
        /// The question template.
        question: Template,
        /// Who answers; `None` = the default provider.
        agent: Option<Arc<Agent>>,
    },
    /// The opposite.
    Not(Box<Self>),
}

/// What a pure evaluation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Decided.
    Decided(bool),
    /// A model must answer this question (already rendered); `negate` flips its answer.
    NeedsModel {
        /// The rendered question.
        question: String,
        /// Whether to flip the answer.
        negate: bool,
    },
}

/// The prompt spes sends for an `ask` condition.
#[must_use]
pub fn ask_prompt(question: &str) -> String {
    format!("{question}\n\nAnswer with ONLY 'yes' or 'no'.")
}

/// Reads a yes/no answer the way the reference does ('yes' anywhere wins),
/// but on word boundaries so that "eyes" is not a yes.
#[must_use]
pub fn parse_yes_no(answer: &str) -> bool {
    answer
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| w == "yes" || w == "y" || w == "true")
}

fn text_of(ctx: &Context, locals: Option<&Context>, key: &str) -> Result<String, TemplateError> {
    let v = locals
        .and_then(|l| l.get(key))
        .or_else(|| ctx.get(key))
        .ok_or_else(|| TemplateError {
            message: format!("undefined variable `{key}`"),
            range: None,
            line: None,
            missing: vec![key.to_owned()],
        })?;
    Ok(match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Whether `word` occurs in `text` as whole words: the characters around
/// the occurrence are not letters or digits (both already lowercased).
#[must_use]
pub fn mentions_word(text: &str, word: &str) -> bool {
    if word.is_empty() {
        return false;
    }
    let is_word = |c: char| c.is_alphanumeric();
    text.match_indices(word).any(|(i, m)| {
        let before = text[..i].chars().next_back();
        let after = text[i + m.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

impl Condition {
    /// Evaluates without side effects; `ask` yields [`Outcome::NeedsModel`].
    pub fn evaluate(
        &self,
        ctx: &Context,
        locals: Option<&Context>,
    ) -> Result<Outcome, TemplateError> {
        Ok(match self {
            Self::Expr(e) => Outcome::Decided(e.is_true(ctx, locals)?),
            Self::Keyword {
                words,
                key,
                substring,
            } => {
                let t = text_of(ctx, locals, key)?.to_lowercase();
                Outcome::Decided(words.iter().any(|w| {
                    if *substring {
                        t.contains(w.as_str())
                    } else {
                        mentions_word(&t, w)
                    }
                }))
            }
            Self::Length { min, max, key } => {
                let n = text_of(ctx, locals, key)?.chars().count() as u64;
                Outcome::Decided(min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m))
            }
            Self::Regex { re, key } => Outcome::Decided(re.is_match(&text_of(ctx, locals, key)?)),
            Self::Ask { question, .. } => Outcome::NeedsModel {
                question: ask_prompt(&question.render(ctx, locals)?),
                negate: false,
            },
            Self::Not(inner) => match inner.evaluate(ctx, locals)? {
                Outcome::Decided(b) => Outcome::Decided(!b),
                Outcome::NeedsModel { question, negate } => Outcome::NeedsModel {
                    question,
                    negate: !negate,
                },
            },
        })
    }

    /// The agent that answers an `ask` (looking through `not`).
    #[must_use]
    pub fn ask_agent(&self) -> Option<&Arc<Agent>> {
        match self {
            Self::Ask { agent, .. } => agent.as_ref(),
            Self::Not(inner) => inner.ask_agent(),
            _ => None,
        }
    }

    /// A short description for diagrams and progress.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Expr(e) => e.source().to_owned(),
            Self::Keyword {
                words,
                key,
                substring,
            } => format!(
                "{key} {} {}",
                if *substring { "contains" } else { "mentions" },
                words.join("|")
            ),
            Self::Length { min, max, key } => format!(
                "len({key}) in {}..{}",
                min.map(|m| m.to_string()).unwrap_or_default(),
                max.map(|m| m.to_string()).unwrap_or_default()
            ),
            Self::Regex { re, key } => format!("{key} ~ /{}/", re.as_str()),
            Self::Ask { question, .. } => format!("ask: {}", question.source()),
            Self::Not(inner) => format!("not ({})", inner.describe()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pure_conditions() {
        let ctx = json!({"text": "The Login function throws"})
            .as_object()
            .unwrap()
            .clone();
        let kw = Condition::Keyword {
            words: vec!["login".into()],
            key: "text".into(),
            substring: false,
        };
        assert_eq!(kw.evaluate(&ctx, None).unwrap(), Outcome::Decided(true));
        let len = Condition::Length {
            min: Some(5),
            max: Some(10),
            key: "text".into(),
        };
        assert_eq!(len.evaluate(&ctx, None).unwrap(), Outcome::Decided(false));
        let re = Condition::Regex {
            re: regex::Regex::new("^The").unwrap(),
            key: "text".into(),
        };
        assert_eq!(
            Condition::Not(Box::new(re)).evaluate(&ctx, None).unwrap(),
            Outcome::Decided(false)
        );
        let missing = Condition::Keyword {
            words: vec![],
            key: "nope".into(),
            substring: false,
        };
        assert_eq!(
            missing.evaluate(&ctx, None).unwrap_err().missing,
            vec!["nope".to_owned()]
        );
    }

    #[test]
    fn keywords_match_whole_words_unless_substring_is_asked_for() {
        let ctx = json!({"text": "Please decode this; it's out of stock."})
            .as_object()
            .unwrap()
            .clone();
        let kw = |w: &str, substring| Condition::Keyword {
            words: vec![w.into()],
            key: "text".into(),
            substring,
        };
        let holds = |c: Condition| c.evaluate(&ctx, None).unwrap() == Outcome::Decided(true);
        assert!(
            !holds(kw("code", false)),
            "\"decode\" does not mention code"
        );
        assert!(holds(kw("code", true)));
        assert!(holds(kw("decode", false)));
        assert!(holds(kw("out of stock", false)));
        assert!(holds(kw("it", false)), "an apostrophe separates words");
        assert!(!holds(kw("stoc", false)));
        assert!(mentions_word("naïve café", "café"));
        assert!(!mentions_word("cafés", "café"));
    }

    #[test]
    fn yes_no_parsing() {
        assert!(parse_yes_no("Yes."));
        assert!(parse_yes_no("yes"));
        assert!(!parse_yes_no("No"));
        assert!(!parse_yes_no("my eyes"));
    }
}
