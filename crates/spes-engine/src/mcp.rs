//! MCP servers as a [`ToolSource`]: `tools: [SERVER.TOOL]` in an `agent`
//! step names the tool `TOOL` of the configured server `SERVER`, reached
//! through the official Rust SDK (`rmcp`).
//!
//! - **Lazy, once per process.** A server is started (or, over HTTP,
//!   connected to) on the first lookup of one of its tools, and its
//!   `tools/list` is read then and kept. Concurrent first uses share one
//!   start. A start that fails is an error for that lookup; the next lookup
//!   tries again.
//! - **stdio servers** are spawned directly (never through a shell), with
//!   an empty environment plus the variables the configuration names
//!   ([`McpServerConfig::stdio`]), their stdout as the protocol channel and
//!   their stderr forwarded line by line to `tracing` (target `spes::mcp`,
//!   field `server`), never to spes's stdout. The child is killed when its
//!   handle is dropped, so none outlives the process.
//! - **HTTP servers** (`url`) are reached over streamable HTTP with the
//!   workspace's reqwest.
//! - **Results.** A call's text content parts, joined with newlines; other
//!   content parts (images, resources) as their JSON; an empty content with
//!   structured content as that JSON. `isError: true` is an `Err` (an error
//!   result for the model). Cut at [`MAX_RESULT_BYTES`].
//! - **Shutdown.** [`McpSource::shutdown`] closes every started server
//!   (stdio: stdin closed, then up to 3 s to exit, then killed).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ContentBlock,
    Implementation,
};
use rmcp::service::{Peer, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ServiceError, ServiceExt};
use serde_json::Value;
use spes_core::tool::ToolSpec;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use crate::tool::{Tool, ToolSource};

/// A tool result longer than this (bytes) is cut, with a note.
pub const MAX_RESULT_BYTES: usize = 1 << 20;
/// A message from a server larger than this (bytes: a stdio line, an HTTP
/// JSON body or stream event) is not accepted by the SDK: a result over
/// [`MAX_RESULT_BYTES`] is cut anyway. (A stdio line over it is dropped, so
/// the call it answered waits for the step's timeout.)
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// How long a server may take to start and answer `initialize` and
/// `tools/list`, unless [`McpServerConfig::with_start_timeout`] says otherwise.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Stderr lines of a stdio server kept to explain a failed start.
const STDERR_KEPT: usize = 20;
/// A longer stderr line is cut (the rest of it is dropped).
const STDERR_LINE_MAX: usize = 4096;
/// How long a stdio server has to exit after its stdin closes.
const EXIT_GRACE: Duration = Duration::from_secs(3);

/// One MCP server: its name (the `SERVER` of `SERVER.TOOL`) and how to
/// reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServerConfig {
    /// The name tools are prefixed with in workflows.
    pub name: String,
    /// How the server is reached.
    pub transport: McpTransport,
    /// How long starting it (spawn or connect, `initialize`, `tools/list`)
    /// may take.
    pub start_timeout: Duration,
}

/// How an MCP server is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum McpTransport {
    /// A child process speaking MCP on its stdin and stdout.
    Stdio {
        /// The program: a path, or a name looked up on spes's own `PATH`
        /// when the server starts.
        command: String,
        /// Its arguments, passed as they are (no shell).
        args: Vec<String>,
        /// Names of variables passed from spes's environment; the child
        /// gets these (those that are set) and nothing else, not even
        /// `PATH` unless it is named.
        env: Vec<String>,
        /// Its working directory (default: spes's).
        cwd: Option<PathBuf>,
    },
    /// A server reached over streamable HTTP at this URL.
    Http {
        /// The MCP endpoint, e.g. `http://127.0.0.1:3001/mcp`.
        url: String,
    },
}

