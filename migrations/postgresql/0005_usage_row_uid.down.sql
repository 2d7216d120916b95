-- 0005_usage_row_uid (PostgreSQL): undoes the usage row id.
DROP INDEX IF EXISTS usage_logs_row_uid_idx;
ALTER TABLE usage_logs DROP COLUMN IF EXISTS row_uid;
