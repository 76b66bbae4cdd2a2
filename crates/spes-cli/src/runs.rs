//! `spes resume | pause | cancel` and `spes runs list | show | replay`.

use crate::term::say;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use spes_engine::{Effect, RunError, WorkflowSource};
use spes_store::{Run, RunStatus, RunStore};

use crate::project::Project;
use crate::{Failure, build_engine, finish, out};

#[derive(clap::Args, Debug)]
pub(crate) struct ResumeArgs {
    /// Run id (or a unique prefix of at least 4 characters).
    run: String,
    /// Resume even if the workflow file or a component changed since the run started.
    #[arg(long)]
    allow_changes: bool,
    /// Provider used by steps and agents that name none.
    #[arg(long, env = "SPES_PROVIDER")]
    provider: Option<String>,
    /// Print the whole context as JSON instead of the result.
    #[arg(long)]
    json: bool,
    /// No progress on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Answer human gates here, reading stdin (the default on a terminal).
    #[arg(long, conflicts_with = "detach")]
    interactive: bool,
    /// Never ask here: a human gate suspends the run again.
    #[arg(long)]
    detach: bool,
    /// Raise (or lower) the run's budget: tokens=N,cost=DOLLARS,calls=N; recorded with the run.
    #[arg(long, value_name = "LIMITS", value_parser = crate::parse_budget)]
    budget: Option<spes_core::budget::Budget>,
    /// Serve temperature-0 model calls answered before from the response cache.
    #[arg(long)]
    cache: bool,
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum RunsCmd {
    /// List runs, newest first.
    List {
        /// Only runs with this status (pending, running, waiting, paused, completed, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON: `{ schema, runs: [{ id, status, workflow, workflow_path, created_at, updated_at, error }] }`.
        #[arg(long)]
        json: bool,
    },
    /// A run's timeline: steps, durations, providers, tokens.
    Show {
        /// Run id (or a unique prefix).
        run: String,
        /// Also show each model call's rendered prompt and its answer (re-rendered from the journal; no model is called).
        #[arg(long)]
        prompts: bool,
        /// Print JSON: `{ schema, run: {...}, entries: [...], gates: [...] }`.
        #[arg(long, conflicts_with = "prompts")]
        json: bool,
    },
    /// Gates waiting for a human, across runs.
    Pending {
        /// Print JSON: `{ schema, gates: [{ run_id, key, kind, opened_at, deadline, request }] }`.
        #[arg(long)]
        json: bool,
    },
    /// Re-execute a finished run from its journal with zero model calls; exit 0 if the output is identical.
    Replay {
        /// Run id (or a unique prefix).
        run: String,
        /// Replay even if the workflow or a component changed (that is the point of a regression check).
        #[arg(long, default_value_t = true)]
        allow_changes: bool,
    },
    /// Delete finished runs (completed, failed, cancelled) older than a duration, with their journals and gates.
    Prune(crate::prune::PruneArgs),
    /// What model calls cost: calls, tokens and US dollars (from the prices in spes.toml), by workflow, model or day.
    Cost(crate::cost::CostArgs),
    /// Start a new run from RUN's journal up to a step: the steps before it
    /// answer from the record, STEP and what follows run anew on the
    /// current files (time travel).
    Fork {
        /// Run id (or a unique prefix).
        run: String,
        /// The top-level step to execute again (and everything after it).
        #[arg(long)]
        at: String,
        /// An input to change: --input topic="rust" (the others are the run's).
        #[arg(long = "input", short = 'i', value_name = "KEY=VALUE")]
        inputs: Vec<String>,
        /// Print the whole context as JSON instead of the result.
        #[arg(long)]
        json: bool,
        /// No progress on stderr.
        #[arg(long, short)]
        quiet: bool,
    },
}

/// The store URL: `--store`, else `[store] url`, else `.spes/spes.db` beside spes.toml.
pub(crate) async fn open_store(
    project: &Project,
    url: Option<&str>,
) -> Result<Arc<dyn RunStore>, Failure> {
    // One process, one run: its reads (the pause/cancel status, shared by
    // the steps in flight; gate decisions) are rare and short, and each
    // SQLite connection costs a thread, its file opens and a read of the
    // schema at start-up: they share the writer's connection.
    open_store_with(project, url, 0).await
}

/// [`open_store`] with `readers` SQLite reader connections (0: reads share
/// the writer; `spes serve` reads for many clients at once).
pub(crate) async fn open_store_with(
    project: &Project,
    url: Option<&str>,
    readers: u32,
) -> Result<Arc<dyn RunStore>, Failure> {
    let url = url
        .map(str::to_owned)
        .or_else(|| project.config.store.url.clone())
        .unwrap_or_else(|| "sqlite://.spes/spes.db".into());
    // A relative SQLite path is relative to the project (spes.toml's directory).
    let url = match url.strip_prefix("sqlite://") {
        Some(path) => format!("sqlite://{}", project.rel(Path::new(path)).display()),
        None => url,
    };
    let mut opts = spes_store::OpenOptions {
        postgres: project.postgres_options()?,
        ..spes_store::OpenOptions::default()
    };
    opts.sqlite = opts.sqlite.with_readers(readers);
    if let Some(d) = &project.config.store.durability {
        let d = d
            .parse::<spes_store::sqlite::Durability>()
            .map_err(|e| Failure::Usage(format!("[store] durability in spes.toml: {e}")))?;
        opts.sqlite = opts.sqlite.with_durability(d);
    }
    let store = spes_store::open_url_with(&url, &opts).await?;
    // On a store many processes share (PostgreSQL), providers' rate limits
    // hold across all of them.
    spes_engine::limits::share_through(&store);
    if let Ok(mut open) = OPEN.lock() {
        open.push(store.clone());
    }
    Ok(store)
}

/// Stores opened by this process, closed when the command ends.
static OPEN: Mutex<Vec<Arc<dyn RunStore>>> = Mutex::new(Vec::new());

/// Closes every store this process opened.
pub(crate) async fn close_stores() {
    let stores: Vec<Arc<dyn RunStore>> = OPEN
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default();
    for s in stores {
        s.close().await;
    }
}

/// The workflow file as a run pins it.
/// The source of a run from the text read from `file`.
pub(crate) fn source_from(file: &Path, text: String) -> WorkflowSource {
    let path = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    WorkflowSource {
        path: path.display().to_string(),
        text,
    }
}

fn cwd() -> PathBuf {
    std::env::current_dir().unwrap_or_default()
}

/// Finds a run in the store of the project around the working directory.
async fn find(
    config: Option<&Path>,
    store_url: Option<&str>,
    run: &str,
) -> Result<(Project, Arc<dyn RunStore>, Run), Failure> {
    let project = Project::discover(config, &cwd())?;
    let store = open_store(&project, store_url).await?;
    let run = store.find_run(run).await?;
    Ok((project, store, run))
}

pub(crate) async fn resume(
    config: Option<&Path>,
    store_url: Option<&str>,
    args: ResumeArgs,
) -> Result<(), Failure> {
    let (_, store, mut run) = find(config, store_url, &args.run).await?;
    spes_engine::ops::apply_deadlines(store.as_ref(), Some(&run.id), chrono::Utc::now()).await?;
    if let Some(b) = &args.budget {
        // Recorded with the run, so that workers and later resumes keep it.
        run.settings.budget = Some(run.settings.budget.unwrap_or_default().overridden_by(b));
        store.set_settings(&run.id, &run.settings).await?;
    }
    // A run queued for workers is resumed by queueing it again: executing
    // it here as well could race a worker that takes it.
    if crate::worker::requeue(&store, &run, args.quiet).await? {
        return Ok(());
    }
    let file = PathBuf::from(&run.workflow_path);
    // The workflow's own project (its spes.toml) decides providers and components.
    let project = Project::discover(config, &file)?;
    let (wf, _, source) = crate::load_with_source(&project, &file)?;
    // The provider the run was started with, unless another is asked for
    // (which the engine refuses without --allow-changes).
    let engine = build_engine(
        &project,
        args.provider
            .as_deref()
            .or(run.settings.provider.as_deref()),
        args.quiet,
        None,
        crate::interactive(args.interactive, args.detach),
    )?;
    let engine = crate::with_cache(engine, &project, &store, args.cache);
    let started = std::time::Instant::now();
    let end = crate::interruptible(
        &store,
        engine.resume(store.clone(), &run, &wf, &source, args.allow_changes),
    )
    .await?
    .map_err(run_error)?;
    finish(&wf, Some(run.id), end, started, args.quiet, args.json)
}

fn run_error(e: RunError) -> Failure {
    match e {
        RunError::Step(s) => Failure::Run(s),
        RunError::Store(s) => Failure::from(s),
        other => Failure::Usage(other.to_string()),
    }
}

pub(crate) async fn pause(
    config: Option<&Path>,
    store_url: Option<&str>,
    run: &str,
    cancel: bool,
) -> Result<(), Failure> {
    let project = Project::discover(config, &cwd())?;
    let store = open_store(&project, store_url).await?;
    let c = if cancel {
        spes_engine::ops::cancel(store.as_ref(), run).await?
    } else {
        spes_engine::ops::pause(store.as_ref(), run).await?
    };
    let note = if cancel {
        match c.closed.len() {
            0 => String::new(),
            1 => format!(" (its gate `{}` is closed)", c.closed[0]),
            n => format!(" (its {n} open gates are closed)"),
        }
    } else if c.before.status == RunStatus::Running {
        " (it stops before its next model call; `spes resume` continues it)".to_owned()
    } else {
        " (`spes resume` continues it)".to_owned()
    };
    say!("run {} is {}{note}", c.after.id, c.after.status);
    Ok(())
}

pub(crate) async fn runs(
    config: Option<&Path>,
    store_url: Option<&str>,
    cmd: RunsCmd,
) -> Result<(), Failure> {
    match cmd {
        RunsCmd::List {
            status,
            limit,
            json,
        } => {
            let project = Project::discover(config, &cwd())?;
            let store = open_store(&project, store_url).await?;
            let status = status
                .map(|s| s.parse::<RunStatus>())
                .transpose()
                .map_err(Failure::Usage)?;
            let runs = store.list_runs(status, limit).await?;
            if json {
                crate::term::out_doc(&spes_engine::view::RunList {
                    schema: spes_engine::view::VERSION,
                    runs: runs.iter().map(spes_engine::view::RunSummary::of).collect(),
                });
                return Ok(());
            }
            let mut rows = vec![[
                "RUN".to_owned(),
                "STATUS".to_owned(),
                "WORKFLOW".to_owned(),
                "STARTED".to_owned(),
                "UPDATED".to_owned(),
            ]];
            for r in &runs {
                rows.push([
                    r.id.to_string(),
                    spes_engine::ops::shown_status(r),
                    r.workflow_name.clone(),
                    r.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    r.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                ]);
            }
            out(&table(&rows));
            Ok(())
        }
        RunsCmd::Show { run, prompts, json } => {
            if json {
                show_json(config, store_url, &run).await
            } else {
                show(config, store_url, &run, prompts).await
            }
        }
        RunsCmd::Pending { json } => crate::gates::pending(config, store_url, json).await,
        RunsCmd::Prune(args) => crate::prune::prune(config, store_url, args).await,
        RunsCmd::Cost(args) => crate::cost::cost(config, store_url, args).await,
        RunsCmd::Fork {
            run,
            at,
            inputs,
            json,
            quiet,
        } => {
            let (_, store, run) = find(config, store_url, &run).await?;
            let file = PathBuf::from(&run.workflow_path);
            let project = Project::discover(config, &file)?;
            let (wf, _, source) = crate::load_with_source(&project, &file)?;
            let mut given = std::collections::BTreeMap::new();
            for i in &inputs {
                let (k, v) = crate::split_kv(i, "--input")?;
                given.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            let engine = build_engine(
                &project,
                run.settings.provider.as_deref(),
                quiet,
                None,
                false,
            )?;
            let started = std::time::Instant::now();
            let (id, end) = crate::interruptible(
                &store,
                engine.fork(store.clone(), &run, &wf, &source, &at, given),
            )
            .await?
            .map_err(run_error)?;
            if !quiet {
                say!("run {id} forked from run {} at step `{at}`", run.id);
            }
            finish(&wf, Some(id), end, started, quiet, json)
        }
        RunsCmd::Replay { run, allow_changes } => {
            let (_, store, run) = find(config, store_url, &run).await?;
            let file = PathBuf::from(&run.workflow_path);
            let project = Project::discover(config, &file)?;
            let (wf, _, source) = crate::load_with_source(&project, &file)?;
            if !allow_changes && let Some(d) = spes_engine::durable::drift(&run, &wf, &source) {
                return Err(Failure::Usage(d.to_string()));
            }
            let engine = build_engine(&project, None, true, None, false)?;
            let r = engine.replay(store, &run, &wf).await.map_err(run_error)?;
            if let Some(step) = &r.request_changed {
                return Err(Failure::Stopped(
                    1,
                    format!(
                        "✗ replayed run {}: step `{step}` would now send another request than the one recorded (its prompt or settings changed since the run); its recorded answer no longer fits it",
                        run.id
                    ),
                ));
            }
            if r.identical {
                say!(
                    "✓ replayed run {} from its journal ({} recorded effects, 0 model calls): output identical",
                    run.id,
                    r.replayed
                );
                Ok(())
            } else {
                let show = |v: &Option<Value>| {
                    serde_json::to_string_pretty(v.as_ref().unwrap_or(&Value::Null))
                        .unwrap_or_default()
                };
                Err(Failure::Stopped(
                    1,
                    format!(
                        "✗ replayed run {} differs\n--- recorded\n{}\n+++ replayed\n{}",
                        run.id,
                        show(&r.recorded),
                        show(&r.output)
                    ),
                ))
            }
        }
    }
}

pub(crate) fn table(rows: &[[String; 5]]) -> String {
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:w$}  ", w = widths[i]);
            }
        }
        s.push('\n');
    }
    s
}

