-- The catalog: messages and their workspaces, runs, stored files, and which stored files are
-- attached to which message. Portable SQL: it runs on SQLite and on PostgreSQL.
-- Times are RFC 3339 UTC text with a fixed width, so that text order is time order.

CREATE TABLE messages (
    tenant       TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    chat_id      TEXT NOT NULL,
    workspace_id TEXT NOT NULL UNIQUE,
    created_at   TEXT NOT NULL,
    last_used_at TEXT NOT NULL,
    PRIMARY KEY (tenant, message_id)
);

CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    tenant           TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    chat_id          TEXT NOT NULL,
    message_id       TEXT NOT NULL,
    language         TEXT NOT NULL,
    status           TEXT NOT NULL,
    exit_code        BIGINT,
    reason           TEXT,
    stdout           TEXT NOT NULL,
    stderr           TEXT NOT NULL,
    stdout_truncated BIGINT NOT NULL,
    stderr_truncated BIGINT NOT NULL,
    truncated        TEXT NOT NULL,
    duration_ms      BIGINT NOT NULL,
    created_at       TEXT NOT NULL,
    finished_at      TEXT
);
CREATE INDEX runs_by_message ON runs (tenant, message_id, created_at);

CREATE TABLE files (
    id           TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    chat_id      TEXT,
    message_id   TEXT,
    run_id       TEXT,
    name         TEXT NOT NULL,
    path         TEXT NOT NULL,
    size         BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    source       TEXT NOT NULL,
    derived_from TEXT,
    blob_key     TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    deleted_at   TEXT
);
CREATE INDEX files_by_message ON files (tenant, user_id, message_id, created_at);
CREATE INDEX files_by_chat ON files (tenant, user_id, chat_id, created_at);
CREATE INDEX files_by_run ON files (run_id);

CREATE TABLE attachments (
    tenant     TEXT NOT NULL,
    message_id TEXT NOT NULL,
    file_id    TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tenant, message_id, file_id)
);
