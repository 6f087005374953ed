//! Every operation a user can ask of dagstream, written once: start a run, list runs, read a
//! run's state, events and decisions, command a run. REST handlers (`server::api`), the stream
//! sockets and the Leptos server functions (`app`) are thin adapters over [`Service`]: they read
//! their request, call one method, and turn a [`ServiceError`] into their kind of answer.
//!
//! Roles are checked here, for every adapter alike; the caller is who signed in ([`SignedIn`]).

use std::sync::Arc;

use crate::engine::spec::{GROUP_PREFIX, NodeWork};
use crate::engine::{DagSpec, SpecFormat};
use crate::examples;
use crate::external::ExternalRun;
use crate::links::{self, Directory, Standing};
use crate::notify::outbox::rfc3339_ms;
use crate::protocol::{
    ClientEvent, Cost, Decision, DeliveryAttempt, GateDecisionRecord, GatePresentation, InboxGate, NotificationRecord,
    Role, RunState, RunSummary, Seq, SignedIn,
};
use crate::runs::{Driver, RunEntry, Runs, StartError};

/// How long a repair waits for another instance that is reopening the same ended run to drive it,
/// before handing the repair to it.
const REOPENING_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Events one read of a run's log answers at most.
pub const MAX_EVENTS_PER_READ: usize = 1000;

/// Why an operation did not happen, in words fit for the caller. Nothing changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceError {
    /// No such run (or example).
    #[error("{0}")]
    NotFound(String),
    /// The request itself is wrong: an invalid spec, an unknown example, ...
    #[error("{0}")]
    Invalid(String),
    /// The caller's role does not allow it, or the server is set up not to.
    #[error("{0}")]
    Forbidden(String),
    /// The run's state does not allow it now (a gate already decided, a run that ended, ...).
    #[error("{0}")]
    Refused(String),
    /// What was asked for existed and has expired or been used up (an approval link).
    #[error("{0}")]
    Gone(String),
    /// Our fault (storage failed, ...): logged in full by the adapter; the caller only learns
    /// that it was ours.
    #[error("internal error")]
    Internal(String),
}

impl ServiceError {
    /// The HTTP status that says this error, for the adapters that answer over HTTP.
    pub fn http_status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::Invalid(_) => StatusCode::BAD_REQUEST,
            ServiceError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServiceError::Refused(_) => StatusCode::CONFLICT,
            ServiceError::Gone(_) => StatusCode::GONE,
            ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What run to start.
#[derive(Debug)]
pub enum StartRequest {
    /// A bundled example, by name.
    Example(String),
    /// A spec's text in a format.
    Spec { text: String, format: SpecFormat },
    /// A run an external engine drives (`"external": true`).
    External(ExternalRun),
}

/// The operations, over the registry of runs. Cheap to clone; server functions find it in
/// their context.
#[derive(Clone)]
pub struct Service {
    runs: Arc<Runs>,
    /// Who is in which group, for gates that name groups (`approvers = ["group:leads"]`);
    /// without one, such specs are refused.
    directory: Option<Arc<dyn Directory>>,
}

impl Service {
    pub fn new(runs: Arc<Runs>) -> Self {
        Service { runs, directory: None }
    }

    /// The same service, with the users' directory.
    pub fn with_directory(self, directory: Arc<dyn Directory>) -> Self {
        Service { directory: Some(directory), ..self }
    }

    /// The registry itself, for what is not a user's operation (the feeds, tests).
    pub fn runs(&self) -> &Arc<Runs> {
        &self.runs
    }

