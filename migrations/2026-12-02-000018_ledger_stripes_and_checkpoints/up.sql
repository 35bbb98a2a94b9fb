-- Platform accounts (cashback expense, payout clearing) are touched by every
-- reward and payout: one row per currency serialized every transfer on its
-- lock. Each platform account is now split into stripes (sub-accounts); a
-- transfer picks one, and the platform balance is the sum of its stripes.
-- User accounts keep one row (stripe 0) and their non-negative check.
ALTER TABLE ledger_accounts
    ADD COLUMN stripe SMALLINT NOT NULL DEFAULT 0 CHECK (stripe BETWEEN 0 AND 255),
    ADD CONSTRAINT ledger_accounts_user_accounts_single_stripe CHECK (user_id IS NULL OR stripe = 0);
ALTER TABLE ledger_accounts DROP CONSTRAINT ledger_accounts_owner_kind_currency_key;
ALTER TABLE ledger_accounts
    ADD CONSTRAINT ledger_accounts_owner_kind_currency_stripe_key
    UNIQUE NULLS NOT DISTINCT (user_id, kind, currency, stripe);

-- Reconciliation checks what changed since its last verified point instead
-- of every transfer ever written. A point is a PostgreSQL snapshot: the
-- transfers (and rewards) written since are exactly those whose writing
-- transaction it does not see, found through `xact` (the writer's
-- transaction id, indexed).
ALTER TABLE ledger_transfers ADD COLUMN xact XID8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX ledger_transfers_xact_idx ON ledger_transfers (xact);

ALTER TABLE rewards ADD COLUMN xact XID8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX rewards_xact_idx ON rewards (xact);
CREATE FUNCTION rewards_stamp_xact() RETURNS trigger AS $$
BEGIN
    NEW.xact := pg_current_xact_id();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER rewards_stamp_xact BEFORE UPDATE ON rewards
    FOR EACH ROW EXECUTE FUNCTION rewards_stamp_xact();

-- The last verified point: what each account's transfers summed to in it.
CREATE TABLE ledger_verified_point (
    id          BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    snapshot    PG_SNAPSHOT NOT NULL,
    verified_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE ledger_verified_sums (
    account_id UUID PRIMARY KEY REFERENCES ledger_accounts (id),
    sum_minor  BIGINT NOT NULL
);
