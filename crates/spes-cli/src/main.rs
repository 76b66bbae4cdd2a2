//! `spes`: run prompt workflows from the command line.
//!
//! Exit codes (stable):
//! - 0: success (the run completed)
//! - 1: the run failed (a step failed: provider error, bad answer, ...); `spes resume` retries it
//! - 2: bad input: command-line usage, an invalid workflow, component, `spes.toml`, `--input`
//! - 3: the run is waiting for a human or paused; it continues with `spes resume`
//! - 4: the run was cancelled
//! - 5: the run store is unusable (damaged, locked, newer schema, permissions), or it did not
//!   commit a step's journal entry (disk full, I/O error, read-only, lock held past its budget):
//!   the run stopped at that step (error class `store`), earlier steps intact; `spes resume` continues
//! - 6: the run is held by another live process (`spes resume` of a run another `spes` executes);
//!   the message names the owner
//! - 130: interrupted (Ctrl-C): the run is given back (shown `interrupted`); `spes resume`
//!   continues it. A second Ctrl-C exits at once.

/// mimalloc, not the system's allocator: the engine makes many small
/// allocations per step, and with traces on, the exporter's thread frees
/// the spans made on the engine's threads. Measured with the otel bench
/// (`cargo bench -p spes-cli --bench otel`) built with and without it: a
/// 10-step chain against the fake server about 13% faster, and the cost of
/// tracing a step down by about a quarter.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cost;
mod doctor;
mod gates;
mod init;
mod progress;
mod project;
mod prune;
mod runs;
mod serve;
#[cfg(feature = "otel")]
mod telemetry;
mod term;
mod tools;
mod worker;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;
use spes_core::component::{ComponentRef, lint};
use spes_core::diagnostic::NamedDiagnostic;
use spes_core::workflow::{ValidateEnv, Workflow, diagram, parse_workflow, validate};
use spes_core::{Diagnostics, Severity};
use spes_engine::ops::Decision;
use spes_engine::{Engine, EngineError, RunError};

use crate::project::{Project, read_text};
use crate::term::{out, out_data, out_json, say};

/// Largest `--input-file` spes reads.
const MAX_INPUT_FILE: usize = 16 << 20;

/// `spes --version`: the version, the git commit it was built from and the cargo features.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SPES_GIT_COMMIT"),
    "; features: ",
    env!("SPES_FEATURES"),
    ")"
);