    /// Starts a run; answers its `dag_id`. Specs and examples need the admin role (a spec may
    /// run commands), external runs the engine role. An invalid spec starts nothing.
    pub async fn start(&self, caller: &SignedIn, request: StartRequest) -> Result<String, ServiceError> {
        let spec = match request {
            StartRequest::External(run) => {
                caller.require(Role::Engine, "create external runs").map_err(ServiceError::Forbidden)?;
                return self.runs.start_external(run).await.map_err(start_error);
            }
            StartRequest::Example(name) => {
                caller.require(Role::Admin, "start runs").map_err(ServiceError::Forbidden)?;
                let known: Vec<&str> = examples::names().collect();
                examples::by_name(&name)
                    .ok_or_else(|| {
                        ServiceError::Invalid(format!("no example called {name:?} (there is: {})", known.join(", ")))
                    })?
                    .map_err(|e| ServiceError::Internal(format!("bundled example {name}: {e}")))?
            }
            StartRequest::Spec { text, format } => {
                caller.require(Role::Admin, "submit specs").map_err(ServiceError::Forbidden)?;
                DagSpec::parse(&text, format).map_err(|e| ServiceError::Invalid(e.to_string()))?
            }
        };
        let spec = self.as_started_by(spec, caller)?;
        self.runs.start(spec).await.map_err(start_error)
    }

    /// The spec as the run keeps it: started by `caller`, whatever the spec said, and every
    /// `group:NAME` of its gates replaced by the group's members as they are now.
    fn as_started_by(&self, mut spec: DagSpec, caller: &SignedIn) -> Result<DagSpec, ServiceError> {
        spec.started_by = Some(caller.name.clone());
        for node in &mut spec.nodes {
            let NodeWork::Gate { rules, .. } = &mut node.work else { continue };
            let expand = |people: &[String]| -> Result<Vec<String>, ServiceError> {
                let mut names = Vec::new();
                for person in people {
                    let members = match person.strip_prefix(GROUP_PREFIX) {
                        None => vec![person.clone()],
                        Some(group) => self.directory.as_ref().and_then(|d| d.members(group)).ok_or_else(|| {
                            ServiceError::Invalid(format!(
                                "node {:?}: group {group:?} has no members in the users file (`dagstream user add … --group {group}`)",
                                node.id
                            ))
                        })?,
                    };
                    for name in members {
                        if !names.contains(&name) {
                            names.push(name);
                        }
                    }
                }
                Ok(names)
            };
            if let Some(approvers) = &rules.approvers {
                let approvers = expand(approvers)?;
                if (approvers.len() as u32) < rules.approvals {
                    return Err(ServiceError::Invalid(format!(
                        "node {:?}: approvals = {} needs as many approvers, and {} are named ({})",
                        node.id,
                        rules.approvals,
                        approvers.len(),
                        approvers.join(", ")
                    )));
                }
                rules.approvers = Some(approvers);
            }
            rules.escalate_to = expand(&rules.escalate_to)?;
        }
        Ok(spec)
    }

    /// Every run, newest first.
    pub fn list(&self) -> Vec<RunSummary> {
        self.runs.list()
    }

    /// Every gate that waits for `person`, across all runs, the longest waiting first.
    pub fn inbox(&self, person: &SignedIn) -> Vec<InboxGate> {
        let mut gates: Vec<InboxGate> = self
            .runs
            .list()
            .into_iter()
            .filter(|run| run.gates_waiting > 0)
            .flat_map(|run| self.inbox_of_run(person, &run.dag_id))
            .collect();
        gates.sort_by(|a, b| a.waiting_since.cmp(&b.waiting_since).then_with(|| a.node_id.cmp(&b.node_id)));
        gates
    }

    /// The gates of one run that wait for `person` (none for a run this server does not know).
    pub fn inbox_of_run(&self, person: &SignedIn, dag_id: &str) -> Vec<InboxGate> {
        self.runs.get(dag_id).map(|run| run.room.inbox(person)).unwrap_or_default()
    }

    /// One run, by id.
    pub fn entry(&self, dag_id: &str) -> Result<RunEntry, ServiceError> {
        self.runs.get(dag_id).ok_or_else(|| ServiceError::NotFound(format!("no run {dag_id:?}")))
    }

    /// One run, by id; in a cluster also a run another instance created a moment ago and this
    /// one has not heard of yet (it is read from the database).
    pub async fn find(&self, dag_id: &str) -> Result<RunEntry, ServiceError> {
        if let Some(run) = self.runs.get(dag_id) {
            return Ok(run);
        }
        if self.runs.is_member() {
            self.runs.mirror_stored(dag_id).await.map_err(|e| ServiceError::Internal(e.to_string()))?;
        }
        self.entry(dag_id)
    }

