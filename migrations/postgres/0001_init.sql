-- The same logical schema as SQLite's (migrations/sqlite/): runs, their event logs, one decision
-- per gate round, login sessions. Each migration runs in one transaction: a failed one leaves
-- the schema as it was.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('schema', '1');

CREATE TABLE runs (
    dag_id      TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    -- The spec (the structure of a spec file), validated again when the run is loaded.
    spec        JSONB NOT NULL,
    -- The last run_state stored for the run.
    state       TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT
);

-- No foreign key to runs: PostgreSQL checks one with a query per inserted row, which cost more
-- than the insert itself (dagstream bench store: 65 000 events/s with it). The one writer
-- creates a run before any of its events.
CREATE TABLE events (
    dag_id TEXT NOT NULL,
    seq    BIGINT NOT NULL,
    -- The event exactly as sent on the wire. `json`, not `jsonb`: it is checked to be JSON but
    -- kept byte for byte (jsonb reorders keys), so a replay sends what the live stream sent.
    body   JSON NOT NULL,
    PRIMARY KEY (dag_id, seq)
);

-- One decision per time a gate waits: a decider inserts its row and wins only if none exists
-- for that round (INSERT ... ON CONFLICT DO NOTHING); the losers read the winner's row.
CREATE TABLE decisions (
    dag_id     TEXT NOT NULL REFERENCES runs (dag_id),
    node_id    TEXT NOT NULL,
    -- The gate's wait this decision ends, counted from 1.
    round      BIGINT NOT NULL,
    decision   TEXT NOT NULL,
    feedback   TEXT,
    decided_by TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    PRIMARY KEY (dag_id, node_id, round)
);

-- Login sessions, so a restart does not sign everyone out; only a hash of each session id.
CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,
    user_name  TEXT NOT NULL,
    -- Unix seconds.
    expires_at BIGINT NOT NULL
);
