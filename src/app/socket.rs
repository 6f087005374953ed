//! One reconnecting WebSocket for the browser, shared by the run stream ([`super::stream`]) and
//! the run list feed ([`super::runs_feed`]): the URL of this page's server, connect, a retry after
//! 1 s, 2 s, 4 s, ... capped at 30 s with jitter (the attempt count resets once a connection
//! opens), an immediate reconnect on request (a resync), and teardown when the page goes.
//!
//! Hand-written on `web_sys::WebSocket` rather than on leptos-use's `use_websocket`
//! (`leptos-use-websocket` 0.20): its reconnect waits a fixed `reconnect_interval` with no
//! backoff or jitter (a thousand dashboards would come back in step after a restart), and its URL
//! is fixed when the hook is made, while the run stream must ask for `since=` its newest `seq` on
//! every reconnect. Wrapping it to get both would leave it only opening sockets.

/// Delay before reconnect attempt number `attempt` (0 for the first retry after a close):
/// 1 s, 2 s, 4 s, ... capped at 30 s, spread by ±20 % with `jitter` in `0.0..1.0`.
pub fn backoff_delay_ms(attempt: u32, jitter: f64) -> u32 {
    const BASE_MS: f64 = 1000.0;
    const CAP_MS: f64 = 30_000.0;
    let base = (BASE_MS * 2f64.powi(attempt.min(16) as i32)).min(CAP_MS);
    let spread = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    (base * spread).min(CAP_MS).round() as u32
}

#[cfg(feature = "hydrate")]
pub use browser::{Handlers, Reconnecting};

#[cfg(feature = "hydrate")]
mod browser {
    //! The socket itself.

    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    use std::time::Duration;

    use leptos::prelude::*;
    use wasm_bindgen::JsCast;
    use wasm_bindgen::prelude::Closure;
    use web_sys::{CloseEvent, MessageEvent, WebSocket};

    use super::backoff_delay_ms;

    /// Close code the client uses when it reconnects on purpose (to resync).
    const CLOSE_RESYNC: u16 = 4000;

    /// What the owner of a socket is told.
    pub struct Handlers {
        /// The address of the next connection, a path on this page's server (with its query).
        pub path: Box<dyn Fn() -> String>,
        /// A connection opened.
        pub on_open: Box<dyn Fn()>,
        /// A text message arrived.
        pub on_text: Box<dyn Fn(&str)>,
        /// The connection closed; the next attempt (`attempt`, from 1) starts in `delay_ms`.
        pub on_retry: Box<dyn Fn(u32, u32)>,
    }

    /// A WebSocket that reconnects until it is closed (or dropped).
    pub struct Reconnecting {
        inner: Rc<Inner>,
    }

    struct Inner {
        handlers: Handlers,
        /// Reconnect attempts since the last open connection.
        attempt: Cell<u32>,
        /// Set by [`Reconnecting::resync`]: the next reconnect does not wait.
        at_once: Cell<bool>,
        socket: RefCell<Option<Socket>>,
        /// The pending reconnect timer.
        retry: RefCell<Option<TimeoutHandle>>,
        /// Set when the owner is gone: nothing reconnects any more.
        closed: Cell<bool>,
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

    impl Reconnecting {
        /// Connects now, and again after every close until [`Reconnecting::close`].
        pub fn open(handlers: Handlers) -> Self {
            let inner = Rc::new(Inner {
                handlers,
                attempt: Cell::new(0),
                at_once: Cell::new(false),
                socket: RefCell::new(None),
                retry: RefCell::new(None),
                closed: Cell::new(false),
            });
            connect(&inner);
            Reconnecting { inner }
        }

        /// Sends a text message on the open connection; `Err` says why it could not.
        pub fn send(&self, text: &str) -> Result<(), String> {
            match self.inner.socket.borrow().as_ref() {
                Some(socket) if socket.ws.ready_state() == WebSocket::OPEN => {
                    socket.ws.send_with_str(text).map_err(|_| "the connection refused it".to_owned())
                }
                Some(_) | None => Err("not connected; try again once the page is live".to_owned()),
            }
        }

        /// Closes the connection and reconnects at once (the owner saw a gap).
        pub fn resync(&self) {
            self.inner.at_once.set(true);
            if let Some(socket) = self.inner.socket.borrow().as_ref() {
                let _ = socket.ws.close_with_code_and_reason(CLOSE_RESYNC, "gap: resyncing");
            }
        }

        /// Tries at once instead of waiting out the backoff (the network is back).
        pub fn retry_now(&self) {
            if let Some(timer) = self.inner.retry.borrow_mut().take() {
                timer.clear();
                self.inner.attempt.set(0);
                connect(&self.inner);
            }
        }

        /// Closes the connection for good.
        pub fn close(&self) {
            self.inner.closed.set(true);
            if let Some(timer) = self.inner.retry.borrow_mut().take() {
                timer.clear();
            }
            self.inner.socket.borrow_mut().take();
        }
    }

    impl Drop for Reconnecting {
        fn drop(&mut self) {
            self.close();
        }
    }

    /// The `ws:` or `wss:` URL of `path` on this page's server.
    fn url_of(path: &str) -> String {
        let location = window().location();
        let scheme = match location.protocol().as_deref() {
            Ok("https:") => "wss",
            _ => "ws",
        };
        format!("{scheme}://{}{path}", location.host().unwrap_or_default())
    }

    fn connect(inner: &Rc<Inner>) {
        if inner.closed.get() {
            return;
        }
        let ws = match WebSocket::new(&url_of(&(inner.handlers.path)())) {
            Ok(ws) => ws,
            Err(_) => return schedule_reconnect(inner),
        };
        let on_open = {
            let weak = Rc::downgrade(inner);
            Closure::<dyn FnMut()>::new(move || {
                if let Some(inner) = weak.upgrade() {
                    inner.attempt.set(0);
                    (inner.handlers.on_open)();
                }
            })
        };
        let on_message = {
            let weak = Rc::downgrade(inner);
            Closure::<dyn FnMut(MessageEvent)>::new(move |message: MessageEvent| {
                if let (Some(inner), Some(text)) = (weak.upgrade(), message.data().as_string()) {
                    (inner.handlers.on_text)(&text);
                }
            })
        };
        let on_close = {
            let weak = Rc::downgrade(inner);
            Closure::<dyn FnMut(CloseEvent)>::new(move |_: CloseEvent| {
                if let Some(inner) = weak.upgrade() {
                    // The socket (and this closure) is dropped by the next `connect`, not here.
                    schedule_reconnect(&inner);
                }
            })
        };
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        let socket = Socket { ws, _on_open: on_open, _on_message: on_message, _on_close: on_close };
        inner.socket.replace(Some(socket));
    }

    fn schedule_reconnect(inner: &Rc<Inner>) {
        if inner.closed.get() || inner.retry.borrow().is_some() {
            return;
        }
        let attempt = inner.attempt.get();
        let delay_ms = if inner.at_once.replace(false) { 0 } else { backoff_delay_ms(attempt, js_sys::Math::random()) };
        inner.attempt.set(attempt + 1);
        (inner.handlers.on_retry)(attempt + 1, delay_ms);
        let weak = Rc::downgrade(inner);
        let timer = set_timeout_with_handle(
            move || {
                if let Some(inner) = weak.upgrade() {
                    inner.retry.borrow_mut().take();
                    connect(&inner);
                }
            },
            Duration::from_millis(u64::from(delay_ms)),
        );
        if let Ok(timer) = timer {
            inner.retry.replace(Some(timer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backoff_delay_ms;

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
