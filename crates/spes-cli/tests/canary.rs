//! A canary API key never reaches stdout, stderr, or any file spes writes,
//! whether the provider answers or fails in any way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use spes_fake_llm::{FakeResponse, FakeServer};

const CANARY: &str = "sk-canary-7f3a9c1e5b2d8f4a6c0e9b1d3f5a7c9e";

fn project(dir: &Path, kind: &str, base_url: &str, stream: bool) {
    std::fs::write(
        dir.join("spes.toml"),
        format!(
            "[defaults]\nprovider = \"remote\"\nretry = {{ base = \"1ms\", max = \"10ms\" }}\n\n[providers.remote]\nkind = \"{kind}\"\nmodel = \"m1\"\nbase_url = \"{base_url}\"\napi_key_env = \"SPES_CANARY_KEY\"\nstream = {stream}\ntimeouts = {{ connect = \"2s\", first_byte = \"500ms\", idle = \"500ms\" }}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("wf.yaml"),
        "name: canary\ninputs:\n  q: { type: string, required: true }\nsteps:\n  - { name: ask, kind: llm, prompt: \"Answer: {{ q }}\", output: a }\n",
    )
    .unwrap();
}

fn all_files_text(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.push_str(&all_files_text(&p));
        } else {
            out.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn run_spes(dir: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spes"))
        .current_dir(dir)
        .env("SPES_CANARY_KEY", CANARY)
        .env("RUST_LOG", "trace")
        .env("RUST_BACKTRACE", "1")
        .args(["run", "wf.yaml", "--input", "q=hello"])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_key_never_leaks() {
    let server = FakeServer::start().await.unwrap();
    server.require_api_key(CANARY);
    let faults: Vec<(&str, Option<FakeResponse>, i32)> = vec![
        ("ok", Some(FakeResponse::text("fine")), 0),
        (
            "rate limited",
            Some(FakeResponse::rate_limited(Some("3"))),
            1,
        ),
        ("overloaded", Some(FakeResponse::overloaded()), 1),
        ("server error", Some(FakeResponse::server_error()), 1),
        (
            "unauthorised",
            Some(FakeResponse::error(401).with_error_message(format!("bad key {CANARY}"))),
            1,
        ),
        ("hang", Some(FakeResponse::hang()), 1),
        (
            "broken stream",
            Some(FakeResponse::break_after("partial answer", 2)),
            1,
        ),
        (
            "context overflow",
            Some(FakeResponse::context_overflow()),
            1,
        ),
        (
            "billing",
            Some(FakeResponse::error(402).with_error_message(format!("no credit for {CANARY}"))),
            1,
        ),
        (
            "redirect",
            Some(FakeResponse::error(307).with_header(
                "location",
                format!("http://127.0.0.1:9/{CANARY}?k={CANARY}"),
            )),
            1,
        ),
    ];
    for (kind, base) in [
        ("anthropic", server.url()),
        ("openai", server.openai_base_url()),
    ] {
        for stream in [false, true] {
            for (label, response, code) in &faults {
                let dir = tempfile::tempdir().unwrap();
                project(dir.path(), kind, &base, stream);
                server.reset();
                if let Some(r) = response {
                    // Every attempt of the default retry (3, 1ms apart) sees it.
                    for _ in 0..3 {
                        server.push(r.clone());
                    }
                }
                let d = dir.path().to_path_buf();
                let (rc, stdout, stderr) =
                    tokio::task::spawn_blocking(move || run_spes(&d, &["--json"]))
                        .await
                        .unwrap();
                let case = format!("{kind} stream={stream} {label}");
                assert_eq!(rc, *code, "{case}: exit code; stderr:\n{stderr}");
                assert!(!stdout.contains(CANARY), "{case}: key in stdout");
                assert!(!stderr.contains(CANARY), "{case}: key in stderr:\n{stderr}");
                assert!(
                    !stderr.contains("sk-canary"),
                    "{case}: key prefix in stderr"
                );
                assert!(
                    !all_files_text(dir.path())
                        .replace("SPES_CANARY_KEY", "")
                        .contains(CANARY),
                    "{case}: key in a file"
                );
                // The server did get the key: the test would be vacuous otherwise.
                let req = server.last_request().expect("a request arrived");
                let auth = req
                    .header("x-api-key")
                    .or_else(|| req.header("authorization"))
                    .unwrap_or_default();
                assert!(auth.contains(CANARY), "{case}: the key was not sent");
            }
        }
    }
}
