//! `dagstream migrate --from URL --to URL`: moving up from one database to another (SQLite to
//! PostgreSQL, or back). Every run record, its events (byte for byte, same `seq`), its gate
//! decisions and the users kept in the database are copied through the [`Store`] trait, so any
//! pair of backends works. Login sessions are not copied: people sign in again on the new
//! database.
//!
//! Idempotent: a run the target already has gets only the events it lacks, and a decision is
//! recorded with [`Store::claim_decision`], which keeps the one already there. A target that
//! holds runs is refused unless `--append` says that is expected. The copy is then checked: each
//! run's events are folded on both sides ([`StoredRun::read`], the reducer restarts use) and the
//! states, records and decisions must be equal.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::protocol::Seq;
use crate::runs::StoredRun;
use crate::store::{Claim, Database, RunRecord, Store, StoredEvent};

/// Events appended per transaction while copying.
const EVENTS_PER_BATCH: usize = 2000;

/// Connections each side keeps open while copying.
const POOL_SIZE: u32 = 2;

/// What was copied and checked, for the report.
#[derive(Debug, Default, PartialEq)]
pub struct Copied {
    pub runs: usize,
    pub events: usize,
    pub decisions: usize,
    /// Users added to the target.
    pub users: usize,
    /// Runs the target already had, completed rather than created.
    pub completed: usize,
}

/// Copies `from` into `to` and checks the copy; answers the report, or what went wrong.
pub async fn migrate(from: &Database, to: &Database, append: bool) -> Result<String, String> {
    if from == to {
        return Err(format!("--from and --to are the same database ({from})"));
    }
    if let Database::Sqlite(path) = from
        && !path.is_file()
    {
        return Err(format!("there is no database to copy at {}", path.display()));
    }
    let source = crate::store::open(from, POOL_SIZE).await.map_err(|e| e.to_string())?;
    let target = crate::store::open(to, POOL_SIZE).await.map_err(|e| e.to_string())?;
    let copied = copy(source.as_ref(), target.as_ref(), append).await?;
    let checked = check(source.as_ref(), target.as_ref()).await?;
    Ok(format!(
        "copied {} runs ({} new, {} completed), {} events, {} decisions and {} users from {from} to {to}\n\
         checked: each of the {checked} runs folds to the same state on both sides\n",
        copied.runs,
        copied.runs - copied.completed,
        copied.completed,
        copied.events,
        copied.decisions,
        copied.users,
    ))
}

