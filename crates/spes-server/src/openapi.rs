//! The OpenAPI 3.1 document, generated from the handlers' annotations and
//! the Rust types of every request and answer.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;

/// The API's description.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "spes", description = "Runs, human gates, workflows and components of a spes project."),
    paths(
        api::healthz,
        api::readyz,
        crate::metrics::metrics,
        document,
        api::list_runs,
        api::start_run,
        api::show_run,
        api::run_prompts,
        api::pause_run,
        api::resume_run,
        api::cancel_run,
        api::fork_run,
        api::decide,
        api::pending_gates,
        crate::events::run_events,
        crate::events::gate_events,
        api::list_workflows,
        api::show_workflow,
        api::list_components,
        api::show_component,
        crate::session::sign_in,
        crate::session::whoami,
        crate::session::sign_out,
    ),
    modifiers(&Bearer),
    tags(
        (name = "runs", description = "Start, list, show, pause, resume, cancel and fork runs"),
        (name = "gates", description = "Gates waiting for a human, and decisions"),
        (name = "workflows", description = "The project's workflows"),
        (name = "components", description = "The project's prompt components"),
        (name = "session", description = "Browser sign-in: a cookie session with a CSRF token"),
        (name = "health", description = "Liveness, readiness and metrics"),
    )
)]
pub struct ApiDoc;

#[derive(Debug)]
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
            c.add_security_scheme(
                "cookie",
                SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                    crate::session::COOKIE,
                    "The dashboard's session (POST /v1/session); POST and DELETE also need X-CSRF-Token",
                ))),
            );
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "health",
    security(("bearer" = [])),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// docs/API.md: the OpenAPI document as Markdown (every route with its
