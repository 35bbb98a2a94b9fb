-- Canary jobs prove the job pipeline end to end (enqueue, relay, run, retry,
-- dead, re-queue). Each canary records how often it ran and its one effect.
CREATE TABLE canary_runs (
    key          TEXT PRIMARY KEY,
    runs         INTEGER NOT NULL DEFAULT 0,
    last_attempt INTEGER NOT NULL DEFAULT 0,
    effects      INTEGER NOT NULL DEFAULT 0 CHECK (effects <= 1),
    completed_at TIMESTAMPTZ,
    worker       TEXT,
    -- A canary told to fail until fixed fails while this is false.
    fixed        BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
