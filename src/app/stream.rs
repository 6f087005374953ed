//! `use_dag_stream`: the hook that owns a run's WebSocket, keeps the [`LiveRun`] in step with
//! the server, and sends client events.
//!
//! Same signature on both targets; on the server it only reports [`Connection::Connecting`].
//! In the browser it connects to `/api/dags/{dag_id}/stream?since=SEQ` with the live run's last
//! applied `seq`, so the first connection after hydration and every reconnect resume exactly
//! where the live run is. A `seq` gap closes the socket and resyncs at once; a dropped connection
//! is retried after 1 s, 2 s, 4 s, ... capped at 30 s, with jitter, and the attempt counter
//! resets once a connection opens.

use std::sync::Arc;

use leptos::prelude::*;
use leptos_use_interval_fn::use_interval_fn;

use super::live_run::LiveRun;
use crate::protocol::ClientEvent;

/// The state of the stream connection, as the indicator shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    /// The first connection is being opened (also what the server renders).
    Connecting,
    /// Open: the page is live.
    Live,
    /// Closed; the next attempt (`attempt`, counting from 1) starts in `in_secs` seconds.
    Reconnecting { attempt: u32, in_secs: u32 },
    /// The browser says it has no network; it reconnects as soon as the network is back.
    Offline,
}

/// Sends one text frame on the open socket; `Err` says why it could not.
/// Thread-safe storage, because the server renders on a multi-threaded runtime; only the browser
/// (one thread) ever puts a sender in it.
type Outbox = StoredValue<Option<Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>>>;

/// What [`use_dag_stream`] gives a component.
#[derive(Clone, Copy)]
pub struct DagStream {
    pub connection: Signal<Connection>,
    /// The newest refusal of one of this page's own messages (an `error` sent to this client
    /// only), or a local reason a message could not be sent.
    pub notice: RwSignal<Option<String>>,
    outbox: Outbox,
}

impl DagStream {
    /// Sends a client event; if there is no open connection the reason becomes the notice.
    pub fn send(&self, event: &ClientEvent) {
        let text = match serde_json::to_string(event) {
            Ok(text) => text,
            Err(error) => return self.notice.set(Some(format!("could not encode the message: {error}"))),
        };
        let sent = self
            .outbox
            .with_value(|outbox| outbox.as_ref().map(|send| send(&text)))
            .unwrap_or_else(|| Err("not connected yet".to_owned()));
        match sent {
            Ok(()) => self.notice.set(None),
            Err(reason) => self.notice.set(Some(format!("not sent: {reason}"))),
        }
    }
}

/// Delay before reconnect attempt number `attempt` (0 for the first retry after a close):
/// 1 s, 2 s, 4 s, ... capped at 30 s, spread by ±20 % with `jitter` in `0.0..1.0`.
pub fn backoff_delay_ms(attempt: u32, jitter: f64) -> u32 {
    const BASE_MS: f64 = 1000.0;
    const CAP_MS: f64 = 30_000.0;
    let base = (BASE_MS * 2f64.powi(attempt.min(16) as i32)).min(CAP_MS);
    let spread = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    (base * spread).min(CAP_MS).round() as u32
}

/// Streams run `dag_id` into `live_run`. Call once per run view; the connection closes when the
/// calling component is unmounted.
pub fn use_dag_stream(dag_id: String, live_run: LiveRun) -> DagStream {
    let connection = RwSignal::new(Connection::Connecting);
    let notice = RwSignal::new(None);
    let outbox = StoredValue::new(None);
    // Counts the reconnect countdown down; ignored on the server.
    let _ = use_interval_fn(
        move || {
            connection.update(|c| {
                if let Connection::Reconnecting { in_secs, .. } = c {
                    *in_secs = in_secs.saturating_sub(1);
                }
            })
        },
        1000,
    );
    #[cfg(feature = "hydrate")]
    browser::start(dag_id, live_run, connection, notice, outbox);
    #[cfg(not(feature = "hydrate"))]
    let _ = (dag_id, live_run);
    DagStream { connection: connection.into(), notice, outbox }
}

