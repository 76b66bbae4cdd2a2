//! The local provider on the real default model (SmolLM2-135M-Instruct).
//! `scripts/test.sh` fetches it first (`scripts/fetch-model.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::{Arc, Mutex};

use spes_core::message::{ChatRequest, StopReason};
use spes_llm::{CallContext, Provider, ProviderErrorKind};
use spes_local::{LocalConfig, LocalProvider, default_model_path};

fn model_config() -> LocalConfig {
    let path = default_model_path();
    assert!(
        path.is_file(),
        "the default model is not at {}; run scripts/fetch-model.sh (scripts/test.sh does)",
        path.display()
    );
    LocalConfig {
        context: 1024,
        ..LocalConfig::default_model()
    }
}

fn request(text: &str, max_tokens: u32) -> ChatRequest {
    let mut r = ChatRequest::user(text);
    r.max_tokens = Some(max_tokens);
    r
}

#[tokio::test]
async fn greedy_generation_is_real_deterministic_and_bounded() {
    let p = LocalProvider::new("local", model_config());
    let req = request("Write one sentence about the sea.", 24);
    let a = p.complete(&req, &CallContext::for_step("a")).await.unwrap();
    let b = p.complete(&req, &CallContext::for_step("b")).await.unwrap();
    assert!(!a.text.trim().is_empty(), "empty answer: {a:?}");
    assert_eq!(a.text, b.text, "greedy decoding must repeat itself");
    assert!(a.usage.output_tokens <= 24, "{:?}", a.usage);
    assert!(a.usage.output_tokens > 0);
    assert!(a.usage.input_tokens > 5, "{:?}", a.usage);
    assert_eq!(a.model.as_deref(), Some("SmolLM2-135M-Instruct.Q4_1"));

    // A tight max_tokens cuts the answer and says so.
    let short = p
        .complete(
            &request("Write a long story about a dragon.", 3),
            &CallContext::for_step("c"),
        )
        .await
        .unwrap();
    assert_eq!(short.usage.output_tokens, 3);
    assert_eq!(short.stop_reason, StopReason::MaxTokens);
    assert!(a.text.len() > short.text.len());
}

#[tokio::test]
async fn sampling_with_a_seed_repeats_itself() {
    let c = LocalConfig {
        seed: 7,
        ..model_config()
    };
    let p = LocalProvider::new("local", c);
    let mut req = request("Name three fruits.", 16);
    req.temperature = Some(0.9);
    let a = p.complete(&req, &CallContext::for_step("a")).await.unwrap();
    let b = p.complete(&req, &CallContext::for_step("b")).await.unwrap();
    assert!(!a.text.trim().is_empty());
    assert_eq!(a.text, b.text, "same seed, same temperature, same answer");
}

#[tokio::test]
async fn streams_deltas_that_join_into_the_answer() {
    let p = LocalProvider::new("local", model_config());
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&seen);
    let cx = CallContext {
        step_key: "s".into(),
        on_delta: Some(Arc::new(move |d: &str| {
            sink.lock().unwrap().push(d.to_owned())
        })),
        ..CallContext::default()
    };
    let r = p
        .complete(&request("Say hello to the world.", 20), &cx)
        .await
        .unwrap();
    let deltas = seen.lock().unwrap().clone();
    assert!(deltas.len() > 1, "expected several deltas: {deltas:?}");
    assert_eq!(deltas.concat(), r.text);
}

