//! [`ProviderRegistry`]: the providers of a `spes.toml`, by name.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use spes_core::Diagnostics;
use spes_core::config::{ConfigSpec, ProviderKind, ProviderSpec};
use spes_core::message::{ChatRequest, ChatResponse};

use crate::anthropic::AnthropicProvider;
use crate::error::{ProviderError, ProviderErrorKind};
use crate::http::HttpProviderConfig;
use crate::limit::LimitedProvider;
use crate::openai::OpenAiProvider;
use crate::provider::{CallContext, Provider};
use crate::scripted::ScriptedProvider;

/// Builds a `local` provider (the embedded model lives in another crate):
/// its name and its `[providers.NAME]` table (`None`: the default model).
pub type LocalFactory<'a> = &'a dyn Fn(&str, Option<&ProviderSpec>) -> Arc<dyn Provider>;

/// A provider that could not be built (its key variable is unset, its
/// table is unusable, this build has no embedded model): every call fails
/// with why, so that workflows not using it still run.
#[derive(Debug)]
pub struct UnavailableProvider {
    name: String,
    kind: &'static str,
    error: ProviderError,
}

impl UnavailableProvider {
    /// A provider `name` of `kind` that answers every call with `error`.
    #[must_use]
    pub fn new(name: impl Into<String>, kind: &'static str, error: ProviderError) -> Self {
        Self {
            name: name.into(),
            kind,
            error,
        }
    }

    /// Why it cannot be used.
    #[must_use]
    pub fn error(&self) -> &ProviderError {
        &self.error
    }
}

#[async_trait]
impl Provider for UnavailableProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        self.kind
    }

    fn default_model(&self) -> Option<&str> {
        None
    }

    async fn complete(
        &self,
        _req: &ChatRequest,
        _cx: &CallContext,
    ) -> Result<ChatResponse, ProviderError> {
        Err(self.error.clone())
    }
}

enum Entry {
    Ready(Arc<dyn Provider>),
    /// Configured but unusable until fixed (a missing API key): asking for
    /// it gives this error, other providers still work.
    Unavailable(ProviderError, ProviderKind),
    /// A `scripted` or `local` provider the caller must build and
    /// [`ProviderRegistry::insert`].
    Pending(ProviderKind),
}

/// Providers by configured name.
///
/// [`ProviderRegistry::from_config`] builds the HTTP providers
/// (`anthropic`, `openai`) of a `spes.toml`; `scripted` and `local`
/// providers need files or a model runtime, so the caller builds them and
/// adds them with [`ProviderRegistry::insert`] ([`ProviderRegistry::pending`]
/// lists them). A provider whose API key is missing is kept as an error: it
/// fails when asked for, naming the environment variable, and the others
/// still work.
#[derive(Default)]
pub struct ProviderRegistry {
    entries: BTreeMap<String, Entry>,
}

impl fmt::Debug for ProviderRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (name, e) in &self.entries {
            let state = match e {
                Entry::Ready(p) => p.kind(),
                Entry::Unavailable(..) => "unavailable",
                Entry::Pending(_) => "pending",
            };
            m.entry(name, &state);
        }
        m.finish()
    }
}

