//! The run list feed, `GET /api/runs/stream` (WebSocket): the whole list on connect, then each
//! run whose line changed (coalesced briefly), so the run list page is live without polling.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use tokio::sync::{broadcast, watch};

use super::stream::CLOSE_CODE_SIGNED_OUT;
use super::{AppError, AppState, Identity, admit_socket};
use crate::protocol::RunsFeedEvent;
use crate::runs::Runs;

/// How long changes are gathered before they are sent (a busy run changes many times a second).
const COALESCE: Duration = Duration::from_millis(150);

pub async fn handler(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, AppError> {
    let slot = admit_socket(&state, &identity, &headers)?;
    let streams = state.streams.clone();
    Ok(upgrade
        .max_message_size(1024)
        .read_buffer_size(super::stream::READ_BUFFER)
        .write_buffer_size(super::stream::WRITE_BUFFER)
        .on_upgrade(move |socket| {
            streams.track_future(async move {
                let _slot = slot;
                serve(socket, Arc::clone(state.service.runs()), state.shutdown, identity).await;
            })
        })
        .into_response())
}

async fn serve(mut socket: WebSocket, runs: Arc<Runs>, mut shutdown: watch::Receiver<bool>, identity: Identity) {
    // The socket goes with its session: at sign-out, or when it expires.
    let session_ends = identity.session_end();
    tokio::pin!(session_ends);
    let mut changes = runs.changes();
    if send(&mut socket, &RunsFeedEvent::Runs { runs: runs.list() }).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            changed = changes.recv() => {
                let mut ids = BTreeSet::new();
                let mut resend_all = false;
                match changed {
                    Ok(id) => { ids.insert(id); }
                    Err(broadcast::error::RecvError::Lagged(_)) => resend_all = true,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
                tokio::time::sleep(COALESCE).await;
                loop {
                    match changes.try_recv() {
                        Ok(id) => { ids.insert(id); }
                        Err(broadcast::error::TryRecvError::Lagged(_)) => resend_all = true,
                        Err(_) => break,
                    }
                }
                let events: Vec<RunsFeedEvent> = if resend_all {
                    vec![RunsFeedEvent::Runs { runs: runs.list() }]
                } else {
                    ids.iter().filter_map(|id| runs.get(id)).map(|run| RunsFeedEvent::Run { run: run.room.summary() }).collect()
                };
                for event in &events {
                    if send(&mut socket, event).await.is_err() {
                        return;
                    }
                }
            }
            incoming = socket.recv() => match incoming {
                // The feed takes no messages; pings are answered by axum.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = shutdown.changed() => {
                let frame = CloseFrame { code: 1001, reason: Utf8Bytes::from_static("server shutting down") };
                let _ = socket.send(Message::Close(Some(frame))).await;
                return;
            }
            reason = &mut session_ends => {
                let frame = CloseFrame { code: CLOSE_CODE_SIGNED_OUT, reason: Utf8Bytes::from_static(reason) };
                let _ = socket.send(Message::Close(Some(frame))).await;
                return;
            }
        }
    }
}

async fn send(socket: &mut WebSocket, event: &RunsFeedEvent) -> Result<(), axum::Error> {
    let text = serde_json::to_string(event).unwrap_or_default();
    socket.send(Message::Text(text.into())).await
}
