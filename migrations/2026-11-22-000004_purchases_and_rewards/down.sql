DROP TABLE user_stats;
DROP TABLE monthly_cap_usage;
DROP TABLE rewards;
DROP TABLE purchases;
