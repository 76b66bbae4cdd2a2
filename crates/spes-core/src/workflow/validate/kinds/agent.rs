//! Validation of `agent` steps and their tools.

use std::collections::BTreeSet;

use serde_json::Value;

use super::http::{HttpParts, build_http};
use crate::tool::{ToolChoice, ToolSpec};
use crate::workflow::StepKind;
use crate::workflow::agent::{
    AgentStep, AgentTool, DEFAULT_MAX_TURNS, MAX_MAX_TURNS, valid_tool_name, valid_tool_ref,
};
use crate::workflow::kind::{Distribution, KindDef, PolicyScope};
use crate::workflow::spec::StepSpec;
use crate::workflow::validate::StepAt;
use crate::workflow::validate::{Known, Sp, Validator, span};

/// `agent`: a model that calls tools until it answers.
pub(crate) const AGENT: KindDef = KindDef {
    name: "agent",
    fields: &[
        "prompt",
        "agent",
        "task",
        "system",
        "provider",
        "model",
        "temperature",
        "max_tokens",
        "format",
        "schema",
        "repair",
        "tools",
        "max_turns",
        "tool_choice",
        "approve_tools",
    ],
    policies: PolicyScope::Composite,
    distribution: Distribution::Local,
    example: r#"{ name: s, kind: agent, prompt: "Look up {{ text }}", tools: [lookup] }"#,
    validate: validate_agent,
};

