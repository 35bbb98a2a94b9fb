DROP TABLE canary_runs;
