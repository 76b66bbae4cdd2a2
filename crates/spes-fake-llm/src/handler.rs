//! The request handlers: record, pick the scripted answer, render it.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::dialect::{Answer, Dialect};
use crate::script::{FakeError, FakeResponse, FakeUsage, Fault};
use crate::{RecordedRequest, Shared};

/// `POST /v1/messages`.
pub(crate) async fn anthropic(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&s, Dialect::Anthropic, peer, &method, &uri, &headers, &body).await
}

/// `POST /v1/chat/completions`.
pub(crate) async fn openai(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&s, Dialect::OpenAi, peer, &method, &uri, &headers, &body).await
}

/// Any other route: a 404 in OpenAI's error shape (both SDKs read it).
pub(crate) async fn not_found(uri: Uri) -> Response {
    let body = json!({"error": {
        "message": format!("Unknown request URL: {}", uri.path()),
        "type": "invalid_request_error", "param": null, "code": "unknown_url",
    }});
    json_response(StatusCode::NOT_FOUND, None, &body)
}

async fn handle(
    shared: &Shared,
    dialect: Dialect,
    peer: SocketAddr,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let _in_flight = InFlight::enter(shared);
    let _admitted = match shared.limit() {
        None => None,
        Some(crate::Limit::Queue(sem)) => Some(Admitted::Queued(sem.acquire_owned().await.ok())),
        Some(crate::Limit::Reject(max)) => {
            use std::sync::atomic::Ordering;
            let took = shared
                .limited
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < max).then_some(n + 1)
                });
            if took.is_err() {
                shared.rejected.fetch_add(1, Ordering::SeqCst);
                let mut e = error_with(
                    429,
                    Some(format!("more than {max} concurrent requests; slow down")),
                );
                e.retry_after = Some("1".into());
                return error_response(dialect, &e, "req_fake_rejected");
            }
            Some(Admitted::Counted(shared))
        }
    };
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let user_text = last_user_text(&json);
    let recorded = RecordedRequest {
        n: 0,
        peer,
        method: method.as_str().to_owned(),
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().map_or_else(
                        |_| String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        str::to_owned,
                    ),
                )
            })
            .collect(),
        body: json.clone(),
        raw_body: String::from_utf8_lossy(body).into_owned(),
    };
    let plan = shared.admit(recorded, &user_text);
    let rid = format!("req_fake_{}", plan.n);
    let rid_header = (dialect.request_id_header(), rid.as_str());

    let latency = plan.latency + plan.response.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(key) = &plan.required_key
        && !key_ok(dialect, headers, key)
    {
        let e = error_with(401, None);
        return json_response(
            StatusCode::UNAUTHORIZED,
            Some(rid_header),
            &dialect.error_json(&e, &rid),
        );
    }
    if let Some(msg) = invalid(dialect, &json) {
        let e = error_with(400, Some(msg));
        return json_response(
            StatusCode::BAD_REQUEST,
            Some(rid_header),
            &dialect.error_json(&e, &rid),
        );
    }
    let r = plan.response;
    let end = match &r.fault {
        Some(Fault::Error(e)) => return error_response(dialect, e, &rid),
        Some(Fault::Raw {
            status,
            content_type,
            body,
        }) => {
            let mut resp = Response::new(Body::from(body.clone()));
            *resp.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(content_type) {
                h.insert(header::CONTENT_TYPE, v);
            }
            if let Ok(v) = HeaderValue::from_str(&rid) {
                h.insert(dialect.request_id_header(), v);
            }
            return resp;
        }
        Some(Fault::Hang) => {
            wait_shutdown(shared.shutdown()).await;
            return json_response(StatusCode::SERVICE_UNAVAILABLE, None, &Value::Null);
        }
        Some(Fault::StallAfter(k)) => End::Stall(*k),
        Some(Fault::BreakAfter(k)) => End::Break(*k),
        Some(Fault::EndAfter(k)) => End::Early(*k),
        Some(Fault::ErrorEventAfter(k, e)) => {
            if json.get("stream").and_then(Value::as_bool) != Some(true) {
                return error_response(dialect, e, &rid);
            }
            End::ErrorEvent(*k, dialect.error_frame(e, &rid))
        }
        None => End::Complete,
    };
    let answer = answer(&json, &r, &user_text, plan.n);
    let streaming = json.get("stream").and_then(Value::as_bool) == Some(true);
    let (content_type, frames, cut) = if streaming {
        let f = dialect.frames(&answer);
        let cut = match &end {
            End::Complete | End::ErrorEvent(..) => None,
            End::Stall(k) | End::Break(k) | End::Early(k) => {
                Some(f.preamble.len() + (*k).min(f.deltas.len()))
            }
        };
        let all: Vec<Bytes> = match &end {
            End::ErrorEvent(k, frame) => {
                let k = (*k).min(f.deltas.len());
                f.preamble
                    .into_iter()
                    .chain(f.deltas.into_iter().take(k))
                    .chain(std::iter::once(frame.clone()))
                    .collect()
            }
            _ => f
                .preamble
                .into_iter()
                .chain(f.deltas)
                .chain(f.finals)
                .collect(),
        };
        ("text/event-stream", all, cut)
    } else {
        let text = dialect.reply_json(&answer).to_string();
        let cut = match &end {
            End::Complete => None,
            End::Stall(_) | End::Break(_) | End::Early(_) => Some(1),
            End::ErrorEvent(..) => None,
        };
        let bytes = Bytes::from(text);
        let half = bytes.len() / 2;
        let frames = vec![bytes.slice(..half), bytes.slice(half..)];
        ("application/json", frames, cut)
    };
    let body = body_of(frames, cut, end, r.chunk_delay, shared.shutdown());
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if streaming {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    if let Ok(v) = HeaderValue::from_str(&rid) {
        h.insert(dialect.request_id_header(), v);
    }
    resp
}

