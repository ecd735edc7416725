-- drover store on PostgreSQL, schema version 1.
--
-- The tables live in drover's own schema (see Open): the migration runs
-- with search_path set to it, so names here are unqualified.
--
-- Times are timestamptz, NULL for "not set" (microsecond precision; the
-- engine compares leases at millisecond precision). JSON documents are
-- json, not jsonb, so that a journaled result reads back byte for byte as
-- it was written. Keys are COLLATE "C": ids sort by creation byte by byte,
-- as in the SQLite store, whatever the database's collation. Text columns that Go reads as plain strings are NOT NULL
-- DEFAULT '' so that no NULL handling is needed on the hot path.

-- A source is stored once per digest: all the jobs of a workflow version
-- share it.
CREATE TABLE sources (
	digest text COLLATE "C" PRIMARY KEY,
	entry  text NOT NULL,
	files  json NOT NULL -- object: file name -> content
);

-- Jobs are updated at every checkpoint; room on each page lets most of
-- those updates stay on the page (HOT) when no indexed column changes.
CREATE TABLE jobs (
	id          text COLLATE "C" PRIMARY KEY,
	name        text NOT NULL DEFAULT '',
	workflow    text NOT NULL DEFAULT '',
	path        text NOT NULL DEFAULT '',
	digest      text COLLATE "C" NOT NULL REFERENCES sources (digest),
	input       json,
	state       text NOT NULL,
	persist     text NOT NULL DEFAULT '',
	on_error    text NOT NULL DEFAULT '',
	timeout     interval NOT NULL DEFAULT '0',
	-- NULL for a top-level job. Deleting a job deletes its children, and
	-- theirs, through this key.
	parent_id   text COLLATE "C" REFERENCES jobs (id) ON DELETE CASCADE,
	target      text NOT NULL DEFAULT '',
	vars        json,
	spec        json,
	owner       text COLLATE "C" NOT NULL DEFAULT '',
	lease_until timestamptz,
	request     text NOT NULL DEFAULT '',
	wake_at     timestamptz,
	wait_for    text[], -- signal names
	reason      text NOT NULL DEFAULT '',
	error       text NOT NULL DEFAULT '',
	result      json,
	progress_done  double precision NOT NULL DEFAULT 0,
	progress_total double precision NOT NULL DEFAULT 0,
	progress_msg   text NOT NULL DEFAULT '',
	steps       integer NOT NULL DEFAULT 0, -- done steps, kept by the triggers below
	runs        integer NOT NULL DEFAULT 0,
	created     timestamptz NOT NULL,
	updated     timestamptz NOT NULL,
	started     timestamptz,
	ended       timestamptz,
	-- Who submitted the job through a drover server (a token's name;
	-- empty for jobs the command line created), and the endpoint (named
	-- server configuration) it came through.
	created_by  text NOT NULL DEFAULT '',
	endpoint    text NOT NULL DEFAULT ''
) WITH (fillfactor = 90);

-- Listings and paging: oldest first.
CREATE INDEX jobs_created ON jobs (created, id);
-- Listings by state and the queued half of Due.
CREATE INDEX jobs_state ON jobs (state, created, id);
-- Children of a job; also what the cascading delete looks rows up by.
CREATE INDEX jobs_parent ON jobs (parent_id, created, id);
-- An operator's listing: their own jobs, oldest first.
CREATE INDEX jobs_created_by ON jobs (created_by, created, id);
-- drover server's queue: top-level queued jobs in submission order. Child
-- jobs are run by their parent's drive, never taken up on their own.
CREATE INDEX jobs_queued_top ON jobs (created, id) WHERE state = 'queued' AND parent_id IS NULL;
-- The waiting half of Due, and NextWake.
CREATE INDEX jobs_wake ON jobs (wake_at) WHERE state = 'waiting' AND wake_at IS NOT NULL;
-- Renew.
CREATE INDEX jobs_owner ON jobs (owner) WHERE owner <> '';

-- The journal: one row per step key, replaced as the step progresses.
CREATE TABLE steps (
	id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- first-journaled order
	job_id   text COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
	key      text COLLATE "C" NOT NULL,
	activity text NOT NULL DEFAULT '',
	digest   text NOT NULL DEFAULT '',
	status   text NOT NULL,
	result   json,
	error    text NOT NULL DEFAULT '',
	data     json,
	attempts integer NOT NULL DEFAULT 0,
	host     text NOT NULL DEFAULT '',
	position text NOT NULL DEFAULT '',
	started  timestamptz,
	ended    timestamptz,
	UNIQUE (job_id, key)
);

-- jobs.steps counts the done steps. Keeping it here costs one row update
-- per step that becomes done (or stops being done), where recounting on
-- every Apply would cost a scan of the job's journal. The triggers are per
-- row with a WHEN, so that the commonest write, one new done step, fires
-- one cheap call; statement-level triggers with transition tables cost
-- three times as much for it, and fire on every upsert. SET search_path
-- pins the table they update to this schema whatever the session that
-- fires them has set.
CREATE FUNCTION steps_done() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
	UPDATE jobs SET steps = steps + CASE WHEN NEW.status = 'done' THEN 1 ELSE -1 END
	WHERE id = NEW.job_id;
	RETURN NULL;
END
$$;

CREATE TRIGGER steps_done_insert AFTER INSERT ON steps
FOR EACH ROW WHEN (NEW.status = 'done')
EXECUTE FUNCTION steps_done();

CREATE TRIGGER steps_done_update AFTER UPDATE OF status ON steps
FOR EACH ROW WHEN ((OLD.status = 'done') <> (NEW.status = 'done'))
EXECUTE FUNCTION steps_done();

-- Output and log. seq is global and never reused, so that a follower can
-- resume from the last seq it saw; (job_id, stream, key) makes a replayed
-- emit() or print() a no-op. Every write of a job's records holds the
-- job's row lock, so one job's seqs are assigned in commit order and a
-- follower never sees a smaller seq appear after a larger one.
CREATE TABLE records (
	seq    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	job_id text COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
	stream text COLLATE "C" NOT NULL,
	key    text COLLATE "C" NOT NULL,
	time   timestamptz,
	host   text NOT NULL DEFAULT '',
	value  json,
	text   text NOT NULL DEFAULT '',
	UNIQUE (job_id, stream, key)
);

CREATE INDEX records_follow ON records (job_id, stream, seq);

-- Signals delivered and not yet consumed by the job's Apply.
CREATE TABLE signals (
	id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	job_id  text COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
	name    text NOT NULL,
	payload json,
	sender  text NOT NULL DEFAULT '',
	time    timestamptz
);

CREATE INDEX signals_job ON signals (job_id, id);

-- Registered workflows: the current version of each name. Older versions'
-- sources stay in sources for the jobs that still replay them.
CREATE TABLE workflows (
	name    text COLLATE "C" PRIMARY KEY,
	digest  text COLLATE "C" NOT NULL REFERENCES sources (digest),
	entry   text NOT NULL,
	version integer NOT NULL,
	created timestamptz NOT NULL,
	updated timestamptz NOT NULL
);

-- drover server's API tokens. The secret is shown once when the token is
-- created; only its SHA-256 is kept (tokens are 32 random bytes, so a fast
-- hash is the right one). name is the user the token acts as.
CREATE TABLE tokens (
	name      text COLLATE "C" PRIMARY KEY,
	role      text NOT NULL,
	hash      text NOT NULL UNIQUE,
	created   timestamptz NOT NULL,
	last_used timestamptz
);
