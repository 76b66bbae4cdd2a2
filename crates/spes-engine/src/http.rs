//! `kind: http`: one HTTP request, journaled under the step key like a
//! model call. A recorded response answers at once (a resumed run never
//! sends a finished request again); a request that may have reached the
//! receiver but whose response was not committed is sent again with the
//! same `Idempotency-Key` header, derived from the run and the step key
//! (retries of one step share it), so the receiver can tell it is the
//! same request.
//!
//! Redirects are not followed: a 3xx is a response like any other (an
//! error unless `expect` lists it), so a secret header never reaches a
//! host the workflow did not name. Response bodies are read up to the
//! step's `max_bytes`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use spes_core::workflow::http::{HeaderValue, HttpStep, ResponseAs};
use spes_core::workflow::{Loc, StepKey};

use crate::error::FailureKind;
use crate::journal::Effect;
use crate::run::{Exec, StepResult, Stop, fail, mismatch};

/// The longest an http request may take in all unless the step's
/// `timeout` policy cuts it sooner.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How the engine sends http steps: one shared client (built on the first
/// request: building one loads the system's root certificates, which a
/// run without http steps never needs), and the hosts it may reach.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    client: Arc<std::sync::OnceLock<reqwest::Client>>,
    /// Hosts (`name` or `name:port`) http steps may reach; `None`: any.
    pub(crate) allow_hosts: Option<Arc<[String]>>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self::new(None)
    }
}

impl HttpSettings {
    /// A client that follows no redirect, with [`REQUEST_TIMEOUT`]; `allow`
    /// limits the hosts (`api.example.com`, `127.0.0.1:8080`).
    #[must_use]
    pub fn new(allow: Option<Vec<String>>) -> Self {
        Self {
            client: Arc::default(),
            allow_hosts: allow.map(|a| {
                a.into_iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .into()
            }),
        }
    }

    /// The shared client.
    pub(crate) fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(REQUEST_TIMEOUT)
                .connect_timeout(Duration::from_secs(10))
                .user_agent(concat!("spes/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default()
        })
    }

    fn allows(&self, url: &reqwest::Url) -> bool {
        let Some(allow) = &self.allow_hosts else {
            return true;
        };
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        let with_port = url
            .port_or_known_default()
            .map(|p| format!("{host}:{p}"))
            .unwrap_or_default();
        allow.iter().any(|a| *a == host || *a == with_port)
    }
}

/// The `Idempotency-Key` of the request at `key` in the run `scope`:
/// `spes-` and 32 hex digits of SHA-256 over both. Retries of a step
/// (`KEY#attempt2`) share their first attempt's key.
#[must_use]
pub fn idempotency_key(scope: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(scope.as_bytes());
    h.update([0]);
    h.update(StepKey::call_key(key).as_bytes());
    format!("spes-{}", &hex::encode(h.finalize())[..32])
}

/// Statuses worth sending again: the receiver may answer differently later.
fn transient_status(status: u16) -> bool {
    matches!(status, 408 | 425 | 429) || status >= 500
}

