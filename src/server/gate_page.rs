//! An approval link's page, `GET /gates/{token}`, and its form, `POST /gates/{token}`: the gate
//! card and Approve / Reject / Modify, for the one person the link was made for, without a
//! sign-in (the token is the credential; `crate::links`).
//!
//! Opening the page changes nothing. The page is plain HTML with a form, so it works from any
//! mail or chat client, with or without script. It is never cached and sends no `Referer`: the
//! address holds the token.

use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::login::{PALETTE, escape};
use crate::links::Standing;
use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::protocol::{Decision, InputField, InputKind, read_form};
use crate::service::{LinkDecision, LinkedGate, ServiceError};

/// `GET /gates/{token}`: the gate card and, while the link is good, the form.
pub async fn page(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    match state.service.linked_gate(&token).await {
        Ok(gate) => {
            let status = if gate.standing == Standing::Open { StatusCode::OK } else { StatusCode::GONE };
            let notice = gate.standing.refusal().map(Notice::Refused);
            answer(status, &token, Some(&gate), notice)
        }
        Err(error) => refused(&token, None, error),
    }
}

/// What the page's form sends: the decision, and the gate's own fields as `input.<name>`.
#[derive(Deserialize)]
pub struct LinkForm {
    node_id: String,
    decision: String,
    #[serde(default)]
    feedback: Option<String>,
    #[serde(flatten)]
    fields: HashMap<String, String>,
}

/// The prefix of a gate form field's name in the page's form.
const FIELD_PREFIX: &str = "input.";

/// `POST /gates/{token}`: decides the gate in the name of the link's person.
pub async fn decide(State(state): State<AppState>, Path(token): Path<String>, Form(form): Form<LinkForm>) -> Response {
    let gate = state.service.linked_gate(&token).await.ok();
    let Some(decision) = Decision::from_name(&form.decision) else {
        let error = ServiceError::Invalid(format!("{:?} is not a decision: approve, reject or modify", form.decision));
        return refused(&token, gate.as_ref(), error);
    };
    let feedback = form.feedback.filter(|f| !f.trim().is_empty());
    let inputs = match read_fields(gate.as_ref(), &form.fields) {
        Ok(inputs) => inputs,
        Err(problem) => return refused(&token, gate.as_ref(), ServiceError::Invalid(problem)),
    };
    let asked = LinkDecision { node_id: form.node_id, decision, feedback, inputs };
    match state.service.decide_by_link(&token, asked).await {
        Ok(gate) => {
            let done = match decision {
                Decision::Approve => "Approved",
                Decision::Reject => "Rejected",
                Decision::Modify => "Sent back with your feedback",
            };
            let message = format!("{done} as {}. The run's dashboard shows what follows.", gate.person);
            answer(StatusCode::OK, &token, Some(&gate), Some(Notice::Done(message)))
        }
        Err(error) => refused(&token, gate.as_ref(), error),
    }
}

/// The gate's form fields as the page sent them (`input.<name>`), read for their types.
fn read_fields(
    gate: Option<&LinkedGate>,
    sent: &HashMap<String, String>,
) -> Result<Option<Map<String, Value>>, String> {
    let form = gate.and_then(|g| g.presentation.as_ref()).map_or(&[][..], |p| p.inputs.as_slice());
    read_form(form, |name| sent.get(&format!("{FIELD_PREFIX}{name}")).map(String::as_str))
}