impl ProviderRegistry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the providers of `config`, reading API keys from the process
    /// environment.
    ///
    /// # Errors
    ///
    /// A [`ProviderErrorKind::Config`] error for an unusable provider table
    /// (bad timeouts, bad base URL). Missing keys are not errors here; see
    /// [`ProviderRegistry::get`].
    pub fn from_config(config: &ConfigSpec) -> Result<Self, ProviderError> {
        Self::from_config_with_env(config, |var| std::env::var(var).ok())
    }

    /// Like [`ProviderRegistry::from_config`], with keys looked up through
    /// `env` (tests pass a map instead of mutating the process environment).
    ///
    /// # Errors
    ///
    /// As [`ProviderRegistry::from_config`].
    pub fn from_config_with_env(
        config: &ConfigSpec,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ProviderError> {
        let mut reg = Self::new();
        for (name, spec) in &config.providers {
            let entry = match build(name, spec, &env) {
                Ok(Some(p)) => Entry::Ready(p),
                Ok(None) => Entry::Pending(spec.kind),
                Err(e) if e.kind == ProviderErrorKind::Authentication => {
                    Entry::Unavailable(e, spec.kind)
                }
                Err(e) => return Err(e),
            };
            reg.entries.insert(name.clone(), entry);
        }
        Ok(reg)
    }

    /// Every provider of a project, the way `spes` builds them: HTTP
    /// providers from their tables (one that cannot be built, such as one
    /// whose key variable is unset, is kept as an [`UnavailableProvider`]
    /// that fails when called, naming why); `scripted` ones from their
    /// `script` file (relative to `dir`, default `answers.yaml`, read with
    /// a size cap); `local` ones through `local` (without it, this build
    /// has no embedded model: they are unavailable). Unless a configured
    /// provider is called `local`, `local` itself is added through
    /// `local` (the offline default; it loads nothing until used).
    ///
    /// # Errors
    ///
    /// A script that cannot be read or parsed, with its file and line.
    pub fn for_project(
        config: &ConfigSpec,
        dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        local: Option<LocalFactory<'_>>,
    ) -> Result<Self, Diagnostics> {
        let mut reg = Self::new();
        for (name, spec) in &config.providers {
            let entry = match spec.kind {
                ProviderKind::Anthropic | ProviderKind::Openai => match build(name, spec, env) {
                    Ok(Some(p)) => Entry::Ready(p),
                    Ok(None) => Entry::Pending(spec.kind),
                    Err(e) => Entry::Unavailable(e, spec.kind),
                },
                ProviderKind::Scripted => Entry::Ready(limited(spec, scripted(name, spec, dir)?)),
                ProviderKind::Local => match local {
                    Some(f) => Entry::Ready(limited(spec, f(name, Some(spec)))),
                    None => Entry::Unavailable(no_local(name), spec.kind),
                },
            };
            reg.entries.insert(name.clone(), entry);
        }
        if let (false, Some(f)) = (reg.entries.contains_key("local"), local) {
            reg.entries
                .insert("local".into(), Entry::Ready(f("local", None)));
        }
        Ok(reg)
    }

    /// Every provider by name, usable or not: an unusable one is an
    /// [`UnavailableProvider`] (its calls fail, naming why); one nobody
    /// built ([`ProviderRegistry::pending`]) is left out.
    #[must_use]
    pub fn providers(&self) -> Vec<Arc<dyn Provider>> {
        self.entries
            .iter()
            .filter_map(|(name, e)| match e {
                Entry::Ready(p) => Some(Arc::clone(p)),
                Entry::Unavailable(err, kind) => Some(Arc::new(UnavailableProvider::new(
                    name.clone(),
                    kind.as_str(),
                    err.clone(),
                )) as Arc<dyn Provider>),
                Entry::Pending(_) => None,
            })
            .collect()
    }

    /// Adds or replaces the provider `name`; returns the one it replaced,
    /// if it was built.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        provider: Arc<dyn Provider>,
    ) -> Option<Arc<dyn Provider>> {
        match self.entries.insert(name.into(), Entry::Ready(provider)) {
            Some(Entry::Ready(old)) => Some(old),
            _ => None,
        }
    }

    /// The provider `name`.
    ///
    /// # Errors
    ///
    /// [`ProviderErrorKind::Config`] for an unknown name (the message lists
    /// the known ones) or a `scripted`/`local` provider nobody inserted;
    /// the stored [`ProviderErrorKind::Authentication`] error for a provider
    /// whose key is missing.
    pub fn get(&self, name: &str) -> Result<Arc<dyn Provider>, ProviderError> {
        match self.entries.get(name) {
            Some(Entry::Ready(p)) => Ok(Arc::clone(p)),
            Some(Entry::Unavailable(e, _)) => Err(e.clone()),
            Some(Entry::Pending(kind)) => Err(ProviderError::new(
                name,
                ProviderErrorKind::Config,
                format!(
                    "provider `{name}` (kind = \"{}\") is configured but was not built",
                    kind.as_str()
                ),
            )),
            None => {
                let known = self.names().collect::<Vec<_>>();
                let message = if known.is_empty() {
                    format!("unknown provider `{name}`: no providers are configured")
                } else {
                    format!(
                        "unknown provider `{name}`; known providers: {}",
                        known.join(", ")
                    )
                };
                Err(ProviderError::new(name, ProviderErrorKind::Config, message))
            }
        }
    }

    /// Whether `name` is configured or inserted (usable or not).
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Every configured or inserted name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// `scripted` and `local` providers of the config that still need
    /// [`ProviderRegistry::insert`].
    #[must_use]
    pub fn pending(&self) -> Vec<(&str, ProviderKind)> {
        self.entries
            .iter()
            .filter_map(|(n, e)| match e {
                Entry::Pending(k) => Some((n.as_str(), *k)),
                _ => None,
            })
            .collect()
    }
}

fn build(
    name: &str,
    spec: &ProviderSpec,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Arc<dyn Provider>>, ProviderError> {
    let p: Arc<dyn Provider> = match spec.kind {
        ProviderKind::Anthropic => Arc::new(AnthropicProvider::new(
            HttpProviderConfig::from_spec(name, spec, env)?,
        )?),
        ProviderKind::Openai => Arc::new(OpenAiProvider::new(HttpProviderConfig::from_spec(
            name, spec, env,
        )?)?),
        ProviderKind::Local | ProviderKind::Scripted => return Ok(None),
    };
    Ok(Some(limited(spec, p)))
}

/// `p` behind its table's rate limits (`rpm`, `tpm`, `max_concurrency`),
/// shared by every provider of that name and limits in this process.
fn limited(spec: &ProviderSpec, p: Arc<dyn Provider>) -> Arc<dyn Provider> {
    LimitedProvider::wrap(p, spec.limits(), spec.max_tokens)
}

/// The error of a `local` provider in a build without the embedded model.
fn no_local(name: &str) -> ProviderError {
    ProviderError::new(
        name,
        ProviderErrorKind::Config,
        format!(
            "provider `{name}` is kind \"local\", but this build of spes has no embedded model (built without the `local` feature)"
        ),
    )
}

/// A `scripted` provider from its script file (relative to `dir`).
fn scripted(name: &str, spec: &ProviderSpec, dir: &Path) -> Result<Arc<dyn Provider>, Diagnostics> {
    let script = spec.script.as_deref().unwrap_or(Path::new("answers.yaml"));
    let path = spes_core::fs::resolve(dir, script);
    let max = spes_core::yaml::MAX_YAML_BYTES as u64;
    let text = spes_core::fs::read_text_diag(&path, max)?;
    let shown = path.display().to_string();
    Ok(Arc::new(ScriptedProvider::parse(name, &shown, &text)?))
}