/// A snapshot of a one-node run with every field set, read and applied once while the page waits
/// for the real one ([`browser`] does it right after hydration). The browser compiles each wasm
/// function on its first call; reading and applying a snapshot runs a few hundred functions for the
/// first time, compiled in the tasks that handle a large run's first snapshot (up to half of each)
/// unless something ran them before.
#[cfg(any(feature = "hydrate", test))]
const WARM_UP_SNAPSHOT: &str = r#"{"type":"snapshot","seq":2,"run":{"dag_id":"warm-up","name":"warm-up","seq":2,
"state":"running","started_at":"2026-01-01T00:00:00Z","nodes":{"a":{"id":"a","label":"A","kind":"gate","needs":["b"],
"status":"waiting","output":{"k":[1,-2,3.5,"s",true,null]},"metrics":{"duration_ms":1,"cost":0.5,"tokens_in":1,
"tokens_out":2,"attempt":1,"started_at":"2026-01-01T00:00:00Z","finished_at":"2026-01-01T00:00:01Z"},
"gate":{"title":"t","prompt":"p","options":["approve","reject","modify"],"context":{"c":1},"cost_so_far":0.5,
"timeout_at":"2026-01-01T00:01:00Z"},"active_inputs":["b"],"log_tail":[{"stream":"stdout","line":"l"}]}},
"cost":{"spent":0.5,"budget":1.0,"remaining":0.5},"decisions":[{"seq":1,"node_id":"a","decision":"modify",
"feedback":"f","decided_by":"d","decided_at":"2026-01-01T00:00:01Z"}],"errors":[{"seq":1,"node_id":"a","message":"m"}]}}"#;

#[cfg(feature = "hydrate")]
mod browser {
    //! The browser side of the hook: a `web_sys::WebSocket` and its reconnect loop.

    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;
    use std::rc::{Rc, Weak};
    use std::sync::Arc;
    use std::time::Duration;

    use leptos::prelude::*;
    use send_wrapper::SendWrapper;
    use wasm_bindgen::JsCast;
    use wasm_bindgen::prelude::Closure;
    use web_sys::{CloseEvent, MessageEvent, WebSocket};

    use super::{Connection, backoff_delay_ms};
    use crate::app::live_run::LiveRun;
    use crate::protocol::{Applied, RunState, ServerEvent, ServerEventBody};

    /// Close code the client uses when it saw a gap and reconnects to resync.
    const CLOSE_RESYNC: u16 = 4000;

    /// Everything one hook instance needs across callbacks.
    struct Link {
        dag_id: String,
        live_run: LiveRun,
        connection: RwSignal<Connection>,
        notice: RwSignal<Option<String>>,
        /// Reconnect attempts since the last open connection.
        attempt: Cell<u32>,
        /// Set when a gap was seen: reconnect without waiting.
        resync_now: Cell<bool>,
        /// The current socket with its handlers.
        socket: RefCell<Option<Socket>>,
        /// The pending reconnect timer.
        retry: RefCell<Option<TimeoutHandle>>,
        /// Set when the component is gone: nothing reconnects any more.
        disposed: Cell<bool>,
        /// Events read but not applied yet, oldest first. A snapshot is applied in a task after
        /// the one that read it (reading a large run's snapshot and redrawing from it in one
        /// task was too long), and whatever arrives meanwhile waits behind it, in order.
        queue: RefCell<VecDeque<ServerEvent>>,
    }

    /// A socket and the closures its handlers point at (they must live as long as it does).
    struct Socket {
        ws: WebSocket,
        _on_open: Closure<dyn FnMut()>,
        _on_message: Closure<dyn FnMut(MessageEvent)>,
        _on_close: Closure<dyn FnMut(CloseEvent)>,
    }

    impl Drop for Socket {
        fn drop(&mut self) {
            self.ws.set_onopen(None);
            self.ws.set_onmessage(None);
            self.ws.set_onclose(None);
            // Closing a socket that is already closed is a no-op.
            let _ = self.ws.close();
        }
    }

