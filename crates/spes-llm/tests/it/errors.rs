//! One test per error class per adapter.

use std::time::{Duration, Instant};

use spes_core::message::StopReason;
use spes_fake_llm::{FakeResponse, FakeServer, FakeStop};
use spes_llm::{ErrorClass, ProviderError, ProviderErrorKind as K, ensure_complete};

use crate::support::{Api, ask, build, closed_port, config, provider, relaxed, short};

async fn fails(
    api: Api,
    server: &FakeServer,
    stream: bool,
    t: spes_core::config::Timeouts,
) -> ProviderError {
    let p = provider(api, server, stream, t);
    ask(p.as_ref(), "hello")
        .await
        .expect_err("the call should fail")
}

macro_rules! error_classes {
    ($adapter:ident, $api:expr) => {
        mod $adapter {
            use super::*;

            const API: Api = $api;

            #[tokio::test]
            async fn rate_limited_keeps_retry_after_and_request_id() {
                let server = FakeServer::start().await.unwrap();
                server.push(FakeResponse::rate_limited(Some("2")));
                let e = fails(API, &server, true, relaxed()).await;
                assert_eq!(e.kind, K::RateLimited);
                assert_eq!(e.class(), ErrorClass::Transient);
                assert_eq!(e.status, Some(429));
                assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
                assert_eq!(e.request_id.as_deref(), Some("req_fake_1"));
                assert_eq!(
                    e.provider_type.as_deref(),
                    Some(API.pick("rate_limit_error", "rate_limit_exceeded"))
                );
                assert!(!e.message.is_empty());
            }

            #[tokio::test]
            async fn rate_limited_with_an_http_date_retry_after() {
                let server = FakeServer::start().await.unwrap();
                let at = std::time::SystemTime::now() + Duration::from_secs(120);
                server.push(FakeResponse::rate_limited(Some(&httpdate_fmt(at))));
                let e = fails(API, &server, true, relaxed()).await;
                assert_eq!(e.kind, K::RateLimited);
                let wait = e.retry_after.expect("retry-after parsed");
                assert!(
                    wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
                    "{wait:?}"
                );
            }

            #[tokio::test]
            async fn overloaded_is_transient() {
                let server = FakeServer::start().await.unwrap();
                // Anthropic says 529 overloaded_error; OpenAI-compatible servers say 503.
                server.push(FakeResponse::error(API.pick(529, 503)));
                let e = fails(API, &server, true, relaxed()).await;
                assert_eq!(e.kind, K::Overloaded);
                assert_eq!(e.class(), ErrorClass::Transient);
                assert_eq!(e.status, Some(API.pick(529, 503)));
            }

            #[tokio::test]
            async fn server_error_is_transient() {
                let server = FakeServer::start().await.unwrap();
                server.push(FakeResponse::server_error());
                let e = fails(API, &server, false, relaxed()).await;
                assert_eq!(e.kind, K::Server);
                assert_eq!(e.class(), ErrorClass::Transient);
                assert_eq!(e.status, Some(500));
                assert_eq!(e.request_id.as_deref(), Some("req_fake_1"));
            }

            #[tokio::test]
            async fn no_first_byte_times_out() {
                let server = FakeServer::start().await.unwrap();
                server.push(FakeResponse::hang());
                let started = Instant::now();
                let e = fails(API, &server, true, short()).await;
                assert_eq!(e.kind, K::Timeout, "{e}");
                assert!(e.message.contains("first-byte"), "{e}");
                assert!(started.elapsed() < Duration::from_secs(10));
            }

            #[tokio::test]
            async fn stall_mid_stream_times_out() {
                let server = FakeServer::start().await.unwrap();
                server.push(FakeResponse::stall_after("one two three four", 1).with_chunk_chars(4));
                let e = fails(API, &server, true, short()).await;
                assert_eq!(e.kind, K::Timeout, "{e}");
                assert!(e.message.contains("idle"), "{e}");
                assert_eq!(e.request_id.as_deref(), Some("req_fake_1"));
            }

            #[tokio::test]
            async fn stall_mid_body_times_out() {
                let server = FakeServer::start().await.unwrap();
                server.push(FakeResponse::stall_after("one two three four", 1));
                let e = fails(API, &server, false, short()).await;
                assert_eq!(e.kind, K::Timeout, "{e}");
                assert!(e.message.contains("idle"), "{e}");
            }

            #[tokio::test]
            async fn broken_stream_is_stream_broken() {
                let server = FakeServer::start().await.unwrap();
                server.push(FakeResponse::break_after("one two three four", 2).with_chunk_chars(4));
                let e = fails(API, &server, true, relaxed()).await;
                assert_eq!(e.kind, K::StreamBroken, "{e}");
                assert_eq!(e.class(), ErrorClass::Transient);
            }

            #[tokio::test]
            async fn broken_body_is_stream_broken() {
                let server = FakeServer::start().await.unwrap();
                server.push(FakeResponse::break_after("one two three four", 0));
                let e = fails(API, &server, false, relaxed()).await;
                assert_eq!(e.kind, K::StreamBroken, "{e}");
            }

            #[tokio::test]
            async fn stream_ending_without_the_final_event_is_stream_broken() {
                let server = FakeServer::start().await.unwrap();
                server.push(FakeResponse::end_after("one two three four", 2).with_chunk_chars(4));
                let e = fails(API, &server, true, relaxed()).await;
                assert_eq!(e.kind, K::StreamBroken, "{e}");
            }

            #[tokio::test]
            async fn body_ending_early_is_stream_broken() {
                let server = FakeServer::start().await.unwrap();
                server.push(FakeResponse::end_after("one two three four", 0));
                let e = fails(API, &server, false, relaxed()).await;
                assert_eq!(e.kind, K::StreamBroken, "{e}");
            }

            #[tokio::test]
            async fn max_tokens_is_ok_until_complete_answers_are_required() {
                let server = FakeServer::start().await.unwrap();
                server.push(
                    FakeResponse::text("half an ans")
                        .with_stop(FakeStop::MaxTokens)
                        .with_usage(5, 16),
                );
                let p = provider(API, &server, true, relaxed());
                let r = ask(p.as_ref(), "hello").await.unwrap();
                assert_eq!(r.stop_reason, StopReason::MaxTokens);
                assert_eq!(r.text, "half an ans");
                let e = ensure_complete(p.name(), r).expect_err("truncated");
                assert_eq!(e.kind, K::Truncated);
                assert_eq!(e.class(), ErrorClass::Terminal);
                assert_eq!(e.request_id.as_deref(), Some("req_fake_1"));
                assert!(e.message.contains("16 output tokens"), "{e}");
            }

            #[tokio::test]
            async fn context_overflow_is_terminal() {
                let server = FakeServer::start().await.unwrap();
                server.push(FakeResponse::context_overflow());
                let e = fails(API, &server, true, relaxed()).await;
                assert_eq!(e.kind, K::ContextOverflow, "{e}");
                assert_eq!(e.class(), ErrorClass::Terminal);
                assert_eq!(e.status, Some(400));
            }

            #[tokio::test]
            async fn invalid_request_is_terminal() {
                let server = FakeServer::start().await.unwrap();
                server
                    .push(FakeResponse::error(400).with_error_message("temperature: must be <= 2"));
                server.push(FakeResponse::error(422));
                for status in [400, 422] {
                    let e = fails(API, &server, true, relaxed()).await;
                    assert_eq!(e.kind, K::InvalidRequest, "{e}");
                    assert_eq!(e.class(), ErrorClass::Terminal);
                    assert_eq!(e.status, Some(status));
                }
            }

            #[tokio::test]
            async fn wrong_key_is_authentication() {
                let server = FakeServer::start().await.unwrap();
                server.require_api_key("sk-the-right-one");
                let e = fails(API, &server, true, relaxed()).await;
                assert_eq!(e.kind, K::Authentication, "{e}");
                assert_eq!(e.class(), ErrorClass::Terminal);
                assert_eq!(e.status, Some(401));
            }

            #[tokio::test]
            async fn forbidden_is_authentication() {
                let server = FakeServer::start().await.unwrap();
                server.push(FakeResponse::error(403));
                let e = fails(API, &server, true, relaxed()).await;
                assert_eq!(e.kind, K::Authentication, "{e}");
            }

            #[tokio::test]
            async fn unknown_model_is_not_found() {
                let server = FakeServer::start().await.unwrap();
                server.push(FakeResponse::error(404));
                let e = fails(API, &server, true, relaxed()).await;
                assert_eq!(e.kind, K::NotFound, "{e}");
                assert_eq!(e.class(), ErrorClass::Terminal);
                assert_eq!(
                    e.provider_type.as_deref(),
                    Some(API.pick("not_found_error", "model_not_found"))
                );
            }

            #[tokio::test]
            async fn wrong_path_is_not_found() {
                let server = FakeServer::start().await.unwrap();
                let p = build(
                    config(API, &format!("{}/nowhere", server.url()), true, relaxed()),
                    API,
                );
                let e = ask(p.as_ref(), "hello").await.unwrap_err();
                assert_eq!(e.kind, K::NotFound, "{e}");
            }

            #[tokio::test]
            async fn refused_connection_is_connect() {
                let url = format!("http://127.0.0.1:{}", closed_port());
                let p = build(config(API, &url, true, relaxed()), API);
                let e = ask(p.as_ref(), "hello").await.unwrap_err();
                assert_eq!(e.kind, K::Connect, "{e}");
                assert_eq!(e.class(), ErrorClass::Transient);
                assert!(e.message.contains("127.0.0.1"), "{e}");
                assert_eq!(e.status, None);
            }

            #[tokio::test]
            async fn error_event_inside_the_stream_is_classified() {
                let server = FakeServer::start().await.unwrap();
                server.push(FakeResponse::error_event_after("one two three", 1, 529));
                let e = fails(API, &server, true, relaxed()).await;
                assert_eq!(e.kind, API.pick(K::Overloaded, K::Server), "{e}");
                assert_eq!(e.class(), ErrorClass::Transient);
                assert_eq!(e.request_id.as_deref(), Some("req_fake_1"));
            }

            #[tokio::test]
            async fn missing_model_is_a_config_error_sent_nowhere() {
                let server = FakeServer::start().await.unwrap();
                let p = build(
                    spes_llm::HttpProviderConfig {
                        model: None,
                        ..config(
                            API,
                            &crate::support::base_url(API, &server),
                            true,
                            relaxed(),
                        )
                    },
                    API,
                );
                let e = ask(p.as_ref(), "hello").await.unwrap_err();
                assert_eq!(e.kind, K::Config, "{e}");
                assert!(e.message.contains("no model"), "{e}");
                assert_eq!(server.request_count(), 0);
            }
        }
    };
}

