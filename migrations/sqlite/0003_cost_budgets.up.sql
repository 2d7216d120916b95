-- 0003_cost_budgets (SQLite): per-key cost budgets (USD caps per period and per model family),
-- as one JSON object so a new kind of budget needs no new column. See docs/budgets.md.
ALTER TABLE api_keys ADD COLUMN cost_limits TEXT
    CHECK (cost_limits IS NULL OR json_valid(cost_limits));
-- Tier defaults a key inherits for the budget fields it does not set itself.
ALTER TABLE rate_limit_tiers ADD COLUMN cost_limits TEXT
    CHECK (cost_limits IS NULL OR json_valid(cost_limits));
