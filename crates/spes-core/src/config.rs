//! `spes.toml`: providers, defaults, store and component roots.
//!
//! Every field is optional. Keys are never stored here: a provider names the
//! *environment variable* that holds its key (`api_key_env`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::budget::{Budget, Price};
use crate::diagnostic::Diagnostic;
use crate::duration::parse_duration;
use crate::policy::{Backoff, RetrySchedule};

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
    /// `spes serve`: its workflows and its access tokens.
    #[serde(default)]
    pub server: ServerSpec,
    /// `http` steps: which hosts they may reach.
    #[serde(default)]
    pub http: HttpSpec,
    /// MCP servers whose tools agents may call (`tools: [NAME.TOOL]`).
    #[serde(default)]
    pub mcp: BTreeMap<String, McpSpec>,
    /// The response cache for development loops.
    #[serde(default)]
    pub cache: CacheSpec,
    /// OpenTelemetry traces.
    #[serde(default)]
    pub telemetry: TelemetrySpec,
}

/// `[cache]`: answers of temperature-0 model calls served again from the
/// store when the same request is made.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// On for every run of the project (`spes run --cache` turns it on for one).
    #[serde(default)]
    pub enabled: bool,
    /// How long an answer stays usable (default 7d).
    pub ttl: Option<String>,
}

/// Default time an answer stays in the response cache.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl CacheSpec {
    /// The TTL, parsed.
    ///
    /// # Errors
    /// A duration that does not parse.
    pub fn ttl(&self) -> Result<Duration, String> {
        self.ttl.as_deref().map_or(Ok(DEFAULT_CACHE_TTL), |s| {
            parse_duration(s).map_err(|e| format!("ttl: {e}"))
        })
    }
}

/// `[telemetry]`: OpenTelemetry traces, exported over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySpec {
    /// The OTLP/HTTP base URL (`http://127.0.0.1:4318`; spans go to
    /// `/v1/traces` under it). Unset (and no `OTEL_EXPORTER_OTLP_ENDPOINT`):
    /// no traces.
    pub otlp_endpoint: Option<String>,
    /// Put message content (prompts, answers, tool arguments and results)
    /// on spans.
    #[serde(default)]
    pub capture_content: bool,
    /// The `service.name` resource attribute (default `spes`).
    pub service_name: Option<String>,
}

/// `[mcp.NAME]`: an MCP server, started as a command (stdio) or reached at
/// a URL (streamable HTTP).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpSpec {
    /// The program (stdio), run directly, never through a shell.
    pub command: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Names of the environment variables it gets (nothing else is passed).
    #[serde(default)]
    pub env: Vec<String>,
    /// The streamable-HTTP endpoint, instead of `command`.
    pub url: Option<String>,
}

/// `[http]`: limits on `http` steps.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// Hosts (`name` or `name:port`) http steps may reach; unset: any.
    pub allow_hosts: Option<Vec<String>>,
}

/// `[server]`: what `spes serve` offers and who may use it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// Directories whose `*.yaml` / `*.yml` workflows the server offers,
    /// relative to the project directory (default `["workflows"]`).
    #[serde(default = "default_workflow_roots")]
    pub workflows: Vec<PathBuf>,
    /// Access tokens by name (the name is the reviewer's identity).
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenSpec>,
}

impl Default for ServerSpec {
    fn default() -> Self {
        Self {
            workflows: default_workflow_roots(),
            tokens: BTreeMap::new(),
        }
    }
}

fn default_workflow_roots() -> Vec<PathBuf> {
    vec![PathBuf::from("workflows")]
}

/// `[server.tokens.NAME]`: a token, read from an environment variable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// The NAME of the environment variable holding the token.
    pub env: String,
    /// What the token may do.
    pub role: Role,
}

/// What a token may do; each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Read, and decide gates.
    Approver,
    /// Everything: start, pause, resume, cancel and fork runs too.
    Operator,
}

impl Role {
    /// The lowercase name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Approver => "approver",
            Self::Operator => "operator",
        }
    }
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
    /// Retry of transient provider errors for llm steps that set no
    /// `retry:` and whose provider sets none: `"none"`, or a table like a
    /// step's `retry` (`{ attempts = 3, base = "1s", max = "30s" }`).
    /// Default: 3 attempts (2 retries) for HTTP providers.
    pub retry: Option<RetryConfig>,
    /// Budget of runs whose workflow sets none (`budget:`); a workflow's
    /// own limits win, `spes run --budget` wins over both.
    pub budget: Option<Budget>,
}

