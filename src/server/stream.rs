//! The dashboard stream, `GET /api/dags/{dag_id}/stream[?since=SEQ]`: one WebSocket subscriber.
//!
//! After the upgrade the socket is split into a send task (backlog, private replies, pings, the
//! close) and a receive task (client events to the run's coordinator); whichever ends first ends
//! the other. A third task waits for the connection's endings (sign-out, expiry, shutdown) and
//! queues the close for the send task. Live frames are not this connection's work: once its
//! backlog is written, the socket is attached to its room's fan-out ([`crate::hub::fanout`]),
//! whose shard writes every frame to it; the send task only writes what the socket could not
//! take at once, as it drains, and hears when the socket fell too far behind (4008).
//!
//! The upgrade is answered here (tungstenite checks the request and derives the accept key),
//! because the fan-out writes to the upgraded socket itself, which axum's `WebSocket` hides.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use super::auth::ConnectionSlot;
use super::{AppError, AppState, Identity, admit_socket};
use crate::hub::fanout::{Live, Outbox, OutboxIo};
use crate::hub::{Subscription, encode};
use crate::protocol::{CLOSE_CODE_TOO_SLOW, ClientEvent, Seq, ServerEvent, ServerEventBody};
use crate::runs::RunEntry;
use crate::service::Service;
use crate::store::Store;

/// Largest client message accepted; client events are a few hundred bytes. A bigger one
/// closes the connection with 1009.
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// What the WebSocket layer reads at most before giving up on a message (so one above
/// [`MAX_CLIENT_MESSAGE`] can still be answered with a proper 1009 close).
const READ_LIMIT: usize = 1024 * 1024;
/// What the WebSocket layer reads into per connection at a time. Clients send little, and an
/// idle dashboard should cost little: tungstenite's default reserves 128 KiB up front.
pub const READ_BUFFER: usize = 4 * 1024;
/// Bytes of frames gathered before they are written out (a flush writes the rest anyway).
pub const WRITE_BUFFER: usize = 16 * 1024;
/// Private replies (errors about a client's own messages) waiting to be sent.
const REPLY_QUEUE: usize = 16;
/// How long the close frame may wait behind what a slow client has still to read.
const CLOSE_WAIT: Duration = Duration::from_secs(30);
/// Close code: the session of this socket ended (logout or expiry).
pub const CLOSE_CODE_SIGNED_OUT: u16 = 4001;

/// Settings of every stream connection.
#[derive(Clone, Copy, Debug)]
pub struct StreamConfig {
    /// How often an idle connection is pinged; one that stays silent for two intervals is closed.
    pub ping_interval: Duration,
    /// Client events one connection may send per second (bursts up to as many); more get an
    /// `error` and are dropped.
    pub client_events_per_second: u32,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig { ping_interval: Duration::from_secs(15), client_events_per_second: 20 }
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
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    Path(dag_id): Path<String>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    mut request: Request,
) -> Result<Response, AppError> {
    let slot = admit_socket(&state, &identity, &headers)?;
    let run = state.service.find(&dag_id).await?;
    let Query(query) = query.map_err(|e| AppError::BadRequest(format!("since must be a sequence number: {e}")))?;
    let response = tungstenite::handshake::server::create_response_with_body(&request, Body::empty)
        .map_err(|e| AppError::BadRequest(format!("not a WebSocket upgrade: {e}")))?;
    let upgrade = request
        .extensions_mut()
        .remove::<OnUpgrade>()
        .ok_or_else(|| AppError::BadRequest("this connection cannot be upgraded to a WebSocket".into()))?;
    let connection = Connection {
        run,
        since: query.since,
        store: state.service.runs().store().cloned(),
        service: state.service.clone(),
        config: state.stream,
        shutdown: state.shutdown.clone(),
        identity,
        _slot: slot,
    };
    tokio::spawn(state.streams.track_future(serve(upgrade, connection)));
    Ok(response)
}

/// The WebSocket settings of every stream connection.
fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(READ_LIMIT))
        .max_frame_size(Some(READ_LIMIT))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
}

/// A stream connection's WebSocket, over its outbox.
type Socket = WebSocketStream<OutboxIo>;

/// Everything one stream connection needs once upgraded.
struct Connection {
    run: RunEntry,
    /// Where the client's commands go.
    service: Service,
    /// The last `seq` the client has, if it resumes.
    since: Option<Seq>,
    /// Where events older than the room's memory are read from.
    store: Option<Arc<dyn Store>>,
    config: StreamConfig,
    shutdown: watch::Receiver<bool>,
    /// Who is connected: their role gates commands, their name signs decisions, their session's
    /// end closes the socket.
    identity: Identity,
    /// Counts against the user's connection cap until the socket closes.
    _slot: ConnectionSlot,
}

