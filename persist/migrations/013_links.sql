-- 013: click-tracking links (counters links create|list|disable; GET /r/<id>). A link
-- counts `name` with `dims` (plus link=<id>) in its project and redirects to `target`, a
-- URL checked at creation (counters/core/links.py); a disabled link answers 404. Rows are
-- never deleted: ids stay unique forever, so an old URL never points somewhere new.
CREATE TABLE links (
    id text PRIMARY KEY,
    project text NOT NULL REFERENCES projects (project),
    target text NOT NULL,
    name text NOT NULL,
    dims jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);
CREATE INDEX links_project ON links (project);
