//! The inbox: every gate that waits for the signed-in person, across all runs, live from the
//! inbox feed (`/api/inbox/stream`). The feed runs on every page ([`provide_inbox`]): the top bar
//! shows the count ([`InboxCount`]) and the page title carries it (`(2) dagstream`); with the
//! person's permission the browser raises a notification when a new gate waits for them. The
//! inbox page (`/inbox`, [`inbox_page`]) lists the gates, the longest waiting first, and each is
//! decided in place.

use leptos::prelude::*;

use super::clock::{format_elapsed, parse_ms, use_now};
use super::gate_card::GateCardView;
use super::live_run::GateCard;
use crate::protocol::{ClientEvent, InboxFeedEvent, InboxGate, Role};

/// The gates that wait for the signed-in person, for the inbox page's first render.
#[server(endpoint = "inbox_gates", output = super::json_text::JsonText)]
pub async fn inbox_gates() -> Result<Vec<InboxGate>, ServerFnError> {
    Ok(super::service()?.inbox(&super::caller()?))
}

/// Decides a gate of run `dag_id` from outside its run view (the inbox): the same command a
/// run's stream takes, judged the same way.
#[server(endpoint = "decide_gate", input = super::json_text::JsonText)]
pub async fn decide_gate(dag_id: String, event: ClientEvent) -> Result<(), ServerFnError> {
    let service = super::service()?;
    let run = service.find(&dag_id).await.map_err(super::server_error)?;
    service.command(&run, &super::caller()?, event).await.map_err(super::server_error)
}

/// The inbox as every page shares it.
#[derive(Clone, Copy)]
pub struct Inbox {
    /// The gates, the longest waiting first.
    pub gates: RwSignal<Vec<InboxGate>>,
    /// Whether the feed's first message arrived (the list is current).
    pub live: RwSignal<bool>,
}

/// Starts the inbox feed for the page (in the browser) and shares it. Called at the root, by the
/// server and the browser alike, before the top bar and the page.
pub fn provide_inbox() {
    let inbox = Inbox { gates: RwSignal::new(Vec::new()), live: RwSignal::new(false) };
    #[cfg(feature = "hydrate")]
    browser::start(inbox);
    provide_context(inbox);
}

/// Applies one feed message to the list, the longest waiting first.
pub fn apply(list: &mut Vec<InboxGate>, event: InboxFeedEvent) {
    match event {
        InboxFeedEvent::Inbox { gates } => *list = gates,
        InboxFeedEvent::RunGates { dag_id, gates } => {
            list.retain(|gate| gate.dag_id != dag_id);
            list.extend(gates);
        }
    }
    list.sort_by(|a, b| a.waiting_since.cmp(&b.waiting_since).then_with(|| a.node_id.cmp(&b.node_id)));
}

/// The top bar's link to the inbox, with how many gates wait (once the feed is live); the page
/// title says it too.
#[component]
pub fn InboxCount() -> impl IntoView {
    let inbox = expect_context::<Inbox>();
    let count = move || inbox.live.get().then(|| inbox.gates.with(Vec::len));
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        let title = match count() {
            Some(n) if n > 0 => format!("({n}) dagstream"),
            Some(_) | None => "dagstream".to_owned(),
        };
        document().set_title(&title);
    });
    view! {
        <a href="/inbox" class="inbox-link" data-testid="inbox-link">
            "Inbox"
            {move || {
                count().map(|n| {
                    view! {
                        <span class={if n > 0 { "badge count waiting" } else { "badge count" }} data-testid="inbox-count">
                            {n}
                        </span>
                    }
                })
            }}
        </a>
    }
}

/// The inbox page. Its code is split out of the main wasm and loaded before the page hydrates
/// (see [`super::page`]).
#[lazy]
pub fn inbox_page() -> AnyView {
    view! { <InboxPage/> }.into_any()
}