impl McpServerConfig {
    /// A server spawned as `command args...` with the variables named in
    /// `env` (and only those) passed from this process's environment.
    pub fn stdio(
        name: impl Into<String>,
        command: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
        env: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            name: name.into(),
            transport: McpTransport::Stdio {
                command: command.into(),
                args: args.into_iter().map(Into::into).collect(),
                env: env.into_iter().map(Into::into).collect(),
                cwd: None,
            },
            start_timeout: DEFAULT_START_TIMEOUT,
        }
    }

    /// A server reached over streamable HTTP at `url`.
    pub fn http(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            transport: McpTransport::Http { url: url.into() },
            start_timeout: DEFAULT_START_TIMEOUT,
        }
    }

    /// The working directory of a stdio server (ignored over HTTP).
    #[must_use]
    pub fn with_cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        if let McpTransport::Stdio { cwd, .. } = &mut self.transport {
            *cwd = Some(dir.into());
        }
        self
    }

    /// How long starting the server may take.
    #[must_use]
    pub fn with_start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// What the server is, for messages: its command line or its URL.
    fn describe(&self) -> String {
        match &self.transport {
            McpTransport::Stdio { command, args, .. } => {
                let mut s = format!("`{command}");
                for a in args {
                    s.push(' ');
                    s.push_str(a);
                }
                s.push('`');
                s
            }
            McpTransport::Http { url } => format!("`{url}`"),
        }
    }
}

/// Tools of MCP servers, by `SERVER.TOOL`; give it to
/// [`EngineBuilder::tool_source`](crate::EngineBuilder::tool_source).
///
/// ```no_run
/// # async fn f() -> Result<(), String> {
/// use std::sync::Arc;
/// use spes_engine::mcp::{McpServerConfig, McpSource};
///
/// let mcp = Arc::new(McpSource::new([McpServerConfig::stdio(
///     "time",
///     "mcp-server-time",
///     Vec::<String>::new(),
///     ["TZ"],
/// )])?);
/// let engine = spes_engine::Engine::builder().tool_source(mcp.clone()).build();
/// // ... run workflows that name `time.get_current_time` ...
/// # let _ = engine;
/// mcp.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub struct McpSource {
    servers: BTreeMap<String, Server>,
}

impl fmt::Debug for McpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpSource")
            .field("servers", &self.servers.keys().collect::<Vec<_>>())
            .finish()
    }
}

struct Server {
    config: McpServerConfig,
    conn: OnceCell<Arc<Conn>>,
    closed: AtomicBool,
}

/// A started server.
struct Conn {
    /// Its tools as `tools/list` gave them, in its order.
    tools: Vec<Arc<McpTool>>,
    service: Mutex<Option<RunningService<RoleClient, ClientConfig>>>,
    child: Mutex<Option<Child>>,
    stderr: Option<StderrTask>,
}

struct StderrTask {
    first: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl McpSource {
    /// A source over these servers; nothing is started yet. `Err` when two
    /// share a name or a name is not usable in `SERVER.TOOL`.
    pub fn new(servers: impl IntoIterator<Item = McpServerConfig>) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for config in servers {
            if !spes_core::workflow::agent::valid_tool_name(&config.name) {
                return Err(format!(
                    "MCP server name `{}` must be 1 to 64 letters, digits, `_` or `-`",
                    config.name
                ));
            }
            let name = config.name.clone();
            let server = Server {
                config,
                conn: OnceCell::new(),
                closed: AtomicBool::new(false),
            };
            if map.insert(name.clone(), server).is_some() {
                return Err(format!("two MCP servers are named `{name}`"));
            }
        }
        Ok(Self { servers: map })
    }

    /// The configured servers' names.
    pub fn server_names(&self) -> impl Iterator<Item = &str> {
        self.servers.keys().map(String::as_str)
    }

    /// Every tool of every server, starting the servers not yet started:
    /// `(server, spec)` in server-name order, each server's tools in its
    /// order. The first server that fails to start is the error.
    pub async fn list(&self) -> Result<Vec<(String, ToolSpec)>, String> {
        let mut out = Vec::new();
        for (name, server) in &self.servers {
            let conn = server.conn().await?;
            out.extend(conn.tools.iter().map(|t| (name.clone(), t.spec.clone())));
        }
        Ok(out)
    }

