//! Live progress as Server-Sent Events: a run's journal as it grows, and
//! the gate inbox. Both read the store (runs may execute in any process
//! sharing it), every [`RUN_TICK`] or [`INBOX_TICK`]. The clients
//! watching one run share one reader: each tick it reads the run and the
//! entries after the last it saw (one indexed range read), and hands them
//! to every client; a client that falls behind, or reconnects, reads what
//! it lacks from the store.
//!
//! A run's stream (`GET /v1/runs/{run}/events`) sends `status` (the run as
//! `runs list` shows it) first and whenever its shown status changes,
//! `entry` for each journal entry (`id:` is the entry's `seq`), and `end`
//! once the run is finished and every entry was sent; then it closes.
//! While the run executes in this process it also sends `step` (a step
//! started or finished, a retry, a fallback) and `token` (streamed answer
//! text) as they happen; those are not stored, so a client that was not
//! connected, or falls behind, misses them. A
//! client that reconnects with `Last-Event-ID: N` gets the entries after
//! `N`, so it misses none.
//!
//! The inbox stream (`GET /v1/gates/events`) sends `snapshot` (every open
//! gate) first, then `opened` for each gate that opens and `closed`
//! (`{ run_id, key }`) for each that is decided or closed; a client that
//! reconnects gets a fresh snapshot.
//!
//! At most [`MAX_STREAMS`] streams are open at once; one more is a 503.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;
use serde_json::json;
use spes_engine::view::{self, EntryView, GateList, GateView, RunSummary, ShownStatus};
use spes_store::{GateFilter, RunId, RunStore};
use tokio::sync::{OwnedSemaphorePermit, broadcast};

use crate::AppState;
use crate::error::{ApiError, ErrorBody};

/// How often a run's stream reads the store.
pub const RUN_TICK: Duration = Duration::from_millis(100);
/// How often the inbox stream reads the store.
pub const INBOX_TICK: Duration = Duration::from_millis(250);
/// Streams open at once, across clients.
pub const MAX_STREAMS: usize = 256;
/// How long a run's stream may stay silent before it sends a comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

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

/// What a run's poller tells its subscribers.
#[derive(Debug)]
enum Item {
    /// The run's shown status, and its `status` event.
    Status(ShownStatus, Bytes),
    /// Journal entries `first..=last` (consecutive seqs) and their `entry`
    /// events, encoded together once for every client.
    Entries(i64, i64, Bytes),
    /// Every entry up to this seq was committed before the poller's first
    /// read (sent once, after it): a subscriber that has sent fewer reads
    /// the rest from the store.
    Sync(i64),
    /// The run is final and every entry was broadcast.
    End,
    /// Progress of a run executing in this process, gathered between two
    /// ticks of its poller: steps started or finished, retries, fallbacks
    /// (`step`), and streamed answer text (`token`). Not stored: a client
    /// that was not listening misses it. The events, encoded once for
    /// every client.
    Progress(Bytes),
}

/// One run's live feed, shared by every client watching it: one poller
/// reads the store each [`RUN_TICK`] and broadcasts what is new.
struct RunChannel {
    tx: broadcast::Sender<Arc<Item>>,
    done: AtomicBool,
    /// Progress events not yet handed to the clients, encoded.
    progress: Mutex<Vec<u8>>,
}

