-- A flagged reward's explanation for the admin who reviews it, written by the
-- ExplainFlaggedPurchase job off the attribution path. Plain text, bounded;
-- the status says why there is none yet: the explainer is off (disabled), the
-- job has not answered (pending), or it gave up (failed). NULL on rewards that
-- were never flagged.
ALTER TABLE rewards
    ADD COLUMN fraud_explanation        TEXT CHECK (char_length(fraud_explanation) <= 2000),
    ADD COLUMN fraud_explanation_model  TEXT CHECK (char_length(fraud_explanation_model) <= 200),
    ADD COLUMN fraud_explained_at       TIMESTAMPTZ,
    ADD COLUMN fraud_explanation_status TEXT
        CHECK (fraud_explanation_status IN ('disabled', 'pending', 'failed', 'done')),
    ADD CONSTRAINT rewards_explanation_done_has_text
        CHECK ((fraud_explanation_status = 'done') = (fraud_explanation IS NOT NULL));

-- Flagged rewards from before the explainer existed have none.
UPDATE rewards SET fraud_explanation_status = 'disabled' WHERE flagged;
