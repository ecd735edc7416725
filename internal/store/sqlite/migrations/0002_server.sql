-- drover store, schema version 2: what drover server needs.

-- Who submitted a job through a server (a token's name; empty for jobs the
-- command line created on the store), and the endpoint (named server
-- configuration) it came through, reserved for endpoints.
ALTER TABLE jobs ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN endpoint TEXT NOT NULL DEFAULT '';

-- An operator's listing: their own jobs, oldest first.
CREATE INDEX jobs_created_by ON jobs (created_by, created, id);

-- The server's queue: top-level queued jobs in submission order. Child
-- jobs are run by their parent's drive, never taken up on their own.
CREATE INDEX jobs_queued_top ON jobs (created, id) WHERE state = 'queued' AND parent_id IS NULL;

-- API tokens. The secret is shown once when the token is created; only
-- its SHA-256 is kept (tokens are 32 random bytes, so a fast hash is the
-- right one). name is the user the token acts as.
CREATE TABLE tokens (
	name      TEXT PRIMARY KEY,
	role      TEXT NOT NULL,
	hash      TEXT NOT NULL UNIQUE,
	created   INTEGER NOT NULL,
	last_used INTEGER NOT NULL DEFAULT 0
);
