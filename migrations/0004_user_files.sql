-- A user's own files: when a file was last renamed, when its chat went away (the upload then
-- stays, unlinked), the owner's listing newest first, and active names unique in the user's
-- own workspace (the files with no chat). Portable SQL: it runs on SQLite and on PostgreSQL.
ALTER TABLE files ADD COLUMN modified_at TEXT;
ALTER TABLE files ADD COLUMN unlinked_at TEXT;
UPDATE files SET modified_at = created_at;

-- Workspace files stored before names had to be unique keep the oldest under its name; the
-- later ones get their id after the name, so that the unique index below can be built.
UPDATE files SET name = name || ' (' || id || ')'
WHERE chat_id IS NULL AND deleted_at IS NULL AND EXISTS (
    SELECT 1 FROM files AS older
    WHERE older.tenant = files.tenant AND older.user_id = files.user_id
      AND older.name = files.name AND older.chat_id IS NULL AND older.deleted_at IS NULL
      AND (older.created_at < files.created_at
           OR (older.created_at = files.created_at AND older.id < files.id))
);

CREATE INDEX files_by_owner ON files (tenant, user_id, created_at, id);
CREATE UNIQUE INDEX files_workspace_names ON files (tenant, user_id, name)
    WHERE chat_id IS NULL AND deleted_at IS NULL;
