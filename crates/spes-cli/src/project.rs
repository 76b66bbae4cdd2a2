//! Finding and loading a project: `spes.toml`, components, providers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use spes_core::component::ComponentRegistry;
use spes_core::config::{ConfigSpec, ProviderKind, ProviderSpec, parse_config};
use spes_core::{Diagnostic, Diagnostics};
use spes_llm::Provider;
use spes_llm::scripted::ScriptedProvider;

use crate::Failure;

/// A loaded project.
pub(crate) struct Project {
    /// Directory holding spes.toml (or the working directory when there is none).
    pub(crate) dir: PathBuf,
    /// The spes.toml path, when there is one.
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) config: ConfigSpec,
}

/// Reads a user file with a size cap, naming the file on error (only
/// regular files: a FIFO or a device is refused without blocking).
pub(crate) fn read_text(path: &Path, max: usize) -> Result<String, Failure> {
    let shown = path.display().to_string();
    spes_core::fs::read_text(path, max as u64).map_err(|e| {
        let code = match &e {
            spes_core::fs::ReadError::TooLarge { .. } => "spes::io::too_large",
            spes_core::fs::ReadError::NotUtf8 { .. } => "spes::io::not_utf8",
            _ => "spes::io::read",
        };
        Failure::Input(Diagnostics::from(
            Diagnostic::error(code, format!("cannot read {shown}: {e}"))
                .with_file(shown.clone())
                .with_hint(e.hint()),
        ))
    })
}

