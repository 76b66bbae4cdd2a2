//! The local provider against llama.cpp's own generation loop (the
//! binding's bare loop: tokenize, decode the prompt, greedy-sample until an
//! end token or the limit) on the same file, prompt and settings.
//!
//! `cargo bench -p spes-local --bench local`
//!
//! Each measurement runs in a fresh child process (llama.cpp's backend is
//! once per process, and peak RSS must not mix the two), with 1 thread and
//! with every core, and prints prompt-processing and generation tokens/s,
//! first-token latency, load time and peak RSS side by side.
//!
//! Prompt processing is timed with `max_tokens = 1` and generation as the
//! difference between `max_tokens = N` and `max_tokens = 1`, the same way
//! for both, so spes's overhead per call and per token both show.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    missing_docs
)]

use std::num::NonZeroU32;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use spes_core::message::ChatRequest;
use spes_llm::{CallContext, Provider};
use spes_local::{LocalConfig, LocalProvider, default_model_path};

/// About 300 prompt tokens (a passage to work on) asking for a long answer.
const PROMPT: &str = "Read this passage.\n\nThe harbour town woke before dawn. Fishing boats slid out past the breakwater while the bakery on the quay lit its ovens, and the smell of bread drifted over the water. By six the market stalls were up: crates of mackerel and crab, baskets of apples from the hill farms, rope, nets, paint and tar for the boats. The harbour master walked the length of the pier as he had for thirty years, counting moorings, noting which boats had not come back from the night and which had come back heavy. In winter the storms closed the harbour for days at a time, and the town lived on what it had salted and stored; in summer visitors doubled its size, and the old sail loft became a gallery. The school at the top of the hill taught forty children, most of whom would leave for the cities, and some of whom would come back. The lifeboat station, rebuilt after the great storm, kept its crew of volunteers: a teacher, two fishermen, the baker's son and a retired nurse, who trained every Thursday evening whatever the weather.\n\nNow write a long, detailed essay of at least five paragraphs about life in this town through the seasons: the work, the people, the weather and the sea.";
const GEN_TOKENS: u32 = 256;
const ROUNDS: usize = 5;
const CONTEXT: u32 = 2048;

#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    load: Duration,
    prompt_tokens: u64,
    /// Best time for max_tokens = 1 (prompt processing + 1 token).
    t1: Duration,
    /// Best time for max_tokens = GEN_TOKENS.
    tn: Duration,
    /// Generated tokens in the long run.
    n: u64,
    /// Best time to the first token of the long run.
    first: Duration,
    rss_kib: u64,
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn bare(threads: u32) -> Figures {
    let path = default_model_path();
    let mut backend = LlamaBackend::init().unwrap();
    backend.void_logs();
    let started = Instant::now();
    let model = LlamaModel::load_from_file(&backend, &path, &LlamaModelParams::default()).unwrap();
    let load = started.elapsed();
    let tmpl = model.chat_template(None).unwrap();
    let prompt = model
        .apply_chat_template(
            &tmpl,
            &[LlamaChatMessage::new("user".into(), PROMPT.into()).unwrap()],
            true,
        )
        .unwrap();
    let t = i32::try_from(threads).unwrap();
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(CONTEXT))
        .with_n_batch(CONTEXT)
        .with_n_ubatch(512)
        .with_n_threads(t)
        .with_n_threads_batch(t);
    let mut ctx = model.new_context(&backend, params).unwrap();
    let vocab = model.vocab();
    let mut f = Figures {
        load,
        t1: Duration::MAX,
        tn: Duration::MAX,
        first: Duration::MAX,
        ..Figures::default()
    };
    let mut run = |max: u32| -> (Duration, Duration, u64, u64) {
        let started = Instant::now();
        ctx.clear_kv_cache();
        let tokens = vocab.tokenize(prompt.as_bytes(), true, true);
        let mut batch = LlamaBatch::new(CONTEXT as usize, 1);
        let last = tokens.len() - 1;
        for (i, &tok) in tokens.iter().enumerate() {
            batch.add(tok, i as i32, &[0], i == last).unwrap();
        }
        ctx.decode(&mut batch).unwrap();
        let mut sampler = LlamaSampler::greedy();
        let mut pos = tokens.len() as i32;
        let mut n = 0u64;
        let mut first = Duration::ZERO;
        let mut out = Vec::new();
        while n < u64::from(max) {
            let tok = sampler.sample(&ctx, batch.n_tokens() - 1);
            if vocab.is_eog(tok) {
                break;
            }
            if n == 0 {
                first = started.elapsed();
            }
            n += 1;
            vocab.token_to_piece_into(tok, &mut out, false, None);
            batch.clear();
            batch.add(tok, pos, &[0], true).unwrap();
            ctx.decode(&mut batch).unwrap();
            pos += 1;
        }
        (started.elapsed(), first, n, tokens.len() as u64)
    };
    for _ in 0..ROUNDS {
        let (t, _, _, p) = run(1);
        f.t1 = f.t1.min(t);
        f.prompt_tokens = p;
        let (t, first, n, _) = run(GEN_TOKENS);
        f.tn = f.tn.min(t);
        f.first = f.first.min(first);
        f.n = n;
    }
    f.rss_kib = peak_rss_kib();
    f
}

