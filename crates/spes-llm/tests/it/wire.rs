//! The adapters against the providers' documented wire shapes, served
//! verbatim by [`RawServer`]: malformed successes, refusals, tool calls,
//! `n > 1` streams, SSE framing at EOF, redirects, size caps and the total
//! deadline. Payloads follow the published API references (OpenAI Chat
//! Completions and its streaming chunks; Anthropic Messages and its
//! streaming events), trimmed of fields spes does not read.

#![allow(clippy::needless_pass_by_value)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use spes_core::message::{ChatRequest, StopReason};
use spes_llm::{
    CallContext, ErrorClass, HttpProviderConfig, Provider, ProviderError, ProviderErrorKind as K,
};

use crate::raw::{Raw, RawServer};
use crate::support::{Api, KEY, build, config, recording_context, relaxed};

fn base(api: Api, s: &RawServer) -> String {
    api.pick(s.url.clone(), s.openai_base())
}

fn on(api: Api, s: &RawServer, stream: bool) -> Arc<dyn Provider> {
    build(config(api, &base(api, s), stream, relaxed()), api)
}

async fn call(
    p: &dyn Provider,
    req: &ChatRequest,
) -> Result<spes_core::message::ChatResponse, ProviderError> {
    p.complete(req, &CallContext::for_step("s")).await
}

fn clean(e: &ProviderError) {
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(!text.contains(KEY), "leaks the key: {text}");
        assert!(!text.contains("canary"), "leaks part of the key: {text}");
    }
}

fn anthropic_message(content: serde_json::Value, stop: &str) -> serde_json::Value {
    json!({
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": {"input_tokens": 12, "output_tokens": 6}
    })
}

fn openai_completion(message: serde_json::Value, finish: &str) -> serde_json::Value {
    json!({
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1_721_596_428,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": {"prompt_tokens": 81, "completion_tokens": 11, "total_tokens": 92}
    })
}

/// SSE frames for `events` (each `(event name or "", data)`), each closed
/// by a blank line.
fn frames(events: &[(&str, serde_json::Value)]) -> String {
    events
        .iter()
        .map(|(name, data)| {
            if name.is_empty() {
                format!("data: {data}\n\n")
            } else {
                format!("event: {name}\ndata: {data}\n\n")
            }
        })
        .collect()
}

fn openai_chunk(index: u32, delta: serde_json::Value, finish: Option<&str>) -> serde_json::Value {
    json!({
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1_694_268_190,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}]
    })
}

