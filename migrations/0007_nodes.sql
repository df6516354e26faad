-- Several codebox instances on one catalog. Each instance (node) names itself in `nodes` with
-- the URL the others reach it at and a heartbeat; a message names the node that holds its
-- workspace (NULL for rows from before: the next instance to run the message takes it). A
-- request for a message reaching another node is forwarded to that node while its heartbeat
-- is fresh; once it lapsed, the message is taken over and its workspace rebuilt, which a run
-- records in `workspace_restored`. Portable SQL: it runs on SQLite and on PostgreSQL.
CREATE TABLE nodes (
    id           TEXT PRIMARY KEY,
    url          TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
);
ALTER TABLE messages ADD COLUMN node TEXT;
ALTER TABLE runs ADD COLUMN workspace_restored BIGINT NOT NULL DEFAULT 0;
