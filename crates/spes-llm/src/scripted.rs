//! The scripted provider: answers from a script, matched by step key or
//! prompt, with scripted delays and errors. Tests, dry runs and the examples
//! use it; it is a real provider, configured like any other:
//!
//! ```toml
//! [providers.test]
//! kind = "scripted"
//! script = "tests/answers.yaml"
//! ```
//!
//! ```yaml
//! - { step: plan, reply: "What is X?\nWhy Y?" }        # matches the end of the step key
//! - { prompt_contains: "Rate", reply: '{"score": 0.9}' }
//! - { step: "gather/*", error: rate_limited, times: 2 } # then the next match answers
//! - { step: slow, reply: "late", delay: 2s }
//! - { step: draft, replies: ["first", "second"] }     # successive calls, last repeats
//! - { step: agent, tool_calls: [{ name: weather, arguments: { city: Paris } }] }
//! - { step: chat, replies: [{ tool_calls: [{ name: now }] }, "It is noon."] }
//! - { default: echo }                                   # echo | error
//! ```
//!
//! Rules are tried in order; the first that matches and is not used up
//! answers. `times: N` uses a rule up N times.
//!
//! **Tool calls.** A rule's `tool_calls` (alone, or with `reply` for the
//! text that comes with them), or an item `{ reply: ..., tool_calls: [...]
//! }` of `replies`, answers with [`ChatResponse::tool_calls`] and
//! [`StopReason::ToolUse`] (unless the rule sets `stop_reason`). Each call
//! has a `name`, `arguments` (any YAML value, converted to JSON; default
//! `{}`) and an optional `id`; a call without one gets
//! `call_{rule}_{use}_{n}` (1-based: the rule's position in the script,
//! which use of the rule this is, the call's position in the answer), so
//! ids are unique across the calls of one provider and the same in every
//! run of the same script.
//!
//! ```
//! # tokio_test_block_on(async {
//! use spes_llm::scripted::ScriptedProvider;
//! use spes_llm::{CallContext, Provider};
//! use spes_core::message::ChatRequest;
//!
//! let p = ScriptedProvider::parse("test", "answers.yaml", "- { step: plan, reply: 'hello' }").unwrap();
//! let r = p.complete(&ChatRequest::user("hi"), &CallContext::for_step("plan")).await.unwrap();
//! assert_eq!(r.text, "hello");
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use spes_core::Diagnostic;
use spes_core::duration::parse_duration;
use spes_core::message::{ChatRequest, ChatResponse, StopReason, Usage};
use spes_core::tool::ToolCall;

use crate::error::{ProviderError, ProviderErrorKind};
use crate::provider::{CallContext, Provider};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    step: Option<String>,
    prompt_contains: Option<String>,
    prompt_matches: Option<String>,
    reply: Option<String>,
    replies: Option<Vec<ReplySpec>>,
    tool_calls: Option<Vec<ToolCallSpec>>,
    error: Option<String>,
    status: Option<u16>,
    retry_after: Option<String>,
    message: Option<String>,
    stop_reason: Option<String>,
    delay: Option<String>,
    times: Option<u32>,
    default: Option<String>,
}

/// One item of `replies`: a text, or a turn with tool calls.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ReplySpec {
    Text(String),
    Turn(TurnSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TurnSpec {
    reply: Option<String>,
    tool_calls: Vec<ToolCallSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolCallSpec {
    id: Option<String>,
    name: String,
    arguments: Option<serde_json::Value>,
}

impl From<ToolCallSpec> for ToolCall {
    fn from(c: ToolCallSpec) -> Self {
        Self::new(
            c.id.unwrap_or_default(),
            c.name,
            c.arguments
                .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new())),
        )
    }
}

/// A scripted answer with tool calls: the text that comes with them and
/// the calls. A call with an empty `id` gets one when answered (see the
/// module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Turn {
    /// The text.
    pub text: String,
    /// The tool calls.
    pub tool_calls: Vec<ToolCall>,
}

impl Turn {
    /// A turn of text only.
    #[must_use]
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            tool_calls: Vec::new(),
        }
    }

    /// A turn of tool calls, without text.
    #[must_use]
    pub fn tool_calls(calls: Vec<ToolCall>) -> Self {
        Self {
            text: String::new(),
            tool_calls: calls,
        }
    }
}

