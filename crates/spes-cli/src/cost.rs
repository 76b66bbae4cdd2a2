//! `spes runs cost` (what model calls cost, grouped) and `spes cache
//! clear|stats` (the response cache).

use std::path::Path;

use spes_store::CostBy;

use crate::Failure;
use crate::project::Project;
use crate::term::{out, say};

/// How `runs cost` groups calls.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum By {
    /// By workflow name.
    Workflow,
    /// By provider/model.
    Model,
    /// By UTC day of the call.
    Day,
}

impl By {
    fn store(self) -> CostBy {
        match self {
            Self::Workflow => CostBy::Workflow,
            Self::Model => CostBy::Model,
            Self::Day => CostBy::Day,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Self::Workflow => "workflow",
            Self::Model => "model",
            Self::Day => "day",
        }
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct CostArgs {
    /// Only runs started within this long: 7d, 24h, 90m (default: every run).
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
    /// Group by workflow, model (provider/model) or day.
    #[arg(long, value_enum, default_value_t = By::Workflow)]
    by: By,
    /// Print JSON: `{ schema, by, since, rows: [{ group, calls, input_tokens, output_tokens, cost_usd, unpriced_calls }], total }`.
    #[arg(long)]
    json: bool,
}

impl CostArgs {
    /// The start of the window, checked.
    pub(crate) fn since(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>, Failure> {
        self.since
            .as_deref()
            .map(|s| {
                let d = spes_core::duration::parse_duration(s)
                    .map_err(|e| Failure::Usage(format!("--since: {e}")))?;
                let d = chrono::Duration::from_std(d)
                    .map_err(|_| Failure::Usage(format!("--since {s}: too long")))?;
                Ok(chrono::Utc::now() - d)
            })
            .transpose()
    }

    /// The report with no runs (no store yet).
    pub(crate) fn empty(&self) -> Result<(), Failure> {
        let since = self.since()?;
        show(self, since, &[]);
        Ok(())
    }
}

pub(crate) async fn cost(
    config: Option<&Path>,
    store_url: Option<&str>,
    args: CostArgs,
) -> Result<(), Failure> {
    let since = args.since()?;
    let project = Project::discover(config, &std::env::current_dir().unwrap_or_default())?;
    let store = crate::runs::open_store(&project, store_url).await?;
    let rows = store.costs(since, args.by.store()).await?;
    show(&args, since, &rows);
    Ok(())
}

fn show(
    args: &CostArgs,
    since: Option<chrono::DateTime<chrono::Utc>>,
    rows: &[spes_store::CostRow],
) {
    let report =
        spes_engine::view::CostReport::of(args.by.word(), since.map(|t| t.to_rfc3339()), rows);
    if args.json {
        crate::term::out_doc(&report);
        return;
    }
    if rows.is_empty() {
        say!(
            "no model calls{}",
            args.since
                .as_deref()
                .map(|s| format!(" in runs started within {s}"))
                .unwrap_or_default()
        );
        return;
    }
    let mut table = vec![[
        args.by.word().to_uppercase(),
        "CALLS".to_owned(),
        "TOKENS IN".to_owned(),
        "TOKENS OUT".to_owned(),
        "COST".to_owned(),
    ]];
    for r in report.rows.iter().chain(std::iter::once(&report.total)) {
        table.push([
            r.group.clone(),
            r.calls.to_string(),
            r.input_tokens.to_string(),
            r.output_tokens.to_string(),
            cost_cell(r.cost_usd, r.unpriced_calls, r.calls),
        ]);
    }
    out(&crate::runs::table(&table));
    if report.total.unpriced_calls > 0 {
        say!(
            "{} call{} had no price: add `prices.\"MODEL\" = {{ input = ..., output = ... }}` (dollars per million tokens) under its [providers.NAME] in spes.toml",
            report.total.unpriced_calls,
            if report.total.unpriced_calls == 1 {
                ""
            } else {
                "s"
            }
        );
    }
}

fn cost_cell(cost: f64, unpriced: u64, calls: u64) -> String {
    if unpriced == calls {
        "unpriced".to_owned()
    } else if unpriced > 0 {
        format!("{} + {unpriced} unpriced", crate::fmt_cost(cost))
    } else {
        crate::fmt_cost(cost)
    }
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum CacheCmd {
    /// Delete cached answers (all, or those older than --older-than).
    Clear {
        /// Only answers stored longer ago than this: 7d, 12h.
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
    },
    /// What the response cache holds: answers, hits, bytes.
    Stats {
        /// Print JSON: `{ schema, entries, hits, bytes, oldest, newest }`.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn cache(
    config: Option<&Path>,
    store_url: Option<&str>,
    cmd: CacheCmd,
) -> Result<(), Failure> {
    let project = Project::discover(config, &std::env::current_dir().unwrap_or_default())?;
    match cmd {
        CacheCmd::Clear { older_than } => {
            let age = older_than
                .as_deref()
                .map(|s| {
                    spes_core::duration::parse_duration(s)
                        .map_err(|e| Failure::Usage(format!("--older-than: {e}")))
                })
                .transpose()?;
            if project.missing_store(store_url).is_some() {
                say!("the response cache is empty (no store yet)");
                return Ok(());
            }
            let store = crate::runs::open_store(&project, store_url).await?;
            let n = store.cache_clear(age).await?;
            say!("deleted {n} cached answer{}", if n == 1 { "" } else { "s" });
            Ok(())
        }
        CacheCmd::Stats { json } => {
            let stats = if project.missing_store(store_url).is_some() {
                spes_store::CacheStats::default()
            } else {
                let store = crate::runs::open_store(&project, store_url).await?;
                store.cache_stats().await?
            };
            if json {
                crate::term::out_doc(&spes_engine::view::CacheStatsDoc::of(&stats));
                return Ok(());
            }
            let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or_else(
                    || "-".to_owned(),
                    |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
                )
            };
            out(&format!(
                "answers: {}\nhits:    {}\nbytes:   {}\noldest:  {}\nnewest:  {}{}",
                stats.entries,
                stats.hits,
                stats.bytes,
                when(stats.oldest),
                when(stats.newest),
                if project.config.cache.enabled {
                    ""
                } else {
                    "\n(the cache is off in spes.toml: `spes run --cache`, or [cache] enabled = true)"
                }
            ));
            Ok(())
        }
    }
}
