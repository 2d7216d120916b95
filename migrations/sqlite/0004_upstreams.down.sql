-- 0004_upstreams (SQLite): undoes the upstream pool's table and columns (SQLite 3.35+).
ALTER TABLE usage_logs DROP COLUMN upstream;
ALTER TABLE api_keys DROP COLUMN upstream_group;
DROP TABLE upstreams;
