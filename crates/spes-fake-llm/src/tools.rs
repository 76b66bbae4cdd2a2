//! The checks real servers make on tools and tool turns in a request,
//! answered with a 400 as they do: offered tools must be well formed, and
//! every tool call in the history must be answered by a result right
//! after it, and every result must answer a call of the turn before.

use serde_json::{Map, Value};

use crate::dialect::Dialect;

/// Why the request's tools or tool turns would be refused, if they would.
pub(crate) fn invalid(dialect: Dialect, body: &Map<String, Value>) -> Option<String> {
    let tools = body.get("tools").and_then(Value::as_array);
    if body.contains_key("tool_choice") && tools.is_none_or(Vec::is_empty) {
        return Some(match dialect {
            Dialect::OpenAi => "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.".to_owned(),
            Dialect::Anthropic => "tool_choice: tool_choice may only be specified while providing tools".to_owned(),
        });
    }
    for (i, t) in tools.into_iter().flatten().enumerate() {
        if let Some(why) = bad_tool(dialect, t) {
            return Some(format!("tools.{i}.{why}"));
        }
    }
    let messages = body.get("messages").and_then(Value::as_array)?;
    match dialect {
        Dialect::OpenAi => openai_turns(messages),
        Dialect::Anthropic => anthropic_turns(messages),
    }
}

fn bad_tool(dialect: Dialect, t: &Value) -> Option<&'static str> {
    match dialect {
        Dialect::OpenAi => {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Some("type: must be 'function'");
            }
            let Some(f) = t.get("function") else {
                return Some("function: Field required");
            };
            if !f.get("name").is_some_and(Value::is_string) {
                return Some("function.name: Field required");
            }
            None
        }
        Dialect::Anthropic => {
            if !t.get("name").is_some_and(Value::is_string) {
                return Some("name: Field required");
            }
            match t.get("input_schema") {
                None => Some("input_schema: Field required"),
                Some(s) if s.get("type").and_then(Value::as_str) != Some("object") => {
                    Some("input_schema.type: Input should be 'object'")
                }
                Some(_) => None,
            }
        }
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// OpenAI: an assistant message's `tool_calls` must be followed by one
/// `role: tool` message per call; a `tool` message must answer a call of
/// the assistant message before the run of `tool` messages it is in.
fn openai_turns(messages: &[Value]) -> Option<String> {
    let mut open: Vec<&str> = Vec::new();
    let mut in_tool_run = false;
    for (i, m) in messages.iter().enumerate() {
        let role = str_of(m, "role");
        if role == "tool" {
            let id = str_of(m, "tool_call_id");
            let Some(pos) = open.iter().position(|c| *c == id).filter(|_| in_tool_run) else {
                return Some(format!(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'. (messages.[{i}])"
                ));
            };
            open.remove(pos);
            continue;
        }
        if !open.is_empty() {
            return Some(format!(
                "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}",
                open.join(", ")
            ));
        }
        in_tool_run = false;
        if role == "assistant"
            && let Some(calls) = m.get("tool_calls").and_then(Value::as_array)
        {
            open = calls.iter().map(|c| str_of(c, "id")).collect();
            in_tool_run = true;
        }
    }
    None
}

fn blocks<'a>(m: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    m.get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |b| str_of(b, "type") == kind)
}