    /// Stops every started server: the session is closed (stdio: stdin
    /// closed, up to 3 s to exit, then killed). Later lookups fail.
    pub async fn shutdown(&self) {
        for server in self.servers.values() {
            server.closed.store(true, Ordering::SeqCst);
            if let Some(conn) = server.conn.get() {
                conn.close(&server.config.name).await;
            }
        }
    }
}

#[async_trait]
impl ToolSource for McpSource {
    async fn tool(&self, name: &str) -> Result<Option<Arc<dyn Tool>>, String> {
        let Some((server_name, tool_name)) = name.split_once('.') else {
            return Ok(None);
        };
        let Some(server) = self.servers.get(server_name) else {
            return Ok(None);
        };
        let conn = server.conn().await?;
        match conn.tools.iter().find(|t| t.tool == tool_name) {
            Some(t) => Ok(Some(t.clone() as Arc<dyn Tool>)),
            None => Err(format!(
                "MCP server `{server_name}` has no tool `{tool_name}` (it has: {})",
                if conn.tools.is_empty() {
                    "none".to_owned()
                } else {
                    conn.tools
                        .iter()
                        .map(|t| t.tool.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )),
        }
    }
}

impl Server {
    async fn conn(&self) -> Result<Arc<Conn>, String> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(format!("MCP server `{}` was shut down", self.config.name));
        }
        self.conn
            .get_or_try_init(|| async {
                let conn = Conn::start(&self.config).await?;
                Ok::<_, String>(Arc::new(conn))
            })
            .await
            .cloned()
    }
}

/// `initialize` then `tools/list` over `transport`, within `timeout`.
async fn handshake<T, E, A>(
    client_info: ClientConfig,
    transport: T,
    timeout: Duration,
) -> Result<
    (
        RunningService<RoleClient, ClientConfig>,
        Vec<rmcp::model::Tool>,
    ),
    String,
