-- Instance counts set with `berth scale <app> <type>=N`: an override of the config's (or the Procfile's)
-- `instances` for one process type of one app, kept here because berth never rewrites the config file.
-- Every later generation of the app (deploys, reloads, rollbacks, config reloads, a restart) starts this
-- many instances of the type; `berth scale <app> <type>=config` deletes the row. `user_name` and `set_at`
-- say who set it and when; `node` names the node it was set on (in a fleet the override is the fleet's).
-- A new table, so an older gateway on this schema simply does not see the overrides.
CREATE TABLE scale_overrides (
  app TEXT NOT NULL,
  process TEXT NOT NULL,
  instances INTEGER NOT NULL,
  user_name TEXT,
  set_at TEXT NOT NULL,
  node TEXT,
  PRIMARY KEY (app, process)
);
