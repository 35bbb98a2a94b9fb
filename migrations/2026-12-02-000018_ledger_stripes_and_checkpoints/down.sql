DROP TABLE ledger_verified_sums;
DROP TABLE ledger_verified_point;
DROP TRIGGER rewards_stamp_xact ON rewards;
DROP FUNCTION rewards_stamp_xact();
ALTER TABLE rewards DROP COLUMN xact;
ALTER TABLE ledger_transfers DROP COLUMN xact;
DELETE FROM ledger_accounts WHERE stripe <> 0;
ALTER TABLE ledger_accounts DROP CONSTRAINT ledger_accounts_owner_kind_currency_stripe_key;
ALTER TABLE ledger_accounts
    ADD CONSTRAINT ledger_accounts_owner_kind_currency_key UNIQUE NULLS NOT DISTINCT (user_id, kind, currency);
ALTER TABLE ledger_accounts DROP CONSTRAINT ledger_accounts_user_accounts_single_stripe, DROP COLUMN stripe;
