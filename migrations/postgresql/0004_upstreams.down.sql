-- 0004_upstreams (PostgreSQL): undoes the upstream pool's table and columns.
ALTER TABLE usage_logs DROP COLUMN IF EXISTS upstream;
ALTER TABLE api_keys DROP COLUMN IF EXISTS upstream_group;
DROP TABLE IF EXISTS upstreams;
