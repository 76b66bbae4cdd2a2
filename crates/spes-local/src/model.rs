//! Loading a GGUF model once per process, and one generation on it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use spes_core::message::{ChatRequest, Role, StopReason};

use crate::gguf::{self, GgufInfo, ProbeError};
use crate::text::{Pushed, TextBuilder};

/// Why a model could not be loaded or run. The provider turns these into
/// [`spes_llm::ProviderError`]s.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The model file is not there.
    #[error("model file {} not found{}", path.display(), fix_hint(*default))]
    Missing {
        /// The path looked at.
        path: PathBuf,
        /// Whether it is the default model's place.
        default: bool,
    },
    /// The file is there but is not a usable GGUF file.
    #[error("{}: {source}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: ProbeError,
    },
    /// llama.cpp refused the file.
    #[error(
        "llama.cpp could not load {} (GGUF v{}, architecture `{}`): the architecture is not supported by this build of llama.cpp, or the file is damaged",
        path.display(), info.version, info.architecture.as_deref().unwrap_or("unknown")
    )]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// Its header.
        info: GgufInfo,
    },
    /// llama.cpp could not make a context (memory for the KV cache).
    #[error(
        "could not create a context of {context} tokens for {} (its KV cache needs about {kv_mib} MiB): not enough memory; lower `context` in spes.toml",
        path.display()
    )]
    Context {
        /// The file.
        path: PathBuf,
        /// Requested context size in tokens.
        context: u32,
        /// Estimated KV cache size.
        kv_mib: u64,
    },
    /// The prompt does not fit the context window.
    #[error(
        "the prompt is {prompt} tokens but the context window is {context}; shorten the prompt or raise `context` in spes.toml"
    )]
    ContextOverflow {
        /// Prompt tokens.
        prompt: usize,
        /// Context size.
        context: u32,
    },
    /// The request's JSON schema cannot be turned into a grammar.
    #[error("the step's JSON schema cannot be enforced by the local model: {0}")]
    Schema(String),
    /// The backend failed (chat template, decoding).
    #[error("{0}")]
    Backend(String),
}

fn fix_hint(default: bool) -> &'static str {
    if default {
        "; fetch the default model with `scripts/fetch-model.sh` (from the spes repository), or set `model_path` under [providers.local] in spes.toml"
    } else {
        "; check `model_path` in spes.toml (relative paths start at the project directory)"
    }
}

/// Settings for one generation.
#[derive(Debug, Clone)]
pub(crate) struct Sampling {
    pub(crate) max_tokens: u32,
    pub(crate) temperature: f32,
    pub(crate) seed: u32,
    /// A GBNF grammar the answer must follow (from the request's JSON schema).
    pub(crate) grammar: Option<String>,
    /// Answers already rejected (a repair): the generation gives none of them.
    pub(crate) avoid: Vec<String>,
}

/// The GBNF grammar for a JSON schema (llama.cpp's own converter).
pub(crate) fn schema_grammar(schema: &serde_json::Value) -> Result<String, LocalError> {
    llama_cpp_2::json_schema_to_grammar(&schema.to_string())
        .map_err(|e| LocalError::Schema(e.to_string()))
}

/// What one generation produced.
#[derive(Debug)]
pub(crate) struct Generated {
    pub(crate) text: String,
    pub(crate) stop: StopReason,
    pub(crate) prompt_tokens: usize,
    pub(crate) output_tokens: usize,
    /// Time to process the prompt (until the first token could be sampled).
    pub(crate) prompt_time: Duration,
    /// Time from the first to the last sampled token.
    pub(crate) gen_time: Duration,
}

/// A model loaded into memory. Lives for the rest of the process (models
/// are cached by path; see [`load`]), so contexts can borrow it for
/// `'static` and be kept between calls.
pub(crate) struct Model {
    pub(crate) path: PathBuf,
    pub(crate) info: GgufInfo,
    pub(crate) llama: &'static LlamaModel,
    template: LlamaChatTemplate,
    pub(crate) load_time: Duration,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn backend() -> Result<&'static LlamaBackend, LocalError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp logs to stderr by default; route it to `tracing`
            // (silent unless the embedding program installs a subscriber).
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| LocalError::Backend(format!("llama.cpp backend: {e}")))
}

