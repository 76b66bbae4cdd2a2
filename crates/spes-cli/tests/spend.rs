//! Issue 16, from the outside: what model calls cost (`prices`, `runs
//! show`, `runs cost`), budgets that stop a run before the call that would
//! exceed them (also across a SIGKILL and resume, and with `on_exhausted:
//! pause`), and the response cache (`--cache`, `spes cache`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "crash/harness.rs"]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use harness::{Project, committed_model_keys, marker, sigkill, wait};
use spes_fake_llm::{FakeResponse, FakeServer};
use spes_store::{RunStatus, RunStore};

/// A chain of `steps` llm steps, each prompt carrying the previous answer
/// (so that a changed step changes every later prompt); `extra` goes into
/// every step (`temperature: 0`, ...), `top` at the top of the file.
fn chain(steps: usize, extra: &str, top: &str) -> String {
    let mut yaml = format!(
        "name: spend_chain\n{top}inputs:\n  topic: {{ type: string, default: rust }}\nsteps:\n"
    );
    for i in 1..=steps {
        let prev = if i == 1 {
            "topic".to_owned()
        } else {
            format!("s{}", i - 1)
        };
        yaml.push_str(&format!(
            "  - {{ name: s{i}, kind: llm, prompt: \"[s{i}] go {{{{ {prev} }}}}\", max_tokens: 64{extra}, output: s{i} }}\n"
        ));
    }
    yaml
}

/// spes.toml with the fake server's model priced at $1,000 per million
/// tokens in and out: 100 tokens in + 10 out = $0.11 a call.
fn priced(p: &Project, base_url: &str, more: &str) {
    p.write(
        "spes.toml",
        &format!(
            "[defaults]\nprovider = \"remote\"\n\n[providers.remote]\nkind = \"openai\"\nbase_url = \"{base_url}\"\nmodel = \"m\"\nstep_header = true\nprices.m = {{ input = 1000.0, output = 1000.0 }}\n{more}"
        ),
    );
}

async fn fake() -> FakeServer {
    let server = FakeServer::start().await.unwrap();
    // Short answers (the prompts stay short) with fixed usage.
    server.set_default(FakeResponse::text("ok").with_usage(100, 10));
    server
}

async fn only_run(p: &Project) -> spes_store::Run {
    let store = p.store().await;
    let run = store.list_runs(None, 1).await.unwrap().remove(0);
    store.close().await;
    run
}

/// A budget in dollars stops the run before the call that would exceed it
/// (worst case: estimated prompt + max_tokens, priced): exit 7, class
/// `budget_exceeded`, the fake server saw only the calls within budget.
/// `spes resume --budget cost=5` raises it; the run finishes without
/// repeating a call; `runs show` and `runs cost` show what it cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_budget_stops_the_run_before_the_call_that_would_exceed_it() {
    let server = fake().await;
    let p = Project::new(
        &chain(10, "", "budget: { cost: 0.5 }\n"),
        &server.openai_base_url(),
    );
    priced(&p, &server.openai_base_url(), "");
    let first = wait(p.spawn(&["run", "wf.yaml", "--json"])).await;
    assert_eq!(first.code(), Some(7), "{}", first.stderr);
    // After 4 calls ($0.44 spent) the 5th's worst case (~$0.07) would pass $0.50.
    assert_eq!(server.request_count(), 4, "{}", first.stderr);
    let doc: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc["error"]["class"], "budget_exceeded", "{doc}");
    assert_eq!(doc["error"]["step"], "s5", "{doc}");
    assert!(
        doc["error"]["message"].as_str().unwrap().contains("cost"),
        "{doc}"
    );
    assert!(
        doc["error"]["hint"].as_str().unwrap().contains("--budget"),
        "{doc}"
    );
    let run = only_run(&p).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(
        run.settings.budget.and_then(|b| b.cost),
        Some(0.5),
        "the budget is recorded with the run"
    );

    let id = run.id.to_string();
    let resumed = wait(p.spawn(&["resume", &id, "--budget", "cost=5"])).await;
    assert_eq!(resumed.code(), Some(0), "{}", resumed.stderr);
    assert_eq!(server.request_count(), 10, "no call is made twice");
    assert!(resumed.stderr.contains("$0.6600"), "{}", resumed.stderr);
    let run = only_run(&p).await;
    assert_eq!(run.settings.budget.and_then(|b| b.cost), Some(5.0));

    let shown = wait(p.spawn(&["runs", "show", &id])).await;
    let text = shown.stdout_text();
    assert!(text.contains("· $0.1100"), "{text}");
    assert!(
        text.contains("10 model calls, 1000→100 tokens, $1.10"),
        "{text}"
    );

    let cost = wait(p.spawn(&["runs", "cost", "--by", "model", "--json"])).await;
    assert_eq!(cost.code(), Some(0), "{}", cost.stderr);
    let doc: serde_json::Value = serde_json::from_slice(&cost.stdout).unwrap();
    assert_eq!(doc["rows"][0]["group"], "remote/m", "{doc}");
    assert_eq!(doc["rows"][0]["calls"], 10, "{doc}");
    assert!(
        (doc["total"]["cost_usd"].as_f64().unwrap() - 1.1).abs() < 1e-9,
        "{doc}"
    );
    assert_eq!(doc["total"]["unpriced_calls"], 0, "{doc}");
    let by_wf = wait(p.spawn(&["runs", "cost", "--since", "1h"])).await;
    assert!(
        by_wf.stdout_text().contains("spend_chain") && by_wf.stdout_text().contains("$1.10"),
        "{}",
        by_wf.stdout_text()
    );
}