    /// The whole state of one run, as a `snapshot` carries it.
    pub async fn state(&self, dag_id: &str) -> Result<RunState, ServiceError> {
        Ok(self.find(dag_id).await?.room.snapshot())
    }

    /// The run's events after `after`, oldest first, at most `limit` (capped at
    /// [`MAX_EVENTS_PER_READ`]), as the stream sent them: from the store when there is one,
    /// else from the run's window in memory.
    pub async fn events(&self, dag_id: &str, after: Seq, limit: usize) -> Result<Vec<String>, ServiceError> {
        let run = self.find(dag_id).await?;
        let limit = limit.clamp(1, MAX_EVENTS_PER_READ);
        let up_to = run.room.seq().min(after.saturating_add(limit as Seq));
        match self.runs.store() {
            Some(store) => store.events(dag_id, after, up_to).await.map_err(|e| ServiceError::Internal(e.to_string())),
            None => Ok(run
                .room
                .recent_events(after)
                .into_iter()
                .filter(|frame| frame.seq <= up_to)
                .map(|frame| frame.text.to_string())
                .collect()),
        }
    }

    /// The run before its first event (every node of its spec pending): where folding its log
    /// starts, to show the run as it stood at any event.
    pub async fn initial_state(&self, dag_id: &str) -> Result<RunState, ServiceError> {
        let run = self.find(dag_id).await?;
        let started_at = run.room.summary().started_at;
        if let Some(spec) = &run.spec {
            return Ok(crate::runs::initial_state(dag_id, spec, &started_at));
        }
        // An external run's definition is its stored record.
        let unknown = || ServiceError::NotFound(format!("run {dag_id:?} has no stored definition to start from"));
        let store = self.runs.store().ok_or_else(unknown)?;
        let record = store.run(dag_id).await.map_err(|e| ServiceError::Internal(e.to_string()))?.ok_or_else(unknown)?;
        Ok(crate::runs::StoredRun::read(&record, Vec::new()).state)
    }

    /// Runs `a` and `b` side by side ([`crate::compare::compare`]).
    pub async fn compare(&self, a: &str, b: &str) -> Result<crate::protocol::RunComparison, ServiceError> {
        let (a, b) = (self.state(a).await?, self.state(b).await?);
        Ok(crate::compare::compare(&a, &b))
    }

    /// Every gate decision of the run, oldest first.
    pub async fn decisions(&self, dag_id: &str) -> Result<Vec<GateDecisionRecord>, ServiceError> {
        Ok(self.state(dag_id).await?.decisions)
    }

