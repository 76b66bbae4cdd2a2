//! `spes runs prune --older-than 30d [--status S] [--dry-run]`: deletes
//! finished runs with their journals and gates.

use std::path::Path;

use spes_store::RunStatus;

use crate::Failure;
use crate::project::Project;
use crate::term::{out, say};

#[derive(clap::Args, Debug)]
pub(crate) struct PruneArgs {
    /// Only runs last updated longer ago than this: 30d, 12h, 90m.
    #[arg(long, value_name = "DURATION")]
    older_than: String,
    /// Only runs with this status: completed, failed or cancelled (repeatable; default: all three).
    #[arg(long)]
    status: Vec<String>,
    /// List the runs that would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
}

impl PruneArgs {
    /// The age and statuses, checked: only finished statuses may be named.
    pub(crate) fn check(&self) -> Result<(std::time::Duration, Vec<RunStatus>), Failure> {
        let age = spes_core::duration::parse_duration(&self.older_than)
            .map_err(|e| Failure::Usage(format!("--older-than: {e}")))?;
        let mut statuses = Vec::new();
        for s in &self.status {
            let st = s.parse::<RunStatus>().map_err(Failure::Usage)?;
            if !st.is_prunable() {
                return Err(Failure::Usage(format!(
                    "--status {s}: only finished runs are pruned (completed, failed, cancelled); \
                     a {s} run continues with `spes resume` or ends with `spes cancel`"
                )));
            }
            statuses.push(st);
        }
        Ok((age, statuses))
    }
}

pub(crate) async fn prune(
    config: Option<&Path>,
    store_url: Option<&str>,
    args: PruneArgs,
) -> Result<(), Failure> {
    let (age, statuses) = args.check()?;
    let age = chrono::Duration::from_std(age)
        .map_err(|_| Failure::Usage(format!("--older-than {}: too long", args.older_than)))?;
    let before = chrono::Utc::now()
        .checked_sub_signed(age)
        .ok_or_else(|| Failure::Usage(format!("--older-than {}: too long", args.older_than)))?;
    let cwd = std::env::current_dir().unwrap_or_default();
    let project = Project::discover(config, &cwd)?;
    let store = crate::runs::open_store(&project, store_url).await?;
    let ids = store.prune_runs(before, &statuses, args.dry_run).await?;
    let mut list = String::new();
    for id in &ids {
        list.push_str(&id.to_string());
        list.push('\n');
    }
    if !ids.is_empty() {
        out(&list);
    }
    let n = ids.len();
    let runs = if n == 1 { "run" } else { "runs" };
    if args.dry_run {
        say!(
            "{n} finished {runs} older than {} would be deleted (dry run: nothing deleted)",
            args.older_than
        );
    } else {
        say!(
            "deleted {n} finished {runs} older than {}, with their journals and gates",
            args.older_than
        );
    }
    Ok(())
}