/// What a rule answers.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Text, the same every time.
    Reply(String),
    /// Successive texts; the last repeats.
    Replies(Vec<String>),
    /// Text and tool calls, the same every time.
    Turn(Turn),
    /// Successive turns; the last repeats.
    Turns(Vec<Turn>),
    /// The last user message, verbatim.
    Echo,
    /// An error of this kind.
    Error {
        /// Kind.
        kind: ProviderErrorKind,
        /// HTTP status to report.
        status: Option<u16>,
        /// `retry-after` to report.
        retry_after: Option<Duration>,
        /// Message.
        message: String,
    },
}

/// One rule of a script.
#[derive(Debug, Clone)]
pub struct Rule {
    step: Option<regex::Regex>,
    prompt_contains: Option<String>,
    prompt_matches: Option<regex::Regex>,
    answer: Answer,
    /// `None`: `tool_use` for an answer with tool calls, else `end_turn`.
    stop_reason: Option<StopReason>,
    delay: Option<Duration>,
    times: Option<u32>,
}

impl Rule {
    /// A rule answering `reply` for steps whose key ends with `step` (`*` matches one key segment).
    #[must_use]
    pub fn step(step: &str, answer: Answer) -> Self {
        Self {
            step: Some(step_regex(step)),
            prompt_contains: None,
            prompt_matches: None,
            answer,
            stop_reason: None,
            delay: None,
            times: None,
        }
    }

    /// A rule answering any request whose last user message contains `needle`.
    #[must_use]
    pub fn prompt_contains(needle: &str, answer: Answer) -> Self {
        Self {
            step: None,
            prompt_contains: Some(needle.to_owned()),
            ..Self::step("", answer)
        }
    }

    /// A rule answering every request.
    #[must_use]
    pub fn default(answer: Answer) -> Self {
        Self {
            step: None,
            ..Self::step("", answer)
        }
    }

    /// Uses the rule at most `n` times.
    #[must_use]
    pub fn with_times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// Answers with this stop reason (by default `tool_use` for an answer
    /// with tool calls, else `end_turn`).
    #[must_use]
    pub fn with_stop_reason(mut self, stop: StopReason) -> Self {
        self.stop_reason = Some(stop);
        self
    }

    /// Waits before answering.
    #[must_use]
    pub fn with_delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }

    fn matches(&self, key: &str, prompt: &str) -> bool {
        self.step.as_ref().is_none_or(|r| r.is_match(key))
            && self
                .prompt_contains
                .as_ref()
                .is_none_or(|n| prompt.contains(n.as_str()))
            && self
                .prompt_matches
                .as_ref()
                .is_none_or(|r| r.is_match(prompt))
    }
}

/// `gather/*` → `(^|/)gather/[^/]*$`.
fn step_regex(pattern: &str) -> regex::Regex {
    let escaped = regex::escape(pattern).replace("\\*", "[^/]*");
    let re = if pattern.is_empty() {
        ".*".to_owned()
    } else {
        format!("(^|/){escaped}$")
    };
    regex::Regex::new(&re)
        .unwrap_or_else(|_| regex::Regex::new("$^").unwrap_or_else(|_| unreachable_regex()))
}

#[allow(clippy::expect_used)]
fn unreachable_regex() -> regex::Regex {
    regex::Regex::new("a^").expect("a constant regex compiles")
}

#[derive(Debug, Default)]
struct State {
    used: Vec<u32>,
    calls: Vec<(String, ChatRequest)>,
}

/// A provider answering from rules.
#[derive(Debug)]
pub struct ScriptedProvider {
    name: String,
    rules: Vec<Rule>,
    state: Mutex<State>,
}

fn rule_error(file: &str, i: usize, msg: impl Into<String>) -> Diagnostic {
    Diagnostic::error(
        "spes::script::bad_rule",
        format!("rule {}: {}", i + 1, msg.into()),
    )
    .with_file(file)
    .with_hint("see FORMAT.md, section Scripted answers")
}

impl ScriptedProvider {
    /// A provider with these rules.
    #[must_use]
    pub fn new(name: impl Into<String>, rules: Vec<Rule>) -> Self {
        Self {
            name: name.into(),
            state: Mutex::new(State {
                used: vec![0; rules.len()],
                calls: Vec::new(),
            }),
            rules,
        }
    }

