//! Building providers from `spes.toml`.

use std::sync::Arc;

use spes_core::config::{ProviderKind, parse_config};
use spes_core::message::ChatRequest;
use spes_fake_llm::{FakeResponse, FakeServer};
use spes_llm::scripted::ScriptedProvider;
use spes_llm::{CallContext, ErrorClass, ProviderErrorKind as K, ProviderRegistry};

fn config(server: &FakeServer) -> spes_core::config::ConfigSpec {
    let text = format!(
        r#"
        [providers.claude]
        kind = "anthropic"
        model = "claude-test"
        api_key_env = "SPES_TEST_ANTHROPIC_KEY"
        base_url = "{anthropic}"
        max_tokens = 64
        stream = false
        timeouts = {{ first_byte = "200ms", idle = "200ms" }}

        [providers.local-llama]
        kind = "openai"
        model = "llama3"
        base_url = "{openai}"

        [providers.missing]
        kind = "openai"
        model = "gpt-test"
        api_key_env = "SPES_TEST_UNSET_KEY"

        [providers.test]
        kind = "scripted"
        script = "answers.yaml"
        "#,
        anthropic = server.url(),
        openai = server.openai_base_url(),
    );
    parse_config("spes.toml", &text).unwrap()
}

fn env(var: &str) -> Option<String> {
    (var == "SPES_TEST_ANTHROPIC_KEY").then(|| "sk-test-1".to_owned())
}

#[tokio::test]
async fn builds_http_providers_and_calls_them() {
    let server = FakeServer::start().await.unwrap();
    let reg = ProviderRegistry::from_config_with_env(&config(&server), env).unwrap();
    assert_eq!(
        reg.names().collect::<Vec<_>>(),
        ["claude", "local-llama", "missing", "test"]
    );

    let claude = reg.get("claude").unwrap();
    assert_eq!((claude.name(), claude.kind()), ("claude", "anthropic"));
    assert_eq!(claude.default_model(), Some("claude-test"));
    let r = claude
        .complete(&ChatRequest::user("hi"), &CallContext::default())
        .await
        .unwrap();
    assert_eq!(r.text, "echo: hi");
    let sent = server.last_request().unwrap();
    assert_eq!(sent.header("x-api-key"), Some("sk-test-1"));
    assert_eq!(sent.body["max_tokens"], 64);
    assert_eq!(sent.body.get("stream"), None);

    let llama = reg.get("local-llama").unwrap();
    assert_eq!(llama.kind(), "openai");
    llama
        .complete(&ChatRequest::user("hi"), &CallContext::default())
        .await
        .unwrap();
    let sent = server.last_request().unwrap();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(sent.body["stream"], true);
}

#[tokio::test]
async fn configured_timeouts_apply() {
    let server = FakeServer::start().await.unwrap();
    let reg = ProviderRegistry::from_config_with_env(&config(&server), env).unwrap();
    server.push(FakeResponse::hang());
    let e = reg
        .get("claude")
        .unwrap()
        .complete(&ChatRequest::user("hi"), &CallContext::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind, K::Timeout);
    assert!(e.message.contains("200ms"), "{e}");
}

#[tokio::test]
async fn a_missing_key_names_the_variable_when_the_provider_is_asked_for() {
    let server = FakeServer::start().await.unwrap();
    let reg = ProviderRegistry::from_config_with_env(&config(&server), env).unwrap();
    let e = reg.get("missing").unwrap_err();
    assert_eq!(e.kind, K::Authentication);
    assert_eq!(e.class(), ErrorClass::Terminal);
    assert_eq!(e.provider, "missing");
    assert!(e.message.contains("SPES_TEST_UNSET_KEY"), "{e}");
    assert_eq!(
        e.to_string(),
        "missing: authentication: environment variable SPES_TEST_UNSET_KEY is not set or empty; \
         [providers.missing] reads its API key from it (export SPES_TEST_UNSET_KEY=... or change api_key_env)"
    );
}