/// The live feeds of the runs being watched.
#[derive(Default)]
pub(crate) struct Hub {
    runs: Mutex<HashMap<RunId, Weak<RunChannel>>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// Items a slow client may fall behind by before it re-reads the store.
const CHANNEL_CAPACITY: usize = 1024;
/// Entries read from the store at once.
const PAGE: usize = 500;

/// One Server-Sent Event, encoded: encoded once, sent to every client as
/// is. `data` is compact JSON, which holds no line break.
fn frame(name: &str, id: Option<i64>, data: &str) -> Bytes {
    let mut b = String::with_capacity(data.len() + name.len() + 32);
    if let Some(id) = id {
        b.push_str("id: ");
        b.push_str(&id.to_string());
        b.push('\n');
    }
    b.push_str("event: ");
    b.push_str(name);
    b.push_str("\ndata: ");
    b.push_str(data);
    b.push_str("\n\n");
    Bytes::from(b)
}

fn json_frame(name: &str, data: &impl serde::Serialize) -> Bytes {
    frame(
        name,
        None,
        &serde_json::to_string(data).unwrap_or_else(|_| "null".to_owned()),
    )
}

/// A page of entries as one buffer of `entry` events: (first seq, last
/// seq, bytes), or `None` for an empty page.
fn entries_frames(page: Vec<spes_store::Entry>) -> Option<(i64, i64, Bytes)> {
    let first = page.first()?.seq;
    let mut last = first;
    let mut buf = Vec::new();
    for e in page {
        let (seq, frame) = entry_frame(e);
        last = seq;
        buf.extend_from_slice(&frame);
    }
    Some((first, last, Bytes::from(buf)))
}

/// Every entry after `after`, read a page at a time, each page encoded as
/// one buffer: (first seq, last seq, bytes) per page.
async fn pages_after(
    store: &dyn RunStore,
    id: &RunId,
    mut after: i64,
) -> Result<Vec<(i64, i64, Bytes)>, spes_store::StoreError> {
    let mut pages = Vec::new();
    loop {
        let page = store.entries_after(id, after, PAGE).await?;
        let n = page.len();
        if let Some(p) = entries_frames(page) {
            after = p.1;
            pages.push(p);
        }
        if n < PAGE {
            return Ok(pages);
        }
    }
}

fn entry_frame(e: spes_store::Entry) -> (i64, Bytes) {
    let seq = e.seq;
    let v = EntryView {
        seq: e.seq,
        key: e.key,
        kind: e.kind,
        recorded_at: e.recorded_at.to_rfc3339(),
        payload: e.payload,
    };
    let json = serde_json::to_string(&v).unwrap_or_else(|_| "null".to_owned());
    (seq, frame("entry", Some(seq), &json))
}

impl Hub {
    /// Hands a progress event of run `id` (executing here) to the clients
    /// watching it, if any.
    pub(crate) fn publish(&self, id: &RunId, event: &spes_engine::Event) {
        let ch = {
            let runs = self
                .runs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            runs.get(id).and_then(Weak::upgrade)
        };
        let Some(ch) = ch else { return };
        let view = spes_engine::view::EventView::of(event);
        let name = if matches!(view, spes_engine::view::EventView::Delta { .. }) {
            "token"
        } else {
            "step"
        };
        let Ok(json) = serde_json::to_string(&view) else {
            return;
        };
        ch.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(&frame(name, None, &json));
    }