/// One field of a gate's form, as HTML.
fn field_html(field: &InputField) -> String {
    let name = escape(&format!("{FIELD_PREFIX}{}", field.name));
    let label = escape(field.shown_label());
    let required = if field.is_required() { " required" } else { "" };
    let testid = escape(&format!("input-{}", field.name));
    let control = match field.kind {
        InputKind::Enum => {
            let options: String = field
                .options
                .iter()
                .flatten()
                .map(|o| format!(r#"<option value="{0}">{0}</option>"#, escape(o)))
                .collect();
            format!(
                r#"<select name="{name}" data-testid="{testid}"><option value="">(choose)</option>{options}</select>"#
            )
        }
        InputKind::Integer | InputKind::Number => {
            let step = if field.kind == InputKind::Integer { "1" } else { "any" };
            let bound = |attr: &str, v: Option<f64>| v.map(|v| format!(r#" {attr}="{v}""#)).unwrap_or_default();
            format!(
                r#"<input type="number" step="{step}" name="{name}" data-testid="{testid}"{}{}>"#,
                bound("min", field.min),
                bound("max", field.max)
            )
        }
        InputKind::Text => format!(r#"<input type="text" name="{name}" data-testid="{testid}">"#),
        InputKind::Boolean => format!(r#"<input type="checkbox" name="{name}" value="true" data-testid="{testid}">"#),
    };
    let needed = if required.is_empty() { "" } else { r#" <span class="muted">(needed to approve)</span>"# };
    format!(r#"<label class="field"><span>{label}{needed}</span>{control}</label>"#)
}

/// A message at the top of the page.
enum Notice {
    Done(String),
    Refused(String),
}

fn refused(token: &str, gate: Option<&LinkedGate>, error: ServiceError) -> Response {
    if let ServiceError::Internal(detail) = &error {
        tracing::error!(%detail, "an approval link failed");
    }
    answer(error.http_status(), token, gate, Some(Notice::Refused(error.to_string())))
}

fn answer(status: StatusCode, token: &str, gate: Option<&LinkedGate>, notice: Option<Notice>) -> Response {
    let mut response = (status, Html(render(token, gate, notice.as_ref()))).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn render(token: &str, gate: Option<&LinkedGate>, notice: Option<&Notice>) -> String {
    let notice = match notice {
        Some(Notice::Done(text)) => {
            format!(r#"<p class="notice done" role="status" data-testid="link-result">{}</p>"#, escape(text))
        }
        Some(Notice::Refused(text)) => {
            format!(r#"<p class="notice bad" role="alert" data-testid="link-refused">{}</p>"#, escape(text))
        }
        None => String::new(),
    };
    let card = gate.map(|gate| card(token, gate)).unwrap_or_default();
    let standing = gate.map_or("unknown", |gate| standing_name(&gate.standing));
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Decide a gate · dagstream</title>
<style>
{PALETTE}
body {{ margin: 0; min-height: 100vh; display: grid; place-items: center; background: var(--bg); color: var(--text); font: 15px/1.5 system-ui, sans-serif; }}
main {{ background: var(--panel); border: 1px solid var(--line); border-radius: 10px; padding: 1.6rem; width: min(34rem, 92vw); display: grid; gap: 0.8rem; }}
h1 {{ margin: 0; font-size: 1.25rem; }} p {{ margin: 0; }} .muted {{ color: var(--muted); }}
pre {{ margin: 0; padding: 0.6rem; border: 1px solid var(--line); border-radius: 6px; overflow: auto; max-height: 16rem; font-size: 0.85rem; }}
form {{ display: grid; gap: 0.6rem; }} .buttons {{ display: flex; gap: 0.5rem; flex-wrap: wrap; }}
.field {{ display: grid; gap: 0.25rem; }}
select, input {{ font: inherit; padding: 0.4rem; border: 1px solid var(--line); border-radius: 6px; background: transparent; color: inherit; }}
textarea {{ font: inherit; padding: 0.5rem; border: 1px solid var(--line); border-radius: 6px; background: transparent; color: inherit; min-height: 4rem; }}
button {{ font: inherit; padding: 0.5rem 1rem; border: 1px solid var(--line); border-radius: 6px; background: transparent; color: inherit; cursor: pointer; }}
button.approve {{ background: var(--accent); border-color: var(--accent); color: #fff; }}
.notice {{ font-weight: 600; }} .done {{ color: var(--good); }} .bad {{ color: var(--bad); }}
</style></head>
<body><main data-testid="gate-link" data-standing="{standing}">
<p class="muted">dagstream · approval link</p>
{notice}
{card}
</main></body></html>"#
    )
}

/// The gate card, and the form while the link is good.
fn card(token: &str, gate: &LinkedGate) -> String {
    let run = format!(
        r#"<p class="muted">Run <strong>{}</strong> · gate <code>{}</code></p>"#,
        escape(&gate.run_name),
        escape(&gate.node_id)
    );
    let spend = if gate.cost.budget > 0.0 {
        format!("Spent ${:.2} of the ${:.2} budget.", gate.cost.spent, gate.cost.budget)
    } else {
        format!("Spent ${:.2} so far.", gate.cost.spent)
    };
    let Some(presentation) = &gate.presentation else {
        return format!(r#"{run}<p class="muted" data-testid="link-spend">{spend}</p>"#);
    };
    let context = presentation
        .context
        .as_ref()
        .and_then(|context| serde_json::to_string_pretty(context).ok())
        .map(|text| format!("<pre>{}</pre>", escape(&text)))
        .unwrap_or_default();
    let deadline = presentation
        .timeout_at
        .as_ref()
        .map(|at| format!(r#"<p class="muted">Decide before {}, or the gate decides on its own.</p>"#, escape(at)))
        .unwrap_or_default();
    let form = if gate.standing == Standing::Open {
        let buttons: String = presentation
            .options
            .iter()
            .map(|option| {
                let (name, label) = match option {
                    Decision::Approve => ("approve", "Approve"),
                    Decision::Reject => ("reject", "Reject"),
                    Decision::Modify => ("modify", "Send back with feedback"),
                };
                format!(r#"<button type="submit" name="decision" value="{name}" class="{name}" data-testid="{name}">{label}</button>"#)
            })
            .collect();
        format!(
            r#"<p>You decide as <strong data-testid="link-person">{person}</strong>: your name signs the decision.</p>
<form method="post" action="/gates/{token}" data-testid="link-form">
<input type="hidden" name="node_id" value="{node}">
{fields}
<textarea name="feedback" placeholder="Feedback (needed to send back)" data-testid="feedback"></textarea>
<div class="buttons">{buttons}</div>
</form>"#,
            person = escape(&gate.person),
            token = escape(token),
            node = escape(&gate.node_id),
            fields = presentation.inputs.iter().map(field_html).collect::<String>(),
        )
    } else {
        String::new()
    };
    format!(
        r#"{run}<h1 data-testid="link-title">{title}</h1>
<p>{prompt}</p>
{context}<p class="muted" data-testid="link-spend">{spend}</p>
{forecast}{deadline}{form}"#,
        title = escape(&presentation.title),
        prompt = escape(&presentation.prompt),
        forecast = presentation
            .forecast
            .map(|f| format!(r#"<p class="muted" data-testid="link-forecast">{}</p>"#, escape(&f.describe())))
            .unwrap_or_default(),
    )
}

fn standing_name(standing: &Standing) -> &'static str {
    match standing {
        Standing::Open => "open",
        Standing::Used => "used",
        Standing::Decided { .. } => "decided",
        Standing::Closed => "closed",
    }
}
