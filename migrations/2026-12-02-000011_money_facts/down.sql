DELETE FROM monthly_cap_usage a USING monthly_cap_usage b
 WHERE a.user_id = b.user_id AND a.offer_id = b.offer_id AND a.month = b.month
   AND a.currency > b.currency;
ALTER TABLE monthly_cap_usage DROP CONSTRAINT monthly_cap_usage_pkey;
ALTER TABLE monthly_cap_usage ADD PRIMARY KEY (user_id, offer_id, month);
ALTER TABLE monthly_cap_usage DROP COLUMN currency;

ALTER TABLE offers
    DROP CONSTRAINT offers_caps_have_currency,
    DROP CONSTRAINT offers_caps_max,
    DROP COLUMN currency;

ALTER TABLE payouts DROP CONSTRAINT payouts_amount_max;

DROP INDEX purchases_settle_due_idx;
ALTER TABLE purchases
    DROP CONSTRAINT purchases_amount_max,
    DROP COLUMN settle_due_at;

CREATE INDEX rewards_pending_idx ON rewards (created_at, id) WHERE status = 'pending';
ALTER TABLE rewards
    DROP CONSTRAINT rewards_amount_max,
    DROP CONSTRAINT rewards_review_needs_flag,
    DROP COLUMN reviewed_at,
    DROP COLUMN reviewed_by,
    DROP COLUMN review,
    DROP COLUMN hold_until,
    DROP COLUMN flagged;
