-- A reward's money converges from durable facts (docs/ARCHITECTURE.md, "A
-- reward's state from its facts"). Each fact is written in the transaction
-- that accepts it; `settle` moves the ledger to what the facts say.

-- The attribution's facts: whether the fraud scorer flagged the reward, and
-- when its hold period ends. The admin's review: approved or rejected, by
-- whom, when.
ALTER TABLE rewards
    ADD COLUMN flagged     BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN hold_until  TIMESTAMPTZ,
    ADD COLUMN review      TEXT CHECK (review IN ('approved', 'rejected')),
    ADD COLUMN reviewed_by UUID REFERENCES users (id),
    ADD COLUMN reviewed_at TIMESTAMPTZ,
    ADD CONSTRAINT rewards_review_needs_flag CHECK (review IS NULL OR flagged),
    ADD CONSTRAINT rewards_amount_max CHECK (amount_minor <= 10000000000);
UPDATE rewards SET flagged = true WHERE status = 'flagged';
UPDATE rewards SET hold_until = created_at + interval '30 days';
ALTER TABLE rewards ALTER COLUMN hold_until SET NOT NULL;
-- The auto-confirm cron's index; the settle sweep reads purchases.settle_due_at.
DROP INDEX rewards_pending_idx;

-- When the purchase's ledger may lag its facts: set when a fact is recorded
-- (now) or to the hold period's end, cleared by `settle`. The settle sweep
-- reads the due rows through a partial index holding only those rows.
ALTER TABLE purchases
    ADD COLUMN settle_due_at TIMESTAMPTZ,
    ADD CONSTRAINT purchases_amount_max CHECK (amount_minor <= 10000000000);
CREATE INDEX purchases_settle_due_idx ON purchases (settle_due_at, id)
    WHERE settle_due_at IS NOT NULL;
UPDATE purchases p SET settle_due_at = r.hold_until
  FROM rewards r
 WHERE r.purchase_id = p.id AND r.status = 'pending';
UPDATE purchases p SET settle_due_at = now()
  FROM rewards r
 WHERE r.purchase_id = p.id AND r.status IN ('pending', 'flagged', 'confirmed')
   AND p.merchant_decision IS NOT NULL;

ALTER TABLE payouts
    ADD CONSTRAINT payouts_amount_max CHECK (amount_minor <= 10000000000);

-- Offer caps are amounts of money: they carry the offer's currency. A capped
-- offer needs one (checked for new and changed rows; older capped offers
-- without a currency keep working for purchases in any currency).
ALTER TABLE offers
    ADD COLUMN currency CHAR(3) CHECK (currency ~ '^[A-Z]{3}$'),
    ADD CONSTRAINT offers_caps_max CHECK (
        coalesce(max_cashback_minor, 0) <= 10000000000 AND coalesce(monthly_cap_minor, 0) <= 10000000000),
    ADD CONSTRAINT offers_caps_have_currency CHECK (
        (max_cashback_minor IS NULL AND monthly_cap_minor IS NULL) OR currency IS NOT NULL) NOT VALID;

-- Monthly cap usage per currency.
ALTER TABLE monthly_cap_usage ADD COLUMN currency CHAR(3) CHECK (currency ~ '^[A-Z]{3}$');
UPDATE monthly_cap_usage m
   SET currency = coalesce(
       (SELECT r.currency FROM rewards r WHERE r.user_id = m.user_id AND r.offer_id = m.offer_id LIMIT 1),
       (SELECT o.currency FROM offers o WHERE o.id = m.offer_id),
       'EUR');
ALTER TABLE monthly_cap_usage ALTER COLUMN currency SET NOT NULL;
ALTER TABLE monthly_cap_usage DROP CONSTRAINT monthly_cap_usage_pkey;
ALTER TABLE monthly_cap_usage ADD PRIMARY KEY (user_id, offer_id, month, currency);
