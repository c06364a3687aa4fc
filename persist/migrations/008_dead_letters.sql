-- 008: raw-log entries the persister cannot copy (issue 11). A stream entry whose COPY into
-- raw_events keeps failing on its data (e.g. a NUL that Postgres text refuses) is moved here,
-- bytes intact, after settings.deadletter_after_attempts tries, and raw_stream_id advances
-- past it in the same transaction, so one bad entry never blocks the raw log of its project.
-- `counters deadletter list|retry|drop` works on this table.
CREATE TABLE raw_dead_letters (
    id               bigserial PRIMARY KEY,
    project          text NOT NULL,
    stream_id        text NOT NULL,             -- the Redis stream entry (ms-seq)
    events           integer NOT NULL,          -- the entry's n
    payload          bytea NOT NULL,            -- the entry's e: msgpack events, as XADDed
    ts_from          timestamptz,               -- earliest / latest event time in the entry
    ts_to            timestamptz,               -- (NULL when the payload cannot be decoded)
    error            text NOT NULL,             -- the last copy failure
    attempts         integer NOT NULL,
    first_failed_at  timestamptz NOT NULL,
    last_failed_at   timestamptz NOT NULL,
    moved_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project, stream_id)
);

-- Copy failures of entries not moved yet: one row per (project, entry), counting the tries.
-- Deleted when the entry is copied or moved to raw_dead_letters.
CREATE TABLE raw_copy_failures (
    project          text NOT NULL,
    stream_id        text NOT NULL,
    attempts         integer NOT NULL,
    error            text NOT NULL,
    first_failed_at  timestamptz NOT NULL DEFAULT now(),
    last_failed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, stream_id)
);
