-- Approval links: one per person who may decide a waiting gate, sent in its notification.
-- The token is the credential, so only its SHA-256 is kept. A link is bound to one gate wait
-- (the seq of its human_gate_waiting event) and one person; it is used at most once
-- (used_at), and it expires when that wait ends (decided or timed out), which the run's
-- state tells.
CREATE TABLE gate_links (
    token_sha256 TEXT PRIMARY KEY,
    dag_id       TEXT NOT NULL,
    node_id      TEXT NOT NULL,
    waiting_seq  BIGINT NOT NULL,
    person       TEXT NOT NULL,
    -- Unix milliseconds.
    created_at   BIGINT NOT NULL,
    used_at      BIGINT
);
CREATE INDEX gate_links_of_gate ON gate_links (dag_id, node_id, waiting_seq);