#[tokio::test]
async fn the_official_endpoint_needs_the_conventional_key_variable() {
    let cfg = parse_config(
        "spes.toml",
        "[providers.claude]\nkind = \"anthropic\"\nmodel = \"m\"\n[providers.gpt]\nkind = \"openai\"\n",
    )
    .unwrap();
    let reg = ProviderRegistry::from_config_with_env(&cfg, |_| None).unwrap();
    assert!(
        reg.get("claude")
            .unwrap_err()
            .message
            .contains("ANTHROPIC_API_KEY")
    );
    assert!(
        reg.get("gpt")
            .unwrap_err()
            .message
            .contains("OPENAI_API_KEY")
    );
    let reg = ProviderRegistry::from_config_with_env(&cfg, |_| Some("k".to_owned())).unwrap();
    assert!(reg.get("claude").is_ok());
}

#[tokio::test]
async fn unknown_names_list_the_known_ones() {
    let server = FakeServer::start().await.unwrap();
    let reg = ProviderRegistry::from_config_with_env(&config(&server), env).unwrap();
    let e = reg.get("claud").unwrap_err();
    assert_eq!(e.kind, K::Config);
    assert_eq!(
        e.message,
        "unknown provider `claud`; known providers: claude, local-llama, missing, test"
    );
    let empty = ProviderRegistry::new().get("x").unwrap_err();
    assert_eq!(
        empty.message,
        "unknown provider `x`: no providers are configured"
    );
}

#[tokio::test]
async fn scripted_providers_are_left_for_the_caller_to_insert() {
    let server = FakeServer::start().await.unwrap();
    let mut reg = ProviderRegistry::from_config_with_env(&config(&server), env).unwrap();
    assert_eq!(reg.pending(), [("test", ProviderKind::Scripted)]);
    let e = reg.get("test").unwrap_err();
    assert_eq!(e.kind, K::Config);
    assert!(e.message.contains("not built"), "{e}");

    let scripted = ScriptedProvider::parse("test", "answers.yaml", "- { default: echo }").unwrap();
    assert!(reg.insert("test", Arc::new(scripted)).is_none());
    assert!(reg.pending().is_empty());
    assert_eq!(reg.get("test").unwrap().kind(), "scripted");
}

#[test]
fn bad_base_urls_are_config_errors() {
    let cfg = parse_config(
        "spes.toml",
        "[providers.x]\nkind = \"openai\"\nbase_url = \"ftp://example.com\"\n",
    )
    .unwrap();
    let e = ProviderRegistry::from_config_with_env(&cfg, |_| None).unwrap_err();
    assert_eq!(e.kind, K::Config);
    assert!(e.message.contains("base_url"), "{e}");
}

#[test]
fn provider_tables_set_the_cap_the_deadline_and_the_max_tokens_field() {
    let cfg = spes_core::config::parse_config(
        "spes.toml",
        r#"
        [providers.proxy]
        kind = "openai"
        base_url = "http://127.0.0.1:9/v1"
        max_response_bytes = 4096
        max_tokens_field = "max_completion_tokens"
        timeouts = { total = "90s" }
        "#,
    )
    .unwrap();
    let c = spes_llm::HttpProviderConfig::from_spec("proxy", &cfg.providers["proxy"], &|_| None)
        .unwrap();
    assert_eq!(c.max_response_bytes, 4096);
    assert_eq!(
        c.max_tokens_field,
        Some(spes_core::config::MaxTokensField::MaxCompletionTokens)
    );
    assert_eq!(c.timeouts.total, std::time::Duration::from_secs(90));
    let p = spes_llm::OpenAiProvider::new(c).unwrap();
    let body = p
        .request_body(&spes_core::message::ChatRequest {
            model: Some("o3".into()),
            max_tokens: Some(5),
            ..spes_core::message::ChatRequest::user("hi")
        })
        .unwrap();
    assert_eq!(body["max_completion_tokens"], 5);
    // Defaults: 32 MiB and 10 minutes.
    let d = spes_core::config::parse_config(
        "spes.toml",
        "[providers.o]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n",
    )
    .unwrap();
    let c = spes_llm::HttpProviderConfig::from_spec("o", &d.providers["o"], &|_| None).unwrap();
    assert_eq!(c.max_response_bytes, 32 << 20);
    assert_eq!(c.timeouts.total, std::time::Duration::from_secs(600));
}

