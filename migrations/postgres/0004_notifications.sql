-- The notification outbox: one row per notification and target, keyed by an id made from the
-- run, the event and the target, so the same notification is stored (and sent) once however
-- often it is raised. A delivery loop sends due rows and records every attempt.
CREATE TABLE notifications (
    id              TEXT PRIMARY KEY,
    dag_id          TEXT NOT NULL,
    -- The event that raised it.
    seq             BIGINT NOT NULL,
    topic           TEXT NOT NULL,
    url             TEXT NOT NULL,
    -- json or slack.
    format          TEXT NOT NULL,
    -- The signing key, kept while the notification is pending and cleared once it is done.
    secret          TEXT,
    -- The body as it is sent, JSON.
    body            TEXT NOT NULL,
    -- Unix milliseconds.
    created_at      BIGINT NOT NULL,
    -- When the next attempt is due (Unix ms); NULL once delivered or given up.
    next_attempt_at BIGINT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    -- pending, delivered or failed (given up).
    outcome         TEXT NOT NULL DEFAULT 'pending'
);
CREATE INDEX notifications_due ON notifications (next_attempt_at);
CREATE INDEX notifications_of_run ON notifications (dag_id, seq);

-- Every attempt: when, and what the receiver answered (its HTTP status) or what went wrong.
CREATE TABLE notification_attempts (
    notification_id TEXT NOT NULL,
    attempt         BIGINT NOT NULL,
    at              BIGINT NOT NULL,
    status          BIGINT,
    error           TEXT,
    PRIMARY KEY (notification_id, attempt)
);
