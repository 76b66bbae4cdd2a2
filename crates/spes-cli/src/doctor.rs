//! `spes doctor`: which providers are usable, which key variables they
//! want (names only, never values), whether each configured `base_url`
//! answers, where the local model is, and whether the run store opens.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use spes_core::config::{ProviderKind, ProviderSpec};

use crate::Failure;
use crate::project::Project;

/// One row of the provider table.
struct Row {
    name: String,
    kind: &'static str,
    ready: bool,
    detail: String,
}

fn key_set(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty())
}

fn http_row(name: &str, spec: &ProviderSpec) -> Row {
    let default_var = match spec.kind {
        ProviderKind::Anthropic => "ANTHROPIC_API_KEY",
        _ => "OPENAI_API_KEY",
    };
    let var = spec.api_key_env.as_deref();
    let (ready, detail) = match var {
        Some(v) if key_set(v) => (true, format!("key from ${v} (set)")),
        Some(v) => (false, format!("wants its key in ${v}, which is not set")),
        // An OpenAI-compatible local server (Ollama, vLLM) may need no key.
        None if spec.base_url.is_some() => (true, "no key configured (api_key_env)".into()),
        None => (
            false,
            format!("no api_key_env; set api_key_env = \"{default_var}\" in spes.toml"),
        ),
    };
    let where_ = spec
        .base_url
        .as_deref()
        .map(|u| format!(" · {u}"))
        .unwrap_or_default();
    Row {
        name: name.to_owned(),
        kind: spec.kind.as_str(),
        ready,
        detail: format!("{detail}{where_}"),
    }
}

#[cfg(feature = "local")]
fn local_row(project: &Project, name: &str, spec: Option<&ProviderSpec>) -> Row {
    let c = project.local_config(spec);
    let path = c.model_path.display();
    let (ready, state) = match std::fs::metadata(&c.model_path) {
        Ok(m) if m.is_file() => match spes_local::gguf::probe(&c.model_path) {
            Ok(info) => (
                true,
                format!(
                    "{path} ({:.0} MB, {}, {})",
                    m.len() as f64 / 1e6,
                    info.architecture
                        .as_deref()
                        .unwrap_or("unknown architecture"),
                    info.name.as_deref().unwrap_or("unnamed"),
                ),
            ),
            Err(e) => (false, format!("{path}: {e}")),
        },
        _ if c.is_default_model => (
            false,
            format!("{path} is missing; fetch it with scripts/fetch-model.sh"),
        ),
        _ => (false, format!("{path} is missing; check model_path")),
    };
    Row {
        name: name.to_owned(),
        kind: "local",
        ready,
        detail: format!(
            "{state} · context {} · threads {} · slots {}",
            c.context, c.threads, c.slots
        ),
    }
}

#[cfg(not(feature = "local"))]
fn local_row(_project: &Project, name: &str, _spec: Option<&ProviderSpec>) -> Row {
    Row {
        name: name.to_owned(),
        kind: "local",
        ready: false,
        detail: "this spes was built without the `local` feature".into(),
    }
}

