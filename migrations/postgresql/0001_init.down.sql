-- 0001_init (PostgreSQL): drops every table 0001_init.up.sql created, dependants first.
DROP TABLE IF EXISTS settings;
DROP TABLE IF EXISTS audit_log;
DROP TABLE IF EXISTS rate_limit_tiers;
DROP TABLE IF EXISTS usage_daily;
DROP TABLE IF EXISTS usage_logs;
DROP TABLE IF EXISTS api_keys;
