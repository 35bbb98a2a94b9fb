DROP INDEX dead_jobs_job_key_idx;
ALTER TABLE dead_jobs DROP COLUMN job_key;

DROP INDEX outbox_job_key_idx;
DROP INDEX outbox_open_sent_idx;
DROP INDEX outbox_finished_idx;
CREATE INDEX outbox_sent_idx ON outbox (sent_at) WHERE sent_at IS NOT NULL;
ALTER TABLE outbox
    DROP CONSTRAINT outbox_finished_has_outcome,
    DROP COLUMN chain,
    DROP COLUMN job_key,
    DROP COLUMN recovered,
    DROP COLUMN checked_at,
    DROP COLUMN outcome,
    DROP COLUMN finished_at;