/// parameters, body and answers, then every schema with its fields). A
/// test keeps the file equal to this.
#[must_use]
pub fn markdown() -> String {
    use std::fmt::Write as _;
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").trim().replace('\n', " ");
    let schema_name = |v: &serde_json::Value| -> String {
        if let Some(r) = v.get("$ref").and_then(|r| r.as_str()) {
            let name = r.rsplit('/').next().unwrap_or(r);
            return format!("[`{name}`](#{})", name.to_lowercase());
        }
        if let Some(items) = v.get("items") {
            if let Some(r) = items.get("$ref").and_then(|r| r.as_str()) {
                let name = r.rsplit('/').next().unwrap_or(r);
                return format!("array of [`{name}`](#{})", name.to_lowercase());
            }
            return format!(
                "array of {}",
                items
                    .get("type")
                    .map_or("any".to_owned(), |t| t.to_string().replace('"', ""))
            );
        }
        if let Some(all) = v
            .get("oneOf")
            .or_else(|| v.get("allOf"))
            .and_then(|a| a.as_array())
        {
            let names: Vec<String> = all
                .iter()
                .filter_map(|x| x.get("$ref").and_then(|r| r.as_str()))
                .map(|r| {
                    let name = r.rsplit('/').next().unwrap_or(r);
                    format!("[`{name}`](#{})", name.to_lowercase())
                })
                .collect();
            if !names.is_empty() {
                return names.join(" or ");
            }
        }
        match v.get("type") {
            Some(serde_json::Value::String(t)) => t.clone(),
            Some(serde_json::Value::Array(ts)) => ts
                .iter()
                .filter_map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(" or "),
            _ => "any".to_owned(),
        }
    };
    let mut out = String::from(
        "# The spes HTTP API\n\n\
         Generated from the OpenAPI 3.1 document that `spes serve` serves at\n\
         `/v1/openapi.json` (a test keeps this file equal to it). Who may call\n\
         what, sessions, errors and the dashboard: docs/FORMAT.md, \"spes serve\".\n\n\
         Every route but `/healthz`, `/readyz`, `/metrics` and `POST /v1/session` needs\n\
         `Authorization: Bearer TOKEN` or the dashboard's session cookie (with\n\
         `X-CSRF-Token` on a change) when the server has tokens.\n\n## Routes\n",
    );
    if let Some(paths) = doc.get("paths").and_then(|p| p.as_object()) {
        for (path, item) in paths {
            let Some(ops) = item.as_object() else {
                continue;
            };
            for method in ["get", "post", "delete"] {
                let Some(op) = ops.get(method) else { continue };
                let _ = write!(out, "\n### `{} {path}`\n\n", method.to_uppercase());
                let summary = text(op.get("summary").unwrap_or(&serde_json::Value::Null));
                let description = text(op.get("description").unwrap_or(&serde_json::Value::Null));
                for t in [summary, description] {
                    if !t.is_empty() {
                        let _ = writeln!(out, "{t}\n");
                    }
                }
                if let Some(params) = op.get("parameters").and_then(|p| p.as_array()) {
                    out.push_str(
                        "| parameter | in | required | type | meaning |\n|---|---|---|---|---|\n",
                    );
                    for p in params {
                        let _ = writeln!(
                            out,
                            "| `{}` | {} | {} | {} | {} |",
                            text(&p["name"]),
                            text(&p["in"]),
                            if p["required"].as_bool() == Some(true) {
                                "yes"
                            } else {
                                "no"
                            },
                            p.get("schema").map_or("any".to_owned(), schema_name),
                            text(&p["description"]),
                        );
                    }
                    out.push('\n');
                }
                if let Some(body) = op.get("requestBody") {
                    let schema = &body["content"]["application/json"]["schema"];
                    let _ = writeln!(out, "Body (JSON): {}\n", schema_name(schema));
                }
                if let Some(resps) = op.get("responses").and_then(|r| r.as_object()) {
                    out.push_str("| answer | meaning | body |\n|---|---|---|\n");
                    for (status, r) in resps {
                        let body = r
                            .get("content")
                            .and_then(|c| c.as_object())
                            .and_then(|c| c.iter().next())
                            .map(|(ty, c)| match c.get("schema") {
                                Some(s) => schema_name(s),
                                None => format!("`{ty}`"),
                            })
                            .unwrap_or_default();
                        let _ =
                            writeln!(out, "| {status} | {} | {body} |", text(&r["description"]));
                    }
                }
            }
        }
    }
    out.push_str("\n## Schemas\n");
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        for (name, s) in schemas {
            let _ = write!(out, "\n### {name}\n\n");
            let d = text(s.get("description").unwrap_or(&serde_json::Value::Null));
            if !d.is_empty() {
                let _ = writeln!(out, "{d}\n");
            }
            if let Some(values) = s.get("enum").and_then(|e| e.as_array()) {
                let vs: Vec<String> = values.iter().map(|v| format!("`{}`", text(v))).collect();
                let _ = writeln!(out, "One of {}.", vs.join(", "));
                continue;
            }
            if let Some(variants) = s.get("oneOf").and_then(|e| e.as_array()) {
                out.push_str("One of:\n\n");
                for v in variants {
                    let required: Vec<&str> = v["required"]
                        .as_array()
                        .map(|r| r.iter().filter_map(|x| x.as_str()).collect())
                        .unwrap_or_default();
                    let fields: Vec<String> = v["properties"]
                        .as_object()
                        .map(|p| {
                            p.iter()
                                .map(|(k, f)| match f["enum"].as_array().map(Vec::as_slice) {
                                    Some([only]) => format!("`\"{k}\": \"{}\"`", text(only)),
                                    _ if required.contains(&k.as_str()) => format!("`{k}`"),
                                    _ => format!("`{k}`?"),
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let desc = text(v.get("description").unwrap_or(&serde_json::Value::Null));
                    let _ = writeln!(out, "- {}: {desc}", fields.join(", "));
                }
                continue;
            }
            let required: Vec<&str> = s["required"]
                .as_array()
                .map(|r| r.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            if let Some(props) = s["properties"].as_object() {
                out.push_str("| field | type | required | meaning |\n|---|---|---|---|\n");
                for (field, p) in props {
                    let _ = writeln!(
                        out,
                        "| `{field}` | {} | {} | {} |",
                        schema_name(p),
                        if required.contains(&field.as_str()) {
                            "yes"
                        } else {
                            "no"
                        },
                        text(p.get("description").unwrap_or(&serde_json::Value::Null)),
                    );
                }
            }
        }
    }
    out
}
