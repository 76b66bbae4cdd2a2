//! `spes.toml`: providers, defaults, store and component roots.
//!
//! Every field is optional. Keys are never stored here: a provider names the
//! *environment variable* that holds its key (`api_key_env`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::diagnostic::Diagnostic;
use crate::duration::parse_duration;

/// The parsed `spes.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    /// Defaults for steps and agents that name none.
    #[serde(default)]
    pub defaults: DefaultsSpec,
    /// Named providers.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSpec>,
    /// Where runs are stored.
    #[serde(default)]
    pub store: StoreSpec,
    /// Where components live.
    #[serde(default)]
    pub components: ComponentsSpec,
}

/// `[defaults]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsSpec {
    /// Provider used by steps and agents that name none.
    pub provider: Option<String>,
    /// Model used when neither step, agent nor provider names one.
    pub model: Option<String>,
    /// Repair attempts of llm steps that set no `repair` (default 1): how
    /// many times an answer that is not what the step asked for is sent back
    /// to the model with its problems.
    pub repair: Option<u32>,
}

/// `[store]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSpec {
    /// `sqlite://path` or `postgres://...`.
    pub url: Option<String>,
    /// SQLite commit durability: `full` (default: each commit is fsynced and
    /// survives a power loss) or `normal` (survives a killed process; the
    /// last commits before a power loss may be lost; about 2x faster).
    pub durability: Option<String>,
}

/// `[components]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentsSpec {
    /// Component roots, relative to the project directory.
    #[serde(default = "default_roots")]
    pub roots: Vec<PathBuf>,
}

impl Default for ComponentsSpec {
    fn default() -> Self {
        Self {
            roots: default_roots(),
        }
    }
}

fn default_roots() -> Vec<PathBuf> {
    vec![PathBuf::from("components")]
}

/// The kinds of provider spes knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Anthropic Messages API.
    Anthropic,
    /// OpenAI Chat Completions, or any compatible server via `base_url`.
    Openai,
    /// The embedded local model.
    Local,
    /// Answers from a script file.
    Scripted,
}

impl ProviderKind {
    /// The lowercase name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anthropic => "anthropic",
            Self::Openai => "openai",
            Self::Local => "local",
            Self::Scripted => "scripted",
        }
    }
}

/// `[providers.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// Which adapter.
    pub kind: ProviderKind,
    /// Default model.
    pub model: Option<String>,
    /// Name of the environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// Base URL (OpenAI-compatible servers, proxies, the fake server in tests).
    pub base_url: Option<String>,
    /// Default `max_tokens`.
    pub max_tokens: Option<u32>,
    /// Stream responses (server-sent events). Default: true for HTTP providers.
    pub stream: Option<bool>,
    /// Send each call's step key in an `x-spes-step` request header (for
    /// tracing through proxies and gateways). Default: false.
    pub step_header: Option<bool>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: TimeoutsSpec,
    /// Script file (scripted provider), relative to the project directory.
    pub script: Option<PathBuf>,
    /// GGUF model file (local provider).
    pub model_path: Option<PathBuf>,
    /// Inference threads (local provider).
    pub threads: Option<u32>,
    /// Context window in tokens (local provider).
    pub context: Option<u32>,
    /// Generations at once, each with its own context (local provider).
    pub slots: Option<u32>,
    /// Sampling seed for temperatures above 0 (local provider).
    pub seed: Option<u32>,
}

/// Timeouts as written (`"5s"`); see [`Timeouts`] for the parsed values.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// Time to establish the connection.
    pub connect: Option<String>,
    /// Time from sending the request to the first byte of the response.
    pub first_byte: Option<String>,
    /// Longest silence allowed between two chunks of a streamed response.
    pub idle: Option<String>,
}

/// Parsed timeouts. There is deliberately no total timeout: a healthy long
/// stream is never cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connect timeout.
    pub connect: Duration,
    /// First-byte timeout.
    pub first_byte: Duration,
    /// Idle timeout between chunks.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(120),
            idle: Duration::from_secs(60),
        }
    }
}

impl TimeoutsSpec {
    /// Parses the durations, falling back to the defaults.
    pub fn parse(&self) -> Result<Timeouts, String> {
        let d = Timeouts::default();
        let get = |v: &Option<String>, dflt: Duration, name: &str| -> Result<Duration, String> {
            v.as_deref().map_or(Ok(dflt), |s| {
                parse_duration(s).map_err(|e| format!("timeouts.{name}: {e}"))
            })
        };
        Ok(Timeouts {
            connect: get(&self.connect, d.connect, "connect")?,
            first_byte: get(&self.first_byte, d.first_byte, "first_byte")?,
            idle: get(&self.idle, d.idle, "idle")?,
        })
    }
}