    /// Parses a script file's text.
    pub fn parse(name: &str, file: &str, text: &str) -> Result<Self, Diagnostic> {
        let specs: Vec<RuleSpec> = spes_core::yaml::parse_yaml(file, text, "spes::script::syntax")?;
        let mut rules = Vec::new();
        for (i, s) in specs.into_iter().enumerate() {
            rules.push(Self::rule(file, i, s)?);
        }
        Ok(Self::new(name, rules))
    }

    fn rule(file: &str, i: usize, s: RuleSpec) -> Result<Rule, Diagnostic> {
        let answers = [
            s.reply.is_some() || s.tool_calls.is_some(),
            s.replies.is_some(),
            s.error.is_some(),
            s.default.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if answers != 1 {
            return Err(rule_error(
                file,
                i,
                "give exactly one of reply, replies, error, default (tool_calls goes alone or with reply)",
            ));
        }
        let turn = |reply: Option<String>, calls: Vec<ToolCallSpec>| {
            if calls.is_empty() {
                return Err(rule_error(file, i, "`tool_calls` is empty"));
            }
            Ok(Turn {
                text: reply.unwrap_or_default(),
                tool_calls: calls.into_iter().map(ToolCall::from).collect(),
            })
        };
        let answer = if let Some(calls) = s.tool_calls {
            Answer::Turn(turn(s.reply, calls)?)
        } else if let Some(r) = s.reply {
            Answer::Reply(r)
        } else if let Some(r) = s.replies {
            if r.is_empty() {
                return Err(rule_error(file, i, "`replies` is empty"));
            }
            if r.iter().all(|x| matches!(x, ReplySpec::Text(_))) {
                Answer::Replies(
                    r.into_iter()
                        .filter_map(|x| match x {
                            ReplySpec::Text(t) => Some(t),
                            ReplySpec::Turn(_) => None,
                        })
                        .collect(),
                )
            } else {
                Answer::Turns(
                    r.into_iter()
                        .map(|x| match x {
                            ReplySpec::Text(t) => Ok(Turn::text(t)),
                            ReplySpec::Turn(t) => turn(t.reply, t.tool_calls),
                        })
                        .collect::<Result<_, _>>()?,
                )
            }
        } else if let Some(d) = &s.default {
            if s.step.is_some() || s.prompt_contains.is_some() || s.prompt_matches.is_some() {
                return Err(rule_error(
                    file,
                    i,
                    "`default` rules match everything; remove step/prompt_*",
                ));
            }
            match d.as_str() {
                "echo" => Answer::Echo,
                "error" => Answer::Error {
                    kind: ProviderErrorKind::Config,
                    status: None,
                    retry_after: None,
                    message: "the script's default is `error`".into(),
                },
                other => {
                    return Err(rule_error(
                        file,
                        i,
                        format!("default `{other}`: use echo or error"),
                    ));
                }
            }
        } else {
            let e = s.error.unwrap_or_default();
            let kind = ProviderErrorKind::parse(&e).ok_or_else(|| {
                let names: Vec<&str> = ProviderErrorKind::ALL.iter().map(|k| k.as_str()).collect();
                rule_error(
                    file,
                    i,
                    format!("unknown error `{e}`; use one of: {}", names.join(", ")),
                )
            })?;
            let retry_after = s
                .retry_after
                .as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(|m| rule_error(file, i, m))?;
            Answer::Error {
                kind,
                status: s.status,
                retry_after,
                message: s.message.unwrap_or_else(|| format!("scripted {e}")),
            }
        };
        let prompt_matches = s
            .prompt_matches
            .as_deref()
            .map(regex::Regex::new)
            .transpose()
            .map_err(|e| rule_error(file, i, format!("bad prompt_matches regex: {e}")))?;
        let delay = s
            .delay
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|m| rule_error(file, i, m))?;
        let stop_reason = match s.stop_reason.as_deref() {
            None => None,
            Some("end_turn") => Some(StopReason::EndTurn),
            Some("max_tokens") => Some(StopReason::MaxTokens),
            Some("stop_sequence") => Some(StopReason::StopSequence),
            Some("tool_use") => Some(StopReason::ToolUse),
            Some(other) => {
                return Err(rule_error(
                    file,
                    i,
                    format!(
                        "stop_reason `{other}`: use end_turn, max_tokens, stop_sequence or tool_use"
                    ),
                ));
            }
        };
        Ok(Rule {
            step: s.step.as_deref().map(step_regex),
            prompt_contains: s.prompt_contains,
            prompt_matches,
            answer,
            stop_reason,
            delay,
            times: s.times,
        })
    }

