//! The outbox: the notifier turns a run's milestones into stored notifications, one per
//! target; the delivery loop sends what is due, signed, and records every attempt.
//!
//! Delivery is at least once: a notification is stored before it is sent and marked delivered
//! only after a 2xx, so a receiver may see one twice (a crash between its answer and the
//! record) and should deduplicate on `X-Dagstream-Delivery` (also the payload's `id`). In a
//! cluster the instance that drives a run queues its notifications, and every instance sends
//! due ones: taking a notification holds it for [`HOLD`], so two instances never send it at the
//! same time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::notice::{self, RunMemory};
use super::payload::{self, DecideLink, RunCard};
use super::{NotifyTarget, ServerConfig};
use crate::hub::Milestone;
use crate::links::{self, Directory};
use crate::protocol::{ServerEventBody, now_rfc3339};
use crate::store::{AttemptRow, NotificationRow, Store};

/// How long a taken notification is held for its sender (longer than one attempt can take).
pub const HOLD: Duration = Duration::from_secs(60);
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two attempts.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(300);
/// How long a notification is retried before it is given up.
pub const RETRY_FOR: Duration = Duration::from_secs(600);
/// Notifications sent at the same time.
const SENDERS: usize = 8;

fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// A Unix-ms time as RFC 3339, for people.
pub fn rfc3339_ms(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}

/// What the notifier knows of one run.
struct Known {
    name: String,
    /// The spec's own targets.
    targets: Vec<NotifyTarget>,
    memory: RunMemory,
}

/// Queues the notifications of every milestone until the channel closes, and wakes the
/// delivery loop for them. Never waits on a receiver: only on the store.
pub async fn notify_loop(
    mut milestones: mpsc::UnboundedReceiver<Milestone>,
    store: Arc<dyn Store>,
    config: Arc<ServerConfig>,
    public_url: String,
    wake: Arc<Notify>,
    directory: Option<Arc<dyn Directory>>,
) {
    let mut runs: HashMap<Arc<str>, Known> = HashMap::new();
    while let Some(Milestone { dag_id, event, trace_id }) = milestones.recv().await {
        // The lines about the run carry its trace id.
        let lines = crate::telemetry::lines_span(trace_id.as_deref());
        if !runs.contains_key(&dag_id) {
            let known = match store.run(&dag_id).await {
                Ok(Some(record)) => {
                    Known { name: record.name, targets: spec_targets(&record.spec), memory: RunMemory::default() }
                }
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(parent: &lines, %error, %dag_id, "cannot read the run: its notification is not sent");
                    continue;
                }
            };
            runs.insert(Arc::clone(&dag_id), known);
        }
        let Some(known) = runs.get_mut(&dag_id) else { continue };
        let notices = notice::notices(&mut known.memory, &event);
        let (spent, budget) = known.memory.cost.unwrap_or((0.0, 0.0));
        let card = RunCard {
            dag_id: dag_id.to_string(),
            name: known.name.clone(),
            spent,
            budget,
            url: format!("{}/dags/{dag_id}", public_url.trim_end_matches('/')),
        };
        let mut rows = Vec::new();
        for notice in &notices {
            let targets: Vec<&NotifyTarget> =
                config.notify.iter().chain(&known.targets).filter(|t| t.wants(notice.topic)).collect();
            if targets.is_empty() {
                continue;
            }
            let decide = match (&notice.gate, &directory) {
                (Some(gate), Some(directory)) => {
                    let mut people = gate.approvers.clone().unwrap_or_else(|| directory.who_may_decide());
                    people.retain(|person| !gate.may_not_approve.contains(person));
                    let (made, kept) = links::make(&dag_id, &gate.node_id, notice.seq as i64, &people, now_ms());
                    // Kept before any message carries them; a link that cannot be kept is not sent.
                    match store.add_gate_links(kept).await {
                        Ok(()) => made
                            .into_iter()
                            .map(|link| DecideLink { url: links::url(&public_url, &link.token), person: link.person })
                            .collect(),
                        Err(error) => {
                            tracing::warn!(parent: &lines, %error, %dag_id, "approval links not kept: the notification goes without them");
                            Vec::new()
                        }
                    }
                }
                (Some(_), None) | (None, _) => Vec::new(),
            };
            for target in targets {
                let id = notification_id(&dag_id, &notice.key, target);
                let body = payload::body(target.format, &id, &now_rfc3339(), &card, notice, &decide);
                let now = now_ms();
                rows.push(NotificationRow {
                    id,
                    dag_id: dag_id.to_string(),
                    seq: notice.seq as i64,
                    topic: notice.topic.as_str().to_owned(),
                    url: target.url.clone(),
                    format: target.format.as_str().to_owned(),
                    secret: Some(target.secret.clone()),
                    body: body.to_string(),
                    created_at: now,
                    next_attempt_at: Some(now),
                    attempts: 0,
                    outcome: "pending".into(),
                });
            }
        }
        if !rows.is_empty() {
            match store.queue_notifications(rows).await {
                Ok(_) => wake.notify_one(),
                Err(error) => tracing::warn!(parent: &lines, %error, %dag_id, "notifications not queued"),
            }
        }
        if matches!(event.body, ServerEventBody::ExecutionComplete { .. }) {
            runs.remove(&dag_id);
        }
    }
}

/// The targets a stored spec names (`[[notify]]`); none for a spec without any, or one that is
/// not a spec file (an external run).
fn spec_targets(spec: &str) -> Vec<NotifyTarget> {
    serde_json::from_str::<Value>(spec)
        .ok()
        .and_then(|value| serde_json::from_value(value.get("notify")?.clone()).ok())
        .unwrap_or_default()
}

