-- 0002_audit_target_idx (PostgreSQL): undoes the index.
DROP INDEX IF EXISTS audit_log_target_idx;
