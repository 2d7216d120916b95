-- 0001_init (SQLite): the relay's tables. Timestamps are Unix seconds; NULL means "not set".
-- Flags are 0/1 integers on both backends so the same SQL (SUM(is_error), ...) runs on each.
CREATE TABLE api_keys (
    id              TEXT PRIMARY KEY NOT NULL CHECK (length(id) = 36),
    name            TEXT NOT NULL,
    description     TEXT,
    key_prefix      TEXT NOT NULL UNIQUE,
    key_hash        TEXT NOT NULL,
    token_limit     INTEGER NOT NULL DEFAULT 0 CHECK (token_limit >= 0),
    token_used      INTEGER NOT NULL DEFAULT 0,
    request_count   INTEGER NOT NULL DEFAULT 0,
    error_count     INTEGER NOT NULL DEFAULT 0,
    rate_limit_tier TEXT NOT NULL DEFAULT 'basic',
    is_active       INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    is_deleted      INTEGER NOT NULL DEFAULT 0 CHECK (is_deleted IN (0, 1)),
    allowed_ips     TEXT CHECK (allowed_ips IS NULL OR json_valid(allowed_ips)),
    allowed_origins TEXT CHECK (allowed_origins IS NULL OR json_valid(allowed_origins)),
    allowed_models  TEXT CHECK (allowed_models IS NULL OR json_valid(allowed_models)),
    metadata        TEXT CHECK (metadata IS NULL OR json_valid(metadata)),
    expires_at      INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_used_at    INTEGER,
    deleted_at      INTEGER
) STRICT;
-- Listing pages through keys not deleted, newest first.
CREATE INDEX api_keys_list_idx ON api_keys (is_deleted, created_at DESC, id DESC);

-- One row per request. No foreign key: a hard-deleted key's late rows are still logged.
CREATE TABLE usage_logs (
    id                       INTEGER PRIMARY KEY AUTOINCREMENT,
    api_key_id               TEXT,
    request_id               TEXT,
    request_method           TEXT NOT NULL DEFAULT '',
    request_path             TEXT NOT NULL DEFAULT '',
    request_size             INTEGER NOT NULL DEFAULT 0 CHECK (request_size >= 0),
    response_status          INTEGER NOT NULL DEFAULT 0,
    response_size            INTEGER NOT NULL DEFAULT 0 CHECK (response_size >= 0),
    response_time_ms         INTEGER NOT NULL DEFAULT 0,
    time_to_first_byte_ms    INTEGER NOT NULL DEFAULT 0,
    prompt_tokens            INTEGER NOT NULL DEFAULT 0 CHECK (prompt_tokens >= 0),
    completion_tokens        INTEGER NOT NULL DEFAULT 0 CHECK (completion_tokens >= 0),
    cache_creation_tokens    INTEGER NOT NULL DEFAULT 0 CHECK (cache_creation_tokens >= 0),
    cache_creation_5m_tokens INTEGER NOT NULL DEFAULT 0 CHECK (cache_creation_5m_tokens >= 0),
    cache_creation_1h_tokens INTEGER NOT NULL DEFAULT 0 CHECK (cache_creation_1h_tokens >= 0),
    cache_read_tokens        INTEGER NOT NULL DEFAULT 0 CHECK (cache_read_tokens >= 0),
    total_tokens             INTEGER NOT NULL DEFAULT 0 CHECK (total_tokens >= 0),
    total_cost               REAL NOT NULL DEFAULT 0,
    model                    TEXT,
    is_error                 INTEGER NOT NULL DEFAULT 0 CHECK (is_error IN (0, 1)),
    stream                   INTEGER NOT NULL DEFAULT 0 CHECK (stream IN (0, 1)),
    estimated                INTEGER NOT NULL DEFAULT 0 CHECK (estimated IN (0, 1)),
    attempts                 INTEGER NOT NULL DEFAULT 1,
    error_message            TEXT,
    error_code               TEXT,
    client_ip                TEXT,
    user_agent               TEXT,
    created_at               INTEGER NOT NULL
) STRICT;
CREATE INDEX usage_logs_key_created_idx ON usage_logs (api_key_id, created_at);
CREATE INDEX usage_logs_created_idx ON usage_logs (created_at);

-- Per key per UTC day totals; they outlive usage_logs retention.
CREATE TABLE usage_daily (
    api_key_id            TEXT NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    day                   TEXT NOT NULL CHECK (length(day) = 10),
    requests              INTEGER NOT NULL DEFAULT 0,
    tokens                INTEGER NOT NULL DEFAULT 0,
    prompt_tokens         INTEGER NOT NULL DEFAULT 0,
    completion_tokens     INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
    errors                INTEGER NOT NULL DEFAULT 0,
    cost                  REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (api_key_id, day)
) STRICT;
CREATE INDEX usage_daily_day_idx ON usage_daily (day);

CREATE TABLE rate_limit_tiers (
    name              TEXT PRIMARY KEY NOT NULL,
    requests          INTEGER NOT NULL,
    period_s          INTEGER NOT NULL CHECK (period_s > 0),
    tokens_per_minute INTEGER NOT NULL DEFAULT 0 CHECK (tokens_per_minute >= 0),
    concurrent        INTEGER NOT NULL DEFAULT 0 CHECK (concurrent >= 0),
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
) STRICT;

CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    action     TEXT NOT NULL,
    target     TEXT,
    actor      TEXT,
    client_ip  TEXT,
    details    TEXT CHECK (details IS NULL OR json_valid(details)),
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX audit_log_created_idx ON audit_log (created_at);

-- Admin credential hash and generated secrets.
CREATE TABLE settings (
    name       TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