/// `<run>-<notice key>-<target>`: the same notice to the same target always gets the same id.
fn notification_id(dag_id: &str, key: &str, target: &NotifyTarget) -> String {
    let digest = Sha256::digest(target.url.as_bytes());
    let short: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("{dag_id}-{key}-{short}")
}

/// The wait before attempt `attempt + 1`: `first`, doubling, at most [`MAX_RETRY_WAIT`].
pub fn retry_wait(attempt: i64, first: Duration) -> Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    first.saturating_mul(2u32.saturating_pow(doublings)).min(MAX_RETRY_WAIT)
}

/// Sends due notifications until `stop`, [`SENDERS`] at a time; sleeps until woken or a second
/// passes when nothing is due.
pub async fn delivery_loop(store: Arc<dyn Store>, first_retry: Duration, wake: Arc<Notify>, stop: CancellationToken) {
    let client = match reqwest::Client::builder().timeout(ATTEMPT_TIMEOUT).build() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "no HTTP client: notifications are not sent");
            return;
        }
    };
    let mut sending = JoinSet::new();
    loop {
        let now = now_ms();
        let free = SENDERS.saturating_sub(sending.len()) as i64;
        let due = if free > 0 {
            store.due_notifications(now, now + HOLD.as_millis() as i64, free).await.unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot read due notifications");
                Vec::new()
            })
        } else {
            Vec::new()
        };
        let took = due.len();
        for row in due {
            let (client, store) = (client.clone(), Arc::clone(&store));
            sending.spawn(async move { deliver(&client, store.as_ref(), row, first_retry).await });
        }
        if took > 0 && sending.len() < SENDERS {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = wake.notified() => {}
            Some(_) = sending.join_next(), if !sending.is_empty() => {}
            _ = stop.cancelled() => break,
        }
        while sending.try_join_next().is_some() {}
    }
    // What is on its way finishes (each attempt is bounded); the rest waits for the next start.
    while sending.join_next().await.is_some() {}
}

/// One attempt: POSTs the body, signed, and records what the receiver answered and what follows.
async fn deliver(client: &reqwest::Client, store: &dyn Store, row: NotificationRow, first_retry: Duration) {
    let attempt = row.attempts + 1;
    let answer = match &row.secret {
        None => Err("its secret is gone".to_owned()),
        Some(secret) => {
            let timestamp = now_ms() / 1000;
            client
                .post(&row.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("X-Dagstream-Timestamp", timestamp.to_string())
                .header("X-Dagstream-Signature", payload::signature(secret, timestamp, &row.body))
                .header("X-Dagstream-Delivery", &row.id)
                .header("X-Dagstream-Topic", &row.topic)
                .body(row.body.clone())
                .send()
                .await
                .map(|response| response.status().as_u16())
                .map_err(|error| describe(&error))
        }
    };
    let now = now_ms();
    let (status, error) = match &answer {
        Ok(status) if (200..300).contains(status) => (Some(i64::from(*status)), None),
        Ok(status) => (Some(i64::from(*status)), Some(format!("the receiver answered {status}"))),
        Err(problem) => (None, Some(problem.clone())),
    };
    let delivered = error.is_none();
    let given_up = !delivered && (now - row.created_at >= RETRY_FOR.as_millis() as i64 || row.secret.is_none());
    let (next, outcome) = match (delivered, given_up) {
        (true, _) => (None, "delivered"),
        (false, true) => (None, "failed"),
        (false, false) => (Some(now + retry_wait(attempt, first_retry).as_millis() as i64), "pending"),
    };
    let counted = if outcome == "pending" { "retry" } else { outcome };
    metrics::counter!(crate::metrics::WEBHOOK_DELIVERIES, "outcome" => counted).increment(1);
    if !delivered {
        tracing::info!(id = %row.id, url = %row.url, attempt, error = error.as_deref().unwrap_or_default(), outcome, "notification not delivered");
    }
    let record = AttemptRow { notification_id: row.id.clone(), attempt, at: now, status, error };
    if let Err(error) = store.record_attempt(record, next, outcome).await {
        tracing::warn!(%error, id = %row.id, "a delivery attempt was not recorded; it is tried again after the hold");
    }
}

/// Why a request failed, without the URL's query or anything internal.
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())
    } else if error.is_connect() {
        "the receiver could not be reached".into()
    } else {
        "the request failed".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_from_the_first_wait_up_to_five_minutes() {
        let waits: Vec<u64> = (1..=9).map(|attempt| retry_wait(attempt, Duration::from_secs(5)).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        // With the default first wait, retrying for RETRY_FOR takes about nine attempts.
        let total: u64 = waits.iter().sum();
        assert!(total >= RETRY_FOR.as_secs(), "{total}");
    }

    #[test]
    fn a_notification_keeps_its_id_and_targets_get_their_own() {
        let target = |url: &str| NotifyTarget {
            url: url.into(),
            secret: "0123456789abcdef".into(),
            format: super::super::Format::Json,
            events: None,
        };
        let a = notification_id("run", "7", &target("http://a/hook"));
        assert_eq!(a, notification_id("run", "7", &target("http://a/hook")));
        assert_ne!(a, notification_id("run", "7", &target("http://b/hook")));
        assert_ne!(a, notification_id("run", "8", &target("http://a/hook")));
    }

    #[test]
    fn spec_targets_are_read_from_the_stored_spec() {
        let spec =
            r#"{"name":"n","nodes":[],"notify":[{"url":"http://x/h","secret":"0123456789abcdef","format":"slack"}]}"#;
        let targets = spec_targets(spec);
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].format, super::super::Format::Slack);
        assert!(spec_targets(r#"{"external":true}"#).is_empty());
    }
}
