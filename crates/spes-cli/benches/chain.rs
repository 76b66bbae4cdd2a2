//! `cargo bench -p spes-cli --bench chain`: the engine's overhead per step,
//! process start-up, and a 10-step chain over HTTP against the in-project
//! fake server beside a bare keep-alive HTTP loop sending the same requests.
//!
//! Prints figures; asserts nothing (speed is measured here, not in tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spes_core::component::ComponentRegistry;
use spes_core::message::ChatRequest;
use spes_core::workflow::{ValidateEnv, Workflow, parse_workflow, validate};
use spes_engine::Engine;
use spes_fake_llm::{FakeResponse, FakeServer};
use spes_llm::http::HttpProviderConfig;
use spes_llm::openai::OpenAiProvider;
use spes_llm::scripted::{Answer, Rule, ScriptedProvider};
use spes_llm::{CallContext, Provider};

const STEPS: usize = 10;

fn chain() -> (Workflow, String) {
    let mut yaml =
        String::from("name: chain10\ninputs:\n  topic: { type: string, default: rust }\nsteps:\n");
    for i in 1..=STEPS {
        let prev = if i == 1 {
            "topic".to_owned()
        } else {
            format!("s{}", i - 1)
        };
        yaml.push_str(&format!(
            "  - {{ name: s{i}, kind: llm, prompt: \"Step {i}: continue from {{{{ {prev} }}}}\", max_tokens: 64, output: s{i} }}\n"
        ));
    }
    let spec = parse_workflow("chain.yaml", &yaml).unwrap();
    let reg = ComponentRegistry::from_components(vec![]);
    let env = ValidateEnv {
        components: &reg,
        providers: None,
    };
    (validate(spec, "chain.yaml", &yaml, &env).unwrap().0, yaml)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn run_chain(engine: &Engine, wf: &Workflow) {
    let out = engine.run(wf, BTreeMap::new()).await.unwrap();
    assert_eq!(out.model_calls, STEPS as u64);
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (wf, chain_yaml) = chain();

    // 1. Scripted provider: engine overhead per step.
    let scripted = Arc::new(ScriptedProvider::new(
        "bench",
        vec![Rule::default(Answer::Reply("ok".into()))],
    ));
    let engine = Engine::builder().provider(scripted.clone()).build();
    let runs = 3000;
    rt.block_on(async {
        for _ in 0..300 {
            run_chain(&engine, &wf).await;
        }
    });
    let mut per_run = Vec::new();
    rt.block_on(async {
        for _ in 0..runs {
            let t = Instant::now();
            run_chain(&engine, &wf).await;
            per_run.push(t.elapsed());
        }
    });
    // The provider alone (so its own cost can be subtracted).
    let req = ChatRequest::user("Step 3: continue from ok");
    let cx = CallContext::for_step("s3");
    let calls = 30_000;
    let provider_each = rt.block_on(async {
        let t = Instant::now();
        for _ in 0..calls {
            std::hint::black_box(scripted.complete(&req, &cx).await.unwrap());
        }
        t.elapsed() / calls
    });
    let step = median(per_run) / STEPS as u32;
    println!(
        "chain10/scripted: {:.1} µs per step (median of {runs} runs), scripted provider alone {:.1} µs per call",
        us(step),
        us(provider_each)
    );
    println!(
        "  engine overhead per step: {:.1} µs  (target < 50 µs)",
        us(step.saturating_sub(provider_each))
    );

    // 2. Start-up.
    let bin = env!("CARGO_BIN_EXE_spes");
    let mut starts = Vec::new();
    for _ in 0..60 {
        let t = Instant::now();
        let s = Command::new(bin).arg("--version").output().unwrap();
        assert!(s.status.success());
        starts.push(t.elapsed());
    }
    println!(
        "spes --version: {:.2} ms (median of 60)  (target < 20 ms)",
        median(starts).as_secs_f64() * 1e3
    );
    // A whole `spes run` of the 10-step chain on the scripted provider, as a process.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("spes.toml"),
        "[defaults]\nprovider = \"t\"\n[providers.t]\nkind = \"scripted\"\nscript = \"a.yaml\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("a.yaml"), "- { default: echo }\n").unwrap();
    std::fs::write(dir.path().join("chain.yaml"), &chain_yaml).unwrap();
    let mut whole = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let s = Command::new(bin)
            .current_dir(dir.path())
            .args(["run", "chain.yaml", "--quiet"])
            .output()
            .unwrap();
        assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
        whole.push(t.elapsed());
    }
    println!(
        "spes run chain10 (whole process, scripted): {:.2} ms (median of 30)",
        median(whole).as_secs_f64() * 1e3
    );

    // Validation stays linear: a 10,000-step chain parsed and validated.
    let big = {
        let mut y =
            String::from("name: big\ninputs:\n  topic: { type: string, default: rust }\nsteps:\n");
        for i in 1..=10_000 {
            let prev = if i == 1 {
                "topic".to_owned()
            } else {
                format!("s{}", i - 1)
            };
            y.push_str(&format!(
                "  - {{ name: s{i}, kind: llm, prompt: \"Step {i}: continue from {{{{ {prev} }}}}\", output: s{i} }}\n"
            ));
        }
        y
    };
    let reg = ComponentRegistry::from_components(vec![]);
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let spec = parse_workflow("big.yaml", &big).unwrap();
        let env = ValidateEnv {
            components: &reg,
            providers: None,
        };
        std::hint::black_box(validate(spec, "big.yaml", &big, &env).unwrap());
        times.push(t.elapsed());
    }
    println!(
        "validate a 10,000-step workflow ({} KB): {:.1} ms (median of 5)  (target < 100 ms)",
        big.len() / 1024,
        median(times).as_secs_f64() * 1e3
    );
    // A whole `spes run` of a one-step workflow against the fake server at 0 ms.
    let one = rt.block_on(FakeServer::start()).unwrap();
    one.set_default(FakeResponse::text("ok"));
    let dir1 = tempfile::tempdir().unwrap();
    std::fs::write(
        dir1.path().join("spes.toml"),
        format!(
            "[defaults]\nprovider = \"f\"\n[providers.f]\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\n",
            one.openai_base_url()
        ),
    )
    .unwrap();
    std::fs::write(
        dir1.path().join("one.yaml"),
        "name: one\nsteps:\n  - { name: s, kind: llm, prompt: hi, output: s }\n",
    )
    .unwrap();
    let mut whole1 = Vec::new();
    for _ in 0..40 {
        let t = Instant::now();
        let s = Command::new(bin)
            .current_dir(dir1.path())
            .args(["run", "one.yaml", "--quiet"])
            .env("OPENAI_API_KEY", "sk-bench")
            .output()
            .unwrap();
        assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
        whole1.push(t.elapsed());
    }
    println!(
        "spes run of a one-step workflow against the fake server at 0 ms (whole process): {:.2} ms (median of 40)  (target < 10 ms)",
        median(whole1).as_secs_f64() * 1e3
    );

    // 3. HTTP: engine + OpenAI adapter against the fake server vs a bare keep-alive loop.
    let server = rt.block_on(FakeServer::start()).unwrap();
    server.set_default(FakeResponse::text("ok"));
    for (label, stream) in [("non-streaming", false), ("streaming", true)] {
        let cfg = HttpProviderConfig::new("fake")
            .with_base_url(server.openai_base_url())
            .with_model("fake-model")
            .with_stream(stream);
        let provider: Arc<dyn Provider> = Arc::new(OpenAiProvider::new(cfg).unwrap());
        let engine = Engine::builder().provider(provider).build();
        server.reset();
        server.set_default(FakeResponse::text("ok"));
        rt.block_on(run_chain(&engine, &wf));
        let bodies: Vec<Vec<u8>> = server
            .requests()
            .iter()
            .map(|r| serde_json::to_vec(&r.body).unwrap())
            .collect();
        assert_eq!(bodies.len(), STEPS);
        let url = format!("{}/chat/completions", server.openai_base_url());
        let client = reqwest::Client::new();
        let bare = |client: reqwest::Client, url: String, bodies: Vec<Vec<u8>>| async move {
            for b in bodies {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(b)
                    .send()
                    .await
                    .unwrap();
                std::hint::black_box(r.bytes().await.unwrap());
            }
        };
        let rounds = 400;
        let (mut eng_t, mut bare_t) = (Vec::new(), Vec::new());
        rt.block_on(async {
            for _ in 0..50 {
                run_chain(&engine, &wf).await;
                bare(client.clone(), url.clone(), bodies.clone()).await;
            }
            for _ in 0..rounds {
                server.reset();
                server.set_default(FakeResponse::text("ok"));
                let t = Instant::now();
                run_chain(&engine, &wf).await;
                eng_t.push(t.elapsed());
                let t = Instant::now();
                bare(client.clone(), url.clone(), bodies.clone()).await;
                bare_t.push(t.elapsed());
            }
        });
        let (e, b) = (median(eng_t) / STEPS as u32, median(bare_t) / STEPS as u32);
        println!(
            "chain10/http {label}: spes {:.1} µs per step, bare keep-alive loop {:.1} µs per request, ratio {:.2}x  (target <= 1.2x)",
            us(e),
            us(b),
            e.as_secs_f64() / b.as_secs_f64()
        );
    }
}
