-- Deploys (also rollbacks and reloads), their step events, and the app process groups the gateway started.
-- `log_tail` and `lines` hold JSON arrays of strings. The requesting user is `user_name` because `user` is
-- reserved in PostgreSQL, and the event time is `occurred_at` to keep the `_at` suffix.
CREATE TABLE deploys (
  id TEXT PRIMARY KEY,
  app TEXT NOT NULL,
  kind TEXT NOT NULL,
  state TEXT NOT NULL,
  release_id TEXT,
  previous_release TEXT,
  source TEXT,
  user_name TEXT,
  failed_step TEXT,
  error TEXT,
  log_tail TEXT NOT NULL DEFAULT '[]',
  created_at TEXT NOT NULL,
  finished_at TEXT
);

-- Listing is newest first: unfiltered (history, and the retention cleanup by age), per app, and by state
-- (a start looks for deploys left `running` by a killed gateway).
CREATE INDEX deploys_created ON deploys (created_at, id);
CREATE INDEX deploys_app_created ON deploys (app, created_at, id);
CREATE INDEX deploys_state_created ON deploys (state, created_at, id);

-- Events only exist for a recorded deploy and go when it goes (retention cleanup deletes deploys).
CREATE TABLE deploy_events (
  deploy_id TEXT NOT NULL REFERENCES deploys (id) ON DELETE CASCADE,
  seq INTEGER NOT NULL,
  step TEXT NOT NULL,
  status TEXT NOT NULL,
  occurred_at TEXT NOT NULL,
  duration_ms INTEGER,
  message TEXT,
  lines TEXT,
  PRIMARY KEY (deploy_id, seq)
);

-- One row per live process group; `index` is a keyword, hence `instance_index`.
CREATE TABLE process_groups (
  pgid INTEGER PRIMARY KEY,
  app TEXT NOT NULL,
  generation TEXT NOT NULL,
  process TEXT NOT NULL,
  instance_index INTEGER NOT NULL,
  gateway_pid INTEGER NOT NULL,
  started_at TEXT NOT NULL
);