/// At most `max` characters of `text`, control characters escaped (for
/// an error message).
fn excerpt(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .flat_map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

impl Exec<'_> {
    /// Runs an http step: the journal's response, or the request sent and
    /// its response committed before the step's value is used.
    pub(crate) async fn http(
        &mut self,
        h: &HttpStep,
        key: &str,
        loc: &Loc,
    ) -> Result<StepResult, Stop> {
        match self
            .journal
            .get(key)
            .await
            .map_err(|e| fail(key, loc, FailureKind::Journal(e)))?
        {
            Some(Effect::Http { status, body, .. }) => {
                self.replayed += 1;
                return Ok(StepResult {
                    value: Some(body),
                    note: Some(format!("{status} · replayed from journal")),
                    usage: None,
                });
            }
            Some(other) => {
                return Err(mismatch(key, loc, &other, "an http request"));
            }
            None => {}
        }
        let (url, status, body) = self.send_http(h, key, loc, None).await?;
        let effect = Effect::Http {
            method: h.method.clone(),
            url,
            status,
            body,
        };
        let winner = self
            .journal
            .record(key, effect)
            .await
            .map_err(|e| e.stop(key, loc))?;
        match winner {
            Effect::Http { status, body, .. } => Ok(StepResult {
                value: Some(body),
                note: Some(format!("{} {status}", h.method)),
                usage: None,
            }),
            other => Err(mismatch(key, loc, &other, "an http request")),
        }
    }

    /// Sends `h` (its templates over the context and `locals`) and reads
    /// the answer: (the URL as sent, the status, the body as the step's
    /// value). Nothing is journaled here.
    pub(crate) async fn send_http(
        &self,
        h: &HttpStep,
        key: &str,
        loc: &Loc,
        locals: Option<&spes_core::template::Context>,
    ) -> Result<(String, u16, Value), Stop> {
        let url_text = h
            .url
            .render(&self.ctx, locals)
            .map_err(|e| fail(key, loc, FailureKind::Template(e)))?;
        let url = reqwest::Url::parse(url_text.trim()).map_err(|e| {
            fail(
                key,
                loc,
                FailureKind::Http {
                    status: None,
                    message: format!("`{}` is not a URL: {e}", excerpt(&url_text, 200)),
                    transient: false,
                },
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(fail(
                key,
                loc,
                FailureKind::Http {
                    status: None,
                    message: format!("`{}` is not an http(s) URL", url.scheme()),
                    transient: false,
                },
            ));
        }
        if !self.engine.http.allows(&url) {
            return Err(fail(
                key,
                loc,
                FailureKind::Config(format!(
                    "host `{}` is not in `[http] allow_hosts` of spes.toml; the request was not sent",
                    url.host_str().unwrap_or_default()
                )),
            ));
        }
        let method = reqwest::Method::from_bytes(h.method.as_bytes()).map_err(|_| {
            fail(
                key,
                loc,
                FailureKind::Config(format!("unknown method {}", h.method)),
            )
        })?;
        let mut req = self.engine.http.client().request(method, url.clone());
        let mut has_idempotency_key = false;
        let mut has_traceparent = false;
        for (name, value) in &h.headers {
            has_idempotency_key |= name.eq_ignore_ascii_case("idempotency-key");
            has_traceparent |= name.eq_ignore_ascii_case("traceparent");
            let text = match value {
                HeaderValue::Template(t) => t
                    .render(&self.ctx, locals)
                    .map_err(|e| fail(key, loc, FailureKind::Template(e)))?,
                HeaderValue::Env { var, prefix } => match std::env::var(var) {
                    Ok(v) if !v.is_empty() => format!("{prefix}{v}"),
                    _ => {
                        return Err(fail(
                            key,
                            loc,
                            FailureKind::Config(format!(
                                "header `{name}` needs the environment variable `{var}`, which is not set"
                            )),
                        ));
                    }
                },
            };
            let mut sent = reqwest::header::HeaderValue::from_str(&text).map_err(|_| {
                fail(
                    key,
                    loc,
                    FailureKind::Config(format!(
                        "header `{name}` has a value that cannot be sent (a line break or another control character)"
                    )),
                )
            })?;
            // A secret is kept out of reqwest's debug output.
            sent.set_sensitive(matches!(value, HeaderValue::Env { .. }));
            req = req.header(name.as_str(), sent);
        }
        if !has_idempotency_key {
            let scope = self
                .journal
                .scope()
                .map_or_else(|| spes_store::RunId::new().to_string(), |r| r.to_string());
            req = req.header("Idempotency-Key", idempotency_key(&scope, key));
        }
        // The trace this request is part of, when traces are exported.
        if !has_traceparent && let Some(tp) = self.span.traceparent() {
            req = req.header("traceparent", tp);
        }
        if let Some(b) = &h.body {
            let body = b
                .eval(&self.ctx, locals)
                .map_err(|e| fail(key, loc, FailureKind::Template(e)))?;
            req = req.json(&body);
        }
        self.check_control(key, loc).await?;
        let resp = req.send().await.map_err(|e| {
            fail(
                key,
                loc,
                FailureKind::Http {
                    status: None,
                    message: format!("{} {url}: {}", h.method, transport_error(&e)),
                    transient: true,
                },
            )
        })?;
        let status = resp.status().as_u16();
        let bytes = read_capped(resp, h.max_bytes)
            .await
            .map_err(|(message, transient)| {
                fail(
                    key,
                    loc,
                    FailureKind::Http {
                        status: Some(status),
                        transient,
                        message: format!("{} {url}: {message}", h.method),
                    },
                )
            })?;
        let text = String::from_utf8_lossy(&bytes);
        if !h.accepts(status) {
            return Err(fail(
                key,
                loc,
                FailureKind::Http {
                    status: Some(status),
                    message: format!(
                        "{} {url} answered {status}{}",
                        h.method,
                        if text.trim().is_empty() {
                            String::new()
                        } else {
                            format!(": {}", excerpt(text.trim(), 300))
                        }
                    ),
                    transient: transient_status(status),
                },
            ));
        }
        let value = match h.response {
            ResponseAs::Text => Value::String(text.into_owned()),
            ResponseAs::Json if text.trim().is_empty() => Value::Null,
            ResponseAs::Json => serde_json::from_slice(&bytes).map_err(|e| {
                fail(
                    key,
                    loc,
                    FailureKind::Http {
                        status: Some(status),
                        message: format!(
                            "{} {url} answered {status} with a body that is not JSON ({e}); use `response: text` to keep it as text",
                            h.method
                        ),
                        transient: false,
                    },
                )
            })?,
        };
        Ok((url.to_string(), status, value))
    }
}

/// A transport error in words, without the URL reqwest adds (the caller
/// names it).
fn transport_error(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "the request failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        what.to_owned()
    } else {
        format!("{what} ({cause})")
    }
}

/// The body, refused past `max` bytes: `Err((why, transient))` (a body
/// too large is terminal: it will be as large again; a broken connection
/// is transient).
async fn read_capped(mut resp: reqwest::Response, max: u64) -> Result<Vec<u8>, (String, bool)> {
    let too_large = || {
        (
            format!("the response body is larger than the step's max_bytes ({max})"),
            false,
        )
    };
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        (
            format!("reading the response: {}", transport_error(&e)),
            true,
        )
    })? {
        if (out.len() + chunk.len()) as u64 > max {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
