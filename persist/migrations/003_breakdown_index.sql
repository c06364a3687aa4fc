-- 003: breakdowns read every dims tuple of a rollup over a time range.
CREATE INDEX rollups_minute_by_bucket ON rollups_minute (project, name, rollup, bucket);
CREATE INDEX rollups_hour_by_bucket ON rollups_hour (project, name, rollup, bucket);
CREATE INDEX rollups_day_by_bucket ON rollups_day (project, name, rollup, bucket);