/// `runs show --json`: the run, its journal and its gates.
async fn show_json(
    config: Option<&Path>,
    store_url: Option<&str>,
    run_ref: &str,
) -> Result<(), Failure> {
    let (_, store, run) = find(config, store_url, run_ref).await?;
    spes_engine::ops::apply_deadlines(store.as_ref(), Some(&run.id), chrono::Utc::now()).await?;
    let run = store.run(&run.id).await?.unwrap_or(run);
    let entries = store.entries(&run.id).await?;
    let gates = store
        .gates(&spes_store::GateFilter {
            run_id: Some(run.id),
            pending_only: false,
        })
        .await?;
    crate::term::out_doc(&spes_engine::view::RunShow::of(&run, &entries, &gates));
    Ok(())
}

async fn show(
    config: Option<&Path>,
    store_url: Option<&str>,
    run_ref: &str,
    prompts: bool,
) -> Result<(), Failure> {
    let (_, store, run) = find(config, store_url, run_ref).await?;
    // A deadline that passed is applied before anything is shown.
    spes_engine::ops::apply_deadlines(store.as_ref(), Some(&run.id), chrono::Utc::now()).await?;
    let entries = store.entries(&run.id).await?;
    let gates = store
        .gates(&spes_store::GateFilter {
            run_id: Some(run.id),
            pending_only: false,
        })
        .await?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "run {}  {}  {}",
        run.id,
        run.workflow_name,
        spes_engine::ops::shown_status(&run)
    );
    let _ = writeln!(
        s,
        "  workflow: {} (sha256 {})",
        run.workflow_path,
        &run.workflow_hash[..12.min(run.workflow_hash.len())]
    );
    let _ = writeln!(
        s,
        "  started:  {}",
        run.created_at.format("%Y-%m-%d %H:%M:%S%.3f UTC")
    );
    let _ = writeln!(
        s,
        "  updated:  {}",
        run.updated_at.format("%Y-%m-%d %H:%M:%S%.3f UTC")
    );
    if let Some(p) = &run.settings.provider {
        let _ = writeln!(s, "  provider: {p} (pinned: a resume uses it)");
    }
    if let Value::Object(m) = &run.inputs {
        for (k, v) in m {
            let shown = match v {
                Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            let one_line: String = shown.split_whitespace().collect::<Vec<_>>().join(" ");
            let cut = if one_line.chars().count() > 80 {
                format!(
                    "{}… ({} chars)",
                    one_line.chars().take(80).collect::<String>(),
                    shown.chars().count()
                )
            } else {
                one_line
            };
            let _ = writeln!(s, "  input {k}: {cut}");
        }
    }
    for p in &run.pins {
        let what = match p.reference.strip_prefix("schema:") {
            Some(file) => format!("schema {file}"),
            None => format!("component {}", p.reference),
        };
        let _ = writeln!(
            s,
            "  {what} (sha256 {})",
            &p.sha256[..12.min(p.sha256.len())]
        );
    }
    if let Some(e) = &run.error {
        let _ = writeln!(s, "  error: {e}");
    }
    let _ = writeln!(s, "timeline:");
    let (mut tin, mut tout, mut calls, mut ncached) = (0u64, 0u64, 0u64, 0u64);
    let mut cost: Option<f64> = None;
    let mut prev = run.created_at;
    for e in &entries {
        let since = (e.recorded_at - prev).num_milliseconds();
        prev = e.recorded_at;
        let detail = match Effect::from_entry(&e.kind, &e.payload) {
            Ok(Effect::Model {
                provider,
                model,
                response,
                components,
                cost_usd,
                cached,
                ..
            }) => {
                if cached {
                    ncached += 1;
                } else {
                    calls += 1;
                    tin += response.usage.input_tokens;
                    tout += response.usage.output_tokens;
                    spes_engine::run::add_cost(&mut cost, cost_usd);
                }
                format!(
                    "{provider}/{} · {}→{} tok · {} ms{}{}{}",
                    model.unwrap_or_default(),
                    response.usage.input_tokens,
                    response.usage.output_tokens,
                    response.latency_ms,
                    if cached {
                        " · cached".to_owned()
                    } else {
                        cost_usd
                            .map(|c| format!(" · {}", crate::fmt_cost(c)))
                            .unwrap_or_default()
                    },
                    if components.is_empty() {
                        String::new()
                    } else {
                        format!(" · {}", components.join(", "))
                    },
                    if response.stop_reason == spes_core::message::StopReason::MaxTokens {
                        " · ⚠ truncated (stopped at max_tokens)"
                    } else {
                        ""
                    }
                )
            }
            Ok(Effect::Decision { decision }) => format!("decision {decision}"),
            Ok(Effect::Clock { at_ms }) => format!("clock {at_ms}"),
            Ok(_) => e.kind.clone(),
            Err(err) => format!("unreadable entry: {err}"),
        };
        let _ = writeln!(
            s,
            "  {:>3}  +{:>6} ms  {:<32} {detail}",
            e.seq, since, e.key
        );
    }
    let _ = writeln!(
        s,
        "  {calls} model call{}, {tin}→{tout} tokens{}{}",
        if calls == 1 { "" } else { "s" },
        cost.map(|c| format!(", {}", crate::fmt_cost(c)))
            .unwrap_or_default(),
        if ncached > 0 {
            format!(", {ncached} served from the cache")
        } else {
            String::new()
        }
    );
    if !gates.is_empty() {
        let _ = writeln!(s, "gates:");
        for g in &gates {
            let state = match &g.decision {
                Some(d) => format!("decided {d}"),
                None => "open".to_owned(),
            };
            let _ = writeln!(s, "  {}  ({})  {state}", g.key, g.kind);
        }
    }
    if let Some(o) = &run.output {
        let _ = writeln!(s, "output:");
        let text = match o {
            Value::String(t) => t.clone(),
            other => serde_json::to_string_pretty(other).unwrap_or_default(),
        };
        for line in text.lines() {
            let _ = writeln!(s, "  {line}");
        }
    }
    if prompts {
        s.push_str(&prompts_of(config, store, &run).await?);
    }
    out(&s);
    Ok(())
}

