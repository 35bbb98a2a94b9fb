-- The identity graph. A group is one person as far as we can tell; nodes are the
-- identifiers we have seen for them (an anonymous browser id, a user account, a
-- merchant's customer id or a purchase awaiting token validation). A merge moves
-- every node and touchpoint of the absorbed group into the surviving one and leaves
-- the absorbed group pointing at the survivor.
CREATE TABLE identity_groups (
    id             UUID PRIMARY KEY,
    merged_into_id UUID REFERENCES identity_groups (id),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT identity_groups_not_self_merged CHECK (merged_into_id IS DISTINCT FROM id)
);
SELECT diesel_manage_updated_at('identity_groups');

CREATE TABLE identity_nodes (
    id              UUID PRIMARY KEY,
    group_id        UUID NOT NULL REFERENCES identity_groups (id),
    kind            TEXT NOT NULL CHECK (kind IN ('anon', 'user', 'merchant_customer')),
    key             TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 512),
    merchant_id     UUID REFERENCES merchants (id),
    user_id         UUID REFERENCES users (id),
    -- Purchase-token validation data left by the SDK ({order_id, purchase_token}).
    validation_data JSONB,
    linked_at       TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT identity_nodes_kind_key_key UNIQUE (kind, key),
    CONSTRAINT identity_nodes_user_kind CHECK ((kind = 'user') = (user_id IS NOT NULL)),
    CONSTRAINT identity_nodes_merchant_kind CHECK ((kind = 'merchant_customer') = (merchant_id IS NOT NULL))
);
CREATE INDEX identity_nodes_group_idx ON identity_nodes (group_id);

-- Append-only log of merges.
CREATE TABLE identity_merges (
    id                 UUID PRIMARY KEY,
    surviving_group_id UUID NOT NULL REFERENCES identity_groups (id),
    merged_group_id    UUID NOT NULL REFERENCES identity_groups (id),
    reason             TEXT NOT NULL,
    nodes_moved        INTEGER NOT NULL CHECK (nodes_moved >= 0),
    touchpoints_moved  INTEGER NOT NULL CHECK (touchpoints_moved >= 0),
    merged_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT identity_merges_distinct CHECK (surviving_group_id <> merged_group_id)
);
CREATE INDEX identity_merges_surviving_idx ON identity_merges (surviving_group_id, merged_at);
CREATE INDEX identity_merges_merged_idx ON identity_merges (merged_group_id);

-- A click on a referral link (or any tracked visit) for a merchant.
CREATE TABLE touchpoints (
    id          UUID PRIMARY KEY,
    group_id    UUID NOT NULL REFERENCES identity_groups (id),
    merchant_id UUID NOT NULL REFERENCES merchants (id),
    offer_id    UUID REFERENCES offers (id),
    anon_id     TEXT NOT NULL,
    landing_url TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Serves "last touchpoint of this group for this merchant inside the window".
CREATE INDEX touchpoints_attribution_idx ON touchpoints (group_id, merchant_id, created_at DESC);