    /// Every call so far: (step key, request).
    #[must_use]
    pub fn calls(&self) -> Vec<(String, ChatRequest)> {
        self.state
            .lock()
            .map(|s| s.calls.clone())
            .unwrap_or_default()
    }

    /// Picks the answer for a call and counts it.
    fn pick(&self, key: &str, req: &ChatRequest) -> Option<Picked> {
        let prompt = req.last_user_text();
        let mut st = self.state.lock().ok()?;
        st.calls.push((key.to_owned(), req.clone()));
        for (i, r) in self.rules.iter().enumerate() {
            if r.times.is_some_and(|t| st.used[i] >= t) || !r.matches(key, prompt) {
                continue;
            }
            let n = st.used[i];
            st.used[i] += 1;
            return Some(Picked {
                answer: r.answer.clone(),
                stop_reason: r.stop_reason.clone(),
                delay: r.delay,
                rule: i,
                use_n: n,
            });
        }
        None
    }
}

/// The rule that answers a call, and which use of it this is (0-based).
struct Picked {
    answer: Answer,
    stop_reason: Option<StopReason>,
    delay: Option<Duration>,
    rule: usize,
    use_n: u32,
}

/// The `n`th (0-based) of successive answers; the last repeats.
fn nth<T: Clone + Default>(v: &[T], n: u32) -> T {
    let i = usize::try_from(n)
        .unwrap_or(usize::MAX)
        .min(v.len().saturating_sub(1));
    v.get(i).cloned().unwrap_or_default()
}

fn approx_tokens(s: &str) -> u64 {
    (s.len() as u64).div_ceil(4)
}