#[component]
fn InboxPage() -> impl IntoView {
    let first = Resource::new(|| (), |_| inbox_gates());
    let user = expect_context::<super::SignedInUser>();
    view! {
        <section class="page inbox" data-testid="inbox">
            <div class="page-head">
                <h1>"Inbox"</h1>
                <NotifyMe/>
            </div>
            <Suspense fallback=|| view! { <p class="empty">"Loading your gates…"</p> }>
                {move || Suspend::new(async move {
                    let may_decide = user.has(Role::Approver).await;
                    match first.await {
                        Ok(initial) => view! { <InboxList initial may_decide/> }.into_any(),
                        Err(error) => {
                            view! { <p class="notice error">"Could not load your gates: " {error.to_string()}</p> }
                                .into_any()
                        }
                    }
                })}
            </Suspense>
        </section>
    }
}

/// The list: first as the server rendered it, then as the feed keeps it.
#[component]
fn InboxList(initial: Vec<InboxGate>, may_decide: bool) -> impl IntoView {
    let inbox = expect_context::<Inbox>();
    let shown = RwSignal::new(initial);
    Effect::new(move |_| {
        if inbox.live.get() {
            shown.set(inbox.gates.get());
        }
    });
    let notice: RwSignal<Option<String>> = RwSignal::new(None);
    let now = use_now();
    view! {
        <p class="notice error" data-testid="notice" role="alert" hidden=move || notice.with(Option::is_none)>
            {move || notice.get()}
        </p>
        <Show
            when=move || shown.with(|gates| !gates.is_empty())
            fallback=|| view! { <p class="empty" data-testid="inbox-empty">"Nothing waits for you."</p> }
        >
            <ol class="inbox-list">
                <For
                    each=move || shown.get()
                    key=|gate| (gate.dag_id.clone(), gate.node_id.clone(), gate.approved_by.len())
                    let:gate
                >
                    {
                        let dag_id = gate.dag_id.clone();
                        let send = Callback::new(move |event: ClientEvent| {
                            let dag_id = dag_id.clone();
                            leptos::task::spawn_local(async move {
                                match decide_gate(dag_id, event).await {
                                    Ok(()) => notice.set(None),
                                    Err(error) => notice.set(Some(server_message(&error))),
                                }
                            });
                        });
                        let since = gate.waiting_since.as_deref().and_then(parse_ms);
                        let waited = move || since.map(|since| format_elapsed(now.get() - since)).unwrap_or_default();
                        let spend = if gate.cost.budget > 0.0 {
                            format!("spent ${:.2} of ${:.2}", gate.cost.spent, gate.cost.budget)
                        } else {
                            format!("spent ${:.2}", gate.cost.spent)
                        };
                        let card = GateCard {
                            node_id: gate.node_id.clone(),
                            label: gate.label.clone(),
                            presentation: gate.presentation.clone(),
                            approved_by: gate.approved_by.clone(),
                        };
                        view! {
                            <li class="inbox-item" data-testid="inbox-item" data-dag-id=gate.dag_id.clone() data-node-id=gate.node_id.clone()>
                                <p class="inbox-run small">
                                    <a href=format!("/dags/{}", gate.dag_id)>{gate.run_name.clone()}</a>
                                    " · waiting " <span data-testid="waited">{waited}</span>
                                    " · " {spend}
                                </p>
                                <GateCardView card send may_steer=may_decide/>
                            </li>
                        }
                    }
                </For>
            </ol>
        </Show>
    }
}

/// What a server function's error says, without the framework's prefix.
fn server_message(error: &ServerFnError) -> String {
    let text = error.to_string();
    text.split_once(": ").map(|(_, message)| message.to_owned()).unwrap_or(text)
}

/// Asks the browser's permission to raise a notification when a new gate waits.
#[component]
fn NotifyMe() -> impl IntoView {
    let state = RwSignal::new(String::new());
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| state.set(browser::permission()));
    let ask = move |_| {
        #[cfg(feature = "hydrate")]
        browser::ask_permission(state);
    };
    view! {
        <button
            class="small"
            data-testid="notify-me"
            data-permission=move || state.get()
            hidden=move || state.with(|s| s.is_empty() || s == "granted")
            on:click=ask
        >
            "Notify me when a gate waits"
        </button>
        <span class="muted small" data-testid="notifying" hidden=move || state.with(|s| s != "granted")>
            "Notifications on"
        </span>
    }
}

#[cfg(feature = "hydrate")]
mod browser {
    //! The feed's socket, and the browser's notifications.

    use leptos::prelude::*;
    use send_wrapper::SendWrapper;
    use web_sys::{Notification, NotificationOptions, NotificationPermission};

