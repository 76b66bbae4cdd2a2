//! [`LocalProvider`]: the embedded model behind the [`Provider`] trait.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use llama_cpp_2::context::LlamaContext;
use spes_core::config::ProviderSpec;
use spes_core::message::{ChatRequest, ChatResponse, StopReason, Usage};
use spes_llm::{CallContext, Provider, ProviderError, ProviderErrorKind};
use tokio::sync::{OnceCell, Semaphore};

use crate::model::{self, ContextSettings, LocalError, Model, Sampling};

/// The default model's file name (see `scripts/fetch-model.sh`).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Its sha256, as `scripts/fetch-model.sh` checks it.
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Where the default model lives: `$SPES_MODEL_DIR`, else
/// `$XDG_CACHE_HOME/spes/models`, else `~/.cache/spes/models` (the place
/// `scripts/fetch-model.sh` puts it).
#[must_use]
pub fn default_model_path() -> PathBuf {
    default_model_path_with(|v| std::env::var_os(v))
}

/// [`default_model_path`] with the environment given as a function (tests).
pub fn default_model_path_with(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let dir = env("SPES_MODEL_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            env("XDG_CACHE_HOME")
                .filter(|d| !d.is_empty())
                .map(|c| PathBuf::from(c).join("spes/models"))
        })
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache/spes/models")))
        .unwrap_or_else(|| PathBuf::from(".spes/models"));
    dir.join(DEFAULT_MODEL_FILE)
}

/// Inference threads used when `threads` is not set: every core but one
/// (at least 1, at most 8), so the engine, the store and the rest of the
/// machine keep a core. Measured with the `local` benchmark on a 2-core
/// machine (SmolLM2-135M Q4_1, 271-token prompt, 256 generated): 1 thread
/// gives 186 prompt tok/s and 72 generated tok/s, 2 threads 357 and 106,
/// at the price of both cores. Past about 8 threads, generation is bound
/// by memory bandwidth and more threads only take cores from everything
/// else. Set `threads` in spes.toml on a machine dedicated to inference.
#[must_use]
pub fn default_threads() -> u32 {
    // Asked once per process: the answer reads the cgroup files.
    static THREADS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        u32::try_from(cores.saturating_sub(1).clamp(1, 8)).unwrap_or(1)
    })
}

/// Settings of a local provider.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The GGUF file.
    pub model_path: PathBuf,
    /// Whether `model_path` is the default model (changes the hint when it is missing).
    pub is_default_model: bool,
    /// The name reported as the answering model (default: the file name without `.gguf`).
    pub model_name: String,
    /// Context window in tokens (default 4096).
    pub context: u32,
    /// Threads for generation (default [`default_threads`]).
    pub threads: u32,
    /// Threads for prompt processing (default: the same as `threads`).
    pub threads_batch: u32,
    /// Generations at once, each with its own KV cache (default 1); more
    /// requests wait for a free slot.
    pub slots: u32,
    /// `max_tokens` when the request names none (default 512).
    pub max_tokens: u32,
    /// Sampling seed for temperatures above 0 (default 0). Temperature 0
    /// (or none) is greedy and needs no seed.
    pub seed: u32,
}

impl LocalConfig {
    /// Defaults for the model at `path`.
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let model_path = path.into();
        let threads = default_threads();
        Self {
            model_name: model_name_of(&model_path),
            is_default_model: false,
            model_path,
            context: 4096,
            threads,
            threads_batch: threads,
            slots: 1,
            max_tokens: 512,
            seed: 0,
        }
    }

    /// The default model, from [`default_model_path`].
    #[must_use]
    pub fn default_model() -> Self {
        Self {
            is_default_model: true,
            ..Self::new(default_model_path())
        }
    }

    /// Settings from a `[providers.NAME]` table with `kind = "local"`;
    /// relative paths start at `project_dir`.
    #[must_use]
    pub fn from_spec(spec: &ProviderSpec, project_dir: &Path) -> Self {
        let mut c = match &spec.model_path {
            Some(p) => Self::new(project_dir.join(p)),
            None => Self::default_model(),
        };
        if let Some(m) = &spec.model {
            c.model_name.clone_from(m);
        }
        if let Some(n) = spec.context {
            c.context = n;
        }
        if let Some(t) = spec.threads {
            c.threads = t.max(1);
            c.threads_batch = c.threads;
        }
        if let Some(s) = spec.slots {
            c.slots = s.max(1);
        }
        if let Some(m) = spec.max_tokens {
            c.max_tokens = m;
        }
        if let Some(s) = spec.seed {
            c.seed = s;
        }
        c
    }
}

fn model_name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy())
        .map(|n| n.strip_suffix(".gguf").unwrap_or(&n).to_owned())
        .unwrap_or_else(|| "local".into())
}

/// A GGUF model run in-process by llama.cpp.
///
/// The model is loaded on the first call (and once per process, whatever
/// the number of providers naming the same file); `slots` generations run
/// at once, each on its own context, and the rest wait their turn.
/// Inference runs on blocking threads, never on the async runtime.
pub struct LocalProvider {
    name: String,
    config: LocalConfig,
    model: OnceCell<Arc<Model>>,
    slots: Arc<Semaphore>,
    contexts: Arc<Mutex<Vec<LlamaContext<'static>>>>,
    calls: AtomicU64,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("loaded", &self.model.initialized())
            .finish_non_exhaustive()
    }
}