/// Anthropic: every `tool_use` block of an assistant message needs a
/// `tool_result` block in the next message, and every `tool_result`
/// block must answer a `tool_use` block of the message before.
fn anthropic_turns(messages: &[Value]) -> Option<String> {
    let mut previous_calls: Vec<&str> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        // (block position, id) of each result.
        let results: Vec<(usize, &str)> = m
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
            .filter(|(_, b)| str_of(b, "type") == "tool_result")
            .map(|(j, b)| (j, str_of(b, "tool_use_id")))
            .collect();
        let missing: Vec<&str> = previous_calls
            .iter()
            .copied()
            .filter(|c| !results.iter().any(|(_, r)| r == c))
            .collect();
        if !missing.is_empty() {
            return Some(format!(
                "messages.{}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
                i - 1,
                missing.join(", ")
            ));
        }
        if let Some((j, r)) = results.iter().find(|(_, r)| !previous_calls.contains(r)) {
            return Some(format!(
                "messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {r}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
            ));
        }
        previous_calls = if str_of(m, "role") == "assistant" {
            blocks(m, "tool_use").map(|b| str_of(b, "id")).collect()
        } else {
            Vec::new()
        };
    }
    if !previous_calls.is_empty() {
        // A request ending with the assistant's tool calls (a prefill):
        // the API refuses it the same way.
        return Some(format!(
            "messages.{}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
            messages.len() - 1,
            previous_calls.join(", ")
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(dialect: Dialect, body: &Value) -> Option<String> {
        invalid(dialect, body.as_object()?)
    }

    #[test]
    fn openai_tool_messages_must_answer_the_calls_before_them() {
        let call = json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "t", "arguments": "{}"}},
            {"id": "b", "type": "function", "function": {"name": "t", "arguments": "{}"}},
        ]});
        let ok = json!({"messages": [
            {"role": "user", "content": "q"}, call,
            {"role": "tool", "tool_call_id": "b", "content": "1"},
            {"role": "tool", "tool_call_id": "a", "content": "2"},
        ]});
        assert_eq!(check(Dialect::OpenAi, &ok), None);
        let unanswered = json!({"messages": [
            {"role": "user", "content": "q"}, call,
            {"role": "tool", "tool_call_id": "a", "content": "2"},
            {"role": "user", "content": "and?"},
        ]});
        let e = check(Dialect::OpenAi, &unanswered).unwrap_or_default();
        assert!(e.ends_with("did not have response messages: b"), "{e}");
        let stray = json!({"messages": [
            {"role": "user", "content": "q"},
            {"role": "tool", "tool_call_id": "a", "content": "2"},
        ]});
        let e = check(Dialect::OpenAi, &stray).unwrap_or_default();
        assert!(
            e.contains("must be a response to a preceeding message"),
            "{e}"
        );
    }

    #[test]
    fn anthropic_results_must_follow_their_calls() {
        let call = json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": "a", "name": "t", "input": {}},
        ]});
        let ok = json!({"messages": [
            {"role": "user", "content": "q"}, call,
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "content": "1"}]},
        ]});
        assert_eq!(check(Dialect::Anthropic, &ok), None);
        let missing = json!({"messages": [
            {"role": "user", "content": "q"}, call,
            {"role": "user", "content": "next"},
        ]});
        let e = check(Dialect::Anthropic, &missing).unwrap_or_default();
        assert!(
            e.starts_with("messages.1: `tool_use` ids were found"),
            "{e}"
        );
        let wrong = json!({"messages": [
            {"role": "user", "content": "q"}, call,
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "a", "content": "1"},
                {"type": "tool_result", "tool_use_id": "zz", "content": "1"},
            ]},
        ]});
        let e = check(Dialect::Anthropic, &wrong).unwrap_or_default();
        assert!(
            e.starts_with("messages.2.content.1: unexpected `tool_use_id`"),
            "{e}"
        );
    }

    #[test]
    fn tools_must_be_well_formed() {
        let e = check(
            Dialect::Anthropic,
            &json!({"messages": [], "tools": [{"name": "t", "input_schema": {"type": "string"}}]}),
        )
        .unwrap_or_default();
        assert_eq!(e, "tools.0.input_schema.type: Input should be 'object'");
        let e = check(
            Dialect::OpenAi,
            &json!({"messages": [], "tool_choice": "auto"}),
        )
        .unwrap_or_default();
        assert!(e.contains("only allowed when 'tools' are specified"), "{e}");
    }
}