    pub(super) fn start(
        dag_id: String,
        live_run: LiveRun,
        connection: RwSignal<Connection>,
        notice: RwSignal<Option<String>>,
        outbox: super::Outbox,
    ) {
        let link = Rc::new(Link {
            dag_id,
            live_run,
            connection,
            notice,
            attempt: Cell::new(0),
            resync_now: Cell::new(false),
            socket: RefCell::new(None),
            retry: RefCell::new(None),
            disposed: Cell::new(false),
            queue: RefCell::new(VecDeque::new()),
        });
        // The browser has one thread, so the wrapper's "same thread" check always holds.
        let weak = SendWrapper::new(Rc::downgrade(&link));
        outbox.set_value(Some(Arc::new(move |text: &str| {
            let link = weak.upgrade().ok_or_else(|| "the page is closing".to_owned())?;
            let socket = link.socket.borrow();
            match socket.as_ref() {
                Some(socket) if socket.ws.ready_state() == WebSocket::OPEN => {
                    socket.ws.send_with_str(text).map_err(|_| "the connection refused it".to_owned())
                }
                Some(_) | None => Err("not connected; try again once the page is live".to_owned()),
            }
        })));
        connect(&link);
        // In a task of its own, before the first snapshot arrives.
        set_timeout(warm_up, Duration::ZERO);
        let offline = {
            let weak = SendWrapper::new(Rc::downgrade(&link));
            window_event_listener(leptos::ev::offline, move |_| {
                if let Some(link) = weak.upgrade() {
                    link.connection.set(Connection::Offline);
                }
            })
        };
        let online = {
            let weak = SendWrapper::new(Rc::downgrade(&link));
            window_event_listener(leptos::ev::online, move |_| {
                // Back online: try at once instead of waiting out the backoff.
                if let Some(link) = weak.upgrade() {
                    if let Some(timer) = link.retry.borrow_mut().take() {
                        timer.clear();
                    }
                    if link.connection.get_untracked() != Connection::Live {
                        link.attempt.set(0);
                        connect(&link);
                    }
                }
            })
        };
        on_cleanup(move || {
            offline.remove();
            online.remove();
        });
        let guard = SendWrapper::new(link);
        on_cleanup(move || {
            let link = guard.take();
            link.disposed.set(true);
            if let Some(timer) = link.retry.borrow_mut().take() {
                timer.clear();
            }
            link.socket.borrow_mut().take();
        });
    }

    /// Reads [`super::WARM_UP_SNAPSHOT`] and applies it to a live run of its own, which nothing
    /// shows and which is dropped at once: the functions that read and apply a snapshot are then
    /// compiled before the run's first snapshot arrives.
    fn warm_up() {
        let Ok(event) = serde_json::from_str::<ServerEvent>(super::WARM_UP_SNAPSHOT) else { return };
        let owner = Owner::new();
        owner.with(|| {
            let live_run = LiveRun::new(RunState::new("warm-up", "warm-up", "", 0.0, []));
            live_run.apply_owned(event);
        });
        owner.cleanup();
    }

    fn connect(link: &Rc<Link>) {
        if link.disposed.get() {
            return;
        }
        // A live run without its nodes yet asks for a snapshot; otherwise for what it missed.
        let since = link.live_run.nodes_loaded.get_untracked().then(|| link.live_run.seq.get_untracked());
        let url = stream_url(&link.dag_id, since);
        let ws = match WebSocket::new(&url) {
            Ok(ws) => ws,
            Err(_) => return schedule_reconnect(link),
        };
        let on_open = {
            let weak = Rc::downgrade(link);
            Closure::<dyn FnMut()>::new(move || {
                if let Some(link) = weak.upgrade() {
                    link.attempt.set(0);
                    link.connection.set(Connection::Live);
                }
            })
        };
        let on_message = {
            let weak = Rc::downgrade(link);
            Closure::<dyn FnMut(MessageEvent)>::new(move |message: MessageEvent| {
                if let (Some(link), Some(text)) = (weak.upgrade(), message.data().as_string()) {
                    on_text(&link, &text);
                }
            })
        };
        let on_close = {
            let weak = Rc::downgrade(link);
            Closure::<dyn FnMut(CloseEvent)>::new(move |_: CloseEvent| {
                if let Some(link) = weak.upgrade() {
                    // The socket (and this closure) is dropped by the next `connect`, not here.
                    schedule_reconnect(&link);
                }
            })
        };
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        let socket = Socket { ws, _on_open: on_open, _on_message: on_message, _on_close: on_close };
        link.socket.replace(Some(socket));
    }

    fn on_text(link: &Rc<Link>, text: &str) {
        let event: ServerEvent = match serde_json::from_str(text) {
            Ok(event) => event,
            Err(error) => {
                leptos::logging::warn!("dagstream: ignoring a message that is not a known event: {error}");
                return;
            }
        };
        let is_snapshot = matches!(event.body, ServerEventBody::Snapshot { .. });
        let mut queue = link.queue.borrow_mut();
        if queue.is_empty() && !is_snapshot {
            drop(queue);
            apply(link, event);
            return;
        }
        queue.push_back(event);
        if queue.len() == 1 {
            // The first in the queue schedules the task that empties it.
            let weak = Rc::downgrade(link);
            set_timeout(
                move || {
                    if let Some(link) = weak.upgrade() {
                        drain(&link);
                    }
                },
                Duration::ZERO,
            );
        }
    }

