//! The dashboard stream, `GET /api/dags/{dag_id}/stream[?since=SEQ]`: one WebSocket subscriber.
//!
//! After the upgrade the socket is split into a send task (backlog, live frames, private
//! replies, pings) and a receive task (client events to the run's coordinator); whichever ends
//! first ends the other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, watch};

use super::{AppError, AppState};
use crate::hub::{Frame, Subscription, encode};
use crate::protocol::{CLOSE_CODE_TOO_SLOW, ClientEvent, Seq, ServerEvent, ServerEventBody};
use crate::runs::RunEntry;
use crate::store::Store;

/// Largest client message accepted; client events are a few hundred bytes.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// Private replies (errors about a client's own messages) waiting to be sent.
const REPLY_QUEUE: usize = 16;
/// Live frames written before one flush, when several are already queued.
const FRAMES_PER_FLUSH: usize = 64;
/// Who commands are attributed to until users exist.
const ANONYMOUS: &str = "anonymous";

/// Settings of every stream connection.
#[derive(Clone, Copy, Debug)]
pub struct StreamConfig {
    /// How often an idle connection is pinged; one that stays silent for two intervals is closed.
    pub ping_interval: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig { ping_interval: Duration::from_secs(15) }
    }
}

#[derive(Deserialize)]
pub struct StreamQuery {
    /// The last `seq` the client applied; it wants everything after it.
    since: Option<Seq>,
}

/// Refuses unknown runs with 404 before the upgrade, then hands the socket to [`serve`].
pub async fn handler(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    let run = state.runs.get(&dag_id).ok_or_else(|| AppError::NotFound(format!("no run {dag_id:?}")))?;
    let Query(query) = query.map_err(|e| AppError::BadRequest(format!("since must be a sequence number: {e}")))?;
    let upgrade = upgrade.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let config = state.stream;
    let shutdown = state.shutdown.clone();
    let streams = state.streams.clone();
    let store = state.runs.store().cloned();
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| streams.track_future(serve(socket, run, query.since, store, config, shutdown)))
        .into_response())
}

async fn serve(
    socket: WebSocket,
    run: RunEntry,
    since: Option<Seq>,
    store: Option<Arc<dyn Store>>,
    config: StreamConfig,
    shutdown: watch::Receiver<bool>,
) {
    let subscription = run.room.subscribe(since);
    let dag_id = run.room.dag_id().to_owned();
    let (sink, stream) = socket.split();
    let (replies, reply_queue) = mpsc::channel(REPLY_QUEUE);
    let heard = Arc::new(AtomicBool::new(true));
    let send_side = send_loop(sink, subscription, store, dag_id, reply_queue, config, shutdown, Arc::clone(&heard));
    let mut send = tokio::spawn(send_side);
    let mut receive = tokio::spawn(receive_loop(stream, run, replies, heard));
    tokio::select! {
        _ = &mut send => receive.abort(),
        _ = &mut receive => send.abort(),
    }
}

/// Why the send side ends.
enum Ending {
    /// The client went away, or the run's room is gone.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

#[allow(clippy::too_many_arguments)] // each is one concern of the connection; a struct would only rename them
async fn send_loop(
    mut sink: SplitSink<WebSocket, Message>,
    subscription: Subscription,
    store: Option<Arc<dyn Store>>,
    dag_id: String,
    mut replies: mpsc::Receiver<ServerEventBody>,
    config: StreamConfig,
    mut shutdown: watch::Receiver<bool>,
    heard: Arc<AtomicBool>,
) {
    let Subscription { backlog, mut live, mut position, from_store } = subscription;
    let ending = async {
        if let Some((from, to)) = from_store {
            // Older than the in-memory window: read them from the store first.
            let Some(store) = &store else { return Ending::Close(1011, "the log is not available") };
            let Ok(texts) = store.events(&dag_id, from - 1, to).await else {
                return Ending::Close(1011, "the log cannot be read now: reconnect");
            };
            for text in texts {
                if sink.feed(Message::Text(text.into())).await.is_err() {
                    return Ending::Gone;
                }
            }
        }
        for frame in backlog {
            position = frame.seq;
            if sink.feed(Message::Text(frame.text)).await.is_err() {
                return Ending::Gone;
            }
        }
        if sink.flush().await.is_err() {
            return Ending::Gone;
        }
        let mut ping = tokio::time::interval(config.ping_interval);
        ping.reset();
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    Ok(frame) => {
                        if write_frames(&mut sink, &mut live, frame, &mut position).await.is_err() {
                            return Ending::Gone;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Ending::Close(CLOSE_CODE_TOO_SLOW, "too slow: reconnect with since to resync");
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ending::Gone,
                },
                Some(body) = replies.recv() => {
                    // Stamped with the client's position so it is never mistaken for a gap.
                    let text = encode(&ServerEvent { seq: position, body });
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        return Ending::Gone;
                    }
                }
                _ = ping.tick() => {
                    if !heard.swap(false, Ordering::Relaxed) {
                        return Ending::Close(1001, "no answer to ping");
                    }
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        return Ending::Gone;
                    }
                }
                _ = shutdown.changed() => return Ending::Close(1001, "server shutting down"),
            }
        }
    }
    .await;
    if let Ending::Close(code, reason) = ending {
        let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
        // The peer may already be gone; there is nothing more to do either way.
        let _ = sink.send(Message::Close(Some(frame))).await;
    }
}

/// Writes `first` and whatever else is already queued (up to [`FRAMES_PER_FLUSH`]), then
/// flushes once.
async fn write_frames(
    sink: &mut SplitSink<WebSocket, Message>,
    live: &mut broadcast::Receiver<Frame>,
    first: Frame,
    position: &mut Seq,
) -> Result<(), axum::Error> {
    *position = first.seq;
    sink.feed(Message::Text(first.text)).await?;
    for _ in 1..FRAMES_PER_FLUSH {
        // A lag or close here is seen again by the next `recv` in the send loop.
        let Ok(frame) = live.try_recv() else { break };
        *position = frame.seq;
        sink.feed(Message::Text(frame.text)).await?;
    }
    sink.flush().await
}

async fn receive_loop(
    mut stream: SplitStream<WebSocket>,
    run: RunEntry,
    replies: mpsc::Sender<ServerEventBody>,
    heard: Arc<AtomicBool>,
) {
    while let Some(Ok(message)) = stream.next().await {
        heard.store(true, Ordering::Relaxed);
        let complaint = match message {
            Message::Text(text) => match serde_json::from_str::<ClientEvent>(text.as_str()) {
                Ok(event) => match &run.handle {
                    Some(handle) => handle.command(event, ANONYMOUS).await.err().map(|rejected| rejected.to_string()),
                    None => {
                        Some(format!("the run is {}: it takes no more commands", run.room.summary().state.as_str()))
                    }
                },
                Err(error) => Some(format!("could not read your message: {error}")),
            },
            Message::Binary(_) => Some("binary messages are not accepted: send JSON text".to_owned()),
            Message::Ping(_) | Message::Pong(_) => None,
            Message::Close(_) => break,
        };
        if let Some(message) = complaint
            && replies.send(ServerEventBody::Error { node_id: None, message }).await.is_err()
        {
            break;
        }
    }
}
