-- A group of the identity graph holds at most one user: attribution never has
-- to choose whose cashback a purchase is. Groups that already hold several
-- user nodes keep the one linked first; every other user node moves to a new
-- group of its own (the anon ids, touchpoints and purchases stay where they are).
CREATE TEMPORARY TABLE identity_extra_users ON COMMIT DROP AS
SELECT id AS node_id, gen_random_uuid() AS new_group_id
  FROM (SELECT id,
               row_number() OVER (PARTITION BY group_id
                                  ORDER BY linked_at NULLS LAST, created_at, id) AS rank
          FROM identity_nodes
         WHERE kind = 'user') ranked
 WHERE rank > 1;

INSERT INTO identity_groups (id) SELECT new_group_id FROM identity_extra_users;

UPDATE identity_nodes n
   SET group_id = x.new_group_id
  FROM identity_extra_users x
 WHERE n.id = x.node_id;

CREATE UNIQUE INDEX identity_nodes_one_user_per_group
    ON identity_nodes (group_id) WHERE kind = 'user';
