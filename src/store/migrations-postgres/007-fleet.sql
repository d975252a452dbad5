-- PostgreSQL dialect of ../migrations/007-fleet.sql (see there), plus the notifications: every change to
-- an app's desired state, a certificate or an ACME answer is announced on the channel `berth_fleet`
-- (payload `app:<name>`, `certificate:<host>` or `challenge:<key>`), which every node LISTENs to. The functions are made with OR
-- REPLACE: `reset_state` drops tables (and their triggers) but leaves functions.
ALTER TABLE apps ADD COLUMN reloads INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deploys ADD COLUMN node TEXT COLLATE "C";
ALTER TABLE audit ADD COLUMN node TEXT COLLATE "C";
ALTER TABLE task_runs ADD COLUMN node TEXT COLLATE "C";

-- Process groups by node: a pgid means something on one machine only, so the key is (node, pgid).
-- process_groups (002), keyed by pgid alone, keeps the rows a gateway older than this wrote.
CREATE TABLE node_process_groups (
  node TEXT COLLATE "C" NOT NULL,
  pgid INTEGER NOT NULL,
  app TEXT NOT NULL,
  generation TEXT NOT NULL,
  process TEXT NOT NULL,
  instance_index INTEGER NOT NULL,
  gateway_pid INTEGER NOT NULL,
  started_at TEXT COLLATE "C" NOT NULL,
  PRIMARY KEY (node, pgid)
);

CREATE TABLE nodes (
  node TEXT COLLATE "C" PRIMARY KEY,
  hostname TEXT NOT NULL,
  pid INTEGER NOT NULL,
  version TEXT NOT NULL,
  state TEXT NOT NULL,
  started_at TEXT COLLATE "C" NOT NULL,
  heartbeat_at TEXT COLLATE "C" NOT NULL,
  serving TEXT NOT NULL DEFAULT '[]'
);

CREATE TABLE fleet_locks (
  name TEXT COLLATE "C" PRIMARY KEY,
  node TEXT COLLATE "C" NOT NULL,
  acquired_at TEXT COLLATE "C" NOT NULL,
  token TEXT
);

CREATE TABLE fleet_claims (
  claim TEXT COLLATE "C" PRIMARY KEY,
  node TEXT COLLATE "C" NOT NULL,
  claimed_at TEXT COLLATE "C" NOT NULL
);
CREATE INDEX fleet_claims_claimed ON fleet_claims (claimed_at);

CREATE TABLE acme_challenges (
  token TEXT COLLATE "C" PRIMARY KEY,
  key_authorization TEXT NOT NULL,
  created_at TEXT COLLATE "C" NOT NULL
);

-- One function for every announcement: the trigger names the topic and the column that names the row.
CREATE OR REPLACE FUNCTION berth_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('berth_fleet', TG_ARGV[0] || ':' || ((CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) ELSE to_jsonb(NEW) END) ->> TG_ARGV[1]));
  RETURN NULL;
END;
$$;
CREATE TRIGGER apps_notify AFTER INSERT OR UPDATE ON apps FOR EACH ROW EXECUTE FUNCTION berth_notify('app', 'app');
CREATE TRIGGER acme_certificates_notify AFTER INSERT OR UPDATE OR DELETE ON acme_certificates FOR EACH ROW EXECUTE FUNCTION berth_notify('certificate', 'host');
CREATE TRIGGER acme_challenges_notify AFTER INSERT OR UPDATE OR DELETE ON acme_challenges FOR EACH ROW EXECUTE FUNCTION berth_notify('challenge', 'token');
