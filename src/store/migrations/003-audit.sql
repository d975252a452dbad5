-- The audit log: every change (deploy, rollback, reload, mode, run, config reload, stop...) with who,
-- through which channel, and the outcome. A row is written as `pending` before the change acts and
-- finished with its outcome after, so a change that crashed the gateway still shows.
CREATE TABLE audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  occurred_at TEXT NOT NULL,
  user_name TEXT NOT NULL,
  channel TEXT NOT NULL,
  action TEXT NOT NULL,
  app TEXT,
  target TEXT,
  outcome TEXT NOT NULL,
  detail TEXT,
  finished_at TEXT
);

CREATE INDEX audit_occurred ON audit (occurred_at, id);
CREATE INDEX audit_app_occurred ON audit (app, occurred_at, id);
CREATE INDEX audit_user_occurred ON audit (user_name, occurred_at, id);
