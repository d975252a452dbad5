-- Fleet mode: several gateway nodes on one database (PostgreSQL in practice; SQLite holds one node).
--
-- `apps` is the fleet's desired state: besides the active release and the mode, `reloads` counts the
-- reloads asked for, so a node that has applied fewer reloads its app. Deploys, audit rows and task runs
-- name the node that wrote them (null: written before this migration). Every column
-- is nullable or has a default, so an older gateway keeps writing these tables on this schema.
ALTER TABLE apps ADD COLUMN reloads INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deploys ADD COLUMN node TEXT;
ALTER TABLE audit ADD COLUMN node TEXT;
ALTER TABLE task_runs ADD COLUMN node TEXT;

-- Process groups by node: a pgid means something on one machine only, so the key is (node, pgid).
-- process_groups (002), keyed by pgid alone, keeps the rows a gateway older than this wrote.
CREATE TABLE node_process_groups (
  node TEXT NOT NULL,
  pgid INTEGER NOT NULL,
  app TEXT NOT NULL,
  generation TEXT NOT NULL,
  process TEXT NOT NULL,
  instance_index INTEGER NOT NULL,
  gateway_pid INTEGER NOT NULL,
  started_at TEXT NOT NULL,
  PRIMARY KEY (node, pgid)
);

-- One row per node: its heartbeat, written every 2s, and what it serves (JSON: one entry per app with
-- its release, mode, whether it has converged, and why not).
CREATE TABLE nodes (
  node TEXT PRIMARY KEY,
  hostname TEXT NOT NULL,
  pid INTEGER NOT NULL,
  version TEXT NOT NULL,
  state TEXT NOT NULL,
  started_at TEXT NOT NULL,
  heartbeat_at TEXT NOT NULL,
  serving TEXT NOT NULL DEFAULT '[]'
);

-- Fleet-wide locks (one deploy per app, one ACME order per host): held by a node until it lets go, or
-- until its heartbeat is older than node_timeout. `token` names one taking of the lock, so letting go of
-- an earlier one never drops a later one.
CREATE TABLE fleet_locks (
  name TEXT PRIMARY KEY,
  node TEXT NOT NULL,
  acquired_at TEXT NOT NULL,
  token TEXT
);

-- Things done once per fleet (a scheduled run at its time): the first node to claim a key does it.
CREATE TABLE fleet_claims (
  claim TEXT PRIMARY KEY,
  node TEXT NOT NULL,
  claimed_at TEXT NOT NULL
);
CREATE INDEX fleet_claims_claimed ON fleet_claims (claimed_at);

-- ACME HTTP-01 answers, so that whichever node the CA reaches can give them.
CREATE TABLE acme_challenges (
  token TEXT PRIMARY KEY,
  key_authorization TEXT NOT NULL,
  created_at TEXT NOT NULL
);
