-- drover store, schema version 4: scheduled workflows and leader leases.

-- A schedule fires a registered workflow at the times of a cron
-- expression. next_fire is the scheduled time of its next fire, and the
-- compare-and-set that makes a fire happen once: a fire commits only
-- while next_fire still holds the time it fired for.
CREATE TABLE schedules (
	name       TEXT PRIMARY KEY,
	cron       TEXT NOT NULL,
	timezone   TEXT NOT NULL DEFAULT '',
	workflow   TEXT NOT NULL,
	params     TEXT, -- JSON array of key=value strings
	created_by TEXT NOT NULL DEFAULT '',
	created    INTEGER NOT NULL,
	next_fire  INTEGER NOT NULL,
	last_fire  INTEGER NOT NULL DEFAULT 0,
	last_job   TEXT NOT NULL DEFAULT '',
	last_error TEXT NOT NULL DEFAULT '',
	fires      INTEGER NOT NULL DEFAULT 0
);

-- One row per fire, keyed by the scheduled time: the second guard
-- against firing a time twice. The latest fires of each schedule are
-- kept (see FireSchedule).
CREATE TABLE schedule_fires (
	schedule TEXT NOT NULL,
	at       INTEGER NOT NULL,
	fired    INTEGER NOT NULL,
	job_id   TEXT NOT NULL DEFAULT '',
	error    TEXT NOT NULL DEFAULT '',
	PRIMARY KEY (schedule, at)
);

-- Named leases: the server holding "scheduler" fires the schedules.
CREATE TABLE leases (
	name   TEXT PRIMARY KEY,
	holder TEXT NOT NULL,
	until  INTEGER NOT NULL
);
