-- 0004_upstreams (PostgreSQL): the upstream pool (docs/upstreams.md). Upstreams made through the
-- admin REST, with their API keys sealed (AES-256-GCM under a key derived from SECRET_KEY; never
-- stored in the clear); the upstream group a proxy key is bound to; the upstream a usage row
-- was served by.
CREATE TABLE upstreams (
    id              uuid PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    url             text NOT NULL,
    api_key_sealed  text NOT NULL,
    key_last4       text NOT NULL DEFAULT '',
    weight          integer NOT NULL DEFAULT 1 CHECK (weight > 0),
    priority        integer NOT NULL DEFAULT 0 CHECK (priority >= 0),
    models          json,
    max_concurrency integer NOT NULL DEFAULT 0 CHECK (max_concurrency >= 0),
    timeout         double precision NOT NULL DEFAULT 0,
    max_retries     integer NOT NULL DEFAULT -1,
    upstream_group  text,
    is_disabled     smallint NOT NULL DEFAULT 0 CHECK (is_disabled IN (0, 1)),
    created_at      bigint NOT NULL,
    updated_at      bigint NOT NULL
);
ALTER TABLE api_keys ADD COLUMN upstream_group text;
ALTER TABLE usage_logs ADD COLUMN upstream text;
