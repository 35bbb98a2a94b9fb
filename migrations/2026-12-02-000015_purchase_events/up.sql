-- What a merchant's server and a shopper's checkout page told us about an
-- order, as it arrived, for the purchase's timeline: every purchase webhook
-- and status webhook (first answer or replay, with its idempotency key),
-- every checkout-page confirmation with its outcome, and the token check a
-- webhook makes against an earlier confirmation. Keyed by merchant and
-- order, since a confirmation may come before the purchase exists. Kept
-- with the purchase (idempotency keys themselves go after 24 hours).
CREATE TABLE purchase_events (
    id          BIGSERIAL PRIMARY KEY,
    merchant_id UUID NOT NULL REFERENCES merchants (id),
    order_id    TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('webhook_received', 'webhook_replayed',
                    'status_received', 'status_replayed', 'sdk_confirmation', 'token_check')),
    detail      JSONB NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX purchase_events_order_idx ON purchase_events (merchant_id, order_id, created_at, id);

-- The board's purchase search by order id alone (the unique key leads with
-- the merchant).
CREATE INDEX purchases_order_idx ON purchases (order_id);
