ALTER TABLE email_log DROP COLUMN claimed_at;
