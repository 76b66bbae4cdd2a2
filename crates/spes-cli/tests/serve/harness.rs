//! The `spes serve` harness shared by `tests/serve.rs` and
//! `tests/browser.rs`: a project with tokens and workflows, a real `spes
//! serve` process on loopback, and a reqwest client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// (name, variable, value, role).
pub(crate) const TOKENS: [(&str, &str, &str, &str); 3] = [
    ("vera", "SPES_T_VERA", "tok-viewer-6d1f0a9b3c", "viewer"),
    (
        "alice",
        "SPES_T_ALICE",
        "tok-approver-2b7e4c8d1f",
        "approver",
    ),
    ("otto", "SPES_T_OTTO", "tok-operator-9a3c5e7f0b", "operator"),
];
pub(crate) const VIEWER: &str = TOKENS[0].2;
pub(crate) const APPROVER: &str = TOKENS[1].2;
pub(crate) const OPERATOR: &str = TOKENS[2].2;

pub(crate) const CANARY: &str = "sk-canary-serve-4e8a1c7d9b2f6e0a";

pub(crate) const SIGNOFF: &str = "name: signoff
inputs:
  text: { type: string, required: true }
steps:
  - { name: draft, kind: llm, prompt: \"Draft about {{ text }}\", output: draft }
  - { name: review, kind: approval, show: draft, max_revisions: 2, output: review }
output: review
";

pub(crate) const HELLO: &str = "name: hello
inputs:
  who: { type: string, required: true }
  times: { type: integer, default: 1 }
steps:
  - { name: greet, kind: llm, prompt: \"Hello {{ who }} x{{ times }}\", output: greeting }
  - { name: shout, kind: transform, fn: uppercase, input: \"{{ greeting }}\", output: loud }
output: loud
";

pub(crate) const PICK: &str = "name: pick
steps:
  - name: tagline
    kind: choose
    n: 2
    generate: { kind: llm, prompt: \"Write a tagline.\" }
    output: tagline
output: tagline
";

pub(crate) const EDITOR: &str = "---
kind: persona
name: editor
version: 1.0.0
description: A precise editor.
---
You are a precise editor.
";

pub(crate) fn toml(tokens: bool, extra: &str) -> String {
    let mut s = String::from(
        "[defaults]\nprovider = \"test\"\n\n[providers.test]\nkind = \"scripted\"\nscript = \"answers.yaml\"\n",
    );
    if tokens {
        for (name, var, _, role) in TOKENS {
            s.push_str(&format!(
                "\n[server.tokens.{name}]\nenv = \"{var}\"\nrole = \"{role}\"\n"
            ));
        }
    }
    s.push_str(extra);
    s
}

/// A `[providers.NAME]` table (spes.toml) for the fake server at
/// `base_url`: OpenAI wire format, model `m1`, no retry, streaming or not.
pub(crate) fn fake_provider(name: &str, base_url: &str, stream: bool) -> String {
    format!(
        "\n[providers.{name}]\nkind = \"openai\"\nmodel = \"m1\"\nbase_url = \"{base_url}\"\nstream = {stream}\nretry = \"none\"\n"
    )
}

/// A project with the workflows above.
pub(crate) fn project(tokens: bool, extra_toml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let w = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w("spes.toml", &toml(tokens, extra_toml));
    w("answers.yaml", "- { default: echo }\n");
    w("workflows/signoff.yaml", SIGNOFF);
    w("workflows/hello.yaml", HELLO);
    w("workflows/pick.yaml", PICK);
    w("components/persona-editor-v1.0.0.md", EDITOR);
    dir
}

/// A `spes serve` process; killed when dropped.
pub(crate) struct Server {
    child: Option<Child>,
    pub(crate) base: String,
    log: Arc<Mutex<String>>,
    pub(crate) http: reqwest::Client,
}

/// An answer: status, headers, body text, body as JSON (Null if not JSON).
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) text: String,
    pub(crate) json: Value,
}

impl Server {
    pub(crate) fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spes"));
        cmd.current_dir(dir)
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(args)
            .env_remove("SPES_CONFIG")
            .env_remove("SPES_STORE")
            .env_remove("SPES_PROVIDER")
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (_, var, value, _) in TOKENS {
            cmd.env(var, value);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "spes serve did not start:\n{}",
                log.lock().unwrap().as_str()
            );
        };
        Self {
            child: Some(child),
            base: format!("http://{addr}"),
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| ("authorization", a))
            .into_iter()
            .collect();
        self.call_with(method, path, &headers, body).await
    }

    /// A request with these headers (a session cookie, a CSRF token, an
    /// Origin).
    pub(crate) async fn call_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Answer {
        let mut req = self.http.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", self.base),
        );
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\nlog:\n{}", self.log()));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            text,
            json,
        }
    }

    /// Signs in with `token`: the session's `Cookie` header value and its
    /// CSRF token.
    pub(crate) async fn session(&self, token: &str) -> (String, String) {
        let a = self
            .call_with("POST", "/v1/session", &[], Some(json!({ "token": token })))
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
        let set = a.headers["set-cookie"].to_str().unwrap().to_owned();
        let cookie = set.split(';').next().unwrap().to_owned();
        (cookie, a.json["csrf"].as_str().unwrap().to_owned())
    }

    pub(crate) async fn get(&self, path: &str, token: &str) -> Answer {
        self.call("GET", path, Some(token), None).await
    }

    pub(crate) async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call("POST", path, Some(token), Some(body)).await
    }

    /// Starts a run as the operator; returns its id.
    pub(crate) async fn start_run(&self, workflow: &str, inputs: Value) -> String {
        let a = self
            .post(
                "/v1/runs",
                OPERATOR,
                json!({ "workflow": workflow, "inputs": inputs }),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.text);
        a.json["run"]["id"].as_str().unwrap().to_owned()
    }

    /// Polls the run until `check` holds on its `runs show` document.
    pub(crate) async fn until(
        &self,
        run: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let a = self.get(&format!("/v1/runs/{run}"), VIEWER).await;
            if a.status == 200 && check(&a.json) {
                return a.json;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "run {run} never got {what}; last: {}\nlog:\n{}",
                a.text,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub(crate) async fn until_status(&self, run: &str, status: &str) -> Value {
        self.until(run, status, |d| d["run"]["status"] == status)
            .await
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, then the exit code and everything it logged.
    pub(crate) fn stop(self) -> (Option<i32>, String) {
        self.stop_with("TERM")
    }

    /// SIGKILL: the process dies at once, mid-whatever; returns its log.
    pub(crate) fn kill(mut self) -> String {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        self.log()
    }

    /// Sends `signal`, then the exit code and everything it logged.
    pub(crate) fn stop_with(mut self, signal: &str) -> (Option<i32>, String) {
        let mut child = self.child.take().unwrap();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let started = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("spes serve did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The reader thread ends at EOF of stderr; give it the last lines.
        let started = Instant::now();
        while !self.log().contains("spes serve: stopped")
            && started.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        (status.code(), self.log())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The open gate of `run` in the inbox, if any.
pub(crate) async fn open_gate(s: &Server, run: &str) -> Option<Value> {
    let a = s.get("/v1/gates", VIEWER).await;
    assert_eq!(a.status, 200, "{}", a.text);
    a.json["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["run_id"] == run)
        .cloned()
}

pub(crate) async fn until_gate(s: &Server, run: &str, not: Option<&str>) -> Value {
    let started = Instant::now();
    loop {
        if let Some(g) = open_gate(s, run).await
            && not.is_none_or(|k| g["key"] != k)
        {
            return g;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no open gate for run {run}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
