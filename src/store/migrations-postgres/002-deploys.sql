-- PostgreSQL dialect of ../migrations/002-deploys.sql (see there). Durations are BIGINT: a slow step may
-- pass 2^31 ms only in theory, but SQLite's INTEGER holds 64 bits and the two must accept the same values.
CREATE TABLE deploys (
  id TEXT COLLATE "C" PRIMARY KEY,
  app TEXT COLLATE "C" NOT NULL,
  kind TEXT NOT NULL,
  state TEXT COLLATE "C" NOT NULL,
  release_id TEXT COLLATE "C",
  previous_release TEXT COLLATE "C",
  source TEXT,
  user_name TEXT COLLATE "C",
  failed_step TEXT,
  error TEXT,
  log_tail TEXT NOT NULL DEFAULT '[]',
  created_at TEXT COLLATE "C" NOT NULL,
  finished_at TEXT COLLATE "C"
);

CREATE INDEX deploys_created ON deploys (created_at, id);
CREATE INDEX deploys_app_created ON deploys (app, created_at, id);
CREATE INDEX deploys_state_created ON deploys (state, created_at, id);

CREATE TABLE deploy_events (
  deploy_id TEXT COLLATE "C" NOT NULL REFERENCES deploys (id) ON DELETE CASCADE,
  seq INTEGER NOT NULL,
  step TEXT NOT NULL,
  status TEXT NOT NULL,
  occurred_at TEXT COLLATE "C" NOT NULL,
  duration_ms BIGINT,
  message TEXT,
  lines TEXT,
  PRIMARY KEY (deploy_id, seq)
);

CREATE TABLE process_groups (
  pgid INTEGER PRIMARY KEY,
  app TEXT COLLATE "C" NOT NULL,
  generation TEXT NOT NULL,
  process TEXT NOT NULL,
  instance_index INTEGER NOT NULL,
  gateway_pid INTEGER NOT NULL,
  started_at TEXT COLLATE "C" NOT NULL
);
