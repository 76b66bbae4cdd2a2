//! [`ProviderRegistry`]: the providers of a `spes.toml`, by name.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use spes_core::config::{ConfigSpec, ProviderKind, ProviderSpec};

use crate::anthropic::AnthropicProvider;
use crate::error::{ProviderError, ProviderErrorKind};
use crate::http::HttpProviderConfig;
use crate::openai::OpenAiProvider;
use crate::provider::Provider;

enum Entry {
    Ready(Arc<dyn Provider>),
    /// Configured but unusable until fixed (a missing API key): asking for
    /// it gives this error, other providers still work.
    Unavailable(ProviderError),
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
                Entry::Unavailable(_) => "unavailable",
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
                Err(e) if e.kind == ProviderErrorKind::Authentication => Entry::Unavailable(e),
                Err(e) => return Err(e),
            };
            reg.entries.insert(name.clone(), entry);
        }
        Ok(reg)
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
            Some(Entry::Unavailable(e)) => Err(e.clone()),
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
    Ok(Some(match spec.kind {
        ProviderKind::Anthropic => Arc::new(AnthropicProvider::new(
            HttpProviderConfig::from_spec(name, spec, env)?,
        )?),
        ProviderKind::Openai => Arc::new(OpenAiProvider::new(HttpProviderConfig::from_spec(
            name, spec, env,
        )?)?),
        ProviderKind::Local | ProviderKind::Scripted => return Ok(None),
    }))
}