/// What the receive side asks the send side to write.
enum Outgoing {
    /// A private `error` about the client's own message: its text. (Only the text is queued:
    /// every connection holds this queue, so its items stay small.)
    Reply(String),
    /// Close the connection with this code and reason.
    Close(u16, &'static str),
}

async fn serve(upgrade: OnUpgrade, connection: Connection) {
    let Connection { run, service, since, store, config, shutdown, identity, _slot } = connection;
    let Ok(upgraded) = upgrade.await else { return };
    let outbox = Outbox::new(TokioIo::new(upgraded));
    let socket =
        WebSocketStream::from_raw_socket(OutboxIo(Arc::clone(&outbox)), Role::Server, Some(websocket_config())).await;
    let subscription = run.room.subscribe(since);
    let (sink, stream) = socket.split();
    let (replies, reply_queue) = mpsc::channel(REPLY_QUEUE);
    let heard = Arc::new(AtomicBool::new(true));
    let session = identity.session_end();
    // The connection's endings are watched by a task of their own, which queues the close: the
    // send loop, woken once per event for every subscriber, then polls three things, not six.
    let endings = tokio::spawn(watch_endings(shutdown, session, replies.clone()));
    let attachment = Attachment { outbox: Arc::clone(&outbox), room: Arc::clone(&run.room) };
    let send_side = send_loop(sink, subscription, attachment, store, reply_queue, config, Arc::clone(&heard));
    let mut send = tokio::spawn(send_side);
    let mut receive = tokio::spawn(receive_loop(stream, service, run, replies, heard, identity, config));
    tokio::select! {
        _ = &mut send => {
            // A close frame (if any) is written and flushed. The receive side reads, and drops,
            // what the client still sends until it answers the close: a socket dropped with
            // unread data is reset, and a reset can overtake the close frame at the client.
            let _ = tokio::time::timeout(CLOSE_LINGER, &mut receive).await;
            receive.abort();
        }
        received = &mut receive => match received {
            Ok(Received::Unreadable) => {
                // The send side writes the close frame; what the client still sends cannot be
                // read as frames any more, so it stays unread a while before the socket is dropped.
                let _ = tokio::time::timeout(CLOSE_LINGER, &mut send).await;
                send.abort();
                tokio::time::sleep(CLOSE_LINGER).await;
            }
            Ok(Received::Gone) | Err(_) => send.abort(),
        },
    }
    endings.abort();
    // Closes the socket now, though the room's shard may hold the outbox until its next frame.
    outbox.close();
}

/// Waits for the end of the connection's session (sign-out or expiry) or of the server, and
/// asks the send side to close with the code that says which.
async fn watch_endings(
    mut shutdown: watch::Receiver<bool>,
    session: impl Future<Output = &'static str>,
    replies: mpsc::Sender<Outgoing>,
) {
    let close = tokio::select! {
        _ = shutdown.changed() => Outgoing::Close(1001, "server shutting down"),
        reason = session => Outgoing::Close(CLOSE_CODE_SIGNED_OUT, reason),
    };
    // The send side may have ended already; then there is nothing to close.
    let _ = replies.send(close).await;
}

/// How long a connection stays open after its close frame is written, for the client to read
/// it and answer; also how long the send side has to write it.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Why the send side ends.
enum Ending {
    /// The client went away, or the run's room is gone.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// Where a connection's live stream is written: its outbox, attached to its room.
struct Attachment {
    outbox: Arc<Outbox>,
    room: Arc<crate::hub::Room>,
}

async fn send_loop(
    mut sink: SplitSink<Socket, Message>,
    subscription: Subscription,
    attachment: Attachment,
    store: Option<Arc<dyn Store>>,
    mut replies: mpsc::Receiver<Outgoing>,
    config: StreamConfig,
    heard: Arc<AtomicBool>,
) {
    // The room's shard writes the live stream, from the end of the backlog on.
    let Subscription { backlog, live: _, mut position, from_store } = subscription;
    let Attachment { outbox, room } = attachment;
    let dag_id = room.dag_id().to_owned();
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
        room.attach(&outbox, position);
        // The shard holds the room only weakly; so does this connection from now on.
        drop(room);
        let mut ping = tokio::time::interval(config.ping_interval);
        ping.reset();
        loop {
            // In order: this client's replies and the endings ([`watch_endings`] queues them;
            // few, rate-limited), then the live stream's end.
            tokio::select! {
                biased;
                Some(outgoing) = replies.recv() => match outgoing {
                    Outgoing::Reply(message) => {
                        // Stamped with the client's position so it is never mistaken for a gap.
                        let reply = |seq| encode(&ServerEvent { seq, body: ServerEventBody::Error { node_id: None, message } });
                        if outbox.send_at_position(reply).is_err() {
                            return Ending::Gone;
                        }
                    }
                    Outgoing::Close(code, reason) => return Ending::Close(code, reason),
                },
                ended = outbox.follow() => match ended {
                    Live::TooSlow => {
                        metrics::counter!(crate::metrics::STREAM_CLOSES, "code" => "4008").increment(1);
                        return Ending::Close(CLOSE_CODE_TOO_SLOW, "too slow: reconnect with since to resync");
                    }
                    Live::Starting | Live::Following | Live::RoomGone | Live::Broken | Live::Closed => {
                        return Ending::Gone;
                    }
                },
                _ = ping.tick() => {
                    if !heard.swap(false, Ordering::Relaxed) {
                        return Ending::Close(1001, "no answer to ping");
                    }
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        return Ending::Gone;
                    }
                }
            }
        }
    }
    .await;
    if let Ending::Close(code, reason) = ending {
        let frame = CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from_static(reason) };
        // The peer may already be gone, or never read again; there is nothing more to do either way.
        let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(Message::Close(Some(frame)))).await;
    }
}

