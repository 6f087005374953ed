//! The live feeds besides a run's stream, both WebSockets that send what they say when a client
//! connects, then what changed (coalesced briefly), so pages stay live without polling:
//!
//! - the run list, `GET /api/runs/stream`: every run, then each run whose line changed;
//! - the inbox, `GET /api/inbox/stream`: every gate that waits for the signed-in person, across
//!   all runs, then, for each run whose gates changed, that run's gates that wait for them (what
//!   the inbox page and the top bar's count show).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::stream::CLOSE_CODE_SIGNED_OUT;
use super::{AppError, AppState, Identity, admit_socket};
use crate::protocol::{InboxFeedEvent, RunsFeedEvent};
use crate::service::Service;

/// How long changes are gathered before they are sent (a busy run changes many times a second).
const COALESCE: Duration = Duration::from_millis(150);

/// What a feed sends: all of it, or what concerns the runs that changed.
trait Feed: Send + 'static {
    type Event: Serialize + Send + Sync;
    /// Everything (on connect, and after the feed fell behind).
    fn whole(&self) -> Self::Event;
    /// What changed with these runs.
    fn of_runs(&self, ids: &BTreeSet<Arc<str>>) -> Vec<Self::Event>;
}

/// The run list.
struct RunList(Service);

impl Feed for RunList {
    type Event = RunsFeedEvent;

    fn whole(&self) -> RunsFeedEvent {
        RunsFeedEvent::Runs { runs: self.0.list() }
    }

    fn of_runs(&self, ids: &BTreeSet<Arc<str>>) -> Vec<RunsFeedEvent> {
        ids.iter()
            .filter_map(|id| self.0.runs().get(id))
            .map(|run| RunsFeedEvent::Run { run: run.room.summary() })
            .collect()
    }
}

/// One person's inbox.
struct Inbox(Service, crate::protocol::SignedIn);

impl Feed for Inbox {
    type Event = InboxFeedEvent;

    fn whole(&self) -> InboxFeedEvent {
        InboxFeedEvent::Inbox { gates: self.0.inbox(&self.1) }
    }

    fn of_runs(&self, ids: &BTreeSet<Arc<str>>) -> Vec<InboxFeedEvent> {
        ids.iter()
            .map(|id| InboxFeedEvent::RunGates { dag_id: id.to_string(), gates: self.0.inbox_of_run(&self.1, id) })
            .collect()
    }
}

/// `GET /api/runs/stream`.
pub async fn runs_handler(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, AppError> {
    let feed = RunList(state.service.clone());
    open(state, identity, headers, upgrade, feed)
}

/// `GET /api/inbox/stream`.
pub async fn inbox_handler(
    State(state): State<AppState>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, AppError> {
    let feed = Inbox(state.service.clone(), identity.signed_in());
    open(state, identity, headers, upgrade, feed)
}

fn open(
    state: AppState,
    identity: Identity,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
    feed: impl Feed,
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
                let changes = state.service.runs().changes();
                serve(socket, feed, changes, state.shutdown, identity).await;
            })
        })
        .into_response())
}

async fn serve(
    mut socket: WebSocket,
    feed: impl Feed,
    mut changes: broadcast::Receiver<Arc<str>>,
    mut shutdown: watch::Receiver<bool>,
    identity: Identity,
) {
    // The socket goes with its session: at sign-out, or when it expires.
    let session_ends = identity.session_end();
    tokio::pin!(session_ends);
    if send(&mut socket, &feed.whole()).await.is_err() {
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
                let events = if resend_all { vec![feed.whole()] } else { feed.of_runs(&ids) };
                for event in &events {
                    if send(&mut socket, event).await.is_err() {
                        return;
                    }
                }
            }
            incoming = socket.recv() => match incoming {
                // A feed takes no messages; pings are answered by axum.
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

async fn send(socket: &mut WebSocket, event: &impl Serialize) -> Result<(), axum::Error> {
    let text = serde_json::to_string(event).unwrap_or_default();
    socket.send(Message::Text(text.into())).await
}
