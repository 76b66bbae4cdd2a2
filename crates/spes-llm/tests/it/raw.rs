//! A tiny HTTP/1.1 server that answers scripted bytes verbatim and records
//! what it receives: for the providers' documented shapes that the fake
//! server does not speak (refusals, tool calls, malformed successes, SSE
//! framing details), and as a capture server (a redirect's target).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One scripted answer.
#[derive(Debug, Clone)]
pub(crate) struct Raw {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) chunks: Vec<Vec<u8>>,
    /// Pause before each chunk after the first.
    pub(crate) delay: Duration,
    /// After the chunks, keep sending this chunk every `delay` for ever.
    pub(crate) drip: Option<Vec<u8>>,
}

impl Raw {
    pub(crate) fn json(body: &serde_json::Value) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            chunks: vec![body.to_string().into_bytes()],
            delay: Duration::ZERO,
            drip: None,
        }
    }

    /// A `text/event-stream` body, sent in one chunk.
    pub(crate) fn sse(body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            chunks: vec![body.into()],
            delay: Duration::ZERO,
            drip: None,
        }
    }

    pub(crate) fn redirect(status: u16, location: &str) -> Self {
        Self {
            status,
            headers: vec![("location".into(), location.into())],
            chunks: vec![],
            delay: Duration::ZERO,
            drip: None,
        }
    }

    pub(crate) fn chunked(mut self, size: usize) -> Self {
        let all: Vec<u8> = self.chunks.concat();
        self.chunks = all.chunks(size.max(1)).map(<[u8]>::to_vec).collect();
        self
    }
}

/// A request as received.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    /// Request line and headers, as sent.
    pub(crate) head: String,
    pub(crate) body: serde_json::Value,
}

impl Got {
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<Raw>,
    got: Vec<Got>,
}

/// The server; stops when dropped.
pub(crate) struct RawServer {
    pub(crate) url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawServer {
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let _ = serve(sock, st).await;
                });
            }
        });
        Self { url, state, task }
    }

    /// The OpenAI base URL (`{url}/v1`).
    pub(crate) fn openai_base(&self) -> String {
        format!("{}/v1", self.url)
    }

    pub(crate) fn push(&self, r: Raw) {
        self.state.lock().unwrap().script.push_back(r);
    }

    pub(crate) fn got(&self) -> Vec<Got> {
        self.state.lock().unwrap().got.clone()
    }
}

async fn serve(mut sock: tokio::net::TcpStream, st: Arc<Mutex<State>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    let raw = {
        let mut s = st.lock().unwrap();
        s.got.push(Got {
            head,
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        });
        s.script.pop_front()
    };
    let raw = raw.unwrap_or_else(|| Raw {
        status: 500,
        headers: vec![],
        chunks: vec![b"nothing scripted".to_vec()],
        delay: Duration::ZERO,
        drip: None,
    });
    let mut out = format!("HTTP/1.1 {} Scripted\r\n", raw.status);
    for (k, v) in &raw.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("connection: close\r\n\r\n");
    sock.write_all(out.as_bytes()).await?;
    for (i, c) in raw.chunks.iter().enumerate() {
        if i > 0 && !raw.delay.is_zero() {
            tokio::time::sleep(raw.delay).await;
        }
        sock.write_all(c).await?;
        sock.flush().await?;
    }
    if let Some(d) = &raw.drip {
        loop {
            tokio::time::sleep(raw.delay).await;
            sock.write_all(d).await?;
            sock.flush().await?;
        }
    }
    sock.shutdown().await
}
