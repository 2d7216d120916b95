-- 0005_usage_row_uid (SQLite): a unique id per usage row, given when the request settles, so a
-- row replayed from the usage spool after a crash is stored (and counted) at most once.
ALTER TABLE usage_logs ADD COLUMN row_uid TEXT;
-- NULLs (rows written before this migration) do not collide in a unique index.
CREATE UNIQUE INDEX usage_logs_row_uid_idx ON usage_logs (row_uid);