#[derive(Debug, Clone)]
enum End {
    Complete,
    Stall(usize),
    Break(usize),
    Early(usize),
    ErrorEvent(usize, Bytes),
}

fn error_with(status: u16, message: Option<String>) -> FakeError {
    FakeError {
        status,
        error_type: None,
        code: None,
        message,
        context_overflow: false,
        retry_after: None,
        headers: Vec::new(),
    }
}

fn key_ok(dialect: Dialect, headers: &HeaderMap, key: &str) -> bool {
    let got = match dialect {
        Dialect::Anthropic => headers.get("x-api-key").and_then(|v| v.to_str().ok()),
        Dialect::OpenAi => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ")),
    };
    got == Some(key)
}

/// The validation errors real servers give for the most common mistakes.
fn invalid(dialect: Dialect, body: &Value) -> Option<String> {
    let Some(obj) = body.as_object() else {
        return Some("request body is not a JSON object".to_owned());
    };
    if !obj.get("messages").is_some_and(Value::is_array) {
        return Some(match dialect {
            Dialect::Anthropic => "messages: Field required".to_owned(),
            Dialect::OpenAi => "'messages' is a required property".to_owned(),
        });
    }
    if !obj.get("model").is_some_and(Value::is_string) {
        return Some(match dialect {
            Dialect::Anthropic => "model: Field required".to_owned(),
            Dialect::OpenAi => "you must provide a model parameter".to_owned(),
        });
    }
    if dialect == Dialect::Anthropic && !obj.get("max_tokens").is_some_and(Value::is_u64) {
        return Some("max_tokens: Field required".to_owned());
    }
    crate::tools::invalid(dialect, obj)
}

fn error_response(dialect: Dialect, e: &FakeError, rid: &str) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(
        status,
        Some((dialect.request_id_header(), rid)),
        &dialect.error_json(e, rid),
    );
    let h = resp.headers_mut();
    if let Some(ra) = &e.retry_after
        && let Ok(v) = HeaderValue::from_str(ra)
    {
        h.insert(header::RETRY_AFTER, v);
    }
    for (k, v) in &e.headers {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(k, v);
        }
    }
    resp
}