/// Copies what `target` lacks of `source`.
pub async fn copy(source: &dyn Store, target: &dyn Store, append: bool) -> Result<Copied, String> {
    let have: HashMap<String, RunRecord> = target
        .runs()
        .await
        .map_err(|e| format!("cannot list the target's runs: {e}"))?
        .into_iter()
        .map(|r| (r.dag_id.clone(), r))
        .collect();
    if !have.is_empty() && !append {
        return Err(format!(
            "the target already holds {} runs: pass --append to copy into it (runs it has are completed, not doubled)",
            have.len()
        ));
    }
    let mut copied = Copied::default();
    let users_there = target.users().await.map_err(|e| format!("cannot list the target's users: {e}"))?;
    for user in source.users().await.map_err(|e| format!("cannot list the users to copy: {e}"))? {
        match users_there.iter().find(|there| there.name == user.name) {
            Some(there) if *there == user => {}
            Some(_) => {
                return Err(format!("user {:?} is in the target already, with another token or role", user.name));
            }
            None => {
                target.add_user(user).await.map_err(|e| e.to_string())?;
                copied.users += 1;
            }
        }
    }
    for record in source.runs().await.map_err(|e| format!("cannot list the runs to copy: {e}"))? {
        let dag_id: Arc<str> = record.dag_id.as_str().into();
        let texts = source.events(&dag_id, 0, Seq::MAX).await.map_err(|e| format!("run {dag_id}: {e}"))?;
        let already = if have.contains_key(&record.dag_id) {
            copied.completed += 1;
            target.events(&dag_id, 0, Seq::MAX).await.map_err(|e| format!("run {dag_id}: {e}"))?.len()
        } else {
            target.create_run(record.clone()).await.map_err(|e| format!("run {dag_id}: {e}"))?;
            0
        };
        copied.runs += 1;
        // Stored logs are numbered 1..=N without a gap (the writer stores them in order), so an
        // event's place is its seq, even in a log that does not read back as events.
        let missing: Vec<StoredEvent> = texts
            .into_iter()
            .enumerate()
            .skip(already)
            .map(|(i, json)| StoredEvent {
                dag_id: Arc::clone(&dag_id),
                seq: i as Seq + 1,
                json: json.into(),
                // The record was copied as it is; its state is not replayed.
                run_state: None,
                at: record.started_at.as_str().into(),
                epoch: None,
            })
            .collect();
        copied.events += missing.len();
        let mut missing = missing.into_iter().peekable();
        while missing.peek().is_some() {
            let batch: Vec<StoredEvent> = missing.by_ref().take(EVENTS_PER_BATCH).collect();
            target.append(batch).await.map_err(|e| format!("run {dag_id}: {e}"))?;
        }
        for decision in source.decisions(&dag_id).await.map_err(|e| format!("run {dag_id}: {e}"))? {
            match target.claim_decision(&dag_id, decision.clone()).await.map_err(|e| format!("run {dag_id}: {e}"))? {
                Claim::Won => copied.decisions += 1,
                Claim::Taken(there) if there == decision => {}
                Claim::Taken(there) => {
                    return Err(format!(
                        "run {dag_id}: gate {:?} round {} is decided differently in the target ({} by {}, not {} by {})",
                        decision.node_id,
                        decision.round,
                        there.decision,
                        there.decided_by,
                        decision.decision,
                        decision.decided_by
                    ));
                }
            }
        }
    }
    Ok(copied)
}

/// Checks that every run of `source` is in `target` with the same record, the same decisions,
/// and events that fold to the same state; answers how many runs were checked.
pub async fn check(source: &dyn Store, target: &dyn Store) -> Result<usize, String> {
    let copies: HashMap<String, RunRecord> =
        target.runs().await.map_err(|e| e.to_string())?.into_iter().map(|r| (r.dag_id.clone(), r)).collect();
    let mut checked = 0;
    for record in source.runs().await.map_err(|e| e.to_string())? {
        let dag_id = record.dag_id.clone();
        let copy = copies.get(&dag_id).ok_or_else(|| format!("run {dag_id} is missing from the target"))?;
        let spec = |text: &str| serde_json::from_str::<Value>(text).ok();
        let same_record = (&copy.name, &copy.state, &copy.started_at, &copy.finished_at)
            == (&record.name, &record.state, &record.started_at, &record.finished_at)
            && spec(&copy.spec) == spec(&record.spec);
        if !same_record {
            return Err(format!("run {dag_id}: the target's record differs: {copy:?} is not {record:?}"));
        }
        let texts = source.events(&dag_id, 0, Seq::MAX).await.map_err(|e| e.to_string())?;
        let copied_texts = target.events(&dag_id, 0, Seq::MAX).await.map_err(|e| e.to_string())?;
        let (here, there) = (StoredRun::read(&record, texts), StoredRun::read(copy, copied_texts));
        if here.state != there.state || here.broken != there.broken {
            return Err(format!("run {dag_id}: its events fold to another state in the target"));
        }
        let decisions = source.decisions(&dag_id).await.map_err(|e| e.to_string())?;
        if target.decisions(&dag_id).await.map_err(|e| e.to_string())? != decisions {
            return Err(format!("run {dag_id}: the target's decisions differ"));
        }
        checked += 1;
    }
    let users = source.users().await.map_err(|e| e.to_string())?;
    let copied_users = target.users().await.map_err(|e| e.to_string())?;
    if let Some(missing) = users.iter().find(|user| !copied_users.contains(user)) {
        return Err(format!("user {:?} is missing from the target", missing.name));
    }
    Ok(checked)
}