/// Re-renders every model request by replaying the run from its journal.
async fn prompts_of(
    config: Option<&Path>,
    store: Arc<dyn RunStore>,
    run: &Run,
) -> Result<String, Failure> {
    let file = PathBuf::from(&run.workflow_path);
    let project = Project::discover(config, &file)?;
    let (wf, _, source) = crate::load_with_source(&project, &file)?;
    let mut s = String::from("prompts (re-rendered from the journal; no model was called):\n");
    if let Some(d) = spes_engine::durable::drift(run, &wf, &source) {
        let _ = writeln!(
            s,
            "  note: {d}; the prompts below are rendered by the current files"
        );
    }
    let engine = build_engine(&project, None, true, None, false)?;
    let prompts = engine.prompts(store, run, &wf).await.map_err(run_error)?;
    for p in prompts {
        let _ = writeln!(s, "── {}", p.key);
        if let Some(sys) = &p.system {
            let _ = writeln!(s, "system:\n{}", indent(sys));
        }
        for m in &p.messages {
            let _ = writeln!(s, "{}:\n{}", m.role, indent(&m.content));
        }
        if let Some(a) = &p.answer {
            let _ = writeln!(s, "answer:\n{}", indent(a));
        }
    }
    Ok(s)
}

fn indent(t: &str) -> String {
    t.lines()
        .map(|l| format!("  │ {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