fn json_response(status: StatusCode, rid: Option<(&'static str, &str)>, body: &Value) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some((name, id)) = rid
        && let Ok(v) = HeaderValue::from_str(id)
    {
        h.insert(name, v);
    }
    resp
}

fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// The last user message's text (string or text-part content), passing
/// over user messages that only carry Anthropic `tool_result` blocks (so
/// that rules match on the question in both dialects: OpenAI's tool
/// results are `role: tool` messages).
fn last_user_text(body: &Value) -> String {
    body.get("messages")
        .and_then(Value::as_array)
        .and_then(|ms| {
            ms.iter().rev().find(|m| {
                m.get("role").and_then(Value::as_str) == Some("user")
                    && !m
                        .get("content")
                        .is_some_and(|c| c.is_array() && content_text(c).is_empty())
            })
        })
        .and_then(|m| m.get("content"))
        .map(content_text)
        .unwrap_or_default()
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

fn answer(body: &Value, r: &FakeResponse, user_text: &str, n: usize) -> Answer {
    let text = r
        .text
        .clone()
        .unwrap_or_else(|| format!("echo: {user_text}"));
    let call_words: u64 = r
        .tool_calls
        .iter()
        .map(|c| words(&c.name) + words(&c.arguments))
        .sum();
    let usage = r.usage.unwrap_or_else(|| {
        let mut input = body.get("system").map_or(0, |s| words(&content_text(s)));
        if let Some(ms) = body.get("messages").and_then(Value::as_array) {
            input += ms
                .iter()
                .filter_map(|m| m.get("content"))
                .map(|c| words(&content_text(c)))
                .sum::<u64>();
        }
        FakeUsage {
            input_tokens: input.max(1),
            output_tokens: (words(&text) + call_words).max(1),
            ..FakeUsage::default()
        }
    });
    let chars: Vec<char> = text.chars().collect();
    let chunks = chars
        .chunks(r.chunk_chars.max(1))
        .map(|c| c.iter().collect())
        .collect();
    Answer {
        id: format!("fake_{n}"),
        model: body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("fake-model")
            .to_owned(),
        text,
        chunks,
        stop: r.stop.clone(),
        usage,
        include_usage: body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true),
        n,
        calls: r.tool_calls.clone(),
        chunk_chars: r.chunk_chars,
    }
}

async fn wait_shutdown(mut rx: watch::Receiver<bool>) {
    // Returns when the server is dropped (the sender goes away) or told to stop.
    let _ = rx.wait_for(|stop| *stop).await;
}

struct BodyState {
    frames: VecDeque<Bytes>,
    /// Frames still to send before the fault (`None`: no fault).
    until_fault: Option<usize>,
    end: End,
    delay: Duration,
    sent: usize,
    shutdown: watch::Receiver<bool>,
}

/// Builds the response body: all at once when nothing is scripted to
/// happen between frames, else frame by frame with delays and the fault.
fn body_of(
    frames: Vec<Bytes>,
    cut: Option<usize>,
    end: End,
    delay: Duration,
    shutdown: watch::Receiver<bool>,
) -> Body {
    if cut.is_none() && delay.is_zero() {
        let total: usize = frames.iter().map(Bytes::len).sum();
        let mut buf = Vec::with_capacity(total);
        for f in &frames {
            buf.extend_from_slice(f);
        }
        return Body::from(buf);
    }
    let state = BodyState {
        frames: frames.into(),
        until_fault: cut,
        end,
        delay,
        sent: 0,
        shutdown,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if st.until_fault == Some(0) {
            st.until_fault = None;
            st.frames.clear();
            // Let the server flush what was sent before the fault.
            tokio::task::yield_now().await;
            match st.end {
                End::Stall(_) => {
                    wait_shutdown(st.shutdown.clone()).await;
                    return None;
                }
                End::Break(_) => {
                    let err = io::Error::new(io::ErrorKind::ConnectionAborted, "scripted break");
                    return Some((Err(err), st));
                }
                End::Complete | End::Early(_) | End::ErrorEvent(..) => return None,
            }
        }
        let frame = st.frames.pop_front()?;
        if st.sent > 0 && !st.delay.is_zero() {
            tokio::time::sleep(st.delay).await;
        }
        st.sent += 1;
        if let Some(k) = &mut st.until_fault {
            *k -= 1;
        }
        Some((Ok::<Bytes, io::Error>(frame), st))
    });
    Body::from_stream(stream)
}

/// `GET /stats`: the request counts, as JSON.
pub(crate) async fn stats(State(s): State<Arc<Shared>>) -> Response {
    use std::sync::atomic::Ordering;
    let body = json!({
        "requests": s.count.load(Ordering::SeqCst),
        "max_in_flight": s.max_in_flight.load(Ordering::SeqCst),
        "rejected": s.rejected.load(Ordering::SeqCst),
    });
    json_response(StatusCode::OK, None, &body)
}

/// A request let through the concurrency limit, until it is answered.
enum Admitted<'a> {
    /// Holds a slot of the queue's semaphore (released when dropped).
    Queued(#[allow(dead_code)] Option<tokio::sync::OwnedSemaphorePermit>),
    /// Counted in `Shared::limited`.
    Counted(&'a Shared),
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Self::Counted(s) = self {
            s.limited.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Counts a request as in flight until dropped.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        use std::sync::atomic::Ordering;
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