#[derive(Parser, Debug)]
#[command(name = "spes", version = VERSION, about = "Durable LLM prompt workflows: components, patterns, providers", long_about = None)]
struct Cli {
    /// spes.toml to use (default: the nearest one above the workflow or the working directory)
    #[arg(long, global = true, env = "SPES_CONFIG")]
    config: Option<PathBuf>,
    /// Run store URL (default: the `[store]` url in spes.toml, else sqlite://.spes/spes.db beside spes.toml)
    #[arg(long, global = true, env = "SPES_STORE")]
    store: Option<String>,
    /// Colours and the live progress line: `auto` (on a terminal, unless `NO_COLOR` is set or `TERM=dumb`), `always`, `never`
    #[arg(long, global = true, value_enum, default_value_t = term::ColorChoice::Auto)]
    color: term::ColorChoice,
    /// Format of log lines on stderr (their level comes from `RUST_LOG`; default: warnings only)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Progress as JSON Lines on stderr (one object per event, `event` names it) instead of progress lines
    #[arg(long, global = true)]
    events: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a workflow: progress on stderr, the result on stdout.
    Run(RunArgs),
    /// Continue a failed, paused or waiting run; finished model calls are not repeated.
    Resume(runs::ResumeArgs),
    /// Pause a run: it stops before its next model call; `spes resume` continues it.
    Pause {
        /// Run id (or a unique prefix of at least 4 characters).
        run: String,
    },
    /// Cancel a run for good.
    Cancel {
        /// Run id (or a unique prefix).
        run: String,
    },
    /// List, show and replay runs; list gates waiting for a human.
    #[command(subcommand)]
    Runs(runs::RunsCmd),
    /// Approve at a human gate.
    Approve {
        /// Run id (or a unique prefix).
        run: String,
        /// The gate (its id, or the end of it) when the run has several open.
        #[arg(long)]
        gate: Option<String>,
        /// Comments recorded with the approval.
        #[arg(long)]
        comments: Option<String>,
        /// Who decides (recorded and shown; default: the operating-system user).
        #[arg(long = "as", value_name = "NAME")]
        by: Option<String>,
    },
    /// Reject at a human gate.
    Reject {
        /// Run id (or a unique prefix).
        run: String,
        /// The gate, when the run has several open.
        #[arg(long)]
        gate: Option<String>,
        /// Why (recorded).
        #[arg(long)]
        reason: String,
        /// Who decides (recorded and shown; default: the operating-system user).
        #[arg(long = "as", value_name = "NAME")]
        by: Option<String>,
    },
    /// Ask for a revision at an approval or section gate.
    Revise {
        /// Run id (or a unique prefix).
        run: String,
        /// The gate, when the run has several open.
        #[arg(long)]
        gate: Option<String>,
        /// What should change.
        #[arg(long)]
        comments: String,
        /// Suggested changes.
        #[arg(long)]
        suggest: Option<String>,
        /// Who decides (recorded and shown; default: the operating-system user).
        #[arg(long = "as", value_name = "NAME")]
        by: Option<String>,
    },
    /// Pick variation N at a choose gate.
    Choose {
        /// Run id (or a unique prefix).
        run: String,
        /// The variation, from 1.
        n: u64,
        /// The gate, when the run has several open.
        #[arg(long)]
        gate: Option<String>,
        /// Who decides (recorded and shown; default: the operating-system user).
        #[arg(long = "as", value_name = "NAME")]
        by: Option<String>,
    },
    /// Validate workflows, or draw them.
    #[command(subcommand)]
    Workflow(WorkflowCmd),
    /// List, show and lint prompt components.
    #[command(subcommand)]
    Components(ComponentsCmd),
    /// The tools of the MCP servers in spes.toml (`[mcp.NAME]`).
    #[command(subcommand)]
    Tools(ToolsCmd),
    /// The response cache of temperature-0 model calls (`[cache]`, `spes run --cache`).
    #[command(subcommand)]
    Cache(cost::CacheCmd),
    /// Which workflow pattern fits your requirements (the design reference's selector).
    #[command(subcommand)]
    Pattern(PatternCmd),
    /// Create a project that runs at once: spes.toml, components, workflows, notes.md, .gitignore.
    Init {
        /// Directory to create or fill (default: the current one); no existing file is overwritten.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Which providers are usable, the key variables they want, where the local model is.
    Doctor {
        /// Print JSON: `{ schema, project, default_provider, default_ready, store, providers: [{ name, kind, ready, detail }], keys_set }`.
        #[arg(long)]
        json: bool,
    },
    /// Take runs and map items from a shared PostgreSQL store, as one of many workers.
    Worker(worker::WorkerArgs),
    /// Serve the HTTP API (runs, gates, workflows, components) until SIGINT or SIGTERM.
    Serve(serve::ServeArgs),
    /// Print a shell completion script: `spes completions bash > /etc/bash_completion.d/spes`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `spes man > spes.1`.
    Man,
    /// Print the JSON Schema of a `--json` output (`spes schema run`); with no name, list them.
    Schema {
        /// The output: run, runs-list, runs-show, runs-pending, workflow-validate, components-list, components-show, doctor, pattern-suggest, event, runs-cost, cache-stats.
        name: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Log lines on stderr: the level from `RUST_LOG` (default `warn`), text or JSON.
/// Logs to stderr (`RUST_LOG`, `--log-format`) and, when an OTLP endpoint
/// is configured (feature `otel`), the engine's trace spans exported (not
/// through `tracing`, so `RUST_LOG` does not silence them). The guard
/// flushes the exporter when dropped.
fn init_logging(format: LogFormat, _cli: &Cli) -> TelemetryGuard {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Its own report of a failed write is an `eprintln!`, which panics
        // on a closed stderr (in whatever thread logged).
        .log_internal_errors(false);
    let fmt = match format {
        LogFormat::Text => fmt
            .with_ansi(term::color_stderr())
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt.json().with_ansi(false).with_filter(filter).boxed(),
    };
    let _ = tracing_subscriber::registry().with(fmt).try_init();
    #[cfg(feature = "otel")]
    {
        let (explicit, start) = telemetry_start(_cli);
        let settings = telemetry::Settings::discover(explicit, &start);
        if let Some(guard) = telemetry::install(&settings) {
            return guard;
        }
    }
    TelemetryGuard::default()
}

#[cfg(feature = "otel")]
type TelemetryGuard = telemetry::Guard;
#[cfg(not(feature = "otel"))]
type TelemetryGuard = ();

/// Where `[telemetry]` is looked for: `--config`, else the spes.toml found
/// from the workflow file of `spes run`, else from the working directory.
#[cfg(feature = "otel")]
fn telemetry_start(cli: &Cli) -> (Option<&Path>, PathBuf) {
    let cwd = std::env::current_dir().unwrap_or_default();
    let start = match &cli.command {
        Command::Run(a) if a.file.as_os_str() != "-" => a.file.clone(),
        _ => cwd,
    };
    (cli.config.as_deref(), start)
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The workflow file (`-` reads it from standard input).
    file: PathBuf,
    /// An input value: --input topic="rust"
    #[arg(long = "input", short = 'i', value_name = "KEY=VALUE")]
    inputs: Vec<String>,
    /// An input read from a file: --input-file text=notes.md (`-` reads stdin)
    #[arg(long = "input-file", value_name = "KEY=PATH")]
    input_files: Vec<String>,
    /// Provider used by steps and agents that name none.
    #[arg(long, env = "SPES_PROVIDER")]
    provider: Option<String>,
    /// Print the whole context as JSON instead of the result.
    #[arg(long)]
    json: bool,
    /// No progress on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Run in memory only: no run record, no resume.
    #[arg(long)]
    no_store: bool,
    /// Answer human gates here, reading stdin (the default when stdin and stderr are terminals).
    #[arg(long, conflicts_with = "detach")]
    interactive: bool,
    /// Never ask here: a human gate suspends the run (answer later with `spes approve` etc.);
    /// on a shared (postgres://) store, queue the run for `spes worker` and return.
    #[arg(long)]
    detach: bool,
    /// Spending limits over the workflow's `budget:`: tokens=N,cost=DOLLARS,calls=N[,on_exhausted=pause].
    #[arg(long, value_name = "LIMITS", value_parser = parse_budget)]
    budget: Option<spes_core::budget::Budget>,
    /// Serve temperature-0 model calls answered before from the response cache (as `[cache] enabled`).
    #[arg(long, conflicts_with = "no_store")]
    cache: bool,
}

/// `--budget LIMITS`.
pub(crate) fn parse_budget(s: &str) -> Result<spes_core::budget::Budget, String> {
    spes_core::budget::Budget::parse_arg(s)
}

/// This engine with the project's response cache on `store`, when
/// `[cache] enabled` or `flag` (`--cache`) asks for it.
pub(crate) fn with_cache(
    engine: Engine,
    project: &Project,
    store: &Arc<dyn spes_store::RunStore>,
    flag: bool,
) -> Engine {
    if !(flag || project.config.cache.enabled) {
        return engine;
    }
    // Checked when spes.toml was read.
    let ttl = project
        .config
        .cache
        .ttl()
        .unwrap_or(spes_core::config::DEFAULT_CACHE_TTL);
    engine.with_response_cache(spes_engine::budget::ResponseCache::new(store.clone(), ttl))
}

#[derive(Subcommand, Debug)]
enum PatternCmd {
    /// Suggest a pattern from requirement flags, with the reason and the spes step kinds to use.
    Suggest {
        /// Tasks that do not depend on each other.
        #[arg(long)]
        independent_tasks: bool,
        /// Specialist perspectives are needed.
        #[arg(long)]
        specialized_roles: bool,
        /// Output quality must meet a bar.
        #[arg(long)]
        quality_critical: bool,
        /// The path depends on the input.
        #[arg(long)]
        need_decision: bool,
        /// A coordinator delegates to sub-workflows.
        #[arg(long)]
        complex_coordination: bool,
        /// A person must judge or approve.
        #[arg(long)]
        human_judgment: bool,
        /// Calls may fail (rate limits, outages).
        #[arg(long)]
        unreliable_api: bool,
        /// Several distinct phases.
        #[arg(long)]
        multi_phase: bool,
        /// Runs for hours or days, or waits for people.
        #[arg(long)]
        long_running: bool,
        /// Many similar items (documents, rows).
        #[arg(long)]
        many_items: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum WorkflowCmd {
    /// Check workflows without calling any model.
    Validate {
        /// Workflow files (`-` reads one from standard input).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print JSON: `{ schema, valid, workflows: [{ file, name, steps }], diagnostics: [...] }` (exit code as without).
        #[arg(long)]
        json: bool,
    },
    /// Draw a workflow.
    Diagram {
        /// The workflow file.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = DiagramFormat::Mermaid)]
        format: DiagramFormat,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DiagramFormat {
    Mermaid,
    Text,
}

#[derive(Subcommand, Debug)]
enum ToolsCmd {
    /// List every MCP server's tools as `SERVER.TOOL` (starts the servers).
    List {
        /// Print JSON: `{ tools: [{ name, server, tool, description, parameters }] }`.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ComponentsCmd {
    /// List components (kind, name, version, description).
    List {
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Print JSON: `{ schema, components: [{ reference, kind, name, version, description, file, tags }] }`.
        #[arg(long)]
        json: bool,
    },
    /// Show one component: metadata and text.
    Show {
        /// A reference: kind/name, kind/name@^1.2, kind/name@1.2.0
        reference: String,
        /// Print JSON: the list fields plus `variables` and `body`.
        #[arg(long)]
        json: bool,
    },
    /// Check component files for problems.
    Lint {
        /// Roots to lint (default: the project's component roots).
        roots: Vec<PathBuf>,
    },
}

/// Why a command failed; decides the exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad input: exit 2.
    Input(Diagnostics),
    /// A run failed: exit 1.
    Run(EngineError),
    /// A usage problem with a plain message: exit 2.
    Usage(String),
    /// The store is unusable: exit 5.
    Store(spes_store::StoreError),
    /// Another live process holds the run: exit 6.
    Busy(String),
    /// A run stopped without failing (waiting, paused: 3; cancelled: 4).
    Stopped(u8, String),
}

impl From<spes_engine::ops::OpError> for Failure {
    fn from(e: spes_engine::ops::OpError) -> Self {
        match e {
            spes_engine::ops::OpError::Store(s) => s.into(),
            spes_engine::ops::OpError::Refused(m) => Self::Usage(m),
        }
    }
}

impl From<spes_store::StoreError> for Failure {
    fn from(e: spes_store::StoreError) -> Self {
        match e {
            spes_store::StoreError::NotFound(m) => Self::Usage(m),
            spes_store::StoreError::Claimed { .. } => Self::Busy(format!(
                "{e}; it is executed by another process, so this one does nothing"
            )),
            spes_store::StoreError::Ambiguous { .. } | spes_store::StoreError::Conflict { .. } => {
                Self::Usage(e.to_string())
            }
            other => Self::Store(other),
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    term::set_color(cli.color);
    // Without the `otel` feature the guard is `()`.
    #[cfg_attr(not(feature = "otel"), allow(clippy::let_unit_value))]
    let _telemetry = init_logging(cli.log_format, &cli);
    if cli.events {
        progress::set_events();
    }
    tracing::debug!(command = ?cli.command, "spes {VERSION}");
    let config = cli.config.as_deref();
    let store = cli.store.as_deref();
    let result = match cli.command {
        Command::Run(args) => block(cmd_run(config, store, args)),
        Command::Resume(args) => block(runs::resume(config, store, args)),
        Command::Pause { run } => block(runs::pause(config, store, &run, false)),
        Command::Cancel { run } => block(runs::pause(config, store, &run, true)),
        Command::Approve {
            run,
            gate,
            comments,
            by,
        } => block(gates::answer(
            config,
            store,
            &run,
            gate.as_deref(),
            Decision::Approve {
                comments: comments.unwrap_or_default(),
            },
            by,
        )),
        Command::Reject {
            run,
            gate,
            reason,
            by,
        } => block(gates::answer(
            config,
            store,
            &run,
            gate.as_deref(),
            Decision::Reject { reason },
            by,
        )),
        Command::Revise {
            run,
            gate,
            comments,
            suggest,
            by,
        } => block(gates::answer(
            config,
            store,
            &run,
            gate.as_deref(),
            Decision::Revise {
                comments,
                suggest: suggest.unwrap_or_default(),
            },
            by,
        )),
        Command::Choose { run, n, gate, by } => block(gates::answer(
            config,
            store,
            &run,
            gate.as_deref(),
            Decision::Choose { n },
            by,
        )),
        Command::Runs(c) => match without_store(config, store, &c) {
            Some(r) => r,
            None => block(runs::runs(config, store, c)),
        },
        Command::Workflow(WorkflowCmd::Validate { files, json }) => {
            cmd_validate(config, &files, json)
        }
        Command::Workflow(WorkflowCmd::Diagram { file, format }) => {
            cmd_diagram(config, &file, format)
        }
        Command::Components(c) => cmd_components(config, c),
        Command::Cache(c) => block(cost::cache(config, store, c)),
        Command::Tools(ToolsCmd::List { json }) => block(async move {
            let cwd = std::env::current_dir().unwrap_or_default();
            let project = Project::discover(config, &cwd)?;
            tools::list(&project, json).await
        }),
        Command::Init { dir } => init::init(&dir),
        Command::Doctor { json } => block(doctor::doctor(config, store, json)),
        Command::Worker(args) => block(worker::worker(config, store, args)),
        Command::Serve(args) => block(serve::serve(config, store, args)),
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "spes",
                &mut buf,
            );
            out(&String::from_utf8_lossy(&buf));
            Ok(())
        }
        Command::Schema { name } => {
            let all = spes_engine::view::schemas();
            match name {
                None => {
                    let names: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
                    out(&format!("{}\n", names.join("\n")));
                    Ok(())
                }
                Some(n) => match all.iter().find(|(k, _)| *k == n) {
                    Some((_, schema)) => {
                        crate::term::out_doc(schema);
                        Ok(())
                    }
                    None => Err(Failure::Usage(format!(
                        "no output is called `{n}`; the outputs: {}",
                        all.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                    ))),
                },
            }
        }
        Command::Man => {
            let mut buf = Vec::new();
            match clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut buf) {
                Ok(()) => {
                    out(&String::from_utf8_lossy(&buf));
                    Ok(())
                }
                Err(e) => Err(Failure::Usage(format!("cannot render the man page: {e}"))),
            }
        }
        Command::Pattern(PatternCmd::Suggest {
            independent_tasks,
            specialized_roles,
            quality_critical,
            need_decision,
            complex_coordination,
            human_judgment,
            unreliable_api,
            multi_phase,
            long_running,
            many_items,
            json,
        }) => {
            let r = spes_core::pattern::Requirements {
                independent_tasks,
                specialized_roles,
                quality_critical,
                need_decision,
                complex_coordination,
                human_judgment,
                unreliable_api,
                multi_phase,
                long_running,
                many_items,
            };
            let s = spes_core::pattern::suggest(&r);
            if json {
                crate::term::out_doc(&spes_engine::view::SuggestionDoc::of(&s));
            } else {
                let mut text = format!(
                    "{}: {}
  use: {}
",
                    s.primary.pattern.as_str(),
                    s.primary.reason,
                    s.primary.spes
                );
                for a in &s.also {
                    text.push_str(&format!(
                        "also {}: {}
  use: {}
",
                        a.pattern.as_str(),
                        a.reason,
                        a.spes
                    ));
                }
                out(&text);
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(d)) => {
            print_diagnostics(&d);
            ExitCode::from(2)
        }
        Err(Failure::Usage(m)) => {
            say!("error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Store(e)) => {
            say!("error: {e}");
            if let Some(h) = e.hint() {
                say!("  hint: {h}");
            }
            ExitCode::from(5)
        }
        Err(Failure::Busy(m)) => {
            say!("error: {m}");
            ExitCode::from(6)
        }
        Err(Failure::Stopped(code, m)) => {
            if !m.is_empty() {
                say!("{m}");
            }
            ExitCode::from(code)
        }
        Err(Failure::Run(e)) => {
            say!("error: {e}");
            if let Some(h) = e.hint() {
                say!("  hint: {h}");
            }
            // A store that did not commit stopped the run: class `store`;
            // a spent budget: class `budget_exceeded`.
            ExitCode::from(if e.is_store() {
                5
            } else if e.is_budget() {
                7
            } else {
                1
            })
        }
    }
}

/// The `runs` commands that read existing runs (and `prune`, `fork`) where
/// there is no store yet: there are no runs, and looking creates no file.
/// `None`: run the command.
fn without_store(
    config: Option<&Path>,
    store: Option<&str>,
    cmd: &runs::RunsCmd,
) -> Option<Result<(), Failure>> {
    use runs::RunsCmd;
    let cwd = std::env::current_dir().unwrap_or_default();
    let project = match Project::discover(config, &cwd) {
        Ok(p) => p,
        Err(e) => return Some(Err(e)),
    };
    let path = project.missing_store(store)?;
    let none = format!(
        "there are no runs here yet ({} does not exist; `spes run` creates it)",
        path.display()
    );
    match cmd {
        RunsCmd::List { status, json, .. } => Some(
            status
                .as_deref()
                .map(str::parse::<spes_store::RunStatus>)
                .transpose()
                .map_err(Failure::Usage)
                .map(|_| {
                    if *json {
                        crate::term::out_doc(&spes_engine::view::RunList {
                            schema: spes_engine::view::VERSION,
                            runs: Vec::new(),
                        });
                    } else {
                        say!("{none}");
                    }
                }),
        ),
        RunsCmd::Pending { json } => {
            if *json {
                crate::term::out_doc(&spes_engine::view::GateList {
                    schema: spes_engine::view::VERSION,
                    gates: Vec::new(),
                });
            } else {
                say!("no gate is waiting for a human: {none}");
            }
            Some(Ok(()))
        }
        RunsCmd::Show { run, .. } | RunsCmd::Replay { run, .. } | RunsCmd::Fork { run, .. } => {
            Some(Err(Failure::Usage(format!("no run `{run}`: {none}"))))
        }
        RunsCmd::Prune(args) => Some(args.check().map(|_| say!("nothing to prune: {none}"))),
        RunsCmd::Cost(args) => Some(args.empty()),
    }
}

/// Runs an async command, then closes the stores it opened (SQLite
/// checkpoints its WAL into the main file when the last connection closes).
fn block(f: impl std::future::Future<Output = Result<(), Failure>>) -> Result<(), Failure> {
    let rt = runtime()?;
    let r = rt.block_on(async {
        let r = f.await;
        tools::shutdown_all().await;
        runs::close_stores().await;
        r
    });
    // A terminal reviewer may still wait on stdin (after Ctrl-C): don't wait for it.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    r
}

/// Executes a run here (`f`); on Ctrl-C stops it, gives the runs this
/// process holds back (shown `interrupted`, taken over by a resume at
/// once) and says how to resume: exit 130. A second Ctrl-C exits at once.
pub(crate) async fn interruptible<T>(
    store: &Arc<dyn spes_store::RunStore>,
    f: impl std::future::Future<Output = T>,
) -> Result<T, Failure> {
    tokio::select! {
        r = f => Ok(r),
        _ = tokio::signal::ctrl_c() => {
            tokio::spawn(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            });
            let ids = spes_engine::ops::release_own_runs(store.as_ref()).await?;
            let lines: Vec<String> = ids
                .iter()
                .map(|id| {
                    format!(
                        "run {id} interrupted; `spes resume {id}` continues it (finished steps are not repeated)"
                    )
                })
                .collect();
            Err(Failure::Stopped(
                130,
                if lines.is_empty() { "interrupted".into() } else { lines.join("\n") },
            ))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Usage(format!("cannot start the async runtime: {e}")))
}

/// Prints diagnostics: graphical with snippets on a terminal, plain otherwise.
pub(crate) fn print_diagnostics(d: &Diagnostics) {
    let fancy = term::color_stderr();
    let mut err = std::io::stderr().lock();
    for diag in &d.0 {
        // A file or message holding control characters is shown plain
        // (escaped): miette would print its snippet raw.
        let clean = [
            Some(diag.message.as_str()),
            diag.hint.as_deref(),
            diag.label.as_deref(),
            diag.file.as_deref(),
            diag.source_text(),
        ]
        .into_iter()
        .flatten()
        .all(|t| matches!(term::escape(t), std::borrow::Cow::Borrowed(_)));
        if fancy && clean && diag.span.is_some() {
            let report = miette::Report::new(NamedDiagnostic::from(diag.clone()));
            let _ = writeln!(err, "{report:?}");
        } else {
            let _ = writeln!(err, "{}", term::escape(&diag.render_plain()));
        }
    }
    let errors = d.0.iter().filter(|x| x.severity == Severity::Error).count();
    if errors > 1 {
        let _ = writeln!(err, "{errors} errors");
    }
}

/// Reads standard input (`--input-file KEY=-`, a workflow `-`), at most
/// `max` bytes (the limit of `what`), as UTF-8.
fn read_stdin(max: usize, what: &str) -> Result<String, Failure> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::Usage(format!("cannot read standard input: {e}")))?;
    if bytes.len() > max {
        return Err(Failure::Usage(format!(
            "standard input is larger than the {max}-byte limit of {what}"
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        Failure::Usage(format!(
            "standard input is not UTF-8 text (byte {} is invalid)",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Whether a workflow path means standard input (`spes run -`).
pub(crate) fn is_stdin(file: &Path) -> bool {
    file == Path::new("-")
}

/// The workflow read from standard input, once per process (validation and
/// the run's pinned source see the same text).
static STDIN_WORKFLOW: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A workflow file's text; `-` reads standard input, bounded like a file.
pub(crate) fn read_workflow(file: &Path) -> Result<String, Failure> {
    if !is_stdin(file) {
        return read_text(file, spes_core::yaml::MAX_YAML_BYTES);
    }
    if let Some(t) = STDIN_WORKFLOW.get() {
        return Ok(t.clone());
    }
    let text = read_stdin(spes_core::yaml::MAX_YAML_BYTES, "a workflow file")?;
    Ok(STDIN_WORKFLOW.get_or_init(|| text).clone())
}

/// Loads and validates a workflow (`-`: from standard input, its relative
/// paths resolved from the working directory).
pub(crate) fn load_workflow(
    project: &Project,
    file: &Path,
) -> Result<(Workflow, Diagnostics), Failure> {
    let text = read_workflow(file)?;
    validate_text(project, file, &text)
}

/// Loads and validates a workflow and returns the text it validated as the
/// run's source: the file is read once, so the hash a run pins belongs to
/// the text that was validated (a file edited in between cannot slip in).
pub(crate) fn load_with_source(
    project: &Project,
    file: &Path,
) -> Result<(Workflow, Diagnostics, spes_engine::WorkflowSource), Failure> {
    let text = read_workflow(file)?;
    let (wf, warnings) = validate_text(project, file, &text)?;
    Ok((wf, warnings, runs::source_from(file, text)))
}

fn validate_text(
    project: &Project,
    file: &Path,
    text: &str,
) -> Result<(Workflow, Diagnostics), Failure> {
    // `<stdin>` has no directory: relative paths inside resolve from the working directory.
    let shown = if is_stdin(file) {
        "<stdin>".to_owned()
    } else {
        file.display().to_string()
    };
    let spec = parse_workflow(&shown, text).map_err(Failure::Input)?;
    let (components, comp_diags) = project.components();
    let names = project.provider_names();
    let env = ValidateEnv {
        components: &components,
        providers: Some(&names),
    };
    match validate(spec, &shown, text, &env) {
        Ok((wf, warnings)) => Ok((wf, warnings)),
        Err(mut errs) => {
            // Component files that failed to load explain "unknown component" errors.
            if errs
                .0
                .iter()
                .any(|d| d.code == "spes::workflow::unknown_component")
            {
                errs.0.extend(
                    comp_diags
                        .0
                        .into_iter()
                        .filter(|d| d.severity == Severity::Error),
                );
            }
            Err(Failure::Input(errs))
        }
    }
}

pub(crate) fn split_kv<'a>(s: &'a str, flag: &str) -> Result<(&'a str, &'a str), Failure> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim(), v)),
        _ => Err(Failure::Input(Diagnostics::from(
            spes_core::Diagnostic::error(
                "spes::input::syntax",
                format!("{flag} `{s}` must look like KEY=VALUE"),
            )
            .with_hint(format!("write {flag} name=value, e.g. {flag} text=hello")),
        ))),
    }
}

async fn cmd_run(
    config: Option<&Path>,
    store_url: Option<&str>,
    args: RunArgs,
) -> Result<(), Failure> {
    let project = Project::discover(config, &args.file)?;
    let (wf, warnings, source) = load_with_source(&project, &args.file)?;
    if !warnings.is_empty() && !args.quiet {
        print_diagnostics(&warnings);
    }
    let mut inputs = BTreeMap::new();
    for i in &args.inputs {
        let (k, v) = split_kv(i, "--input")?;
        inputs.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    for i in &args.input_files {
        let (k, p) = split_kv(i, "--input-file")?;
        if p == "-" && is_stdin(&args.file) {
            return Err(Failure::Usage(format!(
                "--input-file {k}=- and the workflow `-` both want standard input; give one of them a file"
            )));
        }
        let text = if p == "-" {
            read_stdin(MAX_INPUT_FILE, "an input file")?
        } else {
            read_text(Path::new(p), MAX_INPUT_FILE)?
        };
        inputs.insert(k.to_owned(), Value::String(text));
    }
    refuse_empty_required(&wf, &inputs)?;
    let engine = build_engine(
        &project,
        args.provider.as_deref(),
        args.quiet,
        None,
        interactive(args.interactive, args.detach),
    )?;
    let engine = match args.budget {
        Some(b) => engine.with_budget(b),
        None => engine,
    };
    let started = std::time::Instant::now();
    let input_error = |m: String| {
        Failure::Input(Diagnostics::from(
            spes_core::Diagnostic::error("spes::input::invalid", m).with_hint(format!(
                "inputs are declared under `inputs:` in {}; pass each as --input KEY=VALUE",
                args.file.display()
            )),
        ))
    };
    if args.no_store {
        let end = match engine.run(&wf, inputs).await {
            Ok(outcome) => spes_engine::RunEnd::Completed(outcome),
            Err(RunError::Step(s)) => spes_engine::RunEnd::Failed(s),
            Err(RunError::Input(m)) => return Err(input_error(m)),
            Err(other) => return Err(Failure::Usage(other.to_string())),
        };
        return finish(&wf, None, end, started, args.quiet, args.json);
    }
    let store = runs::open_store(&project, store_url).await?;
    let engine = with_cache(engine, &project, &store, args.cache);
    if args.detach && store.queue().is_some() {
        // Queued for the workers: the run id on stdout, nothing runs here.
        let id = engine
            .enqueue(&store, &wf, &source, inputs)
            .await
            .map_err(|e| match e {
                RunError::Input(m) => input_error(m),
                RunError::Store(s) => Failure::from(s),
                other => Failure::Usage(other.to_string()),
            })?;
        if !args.quiet {
            say!(
                "run {id} queued on {}; a `spes worker` executes it (`spes runs show {id}`)",
                store.describe()
            );
        }
        out(&id.to_string());
        return Ok(());
    }
    let (id, end) = interruptible(&store, engine.start(store.clone(), &wf, &source, inputs))
        .await?
        .map_err(|e| match e {
            RunError::Input(m) => input_error(m),
            RunError::Step(s) => Failure::Run(s),
            RunError::Store(s) => Failure::from(s),
            other => Failure::Usage(other.to_string()),
        })?;
    // Detached and stopped at a gate: the run id on stdout, for scripts.
    if args.detach && !args.json && matches!(end, spes_engine::RunEnd::Waiting(_)) {
        out_data(&id.to_string());
    }
    finish(&wf, Some(id), end, started, args.quiet, args.json)
}

/// A required input given as an empty (or blank) text: `--input text=` is
/// almost always a shell variable that was not set, so it is refused.
fn refuse_empty_required(wf: &Workflow, inputs: &BTreeMap<String, Value>) -> Result<(), Failure> {
    let empty: Vec<spes_core::Diagnostic> = wf
        .inputs
        .iter()
        .filter(|i| i.required)
        .filter(|i| {
            inputs
                .get(&i.name)
                .is_some_and(|v| v.as_str().is_some_and(|s| s.trim().is_empty()))
        })
        .map(|i| {
            spes_core::Diagnostic::error(
                "spes::input::empty",
                format!(
                    "required input `{}` of workflow `{}` is empty",
                    i.name, wf.name
                ),
            )
            .with_hint(format!(
                "give it a value: --input {}=... or --input-file {}=PATH",
                i.name, i.name
            ))
        })
        .collect();
    if empty.is_empty() {
        Ok(())
    } else {
        Err(Failure::Input(Diagnostics(empty)))
    }
}

/// Builds an engine with every configured provider.
pub(crate) fn build_engine(
    project: &Project,
    provider: Option<&str>,
    quiet: bool,
    capture: Option<spes_engine::Capture>,
    interactive: bool,
) -> Result<Engine, Failure> {
    let default = project.default_provider(provider);
    let progress = progress::Progress::new(quiet);
    let mut builder = Engine::builder()
        .default_provider(default.clone())
        .default_model(project.config.defaults.model.clone())
        .retry_defaults(spes_engine::policy::RetryDefaults::from_config(
            &project.config,
        ))
        .default_repair(project.config.defaults.repair)
        .prices(
            project
                .config
                .providers
                .iter()
                .filter(|(_, p)| !p.prices.is_empty())
                .map(|(n, p)| (n.clone(), p.prices.clone()))
                .collect(),
        )
        .http_allow_hosts(project.config.http.allow_hosts.clone())
        .stream_deltas(progress.wants_deltas())
        .observer(Arc::new(progress));
    if let Some(c) = capture {
        builder = builder.capture(c);
    }
    if let Some(b) = project.config.defaults.budget {
        builder = builder.default_budget(b);
    }
    if let Some(mcp) = tools::source(project)? {
        builder = builder.tool_source(mcp);
    }
    if interactive {
        builder = builder.reviewer(Arc::new(gates::TerminalReviewer::default()));
    }
    let providers = project.providers()?;
    if !providers.iter().any(|p| p.name() == default) {
        let configured: Vec<&str> = providers.iter().map(|p| p.name()).collect();
        return Err(Failure::Usage(if default == "local" {
            format!(
                "no provider is configured and the embedded local model is not available in this build; \
                 add a provider to spes.toml (e.g. [providers.test] kind = \"scripted\") or pass --provider{}",
                if configured.is_empty() {
                    String::new()
                } else {
                    format!(" (configured: {})", configured.join(", "))
                }
            )
        } else {
            format!(
                "provider `{default}` is not configured; configured: {}",
                configured.join(", ")
            )
        }));
    }
    for p in providers {
        builder = builder.provider(p);
    }
    Ok(builder.build())
}

/// US dollars as shown: four decimals under a dollar, cents above.
pub(crate) fn fmt_cost(c: f64) -> String {
    if c < 1.0 {
        format!("${c:.4}")
    } else {
        format!("${c:.2}")
    }
}

/// Whether human gates are answered here: forced by the flags, else when stdin and stderr are terminals.
pub(crate) fn interactive(force: bool, detach: bool) -> bool {
    force || (!detach && std::io::stdin().is_terminal() && std::io::stderr().is_terminal())
}

/// Reports how a run ended: the output on stdout, a summary on stderr, the exit code.
pub(crate) fn finish(
    wf: &Workflow,
    id: Option<spes_store::RunId>,
    end: spes_engine::RunEnd,
    started: std::time::Instant,
    quiet: bool,
    json: bool,
) -> Result<(), Failure> {
    use spes_engine::RunEnd;
    let run = id
        .map(|i| format!("run {i}"))
        .unwrap_or_else(|| "run".into());
    if json {
        // One shape in every outcome (docs/FORMAT.md, "--json").
        crate::term::out_doc(&spes_engine::view::RunDoc::of(id, &end));
    }
    match end {
        RunEnd::Completed(outcome) => {
            if !quiet {
                let mut from = Vec::new();
                if outcome.replayed > 0 {
                    from.push(format!("{} from the journal", outcome.replayed));
                }
                if outcome.cached > 0 {
                    from.push(format!("{} from the cache", outcome.cached));
                }
                say!(
                    "{} done in {} · {} model call{}{} · {}→{} tokens{}{}",
                    wf.name,
                    progress::fmt_elapsed(started.elapsed()),
                    outcome.model_calls,
                    if outcome.model_calls == 1 { "" } else { "s" },
                    if from.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", from.join(", "))
                    },
                    outcome.usage.input_tokens,
                    outcome.usage.output_tokens,
                    outcome
                        .cost_usd
                        .map(|c| format!(" · {}", fmt_cost(c)))
                        .unwrap_or_default(),
                    id.map(|i| format!(" · run {i}")).unwrap_or_default()
                );
            }
            if !json {
                match outcome.output {
                    Some(Value::String(s)) => out_data(&s),
                    Some(v) => out_json(&serde_json::to_string_pretty(&v).unwrap_or_default()),
                    None => {}
                }
            }
            Ok(())
        }
        RunEnd::Failed(e) => {
            if let Some(i) = id {
                say!(
                    "{run} failed; fix the cause and `spes resume {i}` (finished steps are not repeated)"
                );
            }
            Err(Failure::Run(e))
        }
        RunEnd::Waiting(gates) => Err(Failure::Stopped(
            3,
            format!(
                "{run} is waiting for a human at {}; answer with `spes approve|reject|revise|choose {}` (see `spes runs pending`), then `spes resume {}`",
                gates
                    .iter()
                    .map(|g| format!("`{g}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                id.map(|i| i.to_string()).unwrap_or_default(),
                id.map(|i| i.to_string()).unwrap_or_default()
            ),
        )),
        RunEnd::Paused => Err(Failure::Stopped(
            3,
            format!(
                "{run} is paused; `spes resume {}` continues it",
                id.map(|i| i.to_string()).unwrap_or_default()
            ),
        )),
        RunEnd::Cancelled => Err(Failure::Stopped(4, format!("{run} was cancelled"))),
    }
}

fn cmd_validate(config: Option<&Path>, files: &[PathBuf], json: bool) -> Result<(), Failure> {
    let mut all = Diagnostics::default();
    let mut ok = 0;
    let mut valid = Vec::new();
    for f in files {
        let project = Project::discover(config, f)?;
        match load_workflow(&project, f) {
            Ok((wf, warnings)) => {
                ok += 1;
                all.0.extend(warnings.0);
                let steps = wf.walk().len();
                if !json {
                    say!("✓ {} ({}): {steps} steps", f.display(), wf.name);
                }
                valid.push(spes_engine::view::ValidWorkflow {
                    file: f.display().to_string(),
                    name: wf.name.clone(),
                    steps,
                });
            }
            Err(Failure::Input(d)) => all.0.extend(d.0),
            Err(other) => return Err(other),
        }
    }
    if json {
        crate::term::out_doc(&spes_engine::view::ValidateDoc {
            schema: spes_engine::view::VERSION,
            valid: !all.has_errors(),
            workflows: valid,
            diagnostics: all
                .0
                .iter()
                .map(spes_engine::view::DiagnosticView::of)
                .collect(),
        });
        return if all.has_errors() {
            Err(Failure::Stopped(2, String::new()))
        } else {
            Ok(())
        };
    }
    if all.has_errors() {
        return Err(Failure::Input(all));
    }
    if !all.is_empty() {
        print_diagnostics(&all);
    }
    if ok > 1 {
        say!("{ok} workflows valid");
    }
    Ok(())
}

fn cmd_diagram(config: Option<&Path>, file: &Path, format: DiagramFormat) -> Result<(), Failure> {
    let project = Project::discover(config, file)?;
    let (wf, _) = load_workflow(&project, file)?;
    out(&match format {
        DiagramFormat::Mermaid => diagram::mermaid(&wf),
        DiagramFormat::Text => diagram::text(&wf),
    });
    Ok(())
}

fn cmd_components(config: Option<&Path>, cmd: ComponentsCmd) -> Result<(), Failure> {
    let cwd = std::env::current_dir().unwrap_or_default();
    let project = Project::discover(config, &cwd)?;
    match cmd {
        ComponentsCmd::List { kind, json } => {
            let (reg, diags) = project.components();
            if diags.has_errors() {
                print_diagnostics(&diags);
            }
            if json {
                crate::term::out_doc(&spes_engine::view::ComponentList {
                    schema: spes_engine::view::VERSION,
                    components: reg
                        .list()
                        .filter(|c| kind.as_ref().is_none_or(|k| &c.kind == k))
                        .map(spes_engine::view::ComponentView::of)
                        .collect(),
                });
                return Ok(());
            }
            let mut rows = vec![[
                "KIND".to_owned(),
                "NAME".to_owned(),
                "VERSION".to_owned(),
                "DESCRIPTION".to_owned(),
            ]];
            for c in reg
                .list()
                .filter(|c| kind.as_ref().is_none_or(|k| &c.kind == k))
            {
                rows.push([
                    c.kind.clone(),
                    c.name.clone(),
                    c.version.to_string(),
                    c.description.clone(),
                ]);
            }
            let widths: Vec<usize> = (0..3)
                .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
                .collect();
            let mut s = String::new();
            for r in &rows {
                s.push_str(&format!(
                    "{:w0$}  {:w1$}  {:w2$}  {}\n",
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    w0 = widths[0],
                    w1 = widths[1],
                    w2 = widths[2]
                ));
            }
            out(&s);
            Ok(())
        }
        ComponentsCmd::Show { reference, json } => {
            let r = ComponentRef::parse(&reference).map_err(|e| {
                Failure::Usage(format!(
                    "`{reference}` is not a component reference: {e} (write kind/name@^1.2)"
                ))
            })?;
            let (reg, _) = project.components();
            let c = reg.resolve(&r).map_err(|d| Failure::Input(d.into()))?;
            if json {
                crate::term::out_doc(&spes_engine::view::ComponentShow::of(c));
                return Ok(());
            }
            let mut s = format!(
                "{}\n  file: {}\n  description: {}\n",
                c.reference(),
                c.path.display(),
                c.description
            );
            if !c.tags.is_empty() {
                s.push_str(&format!("  tags: {}\n", c.tags.join(", ")));
            }
            for v in &c.variables {
                s.push_str(&format!(
                    "  variable {}{}{}{}\n",
                    v.name,
                    if v.required { " (required)" } else { "" },
                    v.default
                        .as_ref()
                        .map(|d| format!(" = {d:?}"))
                        .unwrap_or_default(),
                    v.description
                        .as_ref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ));
            }
            s.push_str("---\n");
            s.push_str(&c.body);
            out(&s);
            Ok(())
        }
        ComponentsCmd::Lint { roots } => {
            let roots = if roots.is_empty() {
                project.component_roots()
            } else {
                roots
            };
            let d = lint(&roots);
            if d.has_errors() {
                return Err(Failure::Input(d));
            }
            if !d.is_empty() {
                print_diagnostics(&d);
            }
            let (reg, _) = spes_core::component::ComponentRegistry::load(&roots);
            say!("✓ {} components, no errors", reg.len());
            Ok(())
        }
    }
}
