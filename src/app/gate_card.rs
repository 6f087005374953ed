//! A waiting gate's card: title, prompt, context, spend, who decides and how far the approvals
//! got, its form, and the buttons. The run view and the inbox show the same card; each says
//! where a decision goes (`send`): the run's stream, or a server function.

use leptos::prelude::*;

use super::live_run::GateCard;
use crate::protocol::{ClientEvent, Decision, GatePresentation, InputField, InputKind, read_form};

#[component]
pub fn GateCardView(
    card: GateCard,
    send: Callback<ClientEvent>,
    may_steer: bool,
    /// Whether the page's keys decide this card (the run view's first gate).
    #[prop(optional)]
    keys: bool,
) -> impl IntoView {
    let GateCard { node_id, label, presentation, approved_by } = card;
    let quorum = quorum_line(&presentation, &approved_by);
    let feedback = RwSignal::new(String::new());
    // The form's fields as typed, by name; read for their types when a decision is sent.
    let typed: RwSignal<Vec<(String, String)>> = RwSignal::new(Vec::new());
    let form_error: RwSignal<Option<String>> = RwSignal::new(None);
    let form = StoredValue::new(presentation.inputs.clone());
    let offers_modify = presentation.options.contains(&Decision::Modify);
    let hint = keys.then(|| key_hint(&presentation.options));
    let buttons = presentation
        .options
        .iter()
        .map(|&decision| {
            let node_id = node_id.clone();
            let (class, text) = match decision {
                Decision::Approve => ("primary", "Approve"),
                Decision::Reject => ("danger", "Reject"),
                Decision::Modify => ("", "Send back with feedback"),
            };
            // Modify means "redo it like this": it is only sent with feedback.
            let disabled = move || decision == Decision::Modify && feedback.with(|f| f.trim().is_empty());
            view! {
                <button
                    class=class
                    data-testid=decision.as_str()
                    disabled=disabled
                    on:click=move |_| {
                        let text = feedback.get_untracked();
                        let feedback = (!text.trim().is_empty()).then_some(text);
                        let inputs = form.with_value(|form| {
                            typed.with_untracked(|typed| {
                                read_form(form, |name| typed.iter().find(|(n, _)| n == name).map(|(_, t)| t.as_str()))
                            })
                        });
                        match inputs {
                            Ok(inputs) => {
                                form_error.set(None);
                                send.run(ClientEvent::HumanDecision { node_id: node_id.clone(), decision, feedback, inputs })
                            }
                            Err(problem) => form_error.set(Some(problem)),
                        }
                    }
                >
                    {text}
                </button>
            }
        })
        .collect_view();
    view! {
        <article class="gate-card" data-testid=format!("gate-{node_id}")>
            <header>
                <span class="badge phase-paused">"Waiting for you"</span>
                <span class="muted">{label}</span>
            </header>
            <h2>{presentation.title.clone()}</h2>
            <p>{presentation.prompt.clone()}</p>
            {presentation
                .context
                .as_ref()
                .map(|context| {
                    let pretty = serde_json::to_string_pretty(context).unwrap_or_default();
                    view! {
                        <details class="gate-context" data-testid="gate-context">
                            <summary>"Context"</summary>
                            <pre class="output">{pretty}</pre>
                        </details>
                    }
                })}
            {presentation
                .timeout_at
                .clone()
                .map(|at| view! { <p class="muted small">{format!("Decides itself at {}", at.get(11..19).unwrap_or(&at))}</p> })}
            {presentation
                .cost_so_far
                .map(|spent| view! { <p class="muted small mono">{format!("Spent so far: ${spent:.2}")}</p> })}
            {presentation
                .forecast
                .map(|forecast| view! { <p class="muted small gate-forecast" data-testid="gate-forecast">{forecast.describe()}</p> })}
            {quorum.map(|line| view! { <p class="small gate-quorum" data-testid="gate-quorum">{line}</p> })}
            {(may_steer && !presentation.inputs.is_empty())
                .then(|| {
                    let fields = presentation.inputs.iter().map(|field| form_field(field, typed)).collect_view();
                    view! {
                        <div class="gate-form" data-testid="gate-form">
                            {fields}
                            <p class="form-error small" data-testid="form-error" role="alert">{move || form_error.get()}</p>
                        </div>
                    }
                })}
            {(offers_modify && may_steer)
                .then(|| {
                    view! {
                        <textarea
                            class="feedback"
                            data-testid="feedback"
                            placeholder="Feedback (needed to send the work back)"
                            prop:value=move || feedback.get()
                            on:input=move |ev| feedback.set(event_target_value(&ev))
                        ></textarea>
                    }
                })}
            {if may_steer {
                view! {
                    <div class="gate-actions">{buttons}</div>
                    {hint.map(|hint| view! { <p class="muted small shortcuts">{hint}</p> })}
                }
                    .into_any()
            } else {
                view! { <p class="muted small" data-testid="watch-only">"You are watching: an approver decides this gate."</p> }
                    .into_any()
            }}
        </article>
    }
}

