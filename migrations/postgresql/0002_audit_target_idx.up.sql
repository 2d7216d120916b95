-- 0002_audit_target_idx (PostgreSQL): one key's or tier's audit history without a full scan.
CREATE INDEX audit_log_target_idx ON audit_log (target, created_at);
