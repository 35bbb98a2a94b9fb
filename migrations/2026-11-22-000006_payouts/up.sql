-- Payout requests. The destination is stored encrypted (AES-256-GCM with a key
-- id prefix, so keys can rotate) next to a masked form for display.
CREATE TABLE payouts (
    id                     UUID PRIMARY KEY,
    user_id                UUID NOT NULL REFERENCES users (id),
    amount_minor           BIGINT NOT NULL CHECK (amount_minor > 0),
    currency               CHAR(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status                 TEXT NOT NULL DEFAULT 'requested'
                           CHECK (status IN ('requested', 'processing', 'submitted_unknown', 'paid', 'failed')),
    destination_type       TEXT NOT NULL CHECK (destination_type IN ('iban', 'paypal')),
    destination_encrypted  BYTEA NOT NULL,
    destination_masked     TEXT NOT NULL,
    provider_reference     TEXT,
    failure_reason         TEXT,
    provider_attempts      INTEGER NOT NULL DEFAULT 0,
    submitted_at           TIMESTAMPTZ,
    completed_at           TIMESTAMPTZ,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now()
);
SELECT diesel_manage_updated_at('payouts');
CREATE INDEX payouts_user_idx ON payouts (user_id, created_at DESC, id DESC);
CREATE INDEX payouts_unresolved_idx ON payouts (updated_at) WHERE status IN ('processing', 'submitted_unknown');
ALTER TABLE ledger_transfers ADD CONSTRAINT ledger_transfers_payout_fkey FOREIGN KEY (payout_id) REFERENCES payouts (id);
