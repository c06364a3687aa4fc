-- 002: what each reconcile (or rebuild) found, for operators and /metrics.
CREATE TABLE reconcile_runs (
    id             bigserial PRIMARY KEY,
    project        text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('reconcile', 'rebuild')),
    started_at     timestamptz NOT NULL,
    finished_at    timestamptz NOT NULL DEFAULT now(),
    range_from     timestamptz NOT NULL,
    range_to       timestamptz NOT NULL,
    events         bigint NOT NULL,
    discrepancies  integer NOT NULL,
    fixed          boolean NOT NULL,
    details        jsonb NOT NULL             -- the first differing buckets, by how much
);
CREATE INDEX reconcile_runs_project ON reconcile_runs (project, finished_at DESC);
