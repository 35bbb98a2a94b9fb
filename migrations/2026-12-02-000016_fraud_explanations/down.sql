ALTER TABLE rewards
    DROP CONSTRAINT rewards_explanation_done_has_text,
    DROP COLUMN fraud_explanation_status,
    DROP COLUMN fraud_explained_at,
    DROP COLUMN fraud_explanation_model,
    DROP COLUMN fraud_explanation;
