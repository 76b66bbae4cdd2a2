//! Streaming and non-streaming give the same answer; deltas; long healthy
//! streams are not cut.

use std::time::Duration;

use spes_core::config::Timeouts;
use spes_core::message::{ChatRequest, ChatResponse, StopReason, Usage};
use spes_fake_llm::{FakeResponse, FakeServer, FakeStop};

use crate::support::{Api, ask, provider, recording_context, relaxed};

fn scripted() -> FakeResponse {
    FakeResponse::text("The quick brown fox jumps over the lazy dog.")
        .with_stop(FakeStop::MaxTokens)
        .with_usage(21, 9)
        .with_cache_tokens(7, 3)
        .with_chunk_chars(5)
}

fn normalized(mut r: ChatResponse) -> ChatResponse {
    r.latency_ms = 0;
    r.request_id = None;
    r
}

async fn both_modes(api: Api) -> (ChatResponse, ChatResponse) {
    let server = FakeServer::start().await.unwrap();
    server.push(scripted());
    server.push(scripted());
    let streamed = ask(provider(api, &server, true, relaxed()).as_ref(), "q")
        .await
        .unwrap();
    let whole = ask(provider(api, &server, false, relaxed()).as_ref(), "q")
        .await
        .unwrap();
    assert_eq!(streamed.request_id.as_deref(), Some("req_fake_1"));
    assert_eq!(whole.request_id.as_deref(), Some("req_fake_2"));
    let reqs = server.requests();
    assert_eq!(reqs[0].body["stream"], true);
    assert_eq!(reqs[1].body.get("stream"), None);
    (normalized(streamed), normalized(whole))
}

#[tokio::test]
async fn anthropic_streaming_and_non_streaming_parse_identically() {
    let (streamed, whole) = both_modes(Api::Anthropic).await;
    assert_eq!(streamed, whole);
    assert_eq!(
        whole,
        ChatResponse {
            text: "The quick brown fox jumps over the lazy dog.".to_owned(),
            stop_reason: StopReason::MaxTokens,
            usage: Usage {
                input_tokens: 21,
                output_tokens: 9,
                cache_read_tokens: 7,
                cache_write_tokens: 3,
            },
            model: Some("claude-test".to_owned()),
            request_id: None,
            latency_ms: 0,
            tool_calls: Vec::new(),
        }
    );
}

#[tokio::test]
async fn openai_streaming_and_non_streaming_parse_identically() {
    let (streamed, whole) = both_modes(Api::OpenAi).await;
    assert_eq!(streamed, whole);
    assert_eq!(
        whole,
        ChatResponse {
            text: "The quick brown fox jumps over the lazy dog.".to_owned(),
            stop_reason: StopReason::MaxTokens,
            // OpenAI reports no cache writes.
            usage: Usage {
                input_tokens: 21,
                output_tokens: 9,
                cache_read_tokens: 7,
                cache_write_tokens: 0,
            },
            model: Some("gpt-test".to_owned()),
            request_id: None,
            latency_ms: 0,
            tool_calls: Vec::new(),
        }
    );
}

#[tokio::test]
async fn stop_reasons_map_per_provider() {
    for api in [Api::Anthropic, Api::OpenAi] {
        for stream in [true, false] {
            let server = FakeServer::start().await.unwrap();
            server.push(FakeResponse::text("a"));
            server
                .push(FakeResponse::text("b").with_stop(FakeStop::StopSequence("END".to_owned())));
            let p = provider(api, &server, stream, relaxed());
            let r = ask(p.as_ref(), "q").await.unwrap();
            assert_eq!(r.stop_reason, StopReason::EndTurn);
            let r = ask(p.as_ref(), "q").await.unwrap();
            // OpenAI reports a stop sequence as a plain `stop`.
            assert_eq!(
                r.stop_reason,
                api.pick(StopReason::StopSequence, StopReason::EndTurn),
                "{api:?} stream={stream}"
            );
        }
    }
}

#[tokio::test]
async fn streamed_text_reaches_the_delta_sink_piece_by_piece() {
    for api in [Api::Anthropic, Api::OpenAi] {
        let server = FakeServer::start().await.unwrap();
        server.push(FakeResponse::text("abcdefghij").with_chunk_chars(3));
        let p = provider(api, &server, true, relaxed());
        let (cx, seen) = recording_context();
        let r = p.complete(&ChatRequest::user("q"), &cx).await.unwrap();
        assert_eq!(r.text, "abcdefghij");
        assert_eq!(*seen.lock().unwrap(), ["abc", "def", "ghi", "j"], "{api:?}");
    }
}

#[tokio::test]
async fn non_streamed_text_reaches_the_delta_sink_once() {
    for api in [Api::Anthropic, Api::OpenAi] {
        let server = FakeServer::start().await.unwrap();
        server.push(FakeResponse::text("abcdefghij").with_chunk_chars(3));
        let p = provider(api, &server, false, relaxed());
        let (cx, seen) = recording_context();
        p.complete(&ChatRequest::user("q"), &cx).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), ["abcdefghij"], "{api:?}");
    }
}

#[tokio::test]
async fn a_healthy_stream_longer_than_the_idle_timeout_is_not_cut() {
    // Frames 40 ms apart: 0.5 s or more in total, over twice the idle
    // timeout, but never silent for more than 40 ms.
    let t = Timeouts {
        connect: Duration::from_secs(5),
        first_byte: Duration::from_secs(5),
        idle: Duration::from_millis(200),
        total: Duration::from_secs(60),
    };
    for api in [Api::Anthropic, Api::OpenAi] {
        let server = FakeServer::start().await.unwrap();
        let text = "x".repeat(12);
        server.push(
            FakeResponse::text(text.clone())
                .with_chunk_chars(1)
                .with_chunk_delay(Duration::from_millis(40)),
        );
        let p = provider(api, &server, true, t);
        let r = ask(p.as_ref(), "q").await.unwrap();
        assert_eq!(r.text, text);
        assert!(r.latency_ms >= 400, "{api:?}: {} ms", r.latency_ms);
    }
}

#[tokio::test]
async fn unscripted_calls_echo_the_last_user_message() {
    for api in [Api::Anthropic, Api::OpenAi] {
        let server = FakeServer::start().await.unwrap();
        let p = provider(api, &server, true, relaxed());
        let r = ask(p.as_ref(), "ping me").await.unwrap();
        assert_eq!(r.text, "echo: ping me");
        assert_eq!(r.stop_reason, StopReason::EndTurn);
        assert_eq!(r.usage.input_tokens, 2);
        assert_eq!(r.usage.output_tokens, 3);
    }
}

#[tokio::test]
async fn connections_are_reused_across_calls() {
    for api in [Api::Anthropic, Api::OpenAi] {
        let server = FakeServer::start().await.unwrap();
        let p = provider(api, &server, true, relaxed());
        for i in 0..5 {
            let r = ask(p.as_ref(), &format!("n{i}")).await.unwrap();
            assert_eq!(r.text, format!("echo: n{i}"));
        }
        let reqs = server.requests();
        assert_eq!(reqs.len(), 5);
        assert!(
            reqs.iter().all(|r| r.peer == reqs[0].peer),
            "{api:?}: one keep-alive connection"
        );
    }
}
