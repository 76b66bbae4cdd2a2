//! Shared helpers: providers pointed at a fake server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use spes_core::config::Timeouts;
use spes_core::message::{ChatRequest, ChatResponse};
use spes_fake_llm::FakeServer;
use spes_llm::{
    AnthropicProvider, CallContext, HttpProviderConfig, OpenAiProvider, Provider, ProviderError,
    SecretString,
};

/// The key every test provider uses; it must never show up in an error.
pub(crate) const KEY: &str = "sk-canary-XYZ";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Anthropic,
    OpenAi,
}

impl Api {
    /// Picks the value for this API.
    pub(crate) fn pick<T>(self, anthropic: T, openai: T) -> T {
        match self {
            Self::Anthropic => anthropic,
            Self::OpenAi => openai,
        }
    }
}

/// Timeouts no healthy test call comes near.
pub(crate) fn relaxed() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(5),
        first_byte: Duration::from_secs(20),
        idle: Duration::from_secs(20),
        total: Duration::from_secs(60),
    }
}

/// Short first-byte and idle timeouts, for the timeout tests.
pub(crate) fn short() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(5),
        first_byte: Duration::from_millis(200),
        idle: Duration::from_millis(200),
        total: Duration::from_secs(60),
    }
}

pub(crate) fn config(api: Api, base_url: &str, stream: bool, t: Timeouts) -> HttpProviderConfig {
    HttpProviderConfig::new(api.pick("claude", "gpt"))
        .with_base_url(base_url)
        .with_model(api.pick("claude-test", "gpt-test"))
        .with_api_key(SecretString::new(KEY))
        .with_stream(stream)
        .with_timeouts(t)
}

pub(crate) fn base_url(api: Api, server: &FakeServer) -> String {
    api.pick(server.url(), server.openai_base_url())
}

pub(crate) fn build(cfg: HttpProviderConfig, api: Api) -> Arc<dyn Provider> {
    match api {
        Api::Anthropic => Arc::new(AnthropicProvider::new(cfg).unwrap()),
        Api::OpenAi => Arc::new(OpenAiProvider::new(cfg).unwrap()),
    }
}

pub(crate) fn provider(
    api: Api,
    server: &FakeServer,
    stream: bool,
    t: Timeouts,
) -> Arc<dyn Provider> {
    build(config(api, &base_url(api, server), stream, t), api)
}

pub(crate) async fn ask(p: &dyn Provider, text: &str) -> Result<ChatResponse, ProviderError> {
    p.complete(&ChatRequest::user(text), &CallContext::for_step("step"))
        .await
}

/// A context whose delta sink records every delta.
pub(crate) fn recording_context() -> (CallContext, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let mut cx = CallContext::for_step("step");
    cx.on_delta = Some(Arc::new(move |d: &str| {
        sink.lock().unwrap().push(d.to_owned())
    }));
    (cx, seen)
}

/// A port nothing listens on.
pub(crate) fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}