fn anthropic_stream(
    blocks: &[(&str, serde_json::Value)],
    stop: &str,
) -> Vec<(&'static str, serde_json::Value)> {
    let mut ev = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}),
        ),
        ("ping", json!({"type": "ping"})),
    ];
    for (i, (kind, payload)) in blocks.iter().enumerate() {
        match *kind {
            "text" => {
                ev.push(("content_block_start", json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})));
                ev.push(("content_block_delta", json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": payload}})));
            }
            _ => {
                ev.push(("content_block_start", json!({"type": "content_block_start", "index": i, "content_block": {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": kind, "input": {}}})));
                ev.push(("content_block_delta", json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": ""}})));
                let text = payload.as_str().unwrap();
                let mid = text.len() / 2;
                for part in [&text[..mid], &text[mid..]] {
                    ev.push(("content_block_delta", json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": part}})));
                }
            }
        }
        ev.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": i}),
        ));
    }
    ev.push(("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 15}})));
    ev.push(("message_stop", json!({"type": "message_stop"})));
    ev
}

// ---- 11.4 / 11.6: well-formed answers only ----

#[tokio::test]
async fn malformed_successes_are_transient_bad_responses() {
    let cases = [
        (Api::Anthropic, json!({})),
        (
            Api::Anthropic,
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ),
        (
            Api::Anthropic,
            json!({"type": "message", "role": "assistant", "content": null, "stop_reason": "end_turn"}),
        ),
        (
            Api::Anthropic,
            json!({"type": "message", "role": "assistant", "content": [], "stop_reason": null}),
        ),
        (Api::OpenAi, json!({})),
        (
            Api::OpenAi,
            json!({"error": {"message": "upstream failed", "type": "server_error", "code": null}}),
        ),
        (
            Api::OpenAi,
            openai_completion(json!({"role": "assistant", "content": null}), "stop"),
        ),
        (
            Api::OpenAi,
            json!({"choices": [{"index": 0, "finish_reason": "stop"}]}),
        ),
    ];
    for (api, body) in cases {
        let s = RawServer::start().await;
        s.push(Raw::json(&body));
        let e = call(on(api, &s, false).as_ref(), &ChatRequest::user("q"))
            .await
            .expect_err(&body.to_string());
        assert_eq!(e.kind, K::BadResponse, "{body}: {e}");
        assert_eq!(e.class(), ErrorClass::Transient, "{body}");
        clean(&e);
    }
}

#[tokio::test]
async fn a_200_error_object_names_what_the_provider_said() {
    let s = RawServer::start().await;
    s.push(Raw::json(
        &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ));
    let e = call(
        on(Api::Anthropic, &s, false).as_ref(),
        &ChatRequest::user("q"),
    )
    .await
    .unwrap_err();
    assert!(e.message.contains("overloaded_error: Overloaded"), "{e}");
}

#[tokio::test]
async fn well_formed_empty_answers_are_still_answers() {
    // An empty text is an answer when the provider says so explicitly.
    let s = RawServer::start().await;
    s.push(Raw::json(&anthropic_message(json!([]), "end_turn")));
    let r = call(
        on(Api::Anthropic, &s, false).as_ref(),
        &ChatRequest::user("q"),
    )
    .await
    .unwrap();
    assert_eq!((r.text.as_str(), r.stop_reason), ("", StopReason::EndTurn));
    s.push(Raw::json(&openai_completion(
        json!({"role": "assistant", "content": ""}),
        "stop",
    )));
    let r = call(
        build(
            config(Api::OpenAi, &s.openai_base(), false, relaxed()),
            Api::OpenAi,
        )
        .as_ref(),
        &ChatRequest::user("q"),
    )
    .await
    .unwrap();
    assert_eq!(r.text, "");
}

#[tokio::test]
async fn a_stream_with_no_content_at_all_is_a_bad_response() {
    let s = RawServer::start().await;
    let body = frames(&[
        ("", openai_chunk(0, json!({"role": "assistant"}), None)),
        ("", openai_chunk(0, json!({}), Some("stop"))),
    ]) + "data: [DONE]\n\n";
    s.push(Raw::sse(body));
    let e = call(on(Api::OpenAi, &s, true).as_ref(), &ChatRequest::user("q"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, K::BadResponse, "{e}");
    // An Anthropic stream that never started a message.
    let body = frames(&[("message_stop", json!({"type": "message_stop"}))]);
    s.push(Raw::sse(body));
    let e = call(
        on(Api::Anthropic, &s, true).as_ref(),
        &ChatRequest::user("q"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind, K::BadResponse, "{e}");
}

// ---- 12: refusals ----

#[tokio::test]
async fn openai_refusals_are_terminal_and_carry_the_text() {
    let words = "I'm sorry, I cannot assist with that request.";
    let s = RawServer::start().await;
    s.push(Raw::json(&openai_completion(
        json!({"role": "assistant", "content": null, "refusal": words}),
        "stop",
    )));
    let body = frames(&[
        (
            "",
            openai_chunk(
                0,
                json!({"role": "assistant", "content": null, "refusal": ""}),
                None,
            ),
        ),
        (
            "",
            openai_chunk(0, json!({"refusal": "I'm sorry, I cannot "}), None),
        ),
        (
            "",
            openai_chunk(0, json!({"refusal": "assist with that request."}), None),
        ),
        ("", openai_chunk(0, json!({}), Some("stop"))),
    ]) + "data: [DONE]\n\n";
    s.push(Raw::sse(body));
    for stream in [false, true] {
        let e = call(
            on(Api::OpenAi, &s, stream).as_ref(),
            &ChatRequest::user("q"),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind, K::Refused, "stream {stream}: {e}");
        assert_eq!(e.class(), ErrorClass::Terminal);
        assert_eq!(e.kind.as_str(), "refused");
        assert!(e.message.contains(words), "stream {stream}: {e}");
        clean(&e);
    }
}

#[tokio::test]
async fn anthropic_refusal_stop_reason_is_terminal_and_carries_the_text() {
    let s = RawServer::start().await;
    s.push(Raw::json(&anthropic_message(
        json!([{"type": "text", "text": "I can't help with that."}]),
        "refusal",
    )));
    s.push(Raw::sse(frames(&anthropic_stream(
        &[("text", json!("I can't help with that."))],
        "refusal",
    ))));
    for stream in [false, true] {
        let e = call(
            on(Api::Anthropic, &s, stream).as_ref(),
            &ChatRequest::user("q"),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind, K::Refused, "stream {stream}: {e}");
        assert!(e.message.contains("I can't help with that."), "{e}");
        clean(&e);
    }
}

#[tokio::test]
async fn max_tokens_is_reported_faithfully_on_documented_shapes() {
    let s = RawServer::start().await;
    s.push(Raw::json(&anthropic_message(
        json!([{"type": "text", "text": "half"}]),
        "max_tokens",
    )));
    s.push(Raw::sse(frames(&anthropic_stream(
        &[("text", json!("half"))],
        "max_tokens",
    ))));
    for stream in [false, true] {
        let r = call(
            on(Api::Anthropic, &s, stream).as_ref(),
            &ChatRequest::user("q"),
        )
        .await
        .unwrap();
        assert_eq!(
            (r.text.as_str(), r.stop_reason),
            ("half", StopReason::MaxTokens)
        );
    }
    s.push(Raw::json(&openai_completion(
        json!({"role": "assistant", "content": "half"}),
        "length",
    )));
    s.push(Raw::sse(
        frames(&[
            (
                "",
                openai_chunk(0, json!({"role": "assistant", "content": "half"}), None),
            ),
            ("", openai_chunk(0, json!({}), Some("length"))),
        ]) + "data: [DONE]\n\n",
    ));
    for stream in [false, true] {
        let r = call(
            on(Api::OpenAi, &s, stream).as_ref(),
            &ChatRequest::user("q"),
        )
        .await
        .unwrap();
        assert_eq!(
            (r.text.as_str(), r.stop_reason),
            ("half", StopReason::MaxTokens)
        );
    }
}

// ---- 12: wire details ----

#[tokio::test]
async fn only_choice_zero_is_read() {
    let s = RawServer::start().await;
    let body = frames(&[
        (
            "",
            openai_chunk(0, json!({"role": "assistant", "content": ""}), None),
        ),
        (
            "",
            openai_chunk(1, json!({"role": "assistant", "content": ""}), None),
        ),
        ("", openai_chunk(0, json!({"content": "Par"}), None)),
        ("", openai_chunk(1, json!({"content": "Lon"}), None)),
        ("", openai_chunk(1, json!({"content": "don"}), None)),
        ("", openai_chunk(0, json!({"content": "is"}), None)),
        ("", openai_chunk(1, json!({}), Some("stop"))),
        ("", openai_chunk(0, json!({}), Some("stop"))),
    ]) + "data: [DONE]\n\n";
    s.push(Raw::sse(body));
    let (cx, deltas) = recording_context();
    let r = on(Api::OpenAi, &s, true)
        .complete(&ChatRequest::user("q"), &cx)
        .await
        .unwrap();
    assert_eq!(r.text, "Paris");
    assert_eq!(deltas.lock().unwrap().concat(), "Paris");
    // Not streamed: choice 0 wherever it is in the list.
    let mut two = openai_completion(json!({"role": "assistant", "content": "Paris"}), "stop");
    two["choices"] = json!([
        {"index": 1, "message": {"role": "assistant", "content": "London"}, "finish_reason": "stop"},
        {"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"},
    ]);
    s.push(Raw::json(&two));
    let r = call(on(Api::OpenAi, &s, false).as_ref(), &ChatRequest::user("q"))
        .await
        .unwrap();
    assert_eq!(r.text, "Paris");
}

#[tokio::test]
async fn a_stream_ending_without_the_closing_blank_line_is_accepted() {
    let s = RawServer::start().await;
    // OpenAI: `[DONE]` with no newline at all, then with one newline.
    for tail in ["data: [DONE]", "data: [DONE]\n"] {
        let body = frames(&[
            (
                "",
                openai_chunk(0, json!({"role": "assistant", "content": "Hi"}), None),
            ),
            ("", openai_chunk(0, json!({}), Some("stop"))),
        ]) + tail;
        s.push(Raw::sse(body).chunked(7));
        let r = call(on(Api::OpenAi, &s, true).as_ref(), &ChatRequest::user("q"))
            .await
            .unwrap();
        assert_eq!(r.text, "Hi");
        assert_eq!(r.stop_reason, StopReason::EndTurn);
    }
    // Anthropic: the last event is `message_stop` without its blank line.
    let full = frames(&anthropic_stream(&[("text", json!("Hello"))], "end_turn"));
    for cut in [1, 2] {
        let body = full[..full.len() - cut].to_owned();
        assert!(body.ends_with("{\"type\":\"message_stop\"}") || body.ends_with('\n'));
        s.push(Raw::sse(body).chunked(5));
        let r = call(
            on(Api::Anthropic, &s, true).as_ref(),
            &ChatRequest::user("q"),
        )
        .await
        .unwrap();
        assert_eq!(r.text, "Hello");
    }
}

#[tokio::test]
async fn a_stream_cut_inside_an_event_is_broken_not_accepted() {
    let s = RawServer::start().await;
    let full = frames(&anthropic_stream(&[("text", json!("Hello"))], "end_turn"));
    let cut = full.rfind("{\"type\":\"message_stop\"}").unwrap() + 5;
    s.push(Raw::sse(full[..cut].to_owned()));
    let e = call(
        on(Api::Anthropic, &s, true).as_ref(),
        &ChatRequest::user("q"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind, K::StreamBroken, "{e}");
}

// ---- 11.3 / 11.4: secrets stay with their provider ----

#[tokio::test]
async fn redirects_are_not_followed_and_the_key_never_reaches_their_target() {
    for api in [Api::Anthropic, Api::OpenAi] {
        for status in [301, 302, 303, 307, 308] {
            for stream in [false, true] {
                let origin = RawServer::start().await;
                let capture = RawServer::start().await;
                let path = api.pick("/v1/messages", "/v1/chat/completions");
                let location = format!("{}{path}?token=secret-query", capture.url);
                origin.push(Raw::redirect(status, &location));
                let e = call(on(api, &origin, stream).as_ref(), &ChatRequest::user("q"))
                    .await
                    .unwrap_err();
                assert_eq!(e.kind, K::Config, "{api:?} {status}: {e}");
                assert_eq!(e.class(), ErrorClass::Terminal);
                assert_eq!(e.status, Some(status));
                let target = format!("{}{path}", capture.url);
                assert!(e.message.contains(&target), "names the Location: {e}");
                assert!(!e.message.contains("secret-query"), "query shown: {e}");
                clean(&e);
                // The key went to the provider, and nowhere else.
                let sent = origin.got();
                assert_eq!(sent.len(), 1);
                let key_header = api.pick("x-api-key", "authorization");
                assert!(sent[0].header(key_header).unwrap().contains(KEY));
                assert_eq!(
                    capture.got().len(),
                    0,
                    "{api:?} {status} followed the redirect"
                );
            }
        }
    }
}

// ---- 11.5: bounded streams ----

#[tokio::test]
async fn an_answer_over_the_cap_fails_clearly_streamed_or_not() {
    let big = "x".repeat(64 << 10);
    for api in [Api::Anthropic, Api::OpenAi] {
        let s = RawServer::start().await;
        let stream_body = match api {
            Api::Anthropic => frames(&anthropic_stream(&[("text", json!(big))], "end_turn")),
            Api::OpenAi => {
                frames(&[
                    (
                        "",
                        openai_chunk(0, json!({"role": "assistant", "content": big}), None),
                    ),
                    ("", openai_chunk(0, json!({}), Some("stop"))),
                ]) + "data: [DONE]\n\n"
            }
        };
        s.push(Raw::sse(stream_body).chunked(4096));
        s.push(Raw::json(&match api {
            Api::Anthropic => anthropic_message(json!([{"type": "text", "text": big}]), "end_turn"),
            Api::OpenAi => openai_completion(json!({"role": "assistant", "content": big}), "stop"),
        }));
        for stream in [true, false] {
            let p = build(
                config(api, &base(api, &s), stream, relaxed()).with_max_response_bytes(16 << 10),
                api,
            );
            let e = call(p.as_ref(), &ChatRequest::user("q")).await.unwrap_err();
            assert_eq!(e.kind, K::ResponseTooLarge, "{api:?} stream {stream}: {e}");
            assert_eq!(e.class(), ErrorClass::Terminal);
            assert!(e.message.contains("max_response_bytes = 16384"), "{e}");
            clean(&e);
        }
    }
}

#[tokio::test]
async fn a_4_mb_single_event_decodes() {
    // The SSE decoder's work is linear (asserted on its counters in the
    // unit tests); here the whole path carries one 4 MiB event intact.
    let big = "y".repeat(4 << 20);
    let s = RawServer::start().await;
    let body = frames(&[
        (
            "",
            openai_chunk(0, json!({"role": "assistant", "content": big}), None),
        ),
        ("", openai_chunk(0, json!({}), Some("stop"))),
    ]) + "data: [DONE]\n\n";
    s.push(Raw::sse(body).chunked(16 << 10));
    let r = call(on(Api::OpenAi, &s, true).as_ref(), &ChatRequest::user("q"))
        .await
        .unwrap();
    assert_eq!(r.text.len(), 4 << 20);
}

#[tokio::test]
async fn a_slow_drip_stream_hits_the_total_deadline() {
    for api in [Api::Anthropic, Api::OpenAi] {
        let s = RawServer::start().await;
        // Bytes every 20 ms, for ever: the idle timeout (20 s) never fires.
        let start = match api {
            Api::Anthropic => frames(&anthropic_stream(&[], "end_turn")[..1]),
            Api::OpenAi => frames(&[(
                "",
                openai_chunk(0, json!({"role": "assistant", "content": ""}), None),
            )]),
        };
        let mut r = Raw::sse(start);
        r.delay = Duration::from_millis(20);
        r.drip = Some(b": still thinking\n".to_vec());
        s.push(r);
        let mut t = relaxed();
        t.total = Duration::from_millis(400);
        let p = build(config(api, &base(api, &s), true, t), api);
        let started = Instant::now();
        let e = call(p.as_ref(), &ChatRequest::user("q")).await.unwrap_err();
        assert_eq!(e.kind, K::Timeout, "{api:?}: {e}");
        assert_eq!(e.class(), ErrorClass::Transient);
        assert!(e.message.contains("total deadline of 400ms"), "{e}");
        assert!(started.elapsed() >= Duration::from_millis(400));
        assert!(
            started.elapsed() < t.idle,
            "the idle timeout did not end it"
        );
        clean(&e);
    }
}

// ---- 12: structured output, natively ----

fn strict_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "colour": {"type": "string"},
            "shades": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"], "additionalProperties": false}}
        },
        "required": ["colour", "shades"],
        "additionalProperties": false
    })
}

fn loose_schema() -> serde_json::Value {
    json!({"type": "object", "properties": {"colour": {"type": "string"}, "hex": {"type": "string"}}, "required": ["colour"]})
}

async fn sent_body(api: Api, req: &ChatRequest, answer: Raw) -> serde_json::Value {
    let s = RawServer::start().await;
    s.push(answer);
    let _ = call(on(api, &s, false).as_ref(), req).await;
    s.got().pop().unwrap().body
}

#[tokio::test]
async fn openai_response_format_is_strict_only_where_the_schema_allows() {
    let ok = Raw::json(&openai_completion(
        json!({"role": "assistant", "content": "{}"}),
        "stop",
    ));
    for (schema, strict) in [
        (strict_schema(), true),
        (loose_schema(), false),
        (json!({"type": "array", "items": {"type": "string"}}), false),
    ] {
        let req = ChatRequest {
            json_schema: Some(schema.clone().into()),
            json: true,
            ..ChatRequest::user("Name a colour.")
        };
        let body = sent_body(Api::OpenAi, &req, ok.clone()).await;
        assert_eq!(
            body["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "response", "schema": schema, "strict": strict}})
        );
        // The schema wins: no JSON-mode instruction is added.
        assert_eq!(body["messages"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn openai_json_without_a_schema_uses_json_mode() {
    let ok = Raw::json(&openai_completion(
        json!({"role": "assistant", "content": "{}"}),
        "stop",
    ));
    let req = ChatRequest {
        json: true,
        ..ChatRequest::user("Name a colour.")
    };
    let body = sent_body(Api::OpenAi, &req, ok.clone()).await;
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
    // OpenAI requires the word JSON in the messages for json_object.
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "Respond with a single JSON value."},
            {"role": "user", "content": "Name a colour."},
        ])
    );
    let req = ChatRequest {
        json: true,
        system: Some("Answer as JSON.".into()),
        ..ChatRequest::user("Name a colour.")
    };
    let body = sent_body(Api::OpenAi, &req, ok.clone()).await;
    assert_eq!(body["messages"][0]["content"], "Answer as JSON.");
    // Text steps send no response_format.
    let body = sent_body(Api::OpenAi, &ChatRequest::user("Hi"), ok).await;
    assert!(body.get("response_format").is_none());
}

#[tokio::test]
async fn anthropic_schema_becomes_a_forced_tool_call() {
    let ok = Raw::json(&anthropic_message(
        json!([{"type": "text", "text": "{}"}]),
        "end_turn",
    ));
    let req = ChatRequest {
        json_schema: Some(loose_schema().into()),
        json: true,
        ..ChatRequest::user("Name a colour.")
    };
    let body = sent_body(Api::Anthropic, &req, ok.clone()).await;
    assert_eq!(body["tools"][0]["name"], "structured_answer");
    assert_eq!(body["tools"][0]["input_schema"], loose_schema());
    assert_eq!(
        body["tool_choice"],
        json!({"type": "tool", "name": "structured_answer"})
    );
    assert!(body.get("system").is_none(), "{body}");
    // A non-object schema is wrapped in an object with one `value`.
    let list = json!({"type": "array", "items": {"type": "string"}});
    let req = ChatRequest {
        json_schema: Some(list.clone().into()),
        ..ChatRequest::user("Name colours.")
    };
    let body = sent_body(Api::Anthropic, &req, ok.clone()).await;
    assert_eq!(
        body["tools"][0]["input_schema"],
        json!({"type": "object", "properties": {"value": list}, "required": ["value"]})
    );
    // JSON without a schema: an instruction (Anthropic has no JSON mode).
    let req = ChatRequest {
        json: true,
        system: Some("Be brief.".into()),
        ..ChatRequest::user("Name a colour.")
    };
    let body = sent_body(Api::Anthropic, &req, ok).await;
    assert_eq!(
        body["system"],
        "Be brief.\n\nRespond with a single JSON value and nothing else: no prose, no code fences."
    );
    assert!(body.get("tools").is_none());
}

#[tokio::test]
async fn anthropic_tool_input_is_the_answer_streamed_or_not() {
    let s = RawServer::start().await;
    let req = ChatRequest {
        json_schema: Some(loose_schema().into()),
        json: true,
        ..ChatRequest::user("Name a colour.")
    };
    s.push(Raw::json(&anthropic_message(
        json!([{"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "structured_answer", "input": {"colour": "blue", "hex": "#00f"}}]),
        "tool_use",
    )));
    s.push(Raw::sse(frames(&anthropic_stream(
        &[(
            "structured_answer",
            json!("{\"colour\": \"blue\", \"hex\": \"#00f\"}"),
        )],
        "tool_use",
    ))));
    for stream in [false, true] {
        let r = call(on(Api::Anthropic, &s, stream).as_ref(), &req)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.text).unwrap();
        assert_eq!(
            v,
            json!({"colour": "blue", "hex": "#00f"}),
            "stream {stream}"
        );
        assert_eq!(r.stop_reason, StopReason::EndTurn);
    }
    // Wrapped schemas are unwrapped.
    let req = ChatRequest {
        json_schema: Some(json!({"type": "array", "items": {"type": "string"}}).into()),
        ..ChatRequest::user("Name colours.")
    };
    s.push(Raw::json(&anthropic_message(
        json!([{"type": "tool_use", "id": "toolu_1", "name": "structured_answer", "input": {"value": ["red", "blue"]}}]),
        "tool_use",
    )));
    s.push(Raw::sse(frames(&anthropic_stream(
        &[(
            "structured_answer",
            json!("{\"value\": [\"red\", \"blue\"]}"),
        )],
        "tool_use",
    ))));
    for stream in [false, true] {
        let r = call(on(Api::Anthropic, &s, stream).as_ref(), &req)
            .await
            .unwrap();
        assert_eq!(r.text, "[\"red\",\"blue\"]", "stream {stream}");
    }
    // Cut by max_tokens: the partial input is kept, and said to be cut.
    s.push(Raw::sse(frames(&anthropic_stream(
        &[("structured_answer", json!("{\"colour\": \"bl"))],
        "max_tokens",
    ))));
    let req = ChatRequest {
        json_schema: Some(loose_schema().into()),
        ..ChatRequest::user("Name a colour.")
    };
    let r = call(on(Api::Anthropic, &s, true).as_ref(), &req)
        .await
        .unwrap();
    assert_eq!(r.text, "{\"colour\": \"bl");
    assert_eq!(r.stop_reason, StopReason::MaxTokens);
}

#[tokio::test]
async fn max_tokens_field_follows_the_host_unless_configured() {
    // No request is sent: `request_body` shows what would be.
    let req = ChatRequest {
        max_tokens: Some(300),
        ..ChatRequest::user("Hi")
    };
    let official =
        spes_llm::OpenAiProvider::new(HttpProviderConfig::new("gpt").with_model("o3")).unwrap();
    let b = official.request_body(&req).unwrap();
    assert_eq!(b["max_completion_tokens"], 300);
    assert!(b.get("max_tokens").is_none());
    let compatible = spes_llm::OpenAiProvider::new(
        HttpProviderConfig::new("ollama")
            .with_model("llama3")
            .with_base_url("http://127.0.0.1:11434/v1"),
    )
    .unwrap();
    let b = compatible.request_body(&req).unwrap();
    assert_eq!(b["max_tokens"], 300);
    assert!(b.get("max_completion_tokens").is_none());
    let forced = spes_llm::OpenAiProvider::new(
        HttpProviderConfig::new("proxy")
            .with_model("o3")
            .with_base_url("http://127.0.0.1:9/v1")
            .with_max_tokens_field(spes_core::config::MaxTokensField::MaxCompletionTokens),
    )
    .unwrap();
    assert_eq!(
        forced.request_body(&req).unwrap()["max_completion_tokens"],
        300
    );
    let official_proxy = spes_llm::OpenAiProvider::new(
        HttpProviderConfig::new("gpt")
            .with_model("o3")
            .with_base_url("https://api.openai.com/v1")
            .with_max_tokens_field(spes_core::config::MaxTokensField::MaxTokens),
    )
    .unwrap();
    assert_eq!(
        official_proxy.request_body(&req).unwrap()["max_tokens"],
        300
    );
}
