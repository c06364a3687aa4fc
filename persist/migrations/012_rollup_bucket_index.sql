-- 012: rollup rows by (project, bucket), for rebuild and reconcile, which read and compare
-- every row of a bucket range of one project. The other indexes start with the event name
-- and rollup, so a bucket range meant a walk over all of the project's rows, for every range.
CREATE INDEX rollups_minute_by_project_bucket ON rollups_minute (project, bucket);
CREATE INDEX rollups_hour_by_project_bucket ON rollups_hour (project, bucket);
CREATE INDEX rollups_day_by_project_bucket ON rollups_day (project, bucket);