    /// Who the run's notifications went to, what they said, and how each attempt went: oldest
    /// first.
    pub async fn notifications(&self, dag_id: &str) -> Result<Vec<NotificationRecord>, ServiceError> {
        self.find(dag_id).await?;
        let Some(store) = self.runs.store() else { return Ok(Vec::new()) };
        let (rows, attempts) = store.notifications(dag_id).await.map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let attempts = attempts
                    .iter()
                    .filter(|a| a.notification_id == row.id)
                    .map(|a| DeliveryAttempt {
                        attempt: a.attempt,
                        at: rfc3339_ms(a.at),
                        status: a.status,
                        error: a.error.clone(),
                    })
                    .collect();
                NotificationRecord {
                    id: row.id,
                    seq: row.seq,
                    topic: row.topic,
                    url: row.url,
                    format: row.format,
                    created_at: rfc3339_ms(row.created_at),
                    outcome: row.outcome,
                    next_attempt_at: row.next_attempt_at.map(rfc3339_ms),
                    attempts,
                }
            })
            .collect())
    }

    /// Hands a client event to whatever drives the run, if the caller's role allows it; `Err`
    /// says why not (and nothing changed).
    pub async fn command(&self, run: &RunEntry, caller: &SignedIn, event: ClientEvent) -> Result<(), ServiceError> {
        let what = match &event {
            ClientEvent::HumanDecision { .. } => "decide gates",
            ClientEvent::PauseExecution | ClientEvent::ResumeExecution | ClientEvent::CancelExecution => {
                "pause, resume or cancel runs"
            }
            ClientEvent::RetryNode { .. } | ClientEvent::RerunNode { .. } => "retry or re-run nodes",
        };
        caller.require(Role::needed_for(&event), what).map_err(ServiceError::Forbidden)?;
        if let Some((action, node_id)) = event.repair()
            && run.room.is_complete()
            && !matches!(run.driver, Driver::External(_))
        {
            // A repair reopens an ended run: this instance's engine drives it again from its
            // log (in a cluster, once it holds the run's lease again). Asked before reopening,
            // so a repair the run cannot take reopens nothing.
            run.room.snapshot().repair_plan(action, node_id).map_err(ServiceError::Refused)?;
            return match self.runs.reopen(run.room.dag_id()).await.map_err(ServiceError::Refused)? {
                Some(handle) => handle
                    .command(event, &caller.name)
                    .await
                    .map_err(|rejected| ServiceError::Refused(rejected.to_string())),
                // Another instance reopened it a moment ago: its coordinator judges this repair,
                // once it drives the run (its first events have reached this instance).
                None => {
                    let _ = tokio::time::timeout(REOPENING_WAIT, run.room.reopened()).await;
                    self.runs.forward(run.room.dag_id(), event, &caller.name).await.map_err(ServiceError::Refused)
                }
            };
        }
        match &run.driver {
            Driver::Engine(handle) => handle
                .command(event, &caller.name)
                .await
                .map_err(|rejected| ServiceError::Refused(rejected.to_string())),
            Driver::External(link) => {
                crate::external::check_command(&run.room.snapshot(), &event, &caller.name)
                    .map_err(ServiceError::Refused)?;
                link.forward(&event, &caller.name).map_err(ServiceError::Refused)
            }
            // Another instance drives it (a run that ended here may have been reopened there).
            Driver::Remote | Driver::Ended if self.runs.is_member() && !run.room.is_complete() => {
                self.runs.forward(run.room.dag_id(), event, &caller.name).await.map_err(ServiceError::Refused)
            }
            Driver::Remote | Driver::Ended => Err(ServiceError::Refused(format!(
                "the run is {}: it takes no more commands",
                run.room.summary().state.as_str()
            ))),
        }
    }

    /// Starts a new run of `dag_id`'s spec, started by `caller`; `env` (if any) is added to every
    /// command node's environment. Answers the new run's `dag_id`. The approver role runs a
    /// spec again as it was; changing its `env` changes what its commands do, and needs the
    /// admin role, as submitting a spec does.
    pub async fn run_again(
        &self,
        dag_id: &str,
        caller: &SignedIn,
        env: Option<std::collections::BTreeMap<String, String>>,
    ) -> Result<String, ServiceError> {
        caller.require(Role::Approver, "run a spec again").map_err(ServiceError::Forbidden)?;
        let run = self.find(dag_id).await?;
        let spec = run.spec.as_deref().cloned().ok_or_else(|| {
            ServiceError::Refused(format!("run {dag_id} is not dagstream's to run again (an external engine drove it)"))
        })?;
        let spec = match env.filter(|env| !env.is_empty()) {
            Some(env) => {
                caller.require(Role::Admin, "run a spec again with a changed env").map_err(ServiceError::Forbidden)?;
                spec.with_env(&env).map_err(|e| ServiceError::Invalid(e.to_string()))?
            }
            None => spec,
        };
        let spec = self.as_started_by(spec, caller)?;
        let again = self.runs.start(spec).await.map_err(start_error)?;
        // A line of the run that was run again (the new run's own lines begin with its start).
        tracing::info!(parent: &run.room.lines(), dag_id, again, by = caller.name, "run started again");
        Ok(again)
    }
}