/// Why the receive side ended.
enum Received {
    /// The client closed the connection (or answered the server's close), or went away.
    Gone,
    /// The client sent something that is not a readable frame; the send side was asked to close.
    Unreadable,
}

async fn receive_loop(
    mut stream: SplitStream<Socket>,
    service: Service,
    run: RunEntry,
    replies: mpsc::Sender<Outgoing>,
    heard: Arc<AtomicBool>,
    identity: Identity,
    config: StreamConfig,
) -> Received {
    let mut rate = ClientEventRate::new(config.client_events_per_second);
    // Set once the send side was asked to close: from then on messages are read and dropped,
    // until the client answers the close.
    let mut closing = false;
    while let Some(received) = stream.next().await {
        let message = match received {
            Ok(message) => message,
            Err(error) => {
                // Beyond even the read limit, or not a valid frame: say so if we still can.
                let Some(close) = unreadable(error) else { return Received::Gone };
                if !closing {
                    let _ = replies.send(close).await;
                }
                return Received::Unreadable;
            }
        };
        heard.store(true, Ordering::Relaxed);
        if closing {
            continue;
        }
        let size = match &message {
            Message::Text(text) => text.len(),
            Message::Binary(bytes) => bytes.len(),
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => 0,
        };
        if size > MAX_CLIENT_MESSAGE {
            closing = true;
            let _ = replies.send(Outgoing::Close(1009, TOO_BIG)).await;
            continue;
        }
        let complaint = match message {
            Message::Text(_) if !rate.allow(Instant::now()) => Some(format!(
                "too many messages: at most {} per second; this one was dropped",
                config.client_events_per_second
            )),
            Message::Text(text) => match serde_json::from_str::<ClientEvent>(text.as_str()) {
                Ok(event) => service.command(&run, &identity.signed_in(), event).await.err().map(|e| e.to_string()),
                Err(error) => Some(format!("could not read your message: {error}")),
            },
            Message::Binary(_) => Some("binary messages are not accepted: send JSON text".to_owned()),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
            Message::Close(_) => break,
        };
        if let Some(message) = complaint
            && replies.send(Outgoing::Reply(message)).await.is_err()
        {
            break;
        }
    }
    Received::Gone
}

/// The close to send for a read error; `None` when the connection itself ended (the client
/// went away, with or without a closing handshake).
fn unreadable(error: tungstenite::Error) -> Option<Outgoing> {
    use tungstenite::error::ProtocolError;
    match error {
        tungstenite::Error::Capacity(_) => Some(Outgoing::Close(1009, TOO_BIG)),
        tungstenite::Error::Utf8(_) => Some(Outgoing::Close(1007, "text that is not UTF-8")),
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
        | tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Io(_) => None,
        tungstenite::Error::Protocol(_)
        | tungstenite::Error::Tls(_)
        | tungstenite::Error::WriteBufferFull(_)
        | tungstenite::Error::Url(_)
        | tungstenite::Error::Http(_)
        | tungstenite::Error::HttpFormat(_)
        | tungstenite::Error::AttackAttempt => Some(Outgoing::Close(1002, "unreadable frame")),
    }
}

/// The reason of the 1009 close.
const TOO_BIG: &str = "message too big: the limit is 64 KiB";

/// How many messages one client may send: a token bucket of `per_second` tokens a second, at
/// most `per_second` saved up.
struct ClientEventRate {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl ClientEventRate {
    fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        ClientEventRate { per_second, tokens: per_second, last: Instant::now() }
    }

    /// Takes a token if there is one.
    fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ClientEventRate;
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn the_rate_limit_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut rate = ClientEventRate { per_second: 20.0, tokens: 20.0, last: start };
        let burst = (0..30).filter(|_| rate.allow(start)).count();
        assert_eq!(burst, 20, "a full bucket, then nothing");
        let later = start + Duration::from_millis(500);
        let refilled = (0..30).filter(|_| rate.allow(later)).count();
        assert_eq!(refilled, 10, "half a second buys ten more");
    }
}