/// `retry` in `spes.toml` (`[defaults]` or `[providers.NAME]`): `"none"`
/// or a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RetryConfig {
    /// `"none"`: no retry.
    Word(String),
    /// The schedule's fields, each optional.
    Table(RetryTable),
}

/// `retry = { attempts = 3, backoff = "exponential", base = "1s", max = "30s", jitter = true }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryTable {
    /// Attempts in all, the first try included (default 3).
    pub attempts: Option<u32>,
    /// `exponential` (default) or `constant`.
    pub backoff: Option<String>,
    /// First delay (default 1s).
    pub base: Option<String>,
    /// Largest delay and longest honoured `retry-after` (default 30s).
    pub max: Option<String>,
    /// Spread delays (default true).
    pub jitter: Option<bool>,
}

impl RetryConfig {
    /// The schedule, or `None` for `"none"`.
    ///
    /// # Errors
    ///
    /// A message for an unknown word, 0 attempts, an unknown backoff, an
    /// unparsable duration or a base longer than max.
    pub fn schedule(&self) -> Result<Option<RetrySchedule>, String> {
        let t = match self {
            Self::Word(w) if w == "none" => return Ok(None),
            Self::Word(w) => {
                return Err(format!(
                    "retry = \"{w}\" is not \"none\" or a table such as {{ attempts = 3 }}"
                ));
            }
            Self::Table(t) => t,
        };
        let mut s = RetrySchedule::default();
        if let Some(a) = t.attempts {
            if a == 0 {
                return Err("retry attempts must be at least 1 (it counts the first try)".into());
            }
            s.attempts = a;
        }
        if let Some(b) = &t.backoff {
            s.backoff = Backoff::parse(b)
                .ok_or_else(|| format!("retry backoff `{b}` is not exponential or constant"))?;
        }
        if let Some(b) = &t.base {
            s.base = parse_duration(b).map_err(|e| format!("retry base {e}"))?;
        }
        if let Some(m) = &t.max {
            s.max = parse_duration(m).map_err(|e| format!("retry max {e}"))?;
        }
        if s.base > s.max {
            return Err("retry base is longer than max (max defaults to 30s)".into());
        }
        if let Some(j) = t.jitter {
            s.jitter = j;
        }
        Ok(Some(s))
    }
}

/// Which field carries `max_tokens` in an OpenAI-compatible request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    /// `max_tokens` (Ollama, vLLM, llama.cpp server and most compatible servers).
    MaxTokens,
    /// `max_completion_tokens` (OpenAI's API; its reasoning models accept only this).
    MaxCompletionTokens,
}

impl MaxTokensField {
    /// The JSON field name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxTokens => "max_tokens",
            Self::MaxCompletionTokens => "max_completion_tokens",
        }
    }
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
    /// How long opening a `postgres://` store waits for a connection
    /// (`"5s"` by default), e.g. `"10s"`.
    pub connect_timeout: Option<String>,
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
    /// OpenAI-compatible providers: the request field that carries
    /// `max_tokens`. Default: `max_completion_tokens` for OpenAI's own API
    /// (no `base_url`, or host `api.openai.com`), `max_tokens` elsewhere.
    pub max_tokens_field: Option<MaxTokensField>,
    /// Largest answer read, in bytes, streamed or not (default 32 MiB).
    pub max_response_bytes: Option<u64>,
    /// Retry of transient errors for llm steps on this provider that set no
    /// `retry:` (as `[defaults] retry`; this one wins).
    pub retry: Option<RetryConfig>,
    /// Stream responses (server-sent events). Default: true for HTTP providers.
    pub stream: Option<bool>,
    /// Send each call's step key in an `x-spes-step` request header (for
    /// tracing through proxies and gateways). Default: false.
    pub step_header: Option<bool>,
    /// Anthropic: mark the system prompt (the components a step is built
    /// from) for the provider's prompt cache. Default: false.
    pub prompt_cache: Option<bool>,
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
    /// Prices by model name, in US dollars per million tokens
    /// (`prices."claude-sonnet-4-5" = { input = 3.0, output = 15.0 }`).
    /// A model without a price costs nothing in `runs cost` and budgets
    /// (spes has no built-in prices).
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
    /// Most requests started per minute, in this process (a token bucket
    /// that refills evenly: one request every `60 / rpm` seconds, bursts
    /// up to `rpm`).
    pub rpm: Option<u32>,
    /// Most tokens per minute, in this process, counted before each call
    /// from an estimate ([`ProviderSpec::limits`]).
    pub tpm: Option<u32>,
    /// Most requests in flight at once, in this process.
    pub max_concurrency: Option<u32>,
}

