//! Finding and loading a project: `spes.toml`, components, providers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use spes_core::Diagnostics;
use spes_core::component::ComponentRegistry;
#[cfg(feature = "local")]
use spes_core::config::ProviderSpec;
use spes_core::config::{ConfigSpec, ProviderKind, parse_config};
use spes_llm::Provider;

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
    spes_core::fs::read_text_diag(path, max as u64).map_err(|d| Failure::Input(d.into()))
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
        spes_core::fs::resolve(&self.dir, p)
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

    /// Every configured provider (and `local`, the offline default, when
    /// this build has it), built by `spes_llm::ProviderRegistry`.
    pub(crate) fn providers(&self) -> Result<Vec<Arc<dyn Provider>>, Failure> {
        let env = |k: &str| std::env::var(k).ok();
        #[cfg(feature = "local")]
        let factory = |name: &str, spec: Option<&ProviderSpec>| -> Arc<dyn Provider> {
            Arc::new(spes_local::LocalProvider::new(
                name,
                self.local_config(spec),
            ))
        };
        #[cfg(feature = "local")]
        let local: Option<spes_llm::registry::LocalFactory<'_>> = Some(&factory);
        #[cfg(not(feature = "local"))]
        let local: Option<spes_llm::registry::LocalFactory<'_>> = None;
        let reg = spes_llm::ProviderRegistry::for_project(&self.config, &self.dir, &env, local)
            .map_err(Failure::Input)?;
        Ok(reg.providers())
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

    /// Names of configured providers (for validation).
    pub(crate) fn provider_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.config.providers.keys().cloned().collect();
        if !v.iter().any(|n| n == "local") {
            v.push("local".into());
        }
        v
    }
}
