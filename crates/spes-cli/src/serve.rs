//! `spes serve`: the HTTP API (`spes_server`) over the project's store,
//! with the project read exactly as the other commands read it.

use crate::term::say;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use spes_core::Diagnostics;
use spes_core::component::ComponentRegistry;
use spes_core::workflow::Workflow;
use spes_engine::Engine;
use spes_server::auth::Auth;
use spes_server::{AppState, Loaded};

use crate::project::Project;
use crate::{Failure, build_engine};

#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// Address to listen on. A non-loopback address needs `[server.tokens]` in spes.toml.
    #[arg(long, default_value = "127.0.0.1:7700")]
    bind: SocketAddr,
    /// Also execute queued runs and map items here, N at once (a postgres:// store).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
}

/// The project as the server sees it: the functions `spes run` uses.
struct CliProject {
    project: Project,
    /// The server's store: the response cache (`[cache] enabled`) lives there.
    store: Arc<dyn spes_store::RunStore>,
}

impl spes_server::Project for CliProject {
    fn workflow_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for root in &self.project.config.server.workflows {
            collect_yaml(&self.project.rel(root), &mut files, 0);
        }
        files.sort();
        files.dedup();
        files
    }

    fn load(&self, file: &Path) -> Result<Loaded, Diagnostics> {
        let (workflow, warnings, source) =
            crate::load_with_source(&self.project, file).map_err(diagnostics)?;
        Ok(Loaded {
            workflow,
            warnings,
            source,
        })
    }

    fn check_inputs(
        &self,
        wf: &Workflow,
        inputs: &BTreeMap<String, Value>,
    ) -> Result<(), Diagnostics> {
        crate::refuse_empty_required(wf, inputs).map_err(diagnostics)
    }

    fn engine(&self, provider: Option<&str>) -> Result<Engine, String> {
        let engine = build_engine(&self.project, provider, true, None, false)
            .map_err(crate::worker::describe)?;
        Ok(crate::with_cache(engine, &self.project, &self.store, false))
    }

    fn components(&self) -> (ComponentRegistry, Diagnostics) {
        self.project.components()
    }
}

fn diagnostics(f: Failure) -> Diagnostics {
    match f {
        Failure::Input(d) => d,
        other => Diagnostics::from(spes_core::Diagnostic::error(
            "spes::workflow::unusable",
            crate::worker::describe(other),
        )),
    }
}

/// `*.yaml` and `*.yml` files under `dir` (a few levels deep).
fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            if depth < 8 {
                collect_yaml(&p, out, depth + 1);
            }
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

pub(crate) async fn serve(
    config: Option<&Path>,
    store_url: Option<&str>,
    args: ServeArgs,
) -> Result<(), Failure> {
    // Installed first: a SIGTERM while the server starts stops it cleanly.
    let stop = crate::worker::shutdown();
    let cwd = std::env::current_dir().unwrap_or_default();
    let project = Project::discover(config, &cwd)?;
    let auth = Auth::from_config(
        &project.config.server.tokens,
        &|k| std::env::var(k).ok(),
        args.bind,
        &spes_engine::ops::default_reviewer(),
    )
    .map_err(|e| Failure::Usage(e.0))?;
    // A provider that cannot be built is refused now, not at the first run.
    let engine = build_engine(&project, None, true, None, false)?;
    let store = crate::runs::open_store_with(&project, store_url, 4).await?;
    if args.workers.is_some() && store.queue().is_none() {
        return Err(Failure::Usage(format!(
            "--workers needs a shared store (--store postgres://...); {} has no work queue",
            store.describe()
        )));
    }
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(|e| Failure::Usage(format!("cannot listen on {}: {e}", args.bind)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::Usage(format!("cannot listen on {}: {e}", args.bind)))?;
    let needs_token = auth.needs_token();
    // The `--workers` execute with the cache too, as `spes worker` does.
    let engine = crate::with_cache(engine, &project, &store, false);
    let state = AppState::new(
        store.clone(),
        Arc::new(CliProject {
            project,
            store: store.clone(),
        }),
        auth,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let exec = state.executor().clone();
    let recovered = exec.recover().await;
    if recovered > 0 {
        say!("spes serve: continuing {recovered} decided run(s) that no process continued");
    }
    let deadlines = tokio::spawn({
        let stopped = stopped.clone();
        async move { exec.deadlines(stopped()).await }
    });
    let worker = match args.workers {
        Some(n) => {
            let opts = spes_engine::worker::WorkerOptions::default()
                .with_concurrency(n.max(1))
                .with_log(Arc::new(|line: &str| say!("serve worker: {line}")));
            let w = spes_engine::worker::Worker::new(
                Arc::new(engine),
                store.clone(),
                crate::worker::loader(config),
                opts,
            )?;
            let stopped = stopped.clone();
            Some(tokio::spawn(async move { w.run(stopped()).await }))
        }
        None => None,
    };
    say!(
        "spes serve: listening on http://{addr} (store {}; {}{})",
        store.describe(),
        if needs_token {
            "bearer tokens required"
        } else {
            "no tokens: every local caller is an operator"
        },
        args.workers
            .map(|n| format!("; {n} workers"))
            .unwrap_or_default()
    );
    let served = axum::serve(listener, spes_server::router(state.clone()))
        .with_graceful_shutdown(stop)
        .await;
    let _ = stop_tx.send(true);
    let _ = deadlines.await;
    if let Some(w) = worker {
        let _ = w.await;
    }
    for id in state.executor().shutdown().await {
        say!(
            "run {id} interrupted; `spes resume {id}` continues it (finished steps are not repeated)"
        );
    }
    say!("spes serve: stopped");
    served.map_err(|e| Failure::Usage(format!("serving on {addr} failed: {e}")))
}