impl Project {
    /// Finds spes.toml: the explicit path, else walking up from `start`.
    pub(crate) fn discover(explicit: Option<&Path>, start: &Path) -> Result<Self, Failure> {
        let config_path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => {
                let start = if start.is_dir() {
                    start.to_path_buf()
                } else {
                    start.parent().map(Path::to_path_buf).unwrap_or_default()
                };
                let start = if start.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    start
                };
                let abs = std::fs::canonicalize(&start).unwrap_or(start);
                abs.ancestors()
                    .map(|d| d.join("spes.toml"))
                    .find(|p| p.is_file())
            }
        };
        let Some(path) = config_path else {
            return Ok(Self {
                dir: std::env::current_dir().unwrap_or_default(),
                config_path: None,
                config: ConfigSpec::default(),
            });
        };
        let text = read_text(&path, spes_core::config::MAX_CONFIG_BYTES)?;
        let shown = path.display().to_string();
        let config = parse_config(&shown, &text).map_err(|d| Failure::Input(d.into()))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        Ok(Self {
            dir,
            config_path: Some(path),
            config,
        })
    }

    /// The store URL: `--store`, else `[store] url`, else `.spes/spes.db` beside spes.toml.
    pub(crate) fn store_url(&self, explicit: Option<&str>) -> String {
        explicit
            .map(str::to_owned)
            .or_else(|| self.config.store.url.clone())
            .unwrap_or_else(|| "sqlite://.spes/spes.db".into())
    }

    /// The SQLite file of the store when it does not exist yet: opening
    /// the store would create it, so commands that only look do not.
    pub(crate) fn missing_store(&self, explicit: Option<&str>) -> Option<PathBuf> {
        self.store_url(explicit)
            .strip_prefix("sqlite://")
            .map(|p| self.rel(Path::new(p)))
            .filter(|p| !p.exists())
    }

    /// Options of a `postgres://` store: `[store] connect_timeout`.
    pub(crate) fn postgres_options(
        &self,
    ) -> Result<spes_store::postgres::PostgresOptions, Failure> {
        let mut opts = spes_store::postgres::PostgresOptions::default();
        if let Some(t) = &self.config.store.connect_timeout {
            let d = spes_core::duration::parse_duration(t).map_err(|e| {
                Failure::Usage(format!("[store] connect_timeout in spes.toml: {e}"))
            })?;
            opts = opts.with_connect_timeout(d);
        }
        Ok(opts)
    }

    pub(crate) fn rel(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_path_buf();
        }
        if let Ok(rest) = p.strip_prefix("~")
            && let Some(home) = std::env::var_os("HOME")
        {
            return PathBuf::from(home).join(rest);
        }
        self.dir.join(p)
    }

    /// Component roots, absolute.
    pub(crate) fn component_roots(&self) -> Vec<PathBuf> {
        self.config
            .components
            .roots
            .iter()
            .map(|r| self.rel(r))
            .collect()
    }

    /// Loads components; a missing default root is not an error.
    pub(crate) fn components(&self) -> (ComponentRegistry, Diagnostics) {
        let roots: Vec<PathBuf> = self
            .component_roots()
            .into_iter()
            .filter(|r| {
                r.exists()
                    || self.config_path.is_some()
                        && self.config.components.roots != [PathBuf::from("components")]
            })
            .collect();
        ComponentRegistry::load(&roots)
    }

    /// The default provider's name.
    pub(crate) fn default_provider(&self, override_name: Option<&str>) -> String {
        if let Some(n) = override_name {
            return n.to_owned();
        }
        if let Some(n) = &self.config.defaults.provider {
            return n.clone();
        }
        // No default named: a configured provider whose key is present wins, else `local`.
        for (name, p) in &self.config.providers {
            let usable = match p.kind {
                ProviderKind::Anthropic | ProviderKind::Openai => p
                    .api_key_env
                    .as_ref()
                    .is_some_and(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty())),
                ProviderKind::Scripted | ProviderKind::Local => true,
            };
            if usable {
                return name.clone();
            }
        }
        "local".into()
    }

    /// Builds every configured provider.
    pub(crate) fn providers(&self) -> Result<Vec<Arc<dyn Provider>>, Failure> {
        let mut out: Vec<Arc<dyn Provider>> = Vec::new();
        for (name, spec) in &self.config.providers {
            let p: Arc<dyn Provider> = match spec.kind {
                ProviderKind::Scripted => {
                    let script = spec.script.as_deref().unwrap_or(Path::new("answers.yaml"));
                    let path = self.rel(script);
                    let text = read_text(&path, spes_core::yaml::MAX_YAML_BYTES)?;
                    let shown = path.display().to_string();
                    Arc::new(
                        ScriptedProvider::parse(name, &shown, &text)
                            .map_err(|d| Failure::Input(d.into()))?,
                    )
                }
                ProviderKind::Anthropic | ProviderKind::Openai => crate::http_provider(name, spec)?,
                ProviderKind::Local => match self.local_provider(name, Some(spec)) {
                    Some(p) => p,
                    None => continue,
                },
            };
            out.push(p);
        }
        // `local` is always there (the offline default), unless a
        // configured provider took the name. It loads nothing until used.
        if !out.iter().any(|p| p.name() == "local")
            && let Some(p) = self.local_provider("local", None)
        {
            out.push(p);
        }
        Ok(out)
    }

    /// The settings of the local provider `spec` (the default model when `None`).
    #[cfg(feature = "local")]
    pub(crate) fn local_config(&self, spec: Option<&ProviderSpec>) -> spes_local::LocalConfig {
        match spec {
            Some(spec) => {
                let mut c = spes_local::LocalConfig::from_spec(spec, &self.dir);
                if let Some(p) = &spec.model_path {
                    c.model_path = self.rel(p);
                }
                c
            }
            None => spes_local::LocalConfig::default_model(),
        }
    }

    #[cfg(feature = "local")]
    #[allow(clippy::unnecessary_wraps)]
    fn local_provider(&self, name: &str, spec: Option<&ProviderSpec>) -> Option<Arc<dyn Provider>> {
        Some(Arc::new(spes_local::LocalProvider::new(
            name,
            self.local_config(spec),
        )))
    }

    /// Built without the `local` feature: there is no embedded model.
    #[cfg(not(feature = "local"))]
    #[allow(clippy::unused_self)]
    fn local_provider(
        &self,
        _name: &str,
        _spec: Option<&ProviderSpec>,
    ) -> Option<Arc<dyn Provider>> {
        None
    }

    /// Names of configured providers (for validation).
    pub(crate) fn provider_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.config.providers.keys().cloned().collect();
        if !v.iter().any(|n| n == "local") {
            v.push("local".into());
        }
        v
    }
}
