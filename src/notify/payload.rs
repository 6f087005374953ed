//! What a delivery carries: dagstream's JSON payload or a Slack message, and its signature.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::Format;
use super::notice::Notice;

/// The run a notification is about, as its payload shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunCard {
    pub dag_id: String,
    pub name: String,
    /// Spend and budget as last seen (0 budget: none).
    pub spent: f64,
    pub budget: f64,
    /// The run's page.
    pub url: String,
}

/// An approval link (`crate::links`): the page where `person` decides the gate.
#[derive(Clone, Debug, PartialEq)]
pub struct DecideLink {
    pub person: String,
    pub url: String,
}

/// The body of one delivery, in the target's format; `decide` are the approval links of a
/// waiting gate (none for other topics).
pub fn body(format: Format, id: &str, at: &str, run: &RunCard, notice: &Notice, decide: &[DecideLink]) -> Value {
    match format {
        Format::Json => {
            let mut links = json!({ "run": run.url });
            if !decide.is_empty() {
                links["decide"] =
                    decide.iter().map(|link| json!({ "person": link.person, "url": link.url })).collect::<Value>();
            }
            let mut body = json!({
                "id": id,
                "topic": notice.topic.as_str(),
                "at": at,
                "seq": notice.seq,
                "run": { "dag_id": run.dag_id, "name": run.name, "spent": run.spent, "budget": run.budget, "url": run.url },
                "links": links,
            });
            if let (Value::Object(fields), Value::Object(detail)) = (&mut body, &notice.detail) {
                fields.extend(detail.clone());
            }
            body
        }
        Format::Slack => slack(run, notice, decide),
    }
}

/// A Slack message (`text` for notifications, `blocks` for the message).
fn slack(run: &RunCard, notice: &Notice, decide: &[DecideLink]) -> Value {
    let detail = &notice.detail;
    let (title, text) = match notice.topic {
        super::Topic::GateWaiting | super::Topic::GateReminder | super::Topic::GateEscalated => {
            let presentation = &detail["gate"]["presentation"];
            let title = presentation["title"].as_str().unwrap_or("A gate waits for you");
            let title = match notice.topic {
                super::Topic::GateReminder => format!("Still waiting: {title}"),
                super::Topic::GateEscalated => format!("Escalated to you: {title}"),
                _ => title.to_owned(),
            };
            let mut prompt = presentation["prompt"].as_str().unwrap_or_default().to_owned();
            if let Ok(forecast) = serde_json::from_value::<crate::protocol::Forecast>(presentation["forecast"].clone())
            {
                prompt = format!("{prompt}\n{}", forecast.describe()).trim().to_owned();
            }
            (title, prompt)
        }
        super::Topic::GateDecided | super::Topic::GateTimedOut => {
            let decision = &detail["decision"];
            let node = decision["node_id"].as_str().unwrap_or_default();
            let what = decision["decision"].as_str().unwrap_or_default();
            let by = decision["decided_by"].as_str().unwrap_or_default();
            (format!("Gate {node}: {what}"), format!("Decided by {by}."))
        }
        super::Topic::Budget80 | super::Topic::Budget100 => {
            let share = detail["spend"]["share"].as_f64().unwrap_or(1.0);
            (format!("{:.0} % of the budget spent", share * 100.0), String::new())
        }
        super::Topic::RunCompleted => ("Run completed".to_owned(), String::new()),
        super::Topic::RunFailed => ("Run failed".to_owned(), String::new()),
        super::Topic::RunCancelled => ("Run cancelled".to_owned(), String::new()),
    };
    let spend = if run.budget > 0.0 {
        format!("spent {:.2} of {:.2}", run.spent, run.budget)
    } else {
        format!("spent {:.2}", run.spent)
    };
    let mut blocks = vec![json!({ "type": "header", "text": { "type": "plain_text", "text": title } })];
    if !text.is_empty() {
        blocks.push(json!({ "type": "section", "text": { "type": "mrkdwn", "text": text } }));
    }
    blocks.push(json!({ "type": "context", "elements": [
        { "type": "mrkdwn", "text": format!("*{}* · {spend}", run.name) }
    ] }));
    if !decide.is_empty() {
        // Each link is one person's: the message says whose, so nobody decides in another's name.
        let list: Vec<String> = decide.iter().map(|link| format!("<{}|Decide as {}>", link.url, link.person)).collect();
        blocks.push(json!({ "type": "section", "text": { "type": "mrkdwn", "text": list.join(" · ") } }));
    }
    blocks.push(json!({ "type": "actions", "elements": [
        { "type": "button", "text": { "type": "plain_text", "text": "Open the run" }, "url": run.url }
    ] }));
    json!({ "text": format!("{title}: {} ({spend})", run.name), "blocks": blocks })
}

