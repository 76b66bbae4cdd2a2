//! `spes-fake-llm [--port N] [--latency-ms MS] [--max-concurrency N
//! [--over-limit reject|queue]]`: serves the fake LLM API (echo answers)
//! and prints its base URL on the first line of stdout. With
//! `--max-concurrency N`, a request arriving while N others are handled is
//! answered 429 (`reject`, the default) or waits (`queue`); `GET /stats`
//! answers `{"requests", "max_in_flight", "rejected"}`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use spes_fake_llm::{FakeServer, OverLimit};

const USAGE: &str = "usage: spes-fake-llm [--port N] [--latency-ms MS] [--max-concurrency N [--over-limit reject|queue]]";

#[derive(Debug)]
struct Args {
    port: u16,
    latency_ms: u64,
    max_concurrency: Option<usize>,
    over_limit: OverLimit,
}

fn parse_args() -> Result<Args, String> {
    let mut port = 0u16;
    let mut latency_ms = 0u64;
    let mut max_concurrency = None;
    let mut over_limit = OverLimit::Reject;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--port" => {
                port = value("--port")?
                    .parse()
                    .map_err(|e| format!("--port: {e}"))?;
            }
            "--latency-ms" => {
                latency_ms = value("--latency-ms")?
                    .parse()
                    .map_err(|e| format!("--latency-ms: {e}"))?;
            }
            "--max-concurrency" => {
                let n: usize = value("--max-concurrency")?
                    .parse()
                    .map_err(|e| format!("--max-concurrency: {e}"))?;
                if n == 0 {
                    return Err("--max-concurrency must be at least 1".to_owned());
                }
                max_concurrency = Some(n);
            }
            "--over-limit" => {
                over_limit = value("--over-limit")?
                    .parse()
                    .map_err(|e| format!("--over-limit: {e}"))?;
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Args {
        port,
        latency_ms,
        max_concurrency,
        over_limit,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("spes-fake-llm: {e}");
            return ExitCode::from(2);
        }
    };
    let port = args.port;
    let server = match FakeServer::start_on(SocketAddr::from(([127, 0, 0, 1], port))).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("spes-fake-llm: cannot listen on port {port}: {e}");
            return ExitCode::from(1);
        }
    };
    server.set_latency(Duration::from_millis(args.latency_ms));
    server.set_max_concurrency(args.max_concurrency, args.over_limit);
    println!("{}", server.url());
    let _ = std::io::stdout().flush();
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}