error_classes!(anthropic, Api::Anthropic);
error_classes!(openai, Api::OpenAi);

fn httpdate_fmt(t: std::time::SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

#[tokio::test]
async fn openai_rate_limit_reset_headers_give_retry_after() {
    let server = FakeServer::start().await.unwrap();
    server.push(
        FakeResponse::error(429)
            .with_header("x-ratelimit-remaining-requests", "0")
            .with_header("x-ratelimit-reset-requests", "1.5s")
            .with_header("x-ratelimit-remaining-tokens", "1000")
            .with_header("x-ratelimit-reset-tokens", "6m0s"),
    );
    let e = fails(Api::OpenAi, &server, true, relaxed()).await;
    assert_eq!(e.kind, K::RateLimited);
    assert_eq!(e.retry_after, Some(Duration::from_millis(1500)));
}

#[tokio::test]
async fn anthropic_overloaded_error_type_wins_over_status() {
    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::error(500).with_error_type("overloaded_error"));
    let e = fails(Api::Anthropic, &server, true, relaxed()).await;
    assert_eq!(e.kind, K::Overloaded);
}

#[tokio::test]
async fn openai_insufficient_quota_is_not_retried() {
    let server = FakeServer::start().await.unwrap();
    server.push(
        FakeResponse::error(429)
            .with_error_type("insufficient_quota")
            .with_error_code("insufficient_quota"),
    );
    let e = fails(Api::OpenAi, &server, true, relaxed()).await;
    assert_eq!(e.class(), ErrorClass::Terminal);
    assert_eq!(e.kind, K::Billing);
    assert_eq!(e.kind.as_str(), "billing");
}

