-- Merchants send purchases through signed webhooks. The webhook secret is stored
-- encrypted (AES-256-GCM, key id prefixed); the previous secret stays valid until
-- `previous_secret_expires_at` after a rotation so that senders can roll over.
CREATE TABLE merchants (
    id                           UUID PRIMARY KEY,
    name                         TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status                       TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    publishable_key              TEXT NOT NULL,
    webhook_secret_encrypted     BYTEA NOT NULL,
    previous_secret_encrypted    BYTEA,
    previous_secret_expires_at   TIMESTAMPTZ,
    webhook_rate_limit_per_minute INTEGER CHECK (webhook_rate_limit_per_minute > 0),
    version                      INTEGER NOT NULL DEFAULT 1,
    created_at                   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT merchants_publishable_key_key UNIQUE (publishable_key)
);
SELECT diesel_manage_updated_at('merchants');
CREATE INDEX merchants_created_idx ON merchants (created_at DESC, id DESC);

-- Cashback offers. At most one is active per merchant (partial unique index);
-- `offer_activations` keeps the history so attribution can find the offer that
-- was active when a purchase was made.
CREATE TABLE offers (
    id                 UUID PRIMARY KEY,
    merchant_id        UUID NOT NULL REFERENCES merchants (id),
    name               TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    rate_bps           INTEGER NOT NULL CHECK (rate_bps BETWEEN 0 AND 10000),
    max_cashback_minor BIGINT CHECK (max_cashback_minor >= 0),
    monthly_cap_minor  BIGINT CHECK (monthly_cap_minor >= 0),
    starts_at          TIMESTAMPTZ,
    ends_at            TIMESTAMPTZ,
    active             BOOLEAN NOT NULL DEFAULT FALSE,
    version            INTEGER NOT NULL DEFAULT 1,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT offers_window_valid CHECK (starts_at IS NULL OR ends_at IS NULL OR starts_at < ends_at)
);
SELECT diesel_manage_updated_at('offers');
CREATE UNIQUE INDEX offers_one_active_per_merchant ON offers (merchant_id) WHERE active;
CREATE INDEX offers_merchant_idx ON offers (merchant_id, created_at DESC, id DESC);

CREATE TABLE offer_activations (
    id             UUID PRIMARY KEY,
    offer_id       UUID NOT NULL REFERENCES offers (id),
    merchant_id    UUID NOT NULL REFERENCES merchants (id),
    activated_at   TIMESTAMPTZ NOT NULL,
    deactivated_at TIMESTAMPTZ,
    CONSTRAINT offer_activations_period_valid CHECK (deactivated_at IS NULL OR deactivated_at >= activated_at)
);
CREATE UNIQUE INDEX offer_activations_one_open_per_merchant ON offer_activations (merchant_id) WHERE deactivated_at IS NULL;
CREATE INDEX offer_activations_lookup_idx ON offer_activations (merchant_id, activated_at DESC);

-- Link quality: purchase-token validations per merchant and UTC day.
CREATE TABLE link_quality_daily (
    merchant_id UUID NOT NULL REFERENCES merchants (id),
    day         DATE NOT NULL,
    matched     BIGINT NOT NULL DEFAULT 0 CHECK (matched >= 0),
    mismatched  BIGINT NOT NULL DEFAULT 0 CHECK (mismatched >= 0),
    PRIMARY KEY (merchant_id, day)
);
