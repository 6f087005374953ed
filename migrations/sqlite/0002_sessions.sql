-- Login sessions, so a restart does not sign everyone out. Only a hash of each session id is
-- kept: a copy of the database opens no session.
CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,
    user_name  TEXT NOT NULL,
    -- Unix seconds.
    expires_at INTEGER NOT NULL
);
