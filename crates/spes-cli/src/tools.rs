//! MCP servers from spes.toml (`[mcp.NAME]`) as the engine's tool source,
//! stopped when the command ends; `spes tools list`.

use std::sync::{Arc, Mutex};

use spes_engine::mcp::{McpServerConfig, McpSource};

use crate::Failure;
use crate::project::Project;

/// The MCP source this process made, shared by every engine it builds
/// (`spes serve` builds one per run), shut down when the command ends.
static SOURCES: Mutex<Vec<Arc<McpSource>>> = Mutex::new(Vec::new());

/// The project's MCP servers as a tool source, `None` when it declares none.
/// Nothing is started here: a server starts when a step first names one of
/// its tools. One source per process: each server starts once.
pub(crate) fn source(project: &Project) -> Result<Option<Arc<McpSource>>, Failure> {
    if project.config.mcp.is_empty() {
        return Ok(None);
    }
    if let Some(s) = SOURCES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .first()
    {
        return Ok(Some(s.clone()));
    }
    let mut configs = Vec::new();
    for (name, spec) in &project.config.mcp {
        let cfg = match (&spec.command, &spec.url) {
            (Some(command), None) => {
                McpServerConfig::stdio(name, command, spec.args.clone(), spec.env.clone())
                    .with_cwd(project.dir.clone())
            }
            (None, Some(url)) if spec.args.is_empty() && spec.env.is_empty() => {
                McpServerConfig::http(name, url)
            }
            (None, Some(_)) => {
                return Err(Failure::Usage(format!(
                    "[mcp.{name}] in spes.toml: `args` and `env` go with `command`, not `url`"
                )));
            }
            _ => {
                return Err(Failure::Usage(format!(
                    "[mcp.{name}] in spes.toml needs `command` (a stdio server) or `url` (streamable HTTP), not both"
                )));
            }
        };
        configs.push(cfg);
    }
    let source = Arc::new(
        McpSource::new(configs).map_err(|e| Failure::Usage(format!("spes.toml [mcp]: {e}")))?,
    );
    SOURCES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(source.clone());
    Ok(Some(source))
}

/// Stops every MCP server this process started.
pub(crate) async fn shutdown_all() {
    let sources: Vec<Arc<McpSource>> = std::mem::take(
        &mut *SOURCES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for s in sources {
        s.shutdown().await;
    }
}

/// `spes tools list`: every MCP server's tools, as `SERVER.TOOL`
/// (starting the servers).
pub(crate) async fn list(project: &Project, json: bool) -> Result<(), Failure> {
    let Some(source) = source(project)? else {
        if json {
            crate::term::out_doc(&serde_json::json!({ "tools": [] }));
        } else {
            crate::term::say_line("no MCP servers in spes.toml ([mcp.NAME] tables)");
        }
        return Ok(());
    };
    let tools = source.list().await.map_err(Failure::Usage)?;
    if json {
        let list: Vec<serde_json::Value> = tools
            .iter()
            .map(|(server, t)| {
                serde_json::json!({
                    "name": format!("{server}.{}", t.name),
                    "server": server,
                    "tool": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                })
            })
            .collect();
        crate::term::out_doc(&serde_json::json!({ "tools": list }));
    } else {
        for (server, t) in &tools {
            let first = t.description.lines().next().unwrap_or_default();
            crate::term::out(&format!("{server}.{}  {first}", t.name));
        }
    }
    Ok(())
}
