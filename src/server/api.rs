//! REST endpoints: start a run, list runs, read one run's state, health.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppError, AppState};
use crate::engine::examples;
use crate::protocol::{RunState, RunSummary};

#[derive(Deserialize)]
pub struct StartQuery {
    /// Name of a bundled example to start.
    example: Option<String>,
}

/// `POST /api/dags?example=NAME`: starts a run, answers `{"dag_id": ...}` with 201.
pub async fn start_run(
    State(state): State<AppState>,
    Query(query): Query<StartQuery>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let known = examples::NAMES.join(", ");
    let name = query
        .example
        .ok_or_else(|| AppError::BadRequest(format!("say which example to start: ?example=NAME (one of: {known})")))?;
    let spec = examples::by_name(&name)
        .ok_or_else(|| AppError::BadRequest(format!("no example called {name:?} (there is: {known})")))?;
    let dag_id = state.runs.start(spec).map_err(|e| AppError::Internal(format!("bundled example {name}: {e}")))?;
    Ok((StatusCode::CREATED, Json(json!({ "dag_id": dag_id }))))
}

/// `GET /api/dags`: every run, newest first.
pub async fn list_runs(State(state): State<AppState>) -> Json<Vec<RunSummary>> {
    Json(state.runs.list())
}

/// `GET /api/dags/{dag_id}`: the whole state of one run, as a `snapshot` would carry it.
pub async fn get_run(State(state): State<AppState>, Path(dag_id): Path<String>) -> Result<Json<RunState>, AppError> {
    let run = state.runs.get(&dag_id).ok_or_else(|| AppError::NotFound(format!("no run {dag_id:?}")))?;
    Ok(Json(run.room.snapshot()))
}

/// `GET /healthz`.
pub async fn health() -> &'static str {
    "ok"
}
