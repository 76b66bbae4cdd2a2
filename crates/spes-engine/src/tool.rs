//! Tools an `agent` step calls that are not declared in the workflow: Rust
//! functions registered with the engine ([`EngineBuilder::tool`]) and named
//! in `tools: [NAME]`.
//!
//! [`EngineBuilder::tool`]: crate::EngineBuilder::tool

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde_json::Value;
use spes_core::tool::ToolSpec;

/// A tool the model can call. Its result goes back to the model as text;
/// `Err` is a result too, marked as an error (the model may try again).
#[async_trait]
pub trait Tool: Send + Sync + fmt::Debug {
    /// Its name, description and argument schema.
    fn spec(&self) -> &ToolSpec;

    /// Runs one call.
    async fn call(&self, arguments: Value) -> Result<String, String>;
}

/// Where tools named in `tools:` but not registered one by one come from:
/// a source answers for the names it owns (an MCP server's tools are
/// `SERVER.TOOL`), starting whatever it needs on first use.
#[async_trait]
pub trait ToolSource: Send + Sync + fmt::Debug {
    /// The tool called `name` in a workflow, `Ok(None)` when this source
    /// does not own the name, `Err` (a message for the user) when it owns
    /// it but cannot provide it (a server that does not start, a tool it
    /// does not have).
    async fn tool(&self, name: &str) -> Result<Option<Arc<dyn Tool>>, String>;
}

/// The function a [`FnTool`] runs.
pub type ToolFn = Arc<dyn Fn(Value) -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// A tool made of a closure.
///
/// ```
/// use std::sync::Arc;
/// use spes_engine::tool::FnTool;
///
/// let add = FnTool::new(
///     "add",
///     "Adds two numbers",
///     serde_json::json!({
///         "type": "object",
///         "properties": { "a": { "type": "number" }, "b": { "type": "number" } },
///         "required": ["a", "b"]
///     }),
///     |args| Box::pin(async move {
///         let (a, b) = (args["a"].as_f64(), args["b"].as_f64());
///         match (a, b) {
///             (Some(a), Some(b)) => Ok((a + b).to_string()),
///             _ => Err("a and b must be numbers".to_owned()),
///         }
///     }),
/// );
/// let engine = spes_engine::Engine::builder().tool(Arc::new(add)).build();
/// # let _ = engine;
/// ```
pub struct FnTool {
    spec: ToolSpec,
    f: ToolFn,
}

impl fmt::Debug for FnTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnTool")
            .field("name", &self.spec.name)
            .finish_non_exhaustive()
    }
}

impl FnTool {
    /// A tool named `name` that runs `f` on each call's arguments.
    pub fn new<F>(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: Value,
        f: F,
    ) -> Self
    where
        F: Fn(Value) -> BoxFuture<'static, Result<String, String>> + Send + Sync + 'static,
    {
        Self {
            spec: ToolSpec::new(name, description, parameters),
            f: Arc::new(f),
        }
    }
}

#[async_trait]
impl Tool for FnTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, arguments: Value) -> Result<String, String> {
        (self.f)(arguments).await
    }
}
