-- Roles and scopes of API tokens (SQLite twin of ../postgres/0004_rbac.sql).

-- api_tokens.role may now name a custom role: SQLite cannot drop the CHECK
-- of 0001, so the table is rebuilt (same columns, plus the scope).
CREATE TABLE api_tokens_new (
    id           TEXT   NOT NULL PRIMARY KEY,
    name         TEXT   NOT NULL,
    -- a built-in role (viewer, operator, deployer, admin) or a custom role's name
    role         TEXT   NOT NULL,
    -- label selector narrowing the token to matching hosts; '' = unscoped
    scope        TEXT   NOT NULL DEFAULT '',
    secret_hash  TEXT   NOT NULL,
    created_ms   BIGINT NOT NULL,
    expires_ms   BIGINT,
    revoked_ms   BIGINT,
    last_used_ms BIGINT
);
INSERT INTO api_tokens_new (id, name, role, scope, secret_hash, created_ms, expires_ms, revoked_ms, last_used_ms)
    SELECT id, name, role, '', secret_hash, created_ms, expires_ms, revoked_ms, last_used_ms FROM api_tokens;
DROP TABLE api_tokens;
ALTER TABLE api_tokens_new RENAME TO api_tokens;

-- Custom roles defined through the API (roles from the config file live in
-- memory; built-in names are reserved). `rules` is a JSON array of
-- {"effect", "permission", "hosts"?}, validated before it is written.
CREATE TABLE roles (
    name        TEXT   NOT NULL PRIMARY KEY,
    description TEXT   NOT NULL DEFAULT '',
    rules       TEXT   NOT NULL,
    created_ms  BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL
);
