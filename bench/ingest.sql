-- pgbench script: the statements one accepted webhook runs, issued directly.
-- Variables: :mid (the merchant id, quoted: -D mid="'<uuid>'").
\set n random(1, 2000000000)
SELECT id, status, webhook_secret_encrypted FROM merchants WHERE id = :mid;
BEGIN;
SELECT pg_try_advisory_xact_lock(:n);
SELECT fingerprint, response_status, response_body FROM idempotency_keys
 WHERE scope = 'merchant:' || :mid AND endpoint = 'bench' AND key = 'k-' || :client_id || '-' || :n;
INSERT INTO purchases (id, merchant_id, order_id, amount_minor, currency, purchased_at, attribute_after, created_at)
 VALUES (gen_random_uuid(), :mid, 'pgb-' || gen_random_uuid(), 1000, 'EUR', now(), now() + interval '60 seconds', now())
 RETURNING *;
INSERT INTO outbox (queue, task_id, payload, run_at, next_attempt_at)
 VALUES ('attribution', 'attribute:' || gen_random_uuid(), '{"job":"AttributePurchase","data":{}}', now() + interval '60 seconds', now())
 ON CONFLICT (task_id) DO NOTHING;
INSERT INTO idempotency_keys (scope, endpoint, key, fingerprint, response_status, response_body)
 VALUES ('merchant:' || :mid, 'bench', 'k-' || gen_random_uuid(), '\x00', 202, '{}');
COMMIT;