/// The gate an approval link may decide, as it stands now: what its page shows.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkedGate {
    /// Whose link it is: their name signs the decision.
    pub person: String,
    pub dag_id: String,
    /// The run's name.
    pub run_name: String,
    pub node_id: String,
    /// The gate's card while it waits.
    pub presentation: Option<GatePresentation>,
    pub cost: Cost,
    pub standing: Standing,
}

/// What an approval link asks for: a decision on its gate, from its page's form.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkDecision {
    /// The gate the page was for; a form sent for another gate is refused.
    pub node_id: String,
    pub decision: Decision,
    pub feedback: Option<String>,
    /// The values of the gate's form.
    pub inputs: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Service {
    /// The gate of an approval link (`links`), as its page shows it. Opening a link decides
    /// nothing and uses nothing up.
    pub async fn linked_gate(&self, token: &str) -> Result<LinkedGate, ServiceError> {
        let (_, gate) = self.read_link(token).await?;
        Ok(gate)
    }

    /// Decides a gate with an approval link, in the name of the link's person: once, while the
    /// gate waits in the wait the link was made for. Answers the gate as it stands after.
    pub async fn decide_by_link(&self, token: &str, asked: LinkDecision) -> Result<LinkedGate, ServiceError> {
        let (hash, gate) = self.read_link(token).await?;
        if asked.node_id != gate.node_id {
            return Err(ServiceError::Forbidden(format!(
                "this link decides gate {:?} only, not {:?}",
                gate.node_id, asked.node_id
            )));
        }
        if let Some(refusal) = gate.standing.refusal() {
            return Err(ServiceError::Gone(refusal));
        }
        let store = self.runs.store().ok_or_else(|| ServiceError::NotFound(NO_SUCH_LINK.into()))?;
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        if !store.use_gate_link(&hash, now).await.map_err(|e| ServiceError::Internal(e.to_string()))? {
            return Err(ServiceError::Gone(Standing::Used.refusal().unwrap_or_default()));
        }
        let run = self.find(&gate.dag_id).await?;
        let person = SignedIn { name: gate.person.clone(), role: Role::Approver };
        let event = ClientEvent::HumanDecision {
            node_id: asked.node_id,
            decision: asked.decision,
            feedback: asked.feedback,
            inputs: asked.inputs,
        };
        if let Err(refused) = self.command(&run, &person, event).await {
            // Nothing was decided: the link stays good for another try while the gate waits.
            if let Err(error) = store.release_gate_link(&hash).await {
                tracing::warn!(%error, "a refused approval link stays used");
            }
            return Err(refused);
        }
        let mut after = gate;
        after.standing = Standing::Used;
        Ok(after)
    }

    /// An approval link's stored row (by the token's hash) and its gate now.
    async fn read_link(&self, token: &str) -> Result<(String, LinkedGate), ServiceError> {
        let store = self.runs.store().ok_or_else(|| ServiceError::NotFound(NO_SUCH_LINK.into()))?;
        let hash = crate::server::auth::hash_secret(token.trim());
        let link = store
            .gate_link(&hash)
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?
            .ok_or_else(|| ServiceError::NotFound(NO_SUCH_LINK.into()))?;
        let state = self.state(&link.dag_id).await?;
        let standing = links::standing(&link, &state);
        let presentation = state.nodes.get(&link.node_id).and_then(|node| node.gate.clone());
        let gate = LinkedGate {
            person: link.person.clone(),
            dag_id: state.dag_id.clone(),
            run_name: state.name.clone(),
            node_id: link.node_id.clone(),
            presentation,
            cost: state.cost,
            standing,
        };
        Ok((hash, gate))
    }
}

/// What an unknown approval link is told (an unknown token and a missing one look the same).
const NO_SUCH_LINK: &str = "This approval link is not valid: check that it was copied whole.";

fn start_error(error: StartError) -> ServiceError {
    match error {
        StartError::Spec(e) => ServiceError::Invalid(e.to_string()),
        StartError::Refused(message) => ServiceError::Forbidden(message),
        StartError::Store(e) => ServiceError::Internal(e.to_string()),
    }
}