/// The items of a map spend from the run's budget too (also an item step
/// that does not read the mapped list): with `calls: 3` and one item at a
/// time, the fourth item's call is not made; exit 7, class
/// `budget_exceeded`, the error naming that item's step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_holds_for_the_items_of_a_map() {
    let server = fake().await;
    let p = Project::new(
        "name: spread
budget: { calls: 3 }
inputs:
  topics: { type: list, default: [a, b, c, d, e] }
steps:
  - name: gather
    kind: map
    over: topics
    concurrency: 1
    step: { name: answer, kind: llm, prompt: \"about {{ item }}\", max_tokens: 8 }
    output: answers
output: answers
",
        &server.openai_base_url(),
    );
    let out = wait(p.spawn(&["run", "wf.yaml", "--json"])).await;
    assert_eq!(out.code(), Some(7), "{}", out.stderr);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["class"], "budget_exceeded", "{doc}");
    assert_eq!(doc["error"]["step"], "gather/map[3]/answer", "{doc}");
    assert_eq!(server.request_count(), 3);
}

/// A `calls` budget holds across a SIGKILL: the killed life committed 2
/// calls; the resumed run makes 3 more (5 in all) and stops with exit 7.
/// `on_exhausted: pause` (from `--budget`) pauses instead (exit 3), and a
/// raised budget finishes the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_budget_holds_across_a_kill_and_resume() {
    let server = fake().await;
    let p = Project::new(
        &chain(8, "", "budget: { calls: 5 }\n"),
        &server.openai_base_url(),
    );
    let pid = Arc::new(AtomicU32::new(0));
    {
        let pid = pid.clone();
        server.on_request(move |n| {
            if n == 3 {
                sigkill(harness::spawned_pid(&pid));
            }
        });
    }
    let child = p.spawn(&["run", "wf.yaml"]);
    pid.store(child.id(), Ordering::SeqCst);
    assert_eq!(wait(child).await.signal(), Some(9));
    server.on_request(|_| {});
    let run = only_run(&p).await;
    let store = p.store().await;
    assert_eq!(committed_model_keys(&store, &run.id).await.len(), 2);
    store.close().await;

    let id = run.id.to_string();
    let resumed = wait(p.spawn(&["resume", &id])).await;
    assert_eq!(resumed.code(), Some(7), "{}", resumed.stderr);
    assert!(
        resumed.stderr.contains("budget_exceeded"),
        "{}",
        resumed.stderr
    );
    let store = p.store().await;
    assert_eq!(
        committed_model_keys(&store, &run.id).await.len(),
        5,
        "five calls in all, across both lives"
    );
    store.close().await;
    // The killed life's third request was sent but never committed.
    assert_eq!(server.request_count(), 3 + 3);

    // Pause instead of failing: the run waits for a human to raise it.
    let paused = wait(p.spawn(&["resume", &id, "--budget", "calls=6,on_exhausted=pause"])).await;
    assert_eq!(paused.code(), Some(3), "{}", paused.stderr);
    assert_eq!(only_run(&p).await.status, RunStatus::Paused);
    assert_eq!(server.request_count(), 7);
    let done = wait(p.spawn(&["resume", &id, "--budget", "calls=20"])).await;
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let store = p.store().await;
    assert_eq!(committed_model_keys(&store, &run.id).await.len(), 8);
    store.close().await;
    assert_eq!(server.request_count(), 9, "steps 7 and 8, once each");
}

