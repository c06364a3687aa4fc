-- 010: a per-project secret for hashing uids (HMAC-SHA-256, see counters/core/uid.py).
-- 32 bytes from the server's strong random source (gen_random_uuid is pg_strong_random:
-- two of them give 244 random bits), generated for every existing project by the volatile
-- default and for every new one by the same default (ensure_project inserts the row). It
-- never changes: the stored hashes and the HLLs built from them depend on it.
ALTER TABLE projects
    ADD COLUMN uid_secret bytea NOT NULL DEFAULT decode(
        replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', ''),
        'hex'
    );
