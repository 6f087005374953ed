-- One decision per time a gate waits, enforced by the database: the key is the gate's round
-- (how many times it has waited), not the event that announced the decision. A decider inserts
-- its decision and wins only if no row for that round exists (INSERT ... ON CONFLICT DO NOTHING);
-- a decider in another process then reads the winner's row. `seq` is gone: a decision is
-- recorded before its `gate_resolved` event is published.
CREATE TABLE gate_decisions (
    dag_id     TEXT NOT NULL REFERENCES runs (dag_id),
    node_id    TEXT NOT NULL,
    -- The gate's wait this decision ends, counted from 1.
    round      INTEGER NOT NULL,
    decision   TEXT NOT NULL,
    feedback   TEXT,
    decided_by TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    PRIMARY KEY (dag_id, node_id, round)
);
-- Decisions recorded before this migration: their rounds are counted per gate in log order.
INSERT INTO gate_decisions (dag_id, node_id, round, decision, feedback, decided_by, decided_at)
SELECT dag_id, node_id, ROW_NUMBER() OVER (PARTITION BY dag_id, node_id ORDER BY seq),
       decision, feedback, decided_by, decided_at
FROM decisions;
DROP TABLE decisions;
ALTER TABLE gate_decisions RENAME TO decisions;
