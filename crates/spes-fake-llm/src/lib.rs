//! A fake LLM HTTP server speaking the Anthropic Messages and OpenAI Chat
//! Completions wire formats, with scripted answers and faults.
//!
//! [`FakeServer::start`] binds `127.0.0.1:0` and serves, on a background
//! task:
//!
//! - `POST /v1/messages`: Anthropic Messages, JSON or SSE (`"stream": true`)
//!   with the real event sequence (`message_start`, `content_block_start`,
//!   `ping`, `content_block_delta`, `content_block_stop`, `message_delta`,
//!   `message_stop`) and a `request-id` header;
//! - `POST /v1/chat/completions` (also `/chat/completions`): OpenAI Chat
//!   Completions, JSON or SSE chunks ending with `data: [DONE]`, a usage
//!   chunk when `stream_options.include_usage` is set, and an
//!   `x-request-id` header.
//!
//! What it answers is scripted: [`FakeServer::push`] queues one-shot
//! answers (taken in order, whatever the route), [`FakeServer::when_user_contains`]
//! adds standing rules, and with nothing scripted it echoes the last user
//! message (`echo: <text>`). Answers can carry faults ([`Fault`]): an HTTP
//! error in the provider's error shape (with `retry-after`), a hang before
//! the headers, a stall or a broken connection in the middle of the body.
//! Answers can call tools ([`FakeToolCall`], [`FakeResponse::tool_calls`]):
//! OpenAI `tool_calls` (streamed as fragments keyed by `index`, the
//! arguments of parallel calls interleaved) and Anthropic `tool_use`
//! blocks (streamed as `input_json_delta`), with the tool-use stop reason.
//! Like the real APIs, the server answers 400 to malformed `tools`, a
//! `tool_choice` without tools, a tool call in the history left without
//! its result, and a result that answers no call of the turn before.
//! Every request is recorded ([`FakeServer::requests`]) with its headers and
//! JSON body.
//!
//! A provider's concurrency limit can be imitated
//! ([`FakeServer::set_max_concurrency`]): with [`OverLimit::Reject`] a
//! request arriving while `N` others are being handled is answered 429
//! at once (not recorded, no scripted answer taken) and counted
//! ([`FakeServer::rejected`]); with [`OverLimit::Queue`] it waits for one
//! of them to be answered. `GET /stats` answers the counts as JSON
//! (`{"requests", "max_in_flight", "rejected"}`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use spes_fake_llm::{FakeResponse, FakeServer};
//!
//! let server = FakeServer::start().await?;
//! server.push(FakeResponse::text("hello"));
//! server.push(FakeResponse::rate_limited(Some("2")));
//! assert!(server.url().starts_with("http://127.0.0.1:"));
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod dialect;
mod handler;
mod script;
mod tools;

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use script::{FakeError, FakeResponse, FakeStop, FakeToolCall, FakeUsage, Fault};

/// A request the server received.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// 1-based arrival order.
    pub n: usize,
    /// The client's address (one per connection: equal addresses mean a
    /// reused keep-alive connection).
    pub peer: SocketAddr,
    /// HTTP method.
    pub method: String,
    /// Path (without query).
    pub path: String,
    /// Every header, names in lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Null` if it was not JSON).
    pub body: serde_json::Value,
    /// The raw body, lossily decoded as UTF-8.
    pub raw_body: String,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Hook = Arc<dyn Fn(usize) + Send + Sync>;

/// What the server does with a request over its concurrency limit
/// ([`FakeServer::set_max_concurrency`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    /// Answer 429 (`rate_limit_error`) at once, and count it.
    Reject,
    /// Wait until fewer than the limit are being handled.
    Queue,
}

impl std::str::FromStr for OverLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reject" => Ok(Self::Reject),
            "queue" => Ok(Self::Queue),
            other => Err(format!("`{other}` is not reject or queue")),
        }
    }
}

/// A concurrency limit in force.
#[derive(Clone)]
pub(crate) enum Limit {
    Reject(usize),
    Queue(Arc<tokio::sync::Semaphore>),
}

#[derive(Default)]
struct Script {
    queue: VecDeque<FakeResponse>,
    rules: Vec<(String, FakeResponse)>,
    default: Option<FakeResponse>,
    latency: Duration,
    required_key: Option<String>,
    hook: Option<Hook>,
}

pub(crate) struct Shared {
    script: Mutex<Script>,
    requests: Mutex<Vec<RecordedRequest>>,
    count: AtomicUsize,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) max_in_flight: AtomicUsize,
    /// Requests admitted under the concurrency limit and not yet answered.
    pub(crate) limited: AtomicUsize,
    /// Requests answered 429 for being over the concurrency limit.
    pub(crate) rejected: AtomicUsize,
    pub(crate) limit: Mutex<Option<Limit>>,
    shutdown: watch::Receiver<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the handler needs to answer one request.
pub(crate) struct Plan {
    pub(crate) n: usize,
    pub(crate) response: FakeResponse,
    pub(crate) latency: Duration,
    pub(crate) required_key: Option<String>,
}

