-- 001: projects, keys, persister state, rollups per grain, the raw log.
-- Every table is keyed by project first, so it can be distributed by project.

CREATE TABLE projects (
    project     text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    key_hash    bytea PRIMARY KEY,           -- sha256 of the key; the key itself is never stored
    project     text NOT NULL REFERENCES projects (project),
    scope       text NOT NULL CHECK (scope IN ('ingest', 'read', 'admin')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The Postgres side of the seal-then-copy protocol, one row per project.
CREATE TABLE persist_state (
    project        text PRIMARY KEY REFERENCES projects (project),
    minute_until   bigint NOT NULL DEFAULT 0,   -- every minute bucket before this (epoch ms) is here
    hour_until     bigint NOT NULL DEFAULT 0,
    day_until      bigint NOT NULL DEFAULT 0,
    late_applied   bigint NOT NULL DEFAULT 0,   -- last late-delta generation applied
    raw_stream_id  text   NOT NULL DEFAULT '0-0', -- last raw-log stream entry copied
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rollups_minute (
    project     text NOT NULL,
    name        text NOT NULL,
    rollup      text NOT NULL,                 -- dim names joined by ',' ('' = total)
    dims        text[] NOT NULL,               -- values, in rollup order
    bucket      timestamptz NOT NULL,
    count       bigint NOT NULL,
    sum_micros  bigint NOT NULL,               -- sum of value, in millionths
    hll         bytea,                         -- the Redis HyperLogLog of uids, as GET returns it
    PRIMARY KEY (project, name, rollup, dims, bucket)
);
CREATE TABLE rollups_hour (LIKE rollups_minute INCLUDING ALL);
CREATE TABLE rollups_day (LIKE rollups_minute INCLUDING ALL);

-- The raw log: the source of truth for rebuild and reconcile. Partitions (one per UTC day)
-- are created by the persister as it needs them.
CREATE TABLE raw_events (
    project       text NOT NULL,
    ts            timestamptz NOT NULL,
    name          text NOT NULL,
    event_id      text,
    dims          jsonb NOT NULL,
    value_micros  bigint NOT NULL,
    uid           text,
    received_at   timestamptz NOT NULL,
    stream_id     text NOT NULL,               -- Redis stream entry the event came in
    seq           integer NOT NULL             -- position inside that entry
) PARTITION BY RANGE (ts);
CREATE INDEX raw_events_project_ts ON raw_events (project, ts);
