//! `kind: http`: one HTTP request, journaled like a model call.
//!
//! The validated form of the step; the engine sends it (spes-engine
//! `http`). Secrets go in headers by environment-variable name
//! ([`HeaderValue::Env`]) and are read when the request is sent: they are
//! never part of the workflow, the journal or a log line.

use serde_json::Value;

use crate::template::{Context, Template, TemplateError};

/// Response bodies read at most this many bytes unless the step says
/// otherwise (`max_bytes`).
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;

/// The largest `max_bytes` a step may set (64 MiB).
pub const MAX_MAX_BYTES: u64 = 64 << 20;

/// The methods an http step may use.
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

/// An HTTP request step.
#[derive(Debug, Clone)]
pub struct HttpStep {
    /// `GET`, `POST`, ... (one of [`METHODS`]).
    pub method: String,
    /// The URL, a template.
    pub url: Template,
    /// Request headers, in the order written.
    pub headers: Vec<(String, HeaderValue)>,
    /// The JSON body, if any: its strings are templates.
    pub body: Option<JsonTemplate>,
    /// Statuses that count as success; empty: any 2xx.
    pub expect: Vec<u16>,
    /// How the response body becomes the step's value.
    pub response: ResponseAs,
    /// Response bodies longer than this fail the step.
    pub max_bytes: u64,
}

/// One header's value.
#[derive(Debug, Clone)]
pub enum HeaderValue {
    /// A template over the context (journaled with nothing: headers are
    /// never recorded, but do not put secrets in templates).
    Template(Template),
    /// A secret: the environment variable's value, after `prefix`
    /// (`Bearer `), read when the request is sent.
    Env {
        /// The variable.
        var: String,
        /// Text before the value.
        prefix: String,
    },
}

/// How the response body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseAs {
    /// Parsed as JSON (an empty body is `null`).
    Json,
    /// Kept as text.
    Text,
}

/// A JSON value whose strings are templates: a string that is exactly
/// one `{{ expr }}` keeps the expression's type (a list stays a list).
#[derive(Debug, Clone)]
pub enum JsonTemplate {
    /// A string template.
    Str(Template),
    /// A list.
    Array(Vec<Self>),
    /// An object (keys as written).
    Object(Vec<(String, Self)>),
    /// A number, a boolean or null.
    Literal(Value),
}

impl JsonTemplate {
    /// Parses every string of `v` as a template.
    pub fn parse(v: &Value) -> Result<Self, TemplateError> {
        Ok(match v {
            Value::String(s) => Self::Str(Template::parse(s)?),
            Value::Array(a) => Self::Array(a.iter().map(Self::parse).collect::<Result<_, _>>()?),
            Value::Object(o) => Self::Object(
                o.iter()
                    .map(|(k, v)| Ok((k.clone(), Self::parse(v)?)))
                    .collect::<Result<_, TemplateError>>()?,
            ),
            other => Self::Literal(other.clone()),
        })
    }

    /// The value over `ctx`.
    pub fn eval(&self, ctx: &Context, locals: Option<&Context>) -> Result<Value, TemplateError> {
        Ok(match self {
            Self::Str(t) => t.eval(ctx, locals)?,
            Self::Array(a) => Value::Array(
                a.iter()
                    .map(|t| t.eval(ctx, locals))
                    .collect::<Result<_, _>>()?,
            ),
            Self::Object(o) => {
                let mut m = serde_json::Map::new();
                for (k, t) in o {
                    m.insert(k.clone(), t.eval(ctx, locals)?);
                }
                Value::Object(m)
            }
            Self::Literal(v) => v.clone(),
        })
    }

    /// Every template in it.
    pub fn templates(&self) -> Vec<&Template> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Template>) {
        match self {
            Self::Str(t) => out.push(t),
            Self::Array(a) => a.iter().for_each(|t| t.collect(out)),
            Self::Object(o) => o.iter().for_each(|(_, t)| t.collect(out)),
            Self::Literal(_) => {}
        }
    }
}

impl HttpStep {
    /// Every template of the step (URL, header templates, body).
    pub fn templates(&self) -> Vec<&Template> {
        let mut out = vec![&self.url];
        for (_, h) in &self.headers {
            if let HeaderValue::Template(t) = h {
                out.push(t);
            }
        }
        if let Some(b) = &self.body {
            out.extend(b.templates());
        }
        out
    }

    /// Whether `status` counts as success.
    #[must_use]
    pub fn accepts(&self, status: u16) -> bool {
        if self.expect.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expect.contains(&status)
        }
    }
}

/// Header names an http step may not set: the engine sets them itself.
pub const RESERVED_HEADERS: &[&str] = &["host", "content-length", "transfer-encoding"];
