-- Roles and scopes of API tokens (PostgreSQL twin of ../sqlite/0004_rbac.sql).

-- api_tokens.role may now name a custom role.
ALTER TABLE api_tokens DROP CONSTRAINT IF EXISTS api_tokens_role_check;
-- label selector narrowing the token to matching hosts; '' = unscoped
ALTER TABLE api_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT '';

-- Custom roles defined through the API (roles from the config file live in
-- memory; built-in names are reserved). `rules` is a JSON array of
-- {"effect", "permission", "hosts"?}, validated before it is written.
CREATE TABLE roles (
    name        TEXT   COLLATE "C" NOT NULL PRIMARY KEY,
    description TEXT   NOT NULL DEFAULT '',
    rules       TEXT   NOT NULL,
    created_ms  BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL
);
