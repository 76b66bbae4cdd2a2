//! `spes-fake-llm [--port N] [--latency-ms MS]`: serves the fake LLM API
//! (echo answers) and prints its base URL on the first line of stdout.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use spes_fake_llm::FakeServer;

fn parse_args() -> Result<(u16, u64), String> {
    let mut port = 0u16;
    let mut latency_ms = 0u64;
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
            "-h" | "--help" => {
                return Err("usage: spes-fake-llm [--port N] [--latency-ms MS]".to_owned());
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok((port, latency_ms))
}

#[tokio::main]
async fn main() -> ExitCode {
    let (port, latency_ms) = match parse_args() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("spes-fake-llm: {e}");
            return ExitCode::from(2);
        }
    };
    let server = match FakeServer::start_on(SocketAddr::from(([127, 0, 0, 1], port))).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("spes-fake-llm: cannot listen on port {port}: {e}");
            return ExitCode::from(1);
        }
    };
    server.set_latency(Duration::from_millis(latency_ms));
    println!("{}", server.url());
    let _ = std::io::stdout().flush();
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}
