DROP TABLE touchpoints;
DROP TABLE identity_merges;
DROP TABLE identity_nodes;
DROP TABLE identity_groups;
