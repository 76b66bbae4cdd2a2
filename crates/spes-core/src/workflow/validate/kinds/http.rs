//! Validation of `http` steps.

use crate::workflow::StepKind;
use crate::workflow::http::{
    DEFAULT_MAX_BYTES, HeaderValue, HttpStep, JsonTemplate, MAX_MAX_BYTES, METHODS,
    RESERVED_HEADERS, ResponseAs,
};
use crate::workflow::kind::{Distribution, KindDef, PolicyScope};
use crate::workflow::spec::StepSpec;
use crate::workflow::validate::StepAt;
use crate::workflow::validate::{Known, Validator, closest, span};

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

fn validate_http(
    v: &mut Validator<'_>,
    s: &mut StepSpec,
    known: &mut Known,
    at: &StepAt<'_>,
) -> Option<StepKind> {
    let what = at.what;
    let method = match &s.method {
        None => "GET".to_owned(),
        Some(m) => {
            let up = m.value.to_ascii_uppercase();
            if !METHODS.contains(&up.as_str()) {
                let hint = match closest(&up, METHODS.iter().copied()) {
                    Some(c) => format!("did you mean `{c}`? Methods: {}", METHODS.join(", ")),
                    None => format!("methods: {}", METHODS.join(", ")),
                };
                v.err(
                    "spes::workflow::bad_http",
                    format!("{what}: unknown method `{}`", m.value),
                    span(m),
                    hint,
                );
                return None;
            }
            up
        }
    };
    let Some(url) = &s.url else {
        v.err(
            "spes::workflow::missing_field",
            format!("{what}: an http step needs `url`"),
            at.kind_at,
            "add `url: \"https://host/path/{{ id }}\"`",
        );
        return None;
    };
    let url_at = span(url);
    let url_t = v.template(url, what)?;
    // A URL written whole is checked now; one built by a template when the
    // request is sent.
    let lower = url.value.trim_start().to_ascii_lowercase();
    if url_t.is_literal() && !(lower.starts_with("http://") || lower.starts_with("https://")) {
        v.err(
            "spes::workflow::bad_http",
            format!("{what}: `url` must start with http:// or https://"),
            url_at,
            "for example `url: \"https://api.example.com/items/{{ id }}\"`",
        );
        return None;
    }
    let reads: Vec<String> = url_t.reads().iter().cloned().collect();
    v.check_reads(reads.iter(), url_at, known, &[], what);

    let mut headers = Vec::new();
    if let Some(h) = &s.headers {
        for (name, val) in &h.value {
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str())
                || http_name_invalid(name)
            {
                v.err(
                    "spes::workflow::bad_http",
                    format!("{what}: header `{name}` cannot be set here"),
                    span(h),
                    format!(
                        "header names are letters, digits and `-`; {} are set by spes",
                        RESERVED_HEADERS.join(", ")
                    ),
                );
                return None;
            }
            let hv = match val {
                serde_json::Value::String(t) => {
                    let t = match crate::template::Template::parse(t) {
                        Ok(t) => t,
                        Err(e) => {
                            v.err(
                                "spes::workflow::template_syntax",
                                format!("{what}: header `{name}`: {}", e.message),
                                span(h),
                                "fix the minijinja syntax: {{ variable }}",
                            );
                            return None;
                        }
                    };
                    let reads: Vec<String> = t.reads().iter().cloned().collect();
                    v.check_reads(reads.iter(), span(h), known, &[], what);
                    HeaderValue::Template(t)
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
                    v.err(
                        "spes::workflow::bad_http",
                        format!("{what}: header `{name}` must be text or `{{ env: VAR }}`"),
                        span(h),
                        "a secret is named by its environment variable: `{ env: API_TOKEN, prefix: \"Bearer \" }`",
                    );
                    return None;
                }
            };
            headers.push((name.clone(), hv));
        }
    }

    let body = match &s.body {
        None => None,
        Some(b) => {
            if method == "GET" || method == "HEAD" {
                v.err(
                    "spes::workflow::bad_http",
                    format!("{what}: a {method} request has no body"),
                    span(b),
                    "use `method: POST` (or PUT, PATCH, DELETE), or move the data into the URL",
                );
                return None;
            }
            match JsonTemplate::parse(&b.value) {
                Ok(t) => {
                    let reads: Vec<String> = t
                        .templates()
                        .iter()
                        .flat_map(|t| t.reads().iter().cloned())
                        .collect();
                    v.check_reads(reads.iter(), span(b), known, &[], what);
                    Some(t)
                }
                Err(e) => {
                    v.err(
                        "spes::workflow::template_syntax",
                        format!("{what}: `body`: {}", e.message),
                        span(b),
                        "each string of the body is a template",
                    );
                    return None;
                }
            }
        }
    };

    let expect = match &s.expect {
        None => Vec::new(),
        Some(e) => {
            if e.value.is_empty() || e.value.iter().any(|c| !(100..=599).contains(c)) {
                v.err(
                    "spes::workflow::bad_http",
                    format!("{what}: `expect` must list HTTP statuses (100 to 599)"),
                    span(e),
                    "for example `expect: [200, 201]`; leave it out for any 2xx",
                );
                return None;
            }
            e.value.clone()
        }
    };
    let response = match s.response.as_ref().map(|r| r.value.as_str()) {
        None | Some("json") => ResponseAs::Json,
        Some("text") => ResponseAs::Text,
        Some(other) => {
            v.err(
                "spes::workflow::bad_http",
                format!("{what}: `response: {other}` is not `json` or `text`"),
                s.response.as_ref().and_then(span),
                "`response: json` (the default) parses the body; `text` keeps it as text",
            );
            return None;
        }
    };
    let max_bytes = match &s.max_bytes {
        None => DEFAULT_MAX_BYTES,
        Some(m) if m.value == 0 || m.value > MAX_MAX_BYTES => {
            v.err(
                "spes::workflow::bad_http",
                format!("{what}: `max_bytes` must be between 1 and {MAX_MAX_BYTES} (64 MiB)"),
                span(m),
                format!("the default is {DEFAULT_MAX_BYTES} (1 MiB)"),
            );
            return None;
        }
        Some(m) => m.value,
    };
    Some(StepKind::Http(Box::new(HttpStep {
        method,
        url: url_t,
        headers,
        body,
        expect,
        response,
        max_bytes,
    })))
}

/// Not a token (RFC 9110): letters, digits and ``!#$%&'*+-.^_`|~``.
fn http_name_invalid(name: &str) -> bool {
    name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
