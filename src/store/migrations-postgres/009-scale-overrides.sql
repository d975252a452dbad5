-- PostgreSQL dialect of ../migrations/009-scale-overrides.sql (see there), plus its announcement: every
-- change of an override is announced on `berth_fleet` as `scale:<app>` (berth_notify, migration 007), so
-- every node of the fleet applies it to the generation it serves.
CREATE TABLE scale_overrides (
  app TEXT COLLATE "C" NOT NULL,
  process TEXT COLLATE "C" NOT NULL,
  instances INTEGER NOT NULL,
  user_name TEXT COLLATE "C",
  set_at TEXT COLLATE "C" NOT NULL,
  node TEXT COLLATE "C",
  PRIMARY KEY (app, process)
);

CREATE TRIGGER scale_overrides_notify AFTER INSERT OR UPDATE OR DELETE ON scale_overrides FOR EACH ROW EXECUTE FUNCTION berth_notify('scale', 'app');