/// Creating contexts concurrently is unsound in llama.cpp (it may write to
/// the model); every context is made under this lock.
static CONTEXT_LOCK: Mutex<()> = Mutex::new(());

/// Loads the model at `path`, or returns the copy this process already
/// loaded. Blocking (call it off the async runtime).
pub(crate) fn load(path: &Path, is_default: bool) -> Result<Arc<Model>, LocalError> {
    static MODELS: OnceLock<Mutex<HashMap<PathBuf, Arc<Model>>>> = OnceLock::new();
    let models = MODELS.get_or_init(Mutex::default);
    let key = std::fs::canonicalize(path).map_err(|_| LocalError::Missing {
        path: path.to_path_buf(),
        default: is_default,
    })?;
    // Held across the load: a second caller waits for the first copy
    // instead of loading another.
    let mut cache = models
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(m) = cache.get(&key) {
        return Ok(Arc::clone(m));
    }
    let info = gguf::probe(&key).map_err(|source| LocalError::BadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let backend = backend()?;
    let started = Instant::now();
    let llama =
        LlamaModel::load_from_file(backend, &key, &LlamaModelParams::default()).map_err(|_| {
            LocalError::Unsupported {
                path: path.to_path_buf(),
                info: info.clone(),
            }
        })?;
    let load_time = started.elapsed();
    // A model without a chat template gets ChatML, the most common one.
    let template = llama
        .chat_template(None)
        .or_else(|_| LlamaChatTemplate::new("chatml"))
        .map_err(|e| LocalError::Backend(format!("chat template: {e}")))?;
    let model = Arc::new(Model {
        path: path.to_path_buf(),
        info,
        llama: Box::leak(Box::new(llama)),
        template,
        load_time,
    });
    cache.insert(key, Arc::clone(&model));
    Ok(model)
}

/// Memory available to new allocations (Linux `MemAvailable`), if known.
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Context settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ContextSettings {
    pub(crate) context: u32,
    pub(crate) threads: u32,
    pub(crate) threads_batch: u32,
}

impl Model {
    /// A new inference context (KV cache) on this model.
    pub(crate) fn new_context(
        &self,
        s: ContextSettings,
    ) -> Result<LlamaContext<'static>, LocalError> {
        let backend = backend()?;
        let n_batch = s.context.min(2048);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(s.context))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch.min(512))
            .with_n_threads(i32::try_from(s.threads).unwrap_or(i32::MAX))
            .with_n_threads_batch(i32::try_from(s.threads_batch).unwrap_or(i32::MAX));
        let too_big = || LocalError::Context {
            path: self.path.clone(),
            context: s.context,
            kv_mib: self.kv_bytes(s.context) >> 20,
        };
        // Refuse at once what cannot fit: llama.cpp would try (slowly) first.
        if mem_available().is_some_and(|avail| self.kv_bytes(s.context) > avail) {
            return Err(too_big());
        }
        let _guard = CONTEXT_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.llama
            .new_context(backend, params)
            .map_err(|_| too_big())
    }

    /// Estimated KV cache size for `context` tokens at f16.
    fn kv_bytes(&self, context: u32) -> u64 {
        let m = self.llama;
        let head_dim = u64::try_from(m.n_embd()).unwrap_or(0) / u64::from(m.n_head().max(1));
        let kv_dim = head_dim * u64::from(m.n_head_kv());
        u64::from(m.n_layer()) * u64::from(context) * kv_dim * 2 * 2
    }

    /// The prompt text for a request, through the model's chat template.
    pub(crate) fn prompt(&self, req: &ChatRequest) -> Result<String, LocalError> {
        let mut chat = Vec::with_capacity(req.messages.len() + 1);
        let msg = |role: &str, content: &str| {
            LlamaChatMessage::new(role.to_owned(), content.to_owned())
                .map_err(|e| LocalError::Backend(format!("chat message: {e}")))
        };
        if let Some(system) = &req.system {
            chat.push(msg("system", system)?);
        }
        for m in &req.messages {
            let role = match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            chat.push(msg(role, &m.content)?);
        }
        self.llama
            .apply_chat_template(&self.template, &chat, true)
            .map_err(|e| LocalError::Backend(format!("chat template: {e}")))
    }

    /// Runs one generation on `ctx` (its KV cache is cleared first).
    /// `on_text` receives text as it becomes final; `cancelled` stops the
    /// loop between tokens.
    pub(crate) fn generate(
        &self,
        ctx: &mut LlamaContext<'static>,
        prompt: &str,
        sampling: &Sampling,
        stop: &[String],
        cancelled: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generated, LocalError> {
        let started = Instant::now();
        ctx.clear_kv_cache();
        let vocab = self.llama.vocab();
        let tokens = vocab.tokenize(prompt.as_bytes(), true, true);
        let n_ctx = ctx.n_ctx();
        let n_ctx_usize = usize::try_from(n_ctx).unwrap_or(usize::MAX);
        if tokens.len() >= n_ctx_usize {
            return Err(LocalError::ContextOverflow {
                prompt: tokens.len(),
                context: n_ctx,
            });
        }
        let n_batch = usize::try_from(ctx.n_batch()).unwrap_or(512).max(1);
        let mut batch = LlamaBatch::new(n_batch, 1);
        let backend_err =
            |what: &str, e: &dyn std::fmt::Display| LocalError::Backend(format!("{what}: {e}"));
        // The prompt, in batches; only the last token's logits are needed.
        let Some(last) = tokens.len().checked_sub(1) else {
            return Err(LocalError::Backend("the prompt has no tokens".into()));
        };
        for (c, chunk) in tokens.chunks(n_batch).enumerate() {
            batch.clear();
            for (j, &tok) in chunk.iter().enumerate() {
                let i = c * n_batch + j;
                let pos = i32::try_from(i).map_err(|e| backend_err("position", &e))?;
                batch
                    .add(tok, pos, &[0], i == last)
                    .map_err(|e| backend_err("batch", &e))?;
            }
            ctx.decode(&mut batch)
                .map_err(|e| backend_err("prompt decode", &e))?;
            if cancelled.load(Ordering::Relaxed) {
                return Err(LocalError::Backend("cancelled".into()));
            }
        }
        let prompt_time = started.elapsed();
        let gen_started = Instant::now();
        let first = batch.n_tokens() - 1;
        let mut run = Decoding {
            ctx,
            batch: &mut batch,
            vocab: &vocab,
            n_ctx: n_ctx_usize,
            max: usize::try_from(sampling.max_tokens).unwrap_or(usize::MAX),
            stop,
            cancelled,
        };
        let (text, stop_reason, produced) = if sampling.avoid.is_empty() {
            let mut sampler = self.sampler(sampling, sampling.seed)?;
            run.decode(tokens.len(), first, on_text, &mut |ctx, idx, _| {
                Ok(sampler.sample(ctx, idx))
            })?
        } else {
            self.avoiding(&mut run, &tokens, first, sampling, on_text)?
        };
        Ok(Generated {
            text,
            stop: stop_reason,
            prompt_tokens: tokens.len(),
            output_tokens: produced,
            prompt_time,
            gen_time: gen_started.elapsed(),
        })
    }

    /// The sampler for one generation: the grammar (when the request has a
    /// schema), then greedy or seeded sampling.
    fn sampler(&self, sampling: &Sampling, seed: u32) -> Result<LlamaSampler, LocalError> {
        let pick = if sampling.temperature <= 0.0 {
            LlamaSampler::greedy()
        } else {
            LlamaSampler::chain_simple([
                LlamaSampler::top_k(40),
                LlamaSampler::top_p(0.95, 1),
                LlamaSampler::temp(sampling.temperature),
                LlamaSampler::dist(seed),
            ])
        };
        Ok(match &sampling.grammar {
            // The grammar masks every token that would break the schema.
            Some(g) => LlamaSampler::chain_simple([self.grammar(g)?, pick]),
            None => pick,
        })
    }

    fn grammar(&self, g: &str) -> Result<LlamaSampler, LocalError> {
        LlamaSampler::grammar(self.llama, g, "root").map_err(|e| LocalError::Schema(e.to_string()))
    }

    /// A generation that gives none of `sampling.avoid` (answers a repair
    /// rejected): the same model asked again would give the same answer.
    /// Greedy decoding is searched: an attempt that repeats a rejected
    /// answer is decoded again from the position where the model was least
    /// sure (the smallest logit margin not tried yet), taking the runner-up
    /// token there. Sampled decoding tries the next seeds. At most
    /// [`AVOID_ATTEMPTS`] attempts; the last one is the answer whatever it
    /// is. Text is shown once, when the answer is settled.
    fn avoiding(
        &self,
        run: &mut Decoding<'_, '_>,
        tokens: &[llama_cpp_2::token::LlamaToken],
        first: i32,
        sampling: &Sampling,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<(String, StopReason, usize), LocalError> {
        use llama_cpp_2::token::LlamaToken;
        let greedy = sampling.temperature <= 0.0;
        let mut forced: Vec<(usize, LlamaToken)> = Vec::new();
        let mut tried: Vec<(usize, LlamaToken)> = Vec::new();
        let mut idx = first;
        let mut quiet = |_: &str| {};
        let mut last = None;
        for attempt in 0..AVOID_ATTEMPTS {
            if attempt > 0 {
                idx = run.rewind(tokens)?;
            }
            let mut choices: Vec<Choice> = Vec::new();
            let got = if greedy {
                let mut grammar = sampling
                    .grammar
                    .as_deref()
                    .map(|g| self.grammar(g))
                    .transpose()?;
                let forced = &forced;
                let choices = &mut choices;
                run.decode(tokens.len(), idx, &mut quiet, &mut |ctx, idx, at| {
                    let mut arr = ctx.token_data_array_ith(idx);
                    if let Some(g) = grammar.as_mut() {
                        arr.apply_sampler(g);
                    }
                    let (best, second) = best_two(&arr.data);
                    let Some((best, best_logit)) = best else {
                        return Err(LocalError::Backend("no token is allowed here".into()));
                    };
                    let tok = forced
                        .iter()
                        .find(|(i, _)| *i == at)
                        .map_or(best, |&(_, t)| t);
                    // The runner-up to what was taken, and how close it was.
                    let alt = if tok == best {
                        second
                    } else {
                        Some((best, best_logit))
                    };
                    choices.push(Choice {
                        at,
                        alt: alt.map(|(t, l)| (t, best_logit - l)),
                    });
                    if let Some(g) = grammar.as_mut() {
                        g.accept(tok);
                    }
                    Ok(tok)
                })?
            } else {
                let mut sampler = self.sampler(sampling, sampling.seed.wrapping_add(attempt))?;
                run.decode(tokens.len(), idx, &mut quiet, &mut |ctx, idx, _| {
                    Ok(sampler.sample(ctx, idx))
                })?
            };
            let repeats = sampling.avoid.iter().any(|a| same_answer(a, &got.0));
            last = Some(got);
            if !repeats {
                break;
            }
            if greedy {
                // Branch where the model was least sure, among branches not taken.
                let next = choices
                    .iter()
                    .filter_map(|c| c.alt.map(|(t, m)| (c.at, t, m)))
                    .filter(|(at, t, _)| !tried.contains(&(*at, *t)))
                    .min_by(|a, b| a.2.total_cmp(&b.2));
                let Some((at, tok, _)) = next else { break };
                forced.retain(|(i, _)| *i < at);
                forced.push((at, tok));
                tried.push((at, tok));
            }
        }
        let got = last.ok_or_else(|| LocalError::Backend("no attempt was made".into()))?;
        if !got.0.is_empty() {
            on_text(&got.0);
        }
        Ok(got)
    }
}

/// Attempts a generation that must avoid rejected answers makes at most.
const AVOID_ATTEMPTS: u32 = 12;

/// At one generated position: the runner-up token and its logit margin
/// below the best.
struct Choice {
    at: usize,
    alt: Option<(llama_cpp_2::token::LlamaToken, f32)>,
}

/// A token and its logit.
type Scored = (llama_cpp_2::token::LlamaToken, f32);

/// The two allowed tokens with the highest logits (a grammar marks the
/// others with negative infinity).
fn best_two(data: &[llama_cpp_2::token::data::LlamaTokenData]) -> (Option<Scored>, Option<Scored>) {
    let mut best: Option<Scored> = None;
    let mut second = None;
    for d in data {
        let l = d.logit();
        if !l.is_finite() {
            continue;
        }
        match best {
            Some((_, b)) if l <= b => {
                if second.is_none_or(|(_, s)| l > s) {
                    second = Some((d.id(), l));
                }
            }
            _ => {
                second = best;
                best = Some((d.id(), l));
            }
        }
    }
    (best, second)
}

/// Two answers are the same when their trimmed texts are, or when both are
/// JSON with equal values (a repeat with other spacing is still a repeat).
pub(crate) fn same_answer(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim(), b.trim());
    if a == b {
        return true;
    }
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// The decoding loop's state after the prompt: the context, its batch, and
/// the limits of one generation.
struct Decoding<'c, 'a> {
    ctx: &'c mut LlamaContext<'static>,
    batch: &'c mut LlamaBatch<'a>,
    vocab: &'c llama_cpp_2::vocab::LlamaVocab<'static>,
    n_ctx: usize,
    max: usize,
    stop: &'c [String],
    cancelled: &'c AtomicBool,
}

/// Picks the token at a position: `(context, logits index, tokens produced so far)`.
type Pick<'p> = dyn FnMut(&LlamaContext<'static>, i32, usize) -> Result<llama_cpp_2::token::LlamaToken, LocalError>
    + 'p;

