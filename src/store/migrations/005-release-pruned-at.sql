-- When a release's directory was pruned. The state keeps saying how the release ended (a failed release
-- stays `failed`), so this column says that its directory is gone, and since when. Null: not pruned, or
-- pruned by a gateway older than this column (its rows say `pruned` without a time). A nullable column, so
-- an older gateway keeps reading and writing releases on this schema.
ALTER TABLE releases ADD COLUMN pruned_at TEXT;
