-- PostgreSQL dialect of ../migrations/001-apps-and-releases.sql: the same tables, columns and meaning (the
-- comments there hold). Every text column that is a key, is sorted on or is compared by range (ids, app
-- names, ISO times) is COLLATE "C", so PostgreSQL orders it byte by byte as SQLite does, whatever locale
-- the database was created with.
CREATE TABLE apps (
  app TEXT COLLATE "C" PRIMARY KEY,
  active_release TEXT COLLATE "C",
  mode TEXT NOT NULL DEFAULT 'normal',
  mode_message TEXT,
  mode_retry_after INTEGER,
  updated_at TEXT COLLATE "C" NOT NULL
);

CREATE TABLE releases (
  app TEXT COLLATE "C" NOT NULL,
  id TEXT COLLATE "C" NOT NULL,
  created_at TEXT COLLATE "C" NOT NULL,
  state TEXT NOT NULL,
  source TEXT NOT NULL,
  revision TEXT,
  PRIMARY KEY (app, id)
);

CREATE INDEX releases_app_created ON releases (app, created_at);
