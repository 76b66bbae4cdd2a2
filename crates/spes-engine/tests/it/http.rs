//! `kind: http` against a local HTTP stub that counts what it receives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use spes_engine::{Effect, Engine, FailureKind, MemoryJournal, RunEnd, WorkflowSource};
use spes_store::sqlite::{SqliteOptions, SqliteStore};
use spes_store::{RunStatus, RunStore};

use crate::{inputs, scripted, workflow};

/// One request as the stub saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: String,
}

#[derive(Clone, Default)]
struct Stub {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Stub {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }
}

async fn answer(State(stub): State<Stub>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let path = parts.uri.path().to_owned();
    let n = {
        let mut seen = stub.seen.lock().unwrap();
        seen.push(Seen {
            method: parts.method.to_string(),
            path: path.clone(),
            headers: parts.headers.clone(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        seen.iter().filter(|s| s.path == path).count()
    };
    match path.as_str() {
        "/book" => (
            StatusCode::CREATED,
            axum::Json(json!({ "booking": format!("B-{n}") })),
        )
            .into_response(),
        "/flaky" if n == 1 => (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response(),
        "/flaky" => axum::Json(json!({ "ok": true })).into_response(),
        "/redirect" => Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header("location", "/elsewhere")
            .body(Body::empty())
            .unwrap(),
        "/big" => "x".repeat(5000).into_response(),
        "/text" => "plain words".into_response(),
        "/missing" => (StatusCode::NOT_FOUND, "no such \u{1b}[2Jthing").into_response(),
        "/charge" => (StatusCode::PAYMENT_REQUIRED, "card declined").into_response(),
        p if p.starts_with("/item/") => {
            axum::Json(json!({ "id": p.trim_start_matches("/item/") })).into_response()
        }
        _ => axum::Json(json!({ "ok": true, "path": path })).into_response(),
    }
}

/// The stub on a loopback port: (its base URL, what it saw).
async fn stub() -> (String, Stub) {
    let stub = Stub::default();
    let app = axum::Router::new()
        .fallback(answer)
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), stub)
}

/// Sets `SPES_TEST_BOOKING_TOKEN`, which no other test reads or sets
/// (tests in this binary run on several threads).
#[allow(unsafe_code)]
fn set_token() {
    // SAFETY: no other thread reads or writes this variable.
    unsafe { std::env::set_var("SPES_TEST_BOOKING_TOKEN", "s3cr3t-token") };
}

fn engine() -> Engine {
    Engine::builder()
        .provider(scripted("- { default: echo }"))
        .build()
}

#[tokio::test]
async fn an_http_step_sends_its_templates_and_its_secret_and_journals_the_response() {
    let (base, stub) = stub().await;
    set_token();
    let yaml = format!(
        r#"
name: book
inputs: {{ who: {{ type: string, required: true }}, seats: {{ type: list, default: [1, 2] }} }}
steps:
  - name: find
    kind: http
    url: "{base}/item/{{{{ who }}}}"
    output: found
  - name: book
    kind: http
    method: post
    url: "{base}/book"
    headers:
      Authorization: {{ env: SPES_TEST_BOOKING_TOKEN, prefix: "Bearer " }}
      X-Who: "{{{{ who }}}}"
    body: {{ who: "{{{{ found.id }}}}", seats: "{{{{ seats }}}}", note: "for {{{{ who }}}}", n: 3 }}
    expect: [201]
    output: booked
"#
    );
    let wf = workflow(&yaml);
    let journal = Arc::new(MemoryJournal::default());
    let out = engine()
        .run_with_journal(&wf, inputs(&[("who", "ada")]), journal.clone())
        .await
        .unwrap();
    assert_eq!(out.output, Some(json!({ "booking": "B-1" })));
    let seen = stub.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("GET", "/item/ada")
    );
    let post = &seen[1];
    assert_eq!(post.method, "POST");
    assert_eq!(post.headers["authorization"], "Bearer s3cr3t-token");
    assert_eq!(post.headers["x-who"], "ada");
    assert_eq!(post.headers["content-type"], "application/json");
    let body: Value = serde_json::from_str(&post.body).unwrap();
    assert_eq!(
        body,
        json!({ "who": "ada", "seats": [1, 2], "note": "for ada", "n": 3 }),
        "a lone {{ expr }} keeps its type"
    );
    let key = post.headers["idempotency-key"].to_str().unwrap();
    assert!(
        key.len() == 37
            && key.starts_with("spes-")
            && key[5..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{key}"
    );
    assert_ne!(
        seen[0].headers["idempotency-key"],
        post.headers["idempotency-key"]
    );
    // The journal holds the responses, and never the secret.
    let entries = journal.entries();
    let Some(Effect::Http {
        status,
        body,
        url,
        method,
    }) = entries.get("book")
    else {
        panic!("{entries:?}")
    };
    assert_eq!((*status, method.as_str()), (201, "POST"));
    assert_eq!(body, &json!({ "booking": "B-1" }));
    assert_eq!(url, &format!("{base}/book"));
    let all = serde_json::to_string(&entries).unwrap();
    assert!(
        !all.contains("s3cr3t"),
        "the secret reached the journal: {all}"
    );
}

#[tokio::test]
async fn a_retried_request_keeps_its_idempotency_key() {
    let (base, stub) = stub().await;
    let yaml = format!(
        r#"
name: flaky
steps:
  - name: call
    kind: http
    url: "{base}/flaky"
    retry: {{ attempts: 2, base: 1ms }}
    output: r
"#
    );
    let out = engine()
        .run(&workflow(&yaml), BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(out.output, Some(json!({ "ok": true })));
    let seen = stub.seen();
    assert_eq!(seen.len(), 2, "503 is transient: sent again");
    assert_eq!(
        seen[0].headers["idempotency-key"],
        seen[1].headers["idempotency-key"]
    );
}

async fn fails(yaml: &str) -> spes_engine::EngineError {
    match engine().run(&workflow(yaml), BTreeMap::new()).await {
        Err(spes_engine::RunError::Step(e)) => e,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn redirects_are_not_followed_and_bad_statuses_fail_with_their_class() {
    let (base, stub) = stub().await;
    let e = fails(&format!(
        "name: r\nsteps:\n  - {{ name: go, kind: http, url: \"{base}/redirect\" }}\n"
    ))
    .await;
    let FailureKind::Http {
        status,
        message,
        transient,
    } = &e.kind
    else {
        panic!("{e}")
    };
    assert_eq!(*status, Some(307));
    assert!(!transient);
    assert!(message.contains("answered 307"), "{message}");
    assert_eq!(stub.count("/elsewhere"), 0, "the redirect was not followed");

    let e = fails(&format!(
        "name: m\nsteps:\n  - {{ name: go, kind: http, url: \"{base}/missing\" }}\n"
    ))
    .await;
    assert_eq!(e.class(), spes_llm::ErrorClass::Terminal);
    let text = e.to_string();
    assert!(
        text.contains("answered 404: no such \\u{1b}[2Jthing"),
        "{text}"
    );

    // Listed in `expect`, a 3xx is the answer.
    let out = engine()
        .run(
            &workflow(&format!(
                "name: r\nsteps:\n  - {{ name: go, kind: http, url: \"{base}/redirect\", expect: [307], output: r }}\n"
            )),
            BTreeMap::new(),
        )
        .await
        .unwrap();
    assert_eq!(out.output, Some(Value::Null), "an empty JSON body is null");
}

#[tokio::test]
async fn bodies_past_max_bytes_fail_and_text_is_kept_as_text() {
    let (base, _stub) = stub().await;
    let e = fails(&format!(
        "name: b\nsteps:\n  - {{ name: go, kind: http, url: \"{base}/big\", response: text, max_bytes: 4096 }}\n"
    ))
    .await;
    assert!(e.to_string().contains("max_bytes (4096)"), "{e}");
    let e = fails(&format!(
        "name: b\nsteps:\n  - {{ name: go, kind: http, url: \"{base}/text\" }}\n"
    ))
    .await;
    assert!(e.to_string().contains("not JSON"), "{e}");
    let out = engine()
        .run(
            &workflow(&format!(
                "name: t\nsteps:\n  - {{ name: go, kind: http, url: \"{base}/text\", response: text, output: r }}\n"
            )),
            BTreeMap::new(),
        )
        .await
        .unwrap();
    assert_eq!(out.output, Some(json!("plain words")));
}

#[tokio::test]
async fn a_host_outside_the_allow_list_is_never_contacted() {
    let (base, stub) = stub().await;
    let engine = Engine::builder()
        .provider(scripted("- { default: echo }"))
        .http_allow_hosts(Some(vec!["api.example.com".into()]))
        .build();
    let wf = workflow(&format!(
        "name: a\nsteps:\n  - {{ name: go, kind: http, url: \"{base}/item/1\" }}\n"
    ));
    let err = engine.run(&wf, BTreeMap::new()).await.unwrap_err();
    assert!(err.to_string().contains("allow_hosts"), "{err}");
    assert!(stub.seen().is_empty());
    // Listed with its port, the same host is reached.
    let port = base.rsplit(':').next().unwrap();
    let engine = Engine::builder()
        .provider(scripted("- { default: echo }"))
        .http_allow_hosts(Some(vec![format!("127.0.0.1:{port}")]))
        .build();
    engine.run(&wf, BTreeMap::new()).await.unwrap();
    assert_eq!(stub.seen().len(), 1);
}

/// A saga of http steps: the third step is refused (402), so the
/// compensations of the two committed steps each arrive exactly once, in
/// reverse order; a resume of the failed run sends no forward request
/// again.
#[tokio::test]
async fn a_saga_of_http_steps_compensates_each_committed_step_once() {
    let (base, stub) = stub().await;
    let yaml = format!(
        r#"
name: trip
steps:
  - name: trip
    kind: saga
    output: launch
    steps:
      - name: flight
        kind: http
        method: POST
        url: "{base}/book"
        body: {{ what: flight }}
        output: flight
        compensate: {{ name: undo, kind: http, method: POST, url: "{base}/cancel/flight", body: {{ booking: "{{{{ flight.booking }}}}" }} }}
      - name: hotel
        kind: http
        method: POST
        url: "{base}/book"
        body: {{ what: hotel }}
        output: hotel
        compensate: {{ name: undo, kind: http, method: POST, url: "{base}/cancel/hotel", body: {{ booking: "{{{{ hotel.booking }}}}" }} }}
      - name: pay
        kind: http
        method: POST
        url: "{base}/charge"
"#
    );
    let wf = workflow(&yaml);
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RunStore> = Arc::new(
        SqliteStore::open(&dir.path().join("spes.db"), SqliteOptions::default())
            .await
            .unwrap(),
    );
    let source = WorkflowSource {
        path: "/tmp/trip.yaml".into(),
        text: yaml.clone(),
    };
    let (id, end) = engine()
        .start(store.clone(), &wf, &source, BTreeMap::new())
        .await
        .unwrap();
    let RunEnd::Completed(out) = end else {
        panic!("{end:?}")
    };
    assert_eq!(out.output.as_ref().unwrap()["status"], "compensated");
    let paths: Vec<String> = stub.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(
        paths,
        [
            "/book",
            "/book",
            "/charge",
            "/cancel/hotel",
            "/cancel/flight"
        ],
        "forward steps, the refused charge, then the undos in reverse"
    );
    let undo: Vec<Value> = stub
        .seen()
        .iter()
        .filter(|s| s.path.starts_with("/cancel"))
        .map(|s| serde_json::from_str(&s.body).unwrap())
        .collect();
    assert_eq!(
        undo,
        [json!({ "booking": "B-2" }), json!({ "booking": "B-1" })]
    );
    // Replayed from the journal: nothing is sent again.
    let before = stub.seen().len();
    let run = store.run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    let r = engine().replay(store.clone(), &run, &wf).await.unwrap();
    assert!(r.identical);
    assert_eq!(stub.seen().len(), before);
    assert_eq!(stub.count("/book"), 2, "no booking was made twice");
    assert_eq!(stub.count("/cancel/hotel"), 1);
    assert_eq!(stub.count("/cancel/flight"), 1);
}