#[async_trait]
impl Provider for ScriptedProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn default_model(&self) -> Option<&str> {
        Some("scripted")
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        cx: &CallContext,
    ) -> Result<ChatResponse, ProviderError> {
        let start = Instant::now();
        let Some(picked) = self.pick(&cx.step_key, req) else {
            return Err(ProviderError::new(
                &self.name,
                ProviderErrorKind::Config,
                format!(
                    "no scripted answer for step `{}` (prompt starts {:?}); add a rule such as `- {{ step: {}, reply: \"...\" }}` or `- {{ default: echo }}`",
                    cx.step_key,
                    req.last_user_text().chars().take(60).collect::<String>(),
                    cx.step_key.rsplit('/').next().unwrap_or_default()
                ),
            ));
        };
        if let Some(d) = picked.delay {
            tokio::time::sleep(d).await;
        }
        let n = picked.use_n;
        let Turn {
            text,
            mut tool_calls,
        } = match picked.answer {
            Answer::Reply(t) => Turn::text(t),
            Answer::Replies(v) => Turn::text(nth(&v, n)),
            Answer::Turn(t) => t,
            Answer::Turns(v) => nth(&v, n),
            Answer::Echo => Turn::text(req.last_user_text()),
            Answer::Error {
                kind,
                status,
                retry_after,
                message,
            } => {
                let mut e =
                    ProviderError::new(&self.name, kind, message).with_retry_after(retry_after);
                e.status = status;
                return Err(e);
            }
        };
        for (k, c) in tool_calls.iter_mut().enumerate() {
            if c.id.is_empty() {
                c.id = format!("call_{}_{}_{}", picked.rule + 1, n + 1, k + 1);
            }
        }
        let stop_reason = picked.stop_reason.unwrap_or(if tool_calls.is_empty() {
            StopReason::EndTurn
        } else {
            StopReason::ToolUse
        });
        if let Some(sink) = &cx.on_delta
            && (!text.is_empty() || tool_calls.is_empty())
        {
            sink(&text);
        }
        let input: u64 = req.system.as_deref().map_or(0, approx_tokens)
            + req
                .messages
                .iter()
                .map(|m| approx_tokens(&m.content))
                .sum::<u64>();
        let output = approx_tokens(&text)
            + tool_calls
                .iter()
                .map(|c| approx_tokens(&c.name) + approx_tokens(&c.arguments.to_string()))
                .sum::<u64>();
        Ok(ChatResponse {
            usage: Usage {
                input_tokens: input,
                output_tokens: output,
                ..Usage::default()
            },
            text,
            stop_reason,
            model: Some(req.model.clone().unwrap_or_else(|| "scripted".into())),
            request_id: Some(format!(
                "scripted-{}",
                self.state.lock().map(|s| s.calls.len()).unwrap_or(0)
            )),
            latency_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            tool_calls,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn ask(p: &ScriptedProvider, key: &str, prompt: &str) -> Result<String, ProviderError> {
        p.complete(&ChatRequest::user(prompt), &CallContext::for_step(key))
            .await
            .map(|r| r.text)
    }

    #[tokio::test]
    async fn rules_match_in_order_with_times_and_globs() {
        let script = r#"
- { step: plan, reply: "P" }
- { step: "gather/*", error: rate_limited, times: 2, retry_after: 1s }
- { step: "gather/*", reply: "G" }
- { prompt_contains: "Rate", replies: ["0.5", "0.9"] }
- { default: echo }
"#;
        let p = ScriptedProvider::parse("t", "a.yaml", script).unwrap();
        assert_eq!(ask(&p, "x/plan", "..").await.unwrap(), "P");
        let e = ask(&p, "gather/q1", "..").await.unwrap_err();
        assert_eq!(e.kind, ProviderErrorKind::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(1)));
        assert!(ask(&p, "gather/q2", "..").await.is_err());
        assert_eq!(ask(&p, "gather/q3", "..").await.unwrap(), "G");
        assert_eq!(ask(&p, "judge", "Rate this").await.unwrap(), "0.5");
        assert_eq!(ask(&p, "judge", "Rate this").await.unwrap(), "0.9");
        assert_eq!(ask(&p, "judge", "Rate this").await.unwrap(), "0.9");
        assert_eq!(
            ask(&p, "other", "say {{ x }}").await.unwrap(),
            "say {{ x }}"
        );
        assert_eq!(p.calls().len(), 8);
    }

    #[tokio::test]
    async fn no_match_is_a_terminal_config_error_naming_the_step() {
        let p = ScriptedProvider::parse("t", "a.yaml", "- { step: plan, reply: x }").unwrap();
        let e = ask(&p, "summarize", "hello").await.unwrap_err();
        assert_eq!(e.kind, ProviderErrorKind::Config);
        assert!(
            e.message
                .contains("no scripted answer for step `summarize`"),
            "{}",
            e.message
        );
    }

    #[tokio::test]
    async fn tool_call_rules_answer_with_calls_and_deterministic_ids() {
        use serde_json::json;
        let script = r#"
- { step: agent, reply: "Checking.", tool_calls: [{ name: weather, arguments: { city: Paris, days: 2 } }, { id: mine, name: now }], times: 2 }
- { step: chat, replies: [{ tool_calls: [{ name: now }] }, "It is noon."] }
- { step: cut, tool_calls: [{ name: now }], stop_reason: max_tokens }
"#;
        let p = ScriptedProvider::parse("t", "a.yaml", script).unwrap();
        let cx = CallContext::for_step("agent");
        let r = p.complete(&ChatRequest::user("q"), &cx).await.unwrap();
        assert_eq!(r.text, "Checking.");
        assert_eq!(r.stop_reason, StopReason::ToolUse);
        assert_eq!(
            r.tool_calls,
            vec![
                ToolCall::new("call_1_1_1", "weather", json!({"city": "Paris", "days": 2})),
                ToolCall::new("mine", "now", json!({})),
            ]
        );
        // The second use of the rule gets new ids.
        let r = p.complete(&ChatRequest::user("q"), &cx).await.unwrap();
        assert_eq!(r.tool_calls[0].id, "call_1_2_1");
        // Successive replies mix tool turns and text.
        let cx = CallContext::for_step("chat");
        let r = p.complete(&ChatRequest::user("q"), &cx).await.unwrap();
        assert_eq!(
            (r.text.as_str(), r.stop_reason, r.tool_calls.len()),
            ("", StopReason::ToolUse, 1)
        );
        assert_eq!(r.tool_calls[0].id, "call_2_1_1");
        let r = p.complete(&ChatRequest::user("q"), &cx).await.unwrap();
        assert_eq!(
            (r.text.as_str(), r.stop_reason, r.tool_calls.len()),
            ("It is noon.", StopReason::EndTurn, 0)
        );
        // An explicit stop reason wins.
        let r = p
            .complete(&ChatRequest::user("q"), &CallContext::for_step("cut"))
            .await
            .unwrap();
        assert_eq!(r.stop_reason, StopReason::MaxTokens);
        assert_eq!(r.tool_calls.len(), 1);
    }

    #[tokio::test]
    async fn rust_built_turns_answer_too() {
        use serde_json::json;
        let p = ScriptedProvider::new(
            "t",
            vec![Rule::default(Answer::Turns(vec![
                Turn::tool_calls(vec![ToolCall::new("", "now", json!({}))]),
                Turn::text("done"),
            ]))],
        );
        let cx = CallContext::for_step("x");
        let r = p.complete(&ChatRequest::user("q"), &cx).await.unwrap();
        assert_eq!(
            r.tool_calls,
            vec![ToolCall::new("call_1_1_1", "now", json!({}))]
        );
        let r = p.complete(&ChatRequest::user("q"), &cx).await.unwrap();
        assert_eq!(
            (r.text.as_str(), r.stop_reason),
            ("done", StopReason::EndTurn)
        );
    }

    #[tokio::test]
    async fn the_format_md_example_script_parses_and_answers() {
        let doc = include_str!("../../../docs/FORMAT.md");
        let section = doc
            .split("## Scripted answers")
            .nth(1)
            .and_then(|s| s.split("```yaml\n").nth(1))
            .and_then(|s| s.split("```").next())
            .unwrap();
        let p = ScriptedProvider::parse("t", "FORMAT.md", section).unwrap();
        let r = p
            .complete(&ChatRequest::user("q"), &CallContext::for_step("agent"))
            .await
            .unwrap();
        assert_eq!(r.stop_reason, StopReason::ToolUse);
        assert_eq!(r.tool_calls[0].name, "weather");
        assert_eq!(
            r.tool_calls[0].arguments,
            serde_json::json!({"city": "Paris"})
        );
        assert_eq!(r.tool_calls[0].id, "call_5_1_1");
    }

    #[test]
    fn bad_tool_call_rules_are_explained() {
        let e =
            ScriptedProvider::parse("t", "a.yaml", "- { step: x, tool_calls: [] }").unwrap_err();
        assert!(e.message.contains("`tool_calls` is empty"), "{}", e.message);
        let e = ScriptedProvider::parse(
            "t",
            "a.yaml",
            "- { step: x, error: timeout, tool_calls: [{ name: t }] }",
        )
        .unwrap_err();
        assert!(e.message.contains("give exactly one of"), "{}", e.message);
        let e = ScriptedProvider::parse(
            "t",
            "a.yaml",
            "- { step: x, tool_calls: [{ name: t, colour: red }] }",
        )
        .unwrap_err();
        assert_eq!(e.code, "spes::yaml::unknown_field");
    }

    #[test]
    fn bad_scripts_are_explained() {
        let e = ScriptedProvider::parse("t", "a.yaml", "- { step: x }").unwrap_err();
        assert_eq!(
            e.render_plain(),
            "a.yaml: error[spes::script::bad_rule]: rule 1: give exactly one of reply, replies, error, default (tool_calls goes alone or with reply)\n  hint: see FORMAT.md, section Scripted answers"
        );
        let e = ScriptedProvider::parse("t", "a.yaml", "- { step: x, error: kaboom }").unwrap_err();
        assert!(e.message.contains("unknown error `kaboom`"));
        let e = ScriptedProvider::parse("t", "a.yaml", "- { step: x, reply: y, colour: red }")
            .unwrap_err();
        assert_eq!(e.code, "spes::yaml::unknown_field");
        assert_eq!(e.line_col, Some((1, 24)));
    }
}