/// `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`: the `X-Dagstream-Signature` of a
/// delivery sent at `timestamp` (Unix seconds, `X-Dagstream-Timestamp`).
pub fn signature(secret: &str, timestamp: i64, body: &str) -> String {
    // An HMAC takes a key of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::Topic;

    #[test]
    fn the_signature_is_the_hmac_of_timestamp_dot_body() {
        // Computed independently with Python's hmac module:
        // hmac.new(b"key-of-sixteen-chars", b"1700000000.{}", "sha256").hexdigest().
        assert_eq!(
            signature("key-of-sixteen-chars", 1_700_000_000, "{}"),
            "sha256=ddc34df665ef94c5e48d69f87bd2b1614b51a235571d2b77778281d99a94114c"
        );
    }

    fn run() -> RunCard {
        RunCard {
            dag_id: "r1".into(),
            name: "nightly".into(),
            spent: 8.0,
            budget: 10.0,
            url: "http://x/dags/r1".into(),
        }
    }

    #[test]
    fn the_json_payload_has_the_run_the_detail_and_links() {
        let notice = Notice {
            topic: Topic::Budget80,
            seq: 4,
            key: "budget_80-10".into(),
            detail: json!({ "spend": { "spent": 8.0, "budget": 10.0, "share": 0.8 } }),
            gate: None,
        };
        let body = body(Format::Json, "id-1", "2026-12-07T10:00:00Z", &run(), &notice, &[]);
        assert_eq!(body["id"], "id-1");
        assert_eq!(body["topic"], "budget_80");
        assert_eq!(body["run"]["name"], "nightly");
        assert_eq!(body["spend"]["share"], 0.8);
        assert_eq!(body["links"]["run"], "http://x/dags/r1");
        assert!(body["links"].get("decide").is_none(), "no approval links but for a waiting gate");
    }

    #[test]
    fn a_waiting_gate_carries_one_approval_link_per_person() {
        let notice = Notice {
            topic: Topic::GateWaiting,
            seq: 3,
            key: "3".into(),
            detail: json!({ "gate": { "node_id": "review", "presentation": { "title": "Ship it?", "prompt": "p" } } }),
            gate: None,
        };
        let decide = [
            DecideLink { person: "ana".into(), url: "http://x/gates/t1".into() },
            DecideLink { person: "bo".into(), url: "http://x/gates/t2".into() },
        ];
        let json = body(Format::Json, "id", "t", &run(), &notice, &decide);
        assert_eq!(
            json["links"]["decide"],
            json!([{ "person": "ana", "url": "http://x/gates/t1" }, { "person": "bo", "url": "http://x/gates/t2" }])
        );
        let slack = body(Format::Slack, "id", "t", &run(), &notice, &decide).to_string();
        assert!(slack.contains("<http://x/gates/t1|Decide as ana>"), "{slack}");
        assert!(slack.contains("<http://x/gates/t2|Decide as bo>"), "{slack}");
    }

    #[test]
    fn a_slack_message_has_the_gate_title_prompt_spend_and_a_link() {
        let notice = Notice {
            topic: Topic::GateWaiting,
            seq: 3,
            key: "3".into(),
            detail: json!({ "gate": { "node_id": "review", "presentation": { "title": "Ship it?", "prompt": "Look at the diff" } } }),
            gate: None,
        };
        let body = body(Format::Slack, "id-2", "t", &run(), &notice, &[]);
        let text = body.to_string();
        for expected in
            ["Ship it?", "Look at the diff", "spent 8.00 of 10.00", "http://x/dags/r1", "\"type\":\"header\""]
        {
            assert!(text.contains(expected), "{expected} in {text}");
        }
    }
}
