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
    //! The browser side of the hook: a [`Reconnecting`] socket and what its messages do.

    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;
    use std::sync::Arc;
    use std::time::Duration;

    use leptos::prelude::*;
    use send_wrapper::SendWrapper;

    use super::Connection;
    use crate::app::live_run::LiveRun;
    use crate::app::socket::{Handlers, Reconnecting};
    use crate::protocol::{Applied, RunState, ServerEvent, ServerEventBody};

    /// Everything one hook instance needs across callbacks.
    struct Link {
        live_run: LiveRun,
        notice: RwSignal<Option<String>>,
        /// The run's socket; set right after the link is made.
        socket: RefCell<Option<Reconnecting>>,
        /// Events read but not applied yet, oldest first. A snapshot is applied in a task after
        /// the one that read it (reading a large run's snapshot and redrawing from it in one
        /// task was too long), and whatever arrives meanwhile waits behind it, in order.
        queue: RefCell<VecDeque<ServerEvent>>,
    }

    pub(super) fn start(
        dag_id: String,
        live_run: LiveRun,
        connection: RwSignal<Connection>,
        notice: RwSignal<Option<String>>,
        outbox: super::Outbox,
    ) {
        let link = Rc::new(Link { live_run, notice, socket: RefCell::new(None), queue: RefCell::new(VecDeque::new()) });
        let handlers = Handlers {
            path: Box::new(move || {
                // A live run without its nodes yet asks for a snapshot; otherwise for what it missed.
                let since = live_run.nodes_loaded.get_untracked().then(|| live_run.seq.get_untracked());
                let since = since.map(|seq| format!("?since={seq}")).unwrap_or_default();
                format!("/api/dags/{dag_id}/stream{since}")
            }),
            on_open: Box::new(move || connection.set(Connection::Live)),
            on_text: Box::new({
                let weak = Rc::downgrade(&link);
                move |text| {
                    if let Some(link) = weak.upgrade() {
                        on_text(&link, text);
                    }
                }
            }),
            on_retry: Box::new(move |attempt, delay_ms| {
                let online = window().navigator().on_line();
                connection.set(if online {
                    Connection::Reconnecting { attempt, in_secs: delay_ms.div_ceil(1000) }
                } else {
                    Connection::Offline
                });
            }),
        };
        link.socket.replace(Some(Reconnecting::open(handlers)));
        // The browser has one thread, so the wrapper's "same thread" check always holds.
        let weak = SendWrapper::new(Rc::downgrade(&link));
        outbox.set_value(Some(Arc::new(move |text: &str| {
            let link = weak.upgrade().ok_or_else(|| "the page is closing".to_owned())?;
            let socket = link.socket.borrow();
            socket.as_ref().map_or_else(|| Err("not connected yet".to_owned()), |socket| socket.send(text))
        })));
        // In a task of its own, before the first snapshot arrives.
        set_timeout(warm_up, Duration::ZERO);
        let offline = window_event_listener(leptos::ev::offline, move |_| connection.set(Connection::Offline));
        let online = {
            let weak = SendWrapper::new(Rc::downgrade(&link));
            window_event_listener(leptos::ev::online, move |_| {
                // Back online: try at once instead of waiting out the backoff.
                if let Some(link) = weak.upgrade()
                    && let Some(socket) = link.socket.borrow().as_ref()
                {
                    socket.retry_now();
                }
            })
        };
        let guard = SendWrapper::new(link);
        on_cleanup(move || {
            offline.remove();
            online.remove();
            let link = guard.take();
            // Closes the socket for good (and breaks the link's cycle through its handlers).
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
                if let Some(socket) = link.socket.borrow().as_ref() {
                    socket.resync();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WARM_UP_SNAPSHOT;
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
}
