//! `kind: agent`: a model that calls tools, turn after turn, until it
//! answers. The validated form; the engine runs it (spes-engine `agent`).

use crate::tool::{ToolChoice, ToolSpec};
use crate::workflow::{HttpStep, LlmStep, SubWorkflow};

/// Model turns an agent takes unless it says otherwise.
pub const DEFAULT_MAX_TURNS: u32 = 10;

/// The most turns an agent may take.
pub const MAX_MAX_TURNS: u32 = 100;

/// An agent step.
#[derive(Debug, Clone)]
pub struct AgentStep {
    /// The model call of each turn: prompt (the first user message),
    /// agent components, provider and settings.
    pub llm: LlmStep,
    /// The tools it may call.
    pub tools: Vec<AgentTool>,
    /// Model turns at most; the last must answer without a tool call.
    pub max_turns: u32,
    /// How the model may use the tools (`None`: the provider's default, auto).
    pub tool_choice: Option<ToolChoice>,
    /// Tools (as named in `tools`) whose every call waits for a human.
    pub approve_tools: Vec<String>,
}

/// One tool of an agent.
#[derive(Debug, Clone)]
pub enum AgentTool {
    /// An HTTP request whose templates see the call's arguments as `args`.
    Http {
        /// What the model is told.
        spec: ToolSpec,
        /// The request.
        request: Box<HttpStep>,
    },
    /// A whole workflow: the call's arguments are its inputs, its result
    /// the tool's result.
    Workflow {
        /// What the model is told (its parameters are the workflow's inputs).
        spec: ToolSpec,
        /// The workflow.
        workflow: Box<SubWorkflow>,
    },
    /// A tool registered with the engine by name (a Rust function), or a
    /// tool source's (`SERVER.TOOL`).
    Registered(String),
}

impl AgentTool {
    /// The name the model calls it by.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Self::Http { spec, .. } | Self::Workflow { spec, .. } => &spec.name,
            Self::Registered(n) => n,
        }
    }
}

/// Whether `name` is a tool name both providers take: 1 to 64 letters,
/// digits, `_` or `-`.
#[must_use]
pub fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `name` can name a tool in `tools:`: a tool name, or
/// `SOURCE.TOOL` (an MCP server's tool), each part a tool name.
#[must_use]
pub fn valid_tool_ref(name: &str) -> bool {
    match name.split_once('.') {
        Some((source, tool)) => valid_tool_name(source) && valid_tool_name(tool),
        None => valid_tool_name(name),
    }
}

/// The JSON schema of a workflow's inputs, as tool parameters.
#[must_use]
pub fn inputs_schema(wf: &crate::workflow::Workflow) -> serde_json::Value {
    use crate::workflow::InputType;
    let mut props = serde_json::Map::new();
    let mut required = Vec::new();
    for i in &wf.inputs {
        let ty = match i.ty {
            InputType::String => "string",
            InputType::Integer => "integer",
            InputType::Number => "number",
            InputType::Boolean => "boolean",
            InputType::List => "array",
            InputType::Object => "object",
        };
        let mut p = serde_json::json!({ "type": ty });
        if let Some(d) = &i.description {
            p["description"] = serde_json::Value::String(d.clone());
        }
        props.insert(i.name.clone(), p);
        if i.required {
            required.push(serde_json::Value::String(i.name.clone()));
        }
    }
    serde_json::json!({ "type": "object", "properties": props, "required": required })
}
