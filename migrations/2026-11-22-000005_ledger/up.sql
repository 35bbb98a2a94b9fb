-- Double-entry ledger. Every movement is one transfer from a debit account to a
-- credit account with a deterministic id derived from its cause (for example
-- `reward:<purchase>:1:credit`), so a job that runs twice moves money once.
-- Balances are credits minus debits and are kept in step with the transfers in
-- the same transaction. User accounts never go below zero; a user's debt after
-- a reversal of spent cashback is an explicit `receivable` (balance <= 0).
CREATE TABLE ledger_accounts (
    id            UUID PRIMARY KEY,
    user_id       UUID REFERENCES users (id),
    kind          TEXT NOT NULL CHECK (kind IN ('pending', 'available', 'reserved', 'paid_out', 'receivable',
                                                'cashback_expense', 'payout_clearing')),
    currency      CHAR(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    balance_minor BIGINT NOT NULL DEFAULT 0,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT ledger_accounts_owner_kind_currency_key UNIQUE NULLS NOT DISTINCT (user_id, kind, currency),
    CONSTRAINT ledger_accounts_owner_matches_kind CHECK (
        (user_id IS NULL) = (kind IN ('cashback_expense', 'payout_clearing'))
    ),
    CONSTRAINT ledger_accounts_user_balance_non_negative CHECK (
        user_id IS NULL
        OR (kind = 'receivable' AND balance_minor <= 0)
        OR (kind <> 'receivable' AND balance_minor >= 0)
    )
);
SELECT diesel_manage_updated_at('ledger_accounts');

CREATE TABLE ledger_transfers (
    id                TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 200),
    debit_account_id  UUID NOT NULL REFERENCES ledger_accounts (id),
    credit_account_id UUID NOT NULL REFERENCES ledger_accounts (id),
    amount_minor      BIGINT NOT NULL CHECK (amount_minor > 0),
    currency          CHAR(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    kind              TEXT NOT NULL,
    user_id           UUID REFERENCES users (id),
    purchase_id       UUID REFERENCES purchases (id),
    reward_id         UUID REFERENCES rewards (id),
    payout_id         UUID,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT ledger_transfers_distinct_accounts CHECK (debit_account_id <> credit_account_id)
);
CREATE INDEX ledger_transfers_user_idx ON ledger_transfers (user_id, created_at DESC, id DESC) WHERE user_id IS NOT NULL;
CREATE INDEX ledger_transfers_debit_idx ON ledger_transfers (debit_account_id);
CREATE INDEX ledger_transfers_credit_idx ON ledger_transfers (credit_account_id);
CREATE INDEX ledger_transfers_purchase_idx ON ledger_transfers (purchase_id) WHERE purchase_id IS NOT NULL;