#[tokio::test]
async fn a_stop_sequence_ends_the_answer_before_it() {
    let p = LocalProvider::new("local", model_config());
    let req = request("Count from one to ten in words, separated by commas.", 40);
    let full = p.complete(&req, &CallContext::for_step("a")).await.unwrap();
    // Stop at a piece of the greedy answer's second half: the rerun must
    // end just before its first occurrence.
    let mid = full.text.len() / 2;
    let start = (mid..full.text.len())
        .find(|&i| full.text.is_char_boundary(i) && full.text[i..].chars().count() >= 3)
        .expect("a long enough answer");
    let stop: String = full.text[start..].chars().take(3).collect();
    let cut = full.text.find(&stop).unwrap();
    let mut with_stop = req.clone();
    with_stop.stop = vec![stop.clone()];
    let seen = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&seen);
    let cx = CallContext {
        step_key: "b".into(),
        on_delta: Some(Arc::new(move |d: &str| sink.lock().unwrap().push_str(d))),
        ..CallContext::default()
    };
    let r = p.complete(&with_stop, &cx).await.unwrap();
    assert_eq!(
        r.stop_reason,
        StopReason::StopSequence,
        "stop {stop:?} in {:?}",
        full.text
    );
    assert_eq!(r.text, full.text[..cut]);
    assert_eq!(
        *seen.lock().unwrap(),
        r.text,
        "the stop sequence is never streamed"
    );
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_an_overflow_error() {
    let c = LocalConfig {
        context: 64,
        ..model_config()
    };
    let p = LocalProvider::new("local", c);
    // llama.cpp rounds small contexts up (to 256 tokens today): far past that.
    let long = "word ".repeat(2000);
    let e = p
        .complete(&request(&long, 8), &CallContext::for_step("x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ProviderErrorKind::ContextOverflow, "{e}");
    assert!(e.to_string().contains("context window is"), "{e}");
    // The provider still works afterwards.
    let ok = p
        .complete(&request("Hi", 4), &CallContext::for_step("y"))
        .await
        .unwrap();
    assert!(!ok.text.is_empty());
}

#[tokio::test]
async fn concurrent_calls_share_one_model_and_queue_for_slots() {
    let p = Arc::new(LocalProvider::new("local", model_config()));
    let q = LocalProvider::new("other", model_config());
    // Two providers on one file: one load.
    assert_eq!(p.load().await.unwrap(), q.load().await.unwrap());
    let reqs = ["Name a colour.", "Name an animal.", "Name a city."];
    let alone: Vec<String> = {
        let mut v = Vec::new();
        for r in reqs {
            v.push(
                p.complete(&request(r, 12), &CallContext::for_step("a"))
                    .await
                    .unwrap()
                    .text,
            );
        }
        v
    };
    let together = futures_join(&p, &reqs).await;
    assert_eq!(
        alone, together,
        "concurrency must not change greedy answers"
    );
}

async fn futures_join(p: &Arc<LocalProvider>, reqs: &[&str]) -> Vec<String> {
    let handles: Vec<_> = reqs
        .iter()
        .map(|r| {
            let p = Arc::clone(p);
            let req = request(r, 12);
            tokio::spawn(async move { p.complete(&req, &CallContext::for_step("c")).await })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap().unwrap().text);
    }
    out
}

#[tokio::test]
async fn load_errors_name_the_problem_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();

    let missing = LocalProvider::new(
        "local",
        LocalConfig {
            is_default_model: true,
            ..LocalConfig::new(dir.path().join("SmolLM2-135M-Instruct.Q4_1.gguf"))
        },
    );
    let e = missing
        .complete(&request("hi", 4), &CallContext::for_step("x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ProviderErrorKind::Config);
    assert!(e.to_string().contains("not found"), "{e}");
    assert!(e.to_string().contains("scripts/fetch-model.sh"), "{e}");

    let text = dir.path().join("notes.gguf");
    std::fs::write(&text, "just some text, not a model").unwrap();
    let e = LocalProvider::new("local", LocalConfig::new(&text))
        .load()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a GGUF model file"), "{e}");

    let alien = dir.path().join("alien.gguf");
    std::fs::write(
        &alien,
        spes_local::gguf::minimal_header(&[("general.architecture", "nonesuch")]),
    )
    .unwrap();
    let e = LocalProvider::new("local", LocalConfig::new(&alien))
        .load()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("architecture `nonesuch`"), "{e}");
    assert!(e.to_string().contains("not supported"), "{e}");
}

#[tokio::test]
async fn a_context_too_large_for_memory_is_a_clear_error() {
    // 2^28 tokens: a KV cache of terabytes, which no machine here has.
    let c = LocalConfig {
        context: 1 << 28,
        ..model_config()
    };
    let p = LocalProvider::new("local", c);
    let e = p
        .complete(&request("Hi", 4), &CallContext::for_step("x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ProviderErrorKind::Config, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("not enough memory"), "{msg}");
    assert!(msg.contains("lower `context`"), "{msg}");
}

#[tokio::test]
async fn a_json_schema_constrains_the_answer_to_valid_json() {
    let p = LocalProvider::new("local", model_config());
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "label": { "type": "string", "enum": ["bug", "feature", "question"] },
            "urgent": { "type": "boolean" }
        },
        "required": ["label", "urgent"],
        "additionalProperties": false
    });
    let mut req = request(
        "Classify this ticket: 'The login page crashes with a null pointer exception.'",
        64,
    );
    req.json_schema = Some(schema.into());
    let r = p
        .complete(&req, &CallContext::for_step("classify"))
        .await
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&r.text).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", r.text));
    assert!(
        ["bug", "feature", "question"].contains(&v["label"].as_str().unwrap()),
        "{v}"
    );
    assert!(v["urgent"].is_boolean(), "{v}");
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
}

