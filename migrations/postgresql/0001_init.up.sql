-- 0001_init (PostgreSQL): the relay's tables. Timestamps are Unix seconds (bigint); NULL means
-- "not set". Flags are 0/1 smallints, not boolean, so the same SQL (SUM(is_error), is_active = $1)
-- runs on SQLite and PostgreSQL alike. JSON columns are `json`, which validates but keeps the text
-- exactly as written (jsonb would reformat it).
CREATE TABLE api_keys (
    id              uuid PRIMARY KEY,
    name            text NOT NULL,
    description     text,
    key_prefix      text NOT NULL UNIQUE,
    key_hash        text NOT NULL,
    token_limit     bigint NOT NULL DEFAULT 0 CHECK (token_limit >= 0),
    token_used      bigint NOT NULL DEFAULT 0,
    request_count   bigint NOT NULL DEFAULT 0,
    error_count     bigint NOT NULL DEFAULT 0,
    rate_limit_tier text NOT NULL DEFAULT 'basic',
    is_active       smallint NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    is_deleted      smallint NOT NULL DEFAULT 0 CHECK (is_deleted IN (0, 1)),
    allowed_ips     json,
    allowed_origins json,
    allowed_models  json,
    metadata        json,
    expires_at      bigint,
    created_at      bigint NOT NULL,
    updated_at      bigint NOT NULL,
    last_used_at    bigint,
    deleted_at      bigint
);
-- Listing pages through keys not deleted, newest first.
CREATE INDEX api_keys_list_idx ON api_keys (is_deleted, created_at DESC, id DESC);

-- One row per request. No foreign key: a hard-deleted key's late rows are still logged.
CREATE TABLE usage_logs (
    id                       bigserial PRIMARY KEY,
    api_key_id               uuid,
    request_id               text,
    request_method           text NOT NULL DEFAULT '',
    request_path             text NOT NULL DEFAULT '',
    request_size             bigint NOT NULL DEFAULT 0 CHECK (request_size >= 0),
    response_status          integer NOT NULL DEFAULT 0,
    response_size            bigint NOT NULL DEFAULT 0 CHECK (response_size >= 0),
    response_time_ms         bigint NOT NULL DEFAULT 0,
    time_to_first_byte_ms    bigint NOT NULL DEFAULT 0,
    prompt_tokens            bigint NOT NULL DEFAULT 0 CHECK (prompt_tokens >= 0),
    completion_tokens        bigint NOT NULL DEFAULT 0 CHECK (completion_tokens >= 0),
    cache_creation_tokens    bigint NOT NULL DEFAULT 0 CHECK (cache_creation_tokens >= 0),
    cache_creation_5m_tokens bigint NOT NULL DEFAULT 0 CHECK (cache_creation_5m_tokens >= 0),
    cache_creation_1h_tokens bigint NOT NULL DEFAULT 0 CHECK (cache_creation_1h_tokens >= 0),
    cache_read_tokens        bigint NOT NULL DEFAULT 0 CHECK (cache_read_tokens >= 0),
    total_tokens             bigint NOT NULL DEFAULT 0 CHECK (total_tokens >= 0),
    total_cost               double precision NOT NULL DEFAULT 0,
    model                    text,
    is_error                 smallint NOT NULL DEFAULT 0 CHECK (is_error IN (0, 1)),
    stream                   smallint NOT NULL DEFAULT 0 CHECK (stream IN (0, 1)),
    estimated                smallint NOT NULL DEFAULT 0 CHECK (estimated IN (0, 1)),
    attempts                 integer NOT NULL DEFAULT 1,
    error_message            text,
    error_code               text,
    client_ip                text,
    user_agent               text,
    created_at               bigint NOT NULL
);
CREATE INDEX usage_logs_key_created_idx ON usage_logs (api_key_id, created_at);
CREATE INDEX usage_logs_created_idx ON usage_logs (created_at);

-- Per key per UTC day totals; they outlive usage_logs retention.
CREATE TABLE usage_daily (
    api_key_id            uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    day                   text NOT NULL CHECK (day ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$'),
    requests              bigint NOT NULL DEFAULT 0,
    tokens                bigint NOT NULL DEFAULT 0,
    prompt_tokens         bigint NOT NULL DEFAULT 0,
    completion_tokens     bigint NOT NULL DEFAULT 0,
    cache_creation_tokens bigint NOT NULL DEFAULT 0,
    cache_read_tokens     bigint NOT NULL DEFAULT 0,
    errors                bigint NOT NULL DEFAULT 0,
    cost                  double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (api_key_id, day)
);
CREATE INDEX usage_daily_day_idx ON usage_daily (day);

CREATE TABLE rate_limit_tiers (
    name              text PRIMARY KEY,
    requests          bigint NOT NULL,
    period_s          bigint NOT NULL CHECK (period_s > 0),
    tokens_per_minute bigint NOT NULL DEFAULT 0 CHECK (tokens_per_minute >= 0),
    concurrent        bigint NOT NULL DEFAULT 0 CHECK (concurrent >= 0),
    created_at        bigint NOT NULL,
    updated_at        bigint NOT NULL
);

CREATE TABLE audit_log (
    id         bigserial PRIMARY KEY,
    action     text NOT NULL,
    target     text,
    actor      text,
    client_ip  text,
    details    json,
    created_at bigint NOT NULL
);
CREATE INDEX audit_log_created_idx ON audit_log (created_at);

-- Admin credential hash and generated secrets.
CREATE TABLE settings (
    name       text PRIMARY KEY,
    value      text NOT NULL,
    updated_at bigint NOT NULL
);
