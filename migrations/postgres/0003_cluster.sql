-- A cluster of instances on one database (dagstream serve --nats): who coordinates each run,
-- and which instances are alive. A single server never sets these columns.

-- The run's lease. `epoch` grows by one with every claim; the owner's appends carry the epoch
-- they were claimed with, and an append whose epoch is not the run's current one is refused
-- (fencing: an owner that lost its lease cannot write a single event after the next claim).
-- `lease_until` is in the database's clock, so instances' clocks do not matter.
ALTER TABLE runs
    ADD COLUMN owner       TEXT,
    ADD COLUMN epoch       BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN lease_until TIMESTAMPTZ;

-- Runs still to be driven, for the instances looking for runs to claim.
CREATE INDEX runs_unfinished ON runs (lease_until) WHERE finished_at IS NULL;

-- Cluster members: each renews `seen_at` with its leases; new runs go to live ones.
CREATE TABLE instances (
    id      TEXT PRIMARY KEY,
    -- Where its dashboard and API answer, for operators (`http://host:port`).
    address TEXT NOT NULL,
    seen_at TIMESTAMPTZ NOT NULL
);
