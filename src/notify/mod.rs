//! Notifications: a run tells people when it needs them or when it ends, over signed HTTP
//! webhooks, at least once, without ever waiting for them.
//!
//! - **What is sent.** [`notice`] decides, from each committed event of a run, which
//!   [`Topic`]s it raises: a gate starts waiting, still waits (`remind_every`) or is escalated
//!   (`escalate_after`), a gate is decided or times out, spend crosses 80 % or 100 % of the
//!   budget, the run completes, fails or is cancelled (pure, table tests). A waiting gate's
//!   messages carry an approval link (`crate::links`) for each person who may decide it.
//! - **To whom.** Every target of the server's config (`serve --config`, `[[notify]]`) and of
//!   the run's spec (`[[notify]]` in the spec), each with its own secret, format (`json` or
//!   `slack`) and topic filter.
//! - **How.** [`outbox`]: each notification becomes a row of the store's outbox, with an id made
//!   from the run, the event and the target, so the same notification always has the same id and
//!   is stored once. A delivery loop POSTs due rows ([`payload`] builds and signs the body:
//!   `X-Dagstream-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`), retries
//!   what did not get a 2xx with exponential backoff for at least 10 minutes, and stores every
//!   attempt (`GET /api/dags/{dag_id}/notifications`).
//! - **Nothing lost in a crash.** The outbox row is written after the event is stored, so a
//!   crash between the two would lose it: the server that resumes a run (or restarts soon after
//!   its end) hands the run's stored milestones to the notifier again
//!   (`runs::Runs::renotify`); the ids make that idempotent.
//! - **Never blocks a run.** Rooms hand their milestones to the notifier through an unbounded
//!   channel; the notifier and the delivery loop talk to the store and the network on their own.

pub mod notice;
pub mod outbox;
pub mod payload;

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One place notifications go.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NotifyTarget {
    /// Where deliveries are POSTed (`http://` or `https://`).
    pub url: String,
    /// The key of each delivery's HMAC-SHA256 signature (`X-Dagstream-Signature`); the
    /// receiver checks it with the same secret.
    pub secret: String,
    /// `json` (default): dagstream's own payload; `slack`: a Slack-compatible message.
    #[serde(default, skip_serializing_if = "Format::is_json")]
    pub format: Format,
    /// The topics sent to this target; every topic when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Topic>>,
}

impl NotifyTarget {
    /// Says what is wrong with a target, if anything.
    pub fn check(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!("url {:?} must start with http:// or https://", self.url));
        }
        if self.secret.trim().len() < 16 {
            return Err(format!("the secret of {} must be at least 16 characters", self.url));
        }
        if let Some(events) = &self.events
            && events.is_empty()
        {
            return Err(format!("events of {} is empty: leave it out to send every topic", self.url));
        }
        Ok(())
    }

    /// True when this target wants `topic`.
    pub fn wants(&self, topic: Topic) -> bool {
        self.events.as_ref().is_none_or(|events| events.contains(&topic))
    }
}

/// The shape of a delivery's body.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Json,
    Slack,
}

impl Format {
    fn is_json(&self) -> bool {
        *self == Format::Json
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Slack => "slack",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "json" => Some(Format::Json),
            "slack" => Some(Format::Slack),
            _ => None,
        }
    }
}

/// What a notification is about.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A gate started waiting for a decision.
    #[serde(rename = "gate_waiting")]
    GateWaiting,
    /// A gate still waits after its `remind_every`.
    #[serde(rename = "gate_reminder")]
    GateReminder,
    /// A gate still waits after its `escalate_after`: its `escalate_to` are told.
    #[serde(rename = "gate_escalated")]
    GateEscalated,
    /// A person decided a gate.
    #[serde(rename = "gate_decided")]
    GateDecided,
    /// A gate's timeout decided it.
    #[serde(rename = "gate_timed_out")]
    GateTimedOut,
    /// Spend reached 80 % of the budget.
    #[serde(rename = "budget_80")]
    Budget80,
    /// Spend reached the budget.
    #[serde(rename = "budget_100")]
    Budget100,
    #[serde(rename = "run_completed")]
    RunCompleted,
    #[serde(rename = "run_failed")]
    RunFailed,
    #[serde(rename = "run_cancelled")]
    RunCancelled,
}

impl Topic {
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::GateWaiting => "gate_waiting",
            Topic::GateReminder => "gate_reminder",
            Topic::GateEscalated => "gate_escalated",
            Topic::GateDecided => "gate_decided",
            Topic::GateTimedOut => "gate_timed_out",
            Topic::Budget80 => "budget_80",
            Topic::Budget100 => "budget_100",
            Topic::RunCompleted => "run_completed",
            Topic::RunFailed => "run_failed",
            Topic::RunCancelled => "run_cancelled",
        }
    }
}

/// The server's config file (`serve --config dagstream.toml`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The address people open the dashboard at (`https://dagstream.example.com`), for the
    /// links in notifications. Default: the address the server listens on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Where every run's notifications go (a spec may add its own).
    #[serde(default)]
    pub notify: Vec<NotifyTarget>,
    /// How deliveries are retried.
    #[serde(default)]
    pub delivery: DeliverySettings,
}

impl ServerConfig {
    /// Reads and checks a config file.
    pub fn load(path: &std::path::Path) -> Result<ServerConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let config: ServerConfig = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for target in &config.notify {
            target.check().map_err(|problem| format!("{}: [[notify]]: {problem}", path.display()))?;
        }
        config.delivery.first_retry().map_err(|problem| format!("{}: [delivery]: {problem}", path.display()))?;
        Ok(config)
    }
}

/// How deliveries are retried.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    /// The wait before the first retry (`"5s"`); each later one waits twice as long, up to 5
    /// minutes, for at least 10 minutes in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_retry: Option<String>,
}

/// The wait before a first retry unless the config says otherwise.
pub const DEFAULT_FIRST_RETRY: Duration = Duration::from_secs(5);

impl DeliverySettings {
    pub fn first_retry(&self) -> Result<Duration, String> {
        match &self.first_retry {
            None => Ok(DEFAULT_FIRST_RETRY),
            Some(text) => humantime::parse_duration(text.trim())
                .map_err(|e| format!("first_retry {text:?} is not a duration like \"5s\" ({e})")),
        }
    }
}
