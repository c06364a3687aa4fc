-- 004: a read key may cover several projects (its own plus these).
CREATE TABLE api_key_projects (
    key_hash  bytea NOT NULL REFERENCES api_keys (key_hash) ON DELETE CASCADE,
    project   text NOT NULL REFERENCES projects (project),
    PRIMARY KEY (key_hash, project)
);