/// Sets a flag when dropped: a dropped call (a step timeout, a cancelled
/// run) stops its generation at the next token.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl LocalProvider {
    /// A provider named `name` with `config`. Nothing is loaded until the first call.
    #[must_use]
    pub fn new(name: impl Into<String>, config: LocalConfig) -> Self {
        let slots = usize::try_from(config.slots.max(1)).unwrap_or(1);
        Self {
            name: name.into(),
            slots: Arc::new(Semaphore::new(slots)),
            contexts: Arc::default(),
            config,
            model: OnceCell::new(),
            calls: AtomicU64::new(0),
        }
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &LocalConfig {
        &self.config
    }

    fn error(&self, e: &LocalError) -> ProviderError {
        let kind = match e {
            LocalError::ContextOverflow { .. } => ProviderErrorKind::ContextOverflow,
            LocalError::Schema(_) => ProviderErrorKind::InvalidRequest,
            _ => ProviderErrorKind::Config,
        };
        ProviderError::new(&self.name, kind, e.to_string()).with_provider_type("local")
    }

    /// Loads the model now (it is otherwise loaded by the first call);
    /// returns the load time of this process's copy.
    ///
    /// # Errors
    ///
    /// A [`ProviderErrorKind::Config`] error naming the problem and its fix.
    pub async fn load(&self) -> Result<std::time::Duration, ProviderError> {
        Ok(self.model().await?.load_time)
    }

    async fn model(&self) -> Result<&Arc<Model>, ProviderError> {
        self.model
            .get_or_try_init(|| async {
                let path = self.config.model_path.clone();
                let default = self.config.is_default_model;
                tokio::task::spawn_blocking(move || model::load(&path, default))
                    .await
                    .map_err(|e| LocalError::Backend(format!("model loading stopped: {e}")))?
            })
            .await
            .map_err(|e| self.error(&e))
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    fn default_model(&self) -> Option<&str> {
        Some(&self.config.model_name)
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        cx: &CallContext,
    ) -> Result<ChatResponse, ProviderError> {
        let started = Instant::now();
        let model = Arc::clone(self.model().await?);
        // Tools: described in the system text, the answer constrained to a
        // tool call or an answer; tool turns written into the chat.
        let tooled = crate::tools::offers_tools(req);
        let has_tool_turns = req
            .messages
            .iter()
            .any(|m| !m.tool_calls.is_empty() || !m.tool_results.is_empty());
        let chat;
        let for_prompt = if tooled {
            chat = crate::tools::as_chat(req);
            &chat
        } else if has_tool_turns {
            chat = ChatRequest {
                messages: req
                    .messages
                    .iter()
                    .map(crate::tools::chat_message)
                    .collect(),
                ..req.clone()
            };
            &chat
        } else {
            req
        };
        let prompt = model.prompt(for_prompt).map_err(|e| self.error(&e))?;
        // The permit and the context travel with the blocking task: a call
        // dropped mid-generation (a step timeout) frees its slot only when
        // the generation has actually stopped.
        let permit = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| self.error(&LocalError::Backend("provider closed".into())))?;
        let settings = ContextSettings {
            context: self.config.context,
            threads: self.config.threads,
            threads_batch: self.config.threads_batch,
        };
        let grammar = if tooled {
            Some(
                model::schema_grammar(&crate::tools::answer_schema(req))
                    .map_err(|e| self.error(&e))?,
            )
        } else {
            req.json_schema
                .as_deref()
                .map(model::schema_grammar)
                .transpose()
                .map_err(|e| self.error(&e))?
        };
        let sampling = Sampling {
            max_tokens: req.max_tokens.unwrap_or(self.config.max_tokens),
            temperature: req.temperature.unwrap_or(0.0),
            seed: self.config.seed,
            grammar,
            avoid: req.avoid.clone(),
        };
        let stop = req.stop.clone();
        let on_delta = cx.on_delta.clone();
        let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let cancelled = Arc::clone(&cancel.0);
        let contexts = Arc::clone(&self.contexts);
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pooled = contexts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            let mut ctx = match pooled {
                Some(c) => c,
                None => model.new_context(settings)?,
            };
            let mut sink = |d: &str| {
                if let Some(f) = &on_delta {
                    f(d);
                }
            };
            let r = model.generate(&mut ctx, &prompt, &sampling, &stop, &cancelled, &mut sink);
            contexts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(ctx);
            r
        })
        .await
        .map_err(|e| self.error(&LocalError::Backend(format!("generation stopped: {e}"))))?;
        drop(cancel);
        let g = result.map_err(|e| self.error(&e))?;
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(
            provider = %self.name,
            step = %cx.step_key,
            prompt_tokens = g.prompt_tokens,
            output_tokens = g.output_tokens,
            prompt_ms = g.prompt_time.as_millis(),
            gen_ms = g.gen_time.as_millis(),
            "local generation"
        );
        let (text, tool_calls, stop_reason) = if tooled {
            match crate::tools::read_answer(&g.text, n) {
                Ok((text, calls)) if calls.is_empty() => (text, calls, g.stop),
                Ok((text, calls)) => (text, calls, StopReason::ToolUse),
                Err(why) => {
                    // The grammar allows only complete answers: this one was cut.
                    let kind = if g.stop == StopReason::MaxTokens {
                        ProviderErrorKind::Truncated
                    } else {
                        ProviderErrorKind::BadResponse
                    };
                    return Err(ProviderError::new(
                        &self.name,
                        kind,
                        format!("{why}; raise `max_tokens` if the call was cut"),
                    )
                    .with_provider_type("local"));
                }
            }
        } else {
            (g.text, Vec::new(), g.stop)
        };
        Ok(ChatResponse {
            text,
            stop_reason,
            usage: Usage {
                input_tokens: g.prompt_tokens as u64,
                output_tokens: g.output_tokens as u64,
                ..Usage::default()
            },
            // The file that answered, whatever model name the request carried
            // (a workflow written for a remote model may degrade to this one).
            model: Some(self.config.model_name.clone()),
            request_id: Some(format!("local-{}-{n}", std::process::id())),
            latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            tool_calls,
        })
    }
}
