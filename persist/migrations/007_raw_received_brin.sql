-- 007: after Redis loses its data, the dedupe markers are restored from the raw log's
-- events received within the dedupe window (counters/engines/restore.py). received_at grows
-- with the append order of each daily partition, so a BRIN index finds those rows for the
-- price of a few pages per partition, and costs next to nothing to keep up to date.
CREATE INDEX IF NOT EXISTS raw_events_received_brin ON raw_events USING brin (received_at);
