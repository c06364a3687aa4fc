-- 011: the dim names carried by each project's raw events, per UTC day. The persister adds
-- the names of every batch it copies into the raw log; rebuild reads them to know which
-- dims to take out of the rows' JSON without scanning the day for its keys first.
CREATE TABLE raw_dims (
    project  text   NOT NULL,
    day      bigint NOT NULL,              -- start of the UTC day (epoch ms)
    dim      text   NOT NULL,
    PRIMARY KEY (project, day, dim)
);
INSERT INTO raw_dims (project, day, dim)
SELECT DISTINCT project,
       (extract(epoch FROM date_trunc('day', ts AT TIME ZONE 'UTC')) * 1000)::bigint,
       jsonb_object_keys(dims)
FROM raw_events;
