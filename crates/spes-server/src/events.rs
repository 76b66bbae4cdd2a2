//! Live progress as Server-Sent Events: a run's journal as it grows, and
//! the gate inbox. Both read the store (runs may execute in any process
//! sharing it), every [`RUN_TICK`] or [`INBOX_TICK`].
//!
//! A run's stream (`GET /v1/runs/{run}/events`) sends `status` (the run as
//! `runs list` shows it) first and whenever its shown status changes,
//! `entry` for each journal entry (`id:` is the entry's `seq`), and `end`
//! once the run is finished and every entry was sent; then it closes. A
//! client that reconnects with `Last-Event-ID: N` gets the entries after
//! `N`, so it misses none.
//!
//! The inbox stream (`GET /v1/gates/events`) sends `snapshot` (every open
//! gate) first, then `opened` for each gate that opens and `closed`
//! (`{ run_id, key }`) for each that is decided or closed; a client that
//! reconnects gets a fresh snapshot.
//!
//! At most [`MAX_STREAMS`] streams are open at once; one more is a 503.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde_json::json;
use spes_engine::view::{self, EntryView, GateList, GateView, RunSummary, ShownStatus};
use spes_store::{GateFilter, RunId, RunStore};
use tokio::sync::OwnedSemaphorePermit;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};

/// How often a run's stream reads the store.
pub const RUN_TICK: Duration = Duration::from_millis(100);
/// How often the inbox stream reads the store.
pub const INBOX_TICK: Duration = Duration::from_millis(250);
/// Streams open at once, across clients.
pub const MAX_STREAMS: usize = 256;

type Events = Sse<
    axum::response::sse::KeepAliveStream<
        std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>,
    >,
>;

fn permit(s: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    s.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{MAX_STREAMS} event streams are open; try again later"),
        )
    })
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(data).unwrap_or_else(|_| "null".to_owned()))
}

struct RunFeed {
    store: Arc<dyn RunStore>,
    id: RunId,
    last_seq: i64,
    status: Option<ShownStatus>,
    queue: VecDeque<Event>,
    done: bool,
    first: bool,
    tick: tokio::time::Interval,
    _permit: OwnedSemaphorePermit,
}

impl RunFeed {
    /// Reads the store once: the status first, then the entries, so a
    /// finished status means every entry is among those read. A changed
    /// status is sent before the entries read with it.
    async fn read(&mut self) {
        let run = match self.store.run(&self.id).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.queue
                    .push_back(json_event("end", &json!({ "gone": true })));
                self.done = true;
                return;
            }
            Err(e) => {
                tracing::warn!(run = %self.id, error = %e, "event stream cannot read the run");
                return;
            }
        };
        let shown = ShownStatus::of(&run);
        if self.status != Some(shown) {
            self.status = Some(shown);
            self.queue
                .push_back(json_event("status", &RunSummary::of(&run)));
        }
        match self.store.entries(&self.id).await {
            Ok(entries) => {
                let after = self.last_seq;
                for e in entries.into_iter().filter(|e| e.seq > after) {
                    self.last_seq = e.seq;
                    let v = EntryView {
                        seq: e.seq,
                        key: e.key,
                        kind: e.kind,
                        recorded_at: e.recorded_at.to_rfc3339(),
                        payload: e.payload,
                    };
                    self.queue
                        .push_back(json_event("entry", &v).id(e.seq.to_string()));
                }
            }
            Err(e) => {
                tracing::warn!(run = %self.id, error = %e, "event stream cannot read the journal");
                return;
            }
        }
        if run.status.is_final() {
            self.queue
                .push_back(json_event("end", &json!({ "status": shown })));
            self.done = true;
        }
    }
}

/// A run's progress, live.
#[utoipa::path(get, path = "/v1/runs/{run}/events", tag = "runs",
    params(("run" = String, Path, description = "Run id or unique prefix"),
           ("Last-Event-ID" = Option<String>, Header, description = "The `seq` of the last entry received: only later ones are sent")),
    security(("bearer" = [])),
    responses((status = 200, description = "`text/event-stream`: `status`, `entry` (id = seq) and `end` events", content_type = "text/event-stream"),
              (status = 404, description = "No such run", body = ErrorBody),
              (status = 503, description = "Too many streams open", body = ErrorBody)))]
pub async fn run_events(
    State(s): State<AppState>,
    Path(run): Path<String>,
    headers: HeaderMap,
) -> Result<Events, ApiError> {
    let r = s.store.find_run(&run).await?;
    let last_seq = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an entry's seq"))?,
    };
    let feed = RunFeed {
        store: s.store.clone(),
        id: r.id,
        last_seq,
        status: None,
        queue: VecDeque::new(),
        done: false,
        first: true,
        tick: tokio::time::interval(RUN_TICK),
        _permit: permit(&s)?,
    };
    let stream = futures::stream::unfold(feed, |mut f| async move {
        loop {
            if let Some(e) = f.queue.pop_front() {
                return Some((Ok(e), f));
            }
            if f.done {
                return None;
            }
            if !f.first {
                f.tick.tick().await;
            }
            f.first = false;
            f.read().await;
        }
    });
    Ok(Sse::new(Box::pin(stream) as _).keep_alive(KeepAlive::default()))
}

struct InboxFeed {
    store: Arc<dyn RunStore>,
    open: Option<BTreeMap<(String, String), ()>>,
    queue: VecDeque<Event>,
    tick: tokio::time::Interval,
    _permit: OwnedSemaphorePermit,
}

impl InboxFeed {
    async fn read(&mut self) {
        let gates = match self
            .store
            .gates(&GateFilter {
                run_id: None,
                pending_only: true,
            })
            .await
        {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "inbox stream cannot read the gates");
                return;
            }
        };
        let now: BTreeMap<(String, String), ()> = gates
            .iter()
            .map(|g| ((g.run_id.to_string(), g.key.clone()), ()))
            .collect();
        match &self.open {
            None => self.queue.push_back(json_event(
                "snapshot",
                &GateList {
                    schema: view::VERSION,
                    gates: gates.iter().map(GateView::of).collect(),
                },
            )),
            Some(before) => {
                for (run, key) in before.keys().filter(|k| !now.contains_key(*k)) {
                    self.queue
                        .push_back(json_event("closed", &json!({ "run_id": run, "key": key })));
                }
                for g in gates
                    .iter()
                    .filter(|g| !before.contains_key(&(g.run_id.to_string(), g.key.clone())))
                {
                    self.queue.push_back(json_event("opened", &GateView::of(g)));
                }
            }
        }
        self.open = Some(now);
    }
}

/// The gate inbox, live.
#[utoipa::path(get, path = "/v1/gates/events", tag = "gates",
    security(("bearer" = [])),
    responses((status = 200, description = "`text/event-stream`: `snapshot`, then `opened` and `closed` events", content_type = "text/event-stream"),
              (status = 503, description = "Too many streams open", body = ErrorBody)))]
pub async fn gate_events(State(s): State<AppState>) -> Result<Events, ApiError> {
    let feed = InboxFeed {
        store: s.store.clone(),
        open: None,
        queue: VecDeque::new(),
        tick: tokio::time::interval(INBOX_TICK),
        _permit: permit(&s)?,
    };
    let stream = futures::stream::unfold(feed, |mut f| async move {
        loop {
            if let Some(e) = f.queue.pop_front() {
                return Some((Ok(e), f));
            }
            f.tick.tick().await;
            f.read().await;
        }
    });
    Ok(Sse::new(Box::pin(stream) as _).keep_alive(KeepAlive::default()))
}
