-- 005: breakdowns rank and total in one index-only scan.
DROP INDEX IF EXISTS rollups_minute_by_bucket;
DROP INDEX IF EXISTS rollups_hour_by_bucket;
DROP INDEX IF EXISTS rollups_day_by_bucket;
CREATE INDEX rollups_minute_by_bucket ON rollups_minute (project, name, rollup, bucket)
    INCLUDE (dims, count, sum_micros);
CREATE INDEX rollups_hour_by_bucket ON rollups_hour (project, name, rollup, bucket)
    INCLUDE (dims, count, sum_micros);
CREATE INDEX rollups_day_by_bucket ON rollups_day (project, name, rollup, bucket)
    INCLUDE (dims, count, sum_micros);