    /// Applies the queued events in order (see [`Link::queue`]).
    fn drain(link: &Rc<Link>) {
        loop {
            let Some(event) = link.queue.borrow_mut().pop_front() else { return };
            apply(link, event);
        }
    }

    fn apply(link: &Rc<Link>, event: ServerEvent) {
        // A private reply about one of our messages carries our position: not newer than what we
        // have, so the live run calls it stale and it is shown instead.
        let reply = if let ServerEventBody::Error { node_id: None, message } = &event.body {
            Some(message.clone())
        } else {
            None
        };
        match link.live_run.apply_owned(event) {
            Applied::Folded => {}
            Applied::Stale => {
                if let Some(message) = reply {
                    link.notice.set(Some(message));
                }
            }
            Applied::Gap { .. } => {
                link.resync_now.set(true);
                if let Some(socket) = link.socket.borrow().as_ref() {
                    let _ = socket.ws.close_with_code_and_reason(CLOSE_RESYNC, "gap: resyncing");
                }
            }
        }
    }

    fn schedule_reconnect(link: &Rc<Link>) {
        if link.disposed.get() || link.retry.borrow().is_some() {
            return;
        }
        let attempt = link.attempt.get();
        let delay_ms =
            if link.resync_now.replace(false) { 0 } else { backoff_delay_ms(attempt, js_sys::Math::random()) };
        link.attempt.set(attempt + 1);
        let online = window().navigator().on_line();
        link.connection.set(if online {
            Connection::Reconnecting { attempt: attempt + 1, in_secs: delay_ms.div_ceil(1000) }
        } else {
            Connection::Offline
        });
        let weak: Weak<Link> = Rc::downgrade(link);
        let timer = set_timeout_with_handle(
            move || {
                if let Some(link) = weak.upgrade() {
                    link.retry.borrow_mut().take();
                    connect(&link);
                }
            },
            Duration::from_millis(u64::from(delay_ms)),
        );
        if let Ok(timer) = timer {
            link.retry.replace(Some(timer));
        }
    }

    fn stream_url(dag_id: &str, since: Option<u64>) -> String {
        let location = window().location();
        let scheme = match location.protocol().as_deref() {
            Ok("https:") => "wss",
            _ => "ws",
        };
        let host = location.host().unwrap_or_default();
        let since = since.map(|seq| format!("?since={seq}")).unwrap_or_default();
        format!("{scheme}://{host}/api/dags/{dag_id}/stream{since}")
    }
}

#[cfg(test)]
mod tests {
    use super::{WARM_UP_SNAPSHOT, backoff_delay_ms};
    use crate::protocol::{ServerEvent, ServerEventBody};

    #[test]
    fn the_warm_up_snapshot_is_a_snapshot_with_every_field_of_a_node_set() {
        let event: ServerEvent = serde_json::from_str(WARM_UP_SNAPSHOT).expect("the warm-up text is a server event");
        let ServerEventBody::Snapshot { run } = event.body else { panic!("not a snapshot: {event:?}") };
        let node = &run.nodes["a"];
        assert!(node.output.is_some() && node.gate.is_some() && node.metrics.finished_at.is_some());
        assert!(!node.needs.is_empty() && !node.active_inputs.is_empty() && !node.log_tail.is_empty());
        assert!(!run.decisions.is_empty() && !run.errors.is_empty() && run.cost.budget > 0.0);
    }

    #[test]
    fn backoff_doubles_from_one_second_and_caps_at_thirty() {
        let middle: Vec<u32> = (0..8).map(|attempt| backoff_delay_ms(attempt, 0.5)).collect();
        assert_eq!(middle, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        assert_eq!(backoff_delay_ms(0, 0.0), 800);
        assert_eq!(backoff_delay_ms(0, 1.0), 1200);
        assert_eq!(backoff_delay_ms(10, 1.0), 30000, "jitter never exceeds the cap");
        assert_eq!(backoff_delay_ms(u32::MAX, 0.5), 30000);
    }
}