fn spes(threads: u32) -> Figures {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = LocalConfig {
            context: CONTEXT,
            threads,
            threads_batch: threads,
            ..LocalConfig::default_model()
        };
        let p = LocalProvider::new("local", config);
        let load = p.load().await.unwrap();
        let mut f = Figures {
            load,
            t1: Duration::MAX,
            tn: Duration::MAX,
            first: Duration::MAX,
            ..Figures::default()
        };
        for _ in 0..ROUNDS {
            let mut req = ChatRequest::user(PROMPT);
            req.max_tokens = Some(1);
            let started = Instant::now();
            let r = p
                .complete(&req, &CallContext::for_step("t1"))
                .await
                .unwrap();
            f.t1 = f.t1.min(started.elapsed());
            f.prompt_tokens = r.usage.input_tokens;

            req.max_tokens = Some(GEN_TOKENS);
            let first = Arc::new(Mutex::new(None::<Duration>));
            let seen = Arc::clone(&first);
            let started = Instant::now();
            let cx = CallContext {
                step_key: "tn".into(),
                on_delta: Some(Arc::new(move |_d: &str| {
                    let mut g = seen.lock().unwrap();
                    if g.is_none() {
                        *g = Some(started.elapsed());
                    }
                })),
                ..CallContext::default()
            };
            let r = p.complete(&req, &cx).await.unwrap();
            f.tn = f.tn.min(started.elapsed());
            f.first = f.first.min(first.lock().unwrap().unwrap_or(Duration::MAX));
            f.n = r.usage.output_tokens;
        }
        f.rss_kib = peak_rss_kib();
        f
    })
}

fn child(mode: &str, threads: u32) -> Figures {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .env("SPES_LOCAL_BENCH_MODE", mode)
        .env("SPES_LOCAL_BENCH_THREADS", threads.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{mode} child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();
    Figures {
        load: Duration::from_nanos(v[0]),
        prompt_tokens: v[1],
        t1: Duration::from_nanos(v[2]),
        tn: Duration::from_nanos(v[3]),
        n: v[4],
        first: Duration::from_nanos(v[5]),
        rss_kib: v[6],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if let Ok(mode) = std::env::var("SPES_LOCAL_BENCH_MODE") {
        let threads: u32 = std::env::var("SPES_LOCAL_BENCH_THREADS")
            .unwrap()
            .parse()
            .unwrap();
        let f = if mode == "bare" {
            bare(threads)
        } else {
            spes(threads)
        };
        println!(
            "{} {} {} {} {} {} {}",
            f.load.as_nanos(),
            f.prompt_tokens,
            f.t1.as_nanos(),
            f.tn.as_nanos(),
            f.n,
            f.first.as_nanos(),
            f.rss_kib
        );
        return;
    }
    let path = default_model_path();
    if !path.is_file() {
        eprintln!(
            "the default model is missing at {}; run scripts/fetch-model.sh",
            path.display()
        );
        std::process::exit(1);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    println!(
        "local model bench: {} · prompt \"{}…\" · greedy, {GEN_TOKENS} tokens max · context {CONTEXT} · best of {ROUNDS}",
        path.file_name().unwrap().to_string_lossy(),
        &PROMPT[..18]
    );
    println!("default threads here: {}", spes_local::default_threads());
    println!(
        "{:>7} {:>5} {:>9} {:>11} {:>11} {:>11} {:>9} {:>9}",
        "threads", "who", "load ms", "prompt t/s", "gen t/s", "first ms", "call ms", "rss MiB"
    );
    let mut thread_counts = vec![1];
    if cores > 1 {
        thread_counts.push(cores);
    }
    for &t in &thread_counts {
        // Alternate so drift in machine load hits both alike.
        let b = child("bare", t);
        let s = child("spes", t);
        let b2 = child("bare", t);
        let s2 = child("spes", t);
        let best = |x: Figures, y: Figures| Figures {
            load: x.load.min(y.load),
            t1: x.t1.min(y.t1),
            tn: x.tn.min(y.tn),
            first: x.first.min(y.first),
            rss_kib: x.rss_kib.max(y.rss_kib),
            ..x
        };
        let b = best(b, b2);
        let s = best(s, s2);
        for (who, f) in [("llama", b), ("spes", s)] {
            let pp = f.prompt_tokens as f64 / f.t1.as_secs_f64();
            let gen_tps = (f.n.saturating_sub(1)) as f64 / (f.tn - f.t1.min(f.tn)).as_secs_f64();
            println!(
                "{t:>7} {who:>5} {:>9.1} {pp:>11.1} {gen_tps:>11.1} {:>11.1} {:>9.1} {:>9.1}",
                ms(f.load),
                ms(f.first),
                ms(f.tn),
                f.rss_kib as f64 / 1024.0
            );
        }
        assert_eq!(b.n, s.n, "both must generate the same number of tokens");
        println!(
            "{t:>7} overhead: whole call {:+.2}% · prompt {:+.2}% · first token {:+.2}% ({} prompt tokens, {} generated)",
            (ms(s.tn) / ms(b.tn) - 1.0) * 100.0,
            (ms(s.t1) / ms(b.t1) - 1.0) * 100.0,
            (ms(s.first) / ms(b.first) - 1.0) * 100.0,
            s.prompt_tokens,
            s.n
        );
    }
}
