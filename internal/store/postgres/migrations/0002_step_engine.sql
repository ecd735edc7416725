-- drover store on PostgreSQL, schema version 2: which engine ran each step.

-- The lease owner id of the engine that ran (or last started) the step,
-- so that drover show says which server ran each part of a job. Empty for
-- steps journaled before this version.
ALTER TABLE steps ADD COLUMN engine text NOT NULL DEFAULT '';
