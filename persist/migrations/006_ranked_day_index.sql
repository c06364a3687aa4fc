-- 006: each day bucket's tuples in count order, so a breakdown can prove its top N from
-- the first rows of each day (api/breakdown.py, _prove_top) instead of totalling them all.
CREATE INDEX IF NOT EXISTS rollups_day_ranked ON rollups_day (project, name, rollup, bucket, count DESC)
    INCLUDE (dims);