/// Largest `spes.toml` spes reads.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Parses `spes.toml` text. `file` is only used in diagnostics.
pub fn parse_config(file: &str, text: &str) -> Result<ConfigSpec, Diagnostic> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(Diagnostic::error(
            "spes::config::too_large",
            format!(
                "{file} is {} bytes; spes.toml may be at most {MAX_CONFIG_BYTES}",
                text.len()
            ),
        )
        .with_file(file));
    }
    let spec: ConfigSpec = toml::from_str(text).map_err(|e| {
        let mut d = Diagnostic::error("spes::config::syntax", e.message().to_owned())
            .with_source(file, text)
            .with_hint("see FORMAT.md, section spes.toml, for every field");
        if let Some(span) = e.span() {
            d = d.with_span(span.start, span.end.saturating_sub(span.start));
        }
        d
    })?;
    for (name, p) in &spec.providers {
        if let Err(e) = p.timeouts.parse() {
            let t = &p.timeouts;
            let bad = [
                ("connect", &t.connect),
                ("first_byte", &t.first_byte),
                ("idle", &t.idle),
            ]
            .into_iter()
            .find(|(_, v)| v.as_deref().is_some_and(|s| parse_duration(s).is_err()))
            .map_or("connect", |(k, _)| k);
            return Err(located(
                Diagnostic::error("spes::config::duration", format!("[providers.{name}] {e}"))
                    .with_hint("write a duration such as 250ms, 30s, 5m, 2h or 3d"),
                file,
                text,
                &["providers", name, "timeouts", bad],
            ));
        }
        if p.kind == ProviderKind::Scripted && p.script.is_none() {
            return Err(located(
                Diagnostic::error(
                    "spes::config::missing_script",
                    format!("[providers.{name}] is kind = \"scripted\" but names no script"),
                )
                .with_hint("add script = \"path/to/answers.yaml\""),
                file,
                text,
                &["providers", name, "kind"],
            ));
        }
        if let Some(env) = &p.api_key_env
            && !env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            // Line and column only: no source snippet, so the key is never echoed.
            let d = Diagnostic::error(
                "spes::config::api_key_env",
                format!("[providers.{name}] api_key_env must be the NAME of an environment variable, not a key"),
            )
            .with_file(file)
            .with_hint("write api_key_env = \"ANTHROPIC_API_KEY\" and export the key in that variable");
            return Err(match span_of(text, &["providers", name, "api_key_env"]) {
                Some((off, _)) => {
                    let (line, col) = crate::diagnostic::line_col_of(text, off);
                    d.with_line_col(line, col)
                }
                None => d,
            });
        }
    }
    if let Some(d) = &spec.store.durability
        && !matches!(d.as_str(), "full" | "normal")
    {
        return Err(Diagnostic::error(
            "spes::config::durability",
            format!("[store] durability = \"{d}\" is not full or normal"),
        )
        .with_file(file)
        .with_hint("full (default) fsyncs every commit; normal survives a killed process and is about twice as fast"));
    }
    if let Some(p) = &spec.defaults.provider
        && !spec.providers.contains_key(p)
        && !matches!(p.as_str(), "local" | "scripted")
    {
        return Err(located(
            Diagnostic::error(
                "spes::config::unknown_provider",
                format!("[defaults] provider = \"{p}\" names no [providers.{p}] table"),
            ),
            file,
            text,
            &["defaults", "provider"],
        )
        .with_hint(format!(
            "add a [providers.{p}] table or pick one of: {}",
            spec.providers
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(spec)
}

/// Byte span of the value at `path` (table keys, then a key) in TOML `text`.
fn span_of(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let (first, rest) = path.split_first()?;
    let mut v = root.get_ref().get(*first)?;
    for k in rest {
        v = v.get_ref().get(*k)?;
    }
    let r = v.span();
    Some((r.start, r.end.saturating_sub(r.start)))
}

/// Points `d` at the value at `path` in the file, or names only the file.
fn located(d: Diagnostic, file: &str, text: &str, path: &[&str]) -> Diagnostic {
    match span_of(text, path) {
        Some((off, len)) => d.with_source(file, text).with_span(off, len),
        None => d.with_file(file),
    }
}