>
where
    T: rmcp::transport::IntoTransport<RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::time::timeout(timeout, async {
        let service = client_info
            .serve(transport)
            .await
            .map_err(|e| e.to_string())?;
        let tools = service
            .peer()
            .list_all_tools()
            .await
            .map_err(|e| format!("tools/list failed: {e}"))?;
        Ok::<_, String>((service, tools))
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {} s", timeout.as_secs_f64())))
}

impl Conn {
    async fn start(config: &McpServerConfig) -> Result<Self, String> {
        let name = &config.name;
        let client_info = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("spes", env!("CARGO_PKG_VERSION")),
        );
        match &config.transport {
            McpTransport::Stdio {
                command,
                args,
                env,
                cwd,
            } => {
                let program = resolve_program(command).ok_or_else(|| {
                    format!(
                        "MCP server `{name}`: command `{command}` not found (not a file, and not on PATH)"
                    )
                })?;
                let mut cmd = Command::new(&program);
                cmd.args(args)
                    .env_clear()
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true);
                for var in env {
                    if let Some(value) = std::env::var_os(var) {
                        cmd.env(var, value);
                    }
                }
                if let Some(dir) = cwd {
                    cmd.current_dir(dir);
                }
                let mut child = cmd.spawn().map_err(|e| {
                    format!(
                        "MCP server `{name}`: {} could not be started: {e}",
                        config.describe()
                    )
                })?;
                let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                    return Err(format!("MCP server `{name}`: no pipes to the child"));
                };
                let stderr = child
                    .stderr
                    .take()
                    .map(|err| StderrTask::spawn(name.clone(), err));
                let started = handshake(
                    client_info,
                    AsyncRwTransport::new_client(stdout, stdin)
                        .with_max_line_length(MAX_MESSAGE_BYTES),
                    config.start_timeout,
                )
                .await;
                match started {
                    Ok((service, tools)) => {
                        Ok(Self::new(name, service, &tools, Some(child), stderr))
                    }
                    Err(why) => {
                        let _ = child.start_kill();
                        let _ = tokio::time::timeout(EXIT_GRACE, child.wait()).await;
                        let lines = match stderr {
                            Some(s) => s.finish().await,
                            None => Vec::new(),
                        };
                        let mut msg = format!(
                            "MCP server `{name}` ({}) did not start: {why}",
                            config.describe()
                        );
                        if lines.is_empty() {
                            msg.push_str(" (it wrote nothing to stderr)");
                        } else {
                            msg.push_str("; its stderr began:\n");
                            msg.push_str(&lines.join("\n"));
                        }
                        Err(msg)
                    }
                }
            }
            McpTransport::Http { url } => {
                let mut tcfg = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                tcfg.max_json_response_size = MAX_MESSAGE_BYTES;
                tcfg.max_sse_event_size = MAX_MESSAGE_BYTES;
                let transport = StreamableHttpClientTransport::with_client(
                    reqwest::Client::builder()
                        .redirect(reqwest::redirect::Policy::none())
                        .build()
                        .map_err(|e| format!("MCP server `{name}`: {e}"))?,
                    tcfg,
                );
                let started = handshake(client_info, transport, config.start_timeout).await;
                let (service, tools) = started.map_err(|why| {
                    format!(
                        "MCP server `{name}` ({}) did not start: {why}",
                        config.describe()
                    )
                })?;
                Ok(Self::new(name, service, &tools, None, None))
            }
        }
    }

    fn new(
        server: &str,
        service: RunningService<RoleClient, ClientConfig>,
        tools: &[rmcp::model::Tool],
        child: Option<Child>,
        stderr: Option<StderrTask>,
    ) -> Self {
        let peer = service.peer().clone();
        let tools = tools
            .iter()
            .map(|t| {
                Arc::new(McpTool {
                    server: server.to_owned(),
                    tool: t.name.to_string(),
                    spec: ToolSpec::new(
                        t.name.to_string(),
                        t.description.as_deref().unwrap_or_default(),
                        Value::Object((*t.input_schema).clone()),
                    ),
                    peer: peer.clone(),
                })
            })
            .collect();
        Self {
            tools,
            service: Mutex::new(Some(service)),
            child: Mutex::new(child),
            stderr,
        }
    }

    async fn close(&self, name: &str) {
        let service = self.service.lock().map(|mut s| s.take()).ok().flatten();
        if let Some(service) = service {
            // Cancelling drops the transport: a stdio child's stdin closes.
            if let Err(e) = service.cancel().await {
                tracing::debug!(target: "spes::mcp", server = name, "closing the session: {e}");
            }
        }
        let child = self.child.lock().map(|mut c| c.take()).ok().flatten();
        if let Some(mut child) = child {
            match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
                Ok(Ok(status)) => {
                    tracing::debug!(target: "spes::mcp", server = name, "exited: {status}");
                }
                _ => {
                    tracing::debug!(target: "spes::mcp", server = name, "killed");
                    let _ = child.kill().await;
                }
            }
        }
        if let Some(stderr) = &self.stderr {
            stderr.task.abort();
        }
    }
}

impl StderrTask {
    /// Forwards each line of `err` to tracing, keeping the first ones.
    fn spawn(server: String, err: impl AsyncRead + Unpin + Send + 'static) -> Self {
        let first = Arc::new(Mutex::new(Vec::new()));
        let keep = first.clone();
        let task = tokio::spawn(async move {
            let mut reader = BufReader::new(err);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match read_line_capped(&mut reader, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\r', '\n']);
                tracing::info!(target: "spes::mcp", server = %server, "{line}");
                if let Ok(mut kept) = keep.lock()
                    && kept.len() < STDERR_KEPT
                {
                    kept.push(line.to_owned());
                }
            }
        });
        Self { first, task }
    }

    /// The first lines, once the stream ended (or after a second).
    async fn finish(self) -> Vec<String> {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.task).await;
        self.first.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Reads one line into `buf`, keeping at most [`STDERR_LINE_MAX`] bytes of
/// it (the rest is read and dropped). Returns the bytes read, 0 at EOF.
async fn read_line_capped<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(total);
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = STDERR_LINE_MAX.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        reader.consume(take);
        total += take;
        if done {
            return Ok(total);
        }
    }
}

