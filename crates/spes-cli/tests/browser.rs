//! The dashboard in a real browser: headless Chromium (Debian's `chromium`
//! and `chromium-driver`, which `scripts/test.sh` installs) driven over
//! WebDriver, against a real `spes serve` on loopback with the fake LLM
//! server. Screenshots of each page go to `target/tmp/screenshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "serve/harness.rs"]
mod harness;
use harness::*;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use spes_fake_llm::{FakeResponse, FakeServer};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A ChromeDriver process on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The browser is chromedriver's child, in its process group: a test
        // that failed before closing its session leaves no browser behind.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn driver() -> Driver {
    for bin in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} is missing: the browser tests need Debian's chromium and chromium-driver; \
             `bash scripts/deps.sh chromium chromium-driver` installs them (scripts/test.sh does)"
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .process_group(0)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "chromedriver did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

async fn browser(d: &Driver) -> Client {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"]
        }
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&d.url)
        .await
        .expect("a Chromium session through chromedriver")
}

/// Runs `js` (a function body) in the page.
async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
}

/// Waits until `condition` (a JS expression) is true in the page.
async fn until(c: &Client, what: &str, condition: &str) {
    let started = Instant::now();
    let script = format!("return !!({condition});");
    loop {
        if js(c, &script).await == Value::Bool(true) {
            return;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let body = js(c, "return document.body.innerText;").await;
            panic!("the page never showed {what} ({condition}); it shows:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("cannot click `{css}`: {e}"));
}

async fn type_into(c: &Client, css: &str, text: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"))
        .send_keys(text)
        .await
        .unwrap();
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

async fn sign_in(c: &Client, base: &str, token: &str, who: &str) {
    c.goto(&format!("{base}/#/runs")).await.unwrap();
    until(
        c,
        "the sign-in form",
        "document.querySelector('#signin #token')",
    )
    .await;
    type_into(c, "#token", token).await;
    click(c, "#signin button[type=submit]").await;
    until(
        c,
        &format!("signed in as {who}"),
        &format!("(document.querySelector('#who-name')||{{}}).textContent === {who:?}"),
    )
    .await;
}

async fn sign_out(c: &Client) {
    click(c, "#sign-out").await;
    until(c, "the sign-in form", "document.querySelector('#signin')").await;
}

/// A fetch from the page, with the session cookie; `csrf` adds the
/// session's token. Returns `[status, error code]`.
async fn page_post(c: &Client, path: &str, body: &Value, csrf: bool) -> (u64, String) {
    let script = format!(
        r"const done = arguments[arguments.length - 1];
        (async () => {{
          const who = await (await fetch('/v1/session')).json();
          const headers = {{ 'Content-Type': 'application/json' }};
          if ({csrf}) headers['X-CSRF-Token'] = who.csrf;
          const r = await fetch({path:?}, {{ method: 'POST', headers, body: {body:?} }});
          const j = await r.json().catch(() => ({{}}));
          done([r.status, (j.error || {{}}).code || '']);
        }})();",
        body = body.to_string()
    );
    let v = c.execute_async(&script, vec![]).await.unwrap();
    (v[0].as_u64().unwrap(), v[1].as_str().unwrap().to_owned())
}

const LIVE: &str = "name: live
description: Three model calls, then a human signs off.
inputs:
  topic: { type: string, required: true, description: what to write about }
steps:
  - { name: outline, kind: llm, provider: fake, prompt: \"Outline {{ topic }}\", output: outline }
  - { name: draft, kind: llm, provider: fake, prompt: \"Draft from {{ outline }}\", output: draft }
  - { name: polish, kind: llm, provider: fake, prompt: \"Polish {{ draft }}\", output: polished }
  - { name: review, kind: approval, show: polished, max_revisions: 2, output: review }
output: review
";

const TAGLINE: &str = "name: tagline
steps:
  - name: pick
    kind: choose
    n: 2
    generate: { kind: llm, provider: fake, prompt: \"Write a tagline.\" }
    output: tagline
output: tagline
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_watch_revise_approve_choose_and_what_a_viewer_may_do_in_a_browser() {
    let fake = FakeServer::start().await.unwrap();
    fake.set_latency(Duration::from_millis(200));
    fake.set_default(
        FakeResponse::text("A streamed answer, arriving piece by piece.")
            .with_chunk_chars(3)
            .with_chunk_delay(Duration::from_millis(15)),
    );
    let dir = project(true, &fake_provider("fake", &fake.openai_base_url(), true));
    std::fs::write(dir.path().join("workflows/live.yaml"), LIVE).unwrap();
    std::fs::write(dir.path().join("workflows/tagline.yaml"), TAGLINE).unwrap();
    let s = Server::start(dir.path(), &[], &[]);
    let d = driver();
    let c = browser(&d).await;
    let base = s.base.clone();

    // The page needs a sign-in; a wrong token is refused on the page.
    c.goto(&format!("{base}/")).await.unwrap();
    until(&c, "the sign-in form", "document.querySelector('#signin')").await;
    screenshot(&c, "sign-in").await;
    type_into(&c, "#token", "not-a-token").await;
    click(&c, "#signin button[type=submit]").await;
    until(
        &c,
        "the refusal",
        "document.querySelector('#signin-error').textContent.includes('not valid')",
    )
    .await;

    // The operator starts a run from the workflow's form.
    sign_in(&c, &base, OPERATOR, "otto (operator)").await;
    screenshot(&c, "runs").await;
    c.goto(&format!("{base}/#/workflows")).await.unwrap();
    until(
        &c,
        "the workflows",
        "document.querySelector('#workflows a')",
    )
    .await;
    screenshot(&c, "workflows").await;
    c.goto(&format!("{base}/#/workflows/live")).await.unwrap();
    until(
        &c,
        "the start form",
        "document.querySelector('#start #in-topic')",
    )
    .await;
    until(
        &c,
        "the diagram",
        "document.querySelectorAll('.diagram svg g.node').length >= 6",
    )
    .await;
    screenshot(&c, "workflow").await;
    type_into(&c, "#in-topic", "browsers").await;
    click(&c, "#start button[type=submit]").await;
    until(
        &c,
        "the run page",
        "document.querySelector('#run[data-run]')",
    )
    .await;
    let run = js(&c, "return document.querySelector('#run').dataset.run;")
        .await
        .as_str()
        .unwrap()
        .to_owned();

    // Progress shows live, on the same page (no reload): each model call's
    // row appears as it is journaled.
    js(&c, "window.__same_page = 42; return null;").await;
    let mut counts = Vec::new();
    let mut streamed: Vec<String> = Vec::new();
    let started = Instant::now();
    loop {
        let n = js(
            &c,
            "return document.querySelectorAll('#steps tbody tr').length;",
        )
        .await
        .as_u64()
        .unwrap();
        let now = js(
            &c,
            "const t = document.querySelector('#live-text'); return t ? t.textContent : '';",
        )
        .await;
        let now = now.as_str().unwrap().to_owned();
        if !now.is_empty() && streamed.last() != Some(&now) {
            streamed.push(now);
        }
        if counts.last() != Some(&n) {
            counts.push(n);
        }
        if n >= 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "steps seen: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        counts.len() >= 3,
        "the rows did not appear one by one: {counts:?}"
    );
    // The answer under way showed as it streamed: partial texts, growing.
    assert!(
        streamed
            .iter()
            .any(|t| t.len() < "A streamed answer, arriving piece by piece.".len()),
        "no partial answer was shown: {streamed:?}"
    );
    until(
        &c,
        "the run waiting for a human",
        "document.querySelector('h1 .badge[data-status=waiting]') && document.querySelector('h1 .human')",
    )
    .await;
    until(
        &c,
        "the diagram with finished and waiting steps",
        "document.querySelector('.diagram g.node[data-step=polish][data-status=done]') && document.querySelector('.diagram g.node[data-step=review][data-status=waiting]')",
    )
    .await;
    assert_eq!(js(&c, "return window.__same_page;").await, json!(42));
    screenshot(&c, "run-waiting").await;

    // The approver finds the gate in the inbox, asks for a revision, then
    // approves the revision.
    sign_out(&c).await;
    sign_in(&c, &base, APPROVER, "alice (approver)").await;
    until(
        &c,
        "the inbox count",
        "document.querySelector('#inbox-count').textContent === '1'",
    )
    .await;
    c.goto(&format!("{base}/#/inbox")).await.unwrap();
    let card = format!("article.gate[data-run='{run}']");
    until(
        &c,
        "the gate",
        &format!("document.querySelector(\"{card}\")"),
    )
    .await;
    let shown = js(
        &c,
        &format!("return document.querySelector(\"{card} .review-text\").textContent;"),
    )
    .await;
    assert!(!shown.as_str().unwrap().is_empty());
    screenshot(&c, "inbox").await;
    // Reject and revise need comments: the page says so and sends nothing.
    click(&c, &format!("{card} button[data-action=revise]")).await;
    until(
        &c,
        "the missing-comments note",
        &format!(
            "document.querySelector(\"{card} [role=alert]\").textContent.includes('required')"
        ),
    )
    .await;
    type_into(
        &c,
        &format!("{card} textarea[name=comments]"),
        "Shorter, please.",
    )
    .await;
    type_into(
        &c,
        &format!("{card} textarea[name=suggest]"),
        "Drop the intro.",
    )
    .await;
    click(&c, &format!("{card} button[data-action=revise]")).await;
    let second = format!("article.gate[data-run='{run}'][data-gate$='review1']");
    until(
        &c,
        "the revised gate",
        &format!("document.querySelector(\"{second}\")"),
    )
    .await;
    click(&c, &format!("{second} button[data-action=approve]")).await;
    until(
        &c,
        "an empty inbox",
        &format!("!document.querySelector(\"{card}\")"),
    )
    .await;

    // The run completes; the page names each decision and its reviewer.
    c.goto(&format!("{base}/#/runs/{run}")).await.unwrap();
    until(
        &c,
        "the completed run",
        "document.querySelector('h1 .badge[data-status=completed]')",
    )
    .await;
    let gates = js(&c, "return document.querySelector('#run-gates').innerText;").await;
    let gates = gates.as_str().unwrap();
    assert!(
        gates.contains("revise by alice: Shorter, please.") && gates.contains("approve by alice"),
        "{gates}"
    );
    let doc = s.get(&format!("/v1/runs/{run}"), VIEWER).await.json;
    assert_eq!(doc["run"]["status"], "completed");
    assert_eq!(doc["gates"][0]["decision"]["suggest"], "Drop the intro.");
    // Every prompt and its answer (the three steps, and the revision the
    // gate asked for), re-rendered from the journal.
    let asked = fake.request_count();
    click(&c, "#load-prompts").await;
    until(
        &c,
        "the prompts",
        "document.querySelectorAll('#prompts .prompt').length === 4",
    )
    .await;
    let outline = js(
        &c,
        "const p = document.querySelector('#prompts .prompt[data-key=outline]'); return [p.querySelector('pre').textContent, p.querySelector('pre.answer').textContent];",
    )
    .await;
    assert_eq!(outline[0], "Outline browsers", "{outline}");
    assert_eq!(outline[1], "A streamed answer, arriving piece by piece.");
    assert_eq!(
        fake.request_count(),
        asked,
        "showing prompts called a model"
    );
    screenshot(&c, "run-completed").await;

    // A choose gate, answered from the side-by-side view.
    // One variation is hostile HTML: the page must show it as text.
    fake.push(FakeResponse::text(
        "<img src=x onerror=\"window.__xss=1\"><b>Fast</b> by default.",
    ));
    fake.push(FakeResponse::text("Never lose a step."));
    let pick = s.start_run("tagline", json!({})).await;
    c.goto(&format!("{base}/#/inbox")).await.unwrap();
    let card = format!("article.gate[data-run='{pick}']");
    until(
        &c,
        "two variations",
        &format!("document.querySelectorAll(\"{card} .variation\").length === 2"),
    )
    .await;
    let boxes = c
        .find_all(Locator::Css(&format!("{card} .variation")))
        .await
        .unwrap();
    let (x1, y1, _, _) = boxes[0].rectangle().await.unwrap();
    let (x2, y2, _, _) = boxes[1].rectangle().await.unwrap();
    assert!(
        (y1 - y2).abs() < 1.0 && x2 > x1,
        "not side by side: ({x1},{y1}) ({x2},{y2})"
    );
    let hostile = format!(
        "return [document.querySelectorAll(\"{card} img, {card} b\").length, window.__xss === undefined, document.querySelector(\"{card}\").textContent.includes('<img src=x')];"
    );
    assert_eq!(
        js(&c, &hostile).await,
        json!([0, true, true]),
        "a model's HTML became page markup"
    );
    let second_text = js(
        &c,
        &format!(
            "return document.querySelector(\"{card} .variation[data-n='2'] pre\").textContent;"
        ),
    )
    .await;
    screenshot(&c, "inbox-choose").await;
    click(
        &c,
        &format!("{card} .variation[data-n='2'] button[data-action=choose]"),
    )
    .await;
    let doc = s.until_status(&pick, "completed").await;
    assert_eq!(doc["run"]["output"]["output"], second_text);
    assert_eq!(doc["gates"][0]["decision"]["choice"], 2);
    assert_eq!(doc["gates"][0]["decision"]["by"], "alice");

    // A state-changing request with the cookie but without the CSRF token
    // is refused, whoever makes it.
    let gated = s.start_run("live", json!({ "topic": "viewers" })).await;
    s.until_status(&gated, "waiting").await;
    let path = format!("/v1/runs/{gated}/decisions");
    let approve = json!({ "action": "approve" });
    assert_eq!(
        page_post(&c, &path, &approve, false).await,
        (403, "csrf".to_owned())
    );

    // A viewer sees the gate and no decide button, and its decision is
    // refused by the API (with the cookie and CSRF token, and with its token).
    sign_out(&c).await;
    sign_in(&c, &base, VIEWER, "vera (viewer)").await;
    c.goto(&format!("{base}/#/inbox")).await.unwrap();
    let card = format!("article.gate[data-run='{gated}']");
    until(
        &c,
        "the gate",
        &format!("document.querySelector(\"{card} .no-decide\")"),
    )
    .await;
    assert_eq!(
        js(
            &c,
            &format!("return document.querySelectorAll(\"{card} button\").length;")
        )
        .await,
        json!(0)
    );
    screenshot(&c, "inbox-viewer").await;
    assert_eq!(
        page_post(&c, &path, &approve, true).await,
        (403, "forbidden".to_owned())
    );
    assert_eq!(s.post(&path, VIEWER, approve.clone()).await.status, 403);
    c.goto(&format!("{base}/#/runs/{gated}")).await.unwrap();
    until(
        &c,
        "the read-only run page",
        "document.querySelector('#no-actions')",
    )
    .await;
    assert_eq!(
        js(
            &c,
            "return document.querySelectorAll('[data-action]').length;"
        )
        .await,
        json!(0)
    );
    let doc = s.get(&format!("/v1/runs/{gated}"), VIEWER).await.json;
    assert_eq!(doc["run"]["status"], "waiting");
    assert!(doc["gates"][0]["decision"].is_null());

    // Signed out, the cookie no longer works.
    sign_out(&c).await;
    let (status, _) = page_post(&c, &path, &approve, false).await;
    assert_eq!(status, 401);
    c.close().await.unwrap();
    println!("screenshots: {}", shots().display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_made_on_one_server_appears_live_on_another_sharing_postgres() {
    let schema = spes_store::testing::postgres::TestSchema::new().await;
    let dir = project(true, "");
    let a = Server::start(
        dir.path(),
        &["--store", schema.url(), "--workers", "1"],
        &[],
    );
    let b = Server::start(
        dir.path(),
        &["--store", schema.url(), "--workers", "1"],
        &[],
    );
    let d = driver();
    let c = browser(&d).await;
    sign_in(&c, &b.base, APPROVER, "alice (approver)").await;
    c.goto(&format!("{}/#/inbox", b.base)).await.unwrap();
    until(&c, "the inbox", "document.querySelector('#inbox')").await;
    js(&c, "window.__same_page = 7; return null;").await;

    // Started on A; its gate shows up on B's page, live.
    let run = a
        .start_run("signoff", json!({ "text": "two servers" }))
        .await;
    let card = format!("article.gate[data-run='{run}']");
    until(
        &c,
        "the gate from A",
        &format!("document.querySelector(\"{card}\")"),
    )
    .await;
    screenshot(&c, "inbox-second-server").await;

    // Decided on A; B's page drops the gate without a reload.
    let dec = a
        .post(
            &format!("/v1/runs/{run}/decisions"),
            APPROVER,
            json!({ "action": "approve", "comments": "from A" }),
        )
        .await;
    assert_eq!(dec.status, 200, "{}", dec.text);
    until(
        &c,
        "the gate gone",
        &format!("!document.querySelector(\"{card}\")"),
    )
    .await;
    assert_eq!(js(&c, "return window.__same_page;").await, json!(7));

    // B shows the run completed with A's decision and its reviewer.
    c.goto(&format!("{}/#/runs/{run}", b.base)).await.unwrap();
    until(
        &c,
        "the completed run",
        "document.querySelector('h1 .badge[data-status=completed]')",
    )
    .await;
    let gates = js(&c, "return document.querySelector('#run-gates').innerText;").await;
    assert!(
        gates.as_str().unwrap().contains("approve by alice: from A"),
        "{gates}"
    );
    c.close().await.unwrap();
}