    use super::{Inbox, apply};
    use crate::app::socket::{Handlers, Reconnecting};
    use crate::protocol::{InboxFeedEvent, InboxGate};

    pub(super) fn start(inbox: Inbox) {
        let socket = Reconnecting::open(Handlers {
            path: Box::new(|| "/api/inbox/stream".to_owned()),
            on_open: Box::new(|| {}),
            on_text: Box::new(move |text| {
                let Ok(event) = serde_json::from_str::<InboxFeedEvent>(text) else { return };
                let was_live = inbox.live.get_untracked();
                let before: Vec<(String, String)> = inbox.gates.with_untracked(|gates| gates.iter().map(key).collect());
                inbox.gates.update(|gates| apply(gates, event));
                if was_live {
                    inbox.gates.with_untracked(|gates| {
                        for gate in gates.iter().filter(|gate| !before.contains(&key(gate))) {
                            notify(gate);
                        }
                    });
                } else {
                    inbox.live.set(true);
                }
            }),
            on_retry: Box::new(move |_, _| inbox.live.set(false)),
        });
        // The browser has one thread, so the wrapper's "same thread" check always holds.
        let socket = SendWrapper::new(socket);
        on_cleanup(move || socket.take().close());
    }

    fn key(gate: &InboxGate) -> (String, String) {
        (gate.dag_id.clone(), gate.node_id.clone())
    }

    /// The browser's answer so far: `granted`, `denied` or `default` (not asked).
    pub(super) fn permission() -> String {
        match Notification::permission() {
            NotificationPermission::Granted => "granted",
            NotificationPermission::Denied => "denied",
            _ => "default",
        }
        .to_owned()
    }

    pub(super) fn ask_permission(state: RwSignal<String>) {
        let Ok(promise) = Notification::request_permission() else { return };
        leptos::task::spawn_local(async move {
            let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
            state.set(permission());
        });
    }

    /// A notification for a gate that just started waiting for this person, if they allowed it.
    fn notify(gate: &InboxGate) {
        if Notification::permission() != NotificationPermission::Granted {
            return;
        }
        let options = NotificationOptions::new();
        options.set_body(&format!("{} · {}", gate.run_name, gate.presentation.prompt));
        options.set_tag(&format!("{}/{}", gate.dag_id, gate.node_id));
        let _ = Notification::new_with_options(&gate.presentation.title, &options);
    }
}

#[cfg(test)]
mod tests {
    use super::apply;
    use crate::protocol::{Cost, Decision, GatePresentation, InboxFeedEvent, InboxGate};

    fn gate(dag_id: &str, node_id: &str, since: &str) -> InboxGate {
        InboxGate {
            dag_id: dag_id.into(),
            run_name: "r".into(),
            node_id: node_id.into(),
            label: node_id.into(),
            presentation: GatePresentation {
                title: "t".into(),
                prompt: String::new(),
                options: vec![Decision::Approve],
                context: None,
                cost_so_far: None,
                timeout_at: None,
                approvers: None,
                approvals: None,
                may_not_approve: Vec::new(),
                inputs: Vec::new(),
                forecast: None,
            },
            approved_by: Vec::new(),
            waiting_since: Some(since.into()),
            cost: Cost::default(),
        }
    }

    #[test]
    fn a_run_message_replaces_that_runs_gates_and_the_oldest_stays_first() {
        let mut list = Vec::new();
        apply(
            &mut list,
            InboxFeedEvent::Inbox {
                gates: vec![gate("a", "g1", "2026-12-07T10:00:00Z"), gate("b", "g", "2026-12-07T09:00:00Z")],
            },
        );
        assert_eq!(list.iter().map(|g| g.dag_id.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        apply(
            &mut list,
            InboxFeedEvent::RunGates { dag_id: "a".into(), gates: vec![gate("a", "g2", "2026-12-07T08:00:00Z")] },
        );
        assert_eq!(list.iter().map(|g| g.node_id.as_str()).collect::<Vec<_>>(), ["g2", "g"], "g1 was decided");
        apply(&mut list, InboxFeedEvent::RunGates { dag_id: "b".into(), gates: Vec::new() });
        assert_eq!(list.len(), 1);
    }
}