impl Decoding<'_, '_> {
    /// Generates from position `pos` (the prompt's length), the next
    /// token's logits at batch index `idx`, until an end of turn, a stop
    /// sequence, `max` tokens or the context's end.
    fn decode(
        &mut self,
        mut pos: usize,
        mut idx: i32,
        on_text: &mut dyn FnMut(&str),
        pick: &mut Pick<'_>,
    ) -> Result<(String, StopReason, usize), LocalError> {
        let backend_err =
            |what: &str, e: &dyn std::fmt::Display| LocalError::Backend(format!("{what}: {e}"));
        let mut out = TextBuilder::new(self.stop);
        let mut piece = Vec::with_capacity(32);
        let mut produced = 0usize;
        let stop_reason = loop {
            if produced >= self.max || pos >= self.n_ctx {
                break StopReason::MaxTokens;
            }
            if self.cancelled.load(Ordering::Relaxed) {
                return Err(LocalError::Backend("cancelled".into()));
            }
            let tok = pick(self.ctx, idx, produced)?;
            if self.vocab.is_eog(tok) {
                break StopReason::EndTurn;
            }
            produced += 1;
            piece.clear();
            self.vocab.token_to_piece_into(tok, &mut piece, false, None);
            match out.push(&piece) {
                Pushed::Delta(d) => {
                    if !d.is_empty() {
                        on_text(d);
                    }
                }
                Pushed::Stopped(d) => {
                    if !d.is_empty() {
                        on_text(d);
                    }
                    break StopReason::StopSequence;
                }
            }
            self.batch.clear();
            let p = i32::try_from(pos).map_err(|e| backend_err("position", &e))?;
            self.batch
                .add(tok, p, &[0], true)
                .map_err(|e| backend_err("batch", &e))?;
            self.ctx
                .decode(self.batch)
                .map_err(|e| backend_err("decode", &e))?;
            idx = self.batch.n_tokens() - 1;
            pos += 1;
        };
        if stop_reason != StopReason::StopSequence {
            let rest = out.finish();
            if !rest.is_empty() {
                on_text(rest);
            }
        }
        Ok((out.into_text(), stop_reason, produced))
    }

    /// Forgets everything generated after the prompt and decodes the
    /// prompt's last token again (its logits start the next attempt).
    /// Returns the logits index.
    fn rewind(&mut self, tokens: &[llama_cpp_2::token::LlamaToken]) -> Result<i32, LocalError> {
        let backend_err =
            |what: &str, e: &dyn std::fmt::Display| LocalError::Backend(format!("{what}: {e}"));
        let last = tokens.len() - 1;
        let at = u32::try_from(last).map_err(|e| backend_err("position", &e))?;
        self.ctx
            .clear_kv_cache_seq(Some(0), Some(at), None)
            .map_err(|e| backend_err("cache", &e))?;
        self.batch.clear();
        let p = i32::try_from(last).map_err(|e| backend_err("position", &e))?;
        self.batch
            .add(tokens[last], p, &[0], true)
            .map_err(|e| backend_err("batch", &e))?;
        self.ctx
            .decode(self.batch)
            .map_err(|e| backend_err("decode", &e))?;
        Ok(self.batch.n_tokens() - 1)
    }
}