/// One field of a gate's form; what is typed goes into `typed` under the field's name.
fn form_field(field: &InputField, typed: RwSignal<Vec<(String, String)>>) -> impl IntoView + use<> {
    let name = field.name.clone();
    let set = {
        let name = name.clone();
        move |value: String| {
            typed.update(|typed| match typed.iter_mut().find(|(n, _)| *n == name) {
                Some(entry) => entry.1 = value,
                None => typed.push((name.clone(), value)),
            })
        }
    };
    let label = field.shown_label().to_owned();
    let needed = field.is_required().then_some(" (needed to approve)");
    let testid = format!("input-{name}");
    let control = match field.kind {
        InputKind::Enum => {
            let options = field
                .options
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|option| view! { <option value=option.clone()>{option.clone()}</option> })
                .collect_view();
            view! {
                <select data-testid=testid on:change=move |ev| set(event_target_value(&ev))>
                    <option value="">"(choose)"</option>
                    {options}
                </select>
            }
            .into_any()
        }
        InputKind::Integer | InputKind::Number => {
            let step = if field.kind == InputKind::Integer { "1" } else { "any" };
            view! {
                <input
                    type="number"
                    step=step
                    min=field.min.map(|v| v.to_string())
                    max=field.max.map(|v| v.to_string())
                    data-testid=testid
                    on:input=move |ev| set(event_target_value(&ev))
                />
            }
            .into_any()
        }
        InputKind::Text => {
            view! { <input type="text" data-testid=testid on:input=move |ev| set(event_target_value(&ev))/> }.into_any()
        }
        InputKind::Boolean => view! {
            <input
                type="checkbox"
                data-testid=testid
                on:change=move |ev| set(if event_target_checked(&ev) { "true".into() } else { "false".into() })
            />
        }
        .into_any(),
    };
    view! {
        <label class="form-field">
            <span>{label}<span class="muted small">{needed}</span></span>
            {control}
        </label>
    }
}

/// The page's keys for a gate, as its card lists them: only those of the decisions it offers.
fn key_hint(options: &[Decision]) -> String {
    let keys: Vec<&str> = options
        .iter()
        .map(|decision| match decision {
            Decision::Approve => "A approve",
            Decision::Reject => "R reject",
            Decision::Modify => "M feedback",
        })
        .collect();
    format!("Keys: {}", keys.join(" · "))
}

/// Who decides a gate and how far its approvals got, when that is more than "any approver, once".
fn quorum_line(presentation: &GatePresentation, approved_by: &[String]) -> Option<String> {
    let needed = presentation.approvals_needed();
    let mut parts = Vec::new();
    if let Some(approvers) = &presentation.approvers {
        parts.push(format!("Decided by {}", approvers.join(", ")));
    }
    if needed > 1 {
        let got = approved_by.len() as u32;
        let so_far =
            if approved_by.is_empty() { String::new() } else { format!(": approved by {}", approved_by.join(", ")) };
        parts.push(format!("needs {needed} approvals{so_far}, {} more", needed.saturating_sub(got)));
    }
    for person in &presentation.may_not_approve {
        parts.push(format!("{person} started the run and may not approve it"));
    }
    (!parts.is_empty()).then(|| parts.join(" · "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_hint_lists_the_keys_of_the_offered_decisions_only() {
        let cases: [(&[Decision], &str); 3] = [
            (&[Decision::Approve, Decision::Reject], "Keys: A approve · R reject"),
            (&[Decision::Approve, Decision::Reject, Decision::Modify], "Keys: A approve · R reject · M feedback"),
            (&[Decision::Approve], "Keys: A approve"),
        ];
        for (options, hint) in cases {
            assert_eq!(key_hint(options), hint, "{options:?}");
        }
    }
}
