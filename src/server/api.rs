//! REST endpoints: start a run, list runs, read one run's state, events and decisions, repair a
//! run (retry, re-run, run again), who am I, health. Each reads its request and calls one [`crate::service::Service`] operation.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppError, AppState, Identity};
use crate::engine::SpecFormat;
use crate::examples;
use crate::external::ExternalRun;
use crate::protocol::{ClientEvent, GateDecisionRecord, RunState, RunSummary, Seq, SignedIn};
use crate::service::{MAX_EVENTS_PER_READ, StartRequest};

#[derive(Deserialize)]
pub struct StartQuery {
    /// Name of a bundled example to start.
    example: Option<String>,
}

/// `POST /api/dags`: starts a run and answers `{"dag_id": ...}` with 201. A JSON body with
/// `"external": true` creates a run an external engine drives (admin or engine role). The spec is the body
/// (`Content-Type: application/toml` or `application/json`), or `?example=NAME` names a bundled
/// one. An invalid spec is a 400 whose message names the node and field; nothing starts.
pub async fn start_run(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Query(query): Query<StartQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let request = match (external_run(&headers, &body)?, query.example, body.is_empty()) {
        (Some(run), _, _) => StartRequest::External(run),
        (None, Some(name), true) => StartRequest::Example(name),
        (None, Some(_), false) => {
            return Err(AppError::BadRequest("send either a spec in the body or ?example=NAME, not both".into()));
        }
        (None, None, true) => {
            let known: Vec<&str> = examples::names().collect();
            return Err(AppError::BadRequest(format!(
                "send a spec (Content-Type: application/toml or application/json), or ?example=NAME (one of: {})",
                known.join(", ")
            )));
        }
        (None, None, false) => {
            let format = spec_format(&headers)?;
            let text =
                std::str::from_utf8(&body).map_err(|_| AppError::BadRequest("the spec is not UTF-8 text".into()))?;
            StartRequest::Spec { text: text.to_owned(), format }
        }
    };
    let dag_id = state.service.start(&identity.signed_in(), request).await?;
    Ok((StatusCode::CREATED, Json(json!({ "dag_id": dag_id }))))
}

/// The definition of an external run, when the body is JSON with `"external": true`.
fn external_run(headers: &HeaderMap, body: &[u8]) -> Result<Option<ExternalRun>, AppError> {
    if body.is_empty() || !matches!(spec_format(headers), Ok(SpecFormat::Json)) {
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(value) if ExternalRun::is_external(&value) => {
            ExternalRun::from_value(value).map(Some).map_err(AppError::BadRequest)
        }
        // Not an external run: the spec path reads (and judges) it.
        Ok(_) | Err(_) => Ok(None),
    }
}

/// The spec format a request's `Content-Type` names.
fn spec_format(headers: &HeaderMap) -> Result<SpecFormat, AppError> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/toml" | "text/toml" | "text/x-toml" | "application/x-toml" => Ok(SpecFormat::Toml),
        "application/json" | "text/json" => Ok(SpecFormat::Json),
        _ => Err(AppError::UnsupportedMediaType(format!(
            "Content-Type {content_type:?} is not a spec format: use application/toml or application/json"
        ))),
    }
}

/// `GET /api/dags`: every run, newest first.
pub async fn list_runs(State(state): State<AppState>) -> Json<Vec<RunSummary>> {
    Json(state.service.list())
}

/// `GET /api/dags/{dag_id}`: the whole state of one run, as a `snapshot` would carry it.
pub async fn get_run(State(state): State<AppState>, Path(dag_id): Path<String>) -> Result<Json<RunState>, AppError> {
    Ok(Json(state.service.state(&dag_id).await?))
}

#[derive(Deserialize)]
pub struct EventsQuery {
    /// Events with `seq` above this; 0 for the whole log.
    #[serde(default)]
    after: Seq,
    /// At most this many (default and cap [`MAX_EVENTS_PER_READ`]).
    limit: Option<usize>,
}

