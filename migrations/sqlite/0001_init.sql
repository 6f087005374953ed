-- Runs, their event logs and gate decisions. The event log is the source of truth: a run's
-- state is its spec folded with its events (RunState::apply).

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('schema', '1');

CREATE TABLE runs (
    dag_id      TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    -- The spec as JSON (the structure of a spec file), validated again when the run is loaded.
    spec        TEXT NOT NULL,
    -- The last run_state stored for the run.
    state       TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT
);

CREATE TABLE events (
    dag_id TEXT NOT NULL REFERENCES runs (dag_id),
    seq    INTEGER NOT NULL,
    -- The event exactly as sent on the wire.
    body   TEXT NOT NULL,
    PRIMARY KEY (dag_id, seq)
) WITHOUT ROWID;

CREATE TABLE decisions (
    dag_id     TEXT NOT NULL REFERENCES runs (dag_id),
    seq        INTEGER NOT NULL,
    node_id    TEXT NOT NULL,
    decision   TEXT NOT NULL,
    feedback   TEXT,
    decided_by TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    PRIMARY KEY (dag_id, seq)
);
