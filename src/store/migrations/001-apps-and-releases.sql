-- Apps' desired state and their releases.
-- Naming for the tables later migrations add (deploys, deploy_events, audit, task_runs, nodes, instances):
-- plural snake_case table names, an `app` column naming the app, ISO 8601 UTC text timestamps ending in
-- `_at`. Migrations are additive only (new tables, new nullable or defaulted columns) so an older gateway
-- keeps working on a newer schema. No foreign keys between apps and releases: either row may be written
-- first (a release is recorded while it builds, before the app has an active release).
CREATE TABLE apps (
  app TEXT PRIMARY KEY,
  active_release TEXT,
  mode TEXT NOT NULL DEFAULT 'normal',
  mode_message TEXT,
  mode_retry_after INTEGER,
  updated_at TEXT NOT NULL
);

CREATE TABLE releases (
  app TEXT NOT NULL,
  id TEXT NOT NULL,
  created_at TEXT NOT NULL,
  state TEXT NOT NULL,
  source TEXT NOT NULL,
  revision TEXT,
  PRIMARY KEY (app, id)
);

CREATE INDEX releases_app_created ON releases (app, created_at);