/// A project's providers the way `spes` builds them: scripted ones from
/// their script (relative to the project), an HTTP provider with its key
/// unset kept as one that fails naming the variable, `local` through the
/// factory (and added when not configured), or unavailable without one.
#[tokio::test]
async fn for_project_builds_every_kind_and_keeps_unusable_ones_failing() {
    let server = FakeServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("answers.yaml"), "- { default: echo }\n").unwrap();
    let cfg = config(&server);
    let made = std::sync::Mutex::new(Vec::<String>::new());
    let factory = |name: &str, spec: Option<&spes_core::config::ProviderSpec>| {
        made.lock()
            .unwrap()
            .push(format!("{name}:{}", spec.is_some()));
        Arc::new(ScriptedProvider::parse(name, "local.yaml", "- { default: echo }").unwrap())
            as Arc<dyn spes_llm::Provider>
    };
    let reg = ProviderRegistry::for_project(&cfg, dir.path(), &env, Some(&factory)).unwrap();
    let all = reg.providers();
    let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["claude", "local", "local-llama", "missing", "test"]);
    assert_eq!(*made.lock().unwrap(), ["local:false"]);
    let test = all.iter().find(|p| p.name() == "test").unwrap();
    let r = test
        .complete(&ChatRequest::user("hello"), &CallContext::for_step("s"))
        .await
        .unwrap();
    assert!(r.text.contains("hello"), "{}", r.text);
    let missing = all.iter().find(|p| p.name() == "missing").unwrap();
    assert_eq!(missing.kind(), "openai");
    let err = missing
        .complete(&ChatRequest::user("x"), &CallContext::for_step("s"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, K::Authentication);
    assert!(err.to_string().contains("SPES_TEST_UNSET_KEY"), "{err}");

    // A configured `local` without a factory: there, but failing, naming why.
    let with_local = parse_config(
        "spes.toml",
        "[providers.mine]\nkind = \"local\"\n[providers.test]\nkind = \"scripted\"\nscript = \"answers.yaml\"\n",
    )
    .unwrap();
    let reg = ProviderRegistry::for_project(&with_local, dir.path(), &env, None).unwrap();
    let names: Vec<String> = reg
        .providers()
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    assert_eq!(
        names,
        ["mine", "test"],
        "no implicit local without a factory"
    );
    let err = reg.providers()[0]
        .complete(&ChatRequest::user("x"), &CallContext::for_step("s"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no embedded model"), "{err}");
}

#[test]
fn for_project_reports_a_bad_script_with_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("s.yaml"),
        "- { step: a, reply: x }\n- { bogus: 1 }\n",
    )
    .unwrap();
    let cfg = parse_config(
        "spes.toml",
        "[providers.t]\nkind = \"scripted\"\nscript = \"s.yaml\"\n",
    )
    .unwrap();
    let d = ProviderRegistry::for_project(&cfg, dir.path(), &env, None).unwrap_err();
    let first = &d.0[0];
    assert!(
        first.file.as_deref().unwrap().ends_with("s.yaml"),
        "{first:?}"
    );
    assert_eq!(first.line_col.map(|(l, _)| l), Some(2), "{first:?}");
    // A missing script names the file.
    let cfg = parse_config(
        "spes.toml",
        "[providers.t]\nkind = \"scripted\"\nscript = \"gone.yaml\"\n",
    )
    .unwrap();
    let d = ProviderRegistry::for_project(&cfg, dir.path(), &env, None).unwrap_err();
    assert!(d.0[0].message.contains("gone.yaml"), "{:?}", d.0[0]);
}
