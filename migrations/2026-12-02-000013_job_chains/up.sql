-- Every job stays open in the outbox until its outcome is recorded: done,
-- dead, superseded by its next attempt (a retry, a deferral, a paused
-- queue's put-back) or deleted by an operator. Redis is a cache of the open
-- rows; a row open and sent but absent from Redis when it is checked
-- (`JOB_RECOVERY_AFTER_SECS` after it was sent or last seen there,
-- `checked_at`) is relayed again.
ALTER TABLE outbox
    ADD COLUMN finished_at TIMESTAMPTZ,
    ADD COLUMN outcome     TEXT CHECK (outcome IN ('done', 'dead', 'superseded', 'deleted')),
    ADD COLUMN checked_at  TIMESTAMPTZ,
    ADD COLUMN recovered   INTEGER NOT NULL DEFAULT 0,
    -- The job (its idempotency key), and the chain of attempts this row
    -- belongs to: the task id without its run suffix (#a<n> a retry, #d<ms>
    -- a deferral, #p<ms> a paused put-back).
    ADD COLUMN job_key TEXT GENERATED ALWAYS AS (split_part(task_id, '#', 1)) STORED,
    ADD COLUMN chain   TEXT GENERATED ALWAYS AS (regexp_replace(task_id, '#[adp][0-9]+$', '')) STORED,
    ADD CONSTRAINT outbox_finished_has_outcome CHECK ((finished_at IS NULL) = (outcome IS NULL));

-- Rows sent before this migration: those older than the default Redis
-- retention are taken as finished; the newer ones stay open, and the
-- reconciler closes those Redis holds as done and relays the others again.
UPDATE outbox SET finished_at = sent_at, outcome = 'done'
 WHERE sent_at IS NOT NULL AND sent_at < now() - interval '1 hour';
UPDATE outbox SET checked_at = sent_at
 WHERE sent_at IS NOT NULL AND finished_at IS NULL;

DROP INDEX outbox_sent_idx;
CREATE INDEX outbox_finished_idx ON outbox (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX outbox_open_sent_idx ON outbox (queue, checked_at)
    WHERE sent_at IS NOT NULL AND finished_at IS NULL;
CREATE INDEX outbox_job_key_idx ON outbox (job_key, created_at, id);

ALTER TABLE dead_jobs
    ADD COLUMN job_key TEXT GENERATED ALWAYS AS (split_part(task_id, '#', 1)) STORED;
CREATE INDEX dead_jobs_job_key_idx ON dead_jobs (job_key, died_at);
