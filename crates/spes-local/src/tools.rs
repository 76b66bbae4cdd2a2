//! Tool calling on the local model: the offered tools are described in the
//! system text, and the answer is constrained by a grammar (llama.cpp's
//! JSON-schema converter) to one JSON object: `{"tool": NAME, "arguments":
//! {...}}` with that tool's argument schema, or `{"answer": TEXT}` when the
//! model may answer without a tool. Tool turns of the conversation are
//! written into the chat as text.

use serde_json::{Value, json};
use spes_core::message::{ChatRequest, Message};
use spes_core::tool::{ToolCall, ToolChoice, ToolSpec};

/// Whether the request offers tools the model may call.
pub(crate) fn offers_tools(req: &ChatRequest) -> bool {
    !req.tools.is_empty() && req.tool_choice != Some(ToolChoice::None)
}

/// The tools the answer may call (one when the choice names it).
fn callable(req: &ChatRequest) -> Vec<&ToolSpec> {
    match &req.tool_choice {
        Some(ToolChoice::Tool(name)) => req.tools.iter().filter(|t| &t.name == name).collect(),
        Some(ToolChoice::None) => Vec::new(),
        _ => req.tools.iter().collect(),
    }
}

/// The JSON schema of a tool-using answer: one alternative per callable
/// tool, plus `{"answer": TEXT}` unless a tool call is required.
pub(crate) fn answer_schema(req: &ChatRequest) -> Value {
    let mut alternatives: Vec<Value> = callable(req)
        .iter()
        .map(|t| {
            json!({
                "type": "object",
                "properties": {
                    "tool": { "const": t.name },
                    "arguments": t.parameters,
                },
                "required": ["tool", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    let required = matches!(
        req.tool_choice,
        Some(ToolChoice::Required | ToolChoice::Tool(_))
    );
    if !required || alternatives.is_empty() {
        alternatives.push(json!({
            "type": "object",
            "properties": { "answer": { "type": "string" } },
            "required": ["answer"],
            "additionalProperties": false,
        }));
    }
    json!({ "anyOf": alternatives })
}

/// The request as the local model sees it: the tools described after the
/// system text, tool calls and results written as chat text.
pub(crate) fn as_chat(req: &ChatRequest) -> ChatRequest {
    let mut out = req.clone();
    let mut lines = vec![
        "You can call tools. Answer with one JSON object: {\"tool\": NAME, \"arguments\": {...}} to call a tool, or {\"answer\": \"...\"} to answer.".to_owned(),
        "Tools:".to_owned(),
    ];
    for t in callable(req) {
        lines.push(format!(
            "- {}: {} Arguments (JSON schema): {}",
            t.name, t.description, t.parameters
        ));
    }
    let tools = lines.join("\n");
    out.system = Some(match &req.system {
        Some(s) => format!("{s}\n\n{tools}"),
        None => tools,
    });
    out.messages = req.messages.iter().map(chat_message).collect();
    out.tools = Vec::new();
    out.tool_choice = None;
    out
}

/// A message with its tool turns written as text.
pub(crate) fn chat_message(m: &Message) -> Message {
    let mut text = m.content.clone();
    for c in &m.tool_calls {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&json!({ "tool": c.name, "arguments": c.arguments }).to_string());
    }
    for r in &m.tool_results {
        if !text.is_empty() {
            text.push('\n');
        }
        let what = if r.is_error { "error" } else { "result" };
        text.push_str(&format!("Tool {what} ({}): {}", r.call_id, r.content));
    }
    Message {
        role: m.role,
        content: text,
        ..Message::default()
    }
}

/// Reads a constrained answer: `(text, calls)`. `n` numbers the calls'
/// ids (`call_local_N`). An answer the grammar allowed but that does not
/// read (cut by `max_tokens`) is `Err`.
pub(crate) fn read_answer(text: &str, n: u64) -> Result<(String, Vec<ToolCall>), String> {
    let v: Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("the answer is not the tool-call JSON asked for ({e})"))?;
    if let Some(name) = v.get("tool").and_then(Value::as_str) {
        let arguments = v.get("arguments").cloned().unwrap_or_else(|| json!({}));
        return Ok((
            String::new(),
            vec![ToolCall::new(format!("call_local_{n}"), name, arguments)],
        ));
    }
    match v.get("answer").and_then(Value::as_str) {
        Some(a) => Ok((a.to_owned(), Vec::new())),
        None => Err("the answer names neither a tool nor an answer".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spes_core::tool::ToolResult;

    fn req(choice: Option<ToolChoice>) -> ChatRequest {
        ChatRequest {
            tools: vec![
                ToolSpec::new(
                    "weather",
                    "The weather",
                    json!({ "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] }),
                ),
                ToolSpec::new(
                    "clock",
                    "The time",
                    json!({ "type": "object", "properties": {} }),
                ),
            ],
            tool_choice: choice,
            ..ChatRequest::user("Weather in Paris?")
        }
    }

    #[test]
    fn the_schema_offers_each_tool_and_an_answer_unless_a_call_is_required() {
        let auto = answer_schema(&req(None));
        assert_eq!(auto["anyOf"].as_array().unwrap().len(), 3);
        assert_eq!(auto["anyOf"][0]["properties"]["tool"]["const"], "weather");
        assert_eq!(auto["anyOf"][2]["required"], json!(["answer"]));
        let required = answer_schema(&req(Some(ToolChoice::Required)));
        assert_eq!(required["anyOf"].as_array().unwrap().len(), 2);
        let named = answer_schema(&req(Some(ToolChoice::Tool("clock".into()))));
        assert_eq!(named["anyOf"].as_array().unwrap().len(), 1);
        assert_eq!(named["anyOf"][0]["properties"]["tool"]["const"], "clock");
        assert!(!offers_tools(&req(Some(ToolChoice::None))));
    }

    #[test]
    fn tool_turns_become_chat_text_and_answers_read_back() {
        let mut r = req(None);
        r.messages.push(Message::assistant_tool_calls(
            "",
            vec![ToolCall::new("c1", "weather", json!({ "city": "Paris" }))],
        ));
        r.messages
            .push(Message::tool_results(vec![ToolResult::ok("c1", "sunny")]));
        let chat = as_chat(&r);
        assert!(chat.tools.is_empty());
        assert!(
            chat.system
                .as_deref()
                .unwrap()
                .contains("- weather: The weather")
        );
        assert_eq!(
            chat.messages[1].content,
            r#"{"tool":"weather","arguments":{"city":"Paris"}}"#
        );
        assert_eq!(chat.messages[2].content, "Tool result (c1): sunny");
        let (text, calls) =
            read_answer(r#"{"tool":"weather","arguments":{"city":"Rome"}}"#, 3).unwrap();
        assert_eq!((text.as_str(), calls[0].id.as_str()), ("", "call_local_3"));
        assert_eq!(calls[0].arguments, json!({ "city": "Rome" }));
        let (text, calls) = read_answer(r#"{"answer":"Sunny."}"#, 4).unwrap();
        assert_eq!((text.as_str(), calls.len()), ("Sunny.", 0));
        assert!(read_answer(r#"{"answer": "cut"#, 5).is_err());
    }
}
