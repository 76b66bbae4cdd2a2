//! OpenTelemetry traces: the engine's spans exported over OTLP/HTTP
//! (protobuf) when an endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`,
//! else `[telemetry] otlp_endpoint`). The tracer is installed as the
//! process's [`spes_engine::telemetry::Tracer::set_global`], which every
//! engine the command builds uses.
//!
//! The exporter runs on a batch thread of its own; its HTTP requests run on
//! a one-thread tokio runtime owned here, so that exports neither need nor
//! depend on the runtime a command runs on. [`Guard`] flushes and shuts the
//! exporter down when dropped (the end of `main`).

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanProcessor as _};
use spes_core::config::TelemetrySpec;

use crate::project::Project;

/// The environment variable naming the OTLP/HTTP base URL.
const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The environment variable that turns message content on (`true`) or off.
const CAPTURE_VAR: &str = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT";

/// What to export, from the environment and spes.toml.
#[derive(Debug, Default)]
pub(crate) struct Settings {
    endpoint: Option<String>,
    capture_content: bool,
    service_name: Option<String>,
}

impl Settings {
    /// The environment first, then `[telemetry]` of the spes.toml found
    /// from `start` (or `explicit`). A spes.toml that does not load counts
    /// as none here (the command itself reports it).
    pub(crate) fn discover(explicit: Option<&Path>, start: &Path) -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let spec: TelemetrySpec = Project::discover(explicit, start)
            .map(|p| p.config.telemetry)
            .unwrap_or_default();
        let env_capture = env(CAPTURE_VAR);
        Self {
            endpoint: env(ENDPOINT_VAR).or(spec.otlp_endpoint),
            capture_content: env_capture.map_or(spec.capture_content, |v| {
                v.trim().eq_ignore_ascii_case("true")
            }),
            service_name: spec.service_name,
        }
    }
}

/// Keeps the exporter alive; dropping it exports what is left and stops it.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    tracer: Option<spes_engine::telemetry::Tracer>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(t) = self.tracer.take() {
            let _ = t.shutdown(Duration::from_secs(5));
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_millis(200));
        }
    }
}

/// The HTTP client of the exporter: the workspace's async reqwest client,
/// its requests run on the exporter's own runtime (the batch thread that
/// awaits them is not a tokio thread).
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    rt: tokio::runtime::Handle,
}

#[async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.rt
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}

/// Installs the exporter of the engine's spans as the process's tracer;
/// its guard, or `None` when no endpoint is configured (nothing is set up:
/// no thread, no runtime).
pub(crate) fn install(settings: &Settings) -> Option<Guard> {
    let base = settings.endpoint.as_deref()?;
    let endpoint = format!("{}/v1/traces", base.trim_end_matches('/'));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("spes-otlp")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            crate::term::say!("warning: traces are not exported: {e}");
            return None;
        }
    };
    let mut client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none());
    if endpoint.to_ascii_lowercase().starts_with("http://") {
        // No request leaves plain HTTP (no redirect is followed): an empty
        // root store instead of loading the system's certificates, which
        // costs a short command several milliseconds.
        client = client.tls_certs_only(std::iter::empty());
    }
    let client = match client.build() {
        Ok(c) => c,
        Err(e) => {
            crate::term::say!("warning: traces are not exported: {e}");
            return None;
        }
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.clone())
        .with_http_client(OnRuntime {
            client,
            rt: rt.handle().clone(),
        })
        .build();
    let exporter = match exporter {
        Ok(e) => e,
        Err(e) => {
            crate::term::say!("warning: traces are not exported to {endpoint}: {e}");
            return None;
        }
    };
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource =
            resource.with_service_name(settings.service_name.clone().unwrap_or("spes".into()));
    }
    // The engine hands its finished spans to the batch processor itself
    // (no SDK tracer provider in between), built on a thread of the
    // tracer's own (`Tracer::batched`); the resource is set here, as a
    // provider would set it.
    let mut processor = BatchSpanProcessor::builder(exporter).build();
    processor.set_resource(&resource.build());
    let tracer = spes_engine::telemetry::Tracer::batched(processor);
    spes_engine::telemetry::set_capture_content(settings.capture_content);
    spes_engine::telemetry::Tracer::set_global(tracer.clone());
    Some(Guard {
        tracer: Some(tracer),
        rt: Some(rt),
    })
}
