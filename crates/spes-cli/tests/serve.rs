//! `spes serve` over real HTTP on loopback: a real `spes` process on a
//! real store (SQLite in a temporary project; PostgreSQL on a fresh
//! schema), the scripted provider, and reqwest as the client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "serve/harness.rs"]
mod harness;
use harness::*;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    Viewer,
    Approver,
    Operator,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_role_as_its_role_allows() {
    let dir = project(true, "");
    let s = Server::start(dir.path(), &[], &[]);
    let gated = s.start_run("signoff", json!({ "text": "x" })).await;
    s.until_status(&gated, "waiting").await;
    let done = s.start_run("hello", json!({ "who": "ada" })).await;
    s.until_status(&done, "completed").await;
    let routes: Vec<(&str, String, Option<Value>, Need)> = vec![
        ("GET", "/v1/openapi.json".into(), None, Need::Viewer),
        ("GET", "/v1/session".into(), None, Need::Viewer),
        (
            "GET",
            format!("/v1/runs/{done}/prompts"),
            None,
            Need::Viewer,
        ),
        ("GET", "/v1/runs".into(), None, Need::Viewer),
        ("GET", format!("/v1/runs/{gated}"), None, Need::Viewer),
        ("GET", "/v1/gates".into(), None, Need::Viewer),
        ("GET", format!("/v1/runs/{done}/events"), None, Need::Viewer),
        ("GET", "/v1/workflows".into(), None, Need::Viewer),
        ("GET", "/v1/workflows/signoff".into(), None, Need::Viewer),
        ("GET", "/v1/components".into(), None, Need::Viewer),
        (
            "GET",
            "/v1/components/persona/editor".into(),
            None,
            Need::Viewer,
        ),
        (
            "POST",
            format!("/v1/runs/{gated}/decisions"),
            Some(json!({ "action": "approve" })),
            Need::Approver,
        ),
        (
            "POST",
            "/v1/runs".into(),
            Some(json!({ "workflow": "hello", "inputs": { "who": "bo" } })),
            Need::Operator,
        ),
        (
            "POST",
            format!("/v1/runs/{done}/pause"),
            None,
            Need::Operator,
        ),
        (
            "POST",
            format!("/v1/runs/{done}/resume"),
            None,
            Need::Operator,
        ),
        (
            "POST",
            format!("/v1/runs/{done}/cancel"),
            None,
            Need::Operator,
        ),
        (
            "POST",
            format!("/v1/runs/{done}/fork"),
            Some(json!({ "at": "shout" })),
            Need::Operator,
        ),
    ];
    let callers: [(Option<&str>, Option<Need>); 5] = [
        (None, None),
        (Some("tok-not-a-token"), None),
        (Some(VIEWER), Some(Need::Viewer)),
        (Some(APPROVER), Some(Need::Approver)),
        (Some(OPERATOR), Some(Need::Operator)),
    ];
    for (method, path, body, need) in &routes {
        for (token, role) in callers {
            let body = if *method == "POST" {
                Some(body.clone().unwrap_or_else(|| json!({})))
            } else {
                None
            };
            let a = s.call(method, path, token, body).await;
            let what = format!("{method} {path} as {role:?}: {} {}", a.status, a.text);
            match role {
                None => {
                    assert_eq!(a.status, 401, "{what}");
                    assert_eq!(a.json["error"]["code"], "unauthorized", "{what}");
                    assert_eq!(a.headers["www-authenticate"], "Bearer", "{what}");
                }
                Some(r) if r < *need => {
                    assert_eq!(a.status, 403, "{what}");
                    assert_eq!(a.json["error"]["code"], "forbidden", "{what}");
                }
                Some(_) => {
                    assert!(![401, 403].contains(&a.status), "{what}");
                    assert!(a.status < 500, "{what}");
                    assert!(
                        a.json.is_object() || a.text.starts_with("event: status"),
                        "{what}"
                    );
                }
            }
        }
    }
    // The same through the dashboard's sessions: the cookie and the CSRF
    // token of each role's session (a gate is open again for the approver).
    let gated = s.start_run("signoff", json!({ "text": "y" })).await;
    s.until_status(&gated, "waiting").await;
    let routes: Vec<_> = routes
        .into_iter()
        .map(|(m, p, b, n)| {
            if p.ends_with("/decisions") {
                (m, format!("/v1/runs/{gated}/decisions"), b, n)
            } else {
                (m, p, b, n)
            }
        })
        .collect();
    for (token, role) in [
        (VIEWER, Need::Viewer),
        (APPROVER, Need::Approver),
        (OPERATOR, Need::Operator),
    ] {
        let (cookie, csrf) = s.session(token).await;
        for (method, path, body, need) in &routes {
            let body = (*method == "POST").then(|| body.clone().unwrap_or_else(|| json!({})));
            let a = s
                .call_with(
                    method,
                    path,
                    &[("cookie", &cookie), ("x-csrf-token", &csrf)],
                    body,
                )
                .await;
            let what = format!(
                "{method} {path} as {role:?} (session): {} {}",
                a.status, a.text
            );
            if role < *need {
                assert_eq!(a.status, 403, "{what}");
                assert_eq!(a.json["error"]["code"], "forbidden", "{what}");
            } else {
                assert!(![401, 403].contains(&a.status) && a.status < 500, "{what}");
            }
        }
    }
    let show = s.get(&format!("/v1/runs/{gated}"), VIEWER).await;
    assert_eq!(
        show.json["gates"][0]["decision"]["by"], "alice",
        "{}",
        show.text
    );
    // Health and the dashboard's page and assets need no token.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/",
        "/assets/app.js",
        "/assets/app.css",
    ] {
        let a = s.call("GET", path, None, None).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
    }
    assert_eq!(
        s.call("GET", "/readyz", None, None).await.json["status"],
        "ready"
    );
    // The approver's decision was recorded under its token's name.
    let show = s.get(&format!("/v1/runs/{gated}"), VIEWER).await;
    assert_eq!(
        show.json["gates"][0]["decision"]["by"], "alice",
        "{}",
        show.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_is_revised_then_approved_over_http_and_the_run_completes_naming_the_reviewer() {
    let dir = project(true, "");
    let s = Server::start(dir.path(), &[], &[]);
    let run = s
        .start_run("signoff", json!({ "text": "release 1.2" }))
        .await;
    s.until_status(&run, "waiting").await;
    let first = until_gate(&s, &run, None).await;
    assert_eq!(first["kind"], "approval");
    assert!(
        first["request"]["text"]
            .as_str()
            .unwrap()
            .contains("Draft about release 1.2"),
        "{first}"
    );
    // A viewer may read the gate but not decide it.
    let refused = s
        .post(
            &format!("/v1/runs/{run}/decisions"),
            VIEWER,
            json!({ "action": "approve" }),
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    // A revise without comments is not a decision.
    let bad = s
        .post(
            &format!("/v1/runs/{run}/decisions"),
            APPROVER,
            json!({ "action": "revise" }),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert_eq!(bad.json["error"]["code"], "bad_request");
    let revised = s
        .post(
            &format!("/v1/runs/{run}/decisions"),
            APPROVER,
            json!({ "action": "revise", "comments": "shorter", "suggest": "drop the intro" }),
        )
        .await;
    assert_eq!(revised.status, 200, "{}", revised.text);
    assert_eq!(revised.json["by"], "alice");
    assert_eq!(revised.json["gate"], first["key"]);
    assert_eq!(revised.json["queued"], false);
    // The server continues the run: a revision, then the gate again.
    let second = until_gate(&s, &run, first["key"].as_str()).await;
    let again = s
        .post(
            &format!("/v1/runs/{run}/decisions"),
            OPERATOR,
            json!({ "action": "revise", "gate": first["key"], "comments": "late" }),
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(again.json["error"]["code"], "refused");
    assert!(
        again.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already decided"),
        "{}",
        again.text
    );
    let approved = s
        .post(
            &format!("/v1/runs/{run}/decisions"),
            APPROVER,
            json!({ "action": "approve", "comments": "ship it" }),
        )
        .await;
    assert_eq!(approved.status, 200, "{}", approved.text);
    assert_eq!(approved.json["gate"], second["key"]);
    let doc = s.until_status(&run, "completed").await;
    assert_eq!(doc["run"]["output"]["status"], "approved", "{doc}");
    assert_eq!(doc["run"]["output"]["revisions"], 1, "{doc}");
    let gates = doc["gates"].as_array().unwrap();
    assert_eq!(gates.len(), 2, "{doc}");
    assert_eq!(gates[0]["decision"]["action"], "revise");
    assert_eq!(gates[0]["decision"]["suggest"], "drop the intro");
    for g in gates {
        assert_eq!(g["decision"]["by"], "alice", "{g}");
    }
    assert!(open_gate(&s, &run).await.is_none());
    // The journal shows every prompt and answer.
    assert!(
        doc["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "model"),
        "{doc}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn choose_and_reject_decisions_over_http() {
    let dir = project(true, "");
    let s = Server::start(dir.path(), &[], &[]);
    let pick = s.start_run("pick", json!({})).await;
    s.until_status(&pick, "waiting").await;
    let gate = until_gate(&s, &pick, None).await;
    assert_eq!(gate["kind"], "choose");
    assert_eq!(gate["request"]["variations"].as_array().unwrap().len(), 2);
    let out_of_range = s
        .post(
            &format!("/v1/runs/{pick}/decisions"),
            APPROVER,
            json!({ "action": "choose", "n": 3 }),
        )
        .await;
    assert_eq!(out_of_range.status, 409, "{}", out_of_range.text);
    assert!(out_of_range.text.contains("offers variations 1 to 2"));
    let chosen = s
        .post(
            &format!("/v1/runs/{pick}/decisions"),
            APPROVER,
            json!({ "action": "choose", "n": 2 }),
        )
        .await;
    assert_eq!(chosen.status, 200, "{}", chosen.text);
    let doc = s.until_status(&pick, "completed").await;
    assert_eq!(doc["run"]["output"]["selected_index"], 2, "{doc}");

    let run = s.start_run("signoff", json!({ "text": "t" })).await;
    s.until_status(&run, "waiting").await;
    let no_reason = s
        .post(
            &format!("/v1/runs/{run}/decisions"),
            APPROVER,
            json!({ "action": "reject" }),
        )
        .await;
    assert_eq!(no_reason.status, 400, "{}", no_reason.text);
    let rejected = s
        .post(
            &format!("/v1/runs/{run}/decisions"),
            APPROVER,
            json!({ "action": "reject", "reason": "wrong numbers" }),
        )
        .await;
    assert_eq!(rejected.status, 200, "{}", rejected.text);
    let doc = s.until_status(&run, "completed").await;
    assert_eq!(doc["run"]["output"]["status"], "rejected", "{doc}");
    assert_eq!(doc["gates"][0]["decision"]["comments"], "wrong numbers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_and_workflow_files_are_checked_as_spes_run_checks_them() {
    let dir = project(true, "");
    std::fs::write(
        dir.path().join("workflows/broken.yaml"),
        "name: broken\nsteps:\n  - { name: a, kind: llm, prompt: hi, output: a, colour: red }\n",
    )
    .unwrap();
    let s = Server::start(dir.path(), &[], &[]);
    for (inputs, code, needle) in [
        (
            json!({}),
            "spes::input::invalid",
            "missing required input `who`",
        ),
        (
            json!({ "who": "  " }),
            "spes::input::empty",
            "required input `who` of workflow `hello` is empty",
        ),
        (
            json!({ "who": "a", "times": "many" }),
            "spes::input::invalid",
            "input `times` must be an integer, got `many`",
        ),
        (
            json!({ "who": "a", "colour": "red" }),
            "spes::input::invalid",
            "unknown input `colour`",
        ),
    ] {
        let a = s
            .post(
                "/v1/runs",
                OPERATOR,
                json!({ "workflow": "hello", "inputs": inputs }),
            )
            .await;
        assert_eq!(a.status, 422, "{inputs}: {}", a.text);
        assert_eq!(a.json["error"]["code"], "invalid_input");
        let d = &a.json["error"]["diagnostics"][0];
        assert_eq!(d["code"], code, "{}", a.text);
        assert!(
            d["message"].as_str().unwrap().contains(needle),
            "{}",
            a.text
        );
    }
    // A JSON number is taken as its text, as `--input times=3` would be.
    let ok = s
        .start_run("hello", json!({ "who": "ada", "times": 3 }))
        .await;
    let doc = s.until_status(&ok, "completed").await;
    assert_eq!(doc["run"]["inputs"]["times"], 3);
    assert!(
        doc["run"]["output"]
            .as_str()
            .unwrap()
            .contains("HELLO ADA X3"),
        "{doc}"
    );
    // A workflow file that does not validate: its diagnostics, with where.
    let a = s
        .post(
            "/v1/runs",
            OPERATOR,
            json!({ "workflow": "broken", "inputs": {} }),
        )
        .await;
    assert_eq!(a.status, 422, "{}", a.text);
    let d = &a.json["error"]["diagnostics"][0];
    assert_eq!(d["code"], "spes::yaml::unknown_field", "{}", a.text);
    assert!(
        d["file"]
            .as_str()
            .unwrap()
            .ends_with("workflows/broken.yaml"),
        "{}",
        a.text
    );
    assert_eq!(d["line"], 3, "{}", a.text);
    assert!(d["column"].as_u64().unwrap() > 1, "{}", a.text);
    let list = s.get("/v1/workflows", VIEWER).await;
    let names: Vec<&str> = list.json["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello", "pick", "signoff"]);
    assert_eq!(
        list.json["diagnostics"][0]["code"],
        "spes::yaml::unknown_field"
    );
    let missing = s
        .post("/v1/runs", OPERATOR, json!({ "workflow": "nope" }))
        .await;
    assert_eq!(missing.status, 404, "{}", missing.text);
    assert!(missing.text.contains("its workflows: hello, pick, signoff"));
    let unknown_field = s
        .post(
            "/v1/runs",
            OPERATOR,
            json!({ "workflow": "hello", "input": {} }),
        )
        .await;
    assert_eq!(unknown_field.status, 400, "{}", unknown_field.text);
    // The workflow with its diagram, as `spes workflow diagram` draws it.
    let w = s.get("/v1/workflows/hello", VIEWER).await;
    assert_eq!(w.status, 200, "{}", w.text);
    let diagram = Command::new(env!("CARGO_BIN_EXE_spes"))
        .current_dir(dir.path())
        .args(["workflow", "diagram", "workflows/hello.yaml"])
        .output()
        .unwrap();
    assert_eq!(
        w.json["mermaid"].as_str().unwrap().trim(),
        String::from_utf8_lossy(&diagram.stdout).trim()
    );
    assert_eq!(w.json["inputs"][1]["name"], "who");
    assert_eq!(w.json["inputs"][0]["type"], "integer");
    assert_eq!(w.json["top_steps"], json!(["greet", "shout"]));
    let c = s
        .get("/v1/components/persona/editor?version=^1", VIEWER)
        .await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.json["reference"], "persona/editor@1.0.0");
    let c = s.get("/v1/components/persona/nobody", VIEWER).await;
    assert_eq!(c.status, 404, "{}", c.text);
    let l = s.get("/v1/components?kind=persona", VIEWER).await;
    assert_eq!(l.json["components"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_list_filters_and_pages_with_a_cursor() {
    let dir = project(true, "");
    let s = Server::start(dir.path(), &[], &[]);
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = s
            .start_run("hello", json!({ "who": format!("p{i}") }))
            .await;
        s.until_status(&id, "completed").await;
        ids.push(id);
    }
    let gated = s.start_run("signoff", json!({ "text": "x" })).await;
    s.until_status(&gated, "waiting").await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/runs?workflow=hello&limit=2&cursor={c}"),
            None => "/v1/runs?workflow=hello&limit=2".into(),
        };
        let a = s.get(&path, VIEWER).await;
        assert_eq!(a.status, 200, "{}", a.text);
        for r in a.json["runs"].as_array().unwrap() {
            assert_eq!(r["workflow"], "hello");
            seen.push(r["id"].as_str().unwrap().to_owned());
        }
        match a.json["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    let waiting = s.get("/v1/runs?status=waiting", VIEWER).await;
    assert_eq!(waiting.json["runs"].as_array().unwrap().len(), 1);
    assert_eq!(waiting.json["runs"][0]["id"], gated.as_str());
    let future = s.get("/v1/runs?since=2999-01-01T00:00:00Z", VIEWER).await;
    assert!(future.json["runs"].as_array().unwrap().is_empty());
    let past = s.get("/v1/runs?until=2000-01-01T00:00:00Z", VIEWER).await;
    assert!(past.json["runs"].as_array().unwrap().is_empty());
    let all = s.get("/v1/runs?since=2000-01-01T00:00:00Z", VIEWER).await;
    assert_eq!(all.json["runs"].as_array().unwrap().len(), 6);
    for bad in [
        "/v1/runs?status=sleeping",
        "/v1/runs?since=yesterday",
        "/v1/runs?cursor=zzz",
        "/v1/runs?colour=red",
    ] {
        let a = s.get(bad, VIEWER).await;
        assert_eq!(a.status, 400, "{bad}: {}", a.text);
        assert_eq!(a.json["error"]["code"], "bad_request", "{bad}");
    }
    let prefix = &gated[..20];
    let short = s.get(&format!("/v1/runs/{prefix}"), VIEWER).await;
    assert_eq!(short.json["run"]["id"], gated.as_str());
    let several = s.get(&format!("/v1/runs/{}", &gated[..4]), VIEWER).await;
    assert_eq!(several.status, 400, "{}", several.text);
    assert_eq!(several.json["error"]["code"], "ambiguous");
    // Without `limit`, a page holds 50 runs.
    for i in 0..45 {
        s.start_run("hello", json!({ "who": format!("q{i}") }))
            .await;
    }
    let first = s.get("/v1/runs", VIEWER).await;
    assert_eq!(first.json["runs"].as_array().unwrap().len(), 50);
    assert!(first.json["next_cursor"].is_string());
    let none = s.get("/v1/runs/ffffffffffff", VIEWER).await;
    assert_eq!(none.status, 404, "{}", none.text);
    assert_eq!(none.json["error"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_cancel_and_fork_over_http() {
    let dir = project(true, "");
    let s = Server::start(dir.path(), &[], &[]);
    let run = s.start_run("signoff", json!({ "text": "x" })).await;
    s.until_status(&run, "waiting").await;
    let paused = s
        .post(&format!("/v1/runs/{run}/pause"), OPERATOR, json!({}))
        .await;
    assert_eq!(paused.status, 200, "{}", paused.text);
    assert_eq!(paused.json["run"]["status"], "paused");
    let resumed = s
        .post(&format!("/v1/runs/{run}/resume"), OPERATOR, json!({}))
        .await;
    assert_eq!(resumed.status, 202, "{}", resumed.text);
    assert_eq!(resumed.json["queued"], false);
    s.until_status(&run, "waiting").await;
    let cancelled = s
        .post(&format!("/v1/runs/{run}/cancel"), OPERATOR, json!({}))
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text);
    assert_eq!(cancelled.json["run"]["status"], "cancelled");
    assert_eq!(cancelled.json["closed"].as_array().unwrap().len(), 1);
    assert!(open_gate(&s, &run).await.is_none());
    let late = s
        .post(
            &format!("/v1/runs/{run}/decisions"),
            APPROVER,
            json!({ "action": "approve" }),
        )
        .await;
    assert_eq!(late.status, 409, "{}", late.text);
    assert!(
        late.text.contains("closed: the run was cancelled"),
        "{}",
        late.text
    );
    for action in ["pause", "resume", "cancel"] {
        let a = s
            .post(&format!("/v1/runs/{run}/{action}"), OPERATOR, json!({}))
            .await;
        assert_eq!(a.status, 409, "{action}: {}", a.text);
    }

    // A run whose workflow file changed since it started is not resumed.
    let other = s.start_run("signoff", json!({ "text": "y" })).await;
    s.until_status(&other, "waiting").await;
    std::fs::write(
        dir.path().join("workflows/signoff.yaml"),
        format!("{SIGNOFF}# edited\n"),
    )
    .unwrap();
    let drifted = s
        .post(&format!("/v1/runs/{other}/resume"), OPERATOR, json!({}))
        .await;
    assert_eq!(drifted.status, 409, "{}", drifted.text);
    assert!(
        drifted
            .text
            .contains("resuming could mix old and new behaviour"),
        "{}",
        drifted.text
    );

    let done = s.start_run("hello", json!({ "who": "ada" })).await;
    s.until_status(&done, "completed").await;
    let forked = s
        .post(
            &format!("/v1/runs/{done}/fork"),
            OPERATOR,
            json!({ "at": "greet", "inputs": { "who": "bob" } }),
        )
        .await;
    assert_eq!(forked.status, 201, "{}", forked.text);
    let new = forked.json["run"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        forked.headers["location"],
        format!("/v1/runs/{new}").as_str()
    );
    let doc = s.until_status(&new, "completed").await;
    assert!(
        doc["run"]["output"].as_str().unwrap().contains("HELLO BOB"),
        "{doc}"
    );
    let bad = s
        .post(
            &format!("/v1/runs/{done}/fork"),
            OPERATOR,
            json!({ "at": "nope" }),
        )
        .await;
    assert_eq!(bad.status, 409, "{}", bad.text);
    assert!(bad.text.contains("has no top-level step `nope`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_key_and_the_tokens_never_appear_in_any_answer_or_log() {
    let fake = spes_fake_llm::FakeServer::start().await.unwrap();
    fake.require_api_key(CANARY);
    fake.set_default(spes_fake_llm::FakeResponse::text("a fine answer"));
    let extra = format!(
        "\n[providers.remote]\nkind = \"openai\"\nmodel = \"m1\"\nbase_url = \"{}\"\napi_key_env = \"SPES_SERVE_CANARY\"\nretry = \"none\"\n\n[providers.down]\nkind = \"openai\"\nmodel = \"m1\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"SPES_SERVE_CANARY\"\nretry = \"none\"\n",
        fake.openai_base_url()
    );
    let dir = project(true, &extra);
    std::fs::write(
        dir.path().join("workflows/remote.yaml"),
        "name: remote\nsteps:\n  - { name: ask, kind: llm, provider: remote, prompt: hi, output: a }\n  - { name: ok, kind: approval, show: a, output: ok }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("workflows/down.yaml"),
        "name: down\nsteps:\n  - { name: ask, kind: llm, provider: down, prompt: hi, output: a }\n",
    )
    .unwrap();
    let s = Server::start(dir.path(), &[], &[("SPES_SERVE_CANARY", CANARY)]);
    let run = s.start_run("remote", json!({})).await;
    s.until_status(&run, "waiting").await;
    let failed = s.start_run("down", json!({})).await;
    s.until_status(&failed, "failed").await;
    assert_eq!(fake.request_count(), 1);
    let mut bodies = Vec::new();
    for path in [
        "/v1/openapi.json".to_owned(),
        "/v1/runs".into(),
        format!("/v1/runs/{run}"),
        format!("/v1/runs/{failed}"),
        "/v1/gates".into(),
        "/v1/workflows".into(),
        "/v1/workflows/remote".into(),
        "/v1/components".into(),
        "/v1/nowhere".into(),
        "/healthz".into(),
        "/readyz".into(),
        "/metrics".into(),
    ] {
        bodies.push(s.get(&path, VIEWER).await.text);
        bodies.push(s.call("GET", &path, Some(CANARY), None).await.text);
    }
    for (method, path, body) in [
        (
            "POST",
            format!("/v1/runs/{run}/decisions"),
            json!({ "action": "approve", "comments": "ok" }),
        ),
        ("POST", format!("/v1/runs/{failed}/resume"), json!({})),
        (
            "POST",
            format!("/v1/runs/{run}/fork"),
            json!({ "at": "ask" }),
        ),
        (
            "POST",
            "/v1/runs".into(),
            json!({ "workflow": "remote", "inputs": { "x": 1 } }),
        ),
        (
            "POST",
            "/v1/runs".into(),
            json!({ "workflow": "down", "provider": "remote" }),
        ),
        ("POST", "/v1/runs".into(), json!("not an object")),
    ] {
        for token in [OPERATOR, APPROVER, VIEWER] {
            bodies.push(
                s.call(method, &path, Some(token), Some(body.clone()))
                    .await
                    .text,
            );
        }
    }
    s.until_status(&run, "completed").await;
    bodies.push(s.get(&format!("/v1/runs/{run}"), VIEWER).await.text);
    let (code, log) = s.stop();
    assert_eq!(code, Some(0), "{log}");
    let secrets = [CANARY, VIEWER, APPROVER, OPERATOR];
    for b in &bodies {
        for secret in secrets {
            assert!(!b.contains(secret), "a response holds a secret: {b}");
        }
    }
    assert!(log.contains("DEBUG"), "the log was at debug level: {log}");
    for secret in secrets {
        assert!(!log.contains(secret), "the log holds a secret:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_errors_headers_and_no_cors() {
    let dir = project(true, "");
    let s = Server::start(dir.path(), &[], &[]);
    let big = "x".repeat(2 << 20);
    // On a connection of its own: the server answers 413 without reading
    // the rest of the body and closes the connection, which a pooled
    // client could otherwise pick up again for the next request.
    let once = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let a = once
        .post(format!("{}/v1/runs", s.base))
        .bearer_auth(OPERATOR)
        .json(&json!({ "workflow": "hello", "inputs": { "who": big } }))
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 413);
    let body: Value = a.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    let a = s.call("GET", "/v1/nowhere", Some(VIEWER), None).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json["error"]["code"], "not_found");
    let a = s.call("DELETE", "/v1/runs", Some(OPERATOR), None).await;
    assert_eq!(a.status, 405, "{}", a.text);
    assert_eq!(a.json["error"]["code"], "method_not_allowed");
    let a = s
        .http
        .post(format!("{}/v1/runs", s.base))
        .bearer_auth(OPERATOR)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 400);
    let body: Value = a.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    for path in ["/healthz", "/v1/runs", "/v1/nowhere"] {
        let a = s
            .http
            .get(format!("{}{path}", s.base))
            .bearer_auth(VIEWER)
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        let h = a.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.starts_with("default-src 'self';")
                && csp.contains("script-src 'self';")
                && csp.contains("frame-ancestors 'none'")
                && !csp.contains("unsafe"),
            "{path}: {csp}"
        );
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert!(h.get("access-control-allow-origin").is_none(), "{path}");
    }
    let pre = s
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/runs", s.base))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(pre.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_3_1_and_lists_every_route() {
    let dir = project(true, "");
    let s = Server::start(dir.path(), &[], &[]);
    let a = s.get("/v1/openapi.json", VIEWER).await;
    assert_eq!(a.status, 200);
    let doc = a.json;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/v1/openapi.json", "get"),
        ("/v1/runs", "get"),
        ("/v1/runs", "post"),
        ("/v1/runs/{run}", "get"),
        ("/v1/runs/{run}/pause", "post"),
        ("/v1/runs/{run}/resume", "post"),
        ("/v1/runs/{run}/cancel", "post"),
        ("/v1/runs/{run}/fork", "post"),
        ("/v1/runs/{run}/decisions", "post"),
        ("/v1/gates", "get"),
        ("/v1/runs/{run}/events", "get"),
        ("/v1/gates/events", "get"),
        ("/v1/workflows", "get"),
        ("/v1/workflows/{name}", "get"),
        ("/v1/components", "get"),
        ("/v1/components/{kind}/{name}", "get"),
        ("/v1/session", "post"),
        ("/v1/session", "get"),
        ("/v1/session", "delete"),
        ("/v1/runs/{run}/prompts", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    assert_eq!(paths.len(), 20);
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "RunShow",
        "RunSummary",
        "GateList",
        "ErrorBody",
        "DecideRequest",
        "RunPage",
    ] {
        assert!(schemas.contains_key(name), "{name} missing");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["cookie"]["name"],
        "spes_session"
    );
    // Every $ref points at a schema the document has.
    let text = doc.to_string();
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = part.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "dangling $ref {name}");
    }
}

#[test]
fn serving_a_public_address_without_tokens_or_with_a_missing_token_variable_is_refused() {
    let dir = project(false, "");
    let out = Command::new(env!("CARGO_BIN_EXE_spes"))
        .current_dir(dir.path())
        .args(["serve", "--bind", "0.0.0.0:0"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: refusing to serve on 0.0.0.0:0 with no access tokens"),
        "{err}"
    );
    let dir = project(true, "");
    let out = Command::new(env!("CARGO_BIN_EXE_spes"))
        .current_dir(dir.path())
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .env_remove("SPES_T_ALICE")
        .env("SPES_T_VERA", "v")
        .env("SPES_T_OTTO", "o")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("token `alice` ([server.tokens.alice] in spes.toml) reads environment variable SPES_T_ALICE, which is not set"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_a_loopback_server_takes_every_caller_as_the_os_user() {
    let dir = project(false, "\n[server]\nworkflows = [\"workflows\", \"more\"]\n");
    std::fs::create_dir_all(dir.path().join("more/deep")).unwrap();
    std::fs::write(
        dir.path().join("more/deep/extra.yml"),
        "name: extra\nsteps:\n  - { name: a, kind: llm, prompt: hi, output: a }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("more/notes.txt"), "not a workflow").unwrap();
    let s = Server::start(dir.path(), &[], &[("USER", "dora")]);
    let run = s.start_run("signoff", json!({ "text": "x" })).await;
    s.until_status(&run, "waiting").await;
    let a = s
        .call(
            "POST",
            &format!("/v1/runs/{run}/decisions"),
            None,
            Some(json!({ "action": "approve" })),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json["by"], "dora");
    s.until_status(&run, "completed").await;
    let names: Vec<String> = s.call("GET", "/v1/workflows", None, None).await.json["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["extra", "hello", "pick", "signoff"]);
    let (code, log) = s.stop_with("INT");
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("no tokens: every local caller is an operator"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_runs_are_queued_and_executed_by_the_servers_workers() {
    let schema = spes_store::testing::postgres::TestSchema::new().await;
    let dir = project(true, "");
    let s = Server::start(
        dir.path(),
        &["--store", schema.url(), "--workers", "2"],
        &[],
    );
    let a = s
        .post(
            "/v1/runs",
            OPERATOR,
            json!({ "workflow": "signoff", "inputs": { "text": "pg" } }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.json["queued"], true);
    assert_eq!(a.json["run"]["status"], "pending");
    let run = a.json["run"]["id"].as_str().unwrap().to_owned();
    s.until_status(&run, "waiting").await;
    let d = s
        .post(
            &format!("/v1/runs/{run}/decisions"),
            APPROVER,
            json!({ "action": "approve" }),
        )
        .await;
    assert_eq!(d.status, 200, "{}", d.text);
    assert_eq!(d.json["queued"], true);
    let doc = s.until_status(&run, "completed").await;
    assert_eq!(doc["gates"][0]["decision"]["by"], "alice");
    let page = s
        .get("/v1/runs?workflow=signoff&status=completed", VIEWER)
        .await;
    assert_eq!(page.json["runs"][0]["id"], run.as_str());
    let (code, log) = s.stop();
    assert_eq!(code, Some(0), "{log}");
    // --workers needs a shared store.
    let out = Command::new(env!("CARGO_BIN_EXE_spes"))
        .current_dir(dir.path())
        .args(["serve", "--bind", "127.0.0.1:0", "--workers", "1"])
        .envs(TOKENS.iter().map(|t| (t.1, t.2)))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--workers needs a shared store"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_and_gives_back_the_runs_it_executes() {
    let fake = spes_fake_llm::FakeServer::start().await.unwrap();
    fake.set_default(spes_fake_llm::FakeResponse::hang());
    let extra = fake_provider("slow", &fake.openai_base_url(), false);
    let dir = project(true, &extra);
    std::fs::write(
        dir.path().join("workflows/slow.yaml"),
        "name: slow\nsteps:\n  - { name: ask, kind: llm, provider: slow, prompt: hi, output: a }\n",
    )
    .unwrap();
    let s = Server::start(dir.path(), &[], &[]);
    let run = s.start_run("slow", json!({})).await;
    // In flight: the model was asked and has not answered.
    let started = Instant::now();
    while fake.request_count() == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "{}", s.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        s.get(&format!("/v1/runs/{run}"), VIEWER).await.json["run"]["status"],
        "running"
    );
    let (code, log) = s.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains(&format!("run {run} interrupted")), "{log}");
    assert!(log.contains("spes serve: stopped"), "{log}");
    let out = Command::new(env!("CARGO_BIN_EXE_spes"))
        .current_dir(dir.path())
        .args(["runs", "show", &run, "--json"])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["run"]["status"], "interrupted", "{doc}");
    assert_eq!(doc["run"]["owner"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_applies_a_passed_gate_deadline_and_continues_the_run() {
    let dir = project(true, "");
    std::fs::write(
        dir.path().join("workflows/timed.yaml"),
        "name: timed\nsteps:\n  - { name: a, kind: llm, prompt: hi, output: a }\n  - { name: ok, kind: approval, show: a, deadline: 300ms, on_timeout: approve, output: ok }\noutput: ok\n",
    )
    .unwrap();
    let s = Server::start(dir.path(), &[], &[]);
    let run = s.start_run("timed", json!({})).await;
    // Nobody answers or looks (the list applies no deadline): the server's
    // timer decides, and the server continues the run.
    let started = Instant::now();
    loop {
        let page = s.get("/v1/runs?status=completed", VIEWER).await;
        if page.json["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == run.as_str())
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{}", s.log());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let doc = s.get(&format!("/v1/runs/{run}"), VIEWER).await.json;
    assert_eq!(doc["gates"][0]["decision"]["by"], "deadline", "{doc}");
    assert_eq!(doc["run"]["output"]["timed_out"], true, "{doc}");
    assert_eq!(doc["run"]["output"]["status"], "approved", "{doc}");
}

/// One Server-Sent Event: its name, id and data.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    id: Option<String>,
    data: Value,
}

/// Reads events from a stream until `stop` holds on the last one (or the
/// stream ends, which `ended` reports).
struct SseReader {
    resp: reqwest::Response,
    buf: String,
    ended: bool,
}

impl SseReader {
    async fn open(s: &Server, path: &str, last_id: Option<&str>) -> Self {
        let mut req = s
            .http
            .get(format!("{}{path}", s.base))
            .bearer_auth(VIEWER)
            .timeout(Duration::from_secs(120));
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Self {
            resp,
            buf: String::new(),
            ended: false,
        }
    }

    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(pos) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..pos + 2).collect();
                let mut e = Sse {
                    event: "message".into(),
                    id: None,
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        e.event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        e.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                e.data = serde_json::from_str(&data).unwrap();
                return Some(e);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.resp.chunk())
                .await
                .expect("an event within 30 s")
                .unwrap();
            match chunk {
                Some(c) => self.buf.push_str(&String::from_utf8_lossy(&c)),
                None => {
                    self.ended = true;
                    return None;
                }
            }
        }
    }

    async fn until(&mut self, stop: impl Fn(&Sse) -> bool) -> Vec<Sse> {
        let mut seen = Vec::new();
        while let Some(e) = self.next().await {
            let done = stop(&e);
            seen.push(e);
            if done {
                return seen;
            }
        }
        panic!("the stream ended before the awaited event: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_events_stream_live_and_a_reconnect_with_last_event_id_misses_nothing() {
    let dir = project(true, "");
    let s = Server::start(dir.path(), &[], &[]);
    let run = s.start_run("signoff", json!({ "text": "live" })).await;
    let mut live = SseReader::open(&s, &format!("/v1/runs/{run}/events"), None).await;
    let first = live
        .until(|e| e.event == "status" && e.data["status"] == "waiting")
        .await;
    assert_eq!(first[0].event, "status", "{first:?}");
    let d = s
        .post(
            &format!("/v1/runs/{run}/decisions"),
            APPROVER,
            json!({ "action": "approve" }),
        )
        .await;
    assert_eq!(d.status, 200, "{}", d.text);
    let rest = live.until(|e| e.event == "end").await;
    assert_eq!(rest.last().unwrap().data["status"], "completed");
    assert!(
        rest.iter()
            .any(|e| e.event == "entry" && e.data["kind"] == "decision"),
        "{rest:?}"
    );
    assert!(live.next().await.is_none() && live.ended);
    let all_ids: Vec<i64> = first
        .iter()
        .chain(&rest)
        .filter_map(|e| e.id.as_deref().map(|i| i.parse().unwrap()))
        .collect();
    assert!(all_ids.len() >= 2, "{all_ids:?}");
    assert_eq!(all_ids, (1..=all_ids.len() as i64).collect::<Vec<_>>());
    // Reconnecting after entry 1: every later entry, none before.
    let mut again = SseReader::open(&s, &format!("/v1/runs/{run}/events"), Some("1")).await;
    let replay = again.until(|e| e.event == "end").await;
    let replay_ids: Vec<i64> = replay
        .iter()
        .filter_map(|e| e.id.as_deref().map(|i| i.parse().unwrap()))
        .collect();
    assert_eq!(replay_ids, all_ids[1..].to_vec());
    let bad = s
        .http
        .get(format!("{}/v1/runs/{run}/events", s.base))
        .bearer_auth(VIEWER)
        .header("last-event-id", "soon")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_stream_shows_gates_opening_and_closing() {
    let dir = project(true, "");
    let s = Server::start(dir.path(), &[], &[]);
    let none = s.call("GET", "/v1/gates/events", None, None).await;
    assert_eq!(none.status, 401);
    let mut inbox = SseReader::open(&s, "/v1/gates/events", None).await;
    let snap = inbox.next().await.unwrap();
    assert_eq!(snap.event, "snapshot");
    assert_eq!(snap.data["gates"], json!([]));
    let run = s.start_run("signoff", json!({ "text": "inbox" })).await;
    let opened = inbox.until(|e| e.event == "opened").await;
    let gate = &opened.last().unwrap().data;
    assert_eq!(gate["run_id"], run.as_str());
    assert_eq!(gate["kind"], "approval");
    let d = s
        .post(
            &format!("/v1/runs/{run}/decisions"),
            APPROVER,
            json!({ "action": "reject", "reason": "no" }),
        )
        .await;
    assert_eq!(d.status, 200, "{}", d.text);
    let closed = inbox.until(|e| e.event == "closed").await;
    assert_eq!(
        closed.last().unwrap().data,
        json!({ "run_id": run, "key": gate["key"] })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_sessions_are_httponly_strict_cookies_and_every_change_needs_the_csrf_token() {
    let dir = project(true, "");
    let s = Server::start(dir.path(), &[], &[]);
    let gated = s.start_run("signoff", json!({ "text": "csrf" })).await;
    s.until_status(&gated, "waiting").await;

    // A wrong token signs nobody in; a right one sets a strict cookie.
    let bad = s
        .call_with("POST", "/v1/session", &[], Some(json!({ "token": "nope" })))
        .await;
    assert_eq!(bad.status, 401, "{}", bad.text);
    assert!(bad.headers.get("set-cookie").is_none());
    let ok = s
        .call_with(
            "POST",
            "/v1/session",
            &[],
            Some(json!({ "token": APPROVER })),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let set = ok.headers["set-cookie"].to_str().unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains(APPROVER) && !ok.text.contains(APPROVER));
    assert_eq!(ok.json["name"], "alice");
    assert_eq!(ok.json["role"], "approver");
    // Signing in from a page of another origin is refused.
    let foreign = s
        .call_with(
            "POST",
            "/v1/session",
            &[("origin", "http://evil.example")],
            Some(json!({ "token": APPROVER })),
        )
        .await;
    assert_eq!(foreign.status, 403, "{}", foreign.text);

    let (cookie, csrf) = s.session(APPROVER).await;
    // Reads need only the cookie, and tell the CSRF token again.
    let me = s
        .call_with("GET", "/v1/session", &[("cookie", &cookie)], None)
        .await;
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(me.json["csrf"], csrf.as_str());
    let path = format!("/v1/runs/{gated}/decisions");
    let approve = json!({ "action": "approve", "comments": "via cookie" });
    // A change without the CSRF token, or with another one, is refused.
    for headers in [
        vec![("cookie", cookie.as_str())],
        vec![("cookie", cookie.as_str()), ("x-csrf-token", "0000")],
        vec![("cookie", cookie.as_str()), ("x-csrf-token", "")],
    ] {
        let a = s
            .call_with("POST", &path, &headers, Some(approve.clone()))
            .await;
        assert_eq!(a.status, 403, "{headers:?}: {}", a.text);
        assert_eq!(a.json["error"]["code"], "csrf", "{}", a.text);
    }
    // The right token from another origin is refused too.
    let a = s
        .call_with(
            "POST",
            &path,
            &[
                ("cookie", &cookie),
                ("x-csrf-token", &csrf),
                ("origin", "http://evil.example"),
            ],
            Some(approve.clone()),
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.text);
    assert!(
        s.get(&format!("/v1/runs/{gated}"), VIEWER).await.json["gates"][0]["decision"].is_null()
    );
    // From the page's own origin, with its token, the change is made.
    let origin = s.base.clone();
    let a = s
        .call_with(
            "POST",
            &path,
            &[
                ("cookie", &cookie),
                ("x-csrf-token", &csrf),
                ("origin", &origin),
            ],
            Some(approve.clone()),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json["by"], "alice");

    // Signing out ends the session: the cookie is cleared and refused.
    let out = s
        .call_with("DELETE", "/v1/session", &[("cookie", &cookie)], None)
        .await;
    assert_eq!(out.status, 403, "signing out is a change: {}", out.text);
    let out = s
        .call_with(
            "DELETE",
            "/v1/session",
            &[("cookie", &cookie), ("x-csrf-token", &csrf)],
            None,
        )
        .await;
    assert_eq!(out.status, 204, "{}", out.text);
    assert!(
        out.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = s
        .call_with("GET", "/v1/runs", &[("cookie", &cookie)], None)
        .await;
    assert_eq!(after.status, 401, "{}", after.text);

    // The page: no inline script, a CSP that allows none, no framing.
    let page = s.call("GET", "/", None, None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let scripts: Vec<&str> = page.text.split("<script").skip(1).collect();
    assert!(!scripts.is_empty());
    for tag in scripts {
        assert!(tag.trim_start().starts_with("src="), "inline script: {tag}");
        assert!(tag.contains("></script>"), "{tag}");
    }
    let js = s.call("GET", "/assets/app.js", None, None).await;
    assert!(
        js.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(
        !js.text.contains("innerHTML"),
        "the page writes run text as text only"
    );
    assert_eq!(
        s.call("GET", "/assets/../spes.toml", None, None)
            .await
            .status,
        404
    );
    assert_eq!(
        s.call("GET", "/assets/nope.js", None, None).await.status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_and_mid_decisions_then_restart_loses_no_run_and_no_decision() {
    let fake = spes_fake_llm::FakeServer::start().await.unwrap();
    fake.set_latency(Duration::from_millis(150));
    let extra = fake_provider("slow", &fake.openai_base_url(), false);
    let dir = project(true, &extra);
    let mut slow = String::from("name: slow\nsteps:\n");
    for i in 1..=8 {
        slow.push_str(&format!(
            "  - {{ name: s{i}, kind: llm, provider: slow, prompt: \"Slow step {i}.\", output: s{i} }}\n"
        ));
    }
    std::fs::write(dir.path().join("workflows/slow.yaml"), slow).unwrap();
    let s = Server::start(dir.path(), &[], &[]);
    let mut gated = Vec::new();
    for i in 0..16 {
        gated.push(
            s.start_run("signoff", json!({ "text": format!("doc {i}") }))
                .await,
        );
    }
    for r in &gated {
        s.until_status(r, "waiting").await;
    }
    let running = s.start_run("slow", json!({})).await;
    let started = Instant::now();
    while fake.request_count() < 3 {
        assert!(started.elapsed() < Duration::from_secs(30), "{}", s.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Decisions race the kill: some answered, some cut off.
    let http = reqwest::Client::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for r in &gated {
        let (http, tx) = (http.clone(), tx.clone());
        let url = format!("{}/v1/runs/{r}/decisions", s.base);
        let run = r.clone();
        tokio::spawn(async move {
            let res = http
                .post(url)
                .bearer_auth(APPROVER)
                .json(&json!({ "action": "approve", "comments": "raced" }))
                .send()
                .await;
            let status = match res {
                Ok(resp) => Some(resp.status().as_u16()),
                Err(_) => None,
            };
            let _ = tx.send((run, status));
        });
    }
    drop(tx);
    // Killed once the first decision is answered.
    let mut answers = vec![rx.recv().await.unwrap()];
    let log = s.kill();
    while let Some(a) = rx.recv().await {
        answers.push(a);
    }
    assert_eq!(answers.len(), gated.len());

    let s = Server::start(dir.path(), &[], &[]);
    // No run lost.
    let page = s.get("/v1/runs?limit=100", VIEWER).await;
    assert_eq!(
        page.json["runs"].as_array().unwrap().len(),
        gated.len() + 1,
        "{log}"
    );
    // Each decision is whole or absent: the gate decided exactly when the
    // journal holds its decision; every 200 among them.
    let mut recorded = 0;
    for (run, status) in &answers {
        let doc = s.get(&format!("/v1/runs/{run}"), VIEWER).await.json;
        let gate = &doc["gates"][0];
        let journaled = doc["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "decision" && e["key"] == gate["key"])
            .count();
        let decided = !gate["decision"].is_null();
        assert_eq!(
            journaled,
            usize::from(decided),
            "half-written decision: {doc}"
        );
        assert_eq!(decided, !gate["decided_at"].is_null(), "{doc}");
        if *status == Some(200) {
            assert!(decided, "an answered decision was lost: {doc}");
        }
        if decided {
            assert_eq!(gate["decision"]["by"], "alice");
            recorded += 1;
        } else {
            assert_eq!(doc["run"]["status"], "waiting", "{doc}");
            let d = s
                .post(
                    &format!("/v1/runs/{run}/decisions"),
                    APPROVER,
                    json!({ "action": "approve", "comments": "after restart" }),
                )
                .await;
            assert_eq!(d.status, 200, "{}", d.text);
        }
    }
    assert!(recorded >= 1);
    eprintln!(
        "decisions: {} answered 200, {} cut off, {recorded} recorded; restart: {}",
        answers.iter().filter(|a| a.1 == Some(200)).count(),
        answers.iter().filter(|a| a.1.is_none()).count(),
        s.log()
            .lines()
            .find(|l| l.contains("continuing"))
            .unwrap_or("nothing to continue")
    );
    // Every gated run completes: the restarted server continues the ones
    // decided before the kill by itself.
    for r in &gated {
        s.until_status(r, "completed").await;
    }

    // The run cut mid-chain shows interrupted and resumes without asking
    // the model again for any step it had committed.
    let before = s.get(&format!("/v1/runs/{running}"), VIEWER).await.json;
    assert_eq!(before["run"]["status"], "interrupted", "{before}");
    let committed: Vec<String> = before["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !committed.is_empty() && committed.len() < 8,
        "{committed:?}"
    );
    let r = s
        .post(&format!("/v1/runs/{running}/resume"), OPERATOR, json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let done = s.until_status(&running, "completed").await;
    assert_eq!(done["entries"].as_array().unwrap().len(), 8);
    let asked = |i: usize| {
        fake.requests()
            .iter()
            .filter(|q| q.raw_body.contains(&format!("Slow step {i}.")))
            .count()
    };
    for key in &committed {
        let i: usize = key.trim_start_matches('s').parse().unwrap();
        assert_eq!(asked(i), 1, "step {key} was asked again after the restart");
    }
    let (code, log) = s.stop();
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_executing_here_streams_its_steps_and_answer_tokens_as_they_come() {
    let fake = spes_fake_llm::FakeServer::start().await.unwrap();
    fake.set_default(
        spes_fake_llm::FakeResponse::text("The quick brown fox jumps.")
            .with_chunk_chars(4)
            .with_chunk_delay(Duration::from_millis(5)),
    );
    let extra = fake_provider("streamy", &fake.openai_base_url(), true);
    let dir = project(true, &extra);
    std::fs::write(
        dir.path().join("workflows/streamy.yaml"),
        "name: streamy\ninputs:\n  text: { type: string, default: go }\nsteps:\n  - { name: go, kind: approval, show: text, output: go }\n  - { name: tell, kind: llm, provider: streamy, prompt: \"Tell me.\", output: told }\n",
    )
    .unwrap();
    let s = Server::start(dir.path(), &[], &[]);
    let run = s.start_run("streamy", json!({})).await;
    let mut live = SseReader::open(&s, &format!("/v1/runs/{run}/events"), None).await;
    live.until(|e| e.event == "status" && e.data["status"] == "waiting")
        .await;
    let d = s
        .post(
            &format!("/v1/runs/{run}/decisions"),
            APPROVER,
            json!({ "action": "approve" }),
        )
        .await;
    assert_eq!(d.status, 200, "{}", d.text);
    let rest = live.until(|e| e.event == "end").await;
    let tokens: Vec<&Value> = rest
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| &e.data)
        .collect();
    assert!(
        tokens.len() >= 3,
        "answer text came in one piece or none: {rest:?}"
    );
    assert!(
        tokens
            .iter()
            .all(|t| t["key"] == "tell" && t["event"] == "delta"),
        "{tokens:?}"
    );
    let text: String = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(text, "The quick brown fox jumps.");
    let steps: Vec<&Value> = rest
        .iter()
        .filter(|e| e.event == "step")
        .map(|e| &e.data)
        .collect();
    assert!(
        steps
            .iter()
            .any(|e| e["event"] == "step_started" && e["key"] == "tell")
            && steps
                .iter()
                .any(|e| e["event"] == "step_finished" && e["key"] == "tell"),
        "{steps:?}"
    );
    // Tokens and step events carry no id: they are not stored, and a
    // reconnect replays only entries.
    assert!(
        rest.iter()
            .filter(|e| e.event != "entry")
            .all(|e| e.id.is_none())
    );
    let doc = s.until_status(&run, "completed").await;
    assert_eq!(doc["run"]["output"], "The quick brown fox jumps.");
    // The list sums each run's model calls from its journal.
    let usage = &doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "model")
        .unwrap()["payload"]["response"]["usage"];
    let page = s.get("/v1/runs", VIEWER).await.json;
    let listed = &page["usage"][run.as_str()];
    assert_eq!(listed["model_calls"], 1, "{page}");
    assert_eq!(listed["input_tokens"], usage["input_tokens"], "{page}");
    assert_eq!(listed["output_tokens"], usage["output_tokens"], "{page}");
    assert!(listed["output_tokens"].as_u64().unwrap() > 0, "{page}");
}

/// `approve_tools` over the API: the agent's tool call is an approval gate
/// in the inbox showing the tool and its arguments; a rejection posted by
/// an approver goes back to the model as the call's result, the tool never
/// runs, and the run completes with the model's next answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_rejected_over_the_api_never_runs() {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let h = h.clone();
        async move {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            axum::Json(json!({ "charged": true }))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = project(true, "");
    std::fs::write(
        dir.path().join("answers.yaml"),
        "- { step: \"pay/turn[1]\", tool_calls: [{ name: charge, arguments: { amount: 500 } }] }\n- { step: \"pay/turn[2]\", reply: Not charged. }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("workflows/pay.yaml"),
        format!(
            "name: pay\nsteps:\n  - name: pay\n    kind: agent\n    prompt: \"Charge it.\"\n    tools:\n      - http: {{ name: charge, description: Charges the card, method: POST, url: \"{api}/charge\", body: {{ amount: \"{{{{ args.amount }}}}\" }} }}\n    approve_tools: [charge]\n    output: out\noutput: out\n"
        ),
    )
    .unwrap();
    let s = Server::start(dir.path(), &[], &[]);
    let run = s.start_run("pay", json!({})).await;
    s.until_status(&run, "waiting").await;
    let gate = until_gate(&s, &run, None).await;
    assert_eq!(gate["key"], "pay/turn[1]/call[charge#1]#approval", "{gate}");
    assert_eq!(gate["request"]["tool"], "charge");
    assert_eq!(gate["request"]["arguments"], json!({ "amount": 500 }));
    let decided = s
        .post(
            &format!("/v1/runs/{run}/decisions"),
            APPROVER,
            json!({ "action": "reject", "reason": "too much" }),
        )
        .await;
    assert!(decided.status < 300, "{} {}", decided.status, decided.text);
    let done = s.until_status(&run, "completed").await;
    assert_eq!(done["run"]["output"], json!("Not charged."), "{done}");
    let refused = done["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "tool")
        .unwrap();
    assert_eq!(refused["payload"]["is_error"], true);
    assert!(
        refused["payload"]["content"]
            .as_str()
            .unwrap()
            .contains("refused this call: too much"),
        "{refused}"
    );
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the rejected call never ran"
    );
}

/// The samples of a `/metrics` answer, parsed with a Prometheus text
/// parser: (metric, labels, value).
fn scrape(text: &str) -> Vec<(String, std::collections::HashMap<String, String>, f64)> {
    let s = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    s.samples
        .into_iter()
        .filter_map(|x| {
            let (prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v)) = x.value
            else {
                return None;
            };
            Some((x.metric, (*x.labels).clone(), v))
        })
        .collect()
}

/// The value of `metric` with labels including `labels`.
fn metric(
    samples: &[(String, std::collections::HashMap<String, String>, f64)],
    metric: &str,
    labels: &[(&str, &str)],
) -> f64 {
    samples
        .iter()
        .find(|(m, l, _)| {
            m == metric
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).is_some_and(|h| h == v))
        })
        .map(|(_, _, v)| *v)
        .unwrap_or_else(|| panic!("no {metric} {labels:?}"))
}

/// `GET /metrics` needs no token (like /healthz) and shows a finished run
/// of three llm steps: three model calls, the fake server's tokens, three
/// llm steps, one completed run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scrapeable_without_a_token_and_count_a_finished_run() {
    let fake = spes_fake_llm::FakeServer::start().await.unwrap();
    fake.set_default(spes_fake_llm::FakeResponse::echo().with_usage(11, 4));
    let extra = fake_provider("fake", &fake.openai_base_url(), false);
    let dir = project(true, &extra);
    std::fs::write(
        dir.path().join("workflows/three.yaml"),
        "name: three\nsteps:\n  - { name: a, kind: llm, provider: fake, prompt: one, output: a }\n  - { name: b, kind: llm, provider: fake, prompt: \"two {{ a }}\", output: b }\n  - { name: c, kind: llm, provider: fake, prompt: \"three {{ b }}\", output: c }\n",
    )
    .unwrap();
    let s = Server::start(dir.path(), &[], &[]);
    let run = s.start_run("three", json!({})).await;
    s.until_status(&run, "completed").await;
    assert_eq!(fake.request_count(), 3);
    let a = s.call("GET", "/metrics", None, None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        a.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let m = scrape(&a.text);
    let call = [("provider", "fake"), ("model", "m1"), ("outcome", "ok")];
    assert_eq!(
        metric(&m, "spes_model_call_duration_seconds_count", &call),
        3.0
    );
    let pm = [("provider", "fake"), ("model", "m1")];
    let tokens = |t| {
        let mut l = pm.to_vec();
        l.push(("type", t));
        metric(&m, "spes_tokens_total", &l)
    };
    assert_eq!((tokens("input"), tokens("output")), (33.0, 12.0));
    assert_eq!(metric(&m, "spes_cost_usd_total", &pm), 0.0);
    assert_eq!(
        metric(
            &m,
            "spes_step_duration_seconds_count",
            &[("kind", "llm"), ("outcome", "ok")]
        ),
        3.0
    );
    assert_eq!(metric(&m, "spes_runs", &[("status", "completed")]), 1.0);
    assert_eq!(metric(&m, "spes_runs", &[("status", "failed")]), 0.0);
    // Other routes still need the token.
    assert_eq!(s.call("GET", "/v1/runs", None, None).await.status, 401);
    let (code, log) = s.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// `[cache] enabled` holds for runs started through the API as for `spes
/// run`: the server's store keeps the answers, and a second identical run
/// (temperature 0) is served from it without a request to the provider;
/// `spes cache stats` then counts the answer and its hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_a_repeated_run_from_the_response_cache() {
    let fake = spes_fake_llm::FakeServer::start().await.unwrap();
    fake.set_default(spes_fake_llm::FakeResponse::text("an answer worth keeping"));
    let extra = format!(
        "{}\n[cache]\nenabled = true\n",
        fake_provider("remote", &fake.openai_base_url(), false)
    );
    let dir = project(true, &extra);
    std::fs::write(
        dir.path().join("workflows/cached.yaml"),
        "name: cached\nsteps:\n  - { name: ask, kind: llm, provider: remote, prompt: \"the same question\", temperature: 0, max_tokens: 16, output: a }\noutput: a\n",
    )
    .unwrap();
    let s = Server::start(dir.path(), &[], &[]);
    let first = s.start_run("cached", json!({})).await;
    let one = s.until_status(&first, "completed").await;
    assert_eq!(fake.request_count(), 1, "{}", s.log());
    let second = s.start_run("cached", json!({})).await;
    let two = s.until_status(&second, "completed").await;
    assert_eq!(
        fake.request_count(),
        1,
        "the second run made a request:\n{}",
        s.log()
    );
    assert_eq!(one["run"]["output"], "an answer worth keeping", "{one}");
    assert_eq!(two["run"]["output"], one["run"]["output"], "{two}");
    let (code, log) = s.stop();
    assert_eq!(code, Some(0), "{log}");
    let stats = Command::new(env!("CARGO_BIN_EXE_spes"))
        .current_dir(dir.path())
        .args(["cache", "stats", "--json"])
        .env_remove("SPES_CONFIG")
        .env_remove("SPES_STORE")
        .output()
        .unwrap();
    assert!(stats.status.success(), "{stats:?}");
    let doc: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(
        (doc["entries"].as_u64(), doc["hits"].as_u64()),
        (Some(1), Some(1)),
        "{doc}"
    );
}