/// `GET /api/dags/{dag_id}/events?after=K&limit=N`: the run's event log, oldest first, as the
/// stream sent it; from the store when there is one.
pub async fn events(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
    Query(query): Query<EventsQuery>,
) -> Result<Response, AppError> {
    let limit = query.limit.unwrap_or(MAX_EVENTS_PER_READ);
    let texts = state.service.events(&dag_id, query.after, limit).await?;
    let body = format!("[{}]", texts.join(","));
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /api/dags/{dag_id}/decisions`: every gate decision of the run, oldest first.
pub async fn decisions(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
) -> Result<Json<Vec<GateDecisionRecord>>, AppError> {
    Ok(Json(state.service.decisions(&dag_id).await?))
}

/// `GET /api/dags/{dag_id}/notifications`: who the run's notifications went to and every
/// delivery attempt, oldest first.
pub async fn notifications(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
) -> Result<Json<Vec<crate::protocol::NotificationRecord>>, AppError> {
    Ok(Json(state.service.notifications(&dag_id).await?))
}

/// `GET /api/me`: who the credentials belong to, and their role.
pub async fn me(Extension(identity): Extension<Identity>) -> Json<SignedIn> {
    Json(identity.signed_in())
}

/// `GET /healthz`.
pub async fn health() -> &'static str {
    "ok"
}

/// `GET /metrics`: every metric in Prometheus's text format (see `crate::metrics`), for admins:
/// a scraper sends the admin token as its bearer.
pub async fn metrics(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
) -> Result<Response, AppError> {
    identity.require(crate::protocol::Role::Admin, "read the metrics").map_err(AppError::Forbidden)?;
    let text = crate::metrics::render(&state.service);
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// `POST /api/dags/{dag_id}/nodes/{node_id}/retry`: runs a failed node again; the run goes on
/// from there (a run that ended `failed` too). 202 with `{"dag_id"}`; 409 with the reason when
/// the node's state does not allow it. Approver role.
pub async fn retry_node(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Path((dag_id, node_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    repair(&state, &identity, &dag_id, ClientEvent::RetryNode { node_id }).await
}

/// `POST /api/dags/{dag_id}/nodes/{node_id}/rerun`: runs a finished node and everything
/// downstream of it again; upstream outputs are kept. 202 with `{"dag_id"}`; 409 with the
/// reason when the node's state does not allow it. Approver role.
pub async fn rerun_node(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Path((dag_id, node_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    repair(&state, &identity, &dag_id, ClientEvent::RerunNode { node_id }).await
}

async fn repair(
    state: &AppState,
    identity: &Identity,
    dag_id: &str,
    event: ClientEvent,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let run = state.service.find(dag_id).await?;
    state.service.command(&run, &identity.signed_in(), event).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "dag_id": dag_id }))))
}

/// What `POST /api/dags/{dag_id}/again` may change.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AgainRequest {
    /// Added to every command node's environment (admin role).
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
}

/// `POST /api/dags/{dag_id}/again`: starts a new run of the same spec and answers its
/// `{"dag_id"}` with 201. An optional JSON body `{"env": {"NAME": "value"}}` changes the
/// command nodes' environment (admin role; as it is, approver role).
pub async fn run_again(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    Path(dag_id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let request: AgainRequest = if body.iter().all(u8::is_ascii_whitespace) {
        AgainRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AppError::BadRequest(format!("the body is not {{\"env\": {{\"NAME\": \"value\"}}}}: {e}")))?
    };
    let again = state.service.run_again(&dag_id, &identity.signed_in(), request.env).await?;
    Ok((StatusCode::CREATED, Json(json!({ "dag_id": again }))))
}

#[derive(Deserialize)]
pub struct CompareQuery {
    a: String,
    b: String,
}

/// `GET /api/compare?a=DAG_ID&b=DAG_ID`: two runs side by side, node by node, outputs diffed;
/// 404 if either is unknown.
pub async fn compare(
    State(state): State<AppState>,
    Query(query): Query<CompareQuery>,
) -> Result<Json<crate::protocol::RunComparison>, AppError> {
    Ok(Json(state.service.compare(&query.a, &query.b).await?))
}