#[tokio::test]
async fn billing_errors_of_both_providers_are_billing() {
    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::error(400).with_error_message(
        "Your credit balance is too low to access the Anthropic API. \
         Please go to Plans & Billing to upgrade or purchase credits.",
    ));
    server.push(FakeResponse::error(402).with_error_type("billing_error"));
    for _ in 0..2 {
        let e = fails(Api::Anthropic, &server, false, relaxed()).await;
        assert_eq!(e.kind, K::Billing, "{e}");
        assert_eq!(e.class(), ErrorClass::Terminal);
    }
    server.push(
        FakeResponse::error(429)
            .with_error_code("insufficient_quota")
            .with_error_message(
                "You exceeded your current quota, please check your plan and billing details.",
            ),
    );
    let e = fails(Api::OpenAi, &server, false, relaxed()).await;
    assert_eq!(e.kind, K::Billing, "{e}");
}

#[tokio::test]
async fn request_too_large_is_terminal_on_both_providers() {
    let server = FakeServer::start().await.unwrap();
    server.push(
        FakeResponse::error(429)
            .with_error_code("rate_limit_exceeded")
            .with_retry_after("20")
            .with_error_message(
                "Request too large for gpt-4o in organization org-abc on tokens per min (TPM): \
                 Limit 30000, Requested 50000. The input or output tokens must be reduced in \
                 order to run successfully.",
            ),
    );
    let e = fails(Api::OpenAi, &server, true, relaxed()).await;
    assert_eq!(e.kind, K::RequestTooLarge, "{e}");
    assert_eq!(e.class(), ErrorClass::Terminal);
    server.push(
        FakeResponse::error(413)
            .with_error_type("request_too_large")
            .with_error_message("Request exceeds the maximum allowed number of bytes."),
    );
    let e = fails(Api::Anthropic, &server, true, relaxed()).await;
    assert_eq!(e.kind, K::RequestTooLarge, "{e}");
    assert_eq!(e.kind.as_str(), "request_too_large");
}