/// The response cache: a second run of an unchanged 10-step chain at
/// temperature 0 makes no request; changing step 7 makes exactly 4 (steps
/// 7 to 10, whose prompts carry step 7's answer). Cached calls are
/// journaled as `cached`, cost nothing, and `spes cache stats|clear` see
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_of_an_unchanged_chain_is_served_from_the_cache() {
    let server = FakeServer::start().await.unwrap();
    // Echo: each answer carries its prompt, so a changed prompt changes
    // every later one.
    server.set_default(FakeResponse::echo().with_usage(100, 10));
    let wf = chain(10, ", temperature: 0", "");
    let p = Project::new(&wf, &server.openai_base_url());
    priced(&p, &server.openai_base_url(), "");
    let first = wait(p.spawn(&["run", "wf.yaml", "--cache"])).await;
    assert_eq!(first.code(), Some(0), "{}", first.stderr);
    assert_eq!(server.request_count(), 10);

    let second = wait(p.spawn(&["run", "wf.yaml", "--cache", "--json"])).await;
    assert_eq!(second.code(), Some(0), "{}", second.stderr);
    assert_eq!(server.request_count(), 10, "no request: {}", second.stderr);
    assert!(
        second.stderr.contains("served from the response cache"),
        "the progress line says so: {}",
        second.stderr
    );
    let doc: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(doc["usage"]["model_calls"], 0, "{doc}");
    assert_eq!(doc["usage"]["cached"], 10, "{doc}");
    assert!(doc["usage"].get("cost_usd").is_none(), "{doc}");

    // Step 7 changed: steps 1 to 6 come from the cache, 7 to 10 are asked.
    let changed = wf.replace("[s7] go", "[s7] now");
    p.write("wf.yaml", &changed);
    let third = wait(p.spawn(&["run", "wf.yaml", "--cache"])).await;
    assert_eq!(third.code(), Some(0), "{}", third.stderr);
    let asked: Vec<String> = server.requests()[10..]
        .iter()
        .map(|r| marker(&r.body).unwrap())
        .collect();
    assert_eq!(asked, ["s7", "s8", "s9", "s10"]);

    // The journal marks served answers `cached`; they count no tokens.
    let store = p.store().await;
    let runs = store.list_runs(None, 3).await.unwrap();
    let second_run = &runs[1];
    let entries = store.entries(&second_run.id).await.unwrap();
    assert!(
        entries
            .iter()
            .filter(|e| e.kind == "model")
            .all(|e| e.payload["cached"] == true && e.payload.get("cost_usd").is_none())
    );
    let usage = store.usage(&[second_run.id]).await.unwrap();
    assert_eq!(usage[0].1.model_calls, 0);
    assert_eq!(usage[0].1.cached_calls, 10);
    store.close().await;

    let stats = wait(p.spawn(&["cache", "stats", "--json"])).await;
    let doc: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(doc["entries"], 14, "{doc}");
    assert_eq!(doc["hits"], 16, "{doc}");
    let cleared = wait(p.spawn(&["cache", "clear"])).await;
    assert_eq!(cleared.code(), Some(0), "{}", cleared.stderr);
    assert!(
        cleared.stderr.contains("deleted 14 cached answers"),
        "{}",
        cleared.stderr
    );
    // A temperature the request does not set is not cached: [cache] on,
    // but these steps set none.
    let p2 = Project::new(&chain(2, "", ""), &server.openai_base_url());
    priced(&p2, &server.openai_base_url(), "[cache]\nenabled = true\n");
    let before = server.request_count();
    for _ in 0..2 {
        let r = wait(p2.spawn(&["run", "wf.yaml"])).await;
        assert_eq!(r.code(), Some(0), "{}", r.stderr);
    }
    assert_eq!(server.request_count(), before + 4);
}

/// Logs (`RUST_LOG`, `--log-format json`): one event per retry, per
/// fallback and per breaker transition, as JSON lines on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_fallbacks_and_breaker_transitions_are_logged_as_json() {
    let server = FakeServer::start().await.unwrap();
    // Step a: one 500, then an answer (a retry). Step b: its breaker opens
    // on the first 500 and the fallback (a transform) serves.
    server.push(FakeResponse::server_error());
    server.when_user_contains("[b]", FakeResponse::server_error());
    server.set_default(FakeResponse::text("ok"));
    let wf = "name: logged\nsteps:\n  - { name: a, kind: llm, prompt: \"[a] hi\", retry: { attempts: 2, base: 1ms, max: 2ms }, output: a }\n  - name: b\n    kind: llm\n    prompt: \"[b] hi\"\n    retry: none\n    circuit_breaker: { name: remote-b, failures: 1, cooldown: 60s }\n    fallback: [ { step: { kind: transform, fn: template, input: canned } } ]\n    output: b\n";
    let p = Project::new(wf, &server.openai_base_url());
    let out = harness::spes_command(
        &p.root,
        &["--log-format", "json", "run", "wf.yaml", "--quiet"],
    )
    .env("RUST_LOG", "info")
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let count = |msg: &str| {
        events
            .iter()
            .filter(|e| e["fields"]["message"].as_str() == Some(msg))
            .count()
    };
    assert_eq!(count("retrying"), 1, "{stderr}");
    assert_eq!(count("alternative gave up"), 1, "{stderr}");
    let opened: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["fields"]["message"] == "circuit breaker changed state")
        .collect();
    assert_eq!(opened.len(), 1, "{stderr}");
    assert_eq!(opened[0]["target"], "spes::breaker");
    assert_eq!(opened[0]["fields"]["breaker"], "remote-b");
    assert_eq!(opened[0]["fields"]["from"], "closed");
    assert_eq!(opened[0]["fields"]["to"], "open");
    assert_eq!(opened[0]["level"], "WARN");
}
