-- Users who may sign in, kept in the database so every instance on it knows them (the users
-- file is one machine's). Only a hash of each token.
CREATE TABLE users (
    name         TEXT PRIMARY KEY,
    -- SHA-256 of the token, hex.
    token_sha256 TEXT NOT NULL,
    -- viewer, approver, admin or engine.
    role         TEXT NOT NULL
);
