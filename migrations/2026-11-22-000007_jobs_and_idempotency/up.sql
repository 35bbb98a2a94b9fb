-- Idempotency records: the outcome of a request, scoped to who sent it (merchant
-- or user) and the endpoint, kept 24 hours. The fingerprint is the SHA-256 of
-- the canonical request; a replay with another fingerprint is refused.
CREATE TABLE idempotency_keys (
    scope           TEXT NOT NULL,
    endpoint        TEXT NOT NULL,
    key             TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint     BYTEA NOT NULL,
    response_status SMALLINT NOT NULL,
    response_body   JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, endpoint, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- Transactional outbox: jobs written in the same transaction as the data they
-- act on. The relay moves due rows into the Redis queues (FOR UPDATE SKIP
-- LOCKED, in batches) and stamps `sent_at`; a failed push backs off only its
-- own batch through `next_attempt_at`.
CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    queue           TEXT NOT NULL CHECK (queue ~ '^[a-z_]+$'),
    task_id         TEXT NOT NULL CHECK (length(task_id) BETWEEN 1 AND 255),
    payload         JSONB NOT NULL,
    attempt         INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    run_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    relay_attempts  INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    sent_at         TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT outbox_task_id_key UNIQUE (task_id)
);
CREATE INDEX outbox_pending_idx ON outbox (queue, run_at, id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent_idx ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Jobs that exhausted their retries or failed permanently, kept for operators to
-- inspect and re-queue.
CREATE TABLE dead_jobs (
    id          BIGSERIAL PRIMARY KEY,
    queue       TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    payload     JSONB NOT NULL,
    attempts    INTEGER NOT NULL,
    last_error  TEXT NOT NULL,
    died_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    requeued_at TIMESTAMPTZ,
    CONSTRAINT dead_jobs_task_id_key UNIQUE (task_id)
);
CREATE INDEX dead_jobs_open_idx ON dead_jobs (queue, died_at DESC) WHERE requeued_at IS NULL;

-- One row per cron schedule and tick, claimed by the first replica to see the
-- tick; the others skip it. `finished_at` lets the next tick see a run in progress.
CREATE TABLE cron_runs (
    schedule    TEXT NOT NULL,
    tick        TIMESTAMPTZ NOT NULL,
    claimed_by  TEXT NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    outcome     TEXT,
    PRIMARY KEY (schedule, tick)
);

-- Emails sent, keyed by what caused them (e.g. `welcome:<user_id>`), so a retry
-- after a crash skips what already went out.
CREATE TABLE email_log (
    dedupe_key  TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    recipient   TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('sending', 'sent')),
    attempts    INTEGER NOT NULL DEFAULT 1,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at     TIMESTAMPTZ
);
