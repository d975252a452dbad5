-- PostgreSQL dialect of ../migrations/004-task-runs.sql (see there).
CREATE TABLE task_runs (
  id TEXT COLLATE "C" PRIMARY KEY,
  app TEXT COLLATE "C",
  task TEXT COLLATE "C" NOT NULL,
  triggered_by TEXT COLLATE "C" NOT NULL,
  state TEXT COLLATE "C" NOT NULL,
  command TEXT,
  release_id TEXT COLLATE "C",
  user_name TEXT COLLATE "C",
  started_at TEXT COLLATE "C" NOT NULL,
  finished_at TEXT COLLATE "C",
  exit_code BIGINT,
  duration_ms BIGINT,
  output TEXT NOT NULL DEFAULT '',
  error TEXT
);

CREATE INDEX task_runs_started ON task_runs (started_at, id);
CREATE INDEX task_runs_app_task_started ON task_runs (app, task, started_at, id);
CREATE INDEX task_runs_state_started ON task_runs (state, started_at, id);