fn validate_agent(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    let what = at.what;
    let llm = v.llm(s, known, what, at.kind_at)?;
    let Some(list) = &s.tools else {
        v.err(
            "spes::workflow::missing_field",
            format!("{what}: an agent step needs `tools`"),
            at.kind_at,
            "list its tools: `tools: [{ http: { name, description, url, ... } }]`, or use `kind: llm`",
        );
        return None;
    };
    let tools_at: Sp = span(list);
    let mut tools = Vec::new();
    let mut names = BTreeSet::new();
    for t in &list.value {
        if let Some(w) = t
            .get("workflow")
            .filter(|_| t.as_object().is_some_and(|o| o.len() == 1))
        {
            let tool = workflow_tool(v, w, list, known, at)?;
            if !names.insert(tool.name().to_owned()) {
                v.err(
                    "spes::workflow::bad_tool",
                    format!("{what}: two tools are named `{}`", tool.name()),
                    tools_at,
                    "tool names are unique within an agent",
                );
                return None;
            }
            tools.push(tool);
            continue;
        }
        let tool = match tool(t) {
            Ok(tool) => tool,
            Err((message, hint)) => {
                v.err(
                    "spes::workflow::bad_tool",
                    format!("{what}: {message}"),
                    tools_at,
                    hint,
                );
                return None;
            }
        };
        if !names.insert(tool.name().to_owned()) {
            v.err(
                "spes::workflow::bad_tool",
                format!("{what}: two tools are named `{}`", tool.name()),
                tools_at,
                "tool names are unique within an agent",
            );
            return None;
        }
        if let AgentTool::Http { request, .. } = &tool {
            let reads: Vec<String> = request
                .templates()
                .iter()
                .flat_map(|t| t.reads().iter().cloned())
                .collect();
            v.check_reads(reads.iter(), tools_at, known, &["args"], what);
        }
        tools.push(tool);
    }
    let max_turns = match &s.max_turns {
        None => DEFAULT_MAX_TURNS,
        Some(m) if m.value == 0 || m.value > MAX_MAX_TURNS => {
            v.err(
                "spes::workflow::bad_count",
                format!("{what}: `max_turns` must be between 1 and {MAX_MAX_TURNS}"),
                span(m),
                format!("the default is {DEFAULT_MAX_TURNS}"),
            );
            return None;
        }
        Some(m) => m.value,
    };
    let tool_choice = match &s.tool_choice {
        None => None,
        Some(c) => {
            let choice = match &c.value {
                Value::String(x) if x == "auto" => Some(ToolChoice::Auto),
                Value::String(x) if x == "none" => Some(ToolChoice::None),
                Value::String(x) if x == "required" => Some(ToolChoice::Required),
                Value::Object(o) if o.len() == 1 => o
                    .get("tool")
                    .and_then(Value::as_str)
                    .filter(|n| names.contains(*n))
                    .map(|n| ToolChoice::Tool(n.to_owned())),
                _ => None,
            };
            if choice.is_none() {
                v.err(
                    "spes::workflow::bad_tool",
                    format!("{what}: `tool_choice` must be auto, none, required or {{ tool: NAME }} naming one of its tools"),
                    span(c),
                    format!(
                        "its tools: {}",
                        names.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                );
                return None;
            }
            choice
        }
    };
    let approve_tools = match &s.approve_tools {
        None => Vec::new(),
        Some(list) => {
            if let Some(unknown) = list.value.iter().find(|n| !names.contains(*n)) {
                v.err(
                    "spes::workflow::bad_tool",
                    format!(
                        "{what}: `approve_tools` names `{unknown}`, which is not one of its tools"
                    ),
                    span(list),
                    format!(
                        "its tools: {}",
                        names.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                );
                return None;
            }
            list.value.clone()
        }
    };
    Some(StepKind::Agent(Box::new(AgentStep {
        llm,
        tools,
        max_turns,
        tool_choice,
        approve_tools,
    })))
}

/// `{ workflow: { path, name?, description? } }`: the workflow file is
/// validated with the agent's (it is part of the run's pinned sources);
/// its inputs are the tool's parameters.
fn workflow_tool(
    v: &mut Validator<'_>,
    w: &Value,
    list: &serde_saphyr::Spanned<Vec<Value>>,
    known: &Known,
    at: &StepAt<'_>,
) -> Option<AgentTool> {
    let what = at.what;
    let tools_at: Sp = span(list);
    let fields = w.as_object().cloned().unwrap_or_default();
    if let Some(k) = fields
        .keys()
        .find(|k| !["path", "name", "description"].contains(&k.as_str()))
    {
        v.err(
            "spes::workflow::bad_tool",
            format!("{what}: a workflow tool does not take `{k}`"),
            tools_at,
            "a workflow tool takes: path, name, description",
        );
        return None;
    }
    let Some(path) = fields.get("path").and_then(Value::as_str) else {
        v.err(
            "spes::workflow::bad_tool",
            format!("{what}: a workflow tool needs `path`"),
            tools_at,
            "`{ workflow: { path: lookup.yaml, description: ... } }` (relative to this file)",
        );
        return None;
    };
    let spec = StepSpec {
        path: Some(serde_saphyr::Spanned::new(
            path.to_owned(),
            list.referenced,
            list.defined,
        )),
        ..StepSpec::default()
    };
    let sub = v.sub_workflow(&spec, known, at.path, at.kind_at, true)?;
    let name = fields.get("name").and_then(Value::as_str).map_or_else(
        || {
            sub.workflow
                .name
                .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
        },
        str::to_owned,
    );
    if !valid_tool_name(&name) {
        v.err(
            "spes::workflow::bad_tool",
            format!("{what}: `{name}` is not a tool name"),
            tools_at,
            "give the workflow tool a `name`: 1 to 64 letters, digits, `_` or `-`",
        );
        return None;
    }
    let Some(description) = fields
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| sub.workflow.description.clone())
    else {
        v.err(
            "spes::workflow::bad_tool",
            format!("{what}: workflow tool `{name}` needs a `description` (its workflow has none)"),
            tools_at,
            "the model reads it to decide when to call the tool",
        );
        return None;
    };
    let parameters = crate::workflow::agent::inputs_schema(&sub.workflow);
    Some(AgentTool::Workflow {
        spec: ToolSpec::new(name, description, parameters),
        workflow: Box::new(sub),
    })
}

/// One entry of `tools:`: a registered name, or `{ http: { ... } }`.
fn tool(t: &Value) -> Result<AgentTool, (String, String)> {
    let name_hint =
        "tool names are 1 to 64 letters, digits, `_` or `-` (an MCP server's: SERVER.TOOL)"
            .to_owned();
    match t {
        Value::String(name) if valid_tool_ref(name) => Ok(AgentTool::Registered(name.clone())),
        Value::String(name) => Err((format!("`{name}` is not a tool name"), name_hint)),
        Value::Object(o) if o.len() == 1 && o.get("http").is_some_and(Value::is_object) => {
            let h = o["http"].as_object().cloned().unwrap_or_default();
            const FIELDS: &[&str] = &[
                "name",
                "description",
                "parameters",
                "method",
                "url",
                "headers",
                "body",
                "expect",
                "response",
                "max_bytes",
            ];
            if let Some(k) = h.keys().find(|k| !FIELDS.contains(&k.as_str())) {
                return Err((
                    format!("an http tool does not take `{k}`"),
                    format!("an http tool takes: {}", FIELDS.join(", ")),
                ));
            }
            let name = h.get("name").and_then(Value::as_str).unwrap_or_default();
            if !valid_tool_name(name) {
                return Err((
                    format!("an http tool needs a `name` (found `{name}`)"),
                    name_hint,
                ));
            }
            let Some(description) = h.get("description").and_then(Value::as_str) else {
                return Err((
                    format!("http tool `{name}` needs a `description`"),
                    "the model reads it to decide when to call the tool".into(),
                ));
            };
            let parameters = match h.get("parameters") {
                None => serde_json::json!({ "type": "object", "properties": {} }),
                Some(p) if p.get("type").and_then(Value::as_str) == Some("object") => p.clone(),
                Some(_) => {
                    return Err((
                        format!("http tool `{name}`: `parameters` must be an object schema"),
                        "for example `parameters: { type: object, properties: { city: { type: string } }, required: [city] }`".into(),
                    ));
                }
            };
            let headers: Option<std::collections::BTreeMap<String, Value>> = match h.get("headers") {
                None => None,
                Some(Value::Object(m)) => Some(m.clone().into_iter().collect()),
                Some(_) => {
                    return Err((
                        format!("http tool `{name}`: `headers` must be a mapping"),
                        "`headers: { X-Key: { env: API_KEY } }`".into(),
                    ));
                }
            };
            let expect: Option<Vec<u16>> = match h.get("expect") {
                None => None,
                Some(e) => Some(serde_json::from_value(e.clone()).map_err(|_| {
                    (
                        format!("http tool `{name}`: `expect` must list HTTP statuses"),
                        "for example `expect: [200]`".to_owned(),
                    )
                })?),
            };
            let parts = HttpParts {
                method: h.get("method").and_then(Value::as_str),
                url: h.get("url").and_then(Value::as_str),
                headers: headers.as_ref(),
                body: h.get("body"),
                expect: expect.as_deref(),
                response: h.get("response").and_then(Value::as_str),
                max_bytes: h.get("max_bytes").and_then(Value::as_u64),
            };
            let request = build_http(&parts)
                .map_err(|p| (format!("http tool `{name}`: {}", p.message), p.hint))?;
            Ok(AgentTool::Http {
                spec: ToolSpec::new(name, description, parameters),
                request: Box::new(request),
            })
        }
        _ => Err((
            "a tool is a registered name or `{ http: { ... } }`".into(),
            "for example `tools: [lookup, { http: { name: weather, description: ..., url: \"https://api.example.com/{{ args.city }}\" } }]`".into(),
        )),
    }
}