/// `command` as a path to run: as given when it has a `/`, else the first
/// executable file of that name on this process's `PATH`.
fn resolve_program(command: &str) -> Option<PathBuf> {
    if command.contains('/') {
        return Some(PathBuf::from(command));
    }
    if command.is_empty() {
        return None;
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(command))
        .find(|p| is_executable(p))
}

fn is_executable(p: &std::path::Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

/// One tool of an MCP server. Its [`ToolSpec`] name (what the model calls)
/// is the server's tool name, without the `SERVER.` prefix.
pub struct McpTool {
    server: String,
    tool: String,
    spec: ToolSpec,
    peer: Peer<RoleClient>,
}

impl fmt::Debug for McpTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpTool")
            .field("server", &self.server)
            .field("tool", &self.tool)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Tool for McpTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, arguments: Value) -> Result<String, String> {
        let arguments = match arguments {
            Value::Object(map) => Some(map),
            Value::Null => None,
            other => {
                return Err(format!("the arguments must be a JSON object, not {other}"));
            }
        };
        let mut params = CallToolRequestParams::new(self.tool.clone());
        params.arguments = arguments;
        match self.peer.call_tool(params).await {
            Ok(result) => result_text(&result),
            Err(ServiceError::McpError(e)) => Err(capped(format!(
                "MCP server `{}` refused the call: {}",
                self.server, e.message
            ))),
            Err(e) => Err(format!(
                "MCP server `{}` did not answer the call: {e}",
                self.server
            )),
        }
    }
}

/// A call result as the text the model sees (see the module doc).
fn result_text(result: &CallToolResult) -> Result<String, String> {
    let text = if result.content.is_empty() {
        match &result.structured_content {
            Some(v) => v.to_string(),
            None => String::new(),
        }
    } else {
        result
            .content
            .iter()
            .map(|c| match c {
                ContentBlock::Text(t) => t.text.clone(),
                other => serde_json::to_string(other).unwrap_or_default(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let text = capped(text);
    if result.is_error == Some(true) {
        Err(text)
    } else {
        Ok(text)
    }
}

fn capped(mut text: String) -> String {
    if text.len() > MAX_RESULT_BYTES {
        let mut end = MAX_RESULT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let total = text.len();
        text.truncate(end);
        text.push_str(&format!("\n[cut: {total} bytes in all]"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_results_are_cut_on_a_char_boundary_with_a_note() {
        let s = "é".repeat(MAX_RESULT_BYTES);
        let out = capped(s);
        assert!(out.ends_with(&format!("\n[cut: {} bytes in all]", 2 * MAX_RESULT_BYTES)));
        assert!(out.len() < MAX_RESULT_BYTES + 40);
    }

    #[test]
    fn text_parts_are_joined_and_is_error_is_an_err() {
        let ok: CallToolResult = serde_json::from_value(serde_json::json!({
            "content": [{ "type": "text", "text": "a" }, { "type": "text", "text": "b" }]
        }))
        .unwrap();
        assert_eq!(result_text(&ok), Ok("a\nb".to_owned()));
        let err: CallToolResult = serde_json::from_value(serde_json::json!({
            "content": [{ "type": "text", "text": "bad zone" }], "isError": true
        }))
        .unwrap();
        assert_eq!(result_text(&err), Err("bad zone".to_owned()));
        let structured: CallToolResult = serde_json::from_value(serde_json::json!({
            "content": [], "structuredContent": { "n": 1 }
        }))
        .unwrap();
        assert_eq!(result_text(&structured), Ok(r#"{"n":1}"#.to_owned()));
    }

    #[test]
    fn bare_commands_are_looked_up_on_path() {
        assert!(resolve_program("sh").is_some_and(|p| p.is_absolute()));
        assert_eq!(resolve_program("./x"), Some(PathBuf::from("./x")));
        assert_eq!(resolve_program("spes-no-such-command-here"), None);
    }
}
