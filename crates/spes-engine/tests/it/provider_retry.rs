//! The default retry of transient provider errors (issue 12): llm steps
//! without `retry:` on HTTP providers retry twice, journaled like an
//! explicit `retry:`; `retry: none` and `spes.toml` settings change it.

use std::sync::Arc;

use serde_json::json;
use spes_core::config::parse_config;
use spes_engine::policy::RetryDefaults;
use spes_engine::{Effect, Engine, FailureKind, Journal, MemoryJournal, RunError};
use spes_fake_llm::{FakeResponse, FakeServer};
use spes_llm::anthropic::AnthropicProvider;
use spes_llm::http::HttpProviderConfig;
use spes_llm::openai::OpenAiProvider;
use spes_llm::{Provider, ProviderErrorKind};

use crate::{inputs, scripted, workflow};

fn one_step(extra: &str) -> String {
    format!("name: w\nsteps:\n  - name: x\n    kind: llm\n    prompt: hi\n    output: x\n{extra}")
}

fn openai(server: &FakeServer) -> Arc<dyn Provider> {
    let cfg = HttpProviderConfig::new("gpt")
        .with_base_url(server.openai_base_url())
        .with_model("m")
        .with_stream(false);
    Arc::new(OpenAiProvider::new(cfg).unwrap())
}

fn anthropic(server: &FakeServer) -> Arc<dyn Provider> {
    let cfg = HttpProviderConfig::new("claude")
        .with_base_url(server.url())
        .with_model("m");
    Arc::new(AnthropicProvider::new(cfg).unwrap())
}

fn provider_error(e: RunError) -> (spes_engine::EngineError, spes_llm::ProviderError) {
    match e {
        RunError::Step(e) => match &e.kind {
            FailureKind::Provider(p) => {
                let p = p.clone();
                (e, p)
            }
            other => panic!("expected a provider error, got {other}"),
        },
        other => panic!("expected a step failure, got {other}"),
    }
}

#[tokio::test]
async fn the_default_retry_sends_three_requests_against_500s_and_one_against_a_400() {
    let server = FakeServer::start().await.unwrap();
    for _ in 0..3 {
        server.push(FakeResponse::server_error());
    }
    server.push(FakeResponse::text("too late"));
    let engine = Engine::builder().provider(openai(&server)).build();
    let wf = workflow(&one_step(""));
    let (e, p) = provider_error(engine.run(&wf, inputs(&[])).await.unwrap_err());
    assert_eq!(server.request_count(), 3, "one try and two retries");
    assert_eq!(p.kind, ProviderErrorKind::Server);
    assert_eq!(
        p.gave_up,
        Some(spes_core::policy::GiveUp::Exhausted { attempts: 3 })
    );
    assert!(e.to_string().contains("gave up after 3 attempts"), "{e}");
    let hint = e.hint().unwrap();
    assert!(hint.contains("all 3 attempts failed"), "{hint}");

    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::error(400));
    server.push(FakeResponse::text("never asked"));
    let engine = Engine::builder().provider(openai(&server)).build();
    let (_, p) = provider_error(engine.run(&wf, inputs(&[])).await.unwrap_err());
    assert_eq!(server.request_count(), 1, "a terminal error is not retried");
    assert_eq!(p.kind, ProviderErrorKind::InvalidRequest);
    assert_eq!(p.gave_up, None);
}

#[tokio::test]
async fn the_default_retry_covers_anthropic_overload_and_broken_streams() {
    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::overloaded());
    server.push(FakeResponse::break_after("a b c d", 1).with_chunk_chars(2));
    server.push(FakeResponse::text("fine"));
    let engine = Engine::builder().provider(anthropic(&server)).build();
    let out = engine
        .run(&workflow(&one_step("")), inputs(&[]))
        .await
        .unwrap();
    assert_eq!(out.output, Some(json!("fine")));
    assert_eq!(server.request_count(), 3);
}