    /// Subscribes to `id`'s feed, starting its poller if none runs.
    fn subscribe(
        &self,
        store: &Arc<dyn RunStore>,
        id: RunId,
    ) -> (Arc<RunChannel>, broadcast::Receiver<Arc<Item>>) {
        let mut runs = self
            .runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        runs.retain(|_, w| w.strong_count() > 0);
        if let Some(ch) = runs.get(&id).and_then(Weak::upgrade)
            && !ch.done.load(Ordering::Acquire)
        {
            let rx = ch.tx.subscribe();
            return (ch, rx);
        }
        let (tx, rx) = broadcast::channel(CHANNEL_CAPACITY);
        let ch = Arc::new(RunChannel {
            tx,
            done: AtomicBool::new(false),
            progress: Mutex::default(),
        });
        runs.insert(id, Arc::downgrade(&ch));
        tokio::spawn(poll_run(store.clone(), id, Arc::downgrade(&ch)));
        (ch, rx)
    }
}

/// Reads the run's status and new entries each tick and broadcasts them,
/// until the run is final (then `End`) or nobody watches.
async fn poll_run(store: Arc<dyn RunStore>, id: RunId, ch: Weak<RunChannel>) {
    let send = |item: Item| -> bool {
        match ch.upgrade() {
            Some(c) => {
                let _ = c.tx.send(Arc::new(item));
                true
            }
            None => false,
        }
    };
    let mut tick = tokio::time::interval(RUN_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seq: Option<i64> = None;
    let mut status = None;
    let mut synced = false;
    // Progress gathered since the last tick goes out at once: a run
    // making hundreds of steps a second wakes each client once a tick,
    // not once per event.
    let flush = || {
        if let Some(c) = ch.upgrade() {
            let batch = std::mem::take(
                &mut *c
                    .progress
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if !batch.is_empty() {
                let _ = c.tx.send(Arc::new(Item::Progress(Bytes::from(batch))));
            }
        }
    };
    loop {
        tick.tick().await;
        if ch.strong_count() == 0 {
            return;
        }
        flush();
        let run = match store.run(&id).await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(run = %id, error = %e, "event stream cannot read the run");
                continue;
            }
        };
        let shown = ShownStatus::of(&run);
        if status != Some(shown) {
            status = Some(shown);
            if !send(Item::Status(
                shown,
                json_frame("status", &RunSummary::of(&run)),
            )) {
                return;
            }
        }
        match pages_after(store.as_ref(), &id, last_seq.unwrap_or(0)).await {
            Ok(pages) => {
                for (first, last, frames) in pages {
                    // The first read only finds where the journal ends:
                    // subscribers read what came before from the store.
                    if last_seq.is_some() && !send(Item::Entries(first, last, frames)) {
                        return;
                    }
                    last_seq = Some(last);
                }
            }
            Err(e) => {
                tracing::warn!(run = %id, error = %e, "event stream cannot read the journal");
                continue;
            }
        }
        if last_seq.is_none() {
            last_seq = Some(0);
        }
        // Once, after the first read: the clients that subscribed before it
        // learn where the journal ended (later ones read past it themselves).
        if !synced {
            synced = true;
            if !send(Item::Sync(last_seq.unwrap_or(0))) {
                return;
            }
        }
        if run.status.is_final() {
            break;
        }
    }
    // The run published all its progress before it became final.
    flush();
    if let Some(c) = ch.upgrade() {
        c.done.store(true, Ordering::Release);
        let _ = c.tx.send(Arc::new(Item::End));
    }
}

enum Phase {
    CatchUp,
    Live,
    Done,
}

/// One client's view of a run's feed.
struct RunFeed {
    store: Arc<dyn RunStore>,
    hub: Arc<Hub>,
    id: RunId,
    sent_seq: i64,
    status: Option<ShownStatus>,
    queue: VecDeque<Bytes>,
    phase: Phase,
    chan: Arc<RunChannel>,
    rx: broadcast::Receiver<Arc<Item>>,
    _permit: OwnedSemaphorePermit,
}

impl RunFeed {
    fn push_entries(&mut self, last: i64, frames: Bytes) {
        self.sent_seq = last;
        self.queue.push_back(frames);
    }

    fn push_status(&mut self, shown: ShownStatus, frame: Bytes) {
        if self.status != Some(shown) {
            self.status = Some(shown);
            self.queue.push_back(frame);
        }
    }

