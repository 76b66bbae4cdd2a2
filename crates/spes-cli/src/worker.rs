//! `spes worker`: one of many workers sharing a PostgreSQL store, and
//! `spes run --detach` on such a store (the run is queued for them).

use crate::term::say;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use spes_core::workflow::Workflow;
use spes_engine::worker::{Worker, WorkerOptions, WorkflowLoader};
use spes_store::postgres::{ConnectionEvent, PostgresOptions, PostgresStore};
use spes_store::{Run, RunId, RunStore};

use crate::project::Project;
use crate::{Failure, build_engine};

#[derive(clap::Args, Debug)]
pub(crate) struct WorkerArgs {
    /// Most map items (and, separately, runs) this worker executes at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds a claim lasts without a heartbeat; a worker that stops
    /// renewing loses its tasks to another after this.
    #[arg(long, default_value_t = 10.0)]
    lease: f64,
    /// Milliseconds an idle worker waits before looking for work again.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    /// This worker's id in the store (default host:pid:random).
    #[arg(long)]
    id: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (no token needed;
    /// port 0 picks a free one, printed on stderr).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Keep providers' rpm, tpm and max_concurrency to this process instead
    /// of sharing them with every process on the store (for providers
    /// whose limits are per machine, such as a model server on each host).
    #[arg(long)]
    local_limits: bool,
}

/// Loads a run's workflow from its file on this machine; refuses a file
/// that changed since the run started.
#[derive(Debug)]
struct Loader {
    config: Option<PathBuf>,
    cache: std::sync::Mutex<std::collections::HashMap<RunId, Arc<Workflow>>>,
}

#[async_trait]
impl WorkflowLoader for Loader {
    async fn load(&self, run: &Run) -> Result<Arc<Workflow>, String> {
        if let Some(wf) = self.cache.lock().ok().and_then(|c| c.get(&run.id).cloned()) {
            return Ok(wf);
        }
        let file = PathBuf::from(&run.workflow_path);
        let project = Project::discover(self.config.as_deref(), &file).map_err(describe)?;
        let (wf, _, source) = crate::load_with_source(&project, &file).map_err(describe)?;
        if source.hash() != run.workflow_hash {
            return Err(format!(
                "the workflow file {} on this worker differs from the one the run started with",
                file.display()
            ));
        }
        let wf = Arc::new(wf);
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= 256 {
                c.clear();
            }
            c.insert(run.id, wf.clone());
        }
        Ok(wf)
    }
}

pub(crate) fn describe(f: Failure) -> String {
    match f {
        Failure::Input(d) => d.render_plain(),
        Failure::Run(e) => e.to_string(),
        Failure::Usage(m) | Failure::Busy(m) | Failure::Stopped(_, m) => m,
        Failure::Store(e) => e.to_string(),
    }
}

/// The loader of a worker in this process: runs' workflows from their
/// files, read with `config` (`--config`) like every command.
pub(crate) fn loader(config: Option<&Path>) -> Arc<dyn WorkflowLoader> {
    Arc::new(Loader {
        config: config.map(Path::to_path_buf),
        cache: std::sync::Mutex::default(),
    })
}

fn now() -> String {
    chrono::Utc::now().format("%H:%M:%S%.3f").to_string()
}

/// Opens a `postgres://` store with a hook that logs lost and restored connections.
async fn open_shared(url: &str, lease: Duration) -> Result<Arc<dyn RunStore>, Failure> {
    let opts = PostgresOptions::default()
        .with_max_connections(20)
        // A worker frozen inside a transaction must not keep its row locks
        // (and so its tasks) past its lease.
        .with_idle_in_transaction_timeout(
            lease.clamp(Duration::from_millis(500), Duration::from_secs(5)),
        )
        .with_on_connection(Arc::new(|e: &ConnectionEvent| match e {
            ConnectionEvent::Lost { reason } => {
                say!(
                    "{} worker: database unavailable ({reason}); reconnecting with backoff",
                    now()
                );
            }
            ConnectionEvent::Restored { after } => {
                say!(
                    "{} worker: reconnected to the database after {:.1}s",
                    now(),
                    after.as_secs_f64()
                );
            }
            _ => {}
        }));
    let store = PostgresStore::connect(url, opts).await?;
    Ok(Arc::new(store))
}