/// How long doctor waits for a provider's `base_url` to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks each configured `base_url` (all at once, [`ANSWER_TIMEOUT`] each)
/// whether it answers: any HTTP status counts; a refused connection, a
/// timeout or a TLS failure makes the provider not usable. No key is sent.
async fn check_base_urls(project: &Project, rows: &mut [Row]) {
    let client = reqwest::Client::builder()
        .connect_timeout(ANSWER_TIMEOUT)
        .timeout(ANSWER_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build();
    let Ok(client) = client else { return };
    let mut checks = tokio::task::JoinSet::new();
    for (name, spec) in &project.config.providers {
        if !matches!(spec.kind, ProviderKind::Anthropic | ProviderKind::Openai) {
            continue;
        }
        let Some(url) = spec.base_url.clone() else {
            continue;
        };
        let (client, name) = (client.clone(), name.clone());
        checks.spawn(async move {
            let answer = match client.get(&url).send().await {
                Ok(r) => Ok(r.status().as_u16()),
                Err(e) if e.is_timeout() => {
                    Err(format!("no answer within {}s", ANSWER_TIMEOUT.as_secs()))
                }
                Err(e) => Err(cause(&e)),
            };
            (name, answer)
        });
    }
    while let Some(Ok((name, answer))) = checks.join_next().await {
        if let Some(row) = rows.iter_mut().find(|r| r.name == name) {
            match answer {
                Ok(status) => {
                    let _ = write!(row.detail, " (answers: HTTP {status})");
                }
                Err(why) => {
                    row.ready = false;
                    let _ = write!(row.detail, " does not answer: {why}");
                }
            }
        }
    }
}

/// The innermost cause of an HTTP error (`Connection refused`), which
/// says more than reqwest's "error sending request".
fn cause(e: &reqwest::Error) -> String {
    let mut last: &dyn std::error::Error = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// Runs `spes doctor`; exit 1 when the default provider is not usable.
pub(crate) async fn doctor(
    config: Option<&Path>,
    store: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    let cwd = std::env::current_dir().unwrap_or_default();
    let project = Project::discover(config, &cwd)?;
    let mut rows = Vec::new();
    for (name, spec) in &project.config.providers {
        rows.push(match spec.kind {
            ProviderKind::Anthropic | ProviderKind::Openai => http_row(name, spec),
            ProviderKind::Scripted => {
                let script = spec.script.as_deref().unwrap_or(Path::new("answers.yaml"));
                let path = project.rel(script);
                Row {
                    name: name.clone(),
                    kind: "scripted",
                    ready: path.is_file(),
                    detail: if path.is_file() {
                        path.display().to_string()
                    } else {
                        format!("{} is missing", path.display())
                    },
                }
            }
            ProviderKind::Local => local_row(&project, name, Some(spec)),
        });
    }
    if !project.config.providers.contains_key("local") {
        rows.push(local_row(&project, "local", None));
    }
    check_base_urls(&project, &mut rows).await;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "project   {}",
        project.config_path.as_ref().map_or_else(
            || format!("{} (no spes.toml: defaults)", project.dir.display()),
            |p| p.display().to_string()
        )
    );
    let default = project.default_provider(None);
    let default_ready = rows.iter().any(|r| r.name == default && r.ready);
    let _ = writeln!(
        out,
        "default   {default}{}",
        if default_ready {
            ""
        } else {
            " (not usable: see below)"
        }
    );
    let store_line = match project.missing_store(store) {
        // Opening would create it; doctor only looks.
        Some(p) => format!(
            "{} (not created yet: the first run creates it)",
            p.display()
        ),
        None => match crate::runs::open_store(&project, store).await {
            Ok(s) => s.describe(),
            Err(Failure::Store(e)) => format!("unusable: {e}"),
            Err(Failure::Usage(m)) => format!("unusable: {m}"),
            Err(_) => "unusable".into(),
        },
    };
    if json {
        crate::term::out_doc(&spes_engine::view::DoctorDoc {
            schema: spes_engine::view::VERSION,
            project: project
                .config_path
                .as_ref()
                .map(|p| p.display().to_string()),
            default_provider: default.clone(),
            default_ready,
            store: store_line,
            providers: rows
                .iter()
                .map(|r| spes_engine::view::ProviderStatus {
                    name: r.name.clone(),
                    kind: r.kind.to_owned(),
                    ready: r.ready,
                    detail: r.detail.clone(),
                })
                .collect(),
            keys_set: ["ANTHROPIC_API_KEY", "OPENAI_API_KEY"]
                .iter()
                .map(|v| ((*v).to_owned(), key_set(v)))
                .collect(),
        });
        return if default_ready {
            Ok(())
        } else {
            Err(Failure::Stopped(1, String::new()))
        };
    }
    let _ = writeln!(out, "store     {store_line}");
    let _ = writeln!(out, "\nproviders:");
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for r in &rows {
        let _ = writeln!(
            out,
            "  {} {:width$}  {:9}  {}",
            if r.ready { "✓" } else { "✗" },
            r.name,
            r.kind,
            r.detail,
        );
    }
    let _ = writeln!(out, "\nkey variables (names only; values are never shown):");
    for var in ["ANTHROPIC_API_KEY", "OPENAI_API_KEY"] {
        let _ = writeln!(
            out,
            "  {var:18} {}",
            if key_set(var) { "set" } else { "not set" }
        );
    }
    crate::term::out(&out);
    if default_ready {
        Ok(())
    } else {
        // Scripts (`spes doctor && spes run ...`) learn it from the exit code.
        Err(Failure::Stopped(
            1,
            format!("the default provider `{default}` is not usable (see above)"),
        ))
    }
}
