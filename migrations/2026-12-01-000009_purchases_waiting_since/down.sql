ALTER TABLE purchases DROP COLUMN waiting_since;