/// A request that lists its answers as rejected (`avoid`, a repair) gets
/// another answer, greedy or sampled, still within the grammar; the other
/// answer is shown once (one delta: the text is settled before it shows).
#[tokio::test]
async fn a_request_avoiding_its_answer_gets_another_within_the_grammar() {
    let p = LocalProvider::new("local", model_config());
    let schema = serde_json::json!({
        "type": "object",
        "properties": { "label": { "type": "string", "enum": ["bug", "feature", "question"] } },
        "required": ["label"],
        "additionalProperties": false
    });
    for temperature in [None, Some(0.9)] {
        let mut req = request("Classify: 'The app crashes on start.' Answer as JSON.", 32);
        req.json_schema = Some(schema.clone().into());
        req.temperature = temperature;
        let first = p.complete(&req, &CallContext::for_step("a")).await.unwrap();
        let label = |t: &str| {
            serde_json::from_str::<serde_json::Value>(t).unwrap_or_else(|e| panic!("{e}: {t:?}"))
                ["label"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let a = label(&first.text);
        // The same answer with other spacing is the same answer.
        req.avoid = vec![format!(" {{ \"label\" : \"{a}\" }} ")];
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = Arc::clone(&seen);
        let cx = CallContext {
            step_key: "b".into(),
            on_delta: Some(Arc::new(move |d: &str| {
                sink.lock().unwrap().push(d.to_owned())
            })),
            ..CallContext::default()
        };
        let second = p.complete(&req, &cx).await.unwrap();
        let b = label(&second.text);
        assert_ne!(
            a, b,
            "{temperature:?}: {:?} then {:?}",
            first.text, second.text
        );
        assert_eq!(seen.lock().unwrap().concat(), second.text);
        assert_eq!(seen.lock().unwrap().len(), 1);
        // Without `avoid`, the first answer again (nothing else changed).
        req.avoid.clear();
        let again = p.complete(&req, &CallContext::for_step("c")).await.unwrap();
        assert_eq!(again.text, first.text);
    }
}

/// Tool calling on the real model: with a tool required, the answer is a
/// call of that tool whose arguments follow its schema (the grammar sees
/// to it); given the result, with tools off, the model answers in text.
#[tokio::test]
async fn a_required_tool_call_follows_the_tools_schema_and_its_result_is_read() {
    use spes_core::message::Message;
    use spes_core::tool::{ToolChoice, ToolResult, ToolSpec};
    let p = LocalProvider::new("local", model_config());
    let mut req = request("What is the weather in Paris? Use the tool.", 48);
    req.tools = vec![ToolSpec::new(
        "get_weather",
        "Today's weather in a city",
        serde_json::json!({
            "type": "object",
            "properties": { "city": { "type": "string" } },
            "required": ["city"]
        }),
    )];
    req.tool_choice = Some(ToolChoice::Required);
    let a = p.complete(&req, &CallContext::for_step("t")).await.unwrap();
    assert_eq!(a.stop_reason, StopReason::ToolUse, "{a:?}");
    assert_eq!(a.tool_calls.len(), 1, "{a:?}");
    let call = &a.tool_calls[0];
    assert_eq!(call.name, "get_weather");
    assert!(call.arguments["city"].is_string(), "{call:?}");
    assert!(call.id.starts_with("call_local_"), "{call:?}");
    // The round trip: the call and its result in the chat, tools off.
    req.messages.push(Message::from_response(&a));
    req.messages.push(Message::tool_results(vec![ToolResult::ok(
        call.id.clone(),
        "Sunny, 24 C",
    )]));
    req.tool_choice = Some(ToolChoice::None);
    let b = p
        .complete(&req, &CallContext::for_step("t2"))
        .await
        .unwrap();
    assert!(b.tool_calls.is_empty(), "{b:?}");
    assert!(!b.text.trim().is_empty(), "{b:?}");
}
