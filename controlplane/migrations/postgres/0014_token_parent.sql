-- The token that created an API token (NULL: created locally, e.g. by
-- `admin create-token`). Revoking a token revokes every token it created,
-- transitively; a created token never outlives its creator.
ALTER TABLE api_tokens ADD COLUMN parent_id TEXT;
CREATE INDEX api_tokens_parent ON api_tokens (parent_id);
