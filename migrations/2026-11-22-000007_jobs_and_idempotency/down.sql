DROP TABLE email_log;
DROP TABLE cron_runs;
DROP TABLE dead_jobs;
DROP TABLE outbox;
DROP TABLE idempotency_keys;
