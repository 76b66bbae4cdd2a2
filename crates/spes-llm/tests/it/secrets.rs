//! The API key never appears in errors, `Debug` output or messages.

use spes_core::config::parse_config;
use spes_fake_llm::{FakeResponse, FakeServer};
use spes_llm::{ProviderError, ProviderRegistry};

use crate::support::{Api, KEY, ask, build, closed_port, config, provider, relaxed, short};

fn assert_clean(what: &str, text: &str) {
    assert!(!text.contains(KEY), "{what} leaks the key: {text}");
    assert!(
        !text.contains("canary"),
        "{what} leaks part of the key: {text}"
    );
}

fn check(e: &ProviderError) {
    assert_clean("Display", &e.to_string());
    assert_clean("Debug", &format!("{e:?}"));
    assert_clean("Debug (alternate)", &format!("{e:#?}"));
}

#[tokio::test]
async fn the_key_appears_in_no_error_of_any_class() {
    for api in [Api::Anthropic, Api::OpenAi] {
        let server = FakeServer::start().await.unwrap();
        // A server that echoes the key in its error message is redacted too.
        let echoing = FakeResponse::error(401).with_error_message(format!("bad key {KEY}"));
        let faults = [
            FakeResponse::rate_limited(Some("1")),
            FakeResponse::overloaded(),
            FakeResponse::server_error(),
            FakeResponse::context_overflow(),
            FakeResponse::error(400),
            FakeResponse::error(401),
            FakeResponse::error(404),
            echoing,
            FakeResponse::break_after("a b c", 1),
            FakeResponse::end_after("a b c", 1),
            FakeResponse::error_event_after("a b c", 1, 529),
            FakeResponse::stall_after("a b c", 1),
            FakeResponse::hang(),
            FakeResponse::error(402).with_error_type("billing_error"),
            FakeResponse::error(429).with_error_code("insufficient_quota"),
            FakeResponse::error(413).with_error_type("request_too_large"),
            FakeResponse::error(400)
                .with_error_message(format!("Your credit balance is too low for {KEY}")),
        ];
        let n = faults.len();
        for f in faults {
            server.push(f);
        }
        let p = provider(api, &server, true, short());
        assert_clean("provider Debug", &format!("{p:?}"));
        for _ in 0..n {
            let e = ask(p.as_ref(), "q").await.unwrap_err();
            check(&e);
        }
        server.require_api_key("sk-other");
        check(&ask(p.as_ref(), "q").await.unwrap_err());
        let refused = build(
            config(
                api,
                &format!("http://127.0.0.1:{}", closed_port()),
                true,
                relaxed(),
            ),
            api,
        );
        check(&ask(refused.as_ref(), "q").await.unwrap_err());
    }
}

#[test]
fn the_key_appears_in_no_registry_or_config_debug_output() {
    let cfg = parse_config(
        "spes.toml",
        r#"
        [providers.claude]
        kind = "anthropic"
        model = "claude-test"
        api_key_env = "SPES_TEST_ANTHROPIC_KEY"
        [providers.gpt]
        kind = "openai"
        api_key_env = "SPES_TEST_OPENAI_KEY"
        "#,
    )
    .unwrap();
    let reg = ProviderRegistry::from_config_with_env(&cfg, |_| Some(KEY.to_owned())).unwrap();
    assert_clean("registry Debug", &format!("{reg:?}"));
    assert_clean(
        "provider Debug",
        &format!("{:?}", reg.get("claude").unwrap()),
    );
    assert_clean("provider Debug", &format!("{:#?}", reg.get("gpt").unwrap()));
}

#[tokio::test]
async fn the_key_appears_in_no_redirect_refusal_or_size_error() {
    use serde_json::json;

    use crate::raw::{Raw, RawServer};
    for api in [Api::Anthropic, Api::OpenAi] {
        let s = RawServer::start().await;
        let base = api.pick(s.url.clone(), s.openai_base());
        // A redirect whose Location carries the key in its path and query.
        s.push(Raw::redirect(
            307,
            &format!("http://127.0.0.1:9/{KEY}?k={KEY}"),
        ));
        // A refusal that echoes the key.
        let refusal = format!("I will not repeat {KEY}");
        s.push(Raw::json(&match api {
            Api::Anthropic => json!({"type": "message", "content": [{"type": "text", "text": refusal}], "stop_reason": "refusal"}),
            Api::OpenAi => json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": refusal}, "finish_reason": "stop"}]}),
        }));
        // A 200 error object that echoes the key.
        s.push(Raw::json(&match api {
            Api::Anthropic => json!({"type": "error", "error": {"type": "api_error", "message": format!("bad key {KEY}")}}),
            Api::OpenAi => json!({"error": {"message": format!("bad key {KEY}"), "type": "server_error"}}),
        }));
        let p = build(config(api, &base, false, relaxed()), api);
        for _ in 0..3 {
            check(&ask(p.as_ref(), "q").await.unwrap_err());
        }
        s.push(Raw::json(&json!({"choices": [], "type": "message", "content": [{"type": "text", "text": "x".repeat(2048)}], "stop_reason": "end_turn"})));
        let small = build(
            config(api, &base, false, relaxed()).with_max_response_bytes(64),
            api,
        );
        check(&ask(small.as_ref(), "q").await.unwrap_err());
    }
}