#[tokio::test]
async fn default_retries_are_journaled_as_attempts_and_replay_without_calls() {
    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::rate_limited(Some("0")));
    server.push(FakeResponse::text("ok"));
    let engine = Engine::builder().provider(openai(&server)).build();
    let wf = workflow(&one_step(""));
    let journal = Arc::new(MemoryJournal::default());
    let out = engine
        .run_with_journal(&wf, inputs(&[]), journal.clone())
        .await
        .unwrap();
    assert_eq!(out.output, Some(json!("ok")));
    let entries = journal.entries();
    let mut keys: Vec<&str> = entries.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["x#attempt2", "x#served"]);
    assert_eq!(
        entries.get("x#served"),
        Some(&Effect::Decision {
            decision: json!({ "alternative": 0, "attempt": 2, "by": "step" })
        })
    );
    // Replay: the journal answers, the server is not asked again.
    let again = engine
        .run_with_journal(&wf, inputs(&[]), journal.clone())
        .await
        .unwrap();
    assert_eq!(again.output, Some(json!("ok")));
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn a_step_served_at_once_journals_only_its_answer() {
    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::text("ok"));
    let engine = Engine::builder().provider(openai(&server)).build();
    let journal = Arc::new(MemoryJournal::default());
    engine
        .run_with_journal(&workflow(&one_step("")), inputs(&[]), journal.clone())
        .await
        .unwrap();
    let keys: Vec<String> = journal.entries().keys().cloned().collect();
    assert_eq!(keys, ["x"]);
    assert!(journal.get("x").await.unwrap().is_some());
}

#[tokio::test]
async fn retry_none_turns_the_default_off() {
    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::server_error());
    server.push(FakeResponse::text("never asked"));
    let engine = Engine::builder().provider(openai(&server)).build();
    let wf = workflow(&one_step("    retry: none\n"));
    let (e, p) = provider_error(engine.run(&wf, inputs(&[])).await.unwrap_err());
    assert_eq!(server.request_count(), 1);
    assert_eq!(p.gave_up, None);
    assert!(e.hint().unwrap().contains("add `retry:`"));
}

#[tokio::test]
async fn spes_toml_sets_the_default_per_provider_and_for_all() {
    let config = parse_config(
        "spes.toml",
        r#"
        [defaults]
        retry = { attempts = 4, base = "1ms", max = "10ms" }
        [providers.gpt]
        kind = "openai"
        retry = "none"
        [providers.claude]
        kind = "anthropic"
        "#,
    )
    .unwrap();
    let d = RetryDefaults::from_config(&config);
    assert_eq!(d.for_provider("gpt", Some("openai")), None);
    assert_eq!(
        d.for_provider("claude", Some("anthropic"))
            .unwrap()
            .attempts,
        4
    );
    assert_eq!(
        d.for_provider("test", Some("scripted")).unwrap().attempts,
        4
    );
    let builtin = RetryDefaults::default();
    assert_eq!(
        builtin
            .for_provider("any", Some("openai"))
            .unwrap()
            .attempts,
        3
    );
    assert_eq!(
        builtin
            .for_provider("any", Some("anthropic"))
            .unwrap()
            .attempts,
        3
    );
    assert_eq!(builtin.for_provider("test", Some("scripted")), None);
    assert_eq!(builtin.for_provider("local", Some("local")), None);

    // Over HTTP: [defaults] says 4 attempts for `claude`.
    let server = FakeServer::start().await.unwrap();
    for _ in 0..4 {
        server.push(FakeResponse::server_error());
    }
    let engine = Engine::builder()
        .provider(anthropic(&server))
        .retry_defaults(d)
        .build();
    let _ = engine
        .run(&workflow(&one_step("")), inputs(&[]))
        .await
        .unwrap_err();
    assert_eq!(server.request_count(), 4);
}

