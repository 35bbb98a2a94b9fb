-- Groups split by the up migration stay split: nothing records which of them
-- were one group, and two users in a group is the state this rule removes.
DROP INDEX identity_nodes_one_user_per_group;
