-- PostgreSQL dialect of ../migrations/005-release-pruned-at.sql (see there): a nullable column, so an
-- older gateway keeps reading and writing releases on this schema.
ALTER TABLE releases ADD COLUMN pruned_at TEXT COLLATE "C";
