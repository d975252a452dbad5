-- Runs of scheduled tasks, one-off tasks (`berth run`) and the built-in cleanup job. A run is written as
-- `running` when it starts and finished with its outcome; a start of the gateway turns rows left
-- `running` by a killed gateway into `interrupted`. `app` is null for gateway-wide jobs (cleanup).
-- `output` holds the last 64 KiB of the run's combined stdout and stderr. `triggered_by` is schedule,
-- manual or cleanup (`trigger` is an SQL keyword); the requesting user is `user_name` as in deploys.
CREATE TABLE task_runs (
  id TEXT PRIMARY KEY,
  app TEXT,
  task TEXT NOT NULL,
  triggered_by TEXT NOT NULL,
  state TEXT NOT NULL,
  command TEXT,
  release_id TEXT,
  user_name TEXT,
  started_at TEXT NOT NULL,
  finished_at TEXT,
  exit_code INTEGER,
  duration_ms INTEGER,
  output TEXT NOT NULL DEFAULT '',
  error TEXT
);

-- Newest first: unfiltered (and the retention cleanup by age), per app and task (`berth tasks`), and by
-- state (a start looks for runs left `running`).
CREATE INDEX task_runs_started ON task_runs (started_at, id);
CREATE INDEX task_runs_app_task_started ON task_runs (app, task, started_at, id);
CREATE INDEX task_runs_state_started ON task_runs (state, started_at, id);
