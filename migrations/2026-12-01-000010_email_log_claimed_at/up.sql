-- When a SendEmail run claimed the message. Another run finding a recent
-- claim waits instead of sending: the first may have handed the message to the
-- SMTP server and still be recording it. A claim older than the longest a run
-- can take is a run that died, and is taken over.
ALTER TABLE email_log ADD COLUMN claimed_at TIMESTAMPTZ;