#[tokio::test]
async fn a_retry_after_longer_than_max_says_so_and_does_not_suggest_adding_retry() {
    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::rate_limited(Some("120")));
    server.push(FakeResponse::text("never asked"));
    let engine = Engine::builder().provider(openai(&server)).build();
    let (e, p) = provider_error(
        engine
            .run(&workflow(&one_step("")), inputs(&[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(server.request_count(), 1);
    assert_eq!(p.kind, ProviderErrorKind::RateLimited);
    let text = e.to_string();
    assert!(
        text.contains("the provider asked to wait 2m, longer than retry max 30s"),
        "{text}"
    );
    let hint = e.hint().unwrap();
    assert!(hint.contains("raise `max`"), "{hint}");
    assert!(!hint.contains("add `retry:`"), "{hint}");
}

#[tokio::test]
async fn scripted_providers_are_not_retried_by_default() {
    let p = scripted("- { step: x, error: server_error, times: 1 }\n- { step: x, reply: ok }");
    let engine = Engine::builder().provider(p.clone()).build();
    let e = engine
        .run(&workflow(&one_step("")), inputs(&[]))
        .await
        .unwrap_err();
    assert!(matches!(e, RunError::Step(_)), "{e}");
    assert_eq!(p.calls().len(), 1);
}

#[tokio::test]
async fn billing_and_refusals_reach_the_user_with_their_own_hints() {
    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::error(429).with_error_code("insufficient_quota"));
    let engine = Engine::builder().provider(openai(&server)).build();
    let (e, p) = provider_error(
        engine
            .run(&workflow(&one_step("")), inputs(&[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(server.request_count(), 1, "billing is terminal");
    assert_eq!(p.kind, ProviderErrorKind::Billing);
    let hint = e.hint().unwrap();
    assert!(hint.contains("credit or quota"), "{hint}");
    assert!(!hint.contains("api_key_env"), "{hint}");
}

#[tokio::test]
async fn a_malformed_success_is_retried_and_never_journaled_as_an_answer() {
    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::raw_json(&json!({})));
    server.push(FakeResponse::text("ok"));
    let engine = Engine::builder().provider(anthropic(&server)).build();
    let wf = workflow(&one_step(""));
    let journal = Arc::new(MemoryJournal::default());
    let out = engine
        .run_with_journal(&wf, inputs(&[]), journal.clone())
        .await
        .unwrap();
    assert_eq!(out.output, Some(json!("ok")));
    assert_eq!(server.request_count(), 2);
    assert!(
        journal.get("x").await.unwrap().is_none(),
        "`{{}}` was journaled"
    );

    // Without retry it fails the step, transient, and leaves nothing to replay.
    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::raw_json(&json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null}, "finish_reason": "stop"}]
    })));
    let engine = Engine::builder().provider(openai(&server)).build();
    let journal = Arc::new(MemoryJournal::default());
    let e = engine
        .run_with_journal(
            &workflow(&one_step("    retry: none\n")),
            inputs(&[]),
            journal.clone(),
        )
        .await
        .unwrap_err();
    let (e, p) = provider_error(e);
    assert_eq!(p.kind, ProviderErrorKind::BadResponse, "{e}");
    assert_eq!(e.class(), spes_llm::ErrorClass::Transient);
    assert!(journal.entries().is_empty());
}

#[tokio::test]
async fn a_refusal_fails_the_step_at_once_with_the_models_words() {
    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::raw_json(&json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": "I can't help with that."}, "finish_reason": "stop"}]
    })));
    server.push(FakeResponse::text("never asked"));
    let engine = Engine::builder().provider(openai(&server)).build();
    let journal = Arc::new(MemoryJournal::default());
    let (e, p) = provider_error(
        engine
            .run_with_journal(&workflow(&one_step("")), inputs(&[]), journal.clone())
            .await
            .unwrap_err(),
    );
    assert_eq!(server.request_count(), 1, "a refusal is terminal");
    assert_eq!(p.kind, ProviderErrorKind::Refused);
    assert!(e.to_string().contains("refused"), "{e}");
    assert!(e.to_string().contains("I can't help with that."), "{e}");
    assert!(e.hint().unwrap().contains("declined"));
    assert!(journal.entries().is_empty());
}