pub(crate) async fn worker(
    config: Option<&Path>,
    store_url: Option<&str>,
    args: WorkerArgs,
) -> Result<(), Failure> {
    // Before anything slow (the store, the engine): a SIGTERM that comes
    // while the worker starts stops it cleanly, not by the default action.
    let stop = shutdown();
    let cwd = std::env::current_dir().unwrap_or_default();
    let project = Project::discover(config, &cwd)?;
    let url = store_url
        .map(str::to_owned)
        .or_else(|| project.config.store.url.clone())
        .unwrap_or_default();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(Failure::Usage(format!(
            "spes worker needs a shared store: --store postgres://USER@HOST/DB (got `{}`)",
            if url.is_empty() { "none" } else { url.as_str() }
        )));
    }
    let lease = Duration::from_secs_f64(args.lease.max(0.3));
    let store = open_shared(&url, lease).await?;
    if !args.local_limits {
        spes_engine::limits::share_through(&store);
    }
    let engine = Arc::new(crate::with_cache(
        build_engine(&project, None, true, None, false)?,
        &project,
        &store,
        false,
    ));
    let mut opts = WorkerOptions::default()
        .with_concurrency(args.concurrency)
        .with_lease(lease)
        .with_poll(Duration::from_millis(args.poll_ms))
        .with_log(Arc::new(|line: &str| say!("{} worker: {line}", now())));
    if let Some(id) = args.id {
        opts = opts.with_id(id);
    }
    let id = opts.id().to_owned();
    let loader = Arc::new(Loader {
        config: config.map(Path::to_path_buf),
        cache: std::sync::Mutex::default(),
    });
    let metrics = match args.metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Failure::Usage(format!("cannot listen on {addr}: {e}")))?;
            let bound = listener
                .local_addr()
                .map_err(|e| Failure::Usage(format!("cannot listen on {addr}: {e}")))?;
            let app = spes_server::metrics::router(engine.metrics().clone(), store.clone());
            say!("{} worker: metrics at http://{bound}/metrics", now());
            Some(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }))
        }
        None => None,
    };
    let worker = Worker::new(engine, store.clone(), loader, opts)?;
    say!(
        "{} worker {id}: taking work from {} (concurrency {}, lease {}s, rate limits {})",
        now(),
        store.describe(),
        args.concurrency,
        args.lease,
        if args.local_limits {
            "per process"
        } else {
            "shared"
        }
    );
    let stats = worker.run(stop).await;
    if let Some(m) = metrics {
        m.abort();
    }
    say!(
        "{} worker {id}: stopped; {} runs, {} items done, {} leases lost, {} tasks given back",
        now(),
        stats.runs,
        stats.items,
        stats.lost,
        stats.released
    );
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C. The handlers are installed when this
/// is called, not when the future is first polled: a signal that arrives
/// in between is caught, not left to its default action (which ends the
/// process at once).
pub(crate) fn shutdown() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut term), Some(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `spes resume` of a run queued for workers: back to `pending` (error
/// cleared) with its task ready, for a worker to continue
/// (`spes_engine::ops::requeue`). False when the run is not a queued one
/// (it is resumed here, as usual).
pub(crate) async fn requeue(
    store: &Arc<dyn RunStore>,
    run: &Run,
    quiet: bool,
) -> Result<bool, Failure> {
    if !spes_engine::ops::requeue(store.as_ref(), run).await? {
        return Ok(false);
    }
    if !quiet {
        say!(
            "run {} queued again on {}; a `spes worker` continues it (finished steps are not repeated)",
            run.id,
            store.describe()
        );
    }
    Ok(true)
}
