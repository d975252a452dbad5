-- PostgreSQL dialect of ../migrations/008-cache-flushes.sql (see there). Attempts are BIGINT: SQLite's
-- INTEGER holds 64 bits and the two must accept the same values.
CREATE TABLE cache_flushes (
  id TEXT COLLATE "C" PRIMARY KEY,
  app TEXT COLLATE "C" NOT NULL,
  deploy_id TEXT COLLATE "C",
  provider TEXT COLLATE "C" NOT NULL,
  urls TEXT NOT NULL DEFAULT '[]',
  done TEXT NOT NULL DEFAULT '[]',
  state TEXT COLLATE "C" NOT NULL,
  attempts BIGINT NOT NULL DEFAULT 0,
  next_at TEXT COLLATE "C" NOT NULL,
  give_up_at TEXT COLLATE "C" NOT NULL,
  error TEXT,
  user_name TEXT COLLATE "C",
  created_at TEXT COLLATE "C" NOT NULL,
  finished_at TEXT COLLATE "C",
  node TEXT COLLATE "C"
);

CREATE INDEX cache_flushes_state_created ON cache_flushes (state, created_at, id);
CREATE INDEX cache_flushes_app_created ON cache_flushes (app, created_at, id);
CREATE INDEX cache_flushes_created ON cache_flushes (created_at, id);
