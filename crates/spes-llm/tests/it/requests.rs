//! The request bodies and headers match the providers' documented shapes.

use serde_json::json;
use spes_core::message::{ChatRequest, Message};
use spes_fake_llm::FakeServer;
use spes_llm::{AnthropicProvider, CallContext, HttpProviderConfig, OpenAiProvider, Provider};

use crate::support::{Api, KEY, config, provider, relaxed};

fn full_request() -> ChatRequest {
    ChatRequest {
        model: Some("model-x".to_owned()),
        system: Some("Be brief.".to_owned()),
        messages: vec![
            Message::user("Hi"),
            Message::assistant("Hello!"),
            Message::user("Name a colour."),
        ],
        max_tokens: Some(300),
        temperature: Some(0.5),
        stop: vec!["END".to_owned()],
        json_schema: None,
        json: false,
        avoid: Vec::new(),
        tools: Vec::new(),
        tool_choice: None,
    }
}

fn schema() -> serde_json::Value {
    json!({"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]})
}

async fn sent(api: Api, stream: bool, req: &ChatRequest) -> spes_fake_llm::RecordedRequest {
    let server = FakeServer::start().await.unwrap();
    let p = provider(api, &server, stream, relaxed());
    p.complete(req, &CallContext::for_step("s")).await.unwrap();
    server.last_request().unwrap()
}

#[tokio::test]
async fn anthropic_streaming_request_body_and_headers() {
    let r = sent(Api::Anthropic, true, &full_request()).await;
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.header("x-api-key"), Some(KEY));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("authorization"), None);
    assert_eq!(
        r.body,
        json!({
            "model": "model-x",
            "max_tokens": 300,
            "system": "Be brief.",
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Name a colour."},
            ],
            "temperature": 0.5,
            "stop_sequences": ["END"],
            "stream": true,
        })
    );
}

#[tokio::test]
async fn anthropic_minimal_request_uses_defaults() {
    let r = sent(Api::Anthropic, false, &ChatRequest::user("Hi")).await;
    assert_eq!(
        r.body,
        json!({
            "model": "claude-test",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": "Hi"}],
        })
    );
}

#[tokio::test]
async fn anthropic_max_tokens_falls_back_to_the_provider_setting() {
    let server = FakeServer::start().await.unwrap();
    let p = AnthropicProvider::new(
        config(Api::Anthropic, &server.url(), false, relaxed()).with_max_tokens(77),
    )
    .unwrap();
    assert_eq!(
        p.request_body(&ChatRequest::user("Hi")).unwrap()["max_tokens"],
        77
    );
}

/// `prompt_cache = true`: the system prompt goes as one text block marked
/// for Anthropic's prompt cache, and the cache token counts of the answer
/// are read back (creation = written, read = read).
#[tokio::test]
async fn anthropic_prompt_cache_marks_the_system_prompt() {
    let server = FakeServer::start().await.unwrap();
    server.push(
        spes_fake_llm::FakeResponse::text("ok")
            .with_usage(5, 2)
            .with_cache_tokens(1200, 0),
    );
    let p = AnthropicProvider::new(
        config(Api::Anthropic, &server.url(), true, relaxed()).with_prompt_cache(true),
    )
    .unwrap();
    let r = p
        .complete(&full_request(), &CallContext::for_step("s"))
        .await
        .unwrap();
    let body = server.last_request().unwrap().body;
    assert_eq!(
        body["system"],
        json!([{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}])
    );
    assert_eq!(r.usage.cache_read_tokens, 1200);
    assert_eq!(r.usage.input_tokens, 5);
    // Off (the default): the system prompt is a plain string.
    let plain =
        AnthropicProvider::new(config(Api::Anthropic, &server.url(), true, relaxed())).unwrap();
    assert_eq!(
        plain.request_body(&full_request()).unwrap()["system"],
        "Be brief."
    );
}

#[tokio::test]
async fn openai_streaming_request_body_and_headers() {
    let req = ChatRequest {
        json_schema: Some(schema().into()),
        ..full_request()
    };
    let r = sent(Api::OpenAi, true, &req).await;
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-api-key"), None);
    assert_eq!(
        r.body,
        json!({
            "model": "model-x",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Name a colour."},
            ],
            "max_tokens": 300,
            "temperature": 0.5,
            "stop": ["END"],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": schema(), "strict": false},
            },
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    );
}

#[tokio::test]
async fn openai_minimal_request_without_a_key() {
    let server = FakeServer::start().await.unwrap();
    let p = OpenAiProvider::new(
        HttpProviderConfig::new("ollama")
            .with_base_url(server.openai_base_url())
            .with_model("llama3")
            .with_stream(false)
            .with_timeouts(relaxed()),
    )
    .unwrap();
    let r = p
        .complete(&ChatRequest::user("Hi"), &CallContext::default())
        .await
        .unwrap();
    assert_eq!(r.text, "echo: Hi");
    let sent = server.last_request().unwrap();
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(
        sent.body,
        json!({"model": "llama3", "messages": [{"role": "user", "content": "Hi"}]})
    );
}

#[tokio::test]
async fn base_url_trailing_slash_is_tolerated() {
    let server = FakeServer::start().await.unwrap();
    let p = OpenAiProvider::new(config(
        Api::OpenAi,
        &format!("{}/", server.openai_base_url()),
        true,
        relaxed(),
    ))
    .unwrap();
    p.complete(&ChatRequest::user("Hi"), &CallContext::default())
        .await
        .unwrap();
    assert_eq!(server.last_request().unwrap().path, "/v1/chat/completions");
}