impl Shared {
    /// Records a request and picks its answer.
    pub(crate) fn admit(&self, mut req: RecordedRequest, user_text: &str) -> Plan {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        req.n = n;
        lock(&self.requests).push(req);
        let (plan, hook) = {
            let mut s = lock(&self.script);
            let response = s
                .queue
                .pop_front()
                .or_else(|| {
                    s.rules
                        .iter()
                        .find(|(needle, _)| user_text.contains(needle.as_str()))
                        .map(|(_, r)| r.clone())
                })
                .or_else(|| s.default.clone())
                .unwrap_or_default();
            let plan = Plan {
                n,
                response,
                latency: s.latency,
                required_key: s.required_key.clone(),
            };
            (plan, s.hook.clone())
        };
        if let Some(hook) = hook {
            hook(n);
        }
        plan
    }

    /// The concurrency limit in force, if any.
    pub(crate) fn limit(&self) -> Option<Limit> {
        lock(&self.limit).clone()
    }

    pub(crate) fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }
}

/// The running fake server. Dropping it stops accepting connections and
/// releases hung and stalled responses.
pub struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl fmt::Debug for FakeServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeServer")
            .field("addr", &self.addr)
            .field("requests", &self.request_count())
            .finish_non_exhaustive()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    /// Starts a server on `127.0.0.1:0` (a free port).
    pub async fn start() -> io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a server on `addr`.
    pub async fn start_on(addr: SocketAddr) -> io::Result<Self> {
        use axum::serve::ListenerExt;

        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            script: Mutex::new(Script::default()),
            requests: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            limited: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
            limit: Mutex::new(None),
            shutdown: rx,
        });
        let app = router(Arc::clone(&shared));
        let listener = listener.tap_io(|tcp| {
            // Nagle would delay small SSE frames; failure only costs latency.
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            shared,
            _shutdown: tx,
            task,
        })
    }

    /// The bound address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the Anthropic base URL.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1`: the OpenAI base URL.
    #[must_use]
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues a one-shot answer; queued answers are used in order before
    /// any rule or the default.
    pub fn push(&self, response: FakeResponse) {
        lock(&self.shared.script).queue.push_back(response);
    }

    /// Answers every request whose last user message contains `needle`
    /// with `response` (when the queue is empty). First matching rule wins.
    pub fn when_user_contains(&self, needle: impl Into<String>, response: FakeResponse) {
        lock(&self.shared.script)
            .rules
            .push((needle.into(), response));
    }

    /// Replaces the answer used when neither queue nor rules apply
    /// (initially [`FakeResponse::echo`]).
    pub fn set_default(&self, response: FakeResponse) {
        lock(&self.shared.script).default = Some(response);
    }

    /// Adds `latency` before the headers of every response.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared.script).latency = latency;
    }

    /// Requires this API key (`x-api-key` on Anthropic routes,
    /// `Authorization: Bearer` on OpenAI routes); others get a 401.
    pub fn require_api_key(&self, key: impl Into<String>) {
        lock(&self.shared.script).required_key = Some(key.into());
    }

    /// Calls `hook(n)` when request `n` (1-based) arrives, before answering.
    pub fn on_request(&self, hook: impl Fn(usize) + Send + Sync + 'static) {
        lock(&self.shared.script).hook = Some(Arc::new(hook));
    }

    /// Every request received so far.
    #[must_use]
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// The last request received.
    #[must_use]
    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.shared.requests).last().cloned()
    }

    /// How many requests arrived.
    #[must_use]
    pub fn request_count(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// The most requests that were being handled at the same time (from
    /// arrival until the handler answered: for a non-streaming answer that
    /// includes the scripted latency). `reset` clears it.
    #[must_use]
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Handles at most `max` requests at once (`None`: no limit); what
    /// happens to one more is `over`. A limit set while requests are in
    /// flight counts only those that arrive after it.
    pub fn set_max_concurrency(&self, max: Option<usize>, over: OverLimit) {
        *lock(&self.shared.limit) = max.map(|n| match over {
            OverLimit::Reject => Limit::Reject(n),
            OverLimit::Queue => Limit::Queue(Arc::new(tokio::sync::Semaphore::new(n))),
        });
    }

    /// How many requests were answered 429 for being over the concurrency
    /// limit ([`OverLimit::Reject`]).
    #[must_use]
    pub fn rejected(&self) -> usize {
        self.shared.rejected.load(Ordering::SeqCst)
    }

    /// How many queued answers are left.
    #[must_use]
    pub fn pending(&self) -> usize {
        lock(&self.shared.script).queue.len()
    }

    /// Forgets recorded requests and scripted answers (not the default,
    /// latency, key or hook).
    pub fn reset(&self) {
        lock(&self.shared.script).queue.clear();
        lock(&self.shared.script).rules.clear();
        lock(&self.shared.requests).clear();
        self.shared.max_in_flight.store(0, Ordering::SeqCst);
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/messages", post(handler::anthropic))
        .route("/v1/chat/completions", post(handler::openai))
        .route("/chat/completions", post(handler::openai))
        .route("/stats", axum::routing::get(handler::stats))
        .fallback(handler::not_found)
        .with_state(shared)
}
