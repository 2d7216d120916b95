-- 0004_upstreams (SQLite): the upstream pool (docs/upstreams.md). Upstreams made through the admin
-- REST, with their API keys sealed (AES-256-GCM under a key derived from SECRET_KEY; never
-- stored in the clear); the upstream group a proxy key is bound to; the upstream a usage row
-- was served by.
CREATE TABLE upstreams (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    url             TEXT NOT NULL,
    api_key_sealed  TEXT NOT NULL,
    key_last4       TEXT NOT NULL DEFAULT '',
    weight          INTEGER NOT NULL DEFAULT 1 CHECK (weight > 0),
    priority        INTEGER NOT NULL DEFAULT 0 CHECK (priority >= 0),
    models          TEXT CHECK (models IS NULL OR json_valid(models)),
    max_concurrency INTEGER NOT NULL DEFAULT 0 CHECK (max_concurrency >= 0),
    timeout         REAL NOT NULL DEFAULT 0,
    max_retries     INTEGER NOT NULL DEFAULT -1,
    upstream_group  TEXT,
    is_disabled     INTEGER NOT NULL DEFAULT 0 CHECK (is_disabled IN (0, 1)),
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
ALTER TABLE api_keys ADD COLUMN upstream_group TEXT;
ALTER TABLE usage_logs ADD COLUMN upstream TEXT;
