//! The fake server over raw HTTP/1.1: recording, hooks, SSE shapes, the
//! binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use spes_fake_llm::{FakeResponse, FakeServer, FakeToolCall, OverLimit};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Sends one request with `Connection: close`; returns the raw response.
async fn raw(addr: &str, path: &str, headers: &[(&str, &str)], body: &Value) -> String {
    let body = body.to_string();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

fn anthropic_body(stream: bool) -> Value {
    json!({"model": "m", "max_tokens": 10, "stream": stream,
           "messages": [{"role": "user", "content": "hi there"}]})
}

#[tokio::test]
async fn records_requests_and_calls_the_hook() {
    let server = FakeServer::start().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = Arc::clone(&seen);
    server.on_request(move |n| s2.lock().unwrap().push(n));
    let addr = server.addr().to_string();
    let resp = raw(
        &addr,
        "/v1/messages",
        &[("x-api-key", "k1")],
        &anthropic_body(false),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("request-id: req_fake_1"), "{resp}");
    assert!(resp.contains(r#""text":"echo: hi there""#), "{resp}");
    raw(&addr, "/v1/messages", &[], &anthropic_body(false)).await;
    assert_eq!(*seen.lock().unwrap(), [1, 2]);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].n, 1);
    assert_eq!(reqs[0].path, "/v1/messages");
    assert_eq!(reqs[0].header("X-Api-Key"), Some("k1"));
    assert_eq!(reqs[0].body, anthropic_body(false));
}

#[tokio::test]
async fn anthropic_stream_has_the_real_event_sequence() {
    let server = FakeServer::start().await.unwrap();
    server.push(
        FakeResponse::text("abcdef")
            .with_chunk_chars(3)
            .with_usage(4, 2),
    );
    let resp = raw(
        &server.addr().to_string(),
        "/v1/messages",
        &[],
        &anthropic_body(true),
    )
    .await;
    assert!(resp.contains("content-type: text/event-stream"), "{resp}");
    let events: Vec<&str> = resp
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        events,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let deltas: Vec<Value> = resp
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter(|v| v["type"] == "content_block_delta")
        .map(|v| v["delta"].clone())
        .collect();
    assert_eq!(
        deltas,
        [
            json!({"type": "text_delta", "text": "abc"}),
            json!({"type": "text_delta", "text": "def"})
        ]
    );
    assert!(resp.contains(r#""usage":{"output_tokens":2}"#), "{resp}");
}

#[tokio::test]
async fn openai_stream_ends_with_usage_and_done() {
    let server = FakeServer::start().await.unwrap();
    server.push(
        FakeResponse::text("abcdef")
            .with_chunk_chars(3)
            .with_usage(4, 2),
    );
    let body = json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]});
    let resp = raw(
        &server.addr().to_string(),
        "/v1/chat/completions",
        &[],
        &body,
    )
    .await;
    assert!(resp.contains("x-request-id: req_fake_1"), "{resp}");
    let data: Vec<&str> = resp
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.len(), 6, "{resp}");
    assert_eq!(data[5], "[DONE]");
    let finish: Value = serde_json::from_str(data[3]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage: Value = serde_json::from_str(data[4]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn errors_have_the_provider_shape_and_retry_after() {
    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::rate_limited(Some("3")));
    server.push(FakeResponse::rate_limited(None));
    let addr = server.addr().to_string();
    let a = raw(&addr, "/v1/messages", &[], &anthropic_body(false)).await;
    assert!(a.starts_with("HTTP/1.1 429"), "{a}");
    assert!(a.contains("retry-after: 3"), "{a}");
    let body: Value = serde_json::from_str(a.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let o = raw(
        &addr,
        "/v1/chat/completions",
        &[],
        &json!({"model": "m", "messages": []}),
    )
    .await;
    let body: Value = serde_json::from_str(o.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn anthropic_requests_without_max_tokens_are_rejected_like_the_real_api() {
    let server = FakeServer::start().await.unwrap();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let r = raw(&server.addr().to_string(), "/v1/messages", &[], &body).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("max_tokens: Field required"), "{r}");
}

#[tokio::test]
async fn rules_queue_and_default_in_that_order() {
    let server = FakeServer::start().await.unwrap();
    server.set_default(FakeResponse::text("default"));
    server.when_user_contains("weather", FakeResponse::text("sunny"));
    server.push(FakeResponse::text("queued"));
    let addr = server.addr().to_string();
    let ask = |text: &'static str| {
        let addr = addr.clone();
        async move {
            let body = json!({"model": "m", "messages": [{"role": "user", "content": text}]});
            let r = raw(&addr, "/v1/chat/completions", &[], &body).await;
            let v: Value = serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(ask("weather?").await, "queued");
    assert_eq!(ask("weather?").await, "sunny");
    assert_eq!(ask("news?").await, "default");
    assert_eq!(server.pending(), 0);
}

#[tokio::test]
async fn unknown_routes_are_404() {
    let server = FakeServer::start().await.unwrap();
    let r = raw(&server.addr().to_string(), "/v2/nothing", &[], &json!({})).await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
}

#[tokio::test]
async fn the_binary_prints_its_url_and_serves() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_spes-fake-llm"))
        .args(["--port", "0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .await
        .unwrap();
    let url = line.trim();
    let addr = url.strip_prefix("http://").expect("an http URL");
    let r = raw(addr, "/v1/messages", &[], &anthropic_body(false)).await;
    assert!(r.contains("echo: hi there"), "{r}");
    child.kill().await.unwrap();
}

/// `GET path` with `Connection: close`; returns the raw response.
async fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

fn body_json(resp: &str) -> Value {
    serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

#[tokio::test]
async fn over_its_concurrency_limit_reject_answers_429_and_counts_it() {
    let server = FakeServer::start().await.unwrap();
    server.set_max_concurrency(Some(2), OverLimit::Reject);
    let (tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    server.on_request(move |n| {
        let _ = tx.send(n);
    });
    server.push(FakeResponse::hang());
    server.push(FakeResponse::hang());
    let addr = server.addr().to_string();
    let mut held = Vec::new();
    for _ in 0..2 {
        let addr = addr.clone();
        held.push(tokio::spawn(async move {
            raw(&addr, "/v1/messages", &[], &anthropic_body(false)).await
        }));
    }
    // Both are being handled (hanging before their headers).
    assert_eq!(arrived.recv().await, Some(1));
    assert_eq!(arrived.recv().await, Some(2));
    let third = raw(&addr, "/v1/messages", &[], &anthropic_body(false)).await;
    assert!(third.starts_with("HTTP/1.1 429"), "{third}");
    assert!(third.contains("rate_limit_error"), "{third}");
    assert!(third.contains("retry-after: 1"), "{third}");
    assert_eq!(server.rejected(), 1);
    // Not recorded, no scripted answer taken.
    assert_eq!(server.request_count(), 2);
    let stats = body_json(&get(&addr, "/stats").await);
    assert_eq!(
        stats,
        json!({"requests": 2, "max_in_flight": 3, "rejected": 1})
    );
    for h in held {
        h.abort();
    }
}

#[tokio::test]
async fn over_its_concurrency_limit_queue_makes_requests_wait_their_turn() {
    let server = FakeServer::start().await.unwrap();
    server.set_max_concurrency(Some(1), OverLimit::Queue);
    server.set_default(FakeResponse::text("ok").with_latency(std::time::Duration::from_millis(50)));
    let addr = server.addr().to_string();
    let start = std::time::Instant::now();
    let answers = futures_join(
        (0..4)
            .map(|_| {
                let addr = addr.clone();
                tokio::spawn(async move {
                    raw(&addr, "/v1/messages", &[], &anthropic_body(false)).await
                })
            })
            .collect(),
    )
    .await;
    for a in &answers {
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    }
    // One at a time: four latencies one after another.
    assert!(start.elapsed() >= std::time::Duration::from_millis(200));
    assert_eq!(server.rejected(), 0);
    assert_eq!(server.request_count(), 4);
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn the_binary_takes_a_concurrency_limit_and_reports_stats() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_spes-fake-llm"))
        .args([
            "--port",
            "0",
            "--max-concurrency",
            "4",
            "--over-limit",
            "reject",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .await
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("http://")
        .expect("an http URL")
        .to_owned();
    let r = raw(&addr, "/v1/messages", &[], &anthropic_body(false)).await;
    assert!(r.contains("echo: hi there"), "{r}");
    let stats = body_json(&get(&addr, "/stats").await);
    assert_eq!(
        stats,
        json!({"requests": 1, "max_in_flight": 1, "rejected": 0})
    );
    child.kill().await.unwrap();
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_spes-fake-llm"))
        .args(["--over-limit", "drop"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&bad.stderr),
        "spes-fake-llm: --over-limit: `drop` is not reject or queue\n"
    );
}

fn data_of(resp: &str) -> Vec<Value> {
    resp.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .collect()
}

fn two_calls() -> FakeResponse {
    FakeResponse::tool_calls(vec![
        FakeToolCall::new("weather", &json!({"city": "Paris"})),
        FakeToolCall::new("clock", &json!({})).with_id("mine"),
    ])
    .with_chunk_chars(4)
    .with_usage(10, 7)
}

#[tokio::test]
async fn openai_tool_call_streams_interleave_parallel_calls_by_index() {
    let server = FakeServer::start().await.unwrap();
    server.push(two_calls());
    let body = json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]});
    let resp = raw(
        &server.addr().to_string(),
        "/v1/chat/completions",
        &[],
        &body,
    )
    .await;
    let data = data_of(&resp);
    assert_eq!(
        data[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": null, "refusal": null})
    );
    let fragments: Vec<&Value> = data
        .iter()
        .filter_map(|d| d["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    // Each call's first fragment names it; then the arguments, round-robin.
    assert_eq!(
        fragments[0],
        &json!({"index": 0, "id": "call_fake_1_1", "type": "function", "function": {"name": "weather", "arguments": ""}})
    );
    assert_eq!(fragments[1]["id"], "mine");
    let order: Vec<u64> = fragments[2..]
        .iter()
        .map(|f| f["index"].as_u64().unwrap())
        .collect();
    assert_eq!(order[..3], [0, 1, 0], "{order:?}");
    let args = |i: u64| -> String {
        fragments[2..]
            .iter()
            .filter(|f| f["index"] == i)
            .map(|f| f["function"]["arguments"].as_str().unwrap())
            .collect()
    };
    assert_eq!(args(0), r#"{"city":"Paris"}"#);
    assert_eq!(args(1), "{}");
    let finish = data
        .iter()
        .find_map(|d| d["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));
    assert_eq!(data.last().unwrap()["usage"]["completion_tokens"], 7);
    assert!(resp.trim_end().ends_with("data: [DONE]"), "{resp}");
}

#[tokio::test]
async fn anthropic_tool_call_streams_have_one_block_per_call() {
    let server = FakeServer::start().await.unwrap();
    server.push(two_calls());
    let resp = raw(
        &server.addr().to_string(),
        "/v1/messages",
        &[],
        &anthropic_body(true),
    )
    .await;
    let data = data_of(&resp);
    let kinds: Vec<&str> = data.iter().map(|d| d["type"].as_str().unwrap()).collect();
    let weather_deltas = r#"{"city":"Paris"}"#.len().div_ceil(4) + 1;
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(std::iter::repeat_n("content_block_delta", weather_deltas));
    expected.extend([
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]);
    assert_eq!(kinds, expected);
    assert_eq!(
        data[1]["content_block"],
        json!({"type": "tool_use", "id": "toolu_fake_1_1", "name": "weather", "input": {}})
    );
    let json_of = |index: u64| -> String {
        data.iter()
            .filter(|d| d["type"] == "content_block_delta" && d["index"] == index)
            .map(|d| d["delta"]["partial_json"].as_str().unwrap())
            .collect()
    };
    assert_eq!(json_of(0), r#"{"city":"Paris"}"#);
    assert_eq!(json_of(1), "{}");
    // The first delta of each block is an empty one, as the API sends.
    assert_eq!(
        data[3]["delta"],
        json!({"type": "input_json_delta", "partial_json": ""})
    );
    let delta = data.iter().find(|d| d["type"] == "message_delta").unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta["usage"]["output_tokens"], 7);
}

#[tokio::test]
async fn non_streamed_tool_calls_have_each_dialects_shape() {
    let server = FakeServer::start().await.unwrap();
    server.push(two_calls());
    server.push(two_calls());
    let addr = server.addr().to_string();
    let a = raw(&addr, "/v1/messages", &[], &anthropic_body(false)).await;
    let a: Value = serde_json::from_str(a.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        a["content"],
        json!([
            {"type": "tool_use", "id": "toolu_fake_1_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "mine", "name": "clock", "input": {}},
        ])
    );
    assert_eq!(a["stop_reason"], "tool_use");
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let o = raw(&addr, "/v1/chat/completions", &[], &body).await;
    let o: Value = serde_json::from_str(o.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        o["choices"][0]["message"],
        json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
            {"id": "call_fake_2_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "mine", "type": "function", "function": {"name": "clock", "arguments": "{}"}},
        ]})
    );
    assert_eq!(o["choices"][0]["finish_reason"], "tool_calls");
}