/// A provider's proactive rate limits (`rpm`, `tpm`, `max_concurrency`),
/// each unset or positive (`parse_config` refuses 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RateLimits {
    /// Requests started per minute.
    pub rpm: Option<std::num::NonZeroU32>,
    /// Estimated tokens per minute: prompt characters / 4 (rounded up) +
    /// the request's `max_tokens` (else the provider's, else 1024).
    pub tpm: Option<std::num::NonZeroU32>,
    /// Requests in flight at once.
    pub max_concurrency: Option<std::num::NonZeroU32>,
}

impl RateLimits {
    /// No limit is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.max_concurrency.is_none()
    }
}

impl ProviderSpec {
    /// The provider's rate limits (a 0, which `parse_config` refuses, is
    /// left out).
    #[must_use]
    pub fn limits(&self) -> RateLimits {
        let nz = |v: Option<u32>| v.and_then(std::num::NonZeroU32::new);
        RateLimits {
            rpm: nz(self.rpm),
            tpm: nz(self.tpm),
            max_concurrency: nz(self.max_concurrency),
        }
    }
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
    /// Longest a whole call may take, from sending the request to the last
    /// byte of the answer (default 10m).
    pub total: Option<String>,
}

/// Parsed timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connect timeout.
    pub connect: Duration,
    /// First-byte timeout.
    pub first_byte: Duration,
    /// Idle timeout between chunks.
    pub idle: Duration,
    /// Deadline of the whole call (a stream that keeps dripping is cut here).
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(120),
            idle: Duration::from_secs(60),
            total: Duration::from_secs(600),
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
            total: get(&self.total, d.total, "total")?,
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
                ("total", &t.total),
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
        if let Some(Err(e)) = p.retry.as_ref().map(RetryConfig::schedule) {
            return Err(located(
                Diagnostic::error("spes::config::retry", format!("[providers.{name}] {e}"))
                    .with_hint("write retry = \"none\" or retry = { attempts = 3, base = \"1s\", max = \"30s\" }"),
                file,
                text,
                &["providers", name, "retry"],
            ));
        }
        if p.max_response_bytes == Some(0) {
            return Err(located(
                Diagnostic::error(
                    "spes::config::max_response_bytes",
                    format!("[providers.{name}] max_response_bytes = 0 refuses every answer"),
                )
                .with_hint("leave it out (32 MiB) or give a positive size in bytes"),
                file,
                text,
                &["providers", name, "max_response_bytes"],
            ));
        }
        for (model, price) in &p.prices {
            if let Err(e) = price.check() {
                return Err(located(
                    Diagnostic::error(
                        "spes::config::price",
                        format!("[providers.{name}] prices.\"{model}\": {e}"),
                    )
                    .with_hint("write prices.\"MODEL\" = { input = 3.0, output = 15.0 } (dollars per million tokens)"),
                    file,
                    text,
                    &["providers", name, "prices", model],
                ));
            }
        }
        if p.prompt_cache == Some(true) && p.kind != ProviderKind::Anthropic {
            return Err(located(
                Diagnostic::error(
                    "spes::config::prompt_cache",
                    format!(
                        "[providers.{name}] prompt_cache is an Anthropic option; this provider is kind = \"{}\"",
                        p.kind.as_str()
                    ),
                )
                .with_hint("remove prompt_cache (OpenAI caches long prompts by itself)"),
                file,
                text,
                &["providers", name, "prompt_cache"],
            ));
        }
        for (field, v) in [
            ("rpm", p.rpm),
            ("tpm", p.tpm),
            ("max_concurrency", p.max_concurrency),
        ] {
            if v == Some(0) {
                return Err(located(
                    Diagnostic::error(
                        "spes::config::rate_limit",
                        format!("[providers.{name}] {field} = 0 would allow no request; it must be positive"),
                    )
                    .with_hint(format!("leave {field} out (no limit) or give a positive whole number")),
                    file,
                    text,
                    &["providers", name, field],
                ));
            }
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
    for (name, t) in &spec.server.tokens {
        if t.env.is_empty() || !t.env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            // Line and column only: no source snippet, so a token is never echoed.
            let d = Diagnostic::error(
                "spes::config::token_env",
                format!("[server.tokens.{name}] env must be the NAME of an environment variable, not a token"),
            )
            .with_file(file)
            .with_hint("write env = \"SPES_TOKEN_ALICE\" and export the token in that variable");
            return Err(match span_of(text, &["server", "tokens", name, "env"]) {
                Some((off, _)) => {
                    let (line, col) = crate::diagnostic::line_col_of(text, off);
                    d.with_line_col(line, col)
                }
                None => d,
            });
        }
    }
    if let Some(Err(e)) = spec.defaults.retry.as_ref().map(RetryConfig::schedule) {
        return Err(located(
            Diagnostic::error("spes::config::retry", format!("[defaults] {e}")).with_hint(
                "write retry = \"none\" or retry = { attempts = 3, base = \"1s\", max = \"30s\" }",
            ),
            file,
            text,
            &["defaults", "retry"],
        ));
    }
    if let Some(Err(e)) = spec.defaults.budget.as_ref().map(Budget::check) {
        return Err(located(
            Diagnostic::error("spes::config::budget", format!("[defaults] budget: {e}"))
                .with_hint("write budget = { cost = 2.5, tokens = 100000, calls = 50 }"),
            file,
            text,
            &["defaults", "budget"],
        ));
    }
    if let Err(e) = spec.cache.ttl() {
        return Err(located(
            Diagnostic::error("spes::config::duration", format!("[cache] {e}"))
                .with_hint("write a duration such as 12h or 7d"),
            file,
            text,
            &["cache", "ttl"],
        ));
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
    if let Some(t) = &spec.store.connect_timeout
        && let Err(e) = crate::duration::parse_duration(t)
    {
        return Err(Diagnostic::error(
            "spes::config::connect_timeout",
            format!("[store] connect_timeout = \"{t}\": {e}"),
        )
        .with_file(file)
        .with_hint("write a duration such as \"5s\" or \"500ms\""));
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn retry_defaults_and_provider_settings_parse() {
        let c = parse_config(
            "spes.toml",
            r#"
            [defaults]
            retry = { attempts = 5, base = "10ms", max = "1s", jitter = false }
            [providers.gpt]
            kind = "openai"
            retry = "none"
            max_tokens_field = "max_tokens"
            max_response_bytes = 1000
            timeouts = { total = "2m" }
            "#,
        )
        .unwrap();
        let d = c.defaults.retry.unwrap().schedule().unwrap().unwrap();
        assert_eq!(d.attempts, 5);
        assert_eq!(d.base, Duration::from_millis(10));
        assert!(!d.jitter);
        let p = &c.providers["gpt"];
        assert_eq!(p.retry.as_ref().unwrap().schedule().unwrap(), None);
        assert_eq!(p.max_tokens_field, Some(MaxTokensField::MaxTokens));
        assert_eq!(p.max_response_bytes, Some(1000));
        let t = p.timeouts.parse().unwrap();
        assert_eq!(t.total, Duration::from_secs(120));
        assert_eq!(Timeouts::default().total, Duration::from_secs(600));
    }

    #[test]
    fn prices_budgets_and_the_cache_parse_and_bad_ones_are_located() {
        let c = parse_config(
            "spes.toml",
            r#"
            [defaults]
            budget = { cost = 2.5, calls = 40, on_exhausted = "pause" }
            [providers.claude]
            kind = "anthropic"
            prompt_cache = true
            prices."claude-x" = { input = 3.0, output = 15.0, cached_input = 0.3 }
            [cache]
            enabled = true
            ttl = "12h"
            "#,
        )
        .unwrap();
        let b = c.defaults.budget.unwrap();
        assert_eq!((b.cost, b.calls, b.tokens), (Some(2.5), Some(40), None));
        assert_eq!(b.on_exhausted, crate::budget::OnExhausted::Pause);
        assert_eq!(
            c.providers["claude"].prices["claude-x"].cached_input,
            Some(0.3)
        );
        assert!(c.cache.enabled);
        assert_eq!(c.cache.ttl().unwrap(), Duration::from_secs(12 * 3600));
        for (toml, code, line) in [
            (
                "[providers.p]\nkind = \"openai\"\nprices.m = { input = -1.0, output = 1.0 }\n",
                "spes::config::price",
                3,
            ),
            (
                "[defaults]\nbudget = { cost = -2.0 }\n",
                "spes::config::budget",
                2,
            ),
            ("[cache]\nttl = \"soon\"\n", "spes::config::duration", 2),
            (
                "[providers.p]\nkind = \"openai\"\nprompt_cache = true\n",
                "spes::config::prompt_cache",
                3,
            ),
        ] {
            let d = parse_config("spes.toml", toml).unwrap_err();
            assert_eq!(d.code, code, "{toml}");
            assert_eq!(d.line_col.map(|(l, _)| l), Some(line), "{toml}: {d:?}");
        }
    }

    #[test]
    fn bad_retry_settings_are_located_diagnostics() {
        for (toml, needle) in [
            ("[defaults]\nretry = \"never\"\n", "is not \"none\""),
            ("[defaults]\nretry = { attempts = 0 }\n", "at least 1"),
            (
                "[providers.a]\nkind = \"openai\"\nretry = { base = \"1m\", max = \"1s\" }\n",
                "longer than max",
            ),
            (
                "[providers.a]\nkind = \"openai\"\nmax_response_bytes = 0\n",
                "refuses every answer",
            ),
        ] {
            let d = parse_config("spes.toml", toml).unwrap_err();
            assert!(d.to_string().contains(needle), "{toml}: {d}");
        }
        let d = parse_config(
            "spes.toml",
            "[providers.a]\nkind = \"openai\"\nmax_tokens_field = \"tokens\"\n",
        )
        .unwrap_err();
        assert_eq!(d.code, "spes::config::syntax", "{d}");
    }

    #[test]
    fn rate_limits_parse_and_a_zero_is_a_located_error() {
        let c = parse_config(
            "spes.toml",
            "[providers.a]\nkind = \"openai\"\nrpm = 60\ntpm = 10000\nmax_concurrency = 8\n",
        )
        .unwrap();
        let l = c.providers["a"].limits();
        assert_eq!(l.rpm.map(std::num::NonZeroU32::get), Some(60));
        assert_eq!(l.tpm.map(std::num::NonZeroU32::get), Some(10_000));
        assert_eq!(l.max_concurrency.map(std::num::NonZeroU32::get), Some(8));
        assert!(!l.is_empty());
        let none = parse_config("spes.toml", "[providers.a]\nkind = \"openai\"\n").unwrap();
        assert!(none.providers["a"].limits().is_empty());
        for field in ["rpm", "tpm", "max_concurrency"] {
            let toml = format!("[providers.a]\nkind = \"openai\"\n{field} = 0\n");
            let d = parse_config("spes.toml", &toml).unwrap_err();
            assert_eq!(d.code, "spes::config::rate_limit", "{d}");
            assert_eq!(
                d.message,
                format!("[providers.a] {field} = 0 would allow no request; it must be positive")
            );
            assert_eq!(d.line_col, Some((3, field.len() + 4)), "{d}");
        }
        let d =
            parse_config("spes.toml", "[providers.a]\nkind = \"openai\"\nrpm = -1\n").unwrap_err();
        assert_eq!(d.code, "spes::config::syntax", "{d}");
    }

    #[test]
    fn server_tokens_parse_and_unknown_fields_or_roles_are_refused() {
        let c = parse_config(
            "spes.toml",
            "[server]\nworkflows = [\"flows\"]\n[server.tokens.alice]\nenv = \"SPES_TOKEN_ALICE\"\nrole = \"approver\"\n",
        )
        .unwrap();
        assert_eq!(c.server.workflows, vec![PathBuf::from("flows")]);
        assert_eq!(c.server.tokens["alice"].env, "SPES_TOKEN_ALICE");
        assert_eq!(c.server.tokens["alice"].role, Role::Approver);
        assert!(Role::Viewer < Role::Approver && Role::Approver < Role::Operator);
        let d = parse_config("spes.toml", "").unwrap();
        assert_eq!(d.server.workflows, vec![PathBuf::from("workflows")]);
        for toml in [
            "[server]\nport = 1\n",
            "[server.tokens.a]\nenv = \"X\"\nrole = \"admin\"\n",
            "[server.tokens.a]\nenv = \"X\"\nrole = \"viewer\"\nvalue = \"s3cret\"\n",
            "[server.tokens.a]\nrole = \"viewer\"\n",
        ] {
            let e = parse_config("spes.toml", toml).unwrap_err();
            assert_eq!(e.code, "spes::config::syntax", "{toml}: {e}");
        }
        let e = parse_config(
            "spes.toml",
            "[server.tokens.a]\nenv = \"tok-3f9a s3cret\"\nrole = \"viewer\"\n",
        )
        .unwrap_err();
        assert_eq!(e.code, "spes::config::token_env");
        assert_eq!(e.line_col, Some((2, 7)));
        assert!(!e.render_plain().contains("s3cret"), "{}", e.render_plain());
    }
}
