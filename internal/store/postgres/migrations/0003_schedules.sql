-- drover store on PostgreSQL, schema version 3: scheduled workflows and
-- leader leases.

-- A schedule fires a registered workflow at the times of a cron
-- expression. next_fire is the scheduled time of its next fire, and the
-- compare-and-set that makes a fire happen once: a fire commits only
-- while next_fire still holds the time it fired for.
CREATE TABLE schedules (
	name       text COLLATE "C" PRIMARY KEY,
	cron       text NOT NULL,
	timezone   text NOT NULL DEFAULT '',
	workflow   text NOT NULL,
	params     jsonb, -- array of key=value strings
	created_by text NOT NULL DEFAULT '',
	created    timestamptz NOT NULL,
	next_fire  timestamptz NOT NULL,
	last_fire  timestamptz,
	last_job   text NOT NULL DEFAULT '',
	last_error text NOT NULL DEFAULT '',
	fires      bigint NOT NULL DEFAULT 0
);

-- One row per fire, keyed by the scheduled time: the second guard
-- against firing a time twice, even by two servers that both believe
-- they lead. The latest fires of each schedule are kept (see
-- FireSchedule).
CREATE TABLE schedule_fires (
	schedule text COLLATE "C" NOT NULL,
	at       timestamptz NOT NULL,
	fired    timestamptz NOT NULL,
	job_id   text NOT NULL DEFAULT '',
	error    text NOT NULL DEFAULT '',
	PRIMARY KEY (schedule, at)
);

-- Named leases: the server holding "scheduler" fires the schedules.
CREATE TABLE leases (
	name   text COLLATE "C" PRIMARY KEY,
	holder text NOT NULL,
	until  timestamptz NOT NULL
);
