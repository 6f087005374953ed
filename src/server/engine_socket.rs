//! The engine endpoint, `GET /api/dags/{dag_id}/engine` (WebSocket, bearer token, admin or
//! engine role): an external engine drives its run through it.
//!
//! On connect the engine gets a `snapshot` of the run, so a reconnecting engine knows where it
//! left off. It then sends server events (without `seq`): each is checked against the run
//! ([`crate::external::check_event`]); a good one is published (dagstream assigns `seq`, stores
//! it and fans it out), a bad one gets an `error` back and goes nowhere. Commands dashboards send
//! to the run arrive on the same socket, each with an `actor`. When the engine goes away the run
//! says so with an `error`, and waits for it to come back.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use tokio::sync::{mpsc, watch};

use super::auth::ConnectionSlot;
use super::{AppError, AppState, Identity, admit_socket};
use crate::external::{EngineLink, check_event};
use crate::hub::{Room, encode};
use crate::protocol::{Role, RunState, ServerEvent, ServerEventBody};
use crate::runs::Driver;

/// Largest message an engine may send (outputs can be sizeable).
const MAX_ENGINE_MESSAGE: usize = 1024 * 1024;

pub async fn handler(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    Path(dag_id): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, AppError> {
    identity.require(Role::Engine, "drive external runs").map_err(AppError::Forbidden)?;
    let slot = admit_socket(&state, &identity, &headers)?;
    let run = state.service.find(&dag_id).await?;
    let Driver::External(link) = run.driver else {
        return Err(AppError::Conflict(format!("run {dag_id} is executed by dagstream, not by an external engine")));
    };
    let commands =
        link.attach().ok_or_else(|| AppError::Conflict(format!("an engine is already connected to run {dag_id}")))?;
    let streams = state.streams.clone();
    let shutdown = state.shutdown.clone();
    Ok(upgrade
        .max_message_size(MAX_ENGINE_MESSAGE)
        .on_upgrade(move |socket| streams.track_future(serve(socket, run.room, link, commands, shutdown, slot)))
        .into_response())
}

async fn serve(
    mut socket: WebSocket,
    room: Arc<Room>,
    link: Arc<EngineLink>,
    mut commands: mpsc::Receiver<String>,
    mut shutdown: watch::Receiver<bool>,
    _slot: ConnectionSlot,
) {
    // The engine's own view of the run, to check its events against: it is the only publisher
    // of this run while connected, so the view stays current without waiting for commits.
    let mut view: RunState = room.snapshot();
    let snapshot =
        encode(&ServerEvent { seq: view.seq, body: ServerEventBody::Snapshot { run: Box::new(view.clone()) } });
    let mut open = socket.send(Message::Text(snapshot.into())).await.is_ok();
    while open {
        tokio::select! {
            // While the writer's queue is full, the engine's next event waits (and so does it).
            incoming = async { room.ready().await; socket.recv().await } => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if let Err(reason) = publish(&room, &mut view, text.as_str()) {
                        open = socket.send(refusal(&view, reason)).await.is_ok();
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let reason = "binary messages are not accepted: send JSON text".to_owned();
                    open = socket.send(refusal(&view, reason)).await.is_ok();
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => open = false,
            },
            Some(command) = commands.recv() => {
                open = socket.send(Message::Text(command.into())).await.is_ok();
            }
            _ = shutdown.changed() => {
                let frame = CloseFrame { code: 1001, reason: Utf8Bytes::from_static("server shutting down") };
                let _ = socket.send(Message::Close(Some(frame))).await;
                open = false;
            }
        }
    }
    drop(commands);
    if !link.is_attached() && view.results.is_none() {
        room.publish(ServerEventBody::Error {
            node_id: None,
            message: "the engine disconnected: the run waits for it to reconnect".into(),
        });
    }
}

/// An `error` for the engine about its own message, stamped with its position (like a
/// dashboard's private reply).
fn refusal(view: &RunState, message: String) -> Message {
    let event = ServerEvent { seq: view.seq, body: ServerEventBody::Error { node_id: None, message } };
    Message::Text(encode(&event).into())
}

/// Reads, checks and publishes one event from the engine; `Err` says why it was refused.
fn publish(room: &Room, view: &mut RunState, text: &str) -> Result<(), String> {
    let body: ServerEventBody = serde_json::from_str(text).map_err(|e| format!("could not read your event: {e}"))?;
    check_event(view, &body)?;
    let event = ServerEvent { seq: view.seq + 1, body };
    view.apply(&event);
    room.publish(event.body);
    Ok(())
}
