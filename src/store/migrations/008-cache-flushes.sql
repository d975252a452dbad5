-- CDN cache flushes: the URLs (or Akamai ARLs) a deploy's switch, or `berth flush`, asks a CDN to purge,
-- kept so a flush survives a restart and is retried until it succeeds or its retry_for has passed.
-- `urls` and `done` hold JSON arrays of strings: every URL to purge, and those purged so far (a resumed
-- flush sends only the rest). `state` is pending, succeeded, failed or skipped; `deploy_id` is null for
-- a flush asked by hand, and is no foreign key: the retention cleanup deletes deploys on its own clock.
-- The requesting user is `user_name` as in deploys; `node` names the node that runs the flush.
CREATE TABLE cache_flushes (
  id TEXT PRIMARY KEY,
  app TEXT NOT NULL,
  deploy_id TEXT,
  provider TEXT NOT NULL,
  urls TEXT NOT NULL DEFAULT '[]',
  done TEXT NOT NULL DEFAULT '[]',
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_at TEXT NOT NULL,
  give_up_at TEXT NOT NULL,
  error TEXT,
  user_name TEXT,
  created_at TEXT NOT NULL,
  finished_at TEXT,
  node TEXT
);

-- Pending ones oldest first (a start, and the retry loop), per app newest first (`berth flushes`), and
-- unfiltered (history, and the retention cleanup by age).
CREATE INDEX cache_flushes_state_created ON cache_flushes (state, created_at, id);
CREATE INDEX cache_flushes_app_created ON cache_flushes (app, created_at, id);
CREATE INDEX cache_flushes_created ON cache_flushes (created_at, id);
