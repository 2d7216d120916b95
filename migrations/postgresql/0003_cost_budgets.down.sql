-- 0003_cost_budgets (PostgreSQL): undoes the budget columns.
ALTER TABLE rate_limit_tiers DROP COLUMN IF EXISTS cost_limits;
ALTER TABLE api_keys DROP COLUMN IF EXISTS cost_limits;
