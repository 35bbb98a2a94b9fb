DROP INDEX purchases_order_idx;
DROP TABLE purchase_events;
