-- 009: key lifecycle. Every key gets a public id (shown by `keys list`, used by revoke and
-- rotate), an optional expiry, a revocation time, a last-used time (written in batches),
-- and, for the new `pixel` scope, optional allowed origins and event names.
ALTER TABLE api_keys
    ADD COLUMN id           text,
    ADD COLUMN expires_at   timestamptz,
    ADD COLUMN revoked_at   timestamptz,
    ADD COLUMN last_used_at timestamptz,
    ADD COLUMN origins      text[] NOT NULL DEFAULT '{}',
    ADD COLUMN names        text[] NOT NULL DEFAULT '{}',
    ADD COLUMN rotated_from text;   -- id of the key this one replaced (keys rotate)

-- Existing keys: 'k_' + 10 random lowercase hex characters.
UPDATE api_keys SET id = 'k_' || substr(md5(random()::text || encode(key_hash, 'hex')), 1, 10)
WHERE id IS NULL;

ALTER TABLE api_keys ALTER COLUMN id SET NOT NULL;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_id_key UNIQUE (id);
ALTER TABLE api_keys DROP CONSTRAINT api_keys_scope_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scope_check
    CHECK (scope IN ('ingest', 'read', 'admin', 'pixel'));
