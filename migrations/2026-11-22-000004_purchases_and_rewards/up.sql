-- Purchases reported by merchants. `attribute_after` is when the delayed
-- attribution may run (created_at + ATTRIBUTION_DELAY); `rewards_processed_at`
-- is set once, by the attribution that wrote the reward.
CREATE TABLE purchases (
    id                   UUID PRIMARY KEY,
    merchant_id          UUID NOT NULL REFERENCES merchants (id),
    order_id             TEXT NOT NULL CHECK (length(order_id) BETWEEN 1 AND 255),
    amount_minor         BIGINT NOT NULL CHECK (amount_minor > 0),
    currency             CHAR(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status               TEXT NOT NULL DEFAULT 'received'
                         CHECK (status IN ('received', 'attributed', 'unattributed', 'flagged', 'confirmed', 'reversed')),
    purchased_at         TIMESTAMPTZ NOT NULL,
    customer_ref         TEXT CHECK (length(customer_ref) BETWEEN 1 AND 255),
    purchase_token       TEXT CHECK (length(purchase_token) BETWEEN 1 AND 255),
    sub_id               TEXT CHECK (length(sub_id) BETWEEN 1 AND 255),
    identity_group_id    UUID REFERENCES identity_groups (id),
    user_id              UUID REFERENCES users (id),
    attribute_after      TIMESTAMPTZ NOT NULL,
    rewards_processed_at TIMESTAMPTZ,
    status_reason        TEXT,
    -- The merchant's last word (status webhook), applied by the reward jobs
    -- whether it arrives before or after attribution.
    merchant_decision    TEXT CHECK (merchant_decision IN ('confirmed', 'reversed')),
    merchant_decision_at TIMESTAMPTZ,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT purchases_merchant_order_key UNIQUE (merchant_id, order_id)
);
SELECT diesel_manage_updated_at('purchases');
-- The sweeper's query: due, unprocessed purchases in due order. A partial index
-- holds only the waiting rows, so its cost does not grow with the table.
CREATE INDEX purchases_due_attribution_idx ON purchases (attribute_after, id)
    WHERE rewards_processed_at IS NULL AND status = 'received';
CREATE INDEX purchases_user_idx ON purchases (user_id, created_at DESC, id DESC) WHERE user_id IS NOT NULL;
CREATE INDEX purchases_group_idx ON purchases (identity_group_id) WHERE identity_group_id IS NOT NULL;
CREATE INDEX purchases_review_idx ON purchases (status, created_at DESC, id DESC);

-- A reward is the cashback one attribution gave a purchase. Re-attribution after
-- a late merge voids the live reward and writes the next one (attribution_seq + 1);
-- at most one reward per purchase is not voided.
CREATE TABLE rewards (
    id                UUID PRIMARY KEY,
    purchase_id       UUID NOT NULL REFERENCES purchases (id),
    attribution_seq   INTEGER NOT NULL CHECK (attribution_seq >= 1),
    user_id           UUID NOT NULL REFERENCES users (id),
    offer_id          UUID NOT NULL REFERENCES offers (id),
    touchpoint_id     UUID REFERENCES touchpoints (id),
    identity_group_id UUID REFERENCES identity_groups (id),
    amount_minor      BIGINT NOT NULL CHECK (amount_minor >= 0),
    currency          CHAR(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status            TEXT NOT NULL CHECK (status IN ('pending', 'flagged', 'confirmed', 'reversed', 'voided')),
    fraud_score       DOUBLE PRECISION NOT NULL DEFAULT 0 CHECK (fraud_score BETWEEN 0 AND 1),
    fraud_reasons     JSONB NOT NULL DEFAULT '[]',
    confirmed_at      TIMESTAMPTZ,
    reversed_at       TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT rewards_purchase_seq_key UNIQUE (purchase_id, attribution_seq)
);
SELECT diesel_manage_updated_at('rewards');
CREATE UNIQUE INDEX rewards_one_live_per_purchase ON rewards (purchase_id) WHERE status <> 'voided';
CREATE INDEX rewards_user_idx ON rewards (user_id, created_at DESC);
-- Serves the auto-confirm cron: pending rewards older than the hold period.
CREATE INDEX rewards_pending_idx ON rewards (created_at, id) WHERE status = 'pending';

-- Monthly cap consumption per user, offer and month; updated in the same
-- transaction as the reward so concurrent attributions cannot both take the last
-- of the cap.
CREATE TABLE monthly_cap_usage (
    user_id    UUID NOT NULL REFERENCES users (id),
    offer_id   UUID NOT NULL REFERENCES offers (id),
    month      DATE NOT NULL,
    used_minor BIGINT NOT NULL DEFAULT 0 CHECK (used_minor >= 0),
    PRIMARY KEY (user_id, offer_id, month)
);

-- Statistics per user and currency, computed by a background job.
CREATE TABLE user_stats (
    user_id             UUID NOT NULL REFERENCES users (id),
    currency            CHAR(3) NOT NULL,
    total_minor         BIGINT NOT NULL DEFAULT 0,
    purchase_count      BIGINT NOT NULL DEFAULT 0,
    average_minor       BIGINT NOT NULL DEFAULT 0,
    highest_day         DATE,
    highest_day_minor   BIGINT NOT NULL DEFAULT 0,
    computed_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, currency)
);
