-- drover store, schema version 1.
--
-- Times are INTEGER unix nanoseconds, 0 for "not set", so that comparisons
-- against the engine's clock are integer comparisons. JSON values are TEXT,
-- NULL when absent. Text columns that Go reads as plain strings are
-- NOT NULL DEFAULT '' so that no NULL handling is needed on the hot path.

-- A source is stored once per digest: all the jobs of a workflow version
-- share it.
CREATE TABLE sources (
	digest TEXT PRIMARY KEY,
	entry  TEXT NOT NULL,
	files  TEXT NOT NULL -- JSON object: file name -> content
);

CREATE TABLE jobs (
	id          TEXT PRIMARY KEY,
	name        TEXT NOT NULL DEFAULT '',
	workflow    TEXT NOT NULL DEFAULT '',
	path        TEXT NOT NULL DEFAULT '',
	digest      TEXT NOT NULL REFERENCES sources (digest),
	input       TEXT,
	state       TEXT NOT NULL,
	persist     TEXT NOT NULL DEFAULT '',
	on_error    TEXT NOT NULL DEFAULT '',
	timeout     INTEGER NOT NULL DEFAULT 0,
	-- NULL for a top-level job. Deleting a job deletes its children, and
	-- theirs, through this key.
	parent_id   TEXT REFERENCES jobs (id) ON DELETE CASCADE,
	target      TEXT NOT NULL DEFAULT '',
	vars        TEXT,
	spec        TEXT,
	owner       TEXT NOT NULL DEFAULT '',
	lease_until INTEGER NOT NULL DEFAULT 0,
	request     TEXT NOT NULL DEFAULT '',
	wake_at     INTEGER NOT NULL DEFAULT 0,
	wait_for    TEXT, -- JSON array of signal names
	reason      TEXT NOT NULL DEFAULT '',
	error       TEXT NOT NULL DEFAULT '',
	result      TEXT,
	progress_done  REAL NOT NULL DEFAULT 0,
	progress_total REAL NOT NULL DEFAULT 0,
	progress_msg   TEXT NOT NULL DEFAULT '',
	steps       INTEGER NOT NULL DEFAULT 0, -- done steps, kept by the triggers below
	runs        INTEGER NOT NULL DEFAULT 0,
	created     INTEGER NOT NULL,
	updated     INTEGER NOT NULL,
	started     INTEGER NOT NULL DEFAULT 0,
	ended       INTEGER NOT NULL DEFAULT 0
);

-- Listings and paging: oldest first.
CREATE INDEX jobs_created ON jobs (created, id);
-- Listings by state and the queued half of Due.
CREATE INDEX jobs_state ON jobs (state, created, id);
-- Children of a job; also what the cascading delete looks rows up by.
CREATE INDEX jobs_parent ON jobs (parent_id, created, id);
-- The waiting half of Due, and NextWake.
CREATE INDEX jobs_wake ON jobs (wake_at) WHERE state = 'waiting' AND wake_at > 0;
-- Renew.
CREATE INDEX jobs_owner ON jobs (owner) WHERE owner <> '';

-- The journal: one row per step key, replaced as the step progresses.
CREATE TABLE steps (
	id       INTEGER PRIMARY KEY, -- first-journaled order
	job_id   TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
	key      TEXT NOT NULL,
	activity TEXT NOT NULL DEFAULT '',
	digest   TEXT NOT NULL DEFAULT '',
	status   TEXT NOT NULL,
	result   TEXT,
	error    TEXT NOT NULL DEFAULT '',
	data     TEXT,
	attempts INTEGER NOT NULL DEFAULT 0,
	host     TEXT NOT NULL DEFAULT '',
	position TEXT NOT NULL DEFAULT '',
	started  INTEGER NOT NULL DEFAULT 0,
	ended    INTEGER NOT NULL DEFAULT 0,
	UNIQUE (job_id, key)
);

-- jobs.steps counts the done steps. Keeping it here costs one row update
-- per step that becomes done, where recounting on every Apply would cost a
-- scan of the job's journal.
CREATE TRIGGER steps_done_insert AFTER INSERT ON steps
WHEN NEW.status = 'done'
BEGIN
	UPDATE jobs SET steps = steps + 1 WHERE id = NEW.job_id;
END;

CREATE TRIGGER steps_done_update AFTER UPDATE OF status ON steps
WHEN (OLD.status = 'done') <> (NEW.status = 'done')
BEGIN
	UPDATE jobs SET steps = steps + (CASE WHEN NEW.status = 'done' THEN 1 ELSE -1 END)
	WHERE id = NEW.job_id;
END;

-- Output and log. seq is global and never reused, so that a follower can
-- resume from the last seq it saw; (job_id, stream, key) makes a replayed
-- emit() or print() a no-op.
CREATE TABLE records (
	seq    INTEGER PRIMARY KEY AUTOINCREMENT,
	job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
	stream TEXT NOT NULL,
	key    TEXT NOT NULL,
	time   INTEGER NOT NULL DEFAULT 0,
	host   TEXT NOT NULL DEFAULT '',
	value  TEXT,
	text   TEXT NOT NULL DEFAULT '',
	UNIQUE (job_id, stream, key)
);

CREATE INDEX records_follow ON records (job_id, stream, seq);

-- Signals delivered and not yet consumed by the job's Apply.
CREATE TABLE signals (
	id      INTEGER PRIMARY KEY AUTOINCREMENT,
	job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
	name    TEXT NOT NULL,
	payload TEXT,
	sender  TEXT NOT NULL DEFAULT '',
	time    INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX signals_job ON signals (job_id, id);

-- Registered workflows: the current version of each name. Older versions'
-- sources stay in sources for the jobs that still replay them.
CREATE TABLE workflows (
	name    TEXT PRIMARY KEY,
	digest  TEXT NOT NULL REFERENCES sources (digest),
	entry   TEXT NOT NULL,
	version INTEGER NOT NULL,
	created INTEGER NOT NULL,
	updated INTEGER NOT NULL
);
