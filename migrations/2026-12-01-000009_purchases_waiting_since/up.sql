-- When attribution first looked at a purchase and found no user yet. From then
-- on the purchase has waited out its attribution delay, so a link arriving
-- later (an SDK call, a sign-in) attributes it at once instead of at the next
-- recheck.
ALTER TABLE purchases ADD COLUMN waiting_since TIMESTAMPTZ;
