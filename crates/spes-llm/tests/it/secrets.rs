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
