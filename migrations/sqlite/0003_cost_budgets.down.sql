-- 0003_cost_budgets (SQLite): undoes the budget columns (SQLite 3.35+ drops columns).
ALTER TABLE rate_limit_tiers DROP COLUMN cost_limits;
ALTER TABLE api_keys DROP COLUMN cost_limits;
