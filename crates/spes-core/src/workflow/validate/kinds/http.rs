//! Validation of `http` steps.

use crate::template::Template;
use crate::workflow::StepKind;
use crate::workflow::http::{
    DEFAULT_MAX_BYTES, HeaderValue, HttpStep, JsonTemplate, MAX_MAX_BYTES, METHODS,
    RESERVED_HEADERS, ResponseAs,
};
use crate::workflow::kind::{Distribution, KindDef, PolicyScope};
use crate::workflow::spec::StepSpec;
use crate::workflow::validate::StepAt;
use crate::workflow::validate::{Known, Sp, Validator, closest, span};

/// `http`: one HTTP request, journaled.
pub(crate) const HTTP: KindDef = KindDef {
    name: "http",
    fields: &[
        "method",
        "url",
        "headers",
        "body",
        "expect",
        "response",
        "max_bytes",
    ],
    policies: PolicyScope::Composite,
    distribution: Distribution::Anywhere,
    example: r#"{ name: s, kind: http, url: "http://127.0.0.1:9/{{ text }}" }"#,
    validate: validate_http,
};

/// The parts of an http request as written (an `http` step, or an http
/// tool of an `agent` step).
pub(crate) struct HttpParts<'a> {
    pub(crate) method: Option<&'a str>,
    pub(crate) url: Option<&'a str>,
    pub(crate) headers: Option<&'a std::collections::BTreeMap<String, serde_json::Value>>,
    pub(crate) body: Option<&'a serde_json::Value>,
    pub(crate) expect: Option<&'a [u16]>,
    pub(crate) response: Option<&'a str>,
    pub(crate) max_bytes: Option<u64>,
}

/// Why parts do not make a request: the field at fault, the message (after
/// `step `s`: `) and a hint.
pub(crate) struct HttpProblem {
    pub(crate) field: &'static str,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) hint: String,
}

fn problem(field: &'static str, message: String, hint: impl Into<String>) -> HttpProblem {
    HttpProblem {
        field,
        code: "spes::workflow::bad_http",
        message,
        hint: hint.into(),
    }
}