    /// Reads the store: the status first, then every entry after the last
    /// sent, so a final status means every entry is among those read.
    async fn catch_up(&mut self) {
        let run = match self.store.run(&self.id).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.queue
                    .push_back(json_frame("end", &json!({ "gone": true })));
                self.phase = Phase::Done;
                return;
            }
            Err(e) => {
                tracing::warn!(run = %self.id, error = %e, "event stream cannot read the run");
                self.phase = Phase::Live;
                return;
            }
        };
        let shown = ShownStatus::of(&run);
        if self.status != Some(shown) {
            self.push_status(shown, json_frame("status", &RunSummary::of(&run)));
        }
        match pages_after(self.store.as_ref(), &self.id, self.sent_seq).await {
            Ok(pages) => {
                for (_, last, frames) in pages {
                    self.push_entries(last, frames);
                }
            }
            Err(e) => {
                // Not `end` without every entry: try again later.
                tracing::warn!(run = %self.id, error = %e, "event stream cannot read the journal");
                self.phase = Phase::Live;
                return;
            }
        }
        if run.status.is_final() {
            self.queue
                .push_back(json_frame("end", &json!({ "status": shown })));
            self.phase = Phase::Done;
        } else {
            self.phase = Phase::Live;
        }
    }

    /// Waits for the poller's next item, then takes every item already
    /// there (one wake for a burst).
    async fn live(&mut self) {
        let mut next = Some(self.rx.recv().await);
        let mut taken = 0;
        while let Some(got) = next.take() {
            match got {
                Ok(item) => self.apply(&item),
                // Fell behind, or the poller stopped: read the store again,
                // and watch a fresh feed if the run goes on.
                Err(broadcast::error::RecvError::Lagged(_)) => self.phase = Phase::CatchUp,
                Err(broadcast::error::RecvError::Closed) => {
                    let (chan, rx) = self.hub.subscribe(&self.store, self.id);
                    self.chan = chan;
                    self.rx = rx;
                    self.phase = Phase::CatchUp;
                }
            }
            taken += 1;
            if matches!(self.phase, Phase::Live) && taken < 1024 {
                next = match self.rx.try_recv() {
                    Ok(item) => Some(Ok(item)),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Some(Err(broadcast::error::RecvError::Lagged(n)))
                    }
                    Err(_) => None,
                };
            }
        }
        if matches!(self.phase, Phase::CatchUp) && self.chan.done.load(Ordering::Acquire) {
            let (chan, rx) = self.hub.subscribe(&self.store, self.id);
            self.chan = chan;
            self.rx = rx;
        }
    }

    fn apply(&mut self, item: &Item) {
        match item {
            Item::Entries(first, last, frames) if *first == self.sent_seq + 1 => {
                self.push_entries(*last, frames.clone());
            }
            // Some sent already, or some missing: the store has them all.
            Item::Entries(_, seq, _) | Item::Sync(seq) if *seq > self.sent_seq => {
                self.phase = Phase::CatchUp;
            }
            Item::Entries(..) | Item::Sync(_) => {}
            Item::Status(shown, frame) => self.push_status(*shown, frame.clone()),
            Item::Progress(frames) => self.queue.push_back(frames.clone()),
            Item::End => self.phase = Phase::CatchUp,
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
) -> Result<Response, ApiError> {
    let r = s.store.find_run(&run).await?;
    let sent_seq = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an entry's seq"))?,
    };
    let permit = permit(&s)?;
    // Subscribed before the first read: whatever commits after that read
    // reaches this client through the channel.
    let (chan, rx) = s.hub.subscribe(&s.store, r.id);
    let feed = RunFeed {
        store: s.store.clone(),
        hub: s.hub.clone(),
        id: r.id,
        sent_seq,
        status: None,
        queue: VecDeque::new(),
        phase: Phase::CatchUp,
        chan,
        rx,
        _permit: permit,
    };
    // The frames are written as they are, encoded once for all clients; a
    // comment every KEEP_ALIVE keeps an idle connection open.
    let stream = futures::stream::unfold(feed, |mut f| async move {
        loop {
            if let Some(b) = f.queue.pop_front() {
                return Some((Ok::<_, Infallible>(b), f));
            }
            match f.phase {
                Phase::Done => return None,
                Phase::CatchUp => f.catch_up().await,
                Phase::Live => {
                    if tokio::time::timeout(KEEP_ALIVE, f.live()).await.is_err() {
                        return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), f));
                    }
                }
            }
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
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
