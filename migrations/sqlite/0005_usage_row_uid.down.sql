-- 0005_usage_row_uid (SQLite): undoes the usage row id (SQLite 3.35+ drops columns).
DROP INDEX IF EXISTS usage_logs_row_uid_idx;
ALTER TABLE usage_logs DROP COLUMN row_uid;
