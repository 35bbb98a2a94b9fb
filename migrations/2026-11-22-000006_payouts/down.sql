ALTER TABLE ledger_transfers DROP CONSTRAINT ledger_transfers_payout_fkey;
DROP TABLE payouts;
