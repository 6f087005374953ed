//! OpenTelemetry traces, off by default. With `--otlp-endpoint URL` every run's spans (a `run`
//! span, a `node` span per attempt with its cost and tokens, a `gate` span per wait; see
//! `engine::run::trace`) are exported over OTLP/HTTP (protobuf) to `URL/v1/traces`, in batches,
//! by the OpenTelemetry SDK; the run's trace id is a field of its span, so every line logged in
//! it carries it.
//!
//! Lines about a run logged outside its span (its storage and lease, its notifications, a
//! cluster's mirror of it, a worker's job of it) carry the trace id too: they are logged in a
//! [`lines_span`], a span that only names the trace and is never exported ([`exported`]). The
//! run's room keeps the id ([`crate::hub::Room::trace_id`]); a cluster's owner sends it with
//! each event to the mirrors, and a job carries it to its worker.

use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use tracing::Span;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;

/// The exporter's state: flushed and stopped with [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: SdkTracerProvider,
}

/// The traces URL an endpoint names: `http://host:4318` → `http://host:4318/v1/traces`; a URL
/// with a path is taken as it is.
pub fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    let has_path = endpoint.split_once("://").is_some_and(|(_, rest)| rest.contains('/'));
    if has_path { endpoint.to_owned() } else { format!("{endpoint}/v1/traces") }
}

/// Starts exporting to `endpoint`; answers the layer that turns tracing's spans into
/// OpenTelemetry spans, and the handle that flushes them at the end.
pub fn otlp<S>(endpoint: &str) -> Result<(Telemetry, OpenTelemetryLayer<S, Tracer>), String>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let url = traces_url(endpoint);
    // The exporter's HTTP client is a blocking one (the SDK exports from a thread of its own);
    // it may not be made inside the async runtime, so it is made on a thread of its own too.
    let exporter = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                use opentelemetry_otlp::WithExportConfig;
                opentelemetry_otlp::SpanExporter::builder().with_http().with_endpoint(url.clone()).build()
            })
            .join()
    })
    .map_err(|_| "the OTLP exporter could not be made".to_owned())?
    .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("dagstream").build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("dagstream"));
    Ok((Telemetry { provider }, layer))
}

impl Telemetry {
    /// Exports what is left and stops (on a thread of its own: the exporter blocks).
    pub fn shutdown(self) {
        let provider = self.provider;
        let stopped = std::thread::spawn(move || provider.shutdown()).join();
        if let Ok(Err(error)) = stopped {
            tracing::warn!(%error, "the last traces could not be exported");
        }
    }
}

/// Target of [`lines_span`]s: they are for log lines only, and never exported.
pub const RUN_LINES: &str = "dagstream::run_lines";

/// The span lines about a run are logged in outside the run's own span: it names the run's
/// trace (`trace_id`). `Span::none()` (the lines as they were) when the run has no trace.
/// Error-level, so it is enabled whenever dagstream's error lines are.
pub fn lines_span(trace_id: Option<&str>) -> Span {
    match trace_id {
        Some(trace_id) => tracing::error_span!(target: RUN_LINES, parent: None, "run_lines", trace_id),
        None => Span::none(),
    }
}

/// Which spans become OpenTelemetry spans: dagstream's own (runs, node attempts, gate waits),
/// not its libraries', and not the [`lines_span`]s.
pub fn exported() -> Targets {
    Targets::new().with_target("dagstream", LevelFilter::INFO).with_target(RUN_LINES, LevelFilter::OFF)
}

/// The OpenTelemetry trace id of `span`, when traces are exported.
pub fn trace_id(span: &Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn an_endpoint_names_its_traces_url() {
        assert_eq!(traces_url("http://127.0.0.1:4318"), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("http://127.0.0.1:4318/"), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("https://otel.example/custom/traces"), "https://otel.example/custom/traces");
    }
}