/// Builds the request from its parts (templates parsed, not yet checked
/// against the context).
pub(crate) fn build_http(p: &HttpParts<'_>) -> Result<HttpStep, HttpProblem> {
    let method = match p.method {
        None => "GET".to_owned(),
        Some(m) => {
            let up = m.to_ascii_uppercase();
            if !METHODS.contains(&up.as_str()) {
                let hint = match closest(&up, METHODS.iter().copied()) {
                    Some(c) => format!("did you mean `{c}`? Methods: {}", METHODS.join(", ")),
                    None => format!("methods: {}", METHODS.join(", ")),
                };
                return Err(problem("method", format!("unknown method `{m}`"), hint));
            }
            up
        }
    };
    let Some(url) = p.url else {
        return Err(HttpProblem {
            field: "kind",
            code: "spes::workflow::missing_field",
            message: "an http request needs `url`".into(),
            hint: "add `url: \"https://host/path/{{ id }}\"`".into(),
        });
    };
    let url_t = Template::parse(url).map_err(|e| HttpProblem {
        field: "url",
        code: "spes::workflow::template_syntax",
        message: format!("`url`: {}", e.message),
        hint: "fix the minijinja syntax: {{ variable }}".into(),
    })?;
    // A URL written whole is checked now; one built by a template when the
    // request is sent.
    let lower = url.trim_start().to_ascii_lowercase();
    if url_t.is_literal() && !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(problem(
            "url",
            "`url` must start with http:// or https://".into(),
            "for example `url: \"https://api.example.com/items/{{ id }}\"`",
        ));
    }
    let mut headers = Vec::new();
    for (name, val) in p.headers.into_iter().flatten() {
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) || http_name_invalid(name)
        {
            return Err(problem(
                "headers",
                format!("header `{name}` cannot be set here"),
                format!(
                    "header names are letters, digits and `-`; {} are set by spes",
                    RESERVED_HEADERS.join(", ")
                ),
            ));
        }
        let hv = match val {
            serde_json::Value::String(t) => {
                HeaderValue::Template(Template::parse(t).map_err(|e| HttpProblem {
                    field: "headers",
                    code: "spes::workflow::template_syntax",
                    message: format!("header `{name}`: {}", e.message),
                    hint: "fix the minijinja syntax: {{ variable }}".into(),
                })?)
            }
            serde_json::Value::Object(o)
                if o.get("env").is_some_and(serde_json::Value::is_string)
                    && o.keys().all(|k| k == "env" || k == "prefix")
                    && o.get("prefix").is_none_or(serde_json::Value::is_string) =>
            {
                HeaderValue::Env {
                    var: o["env"].as_str().unwrap_or_default().to_owned(),
                    prefix: o
                        .get("prefix")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                }
            }
            _ => {
                return Err(problem(
                    "headers",
                    format!("header `{name}` must be text or `{{ env: VAR }}`"),
                    "a secret is named by its environment variable: `{ env: API_TOKEN, prefix: \"Bearer \" }`",
                ));
            }
        };
        headers.push((name.clone(), hv));
    }
    let body = match p.body {
        None => None,
        Some(_) if method == "GET" || method == "HEAD" => {
            return Err(problem(
                "body",
                format!("a {method} request has no body"),
                "use `method: POST` (or PUT, PATCH, DELETE), or move the data into the URL",
            ));
        }
        Some(b) => Some(JsonTemplate::parse(b).map_err(|e| HttpProblem {
            field: "body",
            code: "spes::workflow::template_syntax",
            message: format!("`body`: {}", e.message),
            hint: "each string of the body is a template".into(),
        })?),
    };
    let expect = match p.expect {
        None => Vec::new(),
        Some(e) if e.is_empty() || e.iter().any(|c| !(100..=599).contains(c)) => {
            return Err(problem(
                "expect",
                "`expect` must list HTTP statuses (100 to 599)".into(),
                "for example `expect: [200, 201]`; leave it out for any 2xx",
            ));
        }
        Some(e) => e.to_vec(),
    };
    let response = match p.response {
        None | Some("json") => ResponseAs::Json,
        Some("text") => ResponseAs::Text,
        Some(other) => {
            return Err(problem(
                "response",
                format!("`response: {other}` is not `json` or `text`"),
                "`response: json` (the default) parses the body; `text` keeps it as text",
            ));
        }
    };
    let max_bytes = match p.max_bytes {
        None => DEFAULT_MAX_BYTES,
        Some(m) if m == 0 || m > MAX_MAX_BYTES => {
            return Err(problem(
                "max_bytes",
                format!("`max_bytes` must be between 1 and {MAX_MAX_BYTES} (64 MiB)"),
                format!("the default is {DEFAULT_MAX_BYTES} (1 MiB)"),
            ));
        }
        Some(m) => m,
    };
    Ok(HttpStep {
        method,
        url: url_t,
        headers,
        body,
        expect,
        response,
        max_bytes,
    })
}

fn validate_http(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    let what = at.what;
    let parts = HttpParts {
        method: s.method.as_ref().map(|m| m.value.as_str()),
        url: s.url.as_ref().map(|u| u.value.as_str()),
        headers: s.headers.as_ref().map(|h| &h.value),
        body: s.body.as_ref().map(|b| &b.value),
        expect: s.expect.as_ref().map(|e| e.value.as_slice()),
        response: s.response.as_ref().map(|r| r.value.as_str()),
        max_bytes: s.max_bytes.as_ref().map(|m| m.value),
    };
    let h = match build_http(&parts) {
        Ok(h) => h,
        Err(p) => {
            let at_ = match p.field {
                "method" => s.method.as_ref().and_then(span),
                "url" => s.url.as_ref().and_then(span),
                "headers" => s.headers.as_ref().and_then(span),
                "body" => s.body.as_ref().and_then(span),
                "expect" => s.expect.as_ref().and_then(span),
                "response" => s.response.as_ref().and_then(span),
                "max_bytes" => s.max_bytes.as_ref().and_then(span),
                _ => at.kind_at,
            };
            v.err(p.code, format!("{what}: {}", p.message), at_, p.hint);
            return None;
        }
    };
    let reads: Vec<String> = h
        .templates()
        .iter()
        .flat_map(|t| t.reads().iter().cloned())
        .collect();
    let url_at: Sp = s.url.as_ref().and_then(span).or(at.kind_at);
    v.check_reads(reads.iter(), url_at, known, &[], what);
    Some(StepKind::Http(Box::new(h)))
}

/// Not a token (RFC 9110): letters, digits and ``!#$%&'*+-.^_`|~``.
fn http_name_invalid(name: &str) -> bool {
    name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
