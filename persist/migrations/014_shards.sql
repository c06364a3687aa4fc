-- 014: hot-tenant shards (counters projects shards P N; counters/core/shards.py).
-- A split project P keeps shard 0 under its own row; shard s > 0 is the row 'P:s' with
-- shard_of = P (its own persist_state row, rollups and raw rows: every shard is persisted
-- like a project). Only P's row carries the plan: shards (N, where new batches go),
-- shard_span (every shard that may hold data, the most N ever set), and id_shards with
-- id_shards_until (the N events with ids keep until the dedupe window after a change).
ALTER TABLE projects
    ADD COLUMN shard_of text REFERENCES projects (project),
    ADD COLUMN shards int NOT NULL DEFAULT 1 CHECK (shards BETWEEN 1 AND 64),
    ADD COLUMN shard_span int NOT NULL DEFAULT 1 CHECK (shard_span BETWEEN 1 AND 64),
    ADD COLUMN id_shards int NOT NULL DEFAULT 1 CHECK (id_shards BETWEEN 1 AND 64),
    ADD COLUMN id_shards_until timestamptz;
